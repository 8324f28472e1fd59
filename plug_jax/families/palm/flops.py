"""Training FLOPs of PALM (encoder-decoder with a copy head), for MFU.

Forward matmul FLOPs are 2 per multiply-add; training is 3 x forward. Per example with ``E``
encoder and ``D`` decoder tokens, width ``h``, encoder FFN ``f_e``, decoder FFN ``f_d``,
vocabulary ``V``, ``L_e`` encoder and ``L_d`` decoder layers:

* encoder layer: ``E * (4h^2 + 2h f_e)`` weight multiply-adds + ``2 E^2 h`` (bidirectional
  scores and values);
* decoder layer: ``D * (6h^2 + 2h f_d)`` (self-attention, cross-attention query and output,
  FFN) + ``E * 2h^2`` (cross-attention keys and values) + ``D^2 h`` (causal self-attention,
  counted once) + ``2 D E h`` (cross-attention scores and values);
* output projection ``D h V``;
* copy head (``copy``): the recomputed head-averaged copy attention of the last layer
  (``D h^2 + E h^2 + D E h``), the context ``D E h`` and the gate (2 or 3 ``h`` per token).
  The scatter onto the vocabulary, the softmaxes and the pooler are left out.
"""
from __future__ import annotations

from plug_jax.families.palm.config import PalmConfig


def training_flops_per_example(cfg: PalmConfig, enc_len: int, dec_len: int) -> float:
    h, v = cfg.hidden_size, cfg.vocab_size
    e, d = int(enc_len), int(dec_len)
    le, ld = cfg.num_encoder_layers, cfg.num_decoder_layers
    enc = le * (e * (4 * h * h + 2 * h * cfg.mlp_dim) + 2 * e * e * h)
    dec = ld * (d * (6 * h * h + 2 * h * cfg.decoder.mlp_dim) + e * 2 * h * h + d * d * h
                + 2 * d * e * h)
    out = d * h * v
    copy = 0
    if cfg.copy:
        copy = d * h * h + e * h * h + 2 * d * e * h + d * cfg.copy_gate_inputs
    return 3.0 * 2.0 * (enc + dec + out + copy)
