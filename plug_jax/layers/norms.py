"""LayerNorm and RMSNorm, always computed in float32."""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from plug_jax.partitioning import axes as A


def layer_norm(x, scale, bias=None, epsilon: float = 1e-5, dtype: Any = jnp.float32):
    """LayerNorm of ``x`` over its last axis with given ``scale`` / ``bias`` (float32 math);
    what :class:`LayerNorm` computes, for reusing a norm's parameters elsewhere."""
    xf = jnp.asarray(x, jnp.float32)
    mean = jnp.mean(xf, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(xf - mean), axis=-1, keepdims=True)
    y = (xf - mean) * jax.lax.rsqrt(var + epsilon) * jnp.asarray(scale, jnp.float32)
    if bias is not None:
        y = y + jnp.asarray(bias, jnp.float32)
    return jnp.asarray(y, dtype)


class LayerNorm(nn.Module):
    """LayerNorm over the last axis with learned scale and (optional) bias."""

    epsilon: float = 1e-5
    use_bias: bool = True
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        features = x.shape[-1]
        scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, (A.NORM,)),
                           (features,), self.param_dtype)
        bias = None
        if self.use_bias:
            bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, (A.NORM,)),
                              (features,), self.param_dtype)
        return layer_norm(x, scale, bias, self.epsilon, self.dtype)


class RMSNorm(nn.Module):
    """Root-mean-square norm (T5 / LLaMA style): no mean subtraction, no bias."""

    epsilon: float = 1e-6
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        features = x.shape[-1]
        xf = jnp.asarray(x, jnp.float32)
        y = xf * jax.lax.rsqrt(jnp.mean(jnp.square(xf), axis=-1, keepdims=True) + self.epsilon)
        scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, (A.NORM,)),
                           (features,), self.param_dtype)
        return jnp.asarray(y * jnp.asarray(scale, jnp.float32), self.dtype)

