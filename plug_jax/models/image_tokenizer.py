"""An image tokenizer as a task model: a VQGAN (``plug_jax/layers/vqgan.py``, taming's network)
or the compact VQ-VAE (``plug_jax/layers/vq_compact.py``, the one Shop World trains) trained
to reconstruct pictures through its codebook (M6 text-to-image draws codes that it decodes).

Batches are an image task's (``image_text`` converter; the text is not read): ``image``
``[B, H, W, 3]`` normalised with ``pixel_mean`` / ``pixel_std`` (CLIP's, as the Shop World
image tasks write it), mapped back to ``[-1, 1]`` (taming's range) inside.

Objective (additive): the squared reconstruction error summed over every pixel channel, plus
the quantiser's loss (taming's commitment and codebook terms, ``beta``) times the same count;
``weight`` is that count, so ``loss`` reads as MSE + VQ loss. taming adds a perceptual and an
adversarial loss for sharp large images; at 64 px with 8x8 codes the plain objective is what
is measured here (docs/decisions.md, "M6 and the VQGAN tokenizer").

Whole-set metrics (evaluation): ``psnr`` (dB, pixels in ``[0, 1]``, the mean of per-picture
PSNRs), ``blur_psnr`` (the baseline: the picture shrunk to the code grid by area averaging and
enlarged back bilinearly, as many numbers per channel as the tokenizer has codes) and
``code_perplexity`` (how many codes the eval set uses, as ``exp`` of the entropy).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from plug_jax.models.base import model_metadata

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def psnr(x, y):
    """Per-picture PSNR in dB of ``[B, H, W, C]`` pictures with values in ``[0, 1]``."""
    mse = jnp.mean(jnp.square(jnp.asarray(x, jnp.float32) - jnp.asarray(y, jnp.float32)),
                   axis=(1, 2, 3))
    return 10.0 * jnp.log10(1.0 / jnp.maximum(mse, 1e-10))


def blur_baseline(images, grid: int):
    """``images`` ``[B, H, W, C]`` shrunk to ``grid x grid`` by area averaging and enlarged back
    bilinearly: a picture described by ``grid^2`` numbers per channel."""
    b, h, w, c = images.shape
    small = images.reshape(b, grid, h // grid, grid, w // grid, c).mean(axis=(2, 4))
    return jax.image.resize(small, (b, h, w, c), method="bilinear")


@dataclasses.dataclass(frozen=True)
class ImageTokenizer:
    config: Any  # plug_jax.layers.vqgan.VQGANConfig or plug_jax.layers.vq_compact.CompactVQConfig
    family: str = "m6"  # the family whose text-to-image reads the codes (checkpoint metadata)
    pixel_mean: tuple = CLIP_MEAN
    pixel_std: tuple = CLIP_STD

    kind = "image_tokenizer"
    token_loss = False  # no perplexity; speed in examples
    summary_metrics = ("vq_loss", "psnr", "blur_psnr", "code_perplexity", "codes_used")

    @property
    def module(self):
        from plug_jax.layers.vq_compact import build
        return build(self.config)

    def _pixels(self, batch):
        """``[-1, 1]`` pictures from the task's normalised ``image``."""
        x = jnp.asarray(batch["image"], jnp.float32)
        x = x * jnp.asarray(self.pixel_std, jnp.float32) + jnp.asarray(self.pixel_mean,
                                                                          jnp.float32)
        size = self.config.resolution
        if x.shape[1:3] != (size, size):
            raise ValueError(f"the tokenizer reads {size}x{size} pictures, the task gives "
                             f"{x.shape[1]}x{x.shape[2]}; fix: set the VQGAN config's "
                             f"resolution or the task's image size")
        return x * 2.0 - 1.0

    def init_params(self, rng, batch: dict):
        image = jnp.zeros(batch["image"].shape, jnp.float32)  # shapes only (abstract batches)
        return self.module.init(rng, self._pixels({"image": image}))["params"]

    def loss_sums(self, params, batch: dict, rng=None, deterministic: bool = False) -> dict:
        x = self._pixels(batch)
        recon, _, aux = self.module.apply({"params": params}, x, train=not deterministic)
        n = jnp.asarray(x.size, jnp.float32)
        sq = jnp.sum(jnp.square(jnp.asarray(recon, jnp.float32) - x))
        return {"loss": sq + aux["loss"] * n, "weight": n,
                "vq_loss": aux["loss"] * n, "vq_weight": n}

    def reconstruct(self, params, images):
        """``[-1, 1]`` pictures -> ``(reconstruction, codes)``."""
        recon, codes, _ = self.module.apply({"params": params}, images)
        return recon, codes

    def eval_outputs(self, params, batch: dict) -> dict:
        x = self._pixels(batch)
        recon, codes = self.reconstruct(params, x)
        x01 = (x + 1.0) / 2.0
        r01 = jnp.clip((jnp.asarray(recon, jnp.float32) + 1.0) / 2.0, 0.0, 1.0)
        grid = codes.shape[1]
        return {"psnr": psnr(r01, x01), "blur_psnr": psnr(blur_baseline(x01, grid), x01),
                "codes": codes.reshape(codes.shape[0], -1)}

    def whole_set_metrics(self, params, outputs: dict) -> dict:
        codes = np.asarray(outputs["codes"]).reshape(-1)
        p = np.bincount(codes, minlength=self.config.n_embed) / max(codes.size, 1)
        nz = p[p > 0]
        return {"psnr": float(np.mean(outputs["psnr"])),
                "blur_psnr": float(np.mean(outputs["blur_psnr"])),
                "code_perplexity": float(np.exp(-np.sum(nz * np.log(nz)))),
                "codes_used": float(np.sum(p > 0))}

    def flops_per_step(self, batch: int, lengths: dict) -> float:
        """3x the forward FLOPs of one picture (XLA's count of the convolutions), x batch."""
        h, w, c = (int(v) for v in lengths.get("image", (self.config.resolution,) * 2 + (3,)))
        img = jax.ShapeDtypeStruct((1, h, w, c), jnp.float32)
        params = jax.eval_shape(lambda x: self.module.init(jax.random.PRNGKey(0), x), img)
        cost = jax.jit(lambda p, x: self.module.apply(p, x)).lower(params, img).cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        return 3.0 * batch * float((cost or {}).get("flops", 0.0))

    def metadata(self) -> dict:
        return model_metadata(self)


__all__ = ["ImageTokenizer", "blur_baseline", "psnr"]
