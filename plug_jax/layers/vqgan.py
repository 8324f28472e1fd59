"""A VQGAN image tokenizer: taming-transformers' encoder, decoder and vector quantiser.

The network equals taming-transformers' ``VQModel`` (Esser et al. 2021,
``taming/models/vqgan.py``) without its loss module: ``encoder``
(``taming.modules.diffusionmodules.model.Encoder``), ``quant_conv`` (1x1 conv, ``z_channels``
-> ``embed_dim``), ``quantize`` (``taming.modules.vqvae.quantize.VectorQuantizer2``),
``post_quant_conv`` (1x1 conv, ``embed_dim`` -> ``z_channels``) and ``decoder``
(``...model.Decoder``). ``plug_jax.layers.vqgan_convert`` reads and writes taming's state dicts.

Images are NHWC floats in ``[-1, 1]`` (taming's value range; taming itself is NCHW, the
converter and the tests transpose, the model never does). An image of ``resolution`` pixels
gives a ``resolution / 2**(len(ch_mult) - 1)`` square grid of codes.

Blocks (as taming builds them):

* ``GroupNorm``: 32 groups, eps 1e-6, per-channel scale and bias; ``swish`` is ``x *
  sigmoid(x)``.
* ``ResnetBlock``: ``norm1, swish, conv1 (3x3), norm2, swish, conv2 (3x3)`` plus the input,
  through ``nin_shortcut`` (1x1 conv) when the channel count changes. No timestep embedding
  (taming's ``temb_ch`` is 0), dropout 0.
* ``AttnBlock``: single-head self-attention over the ``h * w`` positions: ``norm``, 1x1 convs
  ``q``, ``k``, ``v``, ``softmax(q k^T / sqrt(C))``, 1x1 conv ``proj_out``, plus the input.
* ``Downsample``: zero padding of one row at the bottom and one column at the right (torch's
  ``pad (0, 1, 0, 1)``), then a stride-2 3x3 conv without padding.
* ``Upsample``: nearest-neighbour x2, then a 3x3 conv.
* Encoder: ``conv_in``; for each level ``i``, ``num_res_blocks`` ResnetBlocks to ``ch *
  ch_mult[i]`` channels, each followed by an AttnBlock when the level's resolution is in
  ``attn_resolutions``, and a Downsample after every level but the last; the middle
  (``block_1``, ``attn_1``, ``block_2``); ``norm_out``, swish, ``conv_out`` to ``z_channels``.
* Decoder: ``conv_in`` to ``ch * ch_mult[-1]``, the middle, then the levels from the last to
  the first, each with ``num_res_blocks + 1`` ResnetBlocks (and AttnBlocks) and an Upsample
  after every level but level 0; ``norm_out``, swish, ``conv_out`` to ``out_ch``. Taming
  *builds* the decoder's levels in reversed order and prepends each to ``decoder.up``, so
  ``decoder.up.{i}`` is level ``i`` (``ch_mult[i]``) whichever order it runs in; here the
  submodules are named ``up_{i}_block_{j}`` with the same ``i``.

Parameter names mirror taming's module paths (``encoder/down_0_block_1/norm1/scale`` is
``encoder.down.0.block.1.norm1.weight``); conv kernels are HWIO with logical axes
``(patch, patch, channels, channels)`` (replicated by every rule preset), the codebook
``[n_embed, embed_dim]`` has axes ``(vocab, channels)``.

Quantiser (:class:`VectorQuantizer`), as ``VectorQuantizer2`` computes it: for each latent
vector ``z`` (``embed_dim`` channels) the code ``argmin_k |z|^2 + |e_k|^2 - 2 z.e_k``, the
straight-through output ``z + stop_gradient(e_code - z)`` and the loss

* ``legacy=True`` (taming's default, a historical bug kept for its checkpoints):
  ``mean((sg(z_q) - z)^2) + beta * mean((z_q - sg(z))^2)``;
* ``legacy=False``: ``beta * mean((sg(z_q) - z)^2) + mean((z_q - sg(z))^2)``.

``codebook='ema'`` (van den Oord et al. 2017, appendix; not in taming) updates the codebook
by exponential moving averages instead of gradients; see :class:`VectorQuantizer`.
``normalize=True`` (ViT-VQGAN, Yu et al. 2022, section 3.2; not in taming) looks codes up by
cosine similarity: latents and codebook rows are l2-normalised first and the normalised row
is the quantised vector, which keeps far more of the codebook in use when it is trained from
scratch (``plug_jax/layers/vq_compact.py``).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from plug_jax.partitioning import axes as A

CODEBOOKS = ("straight_through", "ema")
GROUPS = 32
NORM_EPS = 1e-6
EMA_COLLECTION = "vq_ema"

_PRESETS: dict[str, dict] = {
    # For tests: 32x32 -> 16x16 codes, attention at the lowest resolution.
    "tiny": dict(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(16,),
                 resolution=32, in_channels=3, out_ch=3, z_channels=16, embed_dim=16,
                 n_embed=64),
    # Shop World 64x64 images -> 8x8 codes (f = 8), narrow enough to train on a 2-core CPU.
    "shop64": dict(ch=32, ch_mult=(1, 1, 2, 2), num_res_blocks=1, attn_resolutions=(8,),
                   resolution=64, in_channels=3, out_ch=3, z_channels=64, embed_dim=64,
                   n_embed=512),
    # taming's standard f = 16 VQGAN (vqgan_imagenet_f16_1024): 256x256 -> 16x16 codes.
    "muge_f16_1024": dict(ch=128, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2,
                          attn_resolutions=(16,), resolution=256, in_channels=3, out_ch=3,
                          z_channels=256, embed_dim=256, n_embed=1024),
}


@dataclasses.dataclass(frozen=True)
class VQGANConfig:
    """taming's ``ddconfig`` plus ``VQModel``'s ``embed_dim`` / ``n_embed`` and the quantiser.

    Presets (:meth:`from_preset`):

    * ``tiny``: ch 32, ch_mult (1, 2), 1 res block, attention at 16, 32x32 -> 16x16 codes of
      64 entries (tests).
    * ``shop64``: 64x64 Shop World images -> 8x8 codes (f = 8) of 512 entries; ch 32,
      ch_mult (1, 1, 2, 2), 1 res block, attention at 8, z 64: trains on a 2-core CPU.
    * ``muge_f16_1024``: a *labelled proxy* for the MUGE text-to-image baseline's tokenizer
      (M6's own VQGAN is not public): taming's standard f = 16 configuration
      (``vqgan_imagenet_f16_1024``: ch 128, ch_mult (1, 1, 2, 2, 4), 2 res blocks, attention
      at 16, z 256, embed_dim 256, 1024 codes), 256x256 -> 16x16 codes.

    ``norm_groups``: GroupNorm's groups (taming fixes 32; its checkpoints need 32). With as
    many groups as channels GroupNorm normalises each channel over the picture alone and
    removes its mean: a narrow network (``ch`` 32) then cannot carry a flat region's colour
    through its last ``norm_out`` (the decoder's output of a uniform picture would be its
    bias). ``shop64`` therefore uses 8 groups (4 channels each).

    ``double_z`` is taming's ddconfig field; a VQGAN needs it False (``quant_conv`` reads
    ``z_channels``). ``dropout`` is always 0 (taming's VQGAN configs).
    """

    ch: int
    ch_mult: tuple
    num_res_blocks: int
    attn_resolutions: tuple
    resolution: int
    in_channels: int
    out_ch: int
    z_channels: int
    embed_dim: int
    n_embed: int
    double_z: bool = False
    beta: float = 0.25
    legacy: bool = True
    codebook: str = "straight_through"
    ema_decay: float = 0.99
    ema_eps: float = 1e-5
    norm_groups: int = GROUPS

    def __post_init__(self):
        object.__setattr__(self, "ch_mult", tuple(self.ch_mult))
        object.__setattr__(self, "attn_resolutions", tuple(self.attn_resolutions))
        self.validate()

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "VQGANConfig":
        if name not in _PRESETS:
            raise ValueError(f"VQGANConfig: unknown preset {name!r}; choose one of "
                             f"{sorted(_PRESETS)}")
        return cls(**{**_PRESETS[name], **overrides})

    @staticmethod
    def presets() -> tuple[str, ...]:
        return tuple(sorted(_PRESETS))

    def replace(self, **kw) -> "VQGANConfig":
        return dataclasses.replace(self, **kw)

    @property
    def num_resolutions(self) -> int:
        return len(self.ch_mult)

    @property
    def code_size(self) -> int:
        """Side of the code grid for a ``resolution`` image."""
        return self.resolution // 2 ** (self.num_resolutions - 1)

    def validate(self) -> None:
        def positive_int(name):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"VQGANConfig: {name} must be a positive int, got {v!r}")

        for name in ("ch", "num_res_blocks", "resolution", "in_channels", "out_ch",
                     "z_channels", "embed_dim", "n_embed"):
            positive_int(name)
        if not self.ch_mult or any(not isinstance(m, int) or m < 1 for m in self.ch_mult):
            raise ValueError(f"VQGANConfig: ch_mult must be a non-empty tuple of positive ints, "
                             f"got {self.ch_mult!r}")
        positive_int("norm_groups")
        g = self.norm_groups
        bad = [self.ch * m for m in self.ch_mult if (self.ch * m) % g]
        if bad:
            raise ValueError(f"VQGANConfig: ch * ch_mult gives {bad[0]} channels, not a multiple "
                             f"of GroupNorm's {g} groups; use ch a multiple of {g}")
        down = 2 ** (self.num_resolutions - 1)
        if self.resolution % down:
            raise ValueError(f"VQGANConfig: resolution {self.resolution} is not divisible by "
                             f"2**(len(ch_mult) - 1) = {down}; use a multiple of {down}")
        if any(not isinstance(r, int) or r < 1 for r in self.attn_resolutions):
            raise ValueError(f"VQGANConfig: attn_resolutions must be positive ints (feature-map "
                             f"sides), got {self.attn_resolutions!r}")
        if self.double_z:
            raise ValueError("VQGANConfig: double_z=True is for taming's KL autoencoder; a "
                             "VQGAN's quant_conv reads z_channels, set double_z=False")
        if self.codebook not in CODEBOOKS:
            raise ValueError(f"VQGANConfig: unknown codebook {self.codebook!r}; choose one of "
                             f"{CODEBOOKS}")
        if not self.beta >= 0:
            raise ValueError(f"VQGANConfig: beta must be >= 0, got {self.beta!r}")
        if not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"VQGANConfig: ema_decay must lie in (0, 1), got "
                             f"{self.ema_decay!r}")
        if not self.ema_eps > 0:
            raise ValueError(f"VQGANConfig: ema_eps must be > 0, got {self.ema_eps!r}")


# ------------------------------------------------------------------------------ blocks

def swish(x):
    return x * jax.nn.sigmoid(x)


def _conv(features: int, kernel: int, name: str, dtype, param_dtype, stride: int = 1,
          padding: Any = None) -> nn.Conv:
    """A conv with torch's default init (kaiming-uniform, a = sqrt(5)) and logical axes."""
    if padding is None:
        padding = ((kernel // 2, kernel // 2),) * 2
    return nn.Conv(
        features, (kernel, kernel), strides=(stride, stride), padding=padding, dtype=dtype,
        param_dtype=param_dtype, name=name,
        kernel_init=nn.with_logical_partitioning(
            nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform"),
            (A.PATCH, A.PATCH, A.CHANNELS, A.CHANNELS)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (A.CHANNELS,)))


class GroupNorm(nn.Module):
    """taming's ``Normalize``: ``GroupNorm(32 groups, eps=1e-6, affine)`` over NHWC, with a
    two-pass variance (as torch computes it). Parameters ``scale``, ``bias`` ``[C]``."""

    groups: int = GROUPS
    eps: float = NORM_EPS
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        if c % self.groups:
            raise ValueError(f"GroupNorm {self.name}: {c} channels are not divisible by "
                             f"{self.groups} groups")
        scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones,
                                                                 (A.NORM,)), (c,),
                           self.param_dtype)
        bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros,
                                                               (A.NORM,)), (c,),
                          self.param_dtype)
        y = jnp.asarray(x, jnp.float32).reshape(x.shape[:-1] + (self.groups, c // self.groups))
        axes = tuple(range(1, y.ndim - 2)) + (y.ndim - 1,)
        mean = jnp.mean(y, axis=axes, keepdims=True)
        var = jnp.mean(jnp.square(y - mean), axis=axes, keepdims=True)
        y = ((y - mean) * jax.lax.rsqrt(var + self.eps)).reshape(x.shape)
        y = y * jnp.asarray(scale, jnp.float32) + jnp.asarray(bias, jnp.float32)
        return y.astype(self.dtype)


class ResnetBlock(nn.Module):
    """taming's ``ResnetBlock`` without timestep embedding (``temb_channels=0``)."""

    out_channels: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    groups: int = GROUPS

    @nn.compact
    def __call__(self, x):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = swish(GroupNorm(self.groups, name="norm1", **kw)(x))
        h = _conv(self.out_channels, 3, "conv1", **kw)(h)
        h = swish(GroupNorm(self.groups, name="norm2", **kw)(h))
        h = _conv(self.out_channels, 3, "conv2", **kw)(h)
        if x.shape[-1] != self.out_channels:
            x = _conv(self.out_channels, 1, "nin_shortcut", **kw)(x)
        return x + h


class AttnBlock(nn.Module):
    """taming's ``AttnBlock``: single-head attention over the positions, 1x1 conv q/k/v/out."""

    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    groups: int = GROUPS

    @nn.compact
    def __call__(self, x):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        b, hh, ww, c = x.shape
        h = GroupNorm(self.groups, name="norm", **kw)(x)
        q = _conv(c, 1, "q", **kw)(h).reshape(b, hh * ww, c)
        k = _conv(c, 1, "k", **kw)(h).reshape(b, hh * ww, c)
        v = _conv(c, 1, "v", **kw)(h).reshape(b, hh * ww, c)
        w = jnp.einsum("bic,bjc->bij", q, k) * (c ** -0.5)
        w = jax.nn.softmax(w.astype(jnp.float32), axis=-1).astype(self.dtype)
        h = jnp.einsum("bij,bjc->bic", w, v).reshape(b, hh, ww, c)
        return x + _conv(c, 1, "proj_out", **kw)(h)


class Downsample(nn.Module):
    """Pad one zero row at the bottom and one column at the right, stride-2 3x3 conv."""

    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
        return _conv(x.shape[-1], 3, "conv", self.dtype, self.param_dtype, stride=2,
                     padding="VALID")(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2, then a 3x3 conv."""

    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
        return _conv(x.shape[-1], 3, "conv", self.dtype, self.param_dtype)(x)


def _mid(x, kw):
    x = ResnetBlock(x.shape[-1], name="mid_block_1", **kw)(x)
    x = AttnBlock(name="mid_attn_1", **kw)(x)
    return ResnetBlock(x.shape[-1], name="mid_block_2", **kw)(x)


class VQGANEncoder(nn.Module):
    """taming's ``Encoder``: images ``[B, H, W, in_channels]`` -> ``[B, h, w, z_channels]``."""

    config: VQGANConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, images):
        cfg, kw = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype)
        nk = dict(kw, groups=cfg.norm_groups)
        h = _conv(cfg.ch, 3, "conv_in", **kw)(jnp.asarray(images, self.dtype))
        res = cfg.resolution  # taming decides attention from the config, not the input
        for i, mult in enumerate(cfg.ch_mult):
            for j in range(cfg.num_res_blocks):
                h = ResnetBlock(cfg.ch * mult, name=f"down_{i}_block_{j}", **nk)(h)
                if res in cfg.attn_resolutions:
                    h = AttnBlock(name=f"down_{i}_attn_{j}", **nk)(h)
            if i != cfg.num_resolutions - 1:
                h = Downsample(name=f"down_{i}_downsample", **kw)(h)
                res //= 2
        h = _mid(h, nk)
        h = swish(GroupNorm(cfg.norm_groups, name="norm_out", **kw)(h))
        return _conv(cfg.z_channels, 3, "conv_out", **kw)(h)


class VQGANDecoder(nn.Module):
    """taming's ``Decoder``: ``[B, h, w, z_channels]`` -> images ``[B, H, W, out_ch]``."""

    config: VQGANConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, z):
        cfg, kw = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype)
        nk = dict(kw, groups=cfg.norm_groups)
        h = _conv(cfg.ch * cfg.ch_mult[-1], 3, "conv_in", **kw)(jnp.asarray(z, self.dtype))
        h = _mid(h, nk)
        res = cfg.code_size
        for i in reversed(range(cfg.num_resolutions)):
            for j in range(cfg.num_res_blocks + 1):
                h = ResnetBlock(cfg.ch * cfg.ch_mult[i], name=f"up_{i}_block_{j}", **nk)(h)
                if res in cfg.attn_resolutions:
                    h = AttnBlock(name=f"up_{i}_attn_{j}", **nk)(h)
            if i != 0:
                h = Upsample(name=f"up_{i}_upsample", **kw)(h)
                res *= 2
        h = swish(GroupNorm(cfg.norm_groups, name="norm_out", **kw)(h))
        return _conv(cfg.out_ch, 3, "conv_out", **kw)(h)


# ------------------------------------------------------------------------------ quantiser

def codebook_init(n_embed: int):
    """taming's init: ``uniform(-1 / n_embed, 1 / n_embed)``."""
    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -1.0 / n_embed, 1.0 / n_embed)
    return init


def ema_state_from_codebook(embedding) -> dict:
    """A ``'vq_ema'`` collection that starts EMA training from a codebook ``[K, D]`` (for
    instance one imported from taming): ``cluster_size`` ones, ``embed_avg`` the codebook."""
    embedding = jnp.asarray(embedding, jnp.float32)
    return {"embedding": embedding, "cluster_size": jnp.ones(embedding.shape[:1], jnp.float32),
            "embed_avg": embedding}


class VectorQuantizer(nn.Module):
    """taming's ``VectorQuantizer2`` (``remap=None``, ``sane_index_shape=True``), or an EMA
    codebook.

    ``__call__(z [B, h, w, D], train=False) -> (z_q, codes [B, h, w] int32, terms)``:
    ``z_q`` is the straight-through ``z + stop_gradient(e[codes] - z)`` (its gradient is the
    identity to ``z``); ``terms`` holds ``loss`` (the quantiser loss, see the module
    docstring), ``commitment`` (``mean((sg(z_q) - z)^2)``), ``codebook``
    (``mean((z_q - sg(z))^2)``; the same value, other gradients), ``perplexity``
    (``exp(-sum_k p_k log p_k)``, ``p_k`` the fraction of this batch's positions given code
    ``k``: the effective number of codes in use) and ``usage`` (the fraction of the
    codebook used in this batch).

    ``codebook='straight_through'``: the codebook is the parameter ``embedding`` ``[K, D]``,
    trained by the loss's codebook term. ``codebook='ema'``: no codebook parameter; the
    collection ``'vq_ema'`` holds ``embedding`` ``[K, D]``, ``cluster_size`` ``[K]`` and
    ``embed_avg`` ``[K, D]`` (initialised to the taming init, ones, and the codebook), the
    loss is the commitment term alone (``beta * commitment``), and when ``train=True`` and
    ``'vq_ema'`` is mutable each call (not ``init``) updates it from the batch, after
    quantising with the old codebook. With ``x_i`` the ``N`` latent vectors, ``c_i`` their
    codes, decay ``d`` and ``eps``::

        n_k = #{i : c_i = k}                   s_k = sum_{i : c_i = k} x_i
        cluster_size_k <- d * cluster_size_k + (1 - d) * n_k
        embed_avg_k    <- d * embed_avg_k    + (1 - d) * s_k
        n = sum_k cluster_size_k                         (after the update)
        smoothed_k = (cluster_size_k + eps) / (n + K * eps) * n   (Laplace smoothing)
        embedding_k = embed_avg_k / smoothed_k

    Distances and the update run in float32 whatever ``dtype`` is.
    """

    n_embed: int
    embed_dim: int
    beta: float = 0.25
    legacy: bool = True
    codebook: str = "straight_through"
    ema_decay: float = 0.99
    ema_eps: float = 1e-5
    normalize: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def setup(self):
        shape = (self.n_embed, self.embed_dim)
        init = codebook_init(self.n_embed)
        if self.codebook == "straight_through":
            self.embedding = self.param("embedding", nn.with_logical_partitioning(
                init, (A.VOCAB, A.CHANNELS)), shape, self.param_dtype)
        elif self.codebook == "ema":
            self.ema_embedding = self.variable(
                EMA_COLLECTION, "embedding", lambda: init(self.make_rng("params"), shape))
            self.cluster_size = self.variable(
                EMA_COLLECTION, "cluster_size", lambda: jnp.ones((self.n_embed,), jnp.float32))
            self.embed_avg = self.variable(EMA_COLLECTION, "embed_avg",
                                           lambda: self.ema_embedding.value)
        else:
            raise ValueError(f"VectorQuantizer: unknown codebook {self.codebook!r}; choose one "
                             f"of {CODEBOOKS}")

    def codebook_vectors(self):
        table = self.embedding if self.codebook == "straight_through" else \
            self.ema_embedding.value
        table = jnp.asarray(table, jnp.float32)
        return _l2_normalize(table) if self.normalize else table

    def lookup(self, codes):
        """Codes ``[B, h, w]`` -> code vectors ``[B, h, w, D]`` (taming's
        ``get_codebook_entry``, NHWC)."""
        return jnp.take(self.codebook_vectors(), jnp.asarray(codes, jnp.int32),
                        axis=0).astype(self.dtype)

    def __call__(self, z, train: bool = False):
        if z.shape[-1] != self.embed_dim:
            raise ValueError(f"VectorQuantizer: latents have {z.shape[-1]} channels, the "
                             f"codebook {self.embed_dim}")
        e = self.codebook_vectors()
        z = jnp.asarray(z, jnp.float32)
        if self.normalize:
            z = _l2_normalize(z)
        flat = z.reshape(-1, self.embed_dim)
        d = (jnp.sum(flat ** 2, axis=1, keepdims=True) + jnp.sum(e ** 2, axis=1)
             - 2 * jnp.einsum("nd,kd->nk", flat, e))
        idx = jnp.argmin(d, axis=1).astype(jnp.int32)
        z_q = jnp.take(e, idx, axis=0).reshape(z.shape)
        sg = jax.lax.stop_gradient
        commitment = jnp.mean((sg(z_q) - z) ** 2)
        codebook = jnp.mean((z_q - sg(z)) ** 2)
        if self.codebook == "ema":
            loss = self.beta * commitment
        elif self.legacy:
            loss = commitment + self.beta * codebook
        else:
            loss = self.beta * commitment + codebook
        z_q = z + sg(z_q - z)
        onehot = jax.nn.one_hot(idx, self.n_embed, dtype=jnp.float32)
        p = jnp.mean(onehot, axis=0)
        terms = {"loss": loss, "commitment": commitment, "codebook": codebook,
                 "perplexity": jnp.exp(-jnp.sum(p * jnp.log(p + 1e-10))),
                 "usage": jnp.mean((p > 0).astype(jnp.float32))}
        if (self.codebook == "ema" and train and self.is_mutable_collection(EMA_COLLECTION)
                and not self.is_initializing()):
            self._ema_update(sg(flat), sg(onehot))
        return z_q.astype(self.dtype), idx.reshape(z.shape[:-1]), terms

    def _ema_update(self, flat, onehot):
        decay, k = self.ema_decay, self.n_embed
        size = decay * self.cluster_size.value + (1 - decay) * jnp.sum(onehot, axis=0)
        avg = decay * self.embed_avg.value + (1 - decay) * (onehot.T @ flat)
        n = jnp.sum(size)
        smoothed = (size + self.ema_eps) / (n + k * self.ema_eps) * n
        self.cluster_size.value = size
        self.embed_avg.value = avg
        self.ema_embedding.value = avg / smoothed[:, None]


def _l2_normalize(x, eps: float = 1e-6):
    return x / (jnp.linalg.norm(x, axis=-1, keepdims=True) + eps)


# ------------------------------------------------------------------------------ the model

class VQGAN(nn.Module):
    """taming's ``VQModel`` network (no loss module): an image tokenizer.

    * ``encode(images, train=False) -> (quantized [B, h, w, embed_dim], codes [B, h, w],
      loss_terms)`` (``loss_terms`` as :class:`VectorQuantizer` returns them);
    * ``encode_latents(images)``: the latents after ``quant_conv``, before quantisation;
    * ``decode(quantized) -> images``; ``decode_codes(codes [B, h, w] int) -> images``;
    * ``__call__(images, train=False) -> (reconstruction, codes, aux)`` with ``aux`` the
      loss terms. With ``codebook='ema'`` pass ``mutable=['vq_ema']`` to update the codebook.
    """

    config: VQGANConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def setup(self):
        cfg, kw = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype)
        self.encoder = VQGANEncoder(cfg, **kw)
        self.quant_conv = _conv(cfg.embed_dim, 1, "quant_conv", **kw)
        self.quantize = VectorQuantizer(cfg.n_embed, cfg.embed_dim, beta=cfg.beta,
                                        legacy=cfg.legacy, codebook=cfg.codebook,
                                        ema_decay=cfg.ema_decay, ema_eps=cfg.ema_eps, **kw)
        self.post_quant_conv = _conv(cfg.z_channels, 1, "post_quant_conv", **kw)
        self.decoder = VQGANDecoder(cfg, **kw)

    def encode_latents(self, images):
        if images.ndim != 4 or images.shape[-1] != self.config.in_channels:
            raise ValueError(f"VQGAN: expected images [batch, height, width, "
                             f"{self.config.in_channels}] (NHWC), got shape {images.shape}")
        return self.quant_conv(self.encoder(images))

    def encode(self, images, train: bool = False):
        return self.quantize(self.encode_latents(images), train=train)

    def decode(self, quantized):
        return self.decoder(self.post_quant_conv(quantized))

    def decode_codes(self, codes):
        return self.decode(self.quantize.lookup(codes))

    def __call__(self, images, train: bool = False):
        quantized, codes, terms = self.encode(images, train=train)
        return self.decode(quantized), codes, terms
