"""A compact VQ-VAE image tokenizer: the one Shop World's text-to-image trains on a CPU.

Why a second tokenizer next to taming's VQGAN (``plug_jax/layers/vqgan.py``): at a width a
2-core CPU can train (``ch`` 32), taming's network learns Shop World pictures very slowly. With
the same optimiser and batches, 200 steps of the VQGAN *without* its quantiser reached 14 dB
PSNR (15 dB with every GroupNorm and attention block removed), while the plain strided-conv
network below reached 25 dB in 200 steps, seven times faster per step
(docs/decisions.md, "M6: a compact tokenizer for Shop World"). The VQGAN stays the layer
released taming / MUGE / OFA checkpoints convert into; this one is for training from scratch.

Network (van den Oord et al. 2017's VQ-VAE shape, NHWC, pictures in ``[-1, 1]``):

* encoder: for each width in ``channels``, a 4x4 stride-2 conv and ReLU (``f = 2 ** len``);
  ``num_res_blocks`` residual blocks (ReLU, 3x3 conv, ReLU, 1x1 conv) at the code grid; a 1x1
  conv to ``embed_dim``;
* quantiser: :class:`~plug_jax.layers.vqgan.VectorQuantizer` with ``normalize=True`` (cosine
  lookup, ViT-VQGAN) and ``legacy=False`` (``beta`` weights the commitment term);
* decoder: a 3x3 conv to ``channels[-1]``, the residual blocks, then for each width in
  reverse a nearest-neighbour x2 and a 3x3 conv with ReLU, and a 3x3 conv to RGB.

Same interface as :class:`~plug_jax.layers.vqgan.VQGAN` (``encode``, ``encode_latents``,
``decode``, ``decode_codes``, ``__call__``), so ``models.ImageTokenizer`` trains either.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp
from flax import linen as nn

from plug_jax.layers.vqgan import VectorQuantizer
from plug_jax.partitioning import axes as A

_PRESETS = {
    # 64x64 -> 16x16 codes (f = 4) of 1024 entries: shapes survive (the Shop World default).
    "shop64_f4": dict(resolution=64, channels=(32, 64), num_res_blocks=2, embed_dim=8,
                      n_embed=1024),
    # 64x64 -> 8x8 codes (f = 8): a quarter of the codes, blurrier shapes.
    "shop64_f8": dict(resolution=64, channels=(32, 64, 64), num_res_blocks=2, embed_dim=8,
                      n_embed=1024),
    # 128x128 -> 16x16 codes (f = 8).
    "shop128_f8": dict(resolution=128, channels=(32, 64, 64), num_res_blocks=2, embed_dim=8,
                       n_embed=1024),
    "tiny": dict(resolution=32, channels=(16, 32), num_res_blocks=1, embed_dim=8,
                 n_embed=64),
}


@dataclasses.dataclass(frozen=True)
class CompactVQConfig:
    resolution: int = 64
    channels: tuple = (32, 64)
    num_res_blocks: int = 2
    embed_dim: int = 8
    n_embed: int = 1024
    in_channels: int = 3
    beta: float = 0.25
    normalize: bool = True
    codebook: str = "straight_through"
    arch: str = "compact"  # what ``image_codes.load_tokenizer`` reads back

    def __post_init__(self):
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        for name in ("resolution", "num_res_blocks", "embed_dim", "n_embed", "in_channels"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < (0 if name == "num_res_blocks" else 1):
                raise ValueError(f"CompactVQConfig: {name} must be a positive int, got {v!r}")
        if not self.channels or min(self.channels) < 1:
            raise ValueError(f"CompactVQConfig: channels must be positive widths, got "
                             f"{self.channels!r}")
        if self.resolution % self.factor:
            raise ValueError(f"CompactVQConfig: resolution {self.resolution} is not divisible "
                             f"by the downsampling factor {self.factor}; fix: use a multiple")
        if self.arch != "compact":
            raise ValueError(f"CompactVQConfig: arch is 'compact', got {self.arch!r}")

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "CompactVQConfig":
        if name not in _PRESETS:
            raise ValueError(f"CompactVQConfig: unknown preset {name!r}; choose one of "
                             f"{sorted(_PRESETS)}")
        return cls(**{**_PRESETS[name], **overrides})

    @property
    def factor(self) -> int:
        return 2 ** len(self.channels)

    @property
    def code_size(self) -> int:
        return self.resolution // self.factor


def _conv(features: int, kernel: int, name: str, stride: int = 1) -> nn.Conv:
    pad = (kernel - stride) // 2 if stride > 1 else kernel // 2
    return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                   padding=((pad, kernel - stride - pad),) * 2 if stride > 1 else
                   ((pad, pad),) * 2, name=name,
                   kernel_init=nn.with_logical_partitioning(
                       nn.initializers.lecun_normal(),
                       (A.PATCH, A.PATCH, A.CHANNELS, A.CHANNELS)),
                   bias_init=nn.with_logical_partitioning(nn.initializers.zeros,
                                                          (A.CHANNELS,)))


class _Residual(nn.Module):
    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        h = _conv(c, 3, "conv1")(nn.relu(x))
        return x + _conv(c, 1, "conv2")(nn.relu(h))


class CompactVQ(nn.Module):
    """``CompactVQConfig`` -> the tokenizer (see the module docstring)."""

    config: CompactVQConfig

    def setup(self):
        cfg = self.config
        self.down = [_conv(c, 4, f"down_{i}", stride=2) for i, c in enumerate(cfg.channels)]
        self.enc_res = [_Residual(name=f"enc_res_{i}") for i in range(cfg.num_res_blocks)]
        self.to_codes = _conv(cfg.embed_dim, 1, "quant_conv")
        self.quantize = VectorQuantizer(cfg.n_embed, cfg.embed_dim, beta=cfg.beta,
                                        legacy=False, codebook=cfg.codebook,
                                        normalize=cfg.normalize)
        self.from_codes = _conv(cfg.channels[-1], 3, "post_quant_conv")
        self.dec_res = [_Residual(name=f"dec_res_{i}") for i in range(cfg.num_res_blocks)]
        widths = list(reversed(cfg.channels))
        self.up = [_conv(c, 3, f"up_{i}") for i, c in enumerate(widths)]
        self.out = _conv(cfg.in_channels, 3, "conv_out")

    def encode_latents(self, images):
        cfg = self.config
        if images.ndim != 4 or images.shape[-1] != cfg.in_channels:
            raise ValueError(f"CompactVQ: expected images [batch, height, width, "
                             f"{cfg.in_channels}] (NHWC), got shape {images.shape}")
        x = jnp.asarray(images, jnp.float32)
        for conv in self.down:
            x = nn.relu(conv(x))
        for block in self.enc_res:
            x = block(x)
        return self.to_codes(nn.relu(x))

    def encode(self, images, train: bool = False):
        return self.quantize(self.encode_latents(images), train=train)

    def decode(self, quantized):
        x = self.from_codes(quantized)
        for block in self.dec_res:
            x = block(x)
        x = nn.relu(x)
        for conv in self.up:
            x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
            x = nn.relu(conv(x))
        return self.out(x)

    def decode_codes(self, codes):
        return self.decode(self.quantize.lookup(codes))

    def __call__(self, images, train: bool = False):
        quantized, codes, terms = self.encode(images, train=train)
        return self.decode(quantized), codes, terms


def config_from_dict(d: dict) -> Any:
    """A tokenizer config from its ``dataclasses.asdict`` (``arch`` picks the class; a dict
    without it is taming's VQGAN)."""
    from plug_jax.layers.vqgan import VQGANConfig
    cls = CompactVQConfig if d.get("arch") == "compact" else VQGANConfig
    fields = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()
                  if k in fields})


def build(config) -> nn.Module:
    """The tokenizer module of ``config`` (``CompactVQConfig`` or ``VQGANConfig``)."""
    if isinstance(config, CompactVQConfig):
        return CompactVQ(config)
    from plug_jax.layers.vqgan import VQGAN
    return VQGAN(config)


__all__ = ["CompactVQ", "CompactVQConfig", "build", "config_from_dict"]
