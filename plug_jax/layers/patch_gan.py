"""A PatchGAN discriminator and its hinge losses: taming-transformers' adversarial loss for
the image tokenizer (``models.ImageTokenizer`` with ``disc_weight > 0``).

:class:`PatchDiscriminator` is taming's ``NLayerDiscriminator``
(``taming/modules/discriminator/model.py``, pix2pix's PatchGAN; ``use_actnorm=False``), NHWC,
pictures in ``[-1, 1]``: every conv is 4x4 with padding 1 and every activation a LeakyReLU of
slope 0.2;

* ``main_0``: conv to ``ndf`` channels, stride 2, with a bias, no norm;
* for ``i`` in ``1 .. n_layers``: ``main_{3i-1}`` conv to ``ndf * min(2**i, 8)`` channels
  without a bias (stride 2, but stride 1 for ``i = n_layers``), ``main_{3i}`` BatchNorm;
* ``main_{3 n_layers + 2}``: conv to 1 channel, stride 1, with a bias: one logit per patch
  (``[B, h, w, 1]``; a 64x64 picture gives 6x6 logits at ``n_layers=3``).

Parameter names are taming's ``nn.Sequential`` indices: our ``main_{N}/kernel`` (HWIO) is
``main.N.weight`` (OIHW), a BatchNorm ``main_{N}/scale`` is ``main.N.weight`` and
``main_{N}/bias`` is ``main.N.bias``; in a taming VQGAN training checkpoint the
discriminator's keys carry the prefix ``loss.discriminator.`` (``ImageTokenizer`` keeps it
under the params key ``loss_discriminator``). :func:`from_taming_discriminator` converts.

BatchNorm: the discriminator runs only inside the training loss, so it normalises with the
statistics of the batch it is given (mean and biased variance over batch, height and width,
eps 1e-5), which is what torch's ``BatchNorm2d`` computes in train mode; no running averages
are kept (taming's ``running_mean`` / ``running_var`` buffers only matter in eval mode, where
taming never runs the discriminator). Each call has its own statistics, as in taming, which
runs the real and the reconstructed pictures through the discriminator separately.

Losses (``taming/modules/losses/vqperceptual.py``): :func:`hinge_d_loss` ``0.5 *
(mean(relu(1 - real)) + mean(relu(1 + fake)))`` for the discriminator and
:func:`generator_loss` ``-mean(fake)`` for the tokenizer.

Init as taming's ``weights_init``: conv kernels ``N(0, 0.02)``, BatchNorm scales
``N(1, 0.02)`` and biases 0; conv biases start at 0 (taming leaves torch's default there).
"""
from __future__ import annotations

import re
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from plug_jax.partitioning import axes as A

BN_EPS = 1e-5  # torch's BatchNorm2d default
LEAK = 0.2
TAMING_PREFIX = "loss.discriminator."


def _conv(features: int, stride: int, bias: bool, name: str) -> nn.Conv:
    return nn.Conv(features, (4, 4), strides=(stride, stride), padding=((1, 1), (1, 1)),
                   use_bias=bias, name=name,
                   kernel_init=nn.with_logical_partitioning(
                       nn.initializers.normal(0.02), (A.PATCH, A.PATCH, A.CHANNELS, A.CHANNELS)),
                   bias_init=nn.with_logical_partitioning(nn.initializers.zeros,
                                                          (A.CHANNELS,)))


class BatchNorm(nn.Module):
    """torch's ``BatchNorm2d`` in train mode over NHWC: batch statistics, no running
    averages. Parameters ``scale`` (init ``N(1, 0.02)``) and ``bias`` ``[C]``."""

    eps: float = BN_EPS

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        scale = self.param("scale", nn.with_logical_partitioning(
            lambda key, shape: 1.0 + 0.02 * jax.random.normal(key, shape), (A.NORM,)), (c,))
        bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros,
                                                               (A.NORM,)), (c,))
        mean = jnp.mean(x, axis=(0, 1, 2))
        var = jnp.mean(jnp.square(x - mean), axis=(0, 1, 2))  # biased, two-pass
        return (x - mean) * jax.lax.rsqrt(var + self.eps) * scale + bias


class PatchDiscriminator(nn.Module):
    """taming's ``NLayerDiscriminator`` (see the module docstring): pictures ``[B, H, W, 3]``
    in ``[-1, 1]`` -> patch logits ``[B, h, w, 1]`` (float32)."""

    ndf: int = 64
    n_layers: int = 3

    @nn.compact
    def __call__(self, images):
        if images.ndim != 4:
            raise ValueError(f"PatchDiscriminator: expected images [batch, height, width, "
                             f"channels] (NHWC), got shape {images.shape}")
        h = nn.leaky_relu(_conv(self.ndf, 2, True, "main_0")(jnp.asarray(images, jnp.float32)),
                          LEAK)
        for i in range(1, self.n_layers + 1):
            stride = 1 if i == self.n_layers else 2
            h = _conv(self.ndf * min(2 ** i, 8), stride, False, f"main_{3 * i - 1}")(h)
            h = nn.leaky_relu(BatchNorm(name=f"main_{3 * i}")(h), LEAK)
        return _conv(1, 1, True, f"main_{3 * self.n_layers + 2}")(h)


def hinge_d_loss(logits_real, logits_fake):
    """taming's ``hinge_d_loss``: ``0.5 * (mean(relu(1 - real)) + mean(relu(1 + fake)))``."""
    real = jnp.mean(nn.relu(1.0 - jnp.asarray(logits_real, jnp.float32)))
    fake = jnp.mean(nn.relu(1.0 + jnp.asarray(logits_fake, jnp.float32)))
    return 0.5 * (real + fake)


def generator_loss(logits_fake):
    """taming's generator term: ``-mean(logits_fake)``."""
    return -jnp.mean(jnp.asarray(logits_fake, jnp.float32))


def from_taming_discriminator(state_dict: Mapping[str, Any]) -> dict:
    """taming ``NLayerDiscriminator`` tensors -> :class:`PatchDiscriminator` params (numpy).

    Reads the keys ``main.N.*`` or ``loss.discriminator.main.N.*`` (a whole VQGAN training
    checkpoint: its other keys are skipped); BatchNorm's running statistics and
    ``num_batches_tracked`` are dropped (batch statistics only, see the module docstring).
    Shapes are checked by the caller's ``apply`` (or against an ``init``)."""
    out: dict[str, dict] = {}
    for key, value in state_dict.items():
        m = re.fullmatch(r"(?:loss\.discriminator\.)?main\.(\d+)\.(weight|bias)", key)
        if m is None:
            continue
        value = np.asarray(value)
        if m.group(2) == "bias":
            leaf = "bias"
        elif value.ndim == 4:  # conv OIHW -> HWIO
            leaf, value = "kernel", np.transpose(value, (2, 3, 1, 0))
        else:
            leaf = "scale"
        out.setdefault(f"main_{m.group(1)}", {})[leaf] = value
    if not out:
        raise ValueError("from_taming_discriminator: no main.N.weight / "
                         "loss.discriminator.main.N.weight key in the state dict; pass taming's "
                         "NLayerDiscriminator or VQGAN training checkpoint state dict")
    return out


__all__ = ["BatchNorm", "PatchDiscriminator", "from_taming_discriminator", "generator_loss",
           "hinge_d_loss"]
