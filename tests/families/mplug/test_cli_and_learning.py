"""mPLUG tiny through the CLI and the data layer.

Fast: a 2-step VQA run serves plug-infer on a PNG (answer a question; caption it with the
same weights read as the captioning model, ``ENCODER_TEXT=False``; rank captions by their
likelihood), a corrupt image (one line, exit 2), the per-question-type eval line, and the ``question_type`` label that the VQA
task passes through the ``image_text`` converter.

Slow (``-m slow``; the family README): captioning then VQA from its parameters, scored next
to its controls (blank image, answer prior) with ``plug_jax.families.mplug.controls``. Its
0.80 target is not reached yet (the README's "Results").
"""
import importlib.util
import pathlib

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
    return cli_helpers.cli(mode, gin_file, model_dir, *flags, check=False)


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


def test_infer_ranks_captions_for_a_png(run2):
    d, _ = run2
    texts = ["A green leather backpack is on the right of the picture.",
             "A red wool hat is on the left of the picture.", "Two blue mugs."]
    out = _run("infer", d / "run", f"--prompt=image:{d / 'product.png'}",
               *[f"--prompt={t}" for t in texts], "--gin.ENCODER_TEXT=False")
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    at = lines.index(f"[rank] {d / 'product.png'}")
    ranked = [ln.split(None, 1) for ln in lines[at + 1:at + 4]]
    assert sorted(t for _, t in ranked) == sorted(texts)
    scores = [float(s) for s, _ in ranked]
    assert scores == sorted(scores, reverse=True) and all(s < 0 for s in scores)


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
    """mPLUG's recipe in small (commands in the family README): captioning 3000 steps, then
    VQA 3000 steps from its parameters (~13 min on 2 cores), scored next to the blank-image
    and answer-prior controls."""
    cap = tmp_path / "cap"
    cli_helpers.cli("train", "experiments/mplug/shop_caption_tiny.gin", cap,
                    "--gin.TRAIN_STEPS=3000", "--gin.EVAL_PERIOD=0", timeout=3600)
    ft = "experiments/mplug/shop_vqa_from_captions_tiny.gin"
    init = f"--gin.INIT_CHECKPOINT='{cap}'"
    cli_helpers.cli("train", ft, tmp_path / "vqa", init, timeout=3600)
    out = cli_helpers.run_module("plug_jax.families.mplug.controls", ft, tmp_path / "vqa", init,
                                 timeout=1200)
    print(out.stdout)
    head = next(ln for ln in out.stdout.splitlines() if ln.startswith("VQA accuracy"))
    model, blank, prior = (float(head.split(k)[1].split()[0])
                           for k in ("model ", "blank image ", "answer prior "))
    assert model >= 0.80, head
    assert abs(blank - prior) <= 0.05, head


def test_answer_list_skips_the_padding_rows_of_the_last_batch(monkeypatch):
    from plug_jax.families.mplug import controls
    batch = {"question_type": np.array([[0], [1], [0]]),
             "decoder_target_tokens": np.array([[7, 1, 0], [8, 9, 1], [0, 0, 0]])}
    monkeypatch.setattr(controls, "_batches", lambda *a: iter([batch]))
    counts = controls._answer_counts(None, "train", None)
    assert counts[0] == {(7, 1): 1} and counts[1] == {(8, 9, 1): 1}
    assert controls.answer_list(counts, 3).tolist() == [[7, 1, 0], [8, 9, 1]]
