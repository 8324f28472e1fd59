"""T5.1.1 / mT5 encoder-decoder (ChatPLUG's backbone), with fusion-in-decoder and cached decoding.

What makes it T5 rather than the shared ``TransformerDecoderLayer``:

* **Relative position bias.** Attention logits are ``q . k + b[bucket(j - i), head]`` with no
  ``1/sqrt(d)`` scaling. ``bucket`` (:func:`relative_position_bucket`) is exact for the
  first ``num_buckets / 4`` distances (``/ 2`` in the causal decoder) and logarithmic up to
  ``relative_attention_max_distance``; the encoder splits the buckets between both
  directions, the decoder sees only the past. Each stack has one table
  ``relpos_bias [buckets, heads]`` (transformers keeps it on block 0); the bias it gives is
  computed once and shared by every layer of the stack. Cross-attention has no bias.
* **Pre-RMSNorm** (no mean subtraction, no bias) before every sub-layer, a final RMSNorm per
  stack, no biases anywhere, the FFN ``wo(gelu_tanh(wi_0 x) * wi_1 x)`` (``gated_mlp``;
  ``wo(act(wi x))`` without it, as in the original T5).
* One ``shared`` embedding table for encoder and decoder inputs (no scaling). The LM head is
  ``lm_head`` ``[embed, vocab]`` (T5.1.1 / mT5), or with ``tie_word_embeddings`` the shared
  table applied to ``x * d_model**-0.5`` (original T5).

Positions are only used through differences: ``encoder_positions`` / ``decoder_positions``
default to ``0 .. len - 1`` (packed rows pass theirs; relative distances inside a segment do
not change). Segment id 0 (or token id 0 when no segment ids are given) is padding.

**Fusion-in-decoder.** ``encoder_input_tokens`` ``[B, P, L]`` (``P`` passages of ``L`` tokens,
0 = padding) are encoded as ``B * P`` independent rows; the states are concatenated to
``[B, P * L, D]`` with the key mask ``[B, P * L]`` the decoder's cross-attention uses
(:meth:`T5EncoderDecoder.encode_passages`). ``__call__``, ``encode`` and cached decoding take
either shape, so FiD decodes through ``decoding.encdec_adapter`` unchanged and encodes its
passages once.

**Cached decoding** (``encode`` / ``decode``, docs/decoding.md): the call that creates the
cache projects every layer's cross-attention keys and values of the encoder states once and
makes ``cache_length`` empty self-attention slots; each later call writes its tokens' keys,
values, validity and positions at ``cache_index`` and attends causally over the valid slots,
with the relative bias taken from the stored positions, so it equals the recompute path.
Cache leaves keep the batch on axis 0 (keys / values ``[b, slots, heads, kv]``).

Parameter tree (scanned; ``scan_layers=False`` gives ``layers_0 ..``)::

    shared/embedding [vocab, embed]
    encoder/relpos_bias [relpos_buckets, heads]
    encoder/stack/layers/{self_attn_norm, self_attn/{query,key,value,out}, mlp_norm,
                          mlp/{wi_0,wi_1,wo}}/...
    encoder/final_norm/scale
    decoder/...   as the encoder, plus cross_attn_norm and cross_attn/{query,key,value,out}
    lm_head/kernel [embed, vocab]        (absent with tie_word_embeddings)

``plug_jax/convert/hf_t5.py`` maps transformers' ``T5ForConditionalGeneration`` /
``MT5ForConditionalGeneration`` and ChatPLUG's XDPX checkpoints onto it.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from plug_jax.layers.attention import NEG_INF, causal_mask, segment_mask
from plug_jax.layers.config_base import ConfigBase
from plug_jax.layers.dense import DenseGeneral
from plug_jax.layers.embeddings import Embed
from plug_jax.layers.mlp import MLP
from plug_jax.layers.norms import RMSNorm
from plug_jax.layers.scan import LayerStack
from plug_jax.layers.transformer_decoder import (decoder_cross_mask, decoder_masks,
                                                 encoder_text_features)
from plug_jax.partitioning import axes as A
from plug_jax.partitioning.constraints import with_logical_constraint

_ACT = (A.ACT_BATCH, A.ACT_LENGTH, A.ACT_EMBED)
_LOGITS = (A.ACT_BATCH, A.ACT_LENGTH, A.ACT_VOCAB)


@dataclasses.dataclass(frozen=True)
class T5Config(ConfigBase):
    """Sizes of a T5.1.1 / mT5 encoder-decoder (defaults: mT5-small)."""

    vocab_size: int = 250112
    d_model: int = 512
    d_kv: int = 64  # per-head size (inner size = num_heads * d_kv, not always d_model)
    d_ff: int = 1024
    num_layers: int = 8  # encoder layers
    num_decoder_layers: int | None = None  # default num_layers
    num_heads: int = 6
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    dropout_rate: float = 0.1
    layer_norm_epsilon: float = 1e-6
    activation: str = "gelu_tanh"  # transformers' gelu_new ('gated-gelu')
    gated_mlp: bool = True  # T5.1.1 / mT5; False: the original T5's wo(act(wi x))
    tie_word_embeddings: bool = False  # True: original T5 (tied head on x * d_model**-0.5)
    initializer_factor: float = 1.0
    dtype: str = "float32"  # compute dtype
    param_dtype: str = "float32"
    scan_layers: bool = True
    remat_policy: str = "none"

    def __post_init__(self):
        owner = "T5Config"
        for name in ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads",
                     "decoder_layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{owner}: {name} must be >= 1, got {getattr(self, name)}")
        if self.relative_attention_num_buckets < 4:
            raise ValueError(f"{owner}: relative_attention_num_buckets must be >= 4, got "
                             f"{self.relative_attention_num_buckets}")
        if self.relative_attention_max_distance <= self.relative_attention_num_buckets // 2:
            raise ValueError(f"{owner}: relative_attention_max_distance "
                             f"{self.relative_attention_max_distance} must exceed "
                             f"relative_attention_num_buckets / 2")
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(f"{owner}: dropout_rate must be in [0, 1), got {self.dropout_rate}")
        self.check_basics(owner)

    @property
    def decoder_layers(self) -> int:
        return self.num_layers if self.num_decoder_layers is None else self.num_decoder_layers


# ------------------------------------------------------------------ relative positions
@functools.lru_cache(maxsize=None)
def _bucket_table(bidirectional: bool, num_buckets: int, max_distance: int) -> np.ndarray:
    """Bucket of every relative distance ``-max_distance .. max_distance`` (index ``d +
    max_distance``); every farther distance falls in the bucket of ``+-max_distance``. The
    logarithmic part is computed in float32 on the host, as mesh-tensorflow and
    transformers do, so no accelerator's ``log`` can move a boundary."""
    rel = np.arange(-max_distance, max_distance + 1)
    out = np.zeros_like(rel)
    if bidirectional:
        num_buckets //= 2
        out += (rel > 0) * num_buckets
        dist = np.abs(rel)
    else:
        dist = -np.minimum(rel, 0)
    exact = num_buckets // 2
    scaled = (np.log(np.maximum(dist, 1).astype(np.float32) / np.float32(exact))
              / np.float32(math.log(max_distance / exact)) * np.float32(num_buckets - exact))
    large = np.minimum(exact + scaled.astype(np.int64), num_buckets - 1)
    return (out + np.where(dist < exact, dist, large)).astype(np.int32)


def relative_position_bucket(relative_position, bidirectional: bool = True,
                             num_buckets: int = 32, max_distance: int = 128):
    """T5's bucket (int32) of ``relative_position = key_position - query_position``."""
    table = jnp.asarray(_bucket_table(bool(bidirectional), int(num_buckets), int(max_distance)))
    rel = jnp.clip(jnp.asarray(relative_position, jnp.int32), -max_distance, max_distance)
    return table[rel + max_distance]


def relative_position_bias(table, q_positions, k_positions, *, bidirectional: bool,
                           max_distance: int):
    """``[b, heads, q, k]`` float32 bias of ``table [buckets, heads]`` for int positions
    ``[b, q]`` / ``[b, k]`` (``b`` may be 1)."""
    rel = k_positions[:, None, :] - q_positions[:, :, None]
    buckets = relative_position_bucket(rel, bidirectional, table.shape[0], max_distance)
    bias = jnp.take(jnp.asarray(table, jnp.float32), buckets, axis=0)  # [b, q, k, heads]
    return bias.transpose(0, 3, 1, 2)


def _positions(positions, batch: int, length: int):
    if positions is None:
        return jnp.arange(length, dtype=jnp.int32)[None]
    return jnp.broadcast_to(jnp.asarray(positions, jnp.int32), (batch, length))


def _normal(stddev: float):
    return nn.initializers.normal(stddev)


# ------------------------------------------------------------------ attention
class T5Attention(nn.Module):
    """Multi-head attention without biases or score scaling, plus an additive float32
    ``bias`` (the relative positions) and a boolean ``mask``. Parameters and logical axes
    are those of ``MultiHeadAttention`` (``query``/``key``/``value``/``out``).

    ``decode=True`` (``cache`` mutable): self-attention writes this call's keys / values at
    ``cache_index`` and attends over all ``cached_key`` slots (the caller's ``bias`` / ``mask``
    cover the slots); the call that creates the cache (``cache_length`` slots) writes nothing
    and attends within its own input. ``static_kv=True``: cross-attention whose keys / values
    are projected from ``inputs_kv`` by the call that creates the cache and read back after."""

    num_heads: int
    head_dim: int
    dropout_rate: float = 0.0
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    factor: float = 1.0

    @nn.compact
    def __call__(self, inputs_q, inputs_kv=None, bias=None, mask=None, *,
                 deterministic: bool = True, decode: bool = False, static_kv: bool = False,
                 cache_index=None, cache_length: int | None = None):
        h, d = self.num_heads, self.head_dim
        d_model = inputs_q.shape[-1]
        dense = functools.partial(DenseGeneral, use_bias=False, dtype=self.dtype,
                                  param_dtype=self.param_dtype)
        q = dense((h, d), (A.EMBED, A.HEADS, A.KV),
                  kernel_init=_normal(self.factor * (d_model * d) ** -0.5), name="query")(inputs_q)
        q = with_logical_constraint(q, (A.ACT_BATCH, A.ACT_LENGTH, A.ACT_HEADS, A.ACT_KV))

        def project(name, x):
            y = dense((h, d), (A.EMBED, A.KV_HEADS, A.KV),
                      kernel_init=_normal(self.factor * d_model ** -0.5), name=name)(x)
            return with_logical_constraint(
                y, (A.ACT_BATCH, A.ACT_KV_LENGTH, A.ACT_KV_HEADS, A.ACT_KV))

        if static_kv:
            if not self.has_variable("cache", "cached_key"):
                if inputs_kv is None or not self.is_mutable_collection("cache"):
                    raise ValueError("cached cross-attention without a cache: create it with "
                                     "the encoder states (decode(..., encoded=...)) and "
                                     "mutable=['cache']")
                key, value = project("key", inputs_kv), project("value", inputs_kv)
                self.variable("cache", "cached_key", lambda: key)
                self.variable("cache", "cached_value", lambda: value)
            key = self.get_variable("cache", "cached_key")
            value = self.get_variable("cache", "cached_value")
        else:
            src = inputs_q if inputs_kv is None else inputs_kv
            key, value = project("key", src), project("value", src)
            if decode:
                creating = not self.has_variable("cache", "cached_key")
                shape = (key.shape[0], cache_length or key.shape[1], h, d)
                ck = self.variable("cache", "cached_key", jnp.zeros, shape, key.dtype)
                cv = self.variable("cache", "cached_value", jnp.zeros, shape, value.dtype)
                if not creating:
                    start = (0, cache_index, 0, 0)
                    ck.value = jax.lax.dynamic_update_slice(
                        ck.value, key.astype(ck.value.dtype), start)
                    cv.value = jax.lax.dynamic_update_slice(
                        cv.value, value.astype(cv.value.dtype), start)
                    key, value = ck.value, cv.value

        logits = jnp.einsum("bqhd,bkhd->bhqk", q, key.astype(q.dtype),
                            preferred_element_type=jnp.float32)
        if bias is not None:
            logits = logits + bias
        if mask is not None:
            logits = jnp.where(mask, logits, NEG_INF)
        weights = jax.nn.softmax(logits, axis=-1)
        if not deterministic and self.dropout_rate > 0.0:
            keep = jax.random.bernoulli(self.make_rng("dropout"), 1.0 - self.dropout_rate,
                                        weights.shape)
            weights = weights * keep / (1.0 - self.dropout_rate)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights.astype(self.dtype),
                         value.astype(self.dtype))
        out = with_logical_constraint(out, (A.ACT_BATCH, A.ACT_LENGTH, A.ACT_HEADS, A.ACT_KV))
        out = dense(d_model, (A.HEADS, A.KV, A.EMBED), axis=(-2, -1),
                    kernel_init=_normal(self.factor * (h * d) ** -0.5), name="out")(out)
        return with_logical_constraint(out, _ACT)


# ------------------------------------------------------------------ layers and stacks
class T5Layer(nn.Module):
    """``layer(x, bias, mask, enc, cross_mask, cache_index) -> (x, None)``: pre-RMSNorm
    self-attention, (decoder) cross-attention to ``enc``, gated FFN, each added to the
    residual after dropout."""

    config: T5Config
    is_decoder: bool = False
    deterministic: bool = True
    decode: bool = False
    cache_length: int | None = None

    @nn.compact
    def __call__(self, x, bias, mask, enc, cross_mask, cache_index):
        cfg = self.config
        dtype, pdtype, det = cfg.compute_dtype, cfg.params_dtype, self.deterministic
        drop = nn.Dropout(cfg.dropout_rate)

        def norm(name):
            return RMSNorm(cfg.layer_norm_epsilon, dtype=dtype, param_dtype=pdtype, name=name)

        def attention(name):
            return T5Attention(cfg.num_heads, cfg.d_kv, cfg.dropout_rate, dtype=dtype,
                               param_dtype=pdtype, factor=cfg.initializer_factor, name=name)

        h = attention("self_attn")(norm("self_attn_norm")(x), bias=bias, mask=mask,
                                   deterministic=det, decode=self.decode,
                                   cache_index=cache_index, cache_length=self.cache_length)
        x = x + drop(h, deterministic=det)
        if self.is_decoder:
            h = attention("cross_attn")(norm("cross_attn_norm")(x), enc, mask=cross_mask,
                                        deterministic=det, static_kv=self.decode)
            x = x + drop(h, deterministic=det)
        f = cfg.initializer_factor
        h = MLP(cfg.d_ff, activation=cfg.activation, gated=cfg.gated_mlp, use_bias=False,
                dropout_rate=cfg.dropout_rate, dtype=dtype, param_dtype=pdtype,
                kernel_init=_normal(f * cfg.d_model ** -0.5),
                out_kernel_init=_normal(f * cfg.d_ff ** -0.5),
                name="mlp")(norm("mlp_norm")(x), deterministic=det)
        x = x + drop(h, deterministic=det)
        return with_logical_constraint(x, _ACT), None


class T5Stack(nn.Module):
    """The encoder (bidirectional buckets) or decoder (causal buckets, cross-attention):
    ``stack(embedded, positions, mask, enc, cross_mask) -> states`` after the final norm.

    ``decode=True`` (decoder only): the stack keeps ``cache_index``, ``cached_positions`` and
    ``cached_mask`` (valid slots) and builds the causal mask and relative bias over the
    ``cache_length`` slots itself (``mask`` is ignored); ``token_mask`` marks real tokens."""

    config: T5Config
    is_decoder: bool = False

    @nn.compact
    def __call__(self, x, positions, mask, enc=None, cross_mask=None, *,
                 deterministic: bool = True, decode: bool = False, token_mask=None,
                 cache_length: int | None = None):
        cfg = self.config
        b, n = x.shape[:2]
        table = self.param(
            "relpos_bias",
            nn.with_logical_partitioning(_normal(cfg.initializer_factor * cfg.d_model ** -0.5),
                                         (A.RELPOS_BUCKETS, A.HEADS)),
            (cfg.relative_attention_num_buckets, cfg.num_heads), cfg.params_dtype)
        q_pos = k_pos = _positions(positions, b, n)
        index = None
        if decode:
            creating = not self.has_variable("cache", "cache_index")
            slots = n if cache_length is None else int(cache_length)
            index_var = self.variable("cache", "cache_index", jnp.zeros, (b,), jnp.int32)
            pos_var = self.variable("cache", "cached_positions", jnp.zeros, (b, slots),
                                    jnp.int32)
            valid_var = self.variable("cache", "cached_mask", jnp.zeros, (b, slots), jnp.bool_)
            if creating:  # attends within this input; nothing is written
                mask = causal_mask(b, n)
            else:
                index = index_var.value[0]
                valid = jnp.ones((b, n), jnp.bool_) if token_mask is None else token_mask
                q_pos = jnp.broadcast_to(q_pos, (b, n))
                pos_var.value = jax.lax.dynamic_update_slice(pos_var.value, q_pos, (0, index))
                valid_var.value = jax.lax.dynamic_update_slice(
                    valid_var.value, jnp.asarray(valid, jnp.bool_), (0, index))
                index_var.value = index_var.value + n
                k_pos = pos_var.value
                causal = jnp.arange(slots)[None, :] <= index + jnp.arange(n)[:, None]
                mask = causal[None, None] & valid_var.value[:, None, None, :]
        bias = relative_position_bias(table, q_pos, k_pos, bidirectional=not self.is_decoder,
                                      max_distance=cfg.relative_attention_max_distance)
        x = nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
        kw = (("config", cfg), ("is_decoder", self.is_decoder),
              ("deterministic", deterministic), ("decode", decode),
              ("cache_length", cache_length))
        x = LayerStack(layer_cls=T5Layer,
                       num_layers=cfg.decoder_layers if self.is_decoder else cfg.num_layers,
                       layer_kwargs=kw, scan=cfg.scan_layers,
                       remat_policy="none" if decode else cfg.remat_policy,
                       name="stack")(x, bias, mask, enc, cross_mask, index)
        x = RMSNorm(cfg.layer_norm_epsilon, dtype=cfg.compute_dtype,
                    param_dtype=cfg.params_dtype, name="final_norm")(x)
        x = nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
        return with_logical_constraint(x, _ACT)


# ------------------------------------------------------------------ the model
class T5EncoderDecoder(nn.Module):
    """``apply({'params': p}, encoder_input_ids, decoder_input_ids, ...) -> dict`` with
    ``logits`` ``[B, T, vocab]`` (float32), ``encoder_hidden_states`` (``[B, E, D]``, or
    ``[B, P * L, D]`` for passages) and ``decoder_hidden_states``.

    ``encoder_input_ids`` int ``[B, E]``, or ``[B, P, L]`` passages (fusion-in-decoder);
    ``encoder_segment_ids`` / ``encoder_positions`` of the same shape (default: ids > 0 /
    ``0 .. len - 1`` per row or passage); ``decoder_segment_ids`` for packed decoder rows
    (FiD rows are not packed). Implements ``encode`` / ``decode`` for
    ``decoding.encdec_adapter`` (the ``encdec_lm`` kind)."""

    config: T5Config

    def encode(self, features: dict) -> dict:
        """``{'hidden_states': [B, E | P*L, D], 'mask': bool [B, E | P*L]}`` of the
        encoder features (``transformer_decoder.encoder_text_features``; ids of either
        shape)."""
        ids, seg, pos, _ = encoder_text_features(features)
        return self(ids, None, seg, encoder_positions=pos, _phase="encode")

    def encode_passages(self, passage_ids, segment_ids=None, positions=None, *,
                        deterministic: bool = True) -> dict:
        """Fusion-in-decoder: passages ``[B, P, L]`` (0 = padding) encoded one by one
        (``[B * P, L]`` rows) and concatenated: ``{'hidden_states': [B, P * L, D], 'mask':
        bool [B, P * L]}`` (the cross-attention key mask; padding is hidden)."""
        if jnp.ndim(passage_ids) != 3:
            raise ValueError(f"encode_passages takes passages [B, P, L]; got shape "
                             f"{jnp.shape(passage_ids)}")
        return self(passage_ids, None, segment_ids, encoder_positions=positions,
                    deterministic=deterministic, _phase="encode")

    def decode(self, decoder_input_ids, decoder_positions, token_mask, encoded=None,
               cache_length: int | None = None):
        """One cached decoder step -> ``logits`` ``[B, L, vocab]`` (``cache`` mutable). The
        call with ``encoded`` (from :meth:`encode`) and no cache creates it (``cache_length``
        self-attention slots, every layer's cross-attention keys / values, the encoder mask);
        later calls (``encoded=None``) append ``decoder_input_ids`` at the cache index."""
        return self(None, decoder_input_ids, decoder_positions=decoder_positions,
                    _phase="decode", _encoded=encoded, _token_mask=token_mask,
                    _cache_length=cache_length)["logits"]

    @nn.compact
    def __call__(self, encoder_input_ids, decoder_input_ids, encoder_segment_ids=None,
                 decoder_segment_ids=None, encoder_positions=None, decoder_positions=None, *,
                 deterministic: bool = True, _phase: str = "full", _encoded=None,
                 _token_mask=None, _cache_length=None):
        # _phase (private; use encode / decode): "full", "encode" or "decode".
        cfg = self.config
        shared = Embed(cfg.vocab_size, cfg.d_model, dtype=cfg.compute_dtype,
                       param_dtype=cfg.params_dtype,
                       embedding_init=_normal(cfg.initializer_factor), name="shared")
        encoder = T5Stack(cfg, is_decoder=False, name="encoder")
        decoder = T5Stack(cfg, is_decoder=True, name="decoder")
        out = {}
        if _phase == "decode":
            enc = None if _encoded is None else _encoded["hidden_states"]
            cross = decoder_cross_mask(self, _encoded)
        else:
            ids = jnp.asarray(encoder_input_ids, jnp.int32)
            seg = (ids > 0 if encoder_segment_ids is None else
                   jnp.asarray(encoder_segment_ids)).astype(jnp.int32)
            pos, fid = encoder_positions, ids.ndim == 3
            if fid:  # fusion-in-decoder: one encoder row per passage
                rows, passages, length = ids.shape
                ids, seg = ids.reshape(-1, length), seg.reshape(-1, length)
                pos = None if pos is None else jnp.reshape(pos, (-1, length))
            length = ids.shape[1]
            enc = encoder(shared(ids), _positions(pos, ids.shape[0], length),
                          segment_mask(seg), deterministic=deterministic)
            if fid:
                enc = enc.reshape(rows, passages * length, -1)
                seg = seg.reshape(rows, passages * length)
            enc = with_logical_constraint(enc, _ACT)
            if _phase == "encode":
                return {"hidden_states": enc, "mask": seg > 0}
            out["encoder_hidden_states"] = enc

        ids = jnp.asarray(decoder_input_ids, jnp.int32)
        x = shared(ids)
        if _phase == "decode":
            x = decoder(x, decoder_positions, None, enc, cross, deterministic=deterministic,
                        decode=True, token_mask=_token_mask, cache_length=_cache_length)
        else:
            self_mask, cross = decoder_masks(ids.shape[0], enc.shape[1], ids.shape[1], seg,
                                             decoder_segment_ids)
            x = decoder(x, decoder_positions, self_mask, enc, cross,
                        deterministic=deterministic)
        out["decoder_hidden_states"] = x
        if cfg.tie_word_embeddings:
            logits = shared.attend(x * jnp.asarray(cfg.d_model ** -0.5, x.dtype))
        else:
            logits = DenseGeneral(cfg.vocab_size, (A.EMBED, A.VOCAB), use_bias=False,
                                  dtype=cfg.compute_dtype, param_dtype=cfg.params_dtype,
                                  kernel_init=_normal(cfg.initializer_factor
                                                      * cfg.d_model ** -0.5),
                                  name="lm_head")(x)
        out["logits"] = with_logical_constraint(jnp.asarray(logits, jnp.float32), _LOGITS)
        return out


def abstract_params(config: T5Config, batch: int = 1, length: int = 8) -> Any:
    """Shapes (boxed with logical names) of the parameters, without allocating them."""
    ids = jax.ShapeDtypeStruct((batch, length), jnp.int32)
    return jax.eval_shape(lambda r, e, d: T5EncoderDecoder(config).init(r, e, d),
                          jax.random.PRNGKey(0), ids, ids)["params"]


def param_count(config: T5Config) -> int:
    """Number of parameters of ``config`` (nothing is allocated)."""
    leaves = jax.tree_util.tree_leaves(nn.unbox(abstract_params(config)))
    return int(sum(np.prod(x.shape) for x in leaves))
