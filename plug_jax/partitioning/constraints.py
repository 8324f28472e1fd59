"""Activation sharding constraints that are no-ops without an active mesh.

Layers call :func:`with_logical_constraint` on every large activation with its
logical (``act_*``) names. Outside :func:`activate` (single device, unit tests,
conversion) it returns its input unchanged, so every layer runs anywhere.
"""
from __future__ import annotations

import contextlib
import contextvars
import math
from typing import Iterator, Sequence

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from plug_jax.partitioning.rules import Rules, logical_to_mesh_axes

_ACTIVE: contextvars.ContextVar[tuple[Mesh, Rules] | None] = contextvars.ContextVar(
    "plug_jax_active_partitioning", default=None)


@contextlib.contextmanager
def activate(mesh: Mesh, rules: Rules) -> Iterator[None]:
    """Makes ``mesh`` and ``rules`` the ones constraints resolve against."""
    token = _ACTIVE.set((mesh, tuple(rules)))
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def active() -> tuple[Mesh, Rules] | None:
    """Returns the active ``(mesh, rules)``, or ``None``."""
    return _ACTIVE.get()


def logical_to_spec(names: Sequence[str | None], rules: Rules) -> PartitionSpec:
    return PartitionSpec(*logical_to_mesh_axes(names, rules))


def _fit_spec(shape: Sequence[int], spec: PartitionSpec, mesh: Mesh) -> PartitionSpec:
    """Drops mesh axes that do not divide a dimension (activations only)."""
    out = []
    for dim, entry in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        if entry is None:
            out.append(None)
            continue
        group = (entry,) if isinstance(entry, str) else tuple(entry)
        kept = []
        size = 1
        for ax in group:
            if dim % (size * mesh.shape[ax]) == 0:
                kept.append(ax)
                size *= mesh.shape[ax]
        out.append(None if not kept else (kept[0] if len(kept) == 1 else tuple(kept)))
    return PartitionSpec(*out)


def with_logical_constraint(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    """Constrains ``x`` to the sharding its logical ``names`` map to.

    A no-op when no mesh is active or the mesh has a single device. Activation
    constraints are hints, so a mesh axis that does not divide a dimension (a
    batch of one while decoding, say) is dropped for that dimension.
    """
    ctx = _ACTIVE.get()
    if ctx is None:
        return x
    mesh, rules = ctx
    if math.prod(mesh.shape.values()) == 1:
        return x
    if len(names) != x.ndim:
        raise ValueError(
            f"with_logical_constraint: {len(names)} axis names {tuple(names)} for an "
            f"array of rank {x.ndim} (shape {x.shape})")
    spec = _fit_spec(x.shape, logical_to_spec(names, rules), mesh)
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))
