"""Training FLOPs of an mPLUG image-to-text step (captioning / VQA), from the inputs' sizes.

Forward FLOPs per example, as :mod:`plug_jax.families.clip.flops` counts a tower (2 FLOPs per
weight per token, plus ``QK^T`` and ``AV``), with ``Nv = (H/p)(W/p) + 1`` vision tokens,
``Li`` question tokens (``lengths['inputs']``; 0 for captioning), ``T`` decoder tokens:

* vision tower over ``Nv`` tokens, patch embedding, and large's ``visn_fc``;
* text encoder over ``Li`` tokens;
* fusion: a co-attention layer is a BERT layer over ``Li`` tokens plus a cross-attention
  (queries / output on ``Li`` tokens, keys / values on ``Nv``); a connected layer is a BERT
  layer over ``Nv + Li`` tokens;
* decoder: BERT layers over ``T`` tokens, each with a cross-attention to the ``Ne`` memory
  tokens (``Nv + Li`` for VQA, ``Nv`` for captioning), and the LM head (dense + vocabulary).

Training is 3x the forward.
"""
from __future__ import annotations

from plug_jax.families.clip.flops import tower_forward_flops


def _cross(q_tokens: int, kv_tokens: int, d: int) -> float:
    return 4.0 * d * d * (q_tokens + kv_tokens) + 4.0 * q_tokens * kv_tokens * d


def training_flops(config, batch: int, lengths) -> float:
    v = config.vision
    h, w, c = (int(x) for x in lengths.get("image", (v.image_size, v.image_size,
                                                      v.num_channels)))
    patches = (h // v.patch_size) * (w // v.patch_size)
    nv = patches + 1
    li = int(lengths.get("inputs", 0) or 0)
    t = int(lengths["targets"])
    d, f = config.hidden_size, config.ffn_size
    fwd = (tower_forward_flops(nv, v.layers, v.width, v.mlp_dim)
           + 2.0 * patches * v.patch_size ** 2 * c * v.width)
    if config.vision_proj_to_text:
        fwd += 2.0 * nv * v.width * d
    ne = nv
    if li:
        ne = nv + li
        fwd += tower_forward_flops(li, config.text_layers, d, f)
        for j in range(config.fusion_layers):
            if config.is_connected(j):
                fwd += tower_forward_flops(nv + li, 1, d, f)
            else:
                fwd += tower_forward_flops(li, 1, d, f) + _cross(li, nv, d)
    fwd += config.decoder_layers * (tower_forward_flops(t, 1, d, f) + _cross(t, ne, d))
    fwd += t * (2.0 * d * d + 2.0 * d * config.vocab_size)
    return 3.0 * batch * fwd
