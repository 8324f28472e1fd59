"""GShard/Switch capacity-based dispatch with dense dispatch/combine tensors.

Tokens are split into groups ``[G, S, d]``; every expert takes at most ``C``
assignments per group, in token order, first choices of all tokens before any
second choice (GShard). Assignments past the capacity are dropped: they add
nothing to the output (the residual connection around the layer carries the
token). The expert computation runs on ``[E, G, C, d]``; its sharding
constraint puts ``E`` on ``act_expert`` (mesh ``expert`` in the EP presets) and
``G`` on ``act_expert_group`` (the batch axes), so XLA's SPMD partitioner turns
the dispatch/combine einsums into all-to-alls.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from plug_jax.partitioning import axes as A
from plug_jax.partitioning.constraints import with_logical_constraint


def expert_capacity(group_size: int, num_experts: int, top_k: int, capacity_factor: float,
                    min_capacity: int) -> int:
    """``min(S, max(min_capacity, ceil(S * k * capacity_factor / E)))``.

    The cap at ``S`` changes nothing (one expert never gets more than ``S``
    assignments from ``S`` tokens) but saves memory for large factors.
    """
    c = max(int(min_capacity), int(math.ceil(group_size * top_k * capacity_factor / num_experts)))
    return min(c, group_size)


class Dispatch(NamedTuple):
    dispatch: jax.Array   # [G, S, E, C] 0/1 in the compute dtype
    combine: jax.Array    # [G, S, E, C] gate weights (float32)
    dropped: jax.Array    # scalar float32: unmasked assignments past capacity


def make_dispatch(expert_index: jax.Array, gates: jax.Array, num_experts: int, capacity: int,
                  token_mask: jax.Array | None = None, dtype=jnp.float32) -> Dispatch:
    """Dispatch/combine tensors from ``expert_index``/``gates`` ``[G, S, k]``.

    Masked tokens (``token_mask`` False) are not dispatched and take no slot.
    """
    groups, size, top_k = expert_index.shape
    onehot = jax.nn.one_hot(expert_index, num_experts, dtype=jnp.int32)  # [G, S, k, E]
    if token_mask is not None:
        onehot = onehot * token_mask.reshape(groups, size, 1, 1).astype(jnp.int32)
    # Priority: all first choices (in token order), then all second choices.
    by_choice = jnp.swapaxes(onehot, 1, 2).reshape(groups, top_k * size, num_experts)
    position = jnp.cumsum(by_choice, axis=1) - 1  # slot of each assignment in its expert
    keep = by_choice * (position < capacity)
    position = jnp.swapaxes(position.reshape(groups, top_k, size, num_experts), 1, 2)
    keep = jnp.swapaxes(keep.reshape(groups, top_k, size, num_experts), 1, 2)  # [G, S, k, E]
    dropped = jnp.sum(onehot - keep).astype(jnp.float32)
    slot = jax.nn.one_hot(jnp.sum(position * keep, axis=-1), capacity, dtype=jnp.float32)
    kept = keep.astype(jnp.float32)  # [G, S, k, E]; one expert per choice
    # A token never picks the same expert twice, so summing over k is exact.
    combine = jnp.einsum("gske,gskc,gsk->gsec", kept, slot, gates.astype(jnp.float32))
    dispatch = jnp.einsum("gske,gskc->gsec", kept, slot).astype(dtype)
    return Dispatch(dispatch, combine, dropped)


def capacity_moe(x: jax.Array, dispatch: Dispatch, expert_fn: Callable[[jax.Array], jax.Array]
                 ) -> jax.Array:
    """Runs ``expert_fn`` (``[E, G, C, d] -> [E, G, C, d]``) on dispatched ``x`` ``[G, S, d]``."""
    x = with_logical_constraint(x, (A.ACT_EXPERT_GROUP, None, A.ACT_EMBED))
    expert_in = jnp.einsum("gsec,gsd->egcd", dispatch.dispatch, x)
    expert_in = with_logical_constraint(
        expert_in, (A.ACT_EXPERT, A.ACT_EXPERT_GROUP, A.ACT_CAPACITY, A.ACT_EMBED))
    expert_out = expert_fn(expert_in)
    expert_out = with_logical_constraint(
        expert_out, (A.ACT_EXPERT, A.ACT_EXPERT_GROUP, A.ACT_CAPACITY, A.ACT_EMBED))
    out = jnp.einsum("egcd,gsec->gsd", expert_out, dispatch.combine.astype(expert_out.dtype))
    return with_logical_constraint(out, (A.ACT_EXPERT_GROUP, None, A.ACT_EMBED))
