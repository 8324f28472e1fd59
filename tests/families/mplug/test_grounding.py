"""mPLUG visual grounding: the task's location ids, masked decoding, the box-reweighted
loss, the whole-set metrics, and plug-infer drawing a box on a PNG.

Fast tests use the tiny preset (a 2-step run serves the CLI tests). Slow (``-m slow``):
the grounding experiment trained as configured, scored next to its blank-image control
with ``plug_jax.families.mplug.grounding_eval``.
"""
import dataclasses
import importlib.util
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from plug_jax.models.grounding import GroundingLM

_spec = importlib.util.spec_from_file_location(
    "plug_jax_tests_cli_helpers", pathlib.Path(__file__).resolve().parents[2] / "cli_helpers.py")
cli_helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cli_helpers)

GIN = "experiments/mplug/shop_grounding_tiny.gin"
TASK = "mplug_shop_grounding_en_v1"
LENGTHS = {"image": (64, 64, 3), "inputs": 16, "targets": 5}
OFFSET = 512
SHORT = ["--gin.TRAIN_STEPS=2", "--gin.BATCH_SIZE=4", "--gin.EVAL_STEPS=2",
         "--gin.EVAL_PERIOD=2", "--gin.LOG_PERIOD=1", "--gin.CHECKPOINT_PERIOD=2"]


def _tiny_model(**kw):
    from plug_jax.families.mplug.config import MPlugConfig
    from plug_jax.layers.clip import CLIPVisionConfig
    vision = CLIPVisionConfig(image_size=64, patch_size=16, width=32, layers=1, heads=2,
                              mlp_dim=64, projection_dim=16)
    cfg = MPlugConfig(preset="tiny", vision=vision, vocab_size=600, hidden_size=32,
                      num_heads=2, ffn_size=64, max_position_embeddings=32, text_layers=1,
                      fusion_layers=1, fusion_total_layers=1, stride=1, decoder_layers=1,
                      embed_dim=16)
    return GroundingLM(config=cfg, loc_offset=OFFSET, **kw)


def _batch(boxes, phrase_len=3):
    boxes = np.asarray(boxes, np.int32)
    n = len(boxes)
    tgt = np.concatenate([boxes + OFFSET, np.ones((n, 1), np.int32)], axis=1)
    return {"image": np.random.RandomState(0).randn(n, 64, 64, 3).astype(np.float32),
            "encoder_input_tokens": np.tile(np.arange(2, 2 + phrase_len), (n, 1)),
            "decoder_target_tokens": tgt,
            "decoder_input_tokens": np.pad(tgt[:, :-1], ((0, 0), (1, 0))),
            "decoder_loss_weights": np.ones_like(tgt)}


# ------------------------------------------------------------------ the task
def test_task_targets_are_the_quantised_gold_boxes():
    from plug_jax.data.shop_world import images
    from plug_jax.data.pipeline import task_vocabulary
    from plug_jax.trainer import loop
    import plug_jax.tasks  # noqa: F401
    vocab = task_vocabulary(TASK)
    assert vocab.vocab_size == OFFSET  # the gin file's loc_offset
    data = loop.DatasetConfig(TASK, LENGTHS, batch_size=12, split="validation",
                              converter="image_text")
    b = {k: np.asarray(v) for k, v in
         next(iter(loop._batch_iterator(data, repeat=False, shuffle=False))).items()}
    tgt = b["decoder_target_tokens"]
    assert tgt.shape == (12, 5) and (tgt[:, 4] == 1).all()
    assert ((tgt[:, :4] >= OFFSET) & (tgt[:, :4] <= OFFSET + 64)).all()
    np.testing.assert_array_equal(b["decoder_loss_weights"], np.ones((12, 5)))
    # every (phrase, box) is one of a validation image's referring phrases with its box
    # (65 bins at 64 px: bin k = pixel k, so the quantised box is the pixel box); the
    # phrases of one image come together, three per object
    pairs = {(p, tuple(box)) for i in range(200)
             for p, box in images.image_example(0, "validation", i, lang="en")["referring"]}
    seen_boxes = []
    for row in range(12):
        ids = [int(t) for t in b["encoder_input_tokens"][row]]
        phrase = vocab.decode([t for t in ids if t > 1])
        box = tuple(int(c) for c in tgt[row, :4] - OFFSET)
        assert (phrase, box) in pairs, (phrase, box)
        assert ids[len(vocab.encode(phrase))] == 1  # the phrase ends with EOS
        seen_boxes.append(box)
    assert seen_boxes[0] == seen_boxes[1] == seen_boxes[2]


# ------------------------------------------------------------------ masked decoding
def test_masked_generation_only_emits_location_ids():
    from flax import linen as nn
    model = _tiny_model()
    b = _batch([[0, 8, 14, 26], [24, 44, 38, 62]])
    params = nn.unbox(jax.jit(model.init_params)(jax.random.PRNGKey(0), b))
    # make every text id (and the ids above the locations) far likelier than any location
    bias = params["decoder"]["lm_head"]["output_bias"]
    ids = np.arange(bias.shape[0])
    loc = (ids >= OFFSET) & (ids <= OFFSET + 64)
    params["decoder"]["lm_head"]["output_bias"] = jnp.where(loc, bias, bias + 100.0)
    logits = jax.jit(model.logits)(params, b)
    assert not loc[np.asarray(jnp.argmax(logits, -1))].any()  # unmasked: never a location
    out = jax.jit(model.predict_boxes)(params, {k: b[k] for k in ("image",
                                                                  "encoder_input_tokens")})
    toks = np.asarray(out["tokens"])
    assert toks.shape == (2, 4) and loc[toks].all()
    np.testing.assert_array_equal(np.asarray(out["boxes"]), toks - OFFSET)
    ev = jax.device_get(jax.jit(model.eval_outputs)(params, b))
    np.testing.assert_array_equal(ev["gold_box"], [[0, 8, 14, 26], [24, 44, 38, 62]])
    assert ev["valid"].tolist() == [1.0, 1.0]
    assert ((ev["pred_box"] >= 0) & (ev["pred_box"] <= 64)).all()


# ------------------------------------------------------------------ box-reweighted loss
@dataclasses.dataclass(frozen=True)
class _GivenLogits(GroundingLM):
    """The network replaced by the logits passed as ``params`` (teacher forcing)."""

    def logits(self, params, batch, rng=None, deterministic=True):
        return params


def _logits_predicting(boxes, vocab=600, right=5.0):
    """``[B, 5, vocab]``: argmax at location ``box`` coordinates, then EOS."""
    boxes = np.asarray(boxes)
    out = np.zeros((len(boxes), 5, vocab), np.float32)
    for i, box in enumerate(boxes):
        for t in range(4):
            out[i, t, OFFSET + box[t]] = right
        out[i, 4, 1] = right
    return out


def test_box_loss_weight_on_a_hand_built_case():
    gold = [[0, 0, 32, 32], [0, 0, 32, 32], [0, 0, 32, 32]]
    # prediction 0 is right: weight 1. Prediction 1 is [0, 0, 16, 32]: L1 = 16 / 64 = 0.25,
    # IoU = 512 / 1024 = 0.5, enclosing box = gold, so GIoU = 0.5: weight 1 + 0.25 + 0.5.
    # Prediction 2 is [32, 32, 64, 64], disjoint: L1 = 4 * 32 / 64 = 2; IoU 0; union 2048,
    # enclosing 64 * 64 = 4096: GIoU = -0.5; weight 1 + 2 + 1.5 = 4.5.
    pred = [[0, 0, 32, 32], [0, 0, 16, 32], [32, 32, 64, 64]]
    weights = np.array([1.0, 1.75, 4.5])
    logits = jnp.asarray(_logits_predicting(pred))
    b = _batch(gold)
    model = _GivenLogits(config=_tiny_model().config, loc_offset=OFFSET)
    terms = jax.device_get(model.box_terms(logits, b))
    np.testing.assert_array_equal(terms["pred"], pred)
    np.testing.assert_allclose(terms["l1"], [0.0, 0.25, 2.0], rtol=1e-6)
    np.testing.assert_allclose(terms["giou"], [1.0, 0.5, -0.5], rtol=1e-6)
    np.testing.assert_allclose(terms["weight"], weights, rtol=1e-6)

    tgt = jnp.asarray(b["decoder_target_tokens"])

    def nll(lg):  # per example: the NLL of its 5 target tokens
        logp = jax.nn.log_softmax(lg, -1)
        return -jnp.take_along_axis(logp, tgt[..., None], -1)[..., 0].sum(-1)

    per = np.asarray(nll(logits))
    train = jax.device_get(model.loss_sums(logits, b, deterministic=False))
    np.testing.assert_allclose(train["loss"], np.sum(weights * per), rtol=1e-5)
    np.testing.assert_allclose(train["ce_loss"], per.sum(), rtol=1e-5)
    assert train["weight"] == 15.0 and train["box_weight"] == 3.0
    np.testing.assert_allclose(train["box_loss_scale"], weights.sum(), rtol=1e-6)
    # evaluation, and box_loss=False: the plain cross-entropy
    ev = jax.device_get(model.loss_sums(logits, b, deterministic=True))
    np.testing.assert_allclose(ev["loss"], per.sum(), rtol=1e-5)
    off = dataclasses.replace(model, box_loss=False)
    np.testing.assert_allclose(jax.device_get(off.loss_sums(logits, b))["loss"], per.sum(),
                               rtol=1e-5)
    # the weight is a constant: the gradient is that of the reweighted cross-entropy
    g = jax.grad(lambda lg: model.loss_sums(lg, b, deterministic=False)["loss"])(logits)
    want = jax.grad(lambda lg: jnp.sum(jnp.asarray(weights, jnp.float32) * nll(lg)))(logits)
    np.testing.assert_allclose(np.asarray(g), np.asarray(want), rtol=1e-5, atol=1e-6)


def test_whole_set_metrics_on_hand_built_boxes():
    model = _tiny_model()
    outputs = {"pred_box": np.array([[0, 0, 32, 32], [0, 0, 16, 32], [32, 32, 64, 64],
                                     [0, 0, 4, 4]]),
               "gold_box": np.array([[0, 0, 32, 32], [0, 0, 32, 32], [0, 0, 32, 32],
                                     [0, 0, 8, 8]]),
               "valid": np.array([1.0, 1.0, 1.0, 0.0])}  # the last row is padding
    got = model.whole_set_metrics(None, outputs)
    # IoUs 1, 0.5, 0 -> two of three reach 0.5; mean 0.5
    assert got["grounding_accuracy"] == pytest.approx(2 / 3)
    assert got["mean_iou"] == pytest.approx(0.5)
    assert got["grounding_count"] == 3.0
    assert "grounding_accuracy" in GroundingLM.summary_metrics


def test_loc_offset_is_required_and_must_fit_the_vocabulary():
    cfg = _tiny_model().config
    with pytest.raises(ValueError, match="loc_offset"):
        GroundingLM(config=cfg)
    with pytest.raises(ValueError, match="vocab_size"):
        GroundingLM(config=cfg, loc_offset=550)  # 550 + 65 > 600


# ------------------------------------------------------------------ plug-infer
def _run(mode, model_dir, *flags):
    return cli_helpers.cli(mode, GIN, model_dir, *flags, check=False)


@pytest.fixture(scope="module")
def run2(tmp_path_factory):
    from PIL import Image

    from plug_jax.data.shop_world import images
    d = tmp_path_factory.mktemp("mplug_grounding")
    out = cli_helpers.cli("train", GIN, d / "run", *SHORT)
    ex = images.image_example(0, "test", 3, lang="en")
    Image.fromarray(ex["image"]).save(d / "product.png")
    (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return d, out.stdout


def test_eval_line_reports_grounding_accuracy(run2):
    _, out = run2
    line = next(ln for ln in out.splitlines() if ln.startswith("eval @ step 2"))
    assert "grounding accuracy" in line and "mean iou" in line, line


def test_infer_prints_the_box_and_draws_it_on_a_png(run2):
    from PIL import Image
    d, _ = run2
    out = _run("infer", d / "run", f"--prompt=image:{d / 'product.png'}|the red hat")
    assert out.returncode == 0, out.stderr[-2000:]
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("[box]")]
    assert len(lines) == 1, out.stdout
    m = re.search(r"product\.png \| the red hat ▸ \[(\d+), (\d+), (\d+), (\d+)\] -> (\S+\.png)$",
                  lines[0])
    assert m, lines[0]
    box = [int(m.group(i)) for i in range(1, 5)]
    png = pathlib.Path(m.group(5))
    assert png.parent == d / "run" / "infer" and png.exists()
    im = np.asarray(Image.open(png).convert("RGB"))
    assert im.shape == (256, 256, 3)  # 64 px drawn 4x
    x0, x1 = sorted((box[0], box[2]))
    y0, y1 = sorted((box[1], box[3]))
    x1, y1 = max(x1, x0 + 1), max(y1, y0 + 1)
    for x, y in [(4 * x0, 4 * y0), (4 * x1 - 1, 4 * y1 - 1), (4 * x0, (4 * y0 + 4 * y1) // 2)]:
        assert tuple(im[y, x]) == (255, 0, 0), (box, x, y)


def test_draw_box_outline_pixels(tmp_path):
    from PIL import Image

    from plug_jax.models import grounding
    # a uniform grey image (0 after normalisation), box [8, 4, 20, 30]
    path = grounding.draw_box(np.zeros((64, 64, 3), np.float32), [8, 4, 20, 30],
                              str(tmp_path / "b.png"))
    im = np.asarray(Image.open(path).convert("RGB"))
    assert tuple(im[16, 32]) == (255, 0, 0)      # top-left corner (x 8*4, y 4*4)
    assert tuple(im[119, 79]) == (255, 0, 0)     # bottom-right (x 20*4-1, y 30*4-1)
    assert tuple(im[60, 32]) == (255, 0, 0)      # left edge
    assert tuple(im[60, 50]) != (255, 0, 0)      # inside, away from the outline
    assert tuple(im[5, 5]) != (255, 0, 0)        # outside


def test_corrupt_image_is_one_line_and_exit_2(run2):
    d, _ = run2
    out = _run("infer", d / "run", f"--prompt=image:{d / 'broken.png'}|the red hat")
    assert out.returncode == 2
    err = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert len(err) == 1 and "broken.png" in err[0] and "fix:" in err[0], err


# ------------------------------------------------------------------ learning (slow)
@pytest.mark.slow
def test_grounding_learns_and_uses_the_image(tmp_path):
    """The experiment as configured (~5 min on one core), then its blank-image control."""
    run = tmp_path / "grd"
    cli_helpers.cli("train", GIN, run, timeout=3600)
    out = cli_helpers.run_module("plug_jax.families.mplug.grounding_eval", GIN, run,
                                 timeout=1200)
    print(out.stdout)
    head = next(ln for ln in out.stdout.splitlines() if ln.startswith("grounding accuracy"))
    model, blank = (float(head.split(k)[1].split()[0]) for k in ("model ", "blank image "))
    assert model >= 0.6, head
    assert blank <= model - 0.3, head
