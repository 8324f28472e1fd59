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

Adversarial option (``disc_weight > 0``; 0, the default, leaves params, loss and outputs as
above): taming's PatchGAN (:class:`~plug_jax.layers.patch_gan.PatchDiscriminator`,
``disc_ndf``, ``disc_layers``) under the extra top-level params key ``loss_discriminator``
(taming's ``loss.discriminator``; :meth:`tokenizer_params` strips it). The trainer has one
optimizer and one loss, so both players share it and ``stop_gradient`` routes each term to
its own part; with ``n`` the pixel-channel count (``weight``) the loss adds

* ``n * w * g``, ``g = -mean(D(recon))`` with the discriminator's params under
  ``stop_gradient``: its gradient reaches the tokenizer only (``g_loss``);
* ``n * d``, ``d = hinge(D(real), D(stop_gradient(recon)))``: the discriminator only
  (``d_loss``); simultaneous updates, where taming alternates two optimizers.

``w`` (reported as ``g_scale``) is ``disc_weight`` times, with ``disc_adaptive`` (taming's
``calculate_adaptive_weight``), ``clip(|grad_K mse| / (|grad_K g| + 1e-4), 0, 1e4)`` held
constant, ``K`` the decoder's last conv kernel (``conv_out``) and ``mse`` this objective's
pixel term (taming's is L1 + LPIPS). taming's ``disc_start`` (GAN terms off for the first
steps) needs the step, which ``loss_sums`` does not receive: train without the discriminator
first, then go on with it through ``INIT_CHECKPOINT`` and ``RESTORE_MODE='params_fresh_opt'``
(the discriminator starts fresh, as taming's starts training at ``disc_start``). The
discriminator's gradient is clipped together with the tokenizer's (one global norm).

Whole-set metrics (evaluation): ``psnr`` (dB, pixels in ``[0, 1]``, the mean of per-picture
PSNRs), ``blur_psnr`` (the baseline: the picture shrunk to the code grid by area averaging and
enlarged back bilinearly, as many numbers per channel as the tokenizer has codes) and
``code_perplexity`` (how many codes the eval set uses, as ``exp`` of the entropy).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from plug_jax.layers.patch_gan import PatchDiscriminator, generator_loss, hinge_d_loss
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


DISC_KEY = "loss_discriminator"  # taming's loss.discriminator


def _last_layer_path(params) -> tuple:
    """The decoder's last conv kernel (taming's ``decoder.conv_out.weight``)."""
    return ("decoder", "conv_out", "kernel") if "decoder" in params else ("conv_out", "kernel")


def _replace(tree, path, value):
    if not path:
        return value
    return {**tree, path[0]: _replace(tree[path[0]], path[1:], value)}


def _norm(tree):
    return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree_util.tree_leaves(tree)))


@dataclasses.dataclass(frozen=True)
class ImageTokenizer:
    config: Any  # plug_jax.layers.vqgan.VQGANConfig or plug_jax.layers.vq_compact.CompactVQConfig
    family: str = "m6"  # the family whose text-to-image reads the codes (checkpoint metadata)
    pixel_mean: tuple = CLIP_MEAN
    pixel_std: tuple = CLIP_STD
    # The adversarial option (module docstring); 0 = off. taming: ndf 64, 3 layers, adaptive.
    disc_weight: float = 0.0
    disc_ndf: int = 64
    disc_layers: int = 3
    disc_adaptive: bool = True

    kind = "image_tokenizer"
    token_loss = False  # no perplexity; speed in examples
    summary_metrics = ("vq_loss", "g_loss", "d_loss", "psnr", "blur_psnr", "code_perplexity",
                       "codes_used")

    def __post_init__(self):
        if not float(self.disc_weight) >= 0.0:
            raise ValueError(f"ImageTokenizer: disc_weight must be >= 0 (0 = no "
                             f"discriminator), got {self.disc_weight!r}")

    @property
    def module(self):
        from plug_jax.layers.vq_compact import build
        return build(self.config)

    @property
    def discriminator(self) -> PatchDiscriminator:
        return PatchDiscriminator(ndf=self.disc_ndf, n_layers=self.disc_layers)

    @staticmethod
    def tokenizer_params(params):
        """The tokenizer's part of ``params`` (without ``loss_discriminator``): what
        ``module.apply``, ``image_codes`` and ``vqgan_convert.to_taming`` take."""
        return {k: v for k, v in params.items() if k != DISC_KEY}

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
        x = self._pixels({"image": image})
        params = self.module.init(rng, x)["params"]
        if self.disc_weight:  # the tokenizer's init is the same with or without
            params = dict(params)
            params[DISC_KEY] = self.discriminator.init(jax.random.fold_in(rng, 0xD15C),
                                                       x)["params"]
        return params

    def loss_sums(self, params, batch: dict, rng=None, deterministic: bool = False) -> dict:
        x = self._pixels(batch)
        tok = self.tokenizer_params(params)
        n = jnp.asarray(x.size, jnp.float32)

        def forward(p):
            recon, _, aux = self.module.apply({"params": p}, x, train=not deterministic)
            return jnp.asarray(recon, jnp.float32), aux

        if not self.disc_weight:
            recon, aux = forward(tok)
            sq = jnp.sum(jnp.square(recon - x))
            return {"loss": sq + aux["loss"] * n, "weight": n,
                    "vq_loss": aux["loss"] * n, "vq_weight": n}

        sg = jax.lax.stop_gradient
        disc, d_params = self.discriminator, params[DISC_KEY]

        def gen(r):  # the generator's term: the discriminator is a constant here
            return generator_loss(disc.apply({"params": sg(d_params)}, r))

        w = jnp.asarray(self.disc_weight, jnp.float32)
        if self.disc_adaptive:
            # taming's adaptive weight: |grad_K mse| / |grad_K g| at the last conv kernel K,
            # both gradients pulled back from the reconstruction through K alone (a vjp in K)
            path = _last_layer_path(tok)
            last = functools.reduce(lambda t, k: t[k], path, tok)
            recon, pull, aux = jax.vjp(lambda k: forward(_replace(tok, path, k)), last,
                                       has_aux=True)
            r = sg(recon)
            mse_k, = pull(2.0 * (r - x) / n)  # d mean((r - x)^2) / dr
            g_k, = pull(jax.grad(gen)(r))
            w = w * sg(jnp.clip(_norm(mse_k) / (_norm(g_k) + 1e-4), 0.0, 1e4))
        else:
            recon, aux = forward(tok)
        sq = jnp.sum(jnp.square(recon - x))
        g = gen(recon)  # gradient to the tokenizer only
        d = hinge_d_loss(disc.apply({"params": d_params}, x),  # to the discriminator only
                         disc.apply({"params": d_params}, sg(recon)))
        return {"loss": sq + (aux["loss"] + w * g + d) * n, "weight": n,
                "vq_loss": aux["loss"] * n, "vq_weight": n,
                "g_loss": g * n, "g_scale": w * n, "g_weight": n,
                "d_loss": d * n, "d_weight": n}

    def reconstruct(self, params, images):
        """``[-1, 1]`` pictures -> ``(reconstruction, codes)``."""
        recon, codes, _ = self.module.apply({"params": self.tokenizer_params(params)}, images)
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
        flops = 0.0
        # with the discriminator, three passes of it (real, fake for d, fake for g) per picture
        # (the adaptive weight's extra backward passes are left out: an estimate)
        parts = [(self.module, 1)] + ([(self.discriminator, 3)] if self.disc_weight else [])
        for module, passes in parts:
            params = jax.eval_shape(lambda x: module.init(jax.random.PRNGKey(0), x), img)
            cost = jax.jit(lambda p, x: module.apply(p, x)).lower(params, img).cost_analysis()
            cost = cost[0] if isinstance(cost, (list, tuple)) else cost
            flops += passes * float((cost or {}).get("flops", 0.0))
        return 3.0 * batch * flops

    def metadata(self) -> dict:
        return model_metadata(self)


__all__ = ["DISC_KEY", "ImageTokenizer", "blur_baseline", "psnr"]
