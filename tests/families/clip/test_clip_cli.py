"""Images and videos reach a model through plug-infer / plug-eval (CLIP tiny), and a bad
path is one line with exit 2."""
import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

_spec = importlib.util.spec_from_file_location(
    "plug_jax_tests_cli_helpers", pathlib.Path(__file__).resolve().parents[2] / "cli_helpers.py")
cli_helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cli_helpers)

EXP = "experiments/clip/shop_tiny.gin"
VIDEO_EXP = "experiments/clip/shop_video_tiny.gin"


def run_cli(mode, gin_file, model_dir, *flags, check=True):
    if check:
        out = cli_helpers.cli(mode, gin_file, model_dir, *flags)
        return out.stdout
    return subprocess.run(
        [sys.executable, "-m", "plug_jax.main", f"--mode={mode}", f"--gin_file={gin_file}",
         f"--gin.MODEL_DIR={model_dir}", *flags], capture_output=True, text=True,
        env=dict(os.environ, JAX_PLATFORMS="cpu"), cwd=cli_helpers.ROOT, timeout=600)
SHORT = ["--gin.TRAIN_STEPS=1", "--gin.BATCH_SIZE=8", "--gin.EVAL_STEPS=2",
         "--gin.LOG_PERIOD=1", "--gin.CHECKPOINT_PERIOD=1"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("clip")
    out = run_cli("train", EXP, d / "run", *SHORT)
    return d, out


@pytest.fixture(scope="module")
def media(trained):
    from PIL import Image
    d = trained[0]
    rs = np.random.RandomState(0)
    Image.fromarray((rs.rand(80, 96, 3) * 255).astype(np.uint8)).save(d / "shoe.png")
    (d / "frames").mkdir()
    for i in range(10):
        Image.fromarray((rs.rand(64, 64, 3) * 255).astype(np.uint8)).save(
            d / "frames" / f"frame_{i}.jpg")
    return d


def test_eval_reports_whole_set_retrieval_and_no_perplexity(trained):
    _, out = trained
    line = next(l for l in out.splitlines() if l.startswith("eval @ step 1"))
    assert "perplexity" not in line and "token accuracy" not in line
    assert "in-batch retrieval accuracy" in line
    assert "whole set (16 candidates)" in line and "image2text_r@1" in line
    assert "examples/s" in out  # not tokens/s for a model without a token loss


def test_infer_ranks_texts_for_a_png(trained, media):
    d, _ = trained
    out = run_cli("infer", EXP, d / "run",
                  f"--prompt=image:{media / 'shoe.png'}", "--prompt=a red wool hat",
                  "--prompt=a blue ceramic mug")
    line = next(l for l in out.splitlines() if l.startswith("[image]"))
    assert str(media / "shoe.png") in line and "(score" in line and "2 texts" in line


def test_infer_reads_a_frame_folder(trained, media):
    d, _ = trained
    out = run_cli("infer", VIDEO_EXP, d / "run",
                  f"--prompt=video:{media / 'frames'}", "--prompt=a hat turns")
    line = next(l for l in out.splitlines() if l.startswith("[frames]"))
    assert str(media / "frames") in line and "'a hat turns'" in line


def test_missing_image_is_one_line_and_exit_2(trained):
    d, _ = trained
    res = run_cli("infer", EXP, d / "run",
                  f"--prompt=image:{d / 'nope.png'}", "--prompt=a hat", check=False)
    assert res.returncode == 2
    err = [l for l in res.stderr.splitlines() if "error" in l]
    assert len(err) == 1 and "nope.png" in err[0] and "does not exist" in err[0]
    assert "Traceback" not in res.stderr


def test_eval_over_own_jsonl_pairs(trained, media):
    d, _ = trained
    lines = [{"image": "shoe.png", "text": "a pair of sneakers"},
             {"image": str(media / "frames" / "frame_0.jpg"), "text": "a hat"},
             {"image": "frames/frame_1.jpg", "text": "a hat"}]
    (media / "pairs.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    out = run_cli("eval", EXP, d / "run",
                  f"--prompts_jsonl={media / 'pairs.jsonl'}")
    line = next(l for l in out.splitlines() if "pairs.jsonl" in l)
    assert "image2text_r@1" in line and "retrieval_candidates 3.0000" in line
