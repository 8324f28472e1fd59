"""mPLUG tiny through the CLI and the data layer.

Fast: a 2-step VQA run serves plug-infer on a PNG (answer a question; caption it with the
same weights read as the captioning model, ``ENCODER_TEXT=False``), a corrupt image (one
line, exit 2), the per-question-type eval line, and the ``question_type`` label that the VQA
task passes through the ``image_text`` converter.

Slow (``-m slow``; docs/performance.md, the family README): the VQA experiment trained in
full, scored next to its controls (blank image, answer prior) with
``plug_jax.families.mplug.controls``.
"""
import importlib.util
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

VQA = "experiments/mplug/shop_vqa_tiny.gin"
SHORT = ["--gin.TRAIN_STEPS=2", "--gin.BATCH_SIZE=4", "--gin.EVAL_STEPS=6",
         "--gin.EVAL_PERIOD=2", "--gin.LOG_PERIOD=1", "--gin.CHECKPOINT_PERIOD=2"]


def _run(mode, model_dir, *flags, gin_file=VQA):
    return subprocess.run(
        [sys.executable, "-m", "plug_jax.main", f"--mode={mode}", f"--gin_file={gin_file}",
         f"--gin.MODEL_DIR={model_dir}", *flags], capture_output=True, text=True,
        env=dict(os.environ, JAX_PLATFORMS="cpu"), cwd=cli_helpers.ROOT, timeout=600)


@pytest.fixture(scope="module")
def run2(tmp_path_factory):
    from PIL import Image

    from plug_jax.data.shop_world import images
    d = tmp_path_factory.mktemp("mplug")
    out = cli_helpers.cli("train", VQA, d / "run", *SHORT)
    ex = images.image_example(0, "test", 3, lang="en")
    Image.fromarray(ex["image"]).save(d / "product.png")
    (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return d, out.stdout


def test_eval_line_reports_answer_accuracy_per_question_type(run2):
    _, out = run2
    line = next(ln for ln in out.splitlines() if ln.startswith("eval @ step 2"))
    assert "answer accuracy" in line
    for name in ("colour", "category", "count", "position", "material"):
        assert f"{name} " in line, line


def test_infer_answers_and_captions_a_png(run2):
    d, _ = run2
    q = "What colour is the backpack?"
    out = _run("infer", d / "run", f"--prompt=image:{d / 'product.png'}|{q}",
               "--gin.DECODE_METHODS=['greedy', 'beam']", "--gin.MAX_NEW_TOKENS=4")
    assert out.returncode == 0, out.stderr[-2000:]
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("[")]
    assert {ln.split("]")[0] for ln in lines} == {"[greedy", "[beam"}
    assert all(f"product.png | {q} ▸" in ln for ln in lines), lines
    # the same weights as the captioning model: the decoder reads the image alone
    out = _run("infer", d / "run", f"--prompt=image:{d / 'product.png'}",
               "--gin.ENCODER_TEXT=False", "--gin.DECODE_METHODS=['greedy']",
               "--gin.MAX_NEW_TOKENS=4")
    assert out.returncode == 0, out.stderr[-2000:]
    assert any(ln.startswith("[greedy]") and "product.png ▸" in ln
               for ln in out.stdout.splitlines()), out.stdout


def test_corrupt_image_is_one_line_and_exit_2(run2):
    d, _ = run2
    out = _run("infer", d / "run", f"--prompt=image:{d / 'broken.png'}|What colour?")
    assert out.returncode == 2
    err = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert len(err) == 1 and "broken.png" in err[0] and "fix:" in err[0], err


def test_question_type_label_follows_the_question():
    from plug_jax.trainer import loop
    data = loop.DatasetConfig("mplug_shop_vqa_en_v1",
                              {"image": (64, 64, 3), "inputs": 24, "targets": 8,
                               "question_type": 1}, batch_size=40, split="validation",
                              converter="image_text")
    b = next(iter(loop._batch_iterator(data, repeat=False, shuffle=False)))
    from plug_jax.data.pipeline import task_vocabulary
    vocab = task_vocabulary("mplug_shop_vqa_en_v1")
    words = {0: "colour", 1: "What is the product", 2: "How many", 3: "Where is",
             4: "material"}
    types = np.asarray(b["question_type"]).reshape(-1)
    assert set(types.tolist()) == set(range(5))
    for ids, t in zip(np.asarray(b["encoder_input_tokens"]), types):
        question = vocab.decode([int(i) for i in ids if i > 1])
        assert words[int(t)] in question, (t, question)


@pytest.mark.slow
def test_vqa_learns_and_uses_the_image(tmp_path):
    """The full VQA experiment (commands in the family README): the model's accuracy next
    to the blank-image and answer-prior controls."""
    cli_helpers.cli("train", VQA, tmp_path / "run", timeout=3600)
    out = subprocess.run(
        [sys.executable, "-m", "plug_jax.families.mplug.controls", f"--gin_file={VQA}",
         f"--gin.MODEL_DIR={tmp_path / 'run'}"], capture_output=True, text=True,
        env=dict(os.environ, JAX_PLATFORMS="cpu"), cwd=cli_helpers.ROOT, timeout=1200)
    assert out.returncode == 0, out.stderr[-2000:]
    print(out.stdout)
    head = next(ln for ln in out.stdout.splitlines() if ln.startswith("VQA accuracy"))
    nums = [float(x) for x in head.replace("|", " ").split() if x.replace(".", "").isdigit()
            and "." in x]
    model, blank, prior = nums[-3:]
    assert model >= 0.80, head
    assert abs(blank - prior) <= 0.05, head
