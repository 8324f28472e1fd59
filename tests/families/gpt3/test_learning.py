"""The `make demo` experiment (gpt3/shop_tiny.gin) learns: a shortened run through the CLI
against its control, the unigram baseline that the same run prints on the same held-out
batches (what a model that learned nothing beyond token frequencies reaches).

The full 2000-step demo (README: held-out loss 0.36 vs the baseline's 5.50) is `make demo`;
here 100 steps (~40 s on one core) already reach ~1.9 vs 5.50. A model that never updates
stays near ln(1024) = 6.93, above the baseline.
"""
import importlib.util
import pathlib
import re

_spec = importlib.util.spec_from_file_location(
    "plug_jax_tests_cli_helpers", pathlib.Path(__file__).resolve().parents[2] / "cli_helpers.py")
cli_helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cli_helpers)

SHOP_TINY = "experiments/gpt3/shop_tiny.gin"
STEPS = 100
# The model's held-out loss must be below this fraction of the unigram baseline's, and its
# token accuracy above this multiple of the baseline's.
LOSS_RATIO = 0.5
ACCURACY_FACTOR = 4.0


def test_shop_tiny_short_run_beats_unigram_baseline(tmp_path, report_result):
    run = cli_helpers.cli(
        "train", SHOP_TINY, tmp_path, f"--gin.TRAIN_STEPS={STEPS}", "--gin.WARMUP_STEPS=20",
        "--gin.LOG_PERIOD=50", "--gin.EVAL_PERIOD=0", "--gin.CHECKPOINT_PERIOD=1000",
        "--gin.EVAL_BASELINE=True")
    (row,) = cli_helpers.eval_rows(tmp_path)  # the final evaluation only
    assert row["step"] == STEPS
    loss, acc = row["eval/loss"], row["eval/accuracy"]
    base_loss, base_acc = row["eval/unigram_loss"], row["eval/unigram_accuracy"]
    # the same numbers as the run printed
    printed = re.search(r"unigram baseline on the same batches: loss ([0-9.]+)  token "
                        r"accuracy ([0-9.]+)", run.stdout)
    assert printed and abs(float(printed[1]) - base_loss) < 1e-4, run.stdout[-2000:]
    assert f"eval @ step {STEPS}: loss {loss:.4f}" in run.stdout
    # the control is sane: a unigram model is far better than uniform (ln 1024 = 6.93)
    assert 4.0 < base_loss < 6.5 and 0.02 < base_acc < 0.2, row

    report_result(f"gpt3 shop_tiny {STEPS} steps held-out loss", loss,
                  control=f"unigram baseline {base_loss:.4f} (same eval batches)",
                  accuracy=f"{acc:.4f}", unigram_accuracy=f"{base_acc:.4f}")
    assert loss < LOSS_RATIO * base_loss, (
        f"held-out loss {loss:.4f} is not below {LOSS_RATIO} x the unigram baseline "
        f"{base_loss:.4f} after {STEPS} steps")
    assert acc > ACCURACY_FACTOR * base_acc, (
        f"held-out token accuracy {acc:.4f} is not above {ACCURACY_FACTOR} x the unigram "
        f"baseline's {base_acc:.4f} after {STEPS} steps")
