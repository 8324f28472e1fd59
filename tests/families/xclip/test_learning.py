"""X-CLIP learns Shop World video-text retrieval, next to its controls (marked ``slow``:
``make test-slow``; about 12 minutes on 2 cores, then a minute of controls).

``experiments/xclip/shop_xl.gin`` (1000 steps x 32 of the 4000 training videos), scored by
``python -m plug_jax.families.xclip.controls --split=test`` over the 600 held-out videos:
the model must beat its controls on the same test set, each by a margin below what the
recorded run showed (docs/performance.md: text->video R@10 0.412; shuffled frames 0.257;
the middle frame repeated 0.103; blank videos 0.017 = chance 0.019). The issue's target
(text->video R@1 >= 0.5) is not met yet, and neither is a loss of the shuffled-frame control
on the order-sensitive captions; this test does not claim either.
"""
import importlib.util
import pathlib

import pytest

_spec = importlib.util.spec_from_file_location(
    "plug_jax_tests_cli_helpers", pathlib.Path(__file__).resolve().parents[2] / "cli_helpers.py")
cli_helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cli_helpers)

EXP = "experiments/xclip/shop_xl.gin"


def _table(out: str) -> dict:
    """{control: [t2v R@1, R@5, R@10, v2t R@1, v2t R@10]} from the controls' table."""
    rows = {}
    for line in out.splitlines():
        parts = line.split()
        if line.startswith("  ") and parts and parts[0] in ("model", "shuffled", "one",
                                                           "blank", "chance"):
            rows[parts[0]] = [float(x) for x in parts[-7:-2]]
    return rows


@pytest.mark.slow
def test_xclip_beats_shuffled_frames_one_frame_and_blank_videos(tmp_path, report_result):
    cli_helpers.cli("train", EXP, tmp_path / "run", "--gin.EVAL_PERIOD=0", timeout=3000)
    out = cli_helpers.run_module("plug_jax.families.xclip.controls", EXP, tmp_path / "run",
                                 "--split=test", timeout=900).stdout
    t = _table(out)
    assert "600 videos x 600 captions" in out
    model, shuffled, one, blank, chance = (t[k] for k in ("model", "shuffled", "one", "blank",
                                                          "chance"))
    report_result("xclip tiny (shop_xl) text->video R@10 over 600 test videos", model[2],
                  control=f"shuffled {shuffled[2]:.3f}, one frame {one[2]:.3f}, "
                          f"blank {blank[2]:.3f}, chance {chance[2]:.3f}")
    assert model[2] >= 0.3 and model[0] >= 10 * chance[0]
    assert model[2] - shuffled[2] >= 0.08
    assert model[2] - one[2] >= 0.15
    assert blank[2] <= 2 * chance[2] and blank[0] <= 2 * chance[0] + 0.002
