"""Two plug-train processes on one machine (jax.distributed, CPU gloo) vs one process.

* 2 processes x 4 fake CPU devices (through ``launch/local_multiprocess.sh``) train the tiny
  GPT-3 for 5 steps on an fsdp-8 mesh; one process with 8 devices trains the same config:
  the per-step losses agree;
* the checkpoint the 2-process run wrote restores in this (one) process and equals the
  one-process run's parameters;
* SIGKILL of one of two processes mid-run: the other exits non-zero within a bound
  instead of hanging;
* resume (index-based input, docs/data.md): the 2-process run restarted on 2 processes from
  its step-3 checkpoint is bit-exact; a curriculum run restarted on the other process count
  (2 -> 1, 1 -> 2) continues at the same global example index in the same stage.

Every subprocess has a hard timeout and is killed in ``finally``, so nothing here can
hang CI.
"""
import importlib.util
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

_spec = importlib.util.spec_from_file_location(
    "plug_jax_tests_cli_helpers", pathlib.Path(__file__).resolve().parent / "cli_helpers.py")
cli_helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cli_helpers)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(REPO, "launch", "local_multiprocess.sh")
EXP = "experiments/gpt3/shop_tiny.gin"
LENGTH, BATCH, STEPS = 32, 8, 5
SMALL = [f"--gin.TASK_FEATURE_LENGTHS={{'targets': {LENGTH}}}", f"--gin.BATCH_SIZE={BATCH}",
         "--gin.LOG_PERIOD=1", "--gin.EVAL_PERIOD=0", "--gin.EVAL_STEPS=2",
         "--gin.EVAL_BASELINE=False", "--gin.WARMUP_STEPS=2", "--gin.CHECKPOINT_PERIOD=3"]
RUN_TIMEOUT = 420  # hard limit per run (seconds); the runs take well under that
HEARTBEAT = 10  # --heartbeat_timeout of the kill test
DETECT_BOUND = 90  # the survivor must be gone this many seconds after the SIGKILL


def _env():
    env = dict(os.environ)
    # not conftest's 8 devices: --num_cpu_devices decides
    env["XLA_FLAGS"] = os.environ["PLUG_JAX_TEST_XLA_FLAGS"]
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _rows(model_dir):
    path = os.path.join(model_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        rows = [json.loads(x) for x in f if x.strip()]
    return {r["step"]: r for r in rows if "loss" in r}


def _eval_row(model_dir):
    with open(os.path.join(model_dir, "metrics.jsonl")) as f:
        rows = [json.loads(x) for x in f if x.strip()]
    return [r for r in rows if "eval/loss" in r][-1]


def _kill(procs):
    for p in procs:
        if p.poll() is None:
            p.kill()
    for p in procs:
        try:
            p.communicate(timeout=30)
        except Exception:  # noqa: BLE001
            pass


def _train_cmd(model_dir, steps, *extra):
    return [sys.executable, "-m", "plug_jax.main", "--mode=train", f"--gin_file={EXP}",
            *SMALL, f"--gin.MODEL_DIR='{model_dir}'", f"--gin.TRAIN_STEPS={steps}", *extra]


def _train(processes, gin_file, flags):
    """``plug-train`` on 8 devices: one process, or ``launch/local_multiprocess.sh`` with
    2 processes x 4 devices. Returns its stdout (it must exit 0)."""
    if processes == 1:
        cmd = [sys.executable, "-m", "plug_jax.main", "--mode=train", f"--gin_file={gin_file}",
               *flags, "--num_cpu_devices=8"]
        env = _env()
    else:
        cmd = ["bash", LAUNCH, str(processes), gin_file, *flags]
        env = _env()
        env.update(DEVICES_PER_PROCESS=str(8 // processes), PYTHON=sys.executable)
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=RUN_TIMEOUT)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 0, out[-3000:] + err[-5000:]
    return out + err


def _cut(model_dir, to, step):
    """A copy of ``model_dir`` as a run interrupted right after checkpoint ``step``: later
    checkpoints and metrics rows removed."""
    shutil.copytree(model_dir, to)
    for s in os.listdir(os.path.join(to, "checkpoints")):
        if s.isdigit() and int(s) > step:
            shutil.rmtree(os.path.join(to, "checkpoints", s))
    path = os.path.join(to, "metrics.jsonl")
    with open(path) as f:
        keep = [x for x in f if x.strip() and json.loads(x).get("step", 0) <= step]
    with open(path, "w") as f:
        f.writelines(keep)
    return str(to)


def _saved(model_dir, step):
    """``(train state as {path: numpy array}, data position)`` of checkpoint ``step``."""
    path = os.path.join(model_dir, "checkpoints", str(step), "data", "metadata")  # orbax JSON
    with open(path) as f:
        data = json.load(f)
    return cli_helpers.flat_arrays(cli_helpers.train_state(model_dir, step)), data


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """``(one-process MODEL_DIR, two-process MODEL_DIR, launcher output)``."""
    one = str(tmp_path_factory.mktemp("one"))
    two = str(tmp_path_factory.mktemp("two"))
    ref = subprocess.run(_train_cmd(one, STEPS, "--num_cpu_devices=8"), cwd=REPO, env=_env(),
                         capture_output=True, text=True, timeout=RUN_TIMEOUT)
    assert ref.returncode == 0, ref.stderr[-3000:]
    out = _train(2, EXP, [*SMALL, f"--gin.MODEL_DIR='{two}'", f"--gin.TRAIN_STEPS={STEPS}"])
    return one, two, out


def test_two_processes_equal_one_process(runs):
    one, two, out = runs
    for i in (0, 1):
        assert f"[p{i}] process {i}/2 on host" in out
        assert f"[p{i}] process {i}/2" in out and "4 local devices (cpu), 8 global" in out
    a, b = _rows(one), _rows(two)
    assert sorted(a) == sorted(b) == list(range(1, STEPS + 1))
    la = np.array([a[s]["loss"] for s in sorted(a)])
    lb = np.array([b[s]["loss"] for s in sorted(b)])
    print("one process:", la.tolist(), "\ntwo processes:", lb.tolist(),
          "\nmax relative difference:", float(np.max(np.abs(la - lb) / np.abs(la))))
    np.testing.assert_allclose(lb, la, rtol=1e-5)
    assert la[-1] < la[0]  # it trains
    ea, eb = _eval_row(one), _eval_row(two)  # the final evaluation, also multi-process
    np.testing.assert_allclose(eb["eval/loss"], ea["eval/loss"], rtol=1e-5)


def test_process_slices_make_the_global_batch():
    """Rows of process 0 and 1 (of 2) concatenated are the one-process global batch."""
    import plug_jax.tasks  # noqa: F401
    from plug_jax.data.pipeline import get_batch_iterator

    def batches(pi, pc):
        it = get_batch_iterator("gpt3_shoplm_zh_v1", {"targets": LENGTH}, "train", BATCH,
                                shuffle=True, seed=0, repeat=True, process_index=pi,
                                process_count=pc)
        out = [next(it) for _ in range(3)]
        if hasattr(it, "close"):
            it.close()
        return out

    whole, p0, p1 = batches(0, 1), batches(0, 2), batches(1, 2)
    for w, x, y in zip(whole, p0, p1):
        assert set(w) == set(x) == set(y)
        for k in w:
            assert x[k].shape[0] == y[k].shape[0] == BATCH // 2
            np.testing.assert_array_equal(np.concatenate([x[k], y[k]]), w[k])


def test_two_process_checkpoint_restores_in_one_process(runs):
    import jax
    import plug_jax.tasks  # noqa: F401
    from plug_jax import models
    from plug_jax.trainer import loop
    one, two, _ = runs
    cfg = loop.DatasetConfig("gpt3_shoplm_zh_v1", {"targets": LENGTH}, batch_size=BATCH)
    mesh = loop.MeshConfig((1, -1, 1, 1))  # this process's 8 devices
    pa, sa, _ = loop.load_for_inference(models.gpt3("tiny"), one, cfg, mesh)
    pb, sb, _ = loop.load_for_inference(models.gpt3("tiny"), two, cfg, mesh)
    assert sa == sb == STEPS
    leaves_a, leaves_b = jax.tree_util.tree_leaves(pa), jax.tree_util.tree_leaves(pb)
    assert len(leaves_a) == len(leaves_b) > 0
    worst, scale = 0.0, 0.0
    for x, y in zip(leaves_a, leaves_b):
        x, y = np.asarray(x), np.asarray(y)
        assert x.shape == y.shape
        worst = max(worst, float(np.max(np.abs(x - y))))
        scale = max(scale, float(np.max(np.abs(x))))
        np.testing.assert_allclose(y, x, rtol=1e-4, atol=5e-5)
    print(f"max |param difference| one vs two processes: {worst:.2e} (max |param| {scale:.3f})")


def test_killed_process_makes_the_other_exit(tmp_path):
    model_dir = str(tmp_path / "kill")
    port = _free_port()
    common = [f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
              "--num_cpu_devices=4", f"--heartbeat_timeout={HEARTBEAT}"]
    procs = []
    try:
        for i in (0, 1):
            procs.append(subprocess.Popen(
                _train_cmd(model_dir, 100000, *common, f"--process_id={i}",
                           "--gin.CHECKPOINT_PERIOD=0"),
                cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                text=True))
        deadline = time.time() + RUN_TIMEOUT
        while time.time() < deadline and not _rows(model_dir):
            assert all(p.poll() is None for p in procs), "a process ended before step 1"
            time.sleep(0.2)
        assert _rows(model_dir), "no step logged in time"
        procs[1].send_signal(signal.SIGKILL)
        killed_at = time.time()
        try:
            out, _ = procs[0].communicate(timeout=DETECT_BOUND)
        except subprocess.TimeoutExpired:
            pytest.fail(f"process 0 still running {DETECT_BOUND}s after its peer was killed")
        took = time.time() - killed_at
        print(f"process 0 exited with status {procs[0].returncode} {took:.1f}s after the "
              f"SIGKILL of process 1")
        assert procs[0].returncode != 0
        # Either JAX's coordination service aborts it (heartbeat timeout), or its collective
        # fails (gloo: connection reset) and main exits at once without the shutdown barrier.
        assert any(m in out for m in ("distributed service detected fatal errors",
                                      "without waiting for the other processes")), out[-3000:]
    finally:
        _kill(procs)


def test_two_process_resume_is_bit_exact(runs, tmp_path):
    """2 processes x 4 devices, index-based packed input: restarted from checkpoint 3, the
    run logs the same losses and ends with the same train state, bit for bit."""
    _, two, out = runs
    assert "input: index-based" in out  # each process builds only its own rows
    cut = _cut(two, tmp_path / "cut", 3)
    resumed = _train(2, EXP, [*SMALL, f"--gin.MODEL_DIR='{cut}'", f"--gin.TRAIN_STEPS={STEPS}"])
    assert "restored step 3" in resumed, resumed[-3000:]
    full, again = _rows(two), _rows(cut)
    assert sorted(again) == list(range(1, STEPS + 1))
    for step in (4, 5):
        assert again[step]["loss"] == full[step]["loss"], step
    (state_a, data_a), (state_b, data_b) = _saved(two, STEPS), _saved(cut, STEPS)
    assert data_a == data_b
    assert sorted(state_a) == sorted(state_b) and state_a
    for k in state_a:
        np.testing.assert_array_equal(state_b[k], state_a[k], err_msg=k)


# PLUG stage 2 (curriculum plug_stage2_zh_v2: plug_genae for 90% of the examples, then
# plug_gen), tiny, unpacked: every global batch holds the same 8 examples on 1 and 2
# processes, so the losses of a batch agree across process counts. 10 steps of 8 examples:
# the stage switches at global batch 9 (example 72). A checkpoint every step; the last 3 kept.
CURRICULUM_EXP = "experiments/plug/shop_stage2_tiny.gin"
CURRICULUM = ["--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 16}", "--gin.BATCH_SIZE=8",
              "--gin.TRAIN_STEPS=10", "--gin.CHECKPOINT_PERIOD=1", "--gin.KEEP_CHECKPOINTS=3",
              "--gin.LOG_PERIOD=1", "--gin.WARMUP_STEPS=2",
              "--gin.train/loop.DatasetConfig.pack=False", "--gin.loop.train.eval_dataset_cfg=None"]


def test_curriculum_resume_on_another_process_count(tmp_path):
    """2 -> 1 and 1 -> 2 processes: the resumed run continues at the same global example
    index (its batches are the uninterrupted run's) in the same stage, and switches stage at
    the same global batch."""
    full = str(tmp_path / "full")
    _train(2, CURRICULUM_EXP, [*CURRICULUM, f"--gin.MODEL_DIR='{full}'"])
    ref = _rows(full)
    assert [ref[s]["data_stage"] for s in range(1, 11)] == [0] * 9 + [1]
    _, data_ref = _saved(full, 10)
    assert data_ref["step"] == 10 and data_ref["stage"] == 1  # global example 80, stage 1

    def resume(model_dir, processes, step, stage_name):
        out = _train(processes, CURRICULUM_EXP, [*CURRICULUM, f"--gin.MODEL_DIR='{model_dir}'"])
        assert f"restored step {step}" in out, out[-3000:]
        assert f"now in stage {int(step >= 9)} ({stage_name})" in out, out[-3000:]
        rows = _rows(model_dir)
        for s in range(step + 1, 11):
            print(f"{processes} process(es), resumed at step {step}: step {s} loss "
                  f"{rows[s]['loss']:.6f} (uninterrupted, 2 processes: {ref[s]['loss']:.6f})")
            assert rows[s]["data_stage"] == ref[s]["data_stage"], s
            np.testing.assert_allclose(rows[s]["loss"], ref[s]["loss"], rtol=1e-5, err_msg=s)
        assert _saved(model_dir, 10)[1] == data_ref
        return out

    # 2 -> 1: the two-process run restarted from its step-8 checkpoint on one process; the
    # stage switches at step 10 as in the uninterrupted run
    one = _cut(full, tmp_path / "two_to_one", 8)
    out = resume(one, 1, 8, "plug_genae_zh_v1")
    assert "curriculum: step 10 starts stage 1" in out, out[-3000:]
    # 1 -> 2: the step-9 checkpoint that one process wrote, restarted on two processes
    resume(_cut(one, tmp_path / "one_to_two", 9), 2, 9, "plug_gen_zh_v1")
