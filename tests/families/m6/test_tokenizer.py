"""The image tokenizer task model (models.ImageTokenizer): its objective, PSNR, the blur
baseline, and a CLI run that prints them."""
import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from plug_jax.layers.vqgan import VQGANConfig
from plug_jax.models import ImageTokenizer
from plug_jax.models.image_tokenizer import CLIP_MEAN, CLIP_STD, blur_baseline, psnr

_spec = importlib.util.spec_from_file_location(
    "plug_jax_tests_cli_helpers", pathlib.Path(__file__).resolve().parents[2] / "cli_helpers.py")
cli_helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cli_helpers)

TINY = VQGANConfig.from_preset("tiny")  # 32x32 -> 16x16 codes


def test_psnr_and_blur_baseline_by_hand():
    rng = np.random.default_rng(0)
    x = rng.random((2, 8, 8, 3)).astype(np.float32)
    y = np.clip(x + 0.1, 0, 1)
    mse = ((x - y) ** 2).mean(axis=(1, 2, 3))
    np.testing.assert_allclose(np.asarray(psnr(y, x)), 10 * np.log10(1 / mse), rtol=1e-5)
    # a picture constant over each 4x4 block survives the blur baseline's shrink exactly and
    # its bilinear enlargement keeps the block means
    blocks = rng.random((1, 2, 2, 3)).astype(np.float32)
    img = np.repeat(np.repeat(blocks, 4, axis=1), 4, axis=2)
    small = np.asarray(blur_baseline(img, 2)).reshape(1, 2, 4, 2, 4, 3).mean(axis=(2, 4))
    assert np.abs(small - blocks).max() < 0.15
    np.testing.assert_allclose(np.asarray(blur_baseline(img, 8)), img, atol=1e-6)


def test_objective_is_pixel_mse_plus_the_quantiser_loss():
    model = ImageTokenizer(TINY)
    rng = np.random.default_rng(1)
    pixels01 = rng.random((2, 32, 32, 3)).astype(np.float32)
    image = (pixels01 - np.array(CLIP_MEAN, np.float32)) / np.array(CLIP_STD, np.float32)
    batch = {"image": image}
    params = model.init_params(jax.random.PRNGKey(0), batch)
    sums = model.loss_sums(params, batch, deterministic=True)
    x = pixels01 * 2 - 1  # taming's range
    recon, codes, aux = model.module.apply({"params": params}, jnp.asarray(x))
    n = x.size
    assert float(sums["weight"]) == n
    want = ((np.asarray(recon) - x) ** 2).sum() + float(aux["loss"]) * n
    np.testing.assert_allclose(float(sums["loss"]), want, rtol=1e-4)
    out = model.eval_outputs(params, batch)
    r01 = np.clip((np.asarray(recon) + 1) / 2, 0, 1)
    np.testing.assert_allclose(np.asarray(out["psnr"]),
                               10 * np.log10(1 / ((r01 - pixels01) ** 2).mean(axis=(1, 2, 3))),
                               rtol=1e-4)
    metrics = model.whole_set_metrics(params, jax.device_get(out))
    used = len(set(np.asarray(codes).reshape(-1).tolist()))
    assert metrics["codes_used"] == used and 1.0 <= metrics["code_perplexity"] <= used
    with pytest.raises(ValueError, match="reads 32x32 pictures"):
        model.loss_sums(params, {"image": np.zeros((1, 64, 64, 3), np.float32)})


def test_tokenizer_experiment_trains_and_prints_psnr_next_to_blur(tmp_path):
    out = cli_helpers.cli("train", "experiments/m6/shop_tokenizer_tiny.gin", tmp_path / "vq",
                          "--gin.TRAIN_STEPS=2", "--gin.BATCH_SIZE=4", "--gin.EVAL_STEPS=1",
                          "--gin.EVAL_PERIOD=2", "--gin.LOG_PERIOD=1",
                          "--gin.CHECKPOINT_PERIOD=2")
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("eval @ step 2"))
    for k in ("vq loss", "psnr", "blur psnr", "code perplexity", "codes used"):
        assert f" {k} " in line, line
    assert "perplexity" not in line.split("code perplexity")[0]  # no token perplexity
