"""Vision front ends: ViT patch embedding, video tubelets, class token, learned positions.

* :class:`PatchEmbed` -- images ``[B, H, W, C]`` (NHWC, float pixels) -> ``[B, N, D]`` with
  ``N = (H / p) * (W / p)`` patches in row-major order (as ``Conv2d(kernel=stride=p)`` followed
  by ``flatten(2).transpose(1, 2)`` in PyTorch). A convolution whose kernel equals its stride
  is a matmul over non-overlapping patches, and that is how it is computed (patchify, then one
  ``dot_general``): exact, and a plain GEMM on every backend.
* :class:`TubeletEmbed` -- video ``[B, T, H, W, C]`` -> ``[B, T', N, D]`` through a 3-D
  convolution with kernel ``(t, p, p)``, spatial stride ``p`` and a configurable temporal
  stride / padding (mPLUG-2: ``t=1``, or ``t=3`` with stride 2). ``t=1`` gives per-frame
  patches, equal to :class:`PatchEmbed` applied to each frame with the same kernel.
* :class:`ClassToken` -- prepends a learned ``[D]`` token.
* :class:`PositionEmbedding` -- adds a learned ``[L, D]`` table to ``[..., L, D]``.
* :func:`resize_positions` -- bilinearly resizes the grid part of a learned position table
  (loading a checkpoint at another resolution), keeping the prefix rows (class token).

Kernels carry the logical axes ``patch``, ``channels``, ``frames`` and ``embed``; conv
kernels are stored in the ``[(t,) p, p, C, D]`` (DHWIO / HWIO) layout.
"""
from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from jax import lax

from plug_jax.layers.dense import DenseGeneral, default_kernel_init
from plug_jax.partitioning import axes as A
from plug_jax.partitioning.constraints import with_logical_constraint


def _pair(x: int | Sequence[int], what: str) -> tuple[int, int]:
    if isinstance(x, (int, np.integer)):
        return int(x), int(x)
    x = tuple(int(v) for v in x)
    if len(x) != 2:
        raise ValueError(f"{what} must be an int or a pair (h, w), got {x}")
    return x


def patchify(images, patch_size: int | Sequence[int]):
    """``[B, H, W, C]`` -> ``[B, H/ph, W/pw, ph, pw, C]`` (non-overlapping patches)."""
    ph, pw = _pair(patch_size, "patch_size")
    if images.ndim != 4:
        raise ValueError(f"patchify expects images [batch, height, width, channels], got shape "
                         f"{images.shape}")
    b, h, w, c = images.shape
    if h % ph or w % pw:
        raise ValueError(f"image size {h}x{w} is not divisible by the patch size {ph}x{pw}; "
                         f"resize or crop the images to a multiple of the patch size")
    x = images.reshape(b, h // ph, ph, w // pw, pw, c)
    return x.transpose(0, 1, 3, 2, 4, 5)


class PatchEmbed(nn.Module):
    """ViT patch embedding: ``[B, H, W, C]`` -> ``[B, (H/p)*(W/p), features]``.

    Parameters: ``kernel`` ``[p, p, C, features]`` (axes ``patch, patch, channels, embed``) and,
    with ``use_bias``, ``bias`` ``[features]``. ``return_grid`` returns ``[B, H/p, W/p, D]``.
    """

    features: int
    patch_size: int | Sequence[int]
    use_bias: bool = True
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    kernel_init: Any = default_kernel_init
    bias_init: Any = nn.initializers.zeros

    @nn.compact
    def __call__(self, images, *, return_grid: bool = False):
        ph, pw = _pair(self.patch_size, "PatchEmbed.patch_size")
        patches = patchify(images, (ph, pw))  # [B, gh, gw, ph, pw, C]
        b, gh, gw, _, _, c = patches.shape
        fan_in = ph * pw * c

        def init(key, shape, dtype):  # fan-in aware, like DenseGeneral
            return jnp.reshape(self.kernel_init(key, (fan_in, self.features), dtype), shape)

        kernel = self.param("kernel", nn.with_logical_partitioning(
            init, (A.PATCH, A.PATCH, A.CHANNELS, A.EMBED)), (ph, pw, c, self.features),
            self.param_dtype)
        x = lax.dot_general(jnp.asarray(patches, self.dtype), jnp.asarray(kernel, self.dtype),
                            (((3, 4, 5), (0, 1, 2)), ((), ())))
        if self.use_bias:
            bias = self.param("bias", nn.with_logical_partitioning(self.bias_init, (A.EMBED,)),
                              (self.features,), self.param_dtype)
            x = x + jnp.asarray(bias, self.dtype)
        if return_grid:
            return x
        x = x.reshape(b, gh * gw, self.features)
        return with_logical_constraint(x, (A.ACT_BATCH, A.ACT_IMAGE_TOKENS, A.ACT_EMBED))


class ConvStem(nn.Module):
    """A convolutional stem in place of :class:`PatchEmbed` (the "hybrid" ViT of Dosovitskiy
    et al. 2021, whose tokens are CNN features): ``log2(p)`` blocks of a 3x3 convolution
    (stride 1, ReLU) and 2x2 max-pooling, channels ``min(32 * 2**i, features)``, then a 1x1
    projection to ``features``: ``[B, H, W, C]`` -> ``[B, (H/p)*(W/p), features]``, the same
    tokens as a ``p`` x ``p`` patch embedding. A ViT trained from scratch with a patch
    embedding learns object *shapes* slowly on small data (``benchmarks/vision_probe.py``);
    convolutions see edges and are translation-equivariant from the first step. No released
    checkpoint has this stem (the converters refuse it); Shop World's tiny experiments can
    use it.

    Parameters: ``conv_{i}/{kernel [3, 3, C_in, C_out], bias}``, ``proj/{kernel, bias}``.
    """

    features: int
    patch_size: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, images):
        p = int(self.patch_size)
        n = p.bit_length() - 1
        if p < 2 or (1 << n) != p:
            raise ValueError(f"ConvStem: patch_size {p} is not a power of two >= 2; use "
                             f"stem='patch' or a patch size such as 4, 8 or 16")
        x = jnp.asarray(images, self.dtype)
        for i in range(n):
            x = nn.Conv(min(32 << i, self.features), (3, 3), padding="SAME", dtype=self.dtype,
                        param_dtype=self.param_dtype, kernel_init=nn.with_logical_partitioning(
                            nn.initializers.he_normal(), (None, None, None, None)),
                        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (None,)),
                        name=f"conv_{i}")(x)
            x = nn.max_pool(nn.relu(x), (2, 2), (2, 2))
        b, gh, gw, c = x.shape
        x = DenseGeneral(self.features, (None, A.EMBED), dtype=self.dtype,
                         param_dtype=self.param_dtype, name="proj")(x.reshape(b, gh * gw, c))
        return with_logical_constraint(x, (A.ACT_BATCH, A.ACT_IMAGE_TOKENS, A.ACT_EMBED))


class TubeletEmbed(nn.Module):
    """Video tubelet embedding (a Conv3d): ``[B, T, H, W, C]`` -> ``[B, T', (H/p)*(W/p), D]``.

    ``tubelet_size`` is the temporal kernel ``t``; ``temporal_stride`` defaults to ``t``
    (non-overlapping tubelets) and ``temporal_padding`` zero-pads both ends of the time axis,
    so ``T' = (T + 2 * temporal_padding - t) // temporal_stride + 1``. The spatial kernel and
    stride are ``patch_size``. Parameters: ``kernel`` ``[t, p, p, C, D]`` (axes
    ``frames, patch, patch, channels, embed``) and, with ``use_bias``, ``bias`` ``[D]``.
    """

    features: int
    patch_size: int | Sequence[int]
    tubelet_size: int = 1
    temporal_stride: int | None = None
    temporal_padding: int = 0
    use_bias: bool = True
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    kernel_init: Any = default_kernel_init
    bias_init: Any = nn.initializers.zeros

    @nn.compact
    def __call__(self, video):
        ph, pw = _pair(self.patch_size, "TubeletEmbed.patch_size")
        t = int(self.tubelet_size)
        st = int(self.temporal_stride or t)
        if video.ndim != 5:
            raise ValueError(f"TubeletEmbed expects video [batch, frames, height, width, "
                             f"channels], got shape {video.shape}")
        b, frames, h, w, c = video.shape
        if h % ph or w % pw:
            raise ValueError(f"frame size {h}x{w} is not divisible by the patch size {ph}x{pw}; "
                             f"resize or crop the frames to a multiple of the patch size")
        if frames + 2 * self.temporal_padding < t:
            raise ValueError(f"TubeletEmbed: {frames} frames (+ padding "
                             f"{2 * self.temporal_padding}) are fewer than the temporal kernel "
                             f"{t}")
        fan_in = t * ph * pw * c

        def init(key, shape, dtype):
            return jnp.reshape(self.kernel_init(key, (fan_in, self.features), dtype), shape)

        kernel = self.param("kernel", nn.with_logical_partitioning(
            init, (A.FRAMES, A.PATCH, A.PATCH, A.CHANNELS, A.EMBED)),
            (t, ph, pw, c, self.features), self.param_dtype)
        pad = self.temporal_padding
        x = lax.conv_general_dilated(
            jnp.asarray(video, self.dtype), jnp.asarray(kernel, self.dtype),
            window_strides=(st, ph, pw), padding=((pad, pad), (0, 0), (0, 0)),
            dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))
        if self.use_bias:
            bias = self.param("bias", nn.with_logical_partitioning(self.bias_init, (A.EMBED,)),
                              (self.features,), self.param_dtype)
            x = x + jnp.asarray(bias, self.dtype)
        x = x.reshape(b, x.shape[1], x.shape[2] * x.shape[3], self.features)
        return with_logical_constraint(
            x, (A.ACT_BATCH, A.ACT_FRAMES, A.ACT_IMAGE_TOKENS, A.ACT_EMBED))


class ClassToken(nn.Module):
    """Prepends a learned token: ``[..., N, D]`` -> ``[..., 1 + N, D]``.

    Parameter: ``embedding`` ``[D]`` (axis ``embed``).
    """

    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    embedding_init: Any = default_kernel_init

    @nn.compact
    def __call__(self, x):
        d = x.shape[-1]
        cls = self.param("embedding", nn.with_logical_partitioning(self.embedding_init,
                                                                    (A.EMBED,)),
                         (d,), self.param_dtype)
        cls = jnp.broadcast_to(jnp.asarray(cls, self.dtype), x.shape[:-2] + (1, d))
        return jnp.concatenate([cls, jnp.asarray(x, self.dtype)], axis=-2)


class PositionEmbedding(nn.Module):
    """Adds a learned table ``embedding`` ``[num_positions, D]`` (axes ``None, embed``) to
    ``[..., num_positions, D]``. A different length is an error naming
    :func:`resize_positions` (resize the table once when loading a checkpoint)."""

    num_positions: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    embedding_init: Any = default_kernel_init

    @nn.compact
    def __call__(self, x):
        d = x.shape[-1]
        table = self.param("embedding", nn.with_logical_partitioning(self.embedding_init,
                                                                      (None, A.EMBED)),
                           (self.num_positions, d), self.param_dtype)
        if x.shape[-2] != self.num_positions:
            raise ValueError(f"PositionEmbedding {self.name}: input has {x.shape[-2]} tokens but "
                             f"the table has {self.num_positions} positions; use an input of the "
                             f"configured size or resize the table with resize_positions")
        return jnp.asarray(x, self.dtype) + jnp.asarray(table, self.dtype)


def resize_positions(table, new_grid: int | Sequence[int], num_prefix_tokens: int = 1, *,
                     old_grid: int | Sequence[int] | None = None, method: str = "bilinear",
                     antialias: bool = False):
    """Resizes the grid part of a learned position table to ``new_grid``.

    ``table``: ``[num_prefix_tokens + gh * gw, D]`` (or with a leading axis of 1, as OpenAI
    CLIP / timm store it). The first ``num_prefix_tokens`` rows (class / register tokens) are
    kept as they are; the rest, a row-major ``gh x gw`` grid (square unless ``old_grid`` says
    otherwise), is resized to ``new_grid`` (an int for a square grid, or ``(h, w)``).

    ``method='bilinear'`` with ``antialias=False`` (the default) is half-pixel-centred bilinear
    interpolation, the same as ``torch.nn.functional.interpolate(mode='bilinear',
    align_corners=False)``; ``'bicubic'`` and ``antialias=True`` (for large down-sizing) are
    passed to :func:`jax.image.resize`. The grid is resized in float32 and the result has the
    table's dtype; a table already of the requested grid is returned unchanged.
    """
    arr = jnp.asarray(table)
    lead = arr.ndim == 3
    if lead:
        if arr.shape[0] != 1:
            raise ValueError(f"resize_positions: a 3-D table must have a leading axis of 1, got "
                             f"shape {arr.shape}")
        arr = arr[0]
    if arr.ndim != 2:
        raise ValueError(f"resize_positions expects a table [positions, dim], got shape "
                         f"{np.shape(table)}")
    n, d = arr.shape
    grid_len = n - num_prefix_tokens
    if old_grid is None:
        side = int(round(grid_len ** 0.5)) if grid_len > 0 else 0
        if side * side != grid_len or side == 0:
            raise ValueError(f"resize_positions: {n} positions minus {num_prefix_tokens} prefix "
                             f"tokens = {grid_len} is not a square grid; pass old_grid=(h, w)")
        old = (side, side)
    else:
        old = _pair(old_grid, "old_grid")
        if old[0] * old[1] != grid_len:
            raise ValueError(f"resize_positions: old_grid {old} has {old[0] * old[1]} cells but "
                             f"the table has {grid_len} grid positions")
    new = _pair(new_grid, "new_grid")
    if min(new) < 1:
        raise ValueError(f"resize_positions: new_grid must be positive, got {new}")
    if new == old:
        return table
    prefix, grid = arr[:num_prefix_tokens], arr[num_prefix_tokens:]
    grid = grid.reshape(old[0], old[1], d).astype(jnp.float32)
    grid = jax.image.resize(grid, (new[0], new[1], d), method=method, antialias=antialias)
    out = jnp.concatenate([prefix, grid.reshape(new[0] * new[1], d).astype(arr.dtype)], axis=0)
    return out[None] if lead else out
