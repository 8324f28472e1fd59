"""mPLUG retrieval / pre-training through the CLI.

Fast: a 2-step pre-training run (ITC + ITM + MLM + prefix LM) reports every objective and
whole-set R@K both ways on its eval line, and plug-infer ranks captions for a PNG with ITM.

Slow (``-m slow``; the family README): the retrieval experiment (ITC + ITM) trained from
scratch, scored with ``plug_jax.families.mplug.controls`` next to blank images: R@1 and R@5
both ways at least 10x the blank control, from ITC and after ITM re-ranking.
"""
import importlib.util
import pathlib
import re

import pytest

_spec = importlib.util.spec_from_file_location(
    "plug_jax_tests_cli_helpers_ret", pathlib.Path(__file__).resolve().parents[2] / "cli_helpers.py")
cli_helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cli_helpers)

PRETRAIN = "experiments/mplug/shop_pretrain_tiny.gin"
RETRIEVAL = "experiments/mplug/shop_retrieval_tiny.gin"
SHORT = ["--gin.TRAIN_STEPS=2", "--gin.BATCH_SIZE=8", "--gin.EVAL_STEPS=2",
         "--gin.EVAL_PERIOD=2", "--gin.LOG_PERIOD=1", "--gin.CHECKPOINT_PERIOD=2"]


@pytest.fixture(scope="module")
def run2(tmp_path_factory):
    from PIL import Image

    from plug_jax.data.shop_world import images
    d = tmp_path_factory.mktemp("mplug_pt")
    out = cli_helpers.cli("train", PRETRAIN, d / "run", *SHORT)
    ex = images.image_example(0, "test", 3, lang="en")
    Image.fromarray(ex["image"]).save(d / "product.png")
    return d, out.stdout, ex["caption"]


def test_eval_line_reports_every_objective_and_recall_both_ways(run2):
    _, out, _ = run2
    line = next(ln for ln in out.splitlines() if ln.startswith("eval @ step 2"))
    for part in ("ITC in-batch accuracy", "itc loss", "itm accuracy", "mlm accuracy",
                 "lm accuracy", "(16 candidates)"):
        assert part in line, line
    for d in ("itc_i2t", "itc_t2i", " i2t", " t2i"):
        for k in (1, 5, 10):
            assert re.search(rf"{d}_r@{k} [01]\.\d{{3}}", line), (d, k, line)


def test_infer_ranks_captions_for_a_png_with_itm(run2):
    d, _, caption = run2
    texts = [caption, "a red cotton hat", "a blue ceramic cup"]
    out = cli_helpers.cli("infer", PRETRAIN, d / "run", f"--prompt=image:{d / 'product.png'}",
                          *[f"--prompt={t}" for t in texts])
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("[image]"))
    assert "product.png" in line and "; 3 texts)" in line, out.stdout[-1500:]
    assert any(repr(t) in line for t in texts), line


@pytest.mark.slow
def test_retrieval_beats_ten_times_the_blank_control(tmp_path):
    """The retrieval experiment (2000 steps, ~12 min on one core), then R@K next to blank
    images (measured: the family README, "Results")."""
    cli_helpers.cli("train", RETRIEVAL, tmp_path / "ret", "--gin.EVAL_PERIOD=0",
                    timeout=3600)
    out = cli_helpers.run_module("plug_jax.families.mplug.controls", RETRIEVAL,
                                 tmp_path / "ret", timeout=1200)
    print(out.stdout)
    rows = [ln for ln in out.stdout.splitlines() if re.match(r"\s+ITC.*(i2t|t2i):", ln)]
    assert len(rows) == 4, out.stdout
    for row in rows:
        for k in (1, 5):
            got, blank = (float(x) for x in re.search(
                rf"R@{k} (\d\.\d+) \(blank (\d\.\d+)\)", row).groups())
            assert got >= 10 * blank and got > 0, row
