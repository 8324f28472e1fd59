"""Training FLOPs of ChatPLUG (an mT5 encoder-decoder run as fusion-in-decoder), for MFU.

Forward matmul FLOPs are 2 per multiply-add; training is 3 x forward. Per example with ``P``
passages of ``L`` encoder tokens (``E = P * L``; a flat ``inputs`` length is split as the
network splits it, ``P = ceil(E / L)``; ``num_passages == 1``: one passage of ``E``), ``T``
decoder tokens, width ``d``, attention inner width ``a = heads * d_kv``, FFN ``f`` (``m = 3``
matrices gated, 2 not), vocabulary ``V``, ``N_e`` encoder and ``N_d`` decoder layers:

* encoder layer: ``E * (4 d a + m d f)`` weight multiply-adds + ``P * 2 L^2 a`` (scores and
  values within each passage: fusion-in-decoder never attends across passages, so the cost
  is ``P L^2``, not ``(P L)^2``);
* decoder layer: ``T * (6 d a + m d f)`` (self-attention, cross-attention query and output,
  FFN) + ``E * 2 d a`` (cross-attention keys and values of every passage) + ``T^2 a`` (causal
  self-attention, counted once) + ``2 T E a`` (cross-attention scores and values);
* LM head ``T d V``.

The relative-position bias gathers, the norms and the softmaxes are left out. Padding tokens
are counted: the step computes them.
"""
from __future__ import annotations

from plug_jax.families.chatplug.config import ChatPLUGConfig


def passage_layout(cfg: ChatPLUGConfig, enc_len: int) -> tuple[int, int]:
    """``(passages, tokens per passage)`` the network makes of a flat encoder row."""
    e = int(enc_len)
    if cfg.num_passages == 1:
        return 1, e
    length = cfg.passage_length
    return -(-e // length), length


def training_flops_per_example(cfg: ChatPLUGConfig, enc_len: int, dec_len: int) -> float:
    p, length = passage_layout(cfg, enc_len)
    e, t = p * length, int(dec_len)
    d, a, v = cfg.d_model, cfg.num_heads * cfg.d_kv, cfg.vocab_size
    ffn = (3 if cfg.gated_mlp else 2) * d * cfg.d_ff
    enc = cfg.num_layers * (e * (4 * d * a + ffn) + p * 2 * length * length * a)
    dec = cfg.decoder_layers * (t * (6 * d * a + ffn) + e * 2 * d * a + t * t * a
                                + 2 * t * e * a)
    head = t * d * v
    return 3.0 * 2.0 * (enc + dec + head)
