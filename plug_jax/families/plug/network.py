"""PLUG network: the StructBERT encoder (pre-LN) with a PALM decoder plugged on top.

``PlugModel`` holds the whole StructBERT pre-training model under ``structbert/`` (encoder,
MLM head, pooler, 3-way sentence head: PLUG keeps the encoder objectives in stage 2), so the
checkpoint of an encoder-only stage 1 (``StructBERTForPreTraining`` with
``config.encoder_config``) is exactly ``params['structbert']`` of stage 2, and a
``decoder/`` subtree:

* decoder inputs are embedded by the encoder's embedding module (shared [I]:
  ``PalmForPreTraining`` passes the BERT embeddings module to its decoder): word +
  position + token type 0, then the embedding LayerNorm (``config.embedding_norm``; PLUG's
  ``BertEmbeddings`` applies it in the pre-LN model too, AliceMind
  ``PLUG/model/modeling.py``);
* ``num_decoder_layers`` blocks (``TransformerDecoderLayer``, the ``decoder`` part of the
  config) of, pre-LN: LN -> causal self-attention -> +res; LN ->
  cross-attention to the encoder states -> +res; LN -> FFN -> +res; then a final LN
  (post-LN: each sub-layer -> +res -> LN);
* logits = decoder states x word-embedding matrix^T (tied), float32.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from plug_jax.families.plug.config import PlugConfig
from plug_jax.families.structbert.network import StructBERTForPreTraining
from plug_jax.layers.moe.config import stack_kwargs
from plug_jax.layers import quant
from plug_jax.layers.norms import LayerNorm, layer_norm
from plug_jax.layers.scan import LayerStack
# The decoder layer and the encoder-decoder helpers live in plug_jax/layers/transformer_decoder.py
# (PALM uses them too); the names are re-exported here for existing imports.
from plug_jax.layers.transformer_decoder import (  # noqa: F401  (re-exported)
    TransformerDecoderLayer, cross_attention_keys, cross_attention_probs, decoder_cross_mask,
    decoder_masks, encoder_text_features)
from plug_jax.partitioning import axes as A
from plug_jax.partitioning.constraints import with_logical_constraint

_ACT = (A.ACT_BATCH, A.ACT_LENGTH, A.ACT_EMBED)

# PLUG's decoder layer is the shared TransformerDecoderLayer (same parameters); it takes the
# decoder part of a PlugConfig or a whole PlugConfig (whose ``decoder`` part it reads).
PlugDecoderLayer = TransformerDecoderLayer


class PlugModel(nn.Module):
    """``apply({'params': p}, encoder_input_ids, decoder_input_ids, ...) -> dict``.

    Args of ``__call__``:
      encoder_input_ids / decoder_input_ids: int ``[batch, enc_len]`` / ``[batch, dec_len]``.
      encoder_token_type_ids: int ``[batch, enc_len]`` (default 0).
      encoder_segment_ids / decoder_segment_ids: ``[batch, len]`` segment ids of packed rows
        (0 = padding); without them every encoder token is real and the decoder is causal.
      encoder_positions / decoder_positions: ``[batch, len]`` (default ``0..len-1``; packed
        rows restart at 0 in every segment).
      mlm_positions: ``[batch, P]`` encoder positions whose MLM logits to return (stage 2
        keeps MLM on the encoder); without it the MLM head runs on position 0 only.

    Returns ``logits`` ``[batch, dec_len, vocab]`` (float32), ``encoder_hidden_states``,
    ``mlm_logits`` ``[batch, P, vocab]`` and ``sentence_logits`` ``[batch, 3]``.

    Cached generation (``decoding.encdec_adapter``; ``docs/decoding.md``) uses
    :meth:`encode` once per source and :meth:`decode` per step, on the same parameters.
    """

    config: PlugConfig

    def encode(self, features: dict) -> dict:
        """The encoder side of generation, run once: ``features`` as
        :func:`encoder_text_features` -> ``{'hidden_states': [B, E, D], 'mask': bool [B, E]}``."""
        ids, seg, pos, types = encoder_text_features(features)
        return self(ids, None, types, seg, encoder_positions=pos, _phase="encode")

    def decode(self, decoder_input_ids, decoder_positions, token_mask, encoded=None,
               cache_length: int | None = None):
        """One cached decoder step -> logits ``[B, L, vocab]`` (float32), with the ``cache``
        collection mutable. The first call, with ``encoded`` (from :meth:`encode`) and no
        cache, creates the cache: ``cache_length`` self-attention slots and the
        cross-attention keys / values of the encoder states (its output is discarded).
        Every later call (``encoded=None``) appends ``decoder_input_ids`` at the cache
        index and attends to the cache."""
        return self(None, decoder_input_ids, decoder_positions=decoder_positions,
                    _phase="decode", _encoded=encoded, _token_mask=token_mask,
                    _cache_length=cache_length)

    @nn.compact
    def __call__(self, encoder_input_ids, decoder_input_ids, encoder_token_type_ids=None,
                 encoder_segment_ids=None, decoder_segment_ids=None, decoder_positions=None,
                 mlm_positions=None, encoder_positions=None, *, deterministic: bool = True,
                 _phase: str = "full", _encoded=None, _token_mask=None, _cache_length=None):
        # _phase (private; use encode / decode): "full" (training, the default), "encode"
        # (the encoder alone) or "decode" (one cached decoder step; no encoder input).
        cfg = self.config
        ecfg, dcfg = cfg.encoder, cfg.decoder
        decode = _phase == "decode"
        structbert = StructBERTForPreTraining(ecfg, name="structbert")
        if decode:
            emb = self.variables["params"]["structbert"]["encoder"]
            enc = None if _encoded is None else _encoded["hidden_states"]
            b = decoder_input_ids.shape[0]
        else:
            b, enc_len = encoder_input_ids.shape
            if mlm_positions is None:
                mlm_positions = jnp.zeros((b, 1), jnp.int32)
            enc_out = structbert(encoder_input_ids, encoder_token_type_ids, None,
                                 encoder_positions, encoder_segment_ids, mlm_positions,
                                 deterministic=deterministic)
            enc = enc_out["hidden_states"]
            if _phase == "encode":
                return {"hidden_states": enc, "mask": jnp.asarray(encoder_segment_ids) > 0}
            emb = structbert.variables["params"]["encoder"]
        dec_len = decoder_input_ids.shape[1]
        word = quant.float_weight(emb["word_embed"], "embedding", ecfg.compute_dtype)
        pos_table = quant.float_weight(emb["pos_embed"], "embedding", ecfg.compute_dtype)
        if decoder_positions is None:
            decoder_positions = jnp.broadcast_to(jnp.arange(dec_len, dtype=jnp.int32),
                                                 (b, dec_len))
        # The decoder inputs go through the encoder's embedding module (PLUG passes
        # bert.embeddings to its decoder): word + position + token type 0, then the
        # embedding LayerNorm when the config has one.
        type0 = quant.float_weight(emb["type_embed"], "embedding", ecfg.compute_dtype)[0]
        x = jnp.take(word, decoder_input_ids, axis=0) + jnp.take(pos_table, decoder_positions,
                                                                 axis=0) + type0
        if ecfg.use_embedding_norm:
            norm = emb["embed_norm"]
            x = layer_norm(x, nn.unbox(norm["scale"]), nn.unbox(norm["bias"]),
                           ecfg.layer_norm_epsilon, ecfg.compute_dtype)
        x = nn.Dropout(ecfg.dropout_rate)(x, deterministic=deterministic)
        x = with_logical_constraint(x, _ACT)
        layer_kw = (("config", dcfg), ("deterministic", deterministic))
        if decode:
            layer_kw += (("decode", True), ("cache_length", _cache_length))
            args = (enc, None, decoder_cross_mask(self, _encoded), _token_mask)
        else:
            args = (enc,) + decoder_masks(b, enc_len, dec_len, encoder_segment_ids,
                                          decoder_segment_ids)
        x = LayerStack(**stack_kwargs(dcfg, TransformerDecoderLayer, dcfg.num_layers, layer_kw),
                       scan=dcfg.scan_layers,
                       remat_policy="none" if decode else dcfg.remat_policy,
                       name="decoder")(x, *args)
        if dcfg.pre_norm:
            x = LayerNorm(epsilon=dcfg.layer_norm_epsilon, dtype=dcfg.compute_dtype,
                          param_dtype=dcfg.params_dtype, name="decoder_final_norm")(x)
        logits = jnp.einsum("bld,vd->blv", x, word)
        logits = with_logical_constraint(jnp.asarray(logits, jnp.float32),
                                         (A.ACT_BATCH, A.ACT_LENGTH, A.ACT_VOCAB))
        if decode:
            return logits
        return {"logits": logits, "encoder_hidden_states": enc,
                "mlm_logits": enc_out["mlm_logits"], "sentence_logits": enc_out["sentence_logits"]}


def abstract_params(config: PlugConfig, batch: int = 1, length: int = 8) -> Any:
    """Shapes (boxed with logical names) of the parameters, without allocating them."""
    ids = jax.ShapeDtypeStruct((batch, length), jnp.int32)
    return jax.eval_shape(lambda r, e, d: PlugModel(config).init(r, e, d),
                          jax.random.PRNGKey(0), ids, ids)["params"]


def param_count(config: PlugConfig) -> int:
    """Number of parameters of ``config`` from abstract shapes (nothing is allocated)."""
    leaves = jax.tree_util.tree_leaves(nn.unbox(abstract_params(config)))
    return int(sum(np.prod(x.shape) for x in leaves))
