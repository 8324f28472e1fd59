"""Dropless MoE: sort assignments by expert and run grouped matmuls (``ragged_dot``).

Single device (or no ``expert`` mesh axis): the ``T * k`` assignments are sorted
by expert id, every expert's contiguous block goes through ``jax.lax.ragged_dot``
and the results are un-sorted and summed with the gates.

Expert parallelism (an active mesh whose ``expert`` axis is > 1): the same runs
inside ``jax.shard_map``. Each device holds a batch shard (batch over ``data``,
``fsdp``, ``expert``) and ``E / n`` experts (``n`` = size of ``expert``). It sorts its
assignments by expert, sends each destination shard its block through
``jax.lax.all_to_all`` over ``expert``, runs ``ragged_dot`` on its local experts and
returns the results by the reverse all-to-all. The all-to-all buffers have the
worst-case fixed size ``[n, T_local * k, d]`` (every assignment could go to one
shard): correct and simple, but ``n`` times the memory of a balanced exchange.
``jax.lax.ragged_all_to_all`` would avoid it on GPU/TPU; it is not used here
because the layer must run (and is tested) on CPU, where XLA (jax 0.10.2) does
not implement it. Expert hidden units may be
sharded over ``model`` (Megatron style, partial sums reduced with ``psum``);
weights sharded over ``fsdp`` are gathered on entry to the ``shard_map``.
"""
from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from plug_jax.partitioning.axes import BATCH_MESH_AXES

# weights: dict name -> (kernel, bias or None); kernels 'wi' (or 'wi_0', 'wi_1')
# [E, d, h] and 'wo' [E, h, d].
Weights = dict


def _experts(x_sorted, group_sizes, weights: Weights, act: Callable, gated: bool,
             expert_of_row, model_axis: str | None = None):
    """Grouped FFN on rows sorted by expert. ``expert_of_row`` picks the biases."""
    def proj(name, h):
        kernel, bias = weights[name]
        y = jax.lax.ragged_dot(h, kernel.astype(h.dtype), group_sizes)
        if bias is not None:
            y = y + jnp.take(bias, expert_of_row, axis=0, mode="clip").astype(y.dtype)
        return y

    if gated:
        h = act(proj("wi_0", x_sorted)) * proj("wi_1", x_sorted)
    else:
        h = act(proj("wi", x_sorted))
    kernel, bias = weights["wo"]
    y = jax.lax.ragged_dot(h, kernel.astype(h.dtype), group_sizes)
    if model_axis is not None:
        y = jax.lax.psum(y, model_axis)
    if bias is not None:
        y = y + jnp.take(bias, expert_of_row, axis=0, mode="clip").astype(y.dtype)
    return y


def _local_dropless(x, expert_index, gates, weights, num_experts, act, gated):
    """``x [T, d]``, ``expert_index``/``gates`` ``[T, k]`` -> ``[T, d]`` on one device."""
    num_tokens, top_k = expert_index.shape
    flat = expert_index.reshape(-1)
    order = jnp.argsort(flat, stable=True)
    sorted_expert = flat[order]
    x_sorted = jnp.take(x, order // top_k, axis=0)
    group_sizes = jnp.bincount(flat, length=num_experts).astype(jnp.int32)
    y_sorted = _experts(x_sorted, group_sizes, weights, act, gated, sorted_expert)
    y = jnp.zeros_like(y_sorted).at[order].set(y_sorted).reshape(num_tokens, top_k, -1)
    return jnp.einsum("tkd,tk->td", y, gates.astype(y.dtype))


def expert_parallel_size(mesh) -> int:
    return 0 if mesh is None else int(mesh.shape.get("expert", 1))


def _ep_body(x, expert_index, gates, weights, *, num_experts, ep, act, gated, model_axis):
    """Per-device body under ``shard_map``: x ``[b, L, d]``, index/gates ``[b, L, k]``."""
    b, length, d = x.shape
    top_k = expert_index.shape[-1]
    x = x.reshape(b * length, d)
    flat = expert_index.reshape(-1)
    gates = gates.reshape(b * length, top_k)
    n_assign = flat.shape[0]
    local_experts = num_experts // ep

    # 1. Sort local assignments by (global) expert id; blocks per destination shard.
    order = jnp.argsort(flat, stable=True)
    sorted_expert = flat[order]
    x_sorted = jnp.take(x, order // top_k, axis=0)
    dest = sorted_expert // local_experts
    send_counts = jnp.bincount(dest, length=ep).astype(jnp.int32)
    send_start = jnp.cumsum(send_counts) - send_counts
    slot = jnp.arange(n_assign) - send_start[dest]  # row within its destination block

    # 2. Fixed-size send buffers [ep, n_assign, ...]; unused rows hold expert id -1.
    send_x = jnp.zeros((ep, n_assign, d), x.dtype).at[dest, slot].set(x_sorted)
    send_e = jnp.full((ep, n_assign), -1, jnp.int32).at[dest, slot].set(
        sorted_expert - dest * local_experts)
    recv_x = jax.lax.all_to_all(send_x, "expert", 0, 0, tiled=True)
    recv_e = jax.lax.all_to_all(send_e, "expert", 0, 0, tiled=True)

    # 3. Local grouped FFN: sort received rows by local expert (padding last).
    recv_x = recv_x.reshape(ep * n_assign, d)
    recv_e = recv_e.reshape(ep * n_assign)
    key = jnp.where(recv_e < 0, local_experts, recv_e)
    r_order = jnp.argsort(key, stable=True)
    r_sorted_e = key[r_order]
    group_sizes = jnp.bincount(key, length=local_experts + 1)[:local_experts].astype(jnp.int32)
    y_sorted = _experts(jnp.take(recv_x, r_order, axis=0), group_sizes, weights, act, gated,
                        r_sorted_e, model_axis)
    y_recv = jnp.zeros_like(y_sorted).at[r_order].set(y_sorted).reshape(ep, n_assign, d)

    # 4. Send results back and undo both sorts.
    back = jax.lax.all_to_all(y_recv, "expert", 0, 0, tiled=True)
    y_sorted_local = back[dest, slot]
    y = jnp.zeros_like(y_sorted_local).at[order].set(y_sorted_local)
    y = jnp.einsum("tkd,tk->td", y.reshape(b * length, top_k, d), gates.astype(y.dtype))
    return y.reshape(b, length, d)


def dropless_moe(x: jax.Array, expert_index: jax.Array, gates: jax.Array, weights: Weights,
                 *, num_experts: int, act: Callable, gated: bool, mesh=None) -> jax.Array:
    """``x [B, L, d]``, ``expert_index``/``gates`` ``[B, L, k]`` -> ``[B, L, d]``.

    With ``mesh`` whose ``expert`` axis is > 1 (and divides ``num_experts``, and
    the batch divides the batch mesh axes) runs expert-parallel under
    ``shard_map``; otherwise the plain path (GSPMD shards it as it can).
    """
    batch, length, d = x.shape
    ep = expert_parallel_size(mesh)
    batch_shards = math.prod(mesh.shape[a] for a in BATCH_MESH_AXES) if ep else 1
    if ep <= 1 or num_experts % ep or batch % batch_shards:
        y = _local_dropless(x.reshape(batch * length, d),
                            expert_index.reshape(batch * length, -1),
                            gates.reshape(batch * length, -1), weights, num_experts, act, gated)
        return y.reshape(batch, length, d)

    model_axis = "model" if mesh.shape.get("model", 1) > 1 else None
    hidden = weights["wo"][0].shape[1]
    if model_axis and hidden % mesh.shape["model"]:
        model_axis = None
    m = model_axis  # hidden dim of the expert FFN
    batch_spec = P(BATCH_MESH_AXES, None, None)
    w_specs = {}
    for name, (kernel, bias) in weights.items():
        if name == "wo":
            w_specs[name] = (P("expert", m, None), None if bias is None else P("expert", None))
        else:
            w_specs[name] = (P("expert", None, m), None if bias is None else P("expert", m))
    body = jax.shard_map(
        lambda x_, i_, g_, w_: _ep_body(x_, i_, g_, w_, num_experts=num_experts, ep=ep,
                                        act=act, gated=gated, model_axis=model_axis),
        mesh=mesh,
        in_specs=(batch_spec, batch_spec, batch_spec, w_specs),
        out_specs=batch_spec)
    return body(x, expert_index, gates, weights)
