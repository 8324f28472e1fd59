"""Training FLOPs of PLUG (encoder-decoder), for MFU.

Forward matmul FLOPs are 2 per multiply-add; training is 3 x forward. Per example with
``E`` encoder and ``D`` decoder tokens, hidden ``h``, FFN ``f``, vocabulary ``V``:

* encoder layer: ``E * (4h^2 + 2hf)`` weight multiply-adds and ``2 * E^2 * h`` for the
  bidirectional scores and values;
* decoder layer: ``D * (4h^2 + 2h^2 + 2hf)`` (self-attention, cross-attention query and
  output, FFN) + ``E * 2h^2`` (cross-attention keys and values of the encoder states),
  ``D^2 * h`` for causal self-attention (half the score matrix) and ``2 * D * E * h``
  for cross-attention;
* output projection ``D * h * V``;
* with experts, an MoE FFN counts its router and the ``moe_top_k`` experts a token meets. The MLM and sentence heads (on a few positions) and
  embedding gathers are left out.
"""
from __future__ import annotations

from plug_jax.families.plug.config import PlugConfig


def _ffn(cfg, layers: int) -> float:
    """FFN multiply-adds per token of ``layers`` layers of a part (``cfg.encoder`` or
    ``cfg.decoder``): an MoE layer (every ``moe_every_n``-th) costs its router and
    ``moe_top_k`` experts."""
    dense = 2 * cfg.hidden_size * cfg.mlp_dim
    if not cfg.num_experts:
        return layers * dense
    n_moe = layers // cfg.moe_every_n
    moe = cfg.hidden_size * cfg.num_experts + cfg.moe_top_k * 2 * cfg.hidden_size * cfg.moe_mlp_dim
    return (layers - n_moe) * dense + n_moe * moe


def training_flops_per_example(cfg: PlugConfig, enc_len: int, dec_len: int) -> float:
    h, v = cfg.hidden_size, cfg.vocab_size
    e, d = int(enc_len), int(dec_len)
    le, ld = cfg.num_encoder_layers, cfg.num_decoder_layers
    enc = e * (le * 4 * h * h + _ffn(cfg.encoder, le)) + le * 2 * e * e * h
    dec = (d * (ld * 6 * h * h + _ffn(cfg.decoder, ld))
           + ld * (e * 2 * h * h + d * d * h + 2 * d * e * h))
    return 3.0 * 2.0 * (enc + dec + d * h * v)
