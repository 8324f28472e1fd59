"""X-CLIP tiny through the CLI: whole-set eval with ranks, plug-infer over a folder of
Shop World videos (each caption finds its videos, each video its captions), and a video
folder whose frames differ in size is one error line with exit 2. One 20-step run serves
the tests (the contract test runs the train / eval / infer / resume cycle itself)."""
import importlib.util
import pathlib

import numpy as np
import pytest

_spec = importlib.util.spec_from_file_location(
    "plug_jax_tests_cli_helpers", pathlib.Path(__file__).resolve().parents[2] / "cli_helpers.py")
cli_helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cli_helpers)

EXP = "experiments/xclip/shop_tiny.gin"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("xclip")
    out = cli_helpers.cli("train", EXP, d / "run", "--gin.TRAIN_STEPS=20",
                          "--gin.LOG_PERIOD=10", "--gin.EVAL_PERIOD=20",
                          "--gin.CHECKPOINT_PERIOD=20").stdout
    return d, out


@pytest.fixture(scope="module")
def videos(trained):
    """Three Shop World test videos as frame folders (PNG), and their captions."""
    from PIL import Image

    from plug_jax.data.shop_world.videos import video_example
    root = trained[0] / "videos"
    captions = []
    for i in range(3):
        ex = video_example(0, "test", i, num_frames=8, size=64, lang="en")
        (root / f"video_{i}").mkdir(parents=True)
        for f, frame in enumerate(ex["frames"]):
            Image.fromarray(frame).save(root / f"video_{i}" / f"frame_{f}.png")
        captions.append(ex["caption"])
    return root, captions


def test_eval_reports_retrieval_both_ways_with_ranks(trained):
    _, out = trained
    line = next(l for l in out.splitlines() if l.startswith("eval @ step 20"))
    assert "whole set (100 candidates)" in line and "perplexity" not in line
    for key in ("video2text_r@1", "text2video_r@10", "text2video_median_rank",
                "video2text_mean_rank"):
        assert key in line, key


def test_infer_ranks_a_folder_of_videos_for_each_caption(trained, videos):
    d, _ = trained
    root, captions = videos
    out = cli_helpers.cli("infer", EXP, d / "run", f"--prompt=videos:{root}",
                          *[f"--prompt={c}" for c in captions]).stdout
    per_video = [l for l in out.splitlines() if l.startswith("[frames]")]
    per_text = [l for l in out.splitlines() if l.startswith("[text]")]
    assert len(per_video) == 3 and len(per_text) == 3
    for i, line in enumerate(per_video):
        assert str(root / f"video_{i}") in line and "3 texts" in line
    for caption, line in zip(captions, per_text):
        assert repr(caption) in line and "top 3 of 3 videos" in line
        assert all(str(root / f"video_{i}") in line for i in range(3))


def test_a_video_with_mixed_frame_sizes_is_one_line_and_exit_2(trained, videos):
    from PIL import Image
    d, _ = trained
    root, captions = videos
    bad = root.parent / "bad_videos" / "mixed"
    bad.mkdir(parents=True)
    for f in range(8):
        side = 64 if f != 5 else 48
        Image.fromarray(np.zeros((side, side, 3), np.uint8)).save(bad / f"frame_{f}.png")
    res = cli_helpers.cli("infer", EXP, d / "run", f"--prompt=videos:{bad.parent}",
                          f"--prompt={captions[0]}", check=False)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    err = [l for l in res.stderr.splitlines() if "error" in l]
    assert len(err) == 1, res.stderr
    assert "mixes frame sizes" in err[0] and "frame_5.png" in err[0] and "48x48" in err[0]
    # a videos: prompt with text is refused, not guessed
    res = cli_helpers.cli("infer", EXP, d / "run", f"--prompt=videos:{root}|a hat",
                          check=False)
    assert res.returncode == 2 and "videos:DIR stands alone" in res.stderr


def test_controls_script_scores_every_control_and_blank_is_chance(trained):
    d, _ = trained
    out = cli_helpers.run_module("plug_jax.families.xclip.controls", EXP, d / "run",
                                 "--split=validation").stdout
    lines = out.splitlines()
    head = next(l for l in lines if l.startswith("X-CLIP retrieval on validation"))
    assert "100 videos x 100 captions" in head
    n_sensitive = int(head.rsplit(":", 1)[1])
    assert 0 < n_sensitive < 100
    rows = {l.split()[0]: l for l in lines if l.startswith("  ")}
    for name in ("model", "shuffled", "one", "blank", "chance"):
        assert name in rows, name
    blank, chance = (float(rows[k].split()[-7]) for k in ("blank", "chance"))  # t2v R@1
    blank_r10, chance_r10 = (float(rows[k].split()[-5]) for k in ("blank", "chance"))
    assert chance == pytest.approx(0.01, abs=0.003)
    assert blank <= 2 * chance + 0.01 and chance_r10 / 2 <= blank_r10 <= 2 * chance_r10
    assert "duplicate ceiling" in out


def test_order_sensitive_captions_and_chance():
    from plug_jax.families.xclip import controls
    caps = ["In the video, the red hat first moved to the left and then rotated ninety "
            "degrees.",
            "In the video, the red hat first rotated ninety degrees and then moved to the "
            "left.",
            "In the video, the blue hat first rotated ninety degrees and then moved to the "
            "left.",
            "In the video, the red hat first moved to the left, then rotated ninety degrees, "
            "and finally moved to the right.",
            "not a caption"]
    assert controls.caption_events(caps[3]) == (
        "the red hat", ("moved to the left", "rotated ninety degrees", "moved to the right"))
    assert controls.caption_events(caps[4]) is None
    assert controls.order_sensitive(caps).tolist() == [True, True, False, False, False]
    # one positive among 4 candidates: R@1 1/4, R@2 1/2; two positives: R@1 1/2
    pos = np.array([[1, 0, 0, 0], [1, 1, 0, 0]], bool)
    assert controls.chance_recall(pos[:1], 1) == pytest.approx(0.25)
    assert controls.chance_recall(pos[:1], 2) == pytest.approx(0.5)
    assert controls.chance_recall(pos[1:], 1) == pytest.approx(0.5)
