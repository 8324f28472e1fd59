"""Feed-forward blocks: plain (GELU, ReLU, ...) and gated (SwiGLU / GeGLU)."""
from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import linen as nn

from plug_jax.layers.dense import DenseGeneral, default_kernel_init
from plug_jax.partitioning import axes as A
from plug_jax.partitioning.constraints import with_logical_constraint

ACTIVATIONS: dict[str, Callable] = {
    "gelu": functools.partial(jax.nn.gelu, approximate=False),  # exact (erf) GELU
    "gelu_tanh": functools.partial(jax.nn.gelu, approximate=True),  # "gelu_new" in GPT-2
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
}


def get_activation(name: str) -> Callable:
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}") from None


class MLP(nn.Module):
    """``wo(act(wi(x)))``, or ``wo(act(wi_0(x)) * wi_1(x))`` when ``gated``.

    ``gated=True`` with ``activation='silu'`` is SwiGLU; with ``'gelu'`` GeGLU.
    """

    hidden_dim: int
    activation: str = "gelu"
    gated: bool = False
    use_bias: bool = True
    dropout_rate: float = 0.0
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    kernel_init: Any = default_kernel_init
    out_kernel_init: Any = None

    @nn.compact
    def __call__(self, x, *, deterministic: bool = True):
        act = get_activation(self.activation)
        features = x.shape[-1]
        dense = functools.partial(DenseGeneral, use_bias=self.use_bias, dtype=self.dtype,
                                  param_dtype=self.param_dtype, kernel_init=self.kernel_init)
        if self.gated:
            h = act(dense(self.hidden_dim, (A.EMBED, A.MLP), name="wi_0")(x))
            h = h * dense(self.hidden_dim, (A.EMBED, A.MLP), name="wi_1")(x)
        else:
            h = act(dense(self.hidden_dim, (A.EMBED, A.MLP), name="wi")(x))
        h = with_logical_constraint(h, (A.ACT_BATCH, A.ACT_LENGTH, A.ACT_MLP))
        h = nn.Dropout(self.dropout_rate)(h, deterministic=deterministic)
        out = DenseGeneral(features, (A.MLP, A.EMBED), use_bias=self.use_bias, dtype=self.dtype,
                           param_dtype=self.param_dtype,
                           kernel_init=self.out_kernel_init or self.kernel_init, name="wo")(h)
        return with_logical_constraint(out, (A.ACT_BATCH, A.ACT_LENGTH, A.ACT_EMBED))
