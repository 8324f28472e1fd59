"""The Transformer decoder layer that PALM and PLUG share, its config, and the masks and
helpers of encoder-decoder models.

:class:`TransformerDecoderLayer` is PreSumm's / PALM's decoder block (``PALM/models/decoder.py``,
the same block PLUG plugs on its StructBERT encoder): causal self-attention, cross-attention to
the encoder states, FFN, each pre-LN (``LN -> sub-layer -> +res``) or post-LN
(``sub-layer -> +res -> LN``). Its parameters (``self_attn``, ``cross_attn``, ``mlp`` or
``moe``, ``self_attn_norm``, ``cross_attn_norm``, ``mlp_norm``) are what ``PlugModel`` and
``PalmModel`` have always written under ``decoder/`` and ``decoder_last/``.

:class:`TransformerDecoderConfig` holds the sizes of such a stack; a composite family config
(``PalmConfig``, ``PlugConfig``) holds one as its ``decoder`` part.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from plug_jax.layers.attention import (MultiHeadAttention, causal_mask, combine_masks,
                                       padding_mask, segment_mask)
from plug_jax.layers.config_base import ConfigBase
from plug_jax.layers.mlp import MLP
from plug_jax.layers.moe.config import MoeFields
from plug_jax.layers import quant
from plug_jax.layers.norms import LayerNorm
from plug_jax.partitioning import axes as A
from plug_jax.partitioning.constraints import with_logical_constraint

NORM_PLACEMENTS = ("post", "pre")
_ACT = (A.ACT_BATCH, A.ACT_LENGTH, A.ACT_EMBED)


@dataclasses.dataclass(frozen=True)
class TransformerDecoderConfig(MoeFields, ConfigBase):
    """A stack of :class:`TransformerDecoderLayer`s (the MoE fields put experts in every
    ``moe_every_n``-th layer, as in the family configs)."""

    num_layers: int = 6
    num_heads: int = 8
    hidden_size: int = 512
    ffn_size: int | None = None  # default 4 * hidden_size
    layer_norm_epsilon: float = 1e-6
    activation: str = "gelu"
    norm_placement: str = "pre"  # 'pre' (PreSumm / PALM / PLUG) or 'post'
    dropout_rate: float = 0.1  # residual dropout
    attention_dropout_rate: float = 0.1
    initializer_range: float = 0.02
    dtype: str = "float32"  # compute dtype
    param_dtype: str = "float32"
    scan_layers: bool = True
    remat_policy: str = "none"

    def __post_init__(self):
        owner = "TransformerDecoderConfig"
        if self.num_layers < 1:
            raise ValueError(f"{owner}: num_layers must be >= 1, got {self.num_layers}")
        if self.num_heads < 1 or self.hidden_size % self.num_heads:
            raise ValueError(f"{owner}: hidden_size {self.hidden_size} is not divisible by "
                             f"num_heads {self.num_heads}")
        if self.norm_placement not in NORM_PLACEMENTS:
            raise ValueError(f"{owner}: unknown norm_placement {self.norm_placement!r}; choose "
                             f"one of {NORM_PLACEMENTS}")
        self.check_basics(owner)
        self.check_moe(owner, num_layers=self.num_layers)

    @property
    def mlp_dim(self) -> int:
        return self.ffn_size or 4 * self.hidden_size

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def pre_norm(self) -> bool:
        return self.norm_placement == "pre"



def decoder_part(config: Any) -> Any:
    """The :class:`TransformerDecoderConfig` a decoder layer reads: ``config`` itself, or the
    ``decoder`` part of a composite config (``PlugDecoderLayer(plug_config)`` keeps working)."""
    part = getattr(config, "decoder", None)
    return part if isinstance(part, TransformerDecoderConfig) else config


# ------------------------------------------------------------------ cross-attention probes
def cross_attention_keys(attn: nn.Module, kv_in) -> jax.Array:
    """The keys ``[batch, kv_len, heads, head_dim]`` (float32) that
    :func:`cross_attention_probs` attends with, from a bound ``MultiHeadAttention`` and its
    key/value input (cached decoding computes them once per source)."""
    p = nn.unbox(attn.variables["params"])
    f32 = jnp.float32
    k = jnp.einsum("bsd,dhk->bshk", kv_in.astype(f32), quant.float_weight(p["key"]))
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
    q = jnp.einsum("btd,dhk->bthk", q_in.astype(f32), quant.float_weight(p["query"]))
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


# ------------------------------------------------------------------ masks and features
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


# ------------------------------------------------------------------ the layer
class TransformerDecoderLayer(nn.Module):
    """Self-attention, cross-attention, FFN. ``layer(x, enc, self_mask, cross_mask)``.

    ``config``: a :class:`TransformerDecoderConfig` (or a composite config with one as its
    ``decoder`` part, see :func:`decoder_part`).

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

    config: Any
    deterministic: bool = True
    use_moe: bool = False  # the FFN is a mixture of experts (PLUG-MoE)
    return_cross_attention: bool = False
    decode: bool = False
    cache_length: int | None = None  # self-attention cache slots (decode, cache creation)

    @nn.compact
    def __call__(self, x, enc, self_mask, cross_mask, token_mask=None):
        cfg = decoder_part(self.config)
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
            if cfg.pre_norm:
                x = x + drop(sub(norm(norm_name)(x)), deterministic=det)
            else:
                x = norm(norm_name)(x + drop(sub(x), deterministic=det))
        return with_logical_constraint(x, _ACT), (probs[0] if probs else None)
