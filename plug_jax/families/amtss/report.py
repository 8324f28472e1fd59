"""The student against its teachers: parameters and inference time (issue 26's report).

Any task models with ``init_params(rng, batch)`` and ``outputs(params, batch)`` work: the
AMTSS student and ``EncoderModel`` classifiers as teachers. Parameters are counted from
abstract shapes (nothing allocated); time is the median wall time of the jitted forward pass
on ``batch`` after one warm-up call, on whatever device jax uses (say which in a report).
"""
from __future__ import annotations

import time
from typing import Any, Sequence

import jax
import numpy as np
from flax import linen as nn


def model_params(model, batch: dict) -> int:
    shapes = jax.eval_shape(model.init_params, jax.random.PRNGKey(0), batch)
    return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(nn.unbox(shapes))))


def forward_seconds(model, params, batch: dict, repeats: int = 5) -> float:
    """Median seconds of one jitted ``model.outputs(params, batch)`` (after a warm-up)."""
    fn = jax.jit(lambda p, b: model.outputs(p, b))
    jax.block_until_ready(fn(params, batch))
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(params, batch))
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def size_and_speed(student, student_params, teachers: Sequence[tuple[Any, Any]], batch: dict,
                   repeats: int = 5) -> dict:
    """Parameters and forward time of the student and of the teachers summed (running every
    teacher is what the student replaces), and their ratios (``> 1``: the student is smaller /
    faster)."""
    sp = model_params(student, batch)
    tp = sum(model_params(m, batch) for m, _ in teachers)
    st = forward_seconds(student, student_params, batch, repeats)
    tt = sum(forward_seconds(m, p, batch, repeats) for m, p in teachers)
    return {"student_params": sp, "teachers_params": tp, "params_ratio": tp / sp,
            "student_seconds": st, "teachers_seconds": tt, "speed_ratio": tt / max(st, 1e-12),
            "device": jax.devices()[0].device_kind}


def format_report(r: dict) -> str:
    return (f"student {r['student_params']:,} params, {r['student_seconds'] * 1e3:.2f} ms/batch; "
            f"teachers (sum) {r['teachers_params']:,} params, "
            f"{r['teachers_seconds'] * 1e3:.2f} ms/batch; teachers/student: "
            f"{r['params_ratio']:.2f}x params, {r['speed_ratio']:.2f}x time ({r['device']})")
