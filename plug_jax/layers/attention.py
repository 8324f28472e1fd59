"""Multi-head attention with grouped KV heads, masks for packed inputs, and a KV cache.

Masks are boolean ``[batch, 1, q_len, kv_len]`` arrays (True = may attend) built
with the helpers below and combined with :func:`combine_masks`:

* :func:`causal_mask` -- key index <= query index (per packed row; packing is
  handled by the segment mask, since positions increase within a segment).
* :func:`segment_mask` -- query and key in the same segment; segment 0 is padding.
* :func:`prefix_mask`  -- causal, plus full attention among prefix tokens (prefix LM).

Incremental decoding (``decode=True``) keeps ``cached_key``, ``cached_value``,
``cached_mask`` (which cache slots hold real tokens) and ``cache_index`` in the
``cache`` collection. Every cache leaf has the batch as its axis 0; the keys and values
are stored ``[batch, kv_heads, slots, head_dim]`` for several rows (the layout the attention
dots read without a transpose) and ``[1, slots, kv_heads, head_dim]`` for one
(:func:`cache_heads_first`). The cache is
created by the first call without a cache (initialising with an input of the full
cache length, or any input and ``cache_length``); after that each call writes its
tokens at ``cache_index`` and attends causally to every valid slot written so far.
Rows advance in lock step, so prompts of different lengths are left-padded (their
padding slots are marked invalid).

Cross-attention of an encoder-decoder decodes with ``decode=True, static_kv=True``: the
call that creates the cache projects ``inputs_kv`` (the encoder states) into
``cached_key`` / ``cached_value`` once; later calls read them back and project nothing
(``inputs_kv`` may then be None).
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from plug_jax.layers.dense import DenseGeneral, default_kernel_init
from plug_jax.partitioning import axes as A
from plug_jax.partitioning.constraints import with_logical_constraint

NEG_INF = -1e10


# --------------------------------------------------------------------------- masks
def causal_mask(batch: int, q_len: int, kv_len: int | None = None, offset: int = 0):
    """``[batch, 1, q_len, kv_len]``: key j visible to query i iff j <= i + offset."""
    kv_len = q_len if kv_len is None else kv_len
    q = jnp.arange(q_len)[:, None] + offset
    k = jnp.arange(kv_len)[None, :]
    return jnp.broadcast_to((k <= q)[None, None], (batch, 1, q_len, kv_len))


def segment_mask(q_segment_ids, kv_segment_ids=None):
    """Same-segment mask; segment id 0 marks padding and is never attended to."""
    kv_segment_ids = q_segment_ids if kv_segment_ids is None else kv_segment_ids
    same = q_segment_ids[:, :, None] == kv_segment_ids[:, None, :]
    valid = (kv_segment_ids != 0)[:, None, :]
    return (same & valid)[:, None]


def padding_mask(q_valid, kv_valid=None):
    """Mask from boolean validity vectors (1 = real token)."""
    kv_valid = q_valid if kv_valid is None else kv_valid
    return (jnp.asarray(kv_valid, bool)[:, None, :]
            & jnp.ones_like(jnp.asarray(q_valid, bool))[:, :, None])[:, None]


def prefix_mask(is_prefix):
    """Prefix-LM mask: causal, plus bidirectional among tokens with ``is_prefix``."""
    b, length = is_prefix.shape
    causal = causal_mask(b, length)
    p = jnp.asarray(is_prefix, bool)
    both = (p[:, :, None] & p[:, None, :])[:, None]
    return causal | both


def combine_masks(*masks):
    """Logical AND of the non-None masks (None if all are None)."""
    masks = [m for m in masks if m is not None]
    if not masks:
        return None
    return functools.reduce(jnp.logical_and, masks)


# ------------------------------------------------------------------------ attention
def _heads_first(x):
    """``[b, s, h, d]`` -> ``[b, h, s, d]``."""
    return x.transpose(0, 2, 1, 3)


HEADS_FIRST_MARK = "kv_heads_first"  # a [b, 0] cache leaf: present = heads-first layout


def cache_heads_first(batch) -> bool:
    """The KV cache layout chosen when a cache is created for ``batch`` rows:
    ``[b, kv_heads, slots, head_dim]`` when ``batch > 1`` (or symbolic, as in a
    shape-polymorphic export), which the attention dots read as they are, else
    ``[1, slots, kv_heads, head_dim]``. The choice is recorded in the cache (an empty
    ``kv_heads_first`` leaf), so a cache keeps its layout when its rows change afterwards
    (beam search repeats a one-row cache per beam; a shape-polymorphic export decodes with
    the cache of a symbolic batch). Measured with XLA:CPU (jax 0.10.2), 91M GPT-2 shape:
    with several rows the slots-first layout made every step transpose the whole cache of
    every layer (batch 32, 600 slots: 294 vs 106 ms a step); with one row the heads-first
    layout's update is fused twice (the cache and the dot's operand, once the unit batch is
    dropped) and copies the cache instead (600 slots: 38 vs 18 ms), while the slots-first
    update stays in place."""
    return batch > 1


def dot_product_attention(query, key, value, mask=None, *, dropout_rng=None,
                          dropout_rate: float = 0.0, deterministic: bool = True,
                          dtype=jnp.float32, kv_heads_first: bool = False):
    """Scaled dot-product attention with grouped KV heads.

    query ``[b, q, h, d]``; key/value ``[b, k, kvh, d]`` with ``h % kvh == 0`` (or
    ``[b, kvh, k, d]`` with ``kv_heads_first``: the KV cache's layout, read without a
    transpose); mask broadcastable to ``[b, h, q, k]``. Softmax is computed in float32.
    """
    b, q_len, heads, head_dim = query.shape
    if not kv_heads_first:
        key, value = key.transpose(0, 2, 1, 3), value.transpose(0, 2, 1, 3)
    kv_heads = key.shape[1]
    if heads % kv_heads:
        raise ValueError(f"num_heads {heads} is not a multiple of num_kv_heads {kv_heads}")
    groups = heads // kv_heads
    kv_len = key.shape[2]
    query = query / jnp.sqrt(head_dim).astype(query.dtype)
    # Batch dimensions first and the contracted dimension last: [b, kvh, g*q, d] against
    # [b, kvh, s, d]. XLA's CPU dot emitter runs this standard batched-matmul layout about
    # 1.4x faster (forward + backward) than an einsum over the [b, q, h, d] layout, which
    # makes it insert its own transposes around each dot; on GPU/TPU it is neutral.
    query = query.reshape(b, q_len, kv_heads, groups, head_dim).transpose(0, 2, 3, 1, 4)
    query = query.reshape(b, kv_heads, groups * q_len, head_dim)
    logits = jnp.einsum("bkmd,bksd->bkms", query, key, preferred_element_type=jnp.float32)
    logits = logits.reshape(b, heads, q_len, kv_len)
    if mask is not None:
        logits = jnp.where(mask, logits, NEG_INF)
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    if not deterministic and dropout_rate > 0.0:
        keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, weights.shape)
        weights = weights * keep / (1.0 - dropout_rate)
    weights = weights.astype(dtype).reshape(b, kv_heads, groups * q_len, kv_len)
    value = value.astype(dtype)
    out = jnp.einsum("bkms,bksd->bkmd", weights, value)
    out = out.reshape(b, kv_heads, groups, q_len, head_dim).transpose(0, 3, 1, 2, 4)
    return out.reshape(b, q_len, heads, head_dim)


def _choose_heads_first(module: nn.Module, batch) -> bool:
    """:func:`cache_heads_first` for a cache being created by ``module``, recorded in it."""
    try:
        heads_first = bool(cache_heads_first(batch))
    except Exception:  # a symbolic batch (jax.export): several rows in general
        heads_first = True
    if heads_first:
        module.variable("cache", HEADS_FIRST_MARK, jnp.zeros, (batch, 0), jnp.bool_)
    return heads_first


class MultiHeadAttention(nn.Module):
    """Self- or cross-attention with optional grouped KV heads and a KV cache.

    Parameters: ``query`` ``[embed, heads, kv]``, ``key``/``value``
    ``[embed, kv_heads, kv]``, ``out`` ``[heads, kv, embed]`` (with biases when
    ``use_bias``).
    """

    num_heads: int
    head_dim: int
    num_kv_heads: int | None = None
    use_bias: bool = True
    dropout_rate: float = 0.0
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    kernel_init: Any = default_kernel_init
    out_kernel_init: Any = None

    @nn.compact
    def __call__(self, inputs_q, inputs_kv=None, mask=None, *, decode: bool = False,
                 token_mask=None, deterministic: bool = True, static_kv: bool = False,
                 cache_length: int | None = None, prefill: bool = False):
        """Attends ``inputs_q`` to ``inputs_kv`` (``inputs_q`` when None).

        Args:
          mask: boolean ``[b, 1|h, q, k]`` mask (ignored in cached self-attention
            decoding, which builds its own causal-over-cache mask; used as given by
            cached cross-attention).
          decode: use / fill the KV cache.
          token_mask: ``[b, q]`` validity of the new tokens when decoding.
          static_kv: with ``decode``, cross-attention to fixed ``inputs_kv``: their keys
            and values are projected once, by the call that creates the cache, and read
            from the cache afterwards (``inputs_kv`` may be None then).
          cache_length: with ``decode``, the number of self-attention cache slots when
            this call creates the cache (default: this input's length).
          prefill: with ``decode``, a call that creates the cache also writes this input's
            keys and values into its first slots (valid where ``token_mask``) and attends
            with ``mask`` as given (a prefix LM's bidirectional prefix); later calls append
            after them. Without it the creating call writes nothing.
        """
        kv_heads = self.num_kv_heads or self.num_heads
        features = inputs_q.shape[-1]
        dense = functools.partial(DenseGeneral, use_bias=self.use_bias, dtype=self.dtype,
                                  param_dtype=self.param_dtype, kernel_init=self.kernel_init)
        if static_kv and not decode:
            raise ValueError("static_kv=True needs decode=True")
        if decode and not static_kv and inputs_kv is not None:
            raise ValueError("decode=True with inputs_kv is only supported for self-attention; "
                             "cross-attention to fixed encoder states decodes with "
                             "static_kv=True")
        is_self = inputs_kv is None and not static_kv
        inputs_kv = inputs_q if is_self else inputs_kv
        query = dense(features=(self.num_heads, self.head_dim),
                      kernel_axes=(A.EMBED, A.HEADS, A.KV), name="query")(inputs_q)
        query = with_logical_constraint(query, (A.ACT_BATCH, A.ACT_LENGTH, A.ACT_HEADS, A.ACT_KV))

        def project(name, x):
            y = dense(features=(kv_heads, self.head_dim),
                      kernel_axes=(A.EMBED, A.KV_HEADS, A.KV), name=name)(x)
            return with_logical_constraint(
                y, (A.ACT_BATCH, A.ACT_KV_LENGTH, A.ACT_KV_HEADS, A.ACT_KV))

        heads_first = False  # the layout of the cached keys / values (cache_heads_first)
        if static_kv:
            key, value, heads_first = self._static_kv_cache(
                lambda: project("key", inputs_kv), lambda: project("value", inputs_kv))
        else:
            key, value = project("key", inputs_kv), project("value", inputs_kv)
            if decode:
                key, value, new_mask, heads_first = self._update_cache(
                    key, value, token_mask, cache_length, prefill)
                mask = mask if prefill and new_mask is None else new_mask

        dropout_rng = None
        if not deterministic and self.dropout_rate > 0.0:
            dropout_rng = self.make_rng("dropout")
        out = dot_product_attention(query, key, value, mask, dropout_rng=dropout_rng,
                                    dropout_rate=self.dropout_rate,
                                    deterministic=deterministic, dtype=self.dtype,
                                    kv_heads_first=heads_first)
        out = with_logical_constraint(out, (A.ACT_BATCH, A.ACT_LENGTH, A.ACT_HEADS, A.ACT_KV))
        out = DenseGeneral(features=features, axis=(-2, -1),
                           kernel_axes=(A.HEADS, A.KV, A.EMBED), use_bias=self.use_bias,
                           dtype=self.dtype, param_dtype=self.param_dtype,
                           kernel_init=self.out_kernel_init or self.kernel_init,
                           name="out")(out)
        return with_logical_constraint(out, (A.ACT_BATCH, A.ACT_LENGTH, A.ACT_EMBED))

    def _static_kv_cache(self, make_key, make_value):
        """Cross-attention keys / values: projected by the call that creates the cache
        (``make_key()`` / ``make_value()``), read back from it afterwards."""
        if not self.has_variable("cache", "cached_key"):
            if not self.is_mutable_collection("cache"):
                raise ValueError("static_kv decoding without a cache: create it with the "
                                 "encoder states and mutable=['cache']")
        if self.has_variable("cache", "cached_key"):
            heads_first = self.has_variable("cache", HEADS_FIRST_MARK)
            return (self.get_variable("cache", "cached_key"),
                    self.get_variable("cache", "cached_value"), heads_first)
        key, value = make_key(), make_value()
        heads_first = _choose_heads_first(self, key.shape[0])
        if heads_first:
            key, value = _heads_first(key), _heads_first(value)
        self.variable("cache", "cached_key", lambda: key)
        self.variable("cache", "cached_value", lambda: value)
        return key, value, heads_first

    def _update_cache(self, key, value, token_mask, cache_length=None, prefill=False):
        b, n_new = key.shape[:2]
        initialized = self.has_variable("cache", "cached_key")
        slots = n_new if cache_length is None else int(cache_length)
        heads_first = (self.has_variable("cache", HEADS_FIRST_MARK) if initialized
                       else _choose_heads_first(self, b))
        shape = ((b, key.shape[2], slots, key.shape[3]) if heads_first
                 else (b, slots) + key.shape[2:])
        cached_key = self.variable("cache", "cached_key", jnp.zeros, shape, key.dtype)
        cached_value = self.variable("cache", "cached_value", jnp.zeros, shape, value.dtype)
        cached_mask = self.variable("cache", "cached_mask", jnp.zeros, (b, slots), jnp.bool_)
        cache_index = self.variable("cache", "cache_index", jnp.zeros, (b,), jnp.int32)
        if not initialized:
            if prefill:
                # Creating the cache and writing this input (a prefix) into its first slots;
                # the caller's mask applies to this call (returned as None).
                if n_new > slots:
                    raise ValueError(f"prefill of {n_new} tokens into a cache of {slots} slots; "
                                     f"fix: cache_length >= prefix + new tokens")
                valid = (jnp.ones((b, n_new), jnp.bool_) if token_mask is None
                         else jnp.asarray(token_mask, jnp.bool_))
                if heads_first:
                    k_in, v_in, start = _heads_first(key), _heads_first(value), (0, 0, 0, 0)
                else:
                    k_in, v_in, start = key, value, (0, 0, 0, 0)
                cached_key.value = jax.lax.dynamic_update_slice(
                    cached_key.value, k_in.astype(cached_key.value.dtype), start)
                cached_value.value = jax.lax.dynamic_update_slice(
                    cached_value.value, v_in.astype(cached_value.value.dtype), start)
                cached_mask.value = jax.lax.dynamic_update_slice(cached_mask.value, valid, (0, 0))
                cache_index.value = cache_index.value + n_new
                return key, value, None, False
            # Creating the cache (``cache_length`` slots, default this input's length); the
            # tokens of this call are not written into it.
            return key, value, causal_mask(b, n_new), False
        max_len = cached_mask.value.shape[1]
        index = cache_index.value[0]
        if token_mask is None:
            token_mask = jnp.ones((b, n_new), jnp.bool_)
        if heads_first:
            start, key, value = (0, 0, index, 0), _heads_first(key), _heads_first(value)
        else:
            start = (0, index, 0, 0)
        k_all = jax.lax.dynamic_update_slice(
            cached_key.value, key.astype(cached_key.value.dtype), start)
        v_all = jax.lax.dynamic_update_slice(
            cached_value.value, value.astype(cached_value.value.dtype), start)
        m_all = jax.lax.dynamic_update_slice(cached_mask.value, jnp.asarray(token_mask, jnp.bool_), (0, index))
        cached_key.value, cached_value.value, cached_mask.value = k_all, v_all, m_all
        cache_index.value = cache_index.value + n_new
        slots = jnp.arange(max_len)[None, :]
        q_slots = index + jnp.arange(n_new)[:, None]
        visible = (slots <= q_slots)[None, None] & m_all[:, None, None, :]
        return k_all, v_all, visible, heads_first
