"""M6 text-to-image: the compact tokenizer, the image-code corpus and its task, code sampling
(masking, guidance, KV cache) and the command lines (train, plug-infer --prompt, t2i_eval)."""
import importlib.util
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from plug_jax.families.m6 import image_codes, t2i_eval
from plug_jax.families.m6.config import M6Config
from plug_jax.layers.vq_compact import CompactVQ, CompactVQConfig, config_from_dict
from plug_jax.layers.vqgan import VQGANConfig
from plug_jax.models import ImageTokenizer, TextToImageLM
from plug_jax.models.text_to_image import CodeStep, write_grid

_spec = importlib.util.spec_from_file_location(
    "plug_jax_tests_cli_helpers", pathlib.Path(__file__).resolve().parents[2] / "cli_helpers.py")
cli_helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cli_helpers)

# 64x64 (products_64) -> 16x16 codes of 32 entries, narrow enough for tests
SMALL_VQ = CompactVQConfig(resolution=64, channels=(8, 16), num_res_blocks=1, embed_dim=4,
                           n_embed=32)
TEXT_VOCAB = 612  # the Shop World en vocabulary with 100 extra ids


def _t2i(num_codes=32, cond_drop=0.1, codes_dir=None, target_grid=0):
    cfg = M6Config.from_preset("tiny", vocab_size=TEXT_VOCAB + num_codes, image_size=64,
                               max_text_positions=300, dropout_rate=0.0,
                               attention_dropout_rate=0.0, scan_layers=False,
                               target_grid=target_grid)
    return TextToImageLM(cfg, num_codes=num_codes, cond_drop=cond_drop, codes_dir=codes_dir)


def _batch(model, b=3, e=6, t=16, seed=0):
    rng = np.random.default_rng(seed)
    enc = np.zeros((b, e), np.int32)
    for r in range(b):
        n = int(rng.integers(2, e))
        enc[r, :n - 1] = rng.integers(3, TEXT_VOCAB, n - 1)
        enc[r, n - 1] = 1
    tgt = rng.integers(model.code_offset, model.code_offset + model.num_codes, (b, t))
    dec_in = np.concatenate([np.zeros((b, 1), np.int64), tgt[:, :-1]], axis=1)
    return {"encoder_input_tokens": enc, "decoder_input_tokens": dec_in.astype(np.int32),
            "decoder_target_tokens": tgt.astype(np.int32),
            "decoder_loss_weights": np.ones((b, t), np.float32)}


# ------------------------------------------------------------------------ compact tokenizer
def test_compact_tokenizer_codes_are_the_nearest_rows_by_cosine_and_decode_from_codes():
    m = CompactVQ(SMALL_VQ)
    x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (2, 64, 64, 3)), jnp.float32)
    params = nn.unbox(m.init(jax.random.PRNGKey(0), x)["params"])
    recon, codes, terms = m.apply({"params": params}, x)
    assert recon.shape == x.shape and codes.shape == (2, 16, 16)
    z = np.asarray(m.apply({"params": params}, x, method="encode_latents")).reshape(-1, 4)
    e = np.asarray(params["quantize"]["embedding"])
    cos = (z / np.linalg.norm(z, axis=1, keepdims=True)) @ (
        e / np.linalg.norm(e, axis=1, keepdims=True)).T
    np.testing.assert_array_equal(np.asarray(codes).reshape(-1), cos.argmax(axis=1))
    # the decoder of the codes alone gives the reconstruction (straight-through forward)
    np.testing.assert_allclose(np.asarray(m.apply({"params": params}, codes,
                                                  method="decode_codes")),
                               np.asarray(recon), atol=1e-5)
    # legacy=False: beta * commitment + codebook
    want = 0.25 * float(terms["commitment"]) + float(terms["codebook"])
    np.testing.assert_allclose(float(terms["loss"]), want, rtol=1e-5)


def test_tokenizer_configs_round_trip_through_their_dicts_and_bad_ones_name_the_fix():
    import dataclasses
    for cfg in (SMALL_VQ, VQGANConfig.from_preset("tiny")):
        d = json.loads(json.dumps(dataclasses.asdict(cfg)))  # as config.json stores it
        assert config_from_dict(d) == cfg
    with pytest.raises(ValueError, match="not divisible by the downsampling factor 4"):
        CompactVQConfig(resolution=66)
    with pytest.raises(ValueError, match="unknown preset"):
        CompactVQConfig.from_preset("nope")
    with pytest.raises(ValueError, match="not a multiple of GroupNorm's 8 groups"):
        VQGANConfig.from_preset("tiny", ch=36, norm_groups=8)


def test_vqgan_norm_groups_changes_only_how_groupnorm_splits_the_channels():
    base = VQGANConfig.from_preset("tiny")
    x = jnp.asarray(np.random.default_rng(1).uniform(-1, 1, (1, 32, 32, 3)), jnp.float32)
    from plug_jax.layers.vqgan import VQGAN
    p32 = nn.unbox(VQGAN(base).init(jax.random.PRNGKey(0), x)["params"])
    p8 = nn.unbox(VQGAN(base.replace(norm_groups=8)).init(jax.random.PRNGKey(0), x)["params"])
    assert jax.tree_util.tree_structure(p32) == jax.tree_util.tree_structure(p8)
    a = VQGAN(base).apply({"params": p32}, x)[0]
    b = VQGAN(base.replace(norm_groups=8)).apply({"params": p32}, x)[0]
    assert float(jnp.max(jnp.abs(a - b))) > 1e-4  # the groups are really used


# ------------------------------------------------------------------------ the corpus and task
@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """An image-code corpus of 8 pictures per split from a random small tokenizer."""
    tok = ImageTokenizer(SMALL_VQ)
    params = nn.unbox(tok.init_params(jax.random.PRNGKey(3),
                                      {"image": np.zeros((1, 64, 64, 3))}))
    out = tmp_path_factory.mktemp("codes")
    image_codes.write(tok, params, out, source="test", step=0, limit=8, log=lambda *a, **k: None)
    return out, tok, params


def test_corpus_holds_each_pictures_codes_and_labels_and_its_tokenizer(corpus):
    out, tok, params = corpus
    meta = image_codes.read_meta(out)
    assert (meta["grid"], meta["n_embed"]) == (16, 32)
    rec = image_codes.products("validation", 8)
    got = image_codes.read_split("validation", out)
    assert got["codes"].shape == (8, 256) and got["codes"].dtype == np.int16
    assert list(got["product_id"]) == list(rec["product_id"])
    assert list(got["title_en"]) == list(rec["title_en"])
    x = jnp.asarray(rec["image"], jnp.float32) / 127.5 - 1
    _, codes, _ = tok.module.apply({"params": params}, x)
    np.testing.assert_array_equal(got["codes"], np.asarray(codes).reshape(8, -1))
    tok2, params2 = image_codes.load_tokenizer(out)
    assert tok2.config == SMALL_VQ
    np.testing.assert_array_equal(image_codes.decode_codes(tok2, params2, got["codes"][:2]),
                                  image_codes.decode_codes(tok, params, got["codes"][:2]))


def test_missing_corpus_is_one_line_naming_the_command(tmp_path):
    with pytest.raises(image_codes.ImageCodesError) as e:
        image_codes.read_split("train", tmp_path / "none")
    msg = str(e.value)
    assert "\n" not in msg and "python -m plug_jax.families.m6.image_codes" in msg


def test_t2i_task_targets_are_the_codes_after_the_text_vocabulary(corpus, monkeypatch):
    out, _, _ = corpus
    monkeypatch.setenv(image_codes.ENV, str(out))
    import seqio

    import plug_jax.tasks  # noqa: F401
    from tasks import m6 as m6_tasks
    offset = m6_tasks.t2i_code_offset("en")
    assert offset == TEXT_VOCAB
    task = seqio.get_mixture_or_task("m6_shop_t2i_en_v1")
    got = list(task.get_dataset({"inputs": 32, "targets": 256}, split="test",
                                shuffle=False).as_numpy_iterator())
    raw = image_codes.read_split("test", out)
    assert len(got) == 8
    vocab = task.output_features["inputs"].vocabulary
    for ex, codes, title in zip(got, raw["codes"], raw["title_en"]):
        np.testing.assert_array_equal(ex["targets"], codes.astype(np.int32) + offset)
        assert ex["inputs"][-1] == 1 and vocab.decode(ex["inputs"][:-1].tolist()) == title


# ------------------------------------------------------------------------ the model
def test_t2i_model_checks_its_vocabulary_and_reads_packed_rows_alike():
    with pytest.raises(ValueError, match="do not fit the network's vocabulary"):
        TextToImageLM(M6Config.from_preset("tiny", vocab_size=100), num_codes=100)
    with pytest.raises(ValueError, match="cond_drop"):
        _t2i(cond_drop=1.0)
    m = _t2i(cond_drop=0.999)
    b = _batch(m)
    params = nn.unbox(m.init_params(jax.random.PRNGKey(0), b))
    enc = b["encoder_input_tokens"]
    packed = dict(b, encoder_segment_ids=(enc > 0).astype(np.int32),
                  encoder_positions=np.cumsum(enc > 0, axis=1).astype(np.int32) - 1,
                  decoder_segment_ids=np.ones_like(b["decoder_target_tokens"]),
                  decoder_positions=np.tile(np.arange(16, dtype=np.int32), (3, 1)))
    for deterministic in (True, False):  # with and without the titles dropped
        a, p = (float(m.loss_sums(params, x, rng=jax.random.PRNGKey(5),
                                  deterministic=deterministic)["loss"]) for x in (b, packed))
        assert a == pytest.approx(p, rel=1e-5)


def test_condition_dropout_trains_the_empty_title():
    m = _t2i(cond_drop=0.0)
    b = _batch(m, b=4)
    params = nn.unbox(m.init_params(jax.random.PRNGKey(0), b))
    plain = float(m.loss_sums(params, b, deterministic=True)["loss"])
    assert float(m.loss_sums(params, b, rng=jax.random.PRNGKey(5))["loss"]) == pytest.approx(
        plain, rel=1e-6)
    empty = np.zeros_like(b["encoder_input_tokens"])
    empty[:, 0] = 1
    blank = float(m.loss_sums(params, dict(b, encoder_input_tokens=empty),
                              deterministic=True)["loss"])
    dropping = _t2i(cond_drop=0.999)  # every row's title dropped (rng fixed)
    got = float(dropping.loss_sums(params, b, rng=jax.random.PRNGKey(5))["loss"])
    assert got == pytest.approx(blank, rel=1e-5) and abs(blank - plain) > 1e-3
    # never at evaluation
    assert float(dropping.loss_sums(params, b, rng=jax.random.PRNGKey(5),
                                    deterministic=True)["loss"]) == pytest.approx(plain, rel=1e-6)


def _code_logp(model, params, enc, codes_so_far):
    """log p(next code) for each row, by the recompute path (no cache), restricted to codes."""
    b = enc.shape[0]
    dec = np.concatenate([np.zeros((b, 1), np.int32),
                          np.asarray(codes_so_far, np.int32) + model.code_offset], axis=1)
    logits = np.asarray(model.outputs(params, {"encoder_input_tokens": enc,
                                               "decoder_input_tokens": dec})["logits"])[:, -1]
    logits = logits[:, model.code_offset:model.code_offset + model.num_codes]
    return logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1,
                           keepdims=True)) - logits.max(-1, keepdims=True)


@pytest.mark.parametrize("guidance,target_grid", [(1.0, 0), (3.0, 0), (3.0, 3)])
def test_greedy_codes_follow_the_guided_code_distribution_of_the_recompute_path(guidance,
                                                                                target_grid):
    m = _t2i(target_grid=target_grid)
    b = _batch(m, b=2)
    params = nn.unbox(m.init_params(jax.random.PRNGKey(7), b))
    enc = b["encoder_input_tokens"]
    codes = m.sample_codes(params, enc, jax.random.PRNGKey(0), grid=3, temperature=0.0,
                           guidance=guidance)
    assert codes.shape == (2, 9) and codes.min() >= 0 and codes.max() < m.num_codes
    empty = np.zeros_like(enc)
    empty[:, 0] = 1
    for t in range(9):
        cond = _code_logp(m, params, enc, codes[:, :t])
        uncond = _code_logp(m, params, empty, codes[:, :t])
        want = uncond + guidance * (cond - uncond)
        np.testing.assert_array_equal(codes[:, t], want.argmax(-1))


def test_target_grid_adds_a_row_and_a_column_embedding_to_each_code_position():
    with pytest.raises(ValueError, match="target_grid 20 needs 400 target positions"):
        M6Config.from_preset("tiny", target_grid=20, max_text_positions=300)
    plain, gridded = _t2i(), _t2i(target_grid=4)
    b = _batch(plain, t=16)
    p0 = nn.unbox(plain.init_params(jax.random.PRNGKey(0), b))
    p1 = nn.unbox(gridded.init_params(jax.random.PRNGKey(0), b))
    assert "code_rows" not in p0 and set(p1) - set(p0) == {"code_rows", "code_cols"}
    net = gridded.module
    ids = np.asarray(b["decoder_input_tokens"][:1])
    pos = np.arange(16, dtype=np.int32)[None]
    got = net.apply({"params": p1}, ids, pos, 2, method=net.embed_text)  # 2: target type
    base = plain.module
    shared = {k: p1[k] for k in p0}
    want = (base.apply({"params": shared}, ids, pos, 2, method=base.embed_text)
            + p1["code_rows"]["embedding"][pos // 4] + p1["code_cols"]["embedding"][pos % 4])
    np.testing.assert_allclose(got, want, atol=1e-6)
    src = net.apply({"params": p1}, ids, pos, 1, method=net.embed_text)  # source: no grid
    np.testing.assert_allclose(src, base.apply({"params": shared}, ids, pos, 1,
                                               method=base.embed_text), atol=1e-6)


def test_sampled_codes_stay_in_the_code_range_and_top_k_limits_them():
    m = _t2i()
    b = _batch(m, b=2)
    params = nn.unbox(m.init_params(jax.random.PRNGKey(7), b))
    enc = b["encoder_input_tokens"]
    codes = m.sample_codes(params, enc, jax.random.PRNGKey(1), grid=4, top_k=1,
                           temperature=1.0)
    greedy = m.sample_codes(params, enc, jax.random.PRNGKey(2), grid=4, temperature=0.0)
    np.testing.assert_array_equal(codes, greedy)  # top-1 sampling is greedy
    many = m.sample_codes(params, enc, jax.random.PRNGKey(1), grid=4, top_k=0,
                          temperature=5.0)
    assert many.min() >= 0 and many.max() < m.num_codes and len(np.unique(many)) > 4


def test_code_step_masks_text_ids_and_mixes_halves():
    class Inner:
        def __call__(self, params, cache, token_ids, positions, token_mask):
            b = token_ids.shape[0]
            logits = jnp.arange(b * 6, dtype=jnp.float32).reshape(b, 1, 6) % 5.0
            return logits, cache
    step = CodeStep(Inner(), lo=2, hi=5, guidance=2.0)
    logp, _ = step(None, None, jnp.zeros((4, 1), jnp.int32), None, None)
    logp = np.asarray(logp)
    assert (logp[..., :2] < -1e8).all() and (logp[..., 5:] < -1e8).all()
    raw = np.arange(24, dtype=np.float32).reshape(4, 1, 6) % 5.0
    ls = raw[..., 2:5] - np.log(np.exp(raw[..., 2:5]).sum(-1, keepdims=True))
    want = ls[2:] + 2.0 * (ls[:2] - ls[2:])
    np.testing.assert_allclose(logp[:2, :, 2:5], want, rtol=1e-5)
    np.testing.assert_allclose(logp[2:, :, 2:5], want, rtol=1e-5)


def test_write_grid_lays_pictures_out_in_rows(tmp_path):
    from PIL import Image
    pics = np.zeros((2, 3, 4, 4, 3), np.uint8)
    pics[1, 2] = 200
    path = write_grid(pics, str(tmp_path / "g.png"), scale=2, gap=1)
    img = np.asarray(Image.open(path))
    assert img.shape == (2 * 8 + 1, 3 * 8 + 2, 3)
    assert (img[9:17, 18:26] == 200).all() and (img[0:8, 0:8] == 0).all()
    assert (img[8] == 255).all()


# ------------------------------------------------------------------------ the classifier
def test_attribute_classifier_learns_colour_from_pictures():
    rng = np.random.default_rng(0)
    cats, cols = t2i_eval.label_names()
    rgb = {"red": (220, 30, 30), "blue": (30, 30, 220)}
    labels = rng.integers(0, 2, 64)
    colours = np.asarray(["red", "blue"])[labels]
    pics = np.zeros((64, 16, 16, 3), np.uint8)
    for i, c in enumerate(colours):
        pics[i, 4:12, 4:12] = rgb[c]
    categories = np.asarray([cats[0]] * 64)
    module, params = t2i_eval.train_classifier(pics, categories, colours, steps=60,
                                               batch_size=16, log=lambda *a, **k: None)
    acc = t2i_eval.accuracy(module, params, pics, categories, colours)
    assert acc["colour"] == 1.0 and acc["category"] == 1.0 and acc["n"] == 64
    swapped = t2i_eval.accuracy(module, params, pics, categories,
                                np.where(colours == "red", "blue", "red"))
    assert swapped["colour"] == 0.0


# ------------------------------------------------------------------------ command lines
def test_t2i_experiment_trains_draws_pngs_and_is_judged(corpus, tmp_path, monkeypatch):
    out, _, _ = corpus
    monkeypatch.setenv(image_codes.ENV, str(out))
    gin = "experiments/m6/shop_t2i_tiny.gin"
    small = ("--gin.TRAIN_STEPS=2", "--gin.BATCH_SIZE=4", "--gin.EVAL_STEPS=1",
             "--gin.EVAL_PERIOD=2", "--gin.LOG_PERIOD=1", "--gin.CHECKPOINT_PERIOD=2",
             "--gin.models.TextToImageLM.num_codes=32", "--gin.VOCAB_SIZE=644")
    model_dir = tmp_path / "t2i"
    cli_helpers.cli("train", gin, model_dir, *small)
    assert cli_helpers.eval_rows(model_dir)[-1]["step"] == 2
    res = cli_helpers.cli("infer", gin, model_dir, *small, "--prompt", "Red Cotton Mug",
                          "--prompt", "Blue Leather Backpack")
    assert "text_to_image.png" in res.stdout
    from PIL import Image
    grid = np.asarray(Image.open(model_dir / "infer" / "text_to_image.png"))
    assert grid.shape == (2 * 128 + 2, 4 * 128 + 3 * 2, 3)  # 2 titles x 4 samples, 2x scale
    assert (model_dir / "infer" / "text_to_image_1_3.png").is_file()
    res = cli_helpers.run_module("plug_jax.families.m6.t2i_eval", gin, model_dir, *small,
                                 "--split", "test", "--limit", "8", "--classifier_steps", "3",
                                 "--png", str(tmp_path / "judged.png"))
    for row in ("real pictures", "tokenizer reconstructions", "generated from the titles",
                "random codes (control)"):
        assert row in res.stdout, res.stdout
    assert (out / "classifier" / "params.npz").is_file() and (tmp_path / "judged.png").is_file()
