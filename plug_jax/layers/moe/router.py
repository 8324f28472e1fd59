"""Routers: top-k and expert prototyping, plus the auxiliary losses and load statistics.

Everything here is in float32 and works on flat token arrays ``[T, ...]``.

Definitions (``T`` tokens, ``E`` experts, ``k`` choices per token, ``w_t`` the token
mask weight -- 1 for real tokens, 0 for padding; ``N = sum_t w_t``):

* router probabilities ``p_te``: ``softmax(logits_t)`` over all experts for the
  ``'topk'`` router; for the ``'prototype'`` router the experts are split into
  ``k`` equal groups, each with its own softmax, and ``p_te`` is the in-group
  probability divided by ``k`` (so ``p_t`` is still a distribution over ``E``).
* ``f_e = sum_t w_t * #{choices of t equal to e} / (k * N)`` -- the fraction of
  token-assignments (all ``k`` choices, before capacity drops) that go to ``e``.
  For ``k = 1`` this is Switch's top-1 fraction.
* ``P_e = sum_t w_t p_te / N`` -- the mean router probability of ``e``.
* load-balance loss ``= E * sum_e f_e * P_e`` (1 when perfectly balanced).
* router z-loss ``= sum_t w_t * logsumexp(logits_t)^2 / N`` (over all ``E`` logits).
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

ROUTERS = ("topk", "prototype")


class Routing(NamedTuple):
    expert_index: jax.Array  # [T, k] int32, choice 0 first
    gates: jax.Array         # [T, k] float32 combine weights
    probs: jax.Array         # [T, E] float32 router probabilities (definition above)


def route(logits: jax.Array, top_k: int, router: str = "topk",
          normalize_top_k: bool = False) -> Routing:
    """Chooses ``top_k`` experts per token from float32 ``logits`` ``[T, E]``.

    ``'topk'``: the ``k`` most probable experts of one softmax, gates are their
    probabilities. ``'prototype'`` (M6-T expert prototyping): experts split into
    ``k`` contiguous groups of ``E / k``; choice ``g`` is the top-1 expert of group
    ``g`` and its gate the in-group softmax probability. ``normalize_top_k``
    rescales the ``k`` gates of a token to sum to one (Mixtral).
    """
    logits = logits.astype(jnp.float32)
    num_tokens, num_experts = logits.shape
    if router == "topk":
        probs = jax.nn.softmax(logits, axis=-1)
        gates, index = jax.lax.top_k(probs, top_k)
    elif router == "prototype":
        if num_experts % top_k:
            raise ValueError(f"prototype router: num_experts={num_experts} is not divisible "
                             f"by top_k={top_k} groups")
        per = num_experts // top_k
        grouped = jax.nn.softmax(logits.reshape(num_tokens, top_k, per), axis=-1)
        local = jnp.argmax(grouped, axis=-1)  # [T, k]
        gates = jnp.take_along_axis(grouped, local[..., None], axis=-1)[..., 0]
        index = local + per * jnp.arange(top_k)[None, :]
        probs = grouped.reshape(num_tokens, num_experts) / top_k
    else:
        raise ValueError(f"unknown router {router!r}; choose one of {ROUTERS}")
    if normalize_top_k:
        gates = gates / jnp.sum(gates, axis=-1, keepdims=True)
    return Routing(index.astype(jnp.int32), gates.astype(jnp.float32), probs)


def _weights(num_tokens: int, token_mask: jax.Array | None) -> jax.Array:
    if token_mask is None:
        return jnp.ones((num_tokens,), jnp.float32)
    return token_mask.reshape(num_tokens).astype(jnp.float32)


def tokens_per_expert(expert_index: jax.Array, num_experts: int,
                      token_mask: jax.Array | None = None) -> jax.Array:
    """Assignments per expert (all choices, before drops) as float32 ``[E]``."""
    w = _weights(expert_index.shape[0], token_mask)
    onehot = jax.nn.one_hot(expert_index, num_experts, dtype=jnp.float32)  # [T, k, E]
    return jnp.einsum("tke,t->e", onehot, w)


def load_balance_loss(probs: jax.Array, expert_index: jax.Array,
                      token_mask: jax.Array | None = None) -> jax.Array:
    """``E * sum_e f_e * P_e`` (see the module docstring)."""
    num_tokens, num_experts = probs.shape
    top_k = expert_index.shape[1]
    w = _weights(num_tokens, token_mask)
    n = jnp.maximum(jnp.sum(w), 1.0)
    f = tokens_per_expert(expert_index, num_experts, token_mask) / (top_k * n)
    p = jnp.einsum("te,t->e", probs.astype(jnp.float32), w) / n
    return num_experts * jnp.sum(f * p)


def router_z_loss(logits: jax.Array, token_mask: jax.Array | None = None) -> jax.Array:
    """``mean_t logsumexp(logits_t)^2`` over unmasked tokens."""
    w = _weights(logits.shape[0], token_mask)
    z = jax.nn.logsumexp(logits.astype(jnp.float32), axis=-1)
    return jnp.sum(w * z * z) / jnp.maximum(jnp.sum(w), 1.0)
