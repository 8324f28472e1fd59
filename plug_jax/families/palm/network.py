"""PALM network: StructBERT's ``BertEncoder`` + shared decoder layers + a pointer-generator head.

The encoder is built from ``config.encoder`` (a ``StructBERTConfig``), the decoder layers
(``plug_jax.layers.transformer_decoder.TransformerDecoderLayer``, shared with PLUG) from
``config.decoder`` (a ``TransformerDecoderConfig``).

``PalmModel(config)`` is called like ``PlugModel``::

    out = PalmModel(cfg).apply({'params': p}, encoder_input_ids, decoder_input_ids,
                               encoder_segment_ids=..., decoder_segment_ids=...,
                               decoder_positions=..., encoder_positions=...)

and returns ``logits`` ``[batch, dec_len, vocab]`` float32:

* ``config.copy=False``: plain tied logits, ``decoder_states @ decoder_embed^T + output_bias``
  (the released ``generator``; its log-softmax is the model's distribution).
* ``config.copy=True``: the **log-probabilities** of the pointer-generator mixture

      p(w) = p_gen * softmax(logits)(w) + (1 - p_gen) * sum_{s: enc_ids[s] = w} a(s)

  ``a`` (the copy attention) is the last decoder layer's cross-attention, averaged over heads,
  as AliceMind's ``CopyGenerator`` does (``PALM/models/model_builder.py``); it is recomputed from
  that layer's query/key projections (``transformer_decoder.cross_attention_probs``), so it costs
  no parameters and reuses what a loaded checkpoint's cross-attention already knows.
  ``p_gen = sigmoid(W [c; h; x] + b)`` with the context ``c = a @ encoder_states``, the final
  decoder state ``h`` and (``copy_gate_uses_input``, See et al. 2017) the decoder input
  embedding ``x``. Encoder positions with segment id 0 (padding) get no attention and so no
  copy mass; a decoder position that sees no encoder token at all (decoder padding) uses
  p_gen = 1. The log is taken as ``logaddexp(log p_gen + log_softmax(logits),
  log((1 - p_gen) * copy))``, exact and finite (no epsilon is added), so the rows are
  normalised: ``log_softmax`` of them is the identity, the usual cross-entropy gives the
  right loss and ``decoding.encdec_adapter`` (which takes ``log_softmax`` of the last
  position) decodes from the mixture unchanged.

Differences from the released code (README.md): the released ``CopyGenerator`` passes the
scattered copy weights through a second ``softmax`` over the vocabulary (which flattens the copy
distribution to almost uniform); by default this is the pointer-generator as published (See et
al.) with no such softmax, and ``copy_softmax=True`` applies it as released (for converted
``-p_gen`` checkpoints). The FFN-internal dropout of the released decoder is not applied.

Parameter tree (scanned; ``scan_layers=False`` gives ``layers_0 ..``)::

    encoder/...                         BertEncoder (word/pos/type embeddings, stack, norms)
    pooler/{kernel,bias}                BertModel's pooler (use_pooler)
    decoder_embed/embedding [vocab, embed]   (absent with share_embeddings)
    decoder/layers/...                  the first num_decoder_layers - 1 decoder layers
    decoder_last/...                    the last decoder layer (gives the copy attention)
    decoder_final_norm/{scale,bias}
    output_bias [vocab]
    copy_gate/{kernel [2|3 * embed, 1], bias [1]}   (copy)
"""
from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from plug_jax.families.palm.config import PalmConfig
from plug_jax.families.structbert.network import BertEncoder
from plug_jax.layers import quant
from plug_jax.layers.dense import DenseGeneral
from plug_jax.layers.embeddings import Embed
from plug_jax.layers.norms import LayerNorm
from plug_jax.layers.scan import LayerStack
from plug_jax.layers.transformer_decoder import (TransformerDecoderLayer, decoder_cross_mask,
                                                 decoder_masks, encoder_text_features)
from plug_jax.partitioning import axes as A
from plug_jax.partitioning.constraints import with_logical_constraint

_ACT = (A.ACT_BATCH, A.ACT_LENGTH, A.ACT_EMBED)
_LOGITS = (A.ACT_BATCH, A.ACT_LENGTH, A.ACT_VOCAB)


def sinusoidal_positions(positions, dim: int):
    """PreSumm's ``PositionalEncoding``: ``pe[p, 2i] = sin(p / 10000^(2i/d))``,
    ``pe[p, 2i+1] = cos(...)``, for int ``positions`` ``[...]`` -> ``[..., dim]`` float32."""
    div = jnp.exp(jnp.arange(0, dim, 2, dtype=jnp.float32) * -(math.log(10000.0) / dim))
    angle = jnp.asarray(positions, jnp.float32)[..., None] * div
    pe = jnp.stack([jnp.sin(angle), jnp.cos(angle)], axis=-1)
    return pe.reshape(*angle.shape[:-1], -1)[..., :dim]


def scatter_copy(weights, encoder_ids, vocab_size: int):
    """``[b, t, s]`` attention weights -> ``[b, t, vocab]``: the weight of each encoder
    position added to the vocabulary entry of its token."""
    def one(w, ids):  # w [t, s], ids [s]
        return jnp.zeros((w.shape[0], vocab_size), w.dtype).at[:, ids].add(w)
    return jax.vmap(one)(weights, jnp.asarray(encoder_ids, jnp.int32))


class PalmModel(nn.Module):
    """``apply({'params': p}, encoder_input_ids, decoder_input_ids, ...) -> dict``.

    Arguments as :class:`plug_jax.families.plug.PlugModel` (``mlm_positions`` must be None:
    this PALM has no MLM head). Returns ``logits`` (see the module docstring),
    ``encoder_hidden_states``, ``decoder_hidden_states``, ``pooled`` (with ``use_pooler``) and,
    with ``copy``, ``p_gen`` ``[batch, dec_len]`` and ``copy_attention`` ``[batch, dec_len,
    enc_len]``.
    """

    config: PalmConfig

    def encode(self, features: dict) -> dict:
        """The encoder side of generation, run once: ``features`` as
        ``transformer_decoder.encoder_text_features`` -> ``{'hidden_states': [B, E, D], 'mask': bool
        [B, E], 'input_ids': [B, E]}`` (the copy head scatters onto ``input_ids``)."""
        ids, seg, pos, types = encoder_text_features(features)
        return self(ids, None, types, seg, encoder_positions=pos, _phase="encode")

    def decode(self, decoder_input_ids, decoder_positions, token_mask, encoded=None,
               cache_length: int | None = None):
        """One cached decoder step -> ``logits`` ``[B, L, vocab]`` as ``__call__`` gives them
        (the copy mixture's log-probabilities with ``copy``), with the ``cache`` collection
        mutable. The call with ``encoded`` (from :meth:`encode`) and no cache creates the
        cache: ``cache_length`` self-attention slots, every layer's cross-attention keys
        and values, the copy-attention keys, and the encoder states, mask and ids the copy
        head needs (its output is discarded). Later calls (``encoded=None``) append
        ``decoder_input_ids`` at the cache index."""
        return self(None, decoder_input_ids, decoder_positions=decoder_positions,
                    _phase="decode", _encoded=encoded, _token_mask=token_mask,
                    _cache_length=cache_length)["logits"]

    @nn.compact
    def __call__(self, encoder_input_ids, decoder_input_ids, encoder_token_type_ids=None,
                 encoder_segment_ids=None, decoder_segment_ids=None, decoder_positions=None,
                 mlm_positions=None, encoder_positions=None, *, deterministic: bool = True,
                 _phase: str = "full", _encoded=None, _token_mask=None, _cache_length=None):
        # _phase (private; use encode / decode): "full" (training, the default), "encode"
        # (the encoder alone) or "decode" (one cached decoder step; no encoder input).
        cfg = self.config
        if mlm_positions is not None:
            raise ValueError("PalmModel has no MLM head; call it without mlm_positions")
        dtype, pdtype = cfg.compute_dtype, cfg.params_dtype
        init = nn.initializers.normal(cfg.initializer_range)
        decode = _phase == "decode"
        dec_len = None if decoder_input_ids is None else decoder_input_ids.shape[1]

        # ---- encoder (BERT / RoBERTa positions)
        encoder = BertEncoder(cfg.encoder, name="encoder")
        out = {}
        if decode:
            b = decoder_input_ids.shape[0]
            enc = None if _encoded is None else _encoded["hidden_states"]
        else:
            b, enc_len = encoder_input_ids.shape
            if encoder_positions is None:
                encoder_positions = jnp.broadcast_to(jnp.arange(enc_len, dtype=jnp.int32),
                                                     (b, enc_len))
            enc_pos = jnp.asarray(encoder_positions, jnp.int32) + cfg.position_offset
            enc = encoder(encoder_input_ids, encoder_token_type_ids, None, enc_pos,
                          encoder_segment_ids, deterministic=deterministic)
            if _phase == "encode":
                return {"hidden_states": enc, "mask": jnp.asarray(encoder_segment_ids) > 0,
                        "input_ids": jnp.asarray(encoder_input_ids, jnp.int32)}
            out["encoder_hidden_states"] = enc
            if cfg.use_pooler:
                pooled = DenseGeneral(cfg.hidden_size, (A.EMBED, A.MLP), dtype=dtype,
                                      param_dtype=pdtype, kernel_init=init,
                                      name="pooler")(enc[:, 0])
                out["pooled"] = jnp.tanh(pooled)

        # ---- decoder embeddings: table * sqrt(d) + sinusoidal positions
        if cfg.share_embeddings:
            shared = self.variables["params"]["encoder"] if decode else encoder.variables["params"]
            table = quant.float_weight(shared["word_embed"], "embedding", dtype)
        else:
            embed = Embed(cfg.vocab_size, cfg.hidden_size, axes=(A.VOCAB, A.EMBED), dtype=dtype,
                          param_dtype=pdtype, embedding_init=init, name="decoder_embed")
            embed.embedding  # noqa: B018 (creates the table under its name)
            table = quant.float_weight(embed.variables["params"], "embedding", dtype)
        if decoder_positions is None:
            decoder_positions = jnp.broadcast_to(jnp.arange(dec_len, dtype=jnp.int32),
                                                 (b, dec_len))
        tok = jnp.take(table, jnp.asarray(decoder_input_ids, jnp.int32), axis=0)
        x = tok * jnp.asarray(math.sqrt(cfg.hidden_size), dtype)
        x = x + sinusoidal_positions(decoder_positions, cfg.hidden_size).astype(dtype)
        x = nn.Dropout(cfg.decoder.dropout_rate)(x, deterministic=deterministic)
        x = with_logical_constraint(x, _ACT)

        # ---- decoder layers: a stack of L-1, then the last one (copy attention)
        dcfg = cfg.decoder
        kw = (("config", dcfg), ("deterministic", deterministic))
        if decode:  # cached step: masks come from the cache, no remat
            kw += (("decode", True), ("cache_length", _cache_length))
            args = (enc, None, decoder_cross_mask(self, _encoded), _token_mask)
        else:
            args = (enc,) + decoder_masks(b, enc_len, dec_len, encoder_segment_ids,
                                          decoder_segment_ids)
        remat = "none" if decode else dcfg.remat_policy
        if dcfg.num_layers > 1:
            x = LayerStack(layer_cls=TransformerDecoderLayer, num_layers=dcfg.num_layers - 1,
                           layer_kwargs=kw, scan=dcfg.scan_layers,
                           remat_policy=remat, name="decoder")(x, *args)
        last_cls = TransformerDecoderLayer
        if remat != "none":
            from plug_jax.layers.scan import REMAT_POLICIES
            last_cls = nn.remat(TransformerDecoderLayer, policy=REMAT_POLICIES[remat])
        x, copy_attn = last_cls(**dict(kw), return_cross_attention=cfg.copy,
                                name="decoder_last")(x, *args)
        x = LayerNorm(epsilon=dcfg.layer_norm_epsilon, dtype=dcfg.compute_dtype,
                      param_dtype=dcfg.params_dtype, name="decoder_final_norm")(x)
        x = with_logical_constraint(x, _ACT)
        out["decoder_hidden_states"] = x

        # ---- generator: tied logits + bias
        bias = self.param("output_bias",
                          nn.with_logical_partitioning(nn.initializers.zeros, (A.VOCAB,)),
                          (cfg.vocab_size,), pdtype)
        logits = jnp.einsum("bld,vd->blv", x, table)
        logits = jnp.asarray(logits, jnp.float32) + jnp.asarray(bias, jnp.float32)
        logits = with_logical_constraint(logits, _LOGITS)
        if not cfg.copy:
            out["logits"] = logits
            return out

        # ---- pointer-generator
        if decode:  # the encoder states and ids, stored in the cache when it is created
            enc = self.variable("cache", "encoder_hidden_states", lambda: enc).value
            encoder_input_ids = self.variable(
                "cache", "encoder_input_ids",
                lambda: jnp.asarray(_encoded["input_ids"], jnp.int32)).value
        attn = copy_attn.astype(jnp.float32)  # [b, t, s], 0 on hidden encoder positions
        sees_encoder = jnp.sum(attn, axis=-1) > 0.5  # rows with at least one visible key
        context = jnp.einsum("bts,bsd->btd", attn, enc.astype(jnp.float32))
        parts = [context, x.astype(jnp.float32)]
        if cfg.copy_gate_uses_input:
            parts.append(tok.astype(jnp.float32))
        gate = DenseGeneral(1, (None, None), dtype=jnp.float32, param_dtype=pdtype,
                            kernel_init=init, name="copy_gate")(jnp.concatenate(parts, -1))
        gate = jnp.where(sees_encoder, gate[..., 0], jnp.float32(30.0))  # p_gen = 1 there
        log_gen = jax.nn.log_sigmoid(gate)[..., None] + jax.nn.log_softmax(logits, axis=-1)
        copy = scatter_copy(attn, encoder_input_ids, cfg.vocab_size)
        if cfg.copy_softmax:  # the released CopyGenerator's second softmax (module docstring)
            copy = jax.nn.softmax(copy, axis=-1)
        copy = jax.nn.sigmoid(-gate)[..., None] * copy
        positive = copy > 0
        log_copy = jnp.where(positive, jnp.log(jnp.where(positive, copy, 1.0)), -jnp.inf)
        log_probs = jnp.logaddexp(log_gen, log_copy)
        out["logits"] = with_logical_constraint(log_probs, _LOGITS)
        out["p_gen"] = jax.nn.sigmoid(gate)
        out["copy_attention"] = attn
        return out


def abstract_params(config: PalmConfig, batch: int = 1, length: int = 8) -> Any:
    """Shapes (boxed with logical names) of the parameters, without allocating them."""
    ids = jax.ShapeDtypeStruct((batch, length), jnp.int32)
    return jax.eval_shape(lambda r, e, d: PalmModel(config).init(r, e, d),
                          jax.random.PRNGKey(0), ids, ids)["params"]


def param_count(config: PalmConfig) -> int:
    """Number of parameters of ``config`` from abstract shapes (nothing is allocated)."""
    leaves = jax.tree_util.tree_leaves(nn.unbox(abstract_params(config)))
    return int(sum(np.prod(x.shape) for x in leaves))
