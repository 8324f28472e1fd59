"""The partitioner: abstract init -> logical axes -> shardings -> sharded jit.

Usage::

    mesh = create_mesh(ici=(1, 2, 1, 4))
    part = Partitioner(mesh, "fsdp_tp")
    variables = part.init(model.init, rng, dummy_batch)   # created sharded
    step = part.jit(train_step, donate_argnums=(0,))
    batch = part.shard_batch(numpy_batch)

Parameters carry logical names through ``nn.with_logical_partitioning``; the
rule table maps them to mesh axes (see :mod:`plug_jax.partitioning.rules`).
"""
from __future__ import annotations

import functools
import math
from typing import Any, Callable, Sequence

import jax
import numpy as np
from flax.core import meta
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from plug_jax.partitioning.axes import BATCH_MESH_AXES
from plug_jax.partitioning.constraints import activate
from plug_jax.partitioning.rules import Rules, get_rules, logical_to_mesh_axes


class PartitioningError(ValueError):
    """A tensor or batch that does not fit the mesh (one-line message)."""


def _is_box(x: Any) -> bool:
    return isinstance(x, meta.AxisMetadata)


def _strip(tree: Any) -> Any:
    """Removes metadata boxes without applying any sharding constraint."""
    def leaf(x):
        if isinstance(x, meta.Partitioned):
            return _strip(x.unbox(apply_constraint=False))
        if _is_box(x):
            return _strip(x.unbox())
        return x
    return jax.tree_util.tree_map(leaf, tree, is_leaf=_is_box)


def _key_str(key: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def path_str(path: Sequence[Any]) -> str:
    """``params/layers/attn/query/kernel`` for a ``tree_flatten_with_path`` path."""
    return "/".join(_key_str(k) for k in path)


def _fmt_axes(axes: Sequence[str]) -> str:
    return "(" + ",".join(repr(a) for a in axes) + ")"


def _group(entry: Any) -> tuple[str, ...]:
    if entry is None:
        return ()
    return (entry,) if isinstance(entry, str) else tuple(entry)


class Partitioner:
    """Maps logically named parameters and batches onto a mesh.

    Args:
      mesh: a mesh with axes ``('data', 'fsdp', 'expert', 'model')`` (see
        :func:`plug_jax.partitioning.mesh.create_mesh`).
      rules: a rule table (tuple of ``(logical_name, mesh_axes)`` pairs) or the
        name of a preset (``'dp'``, ``'fsdp'``, ``'tp'``, ``'fsdp_tp'``).
    """

    def __init__(self, mesh: Mesh, rules: Rules | str):
        self.mesh = mesh
        self.rules_name = rules if isinstance(rules, str) else None
        self.rules: Rules = get_rules(rules) if isinstance(rules, str) else tuple(rules)
        missing = [a for a in BATCH_MESH_AXES if a not in mesh.shape]
        if missing:
            raise PartitioningError(
                f"mesh {dict(mesh.shape)} lacks the mesh axes {missing}; fix: build it with "
                "plug_jax.partitioning.create_mesh")

    def __repr__(self) -> str:
        rules = self.rules_name or f"<{len(self.rules)} rules>"
        return f"Partitioner(mesh={dict(self.mesh.shape)}, rules={rules})"

    # ------------------------------------------------------------------ params
    def logical_axes(self, abstract_tree: Any) -> Any:
        """Tree (unboxed structure) of logical-name tuples; unboxed leaves -> all None."""
        def leaf(x):
            if isinstance(x, meta.Partitioned):
                return tuple(x.names)
            return (None,) * len(np.shape(x))
        return jax.tree_util.tree_map(leaf, abstract_tree, is_leaf=_is_box)

    def _spec(self, path: str, shape: tuple[int, ...], names: Sequence[str | None]) -> PartitionSpec:
        if len(names) != len(shape):
            raise PartitioningError(
                f"{path} has shape {shape} but {len(names)} logical axis names "
                f"{tuple(names)}; fix: give one name (or None) per dimension in "
                "nn.with_logical_partitioning")
        axes = logical_to_mesh_axes(names, self.rules)
        for dim, (size, name, entry) in enumerate(zip(shape, names, axes)):
            group = _group(entry)
            if not group:
                continue
            unknown = [a for a in group if a not in self.mesh.shape]
            if unknown:
                raise PartitioningError(
                    f"{path}: logical axis {name!r} maps to mesh axes {unknown} that the mesh "
                    f"{dict(self.mesh.shape)} does not have; fix: use mesh axes "
                    f"{tuple(self.mesh.axis_names)} in the rules")
            total = math.prod(self.mesh.shape[a] for a in group)
            if size % total:
                if len(group) == 1:
                    where = f"mesh axis {group[0]!r} of size {total}"
                    fix = f"choose a {group[0]!r} degree that divides {size} or another rule preset"
                else:
                    where = f"mesh axes {_fmt_axes(group)} of total size {total}"
                    fix = (f"choose {_fmt_axes(group)} degrees whose product divides {size} "
                           "or another rule preset")
                raise PartitioningError(
                    f"parameter {path} has shape {shape}; its dim {dim} (logical {name!r}, "
                    f"size {size}) is sharded over {where}, which does not divide {size}; "
                    f"fix: {fix}")
        return PartitionSpec(*axes)

    def _specs_with_paths(self, abstract_tree: Any) -> tuple[list[tuple[str, Any, Any, PartitionSpec]], Any]:
        leaves, treedef = jax.tree_util.tree_flatten_with_path(abstract_tree, is_leaf=_is_box)
        rows = []
        for path, x in leaves:
            p = path_str(path)
            if isinstance(x, meta.Partitioned):
                value = x.value
                names = tuple(x.names)
            elif _is_box(x):
                value = _strip(x)
                names = (None,) * len(np.shape(value))
            else:
                value = x
                names = (None,) * len(np.shape(value))
            shape = tuple(np.shape(value))
            rows.append((p, value, names, self._spec(p, shape, names)))
        return rows, treedef

    def partition_specs(self, abstract_tree: Any) -> Any:
        """Tree (unboxed structure) of ``PartitionSpec``; validates divisibility."""
        rows, treedef = self._specs_with_paths(abstract_tree)
        return jax.tree_util.tree_unflatten(treedef, [r[3] for r in rows])

    def param_shardings(self, abstract_tree: Any) -> Any:
        """Tree (unboxed structure) of ``NamedSharding`` for a boxed abstract tree.

        Raises :class:`PartitioningError` (one line: tensor path, shape, dimension,
        logical name, mesh axis and size, fix) when a sharded dimension is not
        divisible by the product of its mesh axes.
        """
        rows, treedef = self._specs_with_paths(abstract_tree)
        return jax.tree_util.tree_unflatten(
            treedef, [NamedSharding(self.mesh, r[3]) for r in rows])

    def init(self, init_fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Creates variables directly sharded; returns the unboxed tree.

        ``init_fn(*args, **kwargs)`` (typically ``model.init``) is traced with
        ``jax.eval_shape`` to find shapes and logical axes, then run under
        ``jax.jit(..., out_shardings=...)`` so no parameter is ever materialised
        on a single device. Array arguments are passed to the jitted function;
        everything else is closed over.
        """
        leaves, treedef = jax.tree_util.tree_flatten((args, kwargs))
        is_array = [isinstance(x, (jax.Array, np.ndarray, np.generic)) for x in leaves]
        dynamic = [x for x, a in zip(leaves, is_array) if a]

        def call(*dyn):
            it = iter(dyn)
            full = [next(it) if a else x for x, a in zip(leaves, is_array)]
            a, kw = jax.tree_util.tree_unflatten(treedef, full)
            return init_fn(*a, **kw)

        with activate(self.mesh, self.rules):
            abstract = jax.eval_shape(call, *dynamic)
            shardings = self.param_shardings(abstract)
            jitted = jax.jit(lambda *dyn: _strip(call(*dyn)), out_shardings=shardings)
            return jitted(*dynamic)

    def abstract_init(self, init_fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``jax.eval_shape`` of ``init_fn`` under the active rules (boxed tree)."""
        with activate(self.mesh, self.rules):
            return jax.eval_shape(functools.partial(init_fn, **kwargs), *args)

    # ------------------------------------------------------------------- batch
    def data_sharding(self, ndim: int) -> NamedSharding:
        """Leading dim over ``('data', 'fsdp', 'expert')``, the rest replicated."""
        if ndim < 1:
            return NamedSharding(self.mesh, PartitionSpec())
        return NamedSharding(self.mesh, PartitionSpec(BATCH_MESH_AXES, *([None] * (ndim - 1))))

    def batch_shardings(self, batch: Any) -> Any:
        """The batch sharding of every leaf of ``batch`` (arrays or ``ShapeDtypeStruct`` s,
        any rank: tokens ``[B, L]``, pixels ``[B, H, W, C]``, frames ``[B, T, H, W, C]``):
        ``data_sharding(leaf.ndim)``, i.e. the leading dim over the batch mesh axes and every
        other dim replicated. Same tree structure as ``batch``."""
        return jax.tree_util.tree_map(
            lambda x: self.data_sharding(len(getattr(x, "shape", np.shape(x)))), batch)

    @property
    def batch_size_multiple(self) -> int:
        """The global batch size must be a multiple of this."""
        return math.prod(self.mesh.shape[a] for a in BATCH_MESH_AXES)

    def shard_batch(self, batch: Any) -> Any:
        """``device_put`` a pytree of arrays (leading batch dim) with the batch sharding."""
        multiple = self.batch_size_multiple
        leaves, treedef = jax.tree_util.tree_flatten_with_path(batch)
        out = []
        for path, x in leaves:
            shape = tuple(np.shape(x))
            name = path_str(path) or "batch"
            if not shape:
                raise PartitioningError(
                    f"batch input {name!r} is a scalar; fix: give every batch input a "
                    "leading batch dimension")
            if shape[0] % multiple:
                raise PartitioningError(
                    f"batch input {name!r} has shape {shape}; its batch dim {shape[0]} is not "
                    f"divisible by the batch mesh axes {_fmt_axes(BATCH_MESH_AXES)} of total "
                    f"size {multiple}; fix: use a global batch size that is a multiple of "
                    f"{multiple}")
            out.append(jax.device_put(x, self.data_sharding(len(shape))))
        return jax.tree_util.tree_unflatten(treedef, out)

    # --------------------------------------------------------------------- jit
    def jit(self, fn: Callable[..., Any], in_shardings: Any = None, out_shardings: Any = None,
            donate_argnums: int | Sequence[int] = (),
            static_argnums: int | Sequence[int] = ()) -> Callable[..., Any]:
        """``jax.jit`` whose tracing runs inside ``activate(self.mesh, self.rules)``.

        ``in_shardings``/``out_shardings`` left as ``None`` are not passed, so
        jit infers them (from the committed inputs / by propagation).
        """
        mesh, rules = self.mesh, self.rules

        @functools.wraps(fn)
        def traced(*args, **kwargs):
            with activate(mesh, rules):
                return fn(*args, **kwargs)

        kw: dict[str, Any] = {"donate_argnums": donate_argnums, "static_argnums": static_argnums}
        if in_shardings is not None:
            kw["in_shardings"] = in_shardings
        if out_shardings is not None:
            kw["out_shardings"] = out_shardings
        return jax.jit(traced, **kw)

    # ---------------------------------------------------------------- describe
    def describe(self, abstract_tree: Any) -> str:
        """Table of path, shape, logical axes, mesh spec and bytes per device, plus totals."""
        rows, _ = self._specs_with_paths(abstract_tree)
        table = []
        total_params = total_bytes = device_bytes = 0
        for path, value, names, spec in rows:
            shape = tuple(np.shape(value))
            itemsize = np.dtype(getattr(value, "dtype", np.float32)).itemsize
            local = NamedSharding(self.mesh, spec).shard_shape(shape)
            per_dev = math.prod(local) * itemsize
            count = math.prod(shape)
            total_params += count
            total_bytes += count * itemsize
            device_bytes += per_dev
            logical = "(" + ", ".join(str(n) for n in names) + ")"
            mesh_spec = "(" + ", ".join(
                "None" if e is None else (repr(e) if isinstance(e, str) else _fmt_axes(e))
                for e in tuple(spec)) + ")"
            table.append((path, str(shape), logical, mesh_spec, _fmt_bytes(per_dev)))
        header = ("path", "shape", "logical axes", "mesh axes", "bytes/device")
        widths = [max([len(h)] + [len(r[i]) for r in table]) for i, h in enumerate(header)]
        lines = [f"mesh {dict(self.mesh.shape)}, rules {self.rules_name or 'custom'}",
                 "  ".join(h.ljust(w) for h, w in zip(header, widths))]
        lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in table]
        lines.append(f"total: {len(rows)} tensors, {total_params:,} parameters, "
                     f"{_fmt_bytes(total_bytes)} global, {_fmt_bytes(device_bytes)} per device")
        return "\n".join(lines)


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} GiB"
