"""Device meshes with ICI and DCN degrees and one ``-1`` to fill.

Every mesh has exactly the four axes ``('data', 'fsdp', 'expert', 'model')``;
unused axes have size 1. A mesh is described by two 4-tuples of degrees:

* ``ici`` -- the split *inside* one slice / host (fast interconnect: ICI on TPU,
  NVLink on GPU). Its product is the number of devices per slice.
* ``dcn`` -- the split *across* slices / processes (data-centre network). Its
  product is the number of slices.

The mesh shape is the elementwise product ``ici * dcn``; along each axis the
DCN part is the outer (slow) one. One entry of each tuple may be ``-1``: it is
filled so the product equals the device count (ICI) or slice count (DCN).
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence, Union

import jax
import numpy as np
from jax.sharding import Mesh

from plug_jax.partitioning.axes import MESH_AXES

Degrees = Union[Sequence[int], Mapping[str, int], str]


class MeshError(ValueError):
    """A mesh description that does not fit the devices (one-line message)."""


def _fmt(degrees: Sequence[int]) -> str:
    return "(" + ", ".join(f"{a}={d}" for a, d in zip(MESH_AXES, degrees)) + ")"


def parse_mesh_spec(spec: str) -> tuple[int, int, int, int]:
    """Parses ``"data:2,fsdp:-1,model:4"`` into ``(2, -1, 1, 4)``.

    Axes not named are 1. An empty string means ``(1, 1, 1, 1)``. The result is
    not resolved: pass it to :func:`resolve_degrees` or :func:`create_mesh`.
    """
    if not isinstance(spec, str):
        raise MeshError(f"mesh spec must be a string like 'data:2,fsdp:-1,model:4', got {spec!r}")
    out = dict.fromkeys(MESH_AXES, 1)
    seen: set[str] = set()
    for token in spec.split(","):
        tok = token.strip()
        if not tok:
            if spec.strip():
                raise MeshError(f"mesh spec {spec!r} has an empty entry; "
                                "fix: write it like 'data:2,fsdp:-1,model:4'")
            continue
        name, sep, value = (part.strip() for part in tok.partition(":"))
        if not sep:
            raise MeshError(f"bad token {tok!r} in mesh spec {spec!r}: expected 'axis:degree'; "
                            "fix: write it like 'data:2,fsdp:-1,model:4'")
        if name not in MESH_AXES:
            raise MeshError(f"bad token {tok!r} in mesh spec {spec!r}: unknown mesh axis "
                            f"{name!r}; fix: use one of {MESH_AXES}")
        if name in seen:
            raise MeshError(f"bad token {tok!r} in mesh spec {spec!r}: axis {name!r} given "
                            "twice; fix: name each axis at most once")
        try:
            degree = int(value)
        except ValueError:
            raise MeshError(f"bad token {tok!r} in mesh spec {spec!r}: degree {value!r} is "
                            "not an integer; fix: use a positive integer or -1") from None
        if degree == 0 or degree < -1:
            raise MeshError(f"bad token {tok!r} in mesh spec {spec!r}: degree {degree} must "
                            "be a positive integer or -1")
        seen.add(name)
        out[name] = degree
    return tuple(out[a] for a in MESH_AXES)  # type: ignore[return-value]


def _as_tuple(degrees: Degrees, kind: str) -> tuple[int, ...]:
    if isinstance(degrees, str):
        return parse_mesh_spec(degrees)
    if isinstance(degrees, Mapping):
        unknown = [k for k in degrees if k not in MESH_AXES]
        if unknown:
            raise MeshError(f"{kind} mesh degrees {dict(degrees)} name unknown mesh axes "
                            f"{unknown}; fix: use only {MESH_AXES}")
        return tuple(int(degrees.get(a, 1)) for a in MESH_AXES)
    try:
        values = tuple(degrees)
    except TypeError:
        raise MeshError(f"{kind} mesh degrees must be a 4-tuple, a dict or a string, "
                        f"got {degrees!r}") from None
    if len(values) != len(MESH_AXES):
        raise MeshError(f"{kind} mesh degrees {values} have {len(values)} entries; fix: give "
                        f"exactly {len(MESH_AXES)}, one per axis {MESH_AXES}")
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise MeshError(f"{kind} mesh degrees {values} contain {v!r}, which is not an "
                            "integer; fix: use positive integers and at most one -1")
        out.append(int(v))
    return tuple(out)


def resolve_degrees(degrees: Degrees, total: int, kind: str = "ici") -> tuple[int, int, int, int]:
    """Fills at most one ``-1`` so the degrees multiply to ``total``.

    ``degrees`` is a 4-tuple in ``MESH_AXES`` order, a dict by axis name (missing
    axes are 1) or a spec string. Raises :class:`MeshError` with one line naming
    the degrees, the device count and the fix.
    """
    what = "devices" if kind == "ici" else "slices"
    values = _as_tuple(degrees, kind)
    if values.count(-1) > 1:
        raise MeshError(f"{kind} mesh degrees {_fmt(values)} have more than one -1 "
                        f"({total} {what}); fix: set all but one of them explicitly")
    bad = [(a, d) for a, d in zip(MESH_AXES, values) if d != -1 and d < 1]
    if bad:
        axis, d = bad[0]
        raise MeshError(f"{kind} mesh degrees {_fmt(values)}: degree {d} for {axis!r} is "
                        f"not positive ({total} {what}); fix: use positive integers and at "
                        "most one -1")
    known = math.prod(d for d in values if d != -1)
    if -1 in values:
        if total % known:
            raise MeshError(f"{kind} mesh degrees {_fmt(values)}: the fixed degrees multiply "
                            f"to {known}, which does not divide the {total} {what}; fix: "
                            f"choose degrees whose product divides {total}")
        values = tuple(total // known if d == -1 else d for d in values)
    elif known != total:
        raise MeshError(f"{kind} mesh degrees {_fmt(values)} multiply to {known} but there "
                        f"are {total} {what}; fix: choose degrees whose product is {total} "
                        "or set one of them to -1")
    return values  # type: ignore[return-value]


def _num_slices(devices: Sequence[Any]) -> int:
    """Number of DCN granules: TPU slices where known, otherwise processes."""
    if hasattr(devices[0], "slice_index"):
        return len({d.slice_index for d in devices})
    return len({d.process_index for d in devices})


def _hybrid_reshape(devices: Sequence[Any], ici: Sequence[int], dcn: Sequence[int]) -> np.ndarray:
    """Plain reshape with DCN outer and ICI inner along every axis."""
    ordered = sorted(devices, key=lambda d: (getattr(d, "slice_index", 0), d.process_index, d.id))
    n = len(MESH_AXES)
    arr = np.asarray(ordered, dtype=object).reshape(tuple(dcn) + tuple(ici))
    # (d0, d1, d2, d3, i0, i1, i2, i3) -> (d0, i0, d1, i1, ...)
    arr = arr.transpose([k for pair in zip(range(n), range(n, 2 * n)) for k in pair])
    return arr.reshape(tuple(i * d for i, d in zip(ici, dcn)))


def create_mesh(ici: Degrees = (1, -1, 1, 1), dcn: Degrees = (1, 1, 1, 1),
                devices: Sequence[Any] | None = None) -> Mesh:
    """Builds a ``jax.sharding.Mesh`` with axes ``('data', 'fsdp', 'expert', 'model')``.

    ``ici`` and ``dcn`` are 4-tuples (or dicts by axis name, or spec strings like
    ``"fsdp:-1,model:4"``) with at most one ``-1`` each. The DCN degrees multiply
    to the number of slices/processes, the ICI degrees to the devices per slice;
    the mesh shape is ``ici * dcn`` elementwise.
    """
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise MeshError("create_mesh: no devices given")
    n = len(devices)
    dcn_values = _as_tuple(dcn, "dcn")
    if -1 in dcn_values:
        dcn_values = resolve_degrees(dcn_values, _num_slices(devices), kind="dcn")
    else:
        dcn_values = resolve_degrees(dcn_values, math.prod(dcn_values), kind="dcn")
    num_slices = math.prod(dcn_values)
    if n % num_slices:
        raise MeshError(f"dcn mesh degrees {_fmt(dcn_values)} ask for {num_slices} slices but "
                        f"the {n} devices do not split into {num_slices} equal slices; fix: "
                        f"choose dcn degrees whose product divides {n}")
    ici_values = resolve_degrees(ici, n // num_slices, kind="ici")
    shape = tuple(i * d for i, d in zip(ici_values, dcn_values))
    try:
        if num_slices > 1:
            from jax.experimental import mesh_utils
            arr = mesh_utils.create_hybrid_device_mesh(
                ici_values, dcn_values, devices,
                process_is_granule=not hasattr(devices[0], "slice_index"))
        else:
            from jax.experimental import mesh_utils
            arr = mesh_utils.create_device_mesh(shape, devices)
        arr = np.asarray(arr).reshape(shape)
    except Exception:  # noqa: BLE001 -- mesh_utils refuses fake/odd topologies.
        arr = _hybrid_reshape(devices, ici_values, dcn_values)
    return Mesh(arr, MESH_AXES)


def mesh_shape(mesh: Mesh) -> tuple[int, int, int, int]:
    """The mesh's degrees in ``MESH_AXES`` order."""
    return tuple(mesh.shape[a] for a in MESH_AXES)  # type: ignore[return-value]
