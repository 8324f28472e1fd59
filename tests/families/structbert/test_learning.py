"""StructBERT on Shop World learns, each result next to its control. Marked ``slow`` (about
five minutes on 2 cores; `make test-slow`, or ``.venv/bin/python -m pytest -m slow
tests/families/structbert/test_learning.py``): the default suite checks the same experiments'
wiring (tests/families/structbert/test_experiments.py and the contract checks).

* Pre-training (experiments/structbert/shop_pretrain_tiny.gin, shortened to 80 steps of 32
  pairs): held-out (test split, all 1000 pairs) 3-way sentence-order accuracy against
  chance (1/3) and against the same evaluation of the freshly initialised model
  (TRAIN_STEPS=0). The short run trains the sentence-order objective alone: with MLM and
  word-structural added (the full experiment), the encoder first sits on a plateau (MLM
  predicting the most frequent token, sentence order at chance) that it leaves after
  ~100-250 steps depending on the seed (measured with these flags: seed 0 still at 0.37
  after 200 steps, seed 1 at 0.65), which is no CI check. Sentence order alone reached
  0.62 / 0.65 / 0.52 after 60 steps on seeds 0 / 1 / 2 and 0.66 / 0.64 / 0.62 after 80
  steps on seeds 0 / 2 / 3 (fresh: 0.32). The full experiment, all three objectives, is the
  slow test in test_experiments.py.
* Fine-tuning (experiments/structbert/shop_sentswap_tiny.gin: are two adjacent description
  sentences in order or swapped): the same 40-step fine-tune started from that pre-trained
  encoder and from fresh initialisation. Review sentiment is not used for this: every review
  carries a cue phrase of its own sentiment, and a fresh encoder reaches the same 100% as a
  pre-trained one (docs/data.md, "Review sentiment is not a test of pre-training").

The pre-training run is shared by both tests (and by pytest-xdist workers, through a lock in
the session's base temporary directory), so it runs once per session.
"""
import contextlib
import fcntl
import importlib.util
import os
import pathlib
import shutil

import pytest

pytestmark = pytest.mark.slow

_spec = importlib.util.spec_from_file_location(
    "plug_jax_tests_cli_helpers", pathlib.Path(__file__).resolve().parents[2] / "cli_helpers.py")
cli_helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cli_helpers)

PRETRAIN = "experiments/structbert/shop_pretrain_tiny.gin"
SENTSWAP = "experiments/structbert/shop_sentswap_tiny.gin"
CHANCE = 1 / 3
PRETRAIN_STEPS = 80
PRETRAIN_FLAGS = (f"--gin.TRAIN_STEPS={PRETRAIN_STEPS}", "--gin.BATCH_SIZE=32",
                  "--gin.LEARNING_RATE=1e-3", "--gin.WARMUP_STEPS=10", "--gin.EVAL_STEPS=32",
                  "--gin.LOG_PERIOD=40", "--gin.EVAL_PERIOD=0", "--gin.CHECKPOINT_PERIOD=1000",
                  "--gin.models.EncoderModel.objectives=('sentence',)")
# The same model before any step: TRAIN_STEPS=0 trains nothing and evaluates the fresh
# initialisation (the cosine schedule is never called but needs total_steps > 0).
FRESH_FLAGS = PRETRAIN_FLAGS + ("--gin.TRAIN_STEPS=0", "--gin.optim.warmup_cosine.total_steps=1")
# 40 steps: at 30, the held-out accuracy from the pre-trained encoder varied from 0.72 to
# 0.88 with the data order (index-based input, DATA_SEED 0..3: 0.716 / 0.871 / 0.884 /
# 0.837); at 40 it was 0.871 / 0.892 / 0.903 (seeds 0..2).
FINETUNE_STEPS = 40
FINETUNE_FLAGS = (f"--gin.TRAIN_STEPS={FINETUNE_STEPS}", "--gin.WARMUP_STEPS=10",
                  "--gin.LOG_PERIOD=20", "--gin.EVAL_PERIOD=0", "--gin.CHECKPOINT_PERIOD=1000")


@contextlib.contextmanager
def _locked(path):
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@pytest.fixture(scope="session")
def pretrained(tmp_path_factory):
    """MODEL_DIR of the shortened pre-training run, trained once per session: under xdist
    the workers' temporary directories share a parent, where the first worker trains and
    the others wait on the lock and reuse the run."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent
    model_dir = base / "structbert_learning_pretrain"
    with _locked(base / "structbert_learning_pretrain.lock"):
        if not (model_dir / "DONE").exists():
            if model_dir.exists():  # a half-finished run of a crashed worker
                shutil.rmtree(model_dir)
            cli_helpers.cli("train", PRETRAIN, model_dir, *PRETRAIN_FLAGS)
            (model_dir / "DONE").write_text("")
    return model_dir


def test_sentence_order_beats_chance_and_a_fresh_encoder(pretrained, tmp_path, report_result):
    (row,) = cli_helpers.eval_rows(pretrained)
    assert row["step"] == PRETRAIN_STEPS and row["eval/tokens"] == 1000, row  # every test pair
    acc = row["eval/accuracy"]
    cli_helpers.cli("train", PRETRAIN, tmp_path / "fresh", *FRESH_FLAGS)
    (fresh,) = cli_helpers.eval_rows(tmp_path / "fresh")
    assert fresh["step"] == 0 and fresh["eval/tokens"] == 1000, fresh
    fresh_acc = fresh["eval/accuracy"]

    report_result(f"structbert sentence-order accuracy after {PRETRAIN_STEPS} steps", acc,
                  control=f"fresh encoder {fresh_acc:.4f}, chance {CHANCE:.4f} (1000 test pairs)")
    msg = (f"held-out sentence-order accuracy {acc:.4f} after {PRETRAIN_STEPS} steps vs fresh "
           f"encoder {fresh_acc:.4f} and chance {CHANCE:.4f}")
    assert acc > CHANCE + 0.15, msg
    assert acc > fresh_acc + 0.15, msg


def test_sentswap_fine_tune_from_pretrained_beats_fresh_start(pretrained, tmp_path,
                                                              report_result):
    runs = {}
    for name, init in (("pretrained", f"'{pretrained}'"), ("fresh", "None")):
        out = cli_helpers.cli("train", SENTSWAP, tmp_path / name, *FINETUNE_FLAGS,
                              f"--gin.INIT_CHECKPOINT={init}")
        (row,) = cli_helpers.eval_rows(tmp_path / name)
        assert row["step"] == FINETUNE_STEPS and row["eval/tokens"] == 1000, row
        runs[name] = row["eval/accuracy"]
        if name == "pretrained":  # encoder and pooler restored, classifier fresh
            assert "missing: classifier" in out.stdout, out.stdout[-2000:]
    pre, fresh = runs["pretrained"], runs["fresh"]

    report_result(f"structbert sentence-swap accuracy, {FINETUNE_STEPS}-step fine-tune from "
                  f"the pre-trained encoder", pre,
                  control=f"same fine-tune from fresh initialisation {fresh:.4f}, chance 0.5 "
                          f"(1000 test pairs)")
    msg = (f"held-out sentence-swap accuracy after {FINETUNE_STEPS} fine-tuning steps: from "
           f"the pre-trained encoder {pre:.4f}, from fresh initialisation {fresh:.4f}")
    assert pre > fresh + 0.15, msg
    assert pre > 0.75, msg
