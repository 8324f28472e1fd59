"""Run gin experiments through the command line from tests (``plug_jax.main``).

Tests load this module by its path (they run with ``--import-mode=importlib``, so
``tests/`` is not on ``sys.path``), as tests/families/structbert/test_experiments.py does::

    _spec = importlib.util.spec_from_file_location(  # from tests/<a>/<b>/test_x.py
        "plug_jax_tests_cli_helpers",
        pathlib.Path(__file__).resolve().parents[2] / "cli_helpers.py")
    cli_helpers = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(cli_helpers)

``cli(mode, gin_file, model_dir, *flags)`` runs ``python -m plug_jax.main --mode=...`` in
a subprocess from the repository root on the CPU and returns the ``CompletedProcess``
(it fails the test with the end of stderr if the command exits non-zero, unless
``check=False``); ``run_module(module, ...)`` does the same for another module;
``rows(model_dir)`` reads ``MODEL_DIR/metrics.jsonl``; ``eval_rows(model_dir)`` keeps
its evaluation rows; ``train_state(model_dir, step)`` restores the train state a checkpoint
saved as host numpy arrays, and ``flat_arrays(tree)`` flattens it to ``{path: array}``.
"""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_module(module, gin_file, model_dir, *flags, timeout=600, check=True):
    """``python -m module --gin_file=... --gin.MODEL_DIR=... *flags`` (plug_jax.main or a
    family's control script) from the repository root on the CPU; with ``check`` a non-zero
    exit fails the test with the end of stderr."""
    out = subprocess.run(
        [sys.executable, "-m", module, f"--gin_file={gin_file}", f"--gin.MODEL_DIR={model_dir}",
         *flags],
        capture_output=True, text=True, env=dict(os.environ, JAX_PLATFORMS="cpu"), cwd=ROOT,
        timeout=timeout)
    if check:
        assert out.returncode == 0, out.stderr[-2000:]
    return out


def cli(mode, gin_file, model_dir, *flags, timeout=600, check=True):
    return run_module("plug_jax.main", gin_file, model_dir, f"--mode={mode}", *flags,
                      timeout=timeout, check=check)


def rows(model_dir):
    with open(os.path.join(model_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def eval_rows(model_dir):
    return [r for r in rows(model_dir) if "eval/loss" in r]


def train_state(model_dir, step):
    """The saved train state of ``model_dir/checkpoints/<step>`` as host numpy arrays."""
    import jax
    import numpy as np
    import orbax.checkpoint as ocp
    from etils import epath
    path = epath.Path(model_dir) / "checkpoints" / str(step) / "state"
    handler = ocp.PyTreeCheckpointHandler()  # the "state" item of TrainCheckpointer
    meta = handler.metadata(path)
    meta = getattr(meta, "tree", meta)
    args = jax.tree_util.tree_map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), meta)
    return handler.restore(path, args=ocp.args.PyTreeRestore(restore_args=args))


def flat_arrays(tree):
    """``{path: numpy array}`` of a tree's leaves."""
    import jax
    import numpy as np
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(p): np.asarray(x) for p, x in flat}
