"""plug-plan: exact per-device parameter / optimizer bytes, the fits decision, error lines,
and docs/scaling.md in sync with plug_jax.plan.ROWS.

The in-process tests use the 8 fake CPU devices that tests/conftest.py forces; plans for
other device counts run in subprocesses.
"""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from plug_jax import plan

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--gin_file=runs/plan.gin", "--gin_file=models/gpt3/tiny.gin",
        "--gin_file=partitioning/fsdp.gin", "--gin.TASK_FEATURE_LENGTHS={'targets': 64}",
        "--gin.BATCH_SIZE=16"]


def _plan_json(capsys, *extra):
    rc = plan.main(TINY + ["--json", *extra])
    out = capsys.readouterr().out
    assert rc == 0, out
    return json.loads(out)


def _hand_param_bytes(fsdp: int):
    """Independent of the partitioner: logical names straight from the boxed shapes."""
    import jax
    from flax import linen as nn
    from plug_jax.families.gpt3.network import abstract_params
    from plug_jax.models import gpt3
    boxed = abstract_params(gpt3("tiny").config)
    total = local = 0
    for x in jax.tree_util.tree_leaves(boxed, is_leaf=lambda v: isinstance(v, nn.Partitioned)):
        names = x.names if isinstance(x, nn.Partitioned) else ()
        value = x.value if isinstance(x, nn.Partitioned) else x
        nbytes = math.prod(value.shape) * np.dtype(value.dtype).itemsize
        total += nbytes
        local += nbytes // fsdp if "embed" in names else nbytes  # fsdp rules: embed -> fsdp
    return total, local


def test_tiny_fsdp8_bytes_are_exact(capsys):
    r = _plan_json(capsys, "--mesh=fsdp:8", "--hardware=tpu_v4")
    total, local = _hand_param_bytes(8)
    assert r["model"]["param_count"] * 4 == total == r["bytes_global"]["params"]
    assert r["bytes_per_device"]["params"] == local
    # every weight matrix of the tiny model has an embed dim: almost all of it is sharded
    assert local < total / 8 * 1.1
    # AdamW: mu and nu like the params, plus two int32 step counters (adam, schedule)
    assert r["bytes_per_device"]["opt_state"] == 2 * local + 2 * 4
    # XLA's argument bytes are exactly state + batch: the same shardings were compiled
    # (+ 8 bytes of rng when dropout uses it; the tiny model has none, so jit drops it)
    d = r["bytes_per_device"]
    assert r["compiled"]["argument"] - (d["state"] + d["batch"]) in (0, 8)
    assert d["batch"] == 5 * (16 // 8) * 64 * 4
    assert r["compiled"]["alias"] == d["state"]  # donated state
    assert r["peak_bytes_per_device"] == (r["compiled"]["argument"] + r["compiled"]["output"]
                                          - r["compiled"]["alias"] + r["compiled"]["temp"])
    assert r["hardware"]["memory_bytes"] == 32 * 2 ** 30
    assert r["fits"] is True and r["num_devices"] == 8
    top = r["top_tensors"][0]
    assert top["path"] == "token_embed/embedding" and top["spec"] == "P(None, fsdp)"
    assert top["device_bytes"] == 1024 * 64 * 4 // 8


def test_text_report_and_fits_flips_with_tiny_memory(capsys):
    assert plan.main(TINY + ["--mesh=data:2,fsdp:4", "--memory_bytes=100000"]) == 0
    out = capsys.readouterr().out
    for want in ("parameters", "optimizer state", "temporaries", "182,016", "compile",
                 "token_embed/embedding", "DOES NOT FIT", "100.00 kB per device"):
        assert want in out, out


def _error_line(capsys, *args):
    rc = plan.main(list(args))
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = [x for x in err.splitlines() if x.startswith("plug-plan: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_error_lines(capsys):
    line = _error_line(capsys, *TINY, "--gin.BATCH_SIZE=12", "--mesh=fsdp:8")
    assert "global batch size 12" in line and "multiple of 8" in line
    line = _error_line(capsys, *TINY, "--gin_file=partitioning/fsdp_tp.gin", "--mesh=model:8")
    # 4 heads over model:8
    assert "does not divide" in line and "model" in line
    line = _error_line(capsys, *TINY, "--mesh=fsdp:8", "--hardware=tpu_v9")
    assert "unknown hardware 'tpu_v9'" in line
    line = _error_line(capsys, *TINY, "--mesh=fsdp:-1")
    assert "-1" in line
    line = _error_line(capsys, *TINY)
    assert "--mesh" in line
    line = _error_line(capsys, *TINY, "--mesh=fsdp:16")  # this process has 8 devices
    assert "fresh process" in line


def test_native_and_measure_on_this_process_devices(capsys):
    """--native compiles for the devices the process has (here the 8 CPU devices, so the
    statistics equal the proxy's); --measure also runs the step on them."""
    proxy = _plan_json(capsys, "--mesh=data:2,fsdp:4")
    r = _plan_json(capsys, "--mesh=data:2,fsdp:4", "--native", "--measure")
    assert r["compiled_backend"] == "cpu (native)" and proxy["measured"] is None
    assert r["compiled"] == proxy["compiled"]
    assert r["bytes_per_device"] == proxy["bytes_per_device"]
    m = r["measured"]
    assert m["step_seconds"] > 0 and m["device"]
    assert plan.main(TINY + ["--mesh=data:2,fsdp:4", "--native", "--measure"]) == 0
    out = capsys.readouterr().out
    assert "measured on" in out and "XLA:CPU, 8 device(s)" in out, out
    line = _error_line(capsys, *TINY, "--mesh=data:2", "--measure")
    assert "--measure" in line and "fix: add --native" in line
    line = _error_line(capsys, *TINY, "--mesh=fsdp:16", "--native")
    assert "needs 16 devices" in line and "has 8" in line


def test_cli_subprocess_16_devices():
    """plug-plan forces its own device count (here 16) in a fresh process."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = os.environ["PLUG_JAX_TEST_XLA_FLAGS"]  # plug-plan sets 16 devices
    cmd = [sys.executable, "-m", "plug_jax.main", "--mode=plan", *TINY, "--mesh=data:2,fsdp:8",
           "--json"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout)
    assert r["num_devices"] == 16
    assert r["bytes_per_device"]["params"] == _hand_param_bytes(8)[1]


def test_scaling_doc_in_sync_with_rows():
    with open(os.path.join(REPO, "docs", "scaling.md"), encoding="utf-8") as f:
        doc = f.read()
    assert plan.TABLE_HEADER in doc
    table = [x for x in doc.splitlines() if x.startswith("| ") and x != plan.TABLE_HEADER]
    assert [x.split(" | ")[0][2:] for x in table] == [r.name for r in plan.ROWS]
    for row in plan.ROWS:
        assert row.command() in doc
        assert row.hardware in plan.HARDWARE
        assert os.path.exists(os.path.join(REPO, "gin_configs", row.model_gin))
        plan.parse_mesh(row.mesh)


# The cheapest row to plan (about 20 s in its own process on the 2-core reference machine).
CHECKED_ROW = "gpt3-175B / v5p-128"


def _table_cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def test_scaling_doc_numbers_match_a_fresh_plan():
    """Re-plans one row of docs/scaling.md and compares what the doc says with what
    plug-plan says now: every cell exactly (parameter / optimizer bytes per device, the
    parameter count, mesh, batch, fits, ...), except XLA's temporaries and the compiled total
    (5%: compiler noise) and the compile time."""
    with open(os.path.join(REPO, "docs", "scaling.md"), encoding="utf-8") as f:
        doc = [x for x in f.read().splitlines() if x.startswith(f"| {CHECKED_ROW} | ")]
    assert len(doc) == 1, CHECKED_ROW
    row = next(r for r in plan.ROWS if r.name == CHECKED_ROW)
    header = _table_cells(plan.TABLE_HEADER)
    want = dict(zip(header, _table_cells(doc[0]), strict=True))
    got = dict(zip(header, _table_cells(plan.table_line(row, plan.run_row(row, timeout=600))),
                   strict=True))
    noisy = ("temp GB/dev", "total GB/dev")
    assert {"params GB/dev", "opt GB/dev", "fits?", "compile s", *noisy} <= set(header)
    for col in header:
        why = f"{CHECKED_ROW} {col}: docs/scaling.md {want[col]!r}, plug-plan now {got[col]!r}"
        if col in noisy:
            assert float(got[col]) == pytest.approx(float(want[col]), rel=0.05), why
        elif col != "compile s":
            assert got[col] == want[col], why
