"""A stack of identical layers, scanned (``nn.scan`` over a ``layers`` axis) or unrolled.

Scanned parameters carry a leading ``layers`` dimension (logical axis
``layers``); the unrolled layout names the layers ``layers_0 .. layers_{n-1}``
and is what converters and debuggers usually want. :func:`unstack_layers` and
:func:`stack_layers` convert between the two.

Remat (activation checkpointing) policies, by name:

==================  =====================================================
``none``            no rematerialisation (keep every activation)
``full``            save nothing; recompute the whole layer in the backward
``dots``            save matmul outputs (``checkpoint_dots``)
``dots_no_batch``   save matmul outputs without batch dims (weights-like)
``minimal``         alias of ``dots_no_batch``
==================  =====================================================

The layer class must be called as ``layer(x, *broadcast_args) -> (x, aux)``
and take everything else (sizes, ``decode``, ``deterministic``) as attributes.
Cache variables are stacked on axis 1 so every cache leaf keeps batch on axis 0.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import linen as nn

from plug_jax.partitioning import axes as A

REMAT_POLICIES: dict[str, Callable | None] = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "minimal": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def check_remat_policy(name: str) -> None:
    if name != "none" and name not in REMAT_POLICIES:
        raise ValueError(f"unknown remat_policy {name!r}; choose one of "
                         f"{['none'] + sorted(REMAT_POLICIES)}")


class LayerStack(nn.Module):
    """Applies ``num_layers`` copies of ``layer_cls`` in sequence."""

    layer_cls: Any
    num_layers: int
    layer_kwargs: tuple = ()  # ((name, value), ...) passed to every layer
    scan: bool = True
    remat_policy: str = "none"

    @nn.compact
    def __call__(self, x, *args):
        check_remat_policy(self.remat_policy)
        cls = self.layer_cls
        if self.remat_policy != "none":
            cls = nn.remat(cls, policy=REMAT_POLICIES[self.remat_policy],
                           prevent_cse=not self.scan)
        kwargs = dict(self.layer_kwargs)
        if self.scan:
            scanned = nn.scan(
                cls,
                variable_axes={"params": 0, "cache": 1, "intermediates": 0, "aux_loss": 0,
                               "moe_metrics": 0},
                split_rngs={"params": True, "dropout": True},
                in_axes=(nn.broadcast,) * len(args),
                length=self.num_layers,
                metadata_params={nn.PARTITION_NAME: A.LAYERS},
            )
            x, _ = scanned(**kwargs, name="layers")(x, *args)
        else:
            for i in range(self.num_layers):
                x, _ = cls(**kwargs, name=f"layers_{i}")(x, *args)
        return x


def unstack_layers(tree: dict, num_layers: int, key: str = "layers") -> dict:
    """``{key: stacked}`` -> ``{key_0: layer0, ...}`` (the other entries are kept)."""
    out = {k: v for k, v in tree.items() if k != key}
    stacked = tree[key]
    for i in range(num_layers):
        out[f"{key}_{i}"] = jax.tree_util.tree_map(lambda a, i=i: a[i], stacked)
    return out


def stack_layers(tree: dict, num_layers: int, key: str = "layers") -> dict:
    """Inverse of :func:`unstack_layers`."""
    out = {k: v for k, v in tree.items() if not k.startswith(f"{key}_")}
    layers = [tree[f"{key}_{i}"] for i in range(num_layers)]
    out[key] = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *layers)
    return out
