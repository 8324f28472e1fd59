"""Training FLOPs of an M6 step, from the inputs' sizes.

Forward FLOPs per example over ``N = P + S + T`` tokens (``P`` image patches, ``S`` source
tokens, ``T`` target tokens), 2 FLOPs per weight per token:

* each layer: ``2 N (4 d^2)`` for the attention projections, ``4 N^2 d`` for ``QK^T`` and
  ``AV`` (the whole square: the prefix-LM mask saves nothing in a dense kernel), and the FFN:
  ``2 N (2 d f)`` dense, ``2 N k (2 d f_e)`` in an MoE layer (``k`` experts per token: the
  prototypes of M6-T);
* the patch embedding ``2 P p^2 C d`` and the LM head over the target ``2 T d V``.

Training is 3x the forward. ``lengths``: ``image`` ``(H, W, C)`` (absent for text-only tasks),
``inputs`` (``S``, 0 when absent) and ``targets`` (``T``).
"""
from __future__ import annotations


def forward_flops(config, lengths) -> float:
    d, v = config.hidden_size, config.vocab_size
    p = 0
    fwd = 0.0
    if "image" in lengths:
        h, w, c = (int(x) for x in lengths["image"])
        p = (h // config.patch_size) * (w // config.patch_size)
        fwd += 2.0 * p * config.patch_size ** 2 * c * d
    s, t = int(lengths.get("inputs", 0)), int(lengths.get("targets", 0))
    n = p + s + t
    moe_layers = config.num_moe_layers
    dense_layers = config.num_layers - moe_layers
    hk = config.num_heads * config.kv_dim  # = d unless head_dim is set
    attn = 2.0 * n * 4 * d * hk + 4.0 * n * n * hk
    fwd += config.num_layers * attn
    fwd += dense_layers * 2.0 * n * 2 * d * config.mlp_dim
    if moe_layers:
        fwd += moe_layers * (2.0 * n * config.moe_top_k * 2 * d * config.moe_mlp_dim
                             + 2.0 * n * d * config.num_experts)  # + the router
    return fwd + 2.0 * t * d * v


def training_flops(config, batch: int, lengths) -> float:
    return 3.0 * batch * forward_flops(config, lengths)
