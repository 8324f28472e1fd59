"""Metric logging: ``MODEL_DIR/metrics.jsonl`` plus an optional clu-style writer.

``metrics.jsonl`` gets one JSON object per logged step (``{"step": N, ...}``), appended
and flushed at once, so a crash loses nothing already logged. A resumed run appends
after the rows of the earlier run; rows of steps past the restored checkpoint appear
twice then, and the later row is the one of the resumed run.
"""
from __future__ import annotations

import json
import math
import os
import time
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

METRICS_FILE = "metrics.jsonl"


class MetricsLogger:
    def __init__(self, model_dir: str, writer: Any = None):
        self.path = os.path.join(model_dir, METRICS_FILE)
        self.writer = writer
        self.enabled = jax.process_index() == 0

    def write(self, step: int, scalars: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        row = {"step": int(step)}
        row.update({k: _plain(v) for k, v in scalars.items()})
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row, sort_keys=True) + "\n")
        if self.writer is not None:
            self.writer.write_scalars(int(step), {k: v for k, v in row.items() if k != "step"
                                                  and isinstance(v, (int, float))})

    def close(self) -> None:
        if self.enabled and self.writer is not None:
            self.writer.flush()


def _plain(v: Any) -> Any:
    if isinstance(v, (np.generic, np.ndarray)):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no NaN / Infinity
    return v


def read_metrics(model_dir: str) -> list[dict]:
    """All rows of ``metrics.jsonl`` (in file order)."""
    with open(os.path.join(model_dir, METRICS_FILE), encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def measure_matmul_flops(n: int = 1024, repeats: int = 5) -> float:
    """float32 matmul FLOP/s of the default backend (median of ``repeats``), for CPU MFU."""
    a = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda x, y: x @ y)
    f(a, a).block_until_ready()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        f(a, a).block_until_ready()
        times.append(time.perf_counter() - t)
    return 2.0 * n ** 3 / float(np.median(times))
