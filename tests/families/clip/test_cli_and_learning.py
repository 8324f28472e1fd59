"""CLIP tiny through the CLI: it learns to match Shop World images to their captions (next
to its control, the same checkpoint given blank images), and images and videos reach it
through plug-infer / plug-eval; a bad path is one line with exit 2.

One 20-step run serves the CLI tests. The learning test (marked ``slow``: ``make test-slow``)
trains its own 250 steps at a peak rate of 2e-3 (~1.5 min on 2 cores). The full experiment
(600 steps at 1e-3, ~4 min) reaches image->text R@1 0.13 / R@10 0.60 over 200 candidates
(chance 0.005 / 0.05); see docs/performance.md ("learning results").
"""
import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import jax
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
STEPS = 20  # the run the CLI tests share
LEARNING_STEPS = 250  # the learning test's run
CANDIDATES = 200  # the validation split


def _run_flags(steps):
    return [f"--gin.TRAIN_STEPS={steps}", "--gin.LEARNING_RATE=2e-3", "--gin.LOG_PERIOD=50",
            "--gin.EVAL_PERIOD=0", "--gin.CHECKPOINT_PERIOD=1000"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("clip")
    out = run_cli("train", EXP, d / "run", *_run_flags(STEPS))
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
    line = next(l for l in out.splitlines() if l.startswith(f"eval @ step {STEPS}"))
    assert "perplexity" not in line and "token accuracy" not in line
    assert "in-batch retrieval accuracy" in line
    assert f"whole set ({CANDIDATES} candidates)" in line and "image2text_r@1" in line
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


def _blank_image_recall(model_dir):
    """Whole-set R@K of the trained checkpoint when every image is blank (zeros = the mean
    pixel after normalisation)."""
    from plug_jax.families.clip.config import ClipConfig
    from plug_jax.models import DualEncoder
    from plug_jax.trainer import loop
    model = DualEncoder(ClipConfig.from_preset("tiny"), family="clip")
    cfg = loop.DatasetConfig("clip_shop_captions_en_v1", {"image": (64, 64, 3), "targets": 64},
                             split="validation", batch_size=32, shuffle=False,
                             converter="image_text")
    params, _, _ = loop.load_for_inference(model, str(model_dir), cfg,
                                           loop.MeshConfig(num_devices=1))
    params = jax.device_get(params)
    fn = jax.jit(model.eval_outputs)
    outs = []
    for b in loop._batch_iterator(cfg, repeat=False, shuffle=False):
        b = dict(b)
        b["image"] = np.zeros_like(b["image"])
        outs.append(jax.device_get(fn(params, b)))
    outputs = jax.tree_util.tree_map(lambda *xs: np.concatenate(xs), *outs)
    return model.whole_set_metrics(params, outputs)


@pytest.mark.slow
def test_clip_tiny_retrieves_captions_and_blank_images_do_not(tmp_path, report_result):
    model_dir = tmp_path / "run"
    run_cli("train", EXP, model_dir, *_run_flags(LEARNING_STEPS))
    (row,) = cli_helpers.eval_rows(model_dir)
    assert row["step"] == LEARNING_STEPS and row["eval/retrieval_candidates"] == CANDIDATES
    r1, r10 = row["eval/image2text_r@1"], row["eval/image2text_r@10"]
    t10 = row["eval/text2image_r@10"]
    blank = _blank_image_recall(model_dir)
    assert blank["retrieval_candidates"] == CANDIDATES
    report_result(f"clip tiny {LEARNING_STEPS} steps whole-set image->text R@10 ({CANDIDATES} "
                  f"candidates)", r10, control=f"blank images {blank['image2text_r@10']:.4f}, "
                  f"chance {10 / CANDIDATES:.3f}", r_at_1=f"{r1:.4f}", t2i_r_at_10=f"{t10:.4f}")
    # the control is at chance: a blank image ranks every caption the same way
    assert blank["image2text_r@10"] < 0.15 and blank["text2image_r@10"] < 0.15, blank
    assert r10 > 4 * 10 / CANDIDATES and r10 > 3 * blank["image2text_r@10"], row
    assert t10 > 4 * 10 / CANDIDATES, row
