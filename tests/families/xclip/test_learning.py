"""X-CLIP learns Shop World video-text retrieval, next to its controls (marked ``slow``:
``make test-slow``; about 16 minutes on 2 cores, then a minute of controls).

``python -m plug_jax.families.xclip.recipe``: CLIP tiny on the Shop World images
(``experiments/xclip/clip_stage.gin``), exported to the OpenAI layout, converted into X-CLIP
as the release initialises it, then ``experiments/xclip/shop_xl.gin`` (2400 steps x 32 of the
4000 training videos, 16 px patches), scored by ``controls --split=test`` over the 600
held-out videos. The model must beat its controls on the same test set, each by a margin
below what the recorded run showed (docs/performance.md). The issue's target (text->video
R@1 >= 0.5) is not met yet, and neither is a clear loss of the shuffled-frame control on the
order-sensitive captions; this test does not claim either.
"""
import importlib.util
import os
import pathlib
import subprocess
import sys

import pytest

_spec = importlib.util.spec_from_file_location(
    "plug_jax_tests_cli_helpers", pathlib.Path(__file__).resolve().parents[2] / "cli_helpers.py")
cli_helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cli_helpers)


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
    out = subprocess.run([sys.executable, "-m", "plug_jax.families.xclip.recipe",
                          "--workdir", str(tmp_path / "work")], capture_output=True, text=True,
                         timeout=3600, cwd=cli_helpers.ROOT,
                         env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    out = out.stdout
    t = _table(out)
    assert "600 videos x 600 captions" in out
    model, shuffled, one, blank, chance = (t[k] for k in ("model", "shuffled", "one", "blank",
                                                          "chance"))
    report_result("xclip tiny (recipe: CLIP, then shop_xl) text->video R@10 over 600 test "
                  "videos", model[2],
                  control=f"shuffled {shuffled[2]:.3f}, one frame {one[2]:.3f}, "
                          f"blank {blank[2]:.3f}, chance {chance[2]:.3f}")
    # Recorded runs (docs/performance.md): t2v R@1 0.293, R@10 0.847; shuffled frames R@10
    # 0.610; one frame 0.168; blank 0.017 = chance 0.019 (8 px patches before: 0.230, 0.822;
    # shuffled 0.653; one frame 0.163). The bounds sit below both.
    assert model[2] >= 0.6 and model[0] >= 0.15
    assert model[2] - shuffled[2] >= 0.08
    assert model[2] - one[2] >= 0.4
    assert blank[2] <= 2 * chance[2] and blank[0] <= 2 * chance[0] + 0.002
