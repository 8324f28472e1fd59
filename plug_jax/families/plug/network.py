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
* ``num_decoder_layers`` blocks of, pre-LN: LN -> causal self-attention -> +res; LN ->
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
from plug_jax.layers.attention import (MultiHeadAttention, causal_mask, combine_masks,
                                       padding_mask, segment_mask)
from plug_jax.layers.mlp import MLP
from plug_jax.layers.moe.config import stack_kwargs
from plug_jax.layers.norms import LayerNorm, layer_norm
from plug_jax.layers.scan import LayerStack
from plug_jax.partitioning import axes as A
from plug_jax.partitioning.constraints import with_logical_constraint

_ACT = (A.ACT_BATCH, A.ACT_LENGTH, A.ACT_EMBED)


def cross_attention_keys(attn: nn.Module, kv_in) -> jax.Array:
    """The keys ``[batch, kv_len, heads, head_dim]`` (float32) that
    :func:`cross_attention_probs` attends with, from a bound ``MultiHeadAttention`` and its
    key/value input (cached decoding computes them once per source)."""
    p = nn.unbox(attn.variables["params"])
    f32 = jnp.float32
    k = jnp.einsum("bsd,dhk->bshk", kv_in.astype(f32), p["key"]["kernel"].astype(f32))
    if "bias" in p["key"]:
        k = k + p["key"]["bias"].astype(f32)
    return k


def cross_attention_probs(attn: nn.Module, q_in, kv_in, mask, *, keys=None) -> jax.Array:
    """Head-averaged attention probabilities ``[batch, q_len, kv_len]`` (float32) of a bound
    ``MultiHeadAttention`` that has already been called (its ``query`` / ``key`` parameters
    exist), recomputed from its inputs. Keys hidden by ``mask`` (``[b, 1|h, q, k]``) get exactly
    0; rows without any visible key are all 0 (not uniform). PALM's copy head uses this.
    ``keys``: :func:`cross_attention_keys` of ``kv_in``, when already computed (``kv_in`` is
    then unused)."""
    p = nn.unbox(attn.variables["params"])
    f32 = jnp.float32
    q = jnp.einsum("btd,dhk->bthk", q_in.astype(f32), p["query"]["kernel"].astype(f32))
    if "bias" in p["query"]:
        q = q + p["query"]["bias"].astype(f32)
    k = cross_attention_keys(attn, kv_in) if keys is None else keys
    logits = jnp.einsum("bthk,bshk->bhts", q / np.sqrt(q.shape[-1]), k)
    if mask is not None:
        logits = jnp.where(mask, logits, -1e30)
    probs = jax.nn.softmax(logits, axis=-1)
    if mask is not None:
        probs = jnp.where(mask, probs, 0.0)
    return jnp.mean(probs, axis=1)


def decoder_masks(batch: int, enc_len: int, dec_len: int, encoder_segment_ids=None,
                  decoder_segment_ids=None):
    """``(self_mask, cross_mask)`` of a decoder: causal within decoder segments; cross
    attention to the real encoder tokens (packed rows: decoder segment k sees encoder
    segment k). Segment id 0 is padding."""
    if decoder_segment_ids is None:
        dec_seg = jnp.ones((batch, dec_len), jnp.int32)
    else:
        dec_seg = jnp.asarray(decoder_segment_ids, jnp.int32)
    enc_seg = (jnp.ones((batch, enc_len), jnp.int32) if encoder_segment_ids is None
               else jnp.asarray(encoder_segment_ids, jnp.int32))
    self_mask = combine_masks(causal_mask(batch, dec_len), segment_mask(dec_seg))
    if encoder_segment_ids is None or decoder_segment_ids is None:
        cross_mask = padding_mask(dec_seg > 0, enc_seg > 0)
    else:  # packed: decoder segment k attends to encoder segment k
        cross_mask = segment_mask(dec_seg, enc_seg)
    return self_mask, cross_mask


class PlugDecoderLayer(nn.Module):
    """Self-attention, cross-attention, FFN. ``layer(x, enc, self_mask, cross_mask)``.

    Returns ``(x, None)``, or with ``return_cross_attention`` ``(x, probs)``: the
    cross-attention probabilities averaged over heads ``[batch, dec_len, enc_len]`` (PALM's
    copy attention; :func:`cross_attention_probs`).

    ``decode=True``: cached incremental decoding, ``layer(x, enc, None, cross_mask,
    token_mask)`` with the ``cache`` collection mutable. The call that creates the cache
    (``enc`` = the encoder states; ``cache_length`` self-attention slots) projects the
    cross-attention keys and values of ``enc`` once (and, with ``return_cross_attention``,
    the float32 copy-attention keys); later calls pass ``enc=None``, append ``x`` to the
    self-attention cache (``token_mask`` ``[b, len]`` marks real tokens) and read the
    encoder side from the cache. ``cross_mask`` ``[b, 1, 1|len, enc_len]`` hides encoder
    padding. Parameters are the same as without ``decode``."""

    config: PlugConfig
    deterministic: bool = True
    use_moe: bool = False  # the FFN is a mixture of experts (PLUG-MoE)
    return_cross_attention: bool = False
    decode: bool = False
    cache_length: int | None = None  # self-attention cache slots (decode, cache creation)

    @nn.compact
    def __call__(self, x, enc, self_mask, cross_mask, token_mask=None):
        cfg = self.config
        dtype, pdtype = cfg.compute_dtype, cfg.params_dtype
        init = nn.initializers.normal(cfg.initializer_range)

        def norm(name):
            return LayerNorm(epsilon=cfg.layer_norm_epsilon, dtype=dtype, param_dtype=pdtype,
                             name=name)

        def attention(name):
            return MultiHeadAttention(num_heads=cfg.num_heads, head_dim=cfg.head_dim,
                                      use_bias=True, dropout_rate=cfg.attention_dropout_rate,
                                      dtype=dtype, param_dtype=pdtype, kernel_init=init,
                                      name=name)

        if self.use_moe:
            mlp = cfg.moe_layer(activation=cfg.activation, dtype=dtype, param_dtype=pdtype,
                                kernel_init=init)
        else:
            mlp = MLP(hidden_dim=cfg.mlp_dim, activation=cfg.activation, use_bias=True,
                      dtype=dtype, param_dtype=pdtype, kernel_init=init, name="mlp")
        drop = nn.Dropout(cfg.dropout_rate)
        det = self.deterministic
        cross = attention("cross_attn")
        probs = []

        decode = self.decode

        def self_sub(h):
            if decode:
                return attention("self_attn")(h, decode=True, token_mask=token_mask,
                                              cache_length=self.cache_length,
                                              deterministic=det)
            return attention("self_attn")(h, mask=self_mask, deterministic=det)

        def cross_sub(h):
            if not decode:
                out = cross(h, enc, mask=cross_mask, deterministic=det)
                if self.return_cross_attention:
                    probs.append(cross_attention_probs(cross, h, enc, cross_mask))
                return out
            out = cross(h, enc, mask=cross_mask, decode=True, static_kv=True,
                        deterministic=det)
            if self.return_cross_attention:
                keys = self.variable("cache", "copy_keys",
                                     lambda: cross_attention_keys(cross, enc)).value
                probs.append(cross_attention_probs(cross, h, None, cross_mask, keys=keys))
            return out

        subs = (
            ("self_attn_norm", self_sub),
            ("cross_attn_norm", cross_sub),
            ("mlp_norm", lambda h: mlp(h, deterministic=det)),
        )
        for norm_name, sub in subs:
            if cfg.norm_placement == "pre":
                x = x + drop(sub(norm(norm_name)(x)), deterministic=det)
            else:
                x = norm(norm_name)(x + drop(sub(x), deterministic=det))
        return with_logical_constraint(x, _ACT), (probs[0] if probs else None)


def encoder_text_features(features: dict):
    """``(ids, segment_ids, positions, token_types)`` of a text encoder's features (the
    seqio names of an encoder-decoder batch): ``encoder_input_tokens`` int ``[B, E]`` and,
    optional, ``encoder_segment_ids`` (default: 1 for ids > 0, padding is id 0),
    ``encoder_positions`` and ``encoder_token_types``."""
    if "encoder_input_tokens" not in features:
        raise ValueError(f"the encoder features need 'encoder_input_tokens' (int [B, E]); got "
                         f"{sorted(features)}")
    ids = jnp.asarray(features["encoder_input_tokens"], jnp.int32)
    seg = features.get("encoder_segment_ids")
    seg = (ids > 0).astype(jnp.int32) if seg is None else jnp.asarray(seg, jnp.int32)
    return ids, seg, features.get("encoder_positions"), features.get("encoder_token_types")


def decoder_cross_mask(module: nn.Module, encoded) -> jax.Array:
    """Cached decoding: the ``[b, 1, 1, enc_len]`` cross-attention mask, from ``encoded['mask']``
    (the real encoder positions) on the call that creates the cache, and stored in the
    module's ``cache`` collection for the later steps."""
    mask = module.variable("cache", "encoder_mask",
                           lambda: jnp.asarray(encoded["mask"], jnp.bool_)).value
    return mask[:, None, None, :]


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
        decode = _phase == "decode"
        structbert = StructBERTForPreTraining(cfg.encoder_config, name="structbert")
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
        word = jnp.asarray(nn.unbox(emb["word_embed"]["embedding"]), cfg.compute_dtype)
        pos_table = jnp.asarray(nn.unbox(emb["pos_embed"]["embedding"]), cfg.compute_dtype)
        if decoder_positions is None:
            decoder_positions = jnp.broadcast_to(jnp.arange(dec_len, dtype=jnp.int32),
                                                 (b, dec_len))
        # The decoder inputs go through the encoder's embedding module (PLUG passes
        # bert.embeddings to its decoder): word + position + token type 0, then the
        # embedding LayerNorm when the config has one.
        type0 = jnp.asarray(nn.unbox(emb["type_embed"]["embedding"])[0], cfg.compute_dtype)
        x = jnp.take(word, decoder_input_ids, axis=0) + jnp.take(pos_table, decoder_positions,
                                                                 axis=0) + type0
        if cfg.encoder_config.use_embedding_norm:
            norm = emb["embed_norm"]
            x = layer_norm(x, nn.unbox(norm["scale"]), nn.unbox(norm["bias"]),
                           cfg.layer_norm_epsilon, cfg.compute_dtype)
        x = nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
        x = with_logical_constraint(x, _ACT)
        layer_kw = (("config", cfg), ("deterministic", deterministic))
        if decode:
            layer_kw += (("decode", True), ("cache_length", _cache_length))
            args = (enc, None, decoder_cross_mask(self, _encoded), _token_mask)
        else:
            args = (enc,) + decoder_masks(b, enc_len, dec_len, encoder_segment_ids,
                                          decoder_segment_ids)
        x = LayerStack(**stack_kwargs(cfg, PlugDecoderLayer, cfg.num_decoder_layers, layer_kw),
                       scan=cfg.scan_layers, remat_policy="none" if decode else cfg.remat_policy,
                       name="decoder")(x, *args)
        if cfg.norm_placement == "pre":
            x = LayerNorm(epsilon=cfg.layer_norm_epsilon, dtype=cfg.compute_dtype,
                          param_dtype=cfg.params_dtype, name="decoder_final_norm")(x)
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
