"""Dense (general) projection with logical axis names on its kernel."""
from __future__ import annotations

from typing import Any, Callable, ClassVar, Sequence

import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from jax import lax

from plug_jax.layers import quant

Initializer = Callable[..., Any]
default_kernel_init = nn.initializers.normal(stddev=0.02)


def _canon(x: int | Sequence[int]) -> tuple[int, ...]:
    return (x,) if isinstance(x, int) else tuple(x)


class DenseGeneral(nn.Module):
    """A linear map over one or more trailing input axes to one or more output axes.

    Attributes:
      features: output feature shape (int or tuple).
      kernel_axes: logical names of the kernel, ``len(in axes) + len(features)``.
      axis: input axes contracted (default: the last one).
      use_bias: add a bias of shape ``features`` (logical names: the output part
        of ``kernel_axes``).
      dtype: compute dtype; ``param_dtype``: storage dtype of the parameters.
    """

    QUANT_KIND: ClassVar[str] = "dense"  # reads bf16 / int8 kernels (layers/quant.py)

    features: int | Sequence[int]
    kernel_axes: Sequence[str | None]
    axis: int | Sequence[int] = -1
    use_bias: bool = True
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    kernel_init: Initializer = default_kernel_init
    bias_init: Initializer = nn.initializers.zeros

    @nn.compact
    def __call__(self, x):
        features = _canon(self.features)
        axis = tuple(a % x.ndim for a in _canon(self.axis))
        in_shape = tuple(x.shape[a] for a in axis)
        if len(self.kernel_axes) != len(in_shape) + len(features):
            raise ValueError(
                f"DenseGeneral {self.name}: kernel_axes {tuple(self.kernel_axes)} do not "
                f"match kernel rank {len(in_shape) + len(features)}")
        kernel_shape = in_shape + features
        fan_in = int(np.prod(in_shape))

        def init(key, shape, dtype):
            # Initialise as a 2-D matrix so fan-in based initialisers see the true fan-in.
            flat = self.kernel_init(key, (fan_in, int(np.prod(features))), dtype)
            return jnp.reshape(flat, shape)

        kernel = self.param(
            "kernel", nn.with_logical_partitioning(init, tuple(self.kernel_axes)),
            kernel_shape, self.param_dtype)
        # Weight-only low precision (layers/quant.py): a bf16 or int8 kernel is cast inside
        # the matmul; an int8 kernel's per-output-channel scale multiplies the output.
        scale = (self.get_variable("params", quant.KERNEL_SCALE)
                 if self.has_variable("params", quant.KERNEL_SCALE) else None)
        kernel, x = quant.matmul_operand(kernel, self.dtype, x)
        contract = (axis, tuple(range(len(axis))))
        y = lax.dot_general(x, kernel, (contract, ((), ())))
        if scale is not None:
            y = y * jnp.asarray(scale, self.dtype)
        if self.use_bias:
            bias = self.param(
                "bias",
                nn.with_logical_partitioning(self.bias_init,
                                             tuple(self.kernel_axes[len(in_shape):])),
                features, self.param_dtype)
            y = y + jnp.asarray(bias, self.dtype)
        return y
