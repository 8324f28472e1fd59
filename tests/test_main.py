"""The command line end to end (subprocesses): resume after SIGTERM, error lines, infer."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXP = "experiments/gpt3/shop_tiny.gin"
# Small and fast: 1 CPU device, short sequences, log every step, no periodic eval.
SMALL = ["--gin.TASK_FEATURE_LENGTHS={'targets': 64}", "--gin.BATCH_SIZE=8",
         "--gin.LOG_PERIOD=1", "--gin.EVAL_PERIOD=0", "--gin.EVAL_STEPS=2",
         "--gin.CHECKPOINT_PERIOD=1000", "--gin.WARMUP_STEPS=3"]


def _env():
    env = dict(os.environ)
    env["XLA_FLAGS"] = os.environ["PLUG_JAX_TEST_XLA_FLAGS"]  # gin hardware decides devices
    env["JAX_PLATFORMS"] = "cpu"
    return env


def _cmd(mode, *args):
    return [sys.executable, "-m", "plug_jax.main", f"--mode={mode}", f"--gin_file={EXP}",
            *SMALL, *args]


def _run(mode, *args, timeout=600):
    return subprocess.run(_cmd(mode, *args), cwd=REPO, env=_env(), capture_output=True,
                          text=True, timeout=timeout)


def _rows(model_dir):
    with open(os.path.join(model_dir, "metrics.jsonl")) as f:
        rows = [json.loads(x) for x in f if x.strip()]
    return {r["step"]: r for r in rows if "loss" in r}  # later rows win (resumed run)


def _final_params(model_dir):
    import plug_jax.tasks  # noqa: F401
    from plug_jax import models
    from plug_jax.trainer import loop
    cfg = loop.DatasetConfig("gpt3_shoplm_zh_v1", {"targets": 64}, batch_size=8)
    params, step, _ = loop.load_for_inference(
        models.gpt3("tiny"), model_dir, cfg, loop.MeshConfig((1, 1, 1, 1), num_devices=1))
    return step, params


def _one_error_line(proc):
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-3000:]
    lines = [x for x in proc.stderr.splitlines() if x.startswith("plug_jax: error:")]
    assert len(lines) == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    return lines[0]


def test_sigterm_then_resume_equals_uninterrupted_run(tmp_path):
    full, cut = str(tmp_path / "full"), str(tmp_path / "cut")
    ref = _run("train", f"--gin.MODEL_DIR='{full}'", "--gin.TRAIN_STEPS=12")
    assert ref.returncode == 0, ref.stderr[-3000:]
    # Interrupted run: SIGTERM once step 6 is logged.
    proc = subprocess.Popen(_cmd("train", f"--gin.MODEL_DIR='{cut}'", "--gin.TRAIN_STEPS=12"),
                            cwd=REPO, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    metrics = os.path.join(cut, "metrics.jsonl")
    while time.time() < deadline:
        if os.path.exists(metrics) and any(r >= 6 for r in _rows(cut)):
            break
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert "SIGTERM: saved checkpoint of step" in out
    stopped_at = max(_rows(cut))
    assert 6 <= stopped_at < 12
    resumed = _run("train", f"--gin.MODEL_DIR='{cut}'", "--gin.TRAIN_STEPS=12")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"restored step {stopped_at}" in resumed.stdout
    a, b = _rows(full), _rows(cut)
    assert sorted(a) == sorted(b) == list(range(1, 13))
    for s in range(7, 13):
        assert a[s]["loss"] == b[s]["loss"], (s, a[s]["loss"], b[s]["loss"])
    sa, pa = _final_params(full)
    sb, pb = _final_params(cut)
    assert sa == sb == 12
    import jax
    same = jax.tree_util.tree_map(lambda x, y: np.array_equal(np.asarray(x), np.asarray(y)),
                                  pa, pb)
    assert all(jax.tree_util.tree_leaves(same))
    for name in ("config.gin", "metrics.jsonl", "checkpoints"):
        assert os.path.exists(os.path.join(cut, name))
    assert os.listdir(os.path.join(cut, "tensorboard"))
    with open(os.path.join(cut, "config.gin")) as f:
        text = f.read()
    assert "TRAIN_STEPS = 12" in text and "gpt3_shoplm_zh_v1" in text


def test_unknown_gin_binding(tmp_path):
    line = _one_error_line(_run("train", f"--gin.MODEL_DIR='{tmp_path}'",
                                "--gin.loop.train.no_such_arg=3"))
    assert "no_such_arg" in line
    assert not os.listdir(tmp_path)


def test_missing_required_value(tmp_path):
    line = _one_error_line(_run("train"))
    assert "MODEL_DIR" in line and "--gin.MODEL_DIR" in line


def test_mesh_that_does_not_divide_the_batch(tmp_path):
    line = _one_error_line(_run("train", f"--gin.MODEL_DIR='{tmp_path}'", "--gin.TRAIN_STEPS=2",
                                "--gin_file=hardware/cpu8_fake.gin", "--gin.BATCH_SIZE=12"))
    assert "batch size 12" in line and "multiple of 8" in line
    assert not os.path.exists(tmp_path / "checkpoints")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("trained"))
    proc = _run("train", f"--gin.MODEL_DIR='{d}'", "--gin.TRAIN_STEPS=3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return d


def _snapshot(d):
    return sorted((os.path.relpath(os.path.join(r, f), d), os.path.getsize(os.path.join(r, f)))
                  for r, _, fs in os.walk(d) for f in fs)


def test_model_dir_of_another_preset(trained):
    before = _snapshot(trained)
    line = _one_error_line(_run("train", f"--gin.MODEL_DIR='{trained}'", "--gin.TRAIN_STEPS=4",
                                "--gin.gpt3_config.GPT3Config.num_layers=3",
                                "--gin.gpt3_config.GPT3Config.preset='tiny3'"))
    assert "preset='tiny'" in line and "preset='tiny3'" in line
    assert _snapshot(trained) == before


def test_corrupt_checkpoint_file(trained, tmp_path):
    import shutil
    d = str(tmp_path / "copy")
    shutil.copytree(trained, d)
    step_dir = os.path.join(d, "checkpoints", "3", "state")
    for r, _, fs in os.walk(step_dir):
        for f in fs:
            p = os.path.join(r, f)
            if os.path.getsize(p) > 0:
                with open(p, "wb") as fh:
                    fh.write(b"\x00not a checkpoint")
    before = _snapshot(d)
    line = _one_error_line(_run("train", f"--gin.MODEL_DIR='{d}'", "--gin.TRAIN_STEPS=4"))
    assert "checkpoints/3" in line and "fix:" in line
    assert _snapshot(d) == before


def test_infer_and_eval_from_checkpoint(trained):
    proc = _run("infer", f"--gin.MODEL_DIR='{trained}'", "--gin.MAX_NEW_TOKENS=8",
                "--prompt=南风 夏季新款")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[greedy] 南风 夏季新款 ▸" in proc.stdout and "[beam]" in proc.stdout
    # int8 weights converted from the float checkpoint at load time (layers/quant.py)
    q = _run("infer", f"--gin.MODEL_DIR='{trained}'", "--gin.MAX_NEW_TOKENS=8",
             "--prompt=南风 夏季新款", "--weights_dtype=int8", "--gin.DECODE_METHODS=['greedy']")
    assert q.returncode == 0, q.stderr[-3000:]
    mb = re.search(r"weights: int8, ([0-9.]+) MB \(restored: ([0-9.]+) MB\)", q.stdout)
    assert mb and float(mb.group(1)) < 0.5 * float(mb.group(2)), q.stdout
    assert "[greedy] 南风 夏季新款 ▸" in q.stdout
    bad = _run("infer", f"--gin.MODEL_DIR='{trained}'", "--weights_dtype=int4")
    assert bad.returncode == 2 and "--weights_dtype" in bad.stderr
    proc = _run("eval", f"--gin.MODEL_DIR='{trained}'")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "token accuracy" in proc.stdout


def test_print_config_names_sources(tmp_path):
    proc = _run("train", f"--gin.MODEL_DIR='{tmp_path}'", "--print_config")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "shop_tiny.gin" in proc.stdout and "--gin.MODEL_DIR" in proc.stdout
    assert not os.listdir(tmp_path)
