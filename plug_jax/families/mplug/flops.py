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

Pre-training (:func:`pretraining_flops`, kind ``image_text_pretrain``, the caption of
``T = lengths['targets']`` tokens read as ``[CLS] + caption``): the vision tower once; the text
encoder three times (the caption, its masked copy, the prefix); fusion over five pairs per
example (ITM positive, hard-negative text, hard-negative image, MLM, prefix LM) with ``Li =
T``; the MLM head (dense + vocabulary) over ``T``; the decoder over ``T`` tokens with an
``Nv + T`` memory and its LM head. The projections and ITM head are negligible.
"""
from __future__ import annotations

from plug_jax.families.clip.flops import tower_forward_flops


def _cross(q_tokens: int, kv_tokens: int, d: int) -> float:
    return 4.0 * d * d * (q_tokens + kv_tokens) + 4.0 * q_tokens * kv_tokens * d


def _vision(config, lengths):
    v = config.vision
    h, w, c = (int(x) for x in lengths.get("image", (v.image_size, v.image_size,
                                                      v.num_channels)))
    patches = (h // v.patch_size) * (w // v.patch_size)
    fwd = (tower_forward_flops(patches + 1, v.layers, v.width, v.mlp_dim)
           + 2.0 * patches * v.patch_size ** 2 * c * v.width)
    if config.vision_proj_to_text:
        fwd += 2.0 * (patches + 1) * v.width * config.hidden_size
    return patches + 1, fwd


def _fusion(config, nv: int, li: int) -> float:
    d, f = config.hidden_size, config.ffn_size
    out = 0.0
    for j in range(config.fusion_layers):
        if config.is_connected(j):
            out += tower_forward_flops(nv + li, 1, d, f)
        else:
            out += tower_forward_flops(li, 1, d, f) + _cross(li, nv, d)
    return out


def _decoder(config, t: int, ne: int) -> float:
    d, f = config.hidden_size, config.ffn_size
    return (config.decoder_layers * (tower_forward_flops(t, 1, d, f) + _cross(t, ne, d))
            + t * (2.0 * d * d + 2.0 * d * config.vocab_size))


def pretraining_flops(config, batch: int, lengths) -> float:
    nv, fwd = _vision(config, lengths)
    t = int(lengths["targets"])
    d, f = config.hidden_size, config.ffn_size
    fwd += 3 * tower_forward_flops(t, config.text_layers, d, f)
    fwd += 5 * _fusion(config, nv, t)
    fwd += t * (2.0 * d * d + 2.0 * d * config.vocab_size)
    fwd += _decoder(config, t, nv + t)
    return 3.0 * batch * fwd


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
