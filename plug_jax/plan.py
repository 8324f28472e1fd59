"""``plug-plan``: per-device memory of a training run on a target mesh, without the target.

::

    plug-plan --gin_file=runs/plan.gin --gin_file=models/gpt3/13B.gin \\
              --mesh=fsdp:64 --hardware=h100_80gb [--gin.NAME=VALUE ...] [--json]

(``python -m plug_jax.main --mode=plan ...`` is the same thing.)

What it does, in order:

1. Forces ``data*fsdp*expert*model`` fake CPU devices before JAX starts its backends
   (``jax_num_cpu_devices`` plus ``--xla_force_host_platform_device_count``); no
   accelerator is needed or used.
2. Parses the same gin files the trainer uses. ``runs/plan.gin`` includes
   ``runs/pretrain.gin`` (so the optimizer, schedule, batch and micro-batching are the
   trainer's) and fills the REQUIRED macros that planning does not use. Put it *first*
   when planning a training experiment: ``--gin_file=runs/plan.gin
   --gin_file=experiments/...``.
3. Builds the model, the optimizer and the partitioner exactly as
   :func:`plug_jax.trainer.loop.train` does (``MeshConfig.partitioner``,
   :class:`~plug_jax.trainer.loop.StateBuilder`, :func:`~plug_jax.trainer.step.make_train_step`,
   ``Partitioner.jit`` with the same in/out shardings and donation), creates the train
   state *abstractly* (``jax.eval_shape``; no parameter is allocated) and lowers and
   compiles the train step ahead of time.
4. Reports per-device bytes of the parameters and of the optimizer state (exact: the
   shard shape of every array under its ``NamedSharding``), XLA's compiled memory
   statistics (arguments, outputs, aliased = donated, temporaries), the estimated peak
   ``argument + output - alias + temp`` (the formula MaxText's ``print_mem_stats``
   uses), the hardware's memory, whether it fits with :data:`HEADROOM` spare, the
   largest parameter tensors with their PartitionSpecs, the parameter count and the
   lower / compile times.

Caveat: the compiled numbers come from XLA:CPU compiling the SPMD-partitioned
per-device program. The partitioning (hence parameter / optimizer bytes and the
sharding of activations) is the target's, but buffer assignment, fusion, rematerial-
isation and the handling of bf16 (XLA:CPU may keep some bf16 computations in f32) are
the CPU compiler's, so ``temp`` is a proxy for what the GPU / TPU compiler would
allocate, not a measurement of it. The parameter and optimizer bytes do not depend on
the backend.

``--native`` skips the fake devices and compiles for the devices the process has (the
target's own compiler, e.g. XLA:GPU on one GPU with ``--mesh=data:1``); ``--measure`` then
allocates the state, runs the step and reports the device's peak bytes in use.
``benchmarks/plan_vs_native.py`` puts the proxy, the native figure and the measurement side
by side (results on an H200 are in docs/scaling.md's caveats).

``plug-plan --table`` (or ``python -m plug_jax.plan --table``) regenerates ``docs/scaling.md``
(``make scaling``) from every family's plan rows (``FamilySpec.plan_rows``), running each row in
its own process; ``plug-plan --list`` lists them.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import subprocess
import sys
import time
from typing import Any, Sequence

HEADROOM = 0.10  # fraction of device memory kept free: allocator fragmentation, runtime


@dataclasses.dataclass(frozen=True)
class Hardware:
    name: str
    description: str
    memory_bytes: int  # per device (one JAX device)
    peak_flops: float  # dense bf16 per device
    source: str
    memory_label: str = ""  # as the vendor states it

    @property
    def label(self) -> str:
        return self.memory_label or f"{self.memory_bytes / GB:.0f} GB"


GB, GiB = 10 ** 9, 2 ** 30
HARDWARE: dict[str, Hardware] = {
    "h100_80gb": Hardware(
        "h100_80gb", "NVIDIA H100-SXM 80 GB (one GPU per JAX device)", 80 * GB, 989e12,
        "NVIDIA H100 datasheet: 80 GB HBM3 (taken as 80e9 bytes; nvidia-smi shows 81559 MiB "
        "but the CUDA context and XLA's reservation use part of it); 989 TFLOP/s dense bf16 "
        "(PERF_ANCHORS.md). JAX preallocates 75% of GPU memory by default: a plan near the "
        "limit needs XLA_PYTHON_CLIENT_MEM_FRACTION=0.95.", "80 GB"),
    "tpu_v4": Hardware(
        "tpu_v4", "Cloud TPU v4 chip (2 TensorCores as one megacore JAX device)", 32 * GiB,
        275e12,
        "Cloud TPU docs, TPU v4: 32 GiB HBM2 per chip; 275 TFLOP/s bf16 per chip "
        "(PERF_ANCHORS.md). A slice v4-N has N/2 chips (N counts TensorCores).", "32 GiB"),
    "tpu_v5p": Hardware(
        "tpu_v5p", "Cloud TPU v5p chip (megacore, one JAX device)", 95 * GiB, 459e12,
        "Cloud TPU docs, TPU v5p: 95 GiB HBM2e per chip; 459 TFLOP/s bf16 per chip "
        "(PERF_ANCHORS.md). A slice v5p-N has N/2 chips.", "95 GiB"),
}


class PlanError(ValueError):
    """A user error of plug-plan (one line naming the problem and the fix)."""


# ------------------------------------------------------------------------ devices
def force_cpu_devices(n: int) -> None:
    """Makes JAX start with ``n`` fake CPU devices (call before any JAX operation).

    If this process already started JAX's backends (a notebook, the test process), the
    first ``n`` existing CPU devices are used and there must be at least ``n``.
    """
    flags = re.sub(r"--xla_force_host_platform_device_count=\S+", "",
                   os.environ.get("XLA_FLAGS", "")).split()
    import jax
    from jax._src import xla_bridge
    if xla_bridge.backends_are_initialized():
        have = [d for d in jax.devices() if d.platform == "cpu"]
        if len(have) < n:
            raise PlanError(
                f"the mesh needs {n} devices but this process already started JAX with "
                f"{len(have)} CPU devices; fix: run plug-plan in a fresh process")
        return
    os.environ["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={n}"])
    os.environ["JAX_PLATFORMS"] = "cpu"
    jax.config.update("jax_platforms", "cpu")
    jax.config.update("jax_num_cpu_devices", int(n))


def parse_mesh(spec: str) -> tuple[int, int, int, int]:
    """``'data:2,fsdp:4'`` -> ``(2, 4, 1, 1)``; every degree explicit (no ``-1``)."""
    from plug_jax.partitioning.mesh import parse_mesh_spec
    degrees = parse_mesh_spec(spec)
    if -1 in degrees:
        raise PlanError(f"--mesh={spec} has a -1, but plug-plan has no devices to fill it "
                        f"from; fix: give every axis its degree, e.g. --mesh=data:8,fsdp:8")
    return degrees


# ------------------------------------------------------------------------- sizes
def shard_bytes(shape: Sequence[int], dtype: Any, sharding) -> int:
    """Bytes of one device's shard of an array of ``shape`` under ``sharding``."""
    import numpy as np
    local = sharding.shard_shape(tuple(shape)) if sharding is not None else tuple(shape)
    return int(math.prod(local)) * np.dtype(dtype).itemsize


def _tree_bytes(abstract, shardings) -> tuple[int, int]:
    """``(global bytes, per-device bytes)`` of a tree of ShapeDtypeStructs."""
    import jax
    import numpy as np
    leaves = jax.tree_util.tree_leaves(abstract)
    shs = jax.tree_util.tree_leaves(shardings)
    total = sum(int(math.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in leaves)
    local = sum(shard_bytes(x.shape, x.dtype, s) for x, s in zip(leaves, shs))
    return total, local


def _spec_str(spec) -> str:
    def entry(e):
        if e is None:
            return "None"
        if isinstance(e, str):
            return e
        return "(" + ",".join(e) + ")"
    return "P(" + ", ".join(entry(e) for e in tuple(spec)) + ")"


def compile_uncached(lowered):
    """``lowered.compile()`` without the persistent compilation cache: a planned program is
    compiled only for its memory analysis and never runs, so writing its executable to the
    cache is wasted disk (and serialising a large SPMD executable for fake CPU devices once
    aborted a test worker inside jaxlib)."""
    import jax
    previous = jax.config.jax_enable_compilation_cache
    jax.config.update("jax_enable_compilation_cache", False)
    try:
        return lowered.compile()
    finally:
        jax.config.update("jax_enable_compilation_cache", previous)


def compiled_memory(compiled) -> dict:
    """XLA's ``memory_analysis`` of a compiled program: ``{argument, output, alias, temp,
    generated_code}`` bytes and ``peak`` = argument + output - alias + temp (what plug-plan
    compares with a device's memory less :data:`HEADROOM`); ``{}`` when the backend gives
    no statistics."""
    mem = compiled.memory_analysis()
    if not mem:
        return {}
    stats = {f: int(getattr(mem, f"{f}_size_in_bytes", 0) or 0)
             for f in ("argument", "output", "alias", "temp", "generated_code")}
    stats["peak"] = stats["argument"] + stats["output"] - stats["alias"] + stats["temp"]
    return stats


# -------------------------------------------------------------------------- plan
def plan_train(*, model, train_dataset_cfg, mesh=None, optimizer=None,
               learning_rate: Any = 1e-3, num_microbatches: int = 1,
               degrees: Sequence[int] = (1, 1, 1, 1), hardware: str = "h100_80gb",
               memory_bytes: int | None = None, top: int = 8, native: bool = False,
               measure: bool = False) -> dict:
    """Plans one train step of ``model`` on a mesh of ``degrees``; returns the report dict.

    The keyword arguments up to ``num_microbatches`` mean what they mean for
    :func:`plug_jax.trainer.loop.train` (``runs/plan.gin`` binds them from the same
    macros as ``runs/pretrain.gin``). ``mesh`` (a ``MeshConfig``) contributes its rule
    preset; its degrees are replaced by ``degrees`` (``data, fsdp, expert, model``).
    ``memory_bytes`` overrides the hardware's memory per device.

    ``native=True`` compiles for the devices this process has (the first
    ``prod(degrees)``) with their own compiler instead of fake CPU devices: on a GPU or
    TPU the compiled statistics are then the target compiler's, not a proxy.
    ``measure=True`` (needs ``native``) also allocates the state, runs the step three
    times and reports the device's peak bytes in use and the step time (``measured``).
    """
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import linen as nn

    from plug_jax.trainer import loop
    from plug_jax.trainer.step import make_train_step

    if hardware not in HARDWARE:
        raise PlanError(f"unknown hardware {hardware!r}; fix: use one of {sorted(HARDWARE)}")
    hw = HARDWARE[hardware]
    capacity = int(memory_bytes) if memory_bytes else hw.memory_bytes
    degrees = tuple(int(d) for d in degrees)
    n = math.prod(degrees)
    if measure and not native:
        raise PlanError("--measure runs the step on this process's devices; fix: add --native "
                        "(and run where the target devices are)")
    if native:
        if jax.device_count() < n:
            raise PlanError(f"--native needs {n} devices for the mesh but this process has "
                            f"{jax.device_count()} ({jax.default_backend()}); fix: plan a "
                            f"mesh of at most {jax.device_count()} devices or drop --native")
    else:
        force_cpu_devices(n)
    mesh = mesh or loop.MeshConfig()
    mesh_cfg = dataclasses.replace(mesh, ici=degrees, dcn=(1, 1, 1, 1), num_devices=n)
    part = mesh_cfg.partitioner()
    batch = int(train_dataset_cfg.batch_size)
    lengths = train_dataset_cfg.task_feature_lengths
    length = int(lengths["targets"] if "targets" in lengths else lengths["inputs"])
    k = int(num_microbatches or 1)
    multiple = part.batch_size_multiple
    if batch % k or (batch // k) % multiple:  # the trainer's check, same words
        raise PlanError(
            f"global batch size {batch} with {k} microbatches gives microbatches of "
            f"{batch / k:g} rows, which the batch mesh axes ('data', 'fsdp', 'expert') of "
            f"total size {multiple} (mesh {dict(part.mesh.shape)}) do not divide; fix: use a "
            f"batch size that is a multiple of {k * multiple} or change the mesh")
    if optimizer is None:
        from plug_jax.optim import adamw as optimizer
    schedule = learning_rate if callable(learning_rate) else (lambda s: jnp.float32(learning_rate))
    tx = optimizer(learning_rate=schedule)

    t0 = time.perf_counter()
    dummy = loop._dummy_batch(train_dataset_cfg)
    builder = loop.StateBuilder(model, part, tx, dummy)  # abstract: eval_shape only
    train_step = make_train_step(model, k, schedule)
    state_sh = builder.state_shardings()
    batch_sh = part.batch_shardings(dummy)  # per feature: leading dim over the batch axes
    step_fn = part.jit(train_step, in_shardings=(state_sh, batch_sh, None),
                       out_shardings=(state_sh, None), donate_argnums=(0,))
    abstract_state = builder.state(builder.abstract)
    abstract_batch = {name: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=batch_sh[name])
                      for name, v in dummy.items()}
    abstract_rng = jax.eval_shape(lambda: jax.random.PRNGKey(0))
    lowered = step_fn.lower(abstract_state, abstract_batch, abstract_rng)
    t1 = time.perf_counter()
    compiled = compile_uncached(lowered)
    t2 = time.perf_counter()

    params_total, params_dev = _tree_bytes(builder.abstract["params"],
                                           builder.shardings["params"])
    opt_total, opt_dev = _tree_bytes(builder.abstract["opt_state"],
                                     builder.shardings["opt_state"])
    step_dev = _tree_bytes(builder.abstract["step"], builder.shardings["step"])[1]
    ms_total, ms_dev = (_tree_bytes(builder.abstract["model_state"],
                                    builder.shardings["model_state"])
                        if "model_state" in builder.abstract else (0, 0))
    batch_dev = sum(shard_bytes(v.shape, v.dtype, batch_sh[k]) for k, v in dummy.items())
    n_params = sum(int(math.prod(x.shape))
                   for x in jax.tree_util.tree_leaves(builder.abstract["params"]))

    stats = compiled_memory(compiled)
    peak = stats.pop("peak", None)
    state_dev = params_dev + opt_dev + step_dev + ms_dev
    if peak is None:  # no statistics from this backend: state twice (no donation assumed) + batch
        peak = 2 * state_dev + batch_dev
    usable = int(capacity * (1.0 - HEADROOM))
    measured = _measure(builder, compiled, dummy, batch_sh) if measure else None

    # Largest parameter tensors by per-device bytes (the optimizer's mu / nu mirror them).
    boxed = builder.boxed_abstract["params"]
    names_tree = part.logical_axes(boxed)
    flat_abs = jax.tree_util.tree_flatten_with_path(builder.abstract["params"])[0]
    flat_sh = jax.tree_util.tree_leaves(builder.shardings["params"])
    flat_names = jax.tree_util.tree_leaves(names_tree, is_leaf=lambda x: isinstance(x, tuple))
    from plug_jax.partitioning.partitioner import path_str
    tensors = []
    for (path, x), s, names in zip(flat_abs, flat_sh, flat_names):
        tensors.append({
            "path": path_str(path), "shape": list(x.shape), "dtype": str(np.dtype(x.dtype)),
            "logical_axes": [None if a is None else str(a) for a in names],
            "spec": _spec_str(s.spec),
            "global_bytes": int(math.prod(x.shape)) * np.dtype(x.dtype).itemsize,
            "device_bytes": shard_bytes(x.shape, x.dtype, s)})
    tensors.sort(key=lambda r: (-r["device_bytes"], r["path"]))

    cfg = getattr(model, "config", None)
    active = n_params
    if getattr(cfg, "num_experts", 0):  # mixture of experts: what one token meets
        from plug_jax.layers.moe.config import active_param_count
        active = active_param_count(builder.abstract["params"], cfg)
    return {
        "model": {"family": getattr(model, "family", type(model).__name__),
                  "preset": getattr(cfg, "preset", "custom"),
                  "param_count": n_params,
                  "active_param_count": active,
                  "remat_policy": getattr(cfg, "remat_policy", None),
                  "activation_dtype": str(getattr(cfg, "dtype", "")),
                  "param_dtype": str(getattr(cfg, "param_dtype", "")),
                  "scan_layers": getattr(cfg, "scan_layers", None)},
        "mesh": {a: int(d) for a, d in zip(("data", "fsdp", "expert", "model"), degrees)},
        "num_devices": n,
        "rules": mesh_cfg.rules,
        "batch_size": batch, "length": length, "num_microbatches": k,
        "hardware": {"name": hw.name, "description": hw.description,
                     "memory_bytes": capacity, "memory_overridden": bool(memory_bytes),
                     "source": hw.source},
        "bytes_global": {"params": params_total, "opt_state": opt_total,
                         "model_state": ms_total},
        "bytes_per_device": {"params": params_dev, "opt_state": opt_dev, "step": step_dev,
                             "model_state": ms_dev, "batch": batch_dev, "state": state_dev},
        "compiled": stats,
        "compiled_backend": (f"{jax.default_backend()} (native)" if native else
                             "cpu (proxy for the target's XLA; see the caveat)"),
        "measured": measured,
        "peak_bytes_per_device": peak,
        "headroom": HEADROOM,
        "usable_bytes": usable,
        "fits": bool(peak <= usable),
        "top_tensors": tensors[:top],
        "lower_seconds": round(t1 - t0, 2),
        "compile_seconds": round(t2 - t1, 2),
    }


def _measure(builder, compiled, dummy: dict, batch_sh) -> dict:
    """Allocates the state, runs ``compiled`` three times (the first warms up) and reads
    the first device's memory statistics (``None`` where the backend keeps none, e.g. CPU)."""
    import jax
    state = builder.state(builder.init(jax.random.PRNGKey(0)))
    batch = {k: jax.device_put(v, batch_sh[k]) for k, v in dummy.items()}
    rng = jax.random.PRNGKey(1)
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        state, metrics = compiled(state, batch, rng)
        jax.block_until_ready((state, metrics))
        times.append(time.perf_counter() - t0)
    stats = jax.local_devices()[0].memory_stats() or {}
    return {"device": str(jax.local_devices()[0].device_kind),
            "peak_bytes_in_use": stats.get("peak_bytes_in_use"),
            "bytes_in_use": stats.get("bytes_in_use"),
            "bytes_limit": stats.get("bytes_limit"),
            "step_seconds": round(min(times[1:]), 4)}


# ----------------------------------------------------------------------- report
def fmt_gb(n: float) -> str:
    """Decimal units: ``12.34 GB``, ``5.6 MB``, ``789 kB``, ``12 B``."""
    for unit, size in (("GB", GB), ("MB", 10 ** 6), ("kB", 10 ** 3)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)} B"


def format_report(r: dict) -> str:
    m, d, c = r["model"], r["bytes_per_device"], r["compiled"]
    mesh = ",".join(f"{a}:{v}" for a, v in r["mesh"].items())
    hw = r["hardware"]
    lines = [
        f"plan: {m['family']}/{m['preset']}  {m['param_count']:,} parameters "
        f"(from abstract shapes; {fmt_gb(r['bytes_global']['params'])} of {m['param_dtype']})",
        f"  mesh {mesh} = {r['num_devices']} devices, rules {r['rules']!r}; batch "
        f"{r['batch_size']} x {r['length']} tokens in {r['num_microbatches']} microbatch(es); "
        f"remat {m['remat_policy']!r}, activations {m['activation_dtype']}",
        "per-device memory:",
        f"  parameters        {fmt_gb(d['params']):>12}   (exact: shard shapes)",
        f"  optimizer state   {fmt_gb(d['opt_state']):>12}   (exact: shard shapes)",
    ] + ([f"  model state       {fmt_gb(d['model_state']):>12}   (momentum copies, queues)"]
         if d.get("model_state") else []) + [
        f"  batch             {fmt_gb(d['batch']):>12}",
    ]
    native = not r["compiled_backend"].startswith("cpu (proxy")
    compiler = f"XLA:{r['compiled_backend'].split()[0].upper()}"
    if c:
        lines += [
            f"  compiled arguments{fmt_gb(c['argument']):>12}   ({compiler} memory_analysis)",
            f"  compiled outputs  {fmt_gb(c['output']):>12}",
            f"  aliased (donated) {fmt_gb(c['alias']):>12}",
            f"  temporaries       {fmt_gb(c['temp']):>12}   (activations, gradients, "
            f"workspace; {'native compile' if native else 'CPU compile as a proxy'})",
        ]
    else:
        lines.append("  (this backend gives no compiled memory statistics)")
    verdict = "FITS" if r["fits"] else "DOES NOT FIT"
    lines += [
        f"  total (arg + out - alias + temp) {fmt_gb(r['peak_bytes_per_device'])}",
        f"hardware {hw['name']}: {fmt_gb(hw['memory_bytes'])} per device"
        + (" (--memory_bytes)" if hw["memory_overridden"] else "")
        + f"; usable with {100 * r['headroom']:.0f}% headroom {fmt_gb(r['usable_bytes'])} "
        f"-> {verdict} ({100 * r['peak_bytes_per_device'] / hw['memory_bytes']:.1f}% of memory)",
        f"largest parameter tensors (per device; optimizer mu/nu have the same sharding):",
    ]
    for t in r["top_tensors"]:
        lines.append(f"  {t['path']:<44} {str(tuple(t['shape'])):<22} {t['spec']:<28} "
                     f"{fmt_gb(t['device_bytes'])}")
    meas = r.get("measured")
    if meas:
        peak = meas["peak_bytes_in_use"]
        lines.append(
            f"measured on {meas['device']}: step {meas['step_seconds']:.3f}s; peak bytes in use "
            + (f"{fmt_gb(peak)} ({100 * peak / r['peak_bytes_per_device']:.0f}% of the "
               f"compiled total)" if peak else "not reported by this backend"))
    lines.append(f"lowering {r['lower_seconds']:.1f}s, compile {r['compile_seconds']:.1f}s "
                 + (f"({compiler}, {r['num_devices']} device(s))" if native else
                    f"(XLA:CPU, {r['num_devices']} fake devices)"))
    return "\n".join(lines)


# -------------------------------------------------------------------------- CLI
def wants_plan(argv: Sequence[str]) -> bool:
    """True if ``argv`` asks ``plug_jax.main`` for ``--mode=plan``."""
    argv = list(argv)
    for i, a in enumerate(argv):
        if a == "--mode=plan" or (a == "--mode" and i + 1 < len(argv) and argv[i + 1] == "plan"):
            return True
    return False


def _plan_parser(prog: str):
    from plug_jax.cli import base_parser
    ap = base_parser(prog, "plan")
    ap.description = "Per-device memory of the train step on a target mesh (fake CPU devices)."
    ap.add_argument("--mode", choices=("plan",), default="plan", help=argparse.SUPPRESS)
    ap.add_argument("--mesh", default=None,
                    help="mesh degrees, e.g. data:8,fsdp:8 (axes data, fsdp, expert, model; "
                         "unnamed axes are 1)")
    ap.add_argument("--hardware", default="h100_80gb",
                    help=f"target device: one of {sorted(HARDWARE)} (default h100_80gb)")
    ap.add_argument("--memory_bytes", type=float, default=None,
                    help="override the hardware's memory per device (bytes)")
    ap.add_argument("--top", type=int, default=8, help="largest tensors to list")
    ap.add_argument("--json", action="store_true", help="print the report as JSON")
    ap.add_argument("--native", action="store_true",
                    help="compile for this process's devices (GPU/TPU) with their own compiler "
                         "instead of fake CPU devices")
    ap.add_argument("--measure", action="store_true",
                    help="with --native: allocate the state, run the step and report the "
                         "device's peak memory and step time")
    return ap


def main(argv: Sequence[str] | None = None, prog: str = "plug-plan") -> int:
    """``plug-plan`` (also ``python -m plug_jax.main --mode=plan``)."""
    from plug_jax import gin_utils
    from plug_jax.cli import user_errors as _user_errors
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--table" in argv or "--list" in argv:  # docs/scaling.md from every family's rows
        return _table_main([a for a in argv if not a.startswith("--mode")], prog)
    bindings, rest = gin_utils.split_gin_flags(argv)
    args = _plan_parser(prog).parse_args(rest)
    search = ([p for p in args.gin_search_paths.split(",") if p]
              if args.gin_search_paths else gin_utils.default_search_paths())
    try:
        if args.hardware not in HARDWARE:
            raise PlanError(f"unknown hardware {args.hardware!r}; fix: use one of "
                            f"{sorted(HARDWARE)}")
        if args.memory_bytes is not None and args.memory_bytes <= 0:
            raise PlanError(f"--memory_bytes={args.memory_bytes:g} must be positive")
        if not args.print_config:
            if not args.mesh:
                raise PlanError("no target mesh; fix: pass --mesh=data:D,fsdp:F,expert:E,model:M")
            degrees = parse_mesh(args.mesh)
            if not args.native:
                force_cpu_devices(math.prod(degrees))  # before anything starts JAX's backends
        if not args.gin_file:
            raise PlanError("no gin file; fix: pass --gin_file=runs/plan.gin "
                            "--gin_file=models/<family>/<size>.gin")
        sources = gin_utils.parse_gin(args.gin_file, bindings, search)
        if args.print_config:
            print(sources.format())
            return 0
        import gin
        try:
            fn = gin.get_configurable(plan_train)
        except (KeyError, ValueError):
            raise PlanError("the gin files do not configure plug_jax.plan.plan_train; fix: "
                            "add --gin_file=runs/plan.gin (first)") from None
        report = gin_utils.call_with_gin_errors(
            fn, degrees=degrees, hardware=args.hardware,
            memory_bytes=int(args.memory_bytes) if args.memory_bytes else None, top=args.top,
            native=args.native, measure=args.measure)
    except (PlanError,) + _user_errors() as e:
        print(f"{prog}: error: {e}", file=sys.stderr, flush=True)
        return 2
    print(json.dumps(report, indent=1) if args.json else format_report(report), flush=True)
    return 0


# ------------------------------------------------------------------ scaling table
from plug_jax.families.spec import PlanRow as Row  # noqa: E402  (one row of docs/scaling.md)


def all_rows() -> tuple[Row, ...]:
    """Every family's plan rows (``FamilySpec.plan_rows``), in the registry's listing order."""
    from plug_jax.families import registry
    return tuple(row for spec in registry.specs() for row in spec.plan_rows())


def __getattr__(name: str):
    if name == "ROWS":  # computed on use, so a family registered later is in it
        return all_rows()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def run_plan(argv: Sequence[str], *, label: str, timeout: float = 1800,
             cpu_only: bool = True, cwd: str | None = None) -> dict:
    """Runs ``plug-plan argv`` (with ``--json``) in a fresh process; returns the report dict
    with ``wall_seconds`` and ``spmd_full_remat_warnings`` added. ``cpu_only=False`` leaves
    the process its accelerators (for ``--native``)."""
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    if cpu_only:
        env["JAX_PLATFORMS"] = "cpu"
    cmd = [sys.executable, "-m", "plug_jax.main", "--mode=plan", *argv]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout,
                          cwd=cwd)
    if proc.returncode:
        raise RuntimeError(f"{label} failed ({proc.returncode}): "
                           f"{proc.stderr.strip()[-2000:]}")
    report = json.loads(proc.stdout[proc.stdout.index("{"):])
    report["wall_seconds"] = round(time.perf_counter() - t0, 1)
    # XLA's SPMD partitioner warns when it must replicate a tensor to reshard it (slow on
    # the real pod, and more memory); count them so the table shows it.
    report["spmd_full_remat_warnings"] = proc.stderr.count("Involuntary full rematerialization")
    return report


def run_row(row: Row, timeout: float = 1800) -> dict:
    """Runs one row in a fresh process (its own device count); returns the report dict."""
    return run_plan(row.argv(), label=f"row {row.name!r}", timeout=timeout)


TABLE_HEADER = ("| row | model | published params | preset params (computed) | hardware | mesh "
                "| batch x length (microbatches) | remat | params GB/dev | opt GB/dev "
                "| temp GB/dev | total GB/dev | device memory | fits? | compile s |")


def _params_cell(m: dict) -> str:
    total, active = m["param_count"], m.get("active_param_count", m["param_count"])
    if active == total:
        return f"{total / 1e9:.2f}B"
    return f"{total / 1e9:.2f}B total, {active / 1e9:.2f}B active"


def table_line(row: Row, r: dict) -> str:
    d, c = r["bytes_per_device"], r["compiled"]
    g = lambda n: f"{n / GB:.1f}"  # noqa: E731
    mesh = ",".join(f"{a}:{v}" for a, v in r["mesh"].items() if v > 1) or "1 device"
    fits = "yes" if r["fits"] else "**no**"
    return (f"| {row.name} | {r['model']['family']}/{r['model']['preset']} | {row.published} "
            f"| {_params_cell(r['model'])} | {row.hardware} ({row.where}) "
            f"| {mesh} = {r['num_devices']} | {r['batch_size']} x {r['length']} "
            f"({r['num_microbatches']}) | {r['model']['remat_policy']} | {g(d['params'])} "
            f"| {g(d['opt_state'])} | {g(c.get('temp', 0))} | {g(r['peak_bytes_per_device'])} "
            f"| {HARDWARE[row.hardware].label} | {fits} | {r['compile_seconds']:.0f} |")


def render_table(results: Sequence[tuple[Row, dict]]) -> str:
    lines = [
        "# Scaling plan: per-device memory of the train step on target pods",
        "",
        "Generated by `make scaling` (`plug-plan --table > docs/scaling.md`) "
        "from every family's plan rows (`FamilySpec.plan_rows`); do not edit by hand. Every row lowers and compiles the "
        "real train step (the trainer's `StateBuilder`, `make_train_step` and partitioner, "
        "AdamW from `runs/pretrain.gin`) for a mesh of fake CPU devices with `plug-plan`; "
        "no parameter is allocated. Reproduce one row with the command under the table.",
        "",
        TABLE_HEADER,
        "|" + "|".join("---" for _ in range(TABLE_HEADER.count("|") - 1)) + "|",
    ]
    lines += [table_line(row, r) for row, r in results]
    lines += [
        "",
        "Columns:",
        "",
        "* *published params*: the size name on the ModelScope model card "
        "(`/work/shared/reference/MODEL_SPECS.md` section 4, tag [V-card]); *computed*: the "
        "parameter count of the preset from abstract shapes (vocabulary 25600, learned "
        "positions 2048, tied output embedding, biases and LayerNorms included). GPT-MoE "
        "(MODEL_SPECS.md section 3, ModelScope `PAI/nlp_gpt3_text-generation_1.3B_MoE-32`) "
        "is named by its dense size: *active* counts what one token meets (the router and "
        "one expert per MoE layer), *total* every expert. PLUG (section 3): the README's 27B; "
        "the preset (24 + 6 layers, hidden 8192, vocabulary 21504) counts 26.10B, like "
        "MODEL_SPECS' own rough count (~26B); its *batch x length* is the decoder length, "
        "with encoder inputs of 512. PLUG-MoE 20B has no published specification; the project's "
        "definition is in plug_jax/families/plug/README.md. StructBERT large (section 2, "
        "structbert.ch.large, 330M): encoder with the MLM and 3-way sentence heads; its "
        "*batch x length* is the sentence-pair length. mPLUG (section 5, mplug.en.base / "
        "large, 350M / 600M [V-code]): computed over the bert-base vocabulary (30522) with "
        "the position table at the row's image size (the CLIP text tower and the unused "
        "lower fusion layers of the released files are not built; family README); its "
        "*batch x length* is the decoder length, with 336 x 336 images and 40 question "
        "tokens (VQA) or 256 x 256 images (pre-training: ITC + ITM + MLM + prefix LM, the "
        "text encoder run three times and the fusion five times per pair; no momentum "
        "distillation)."
        " M6 (section 6: only the totals are published, 10B and 100B, and M6-T passed 1T): "
        "the shapes are defined in plug_jax/families/m6/README.md; its *batch x length* is "
        "the target length, after 256 image patches (256 x 256 px) and 64 source tokens. The "
        "MoE rows put the experts on the `expert` axis (`ep_fsdp_tp` rules); their involuntary "
        "full rematerializations are in the backward of the embedding tables and the patch "
        "stem (tensors under 1 MB each); the fsdp rows have none.",
        "* GB = 10^9 bytes, GiB = 2^30 bytes.",
        "* *params / opt GB/dev*: exact bytes of one device's shard of the float32 "
        "parameters and of the AdamW state (mu and nu, float32, plus step counters).",
        "* *temp GB/dev*: XLA's temporaries (activations kept for the backward pass, "
        "gradients and their accumulator, workspace) of the compiled per-device program.",
        "* *total GB/dev*: `argument + output - alias + temp` from "
        "`compiled.memory_analysis()` (the state is donated, so its outputs alias its inputs).",
        f"* *fits?*: total <= (1 - {HEADROOM:.2f}) x device memory; the "
        f"{100 * HEADROOM:.0f}% headroom covers allocator fragmentation, the runtime's "
        "own buffers and the CUDA context.",
        "* *compile s*: XLA:CPU compile time of the row on the 2-core reference machine "
        "(lowering excluded).",
        "",
        "Hardware memory per JAX device: "
        + "; ".join(f"`{h.name}` {h.label} = {h.memory_bytes / GB:.1f} GB ({h.source})"
                    for h in HARDWARE.values()),
        "",
        "Caveats:",
        "",
        "* The compiled numbers come from XLA:CPU compiling the SPMD-partitioned program. "
        "The sharding of every array is the target's, so the parameter and optimizer "
        "columns are exact, but buffer assignment, fusion and the treatment of bfloat16 "
        "(XLA:CPU may run some bf16 work in float32) are the CPU compiler's: *temp* is a "
        "proxy for the GPU / TPU compiler's figure, not a measurement.",
        "* Checked on a GPU (`benchmarks/plan_vs_native.py`, one NVIDIA H200, jax 0.11.2, "
        "2026-12-04): for one device of the `structbert-large-zh / 8xH100` row the proxy "
        "total is 24.40 GB, XLA:GPU's compiled total 22.71 GB and the measured peak bytes in "
        "use 22.71 GB (0.93x the proxy); for GPT-3 1.3B (bf16, full remat, 8 x 2048 tokens "
        "on one device) 60.76 GB against 38.05 GB (0.63x). The proxy over-counted the "
        "temporaries in both (likely XLA:CPU running bf16 work in float32), so a *yes* "
        "below is conservative; a *no* near the limit may still fit: check it with "
        "`plug-plan --native --measure` on one target device.",
        "* The mesh is built without a DCN split (fake CPU devices share one process). "
        "Where the DCN boundary sits changes speed, not per-device memory.",
        "* On GPU, JAX preallocates 75% of memory by default; a plan close to the limit "
        "needs `XLA_PYTHON_CLIENT_MEM_FRACTION=0.95`.",
        "* Batches are micro-batched with the trainer's `NUM_MICROBATCHES` (gradient "
        "accumulation in `lax.scan`): the activations held at once are those of one "
        "microbatch, plus one float32 gradient accumulator the size of the parameter shard.",
        "",
        "Rows:",
        "",
    ]
    for row, r in results:
        warn = r.get("spmd_full_remat_warnings", 0)
        note = (f"; XLA SPMD warned {warn}x 'Involuntary full rematerialization' (a "
                f"resharding through a replicated copy)" if warn else "")
        lines.append(f"* `{row.name}` (wall time {r.get('wall_seconds', 0):.0f}s incl. "
                     f"start-up{note}):\n\n  ```\n  {row.command()}\n  ```\n")
    return "\n".join(lines) + "\n"


def _table_main(argv: Sequence[str], prog: str = "plug-plan") -> int:
    ap = argparse.ArgumentParser(prog=prog, description="Plan every family's rows and print "
                                 "docs/scaling.md (each row in its own process).")
    ap.add_argument("--table", action="store_true", help="print docs/scaling.md")
    ap.add_argument("--rows", default="", help="comma-separated row names (default: all)")
    ap.add_argument("--list", action="store_true", help="list the rows and their commands "
                    "without planning them")
    args = ap.parse_args(argv)
    rows = all_rows()
    if args.list:
        for row in rows:
            print(f"{row.name}: {row.command()}")
        return 0
    wanted = [r for r in rows if not args.rows or r.name in args.rows.split(",")]
    unknown = set(filter(None, args.rows.split(","))) - {r.name for r in rows}
    if unknown:
        print(f"{prog}: error: unknown rows {sorted(unknown)}; --list shows them",
              file=sys.stderr)
        return 2
    results = []
    for row in wanted:
        print(f"plan: {row.name} ...", file=sys.stderr, flush=True)
        r = run_row(row)
        print(f"plan: {row.name}: compile {r['compile_seconds']}s, wall {r['wall_seconds']}s",
              file=sys.stderr, flush=True)
        results.append((row, r))
    sys.stdout.write(render_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
