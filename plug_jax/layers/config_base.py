"""What every model config shares: dtypes from their names, ``replace``, basic checks.

A field-less mixin for the frozen config dataclasses (family configs, the CLIP towers, the
shared decoder), which define ``dtype``, ``param_dtype`` and, for :meth:`check_basics`,
``activation`` and ``remat_policy``.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

from plug_jax.layers.mlp import ACTIVATIONS
from plug_jax.layers.scan import check_remat_policy


class ConfigBase:
    def check_basics(self, owner: str) -> None:
        """One-line errors for an unknown activation or remat policy."""
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"{owner}: unknown activation {self.activation!r}; choose one of "
                             f"{sorted(ACTIVATIONS)}")
        check_remat_policy(self.remat_policy)

    @property
    def compute_dtype(self) -> Any:
        return jnp.dtype(self.dtype)

    @property
    def params_dtype(self) -> Any:
        return jnp.dtype(self.param_dtype)

    def replace(self, **kw):
        return dataclasses.replace(self, **kw)
