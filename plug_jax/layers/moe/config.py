"""Mixture-of-experts fields shared by the family configs, and dense/MoE interleaving.

A family config inherits :class:`MoeFields` (``GPT3Config(MoeFields)``, ...). With
``num_experts = 0`` the model is dense. Otherwise the FFN of every ``moe_every_n``-th layer
(1-based: layers ``n, 2n, ...``; ModelScope GPT-MoE: every second layer) is a
:class:`~plug_jax.layers.moe.MoeLayer`, and a layer stack is scanned over groups of
``moe_every_n`` layers (:class:`MoeGroup`) so every scan step has the same parameter shapes.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from flax import linen as nn

from plug_jax.layers.moe.layer import MoeLayer


@dataclasses.dataclass(frozen=True)
class MoeFields:
    num_experts: int = 0
    moe_every_n: int = 2
    moe_top_k: int = 1
    moe_router: str = "topk"  # or 'prototype' (M6-T expert prototyping, top_k groups)
    moe_impl: str = "capacity"  # or 'dropless'
    moe_train_capacity_factor: float = 1.0
    moe_eval_capacity_factor: float = 1.0
    moe_min_capacity: int = 1
    moe_group_size: int | None = None  # tokens per routing group (None: one batch row)
    moe_jitter_noise: float = 0.0
    moe_ffn_size: int | None = None  # default: the dense FFN size

    def check_moe(self, owner: str, **layer_counts: int) -> None:
        """One-line errors for inconsistent MoE fields; ``layer_counts`` are the stacks."""
        if self.num_experts < 0:
            raise ValueError(f"{owner}: num_experts must be >= 0, got {self.num_experts}")
        if not self.num_experts:
            return
        for name, n in layer_counts.items():
            if self.moe_every_n < 1 or n % self.moe_every_n:
                raise ValueError(
                    f"{owner}: {name} {n} is not a multiple of moe_every_n {self.moe_every_n}; "
                    f"fix: choose moe_every_n dividing the layer count")
        if self.moe_router == "prototype":
            if self.moe_top_k < 1 or self.num_experts % self.moe_top_k:
                raise ValueError(f"{owner}: the prototype router splits num_experts "
                                 f"{self.num_experts} into moe_top_k {self.moe_top_k} groups; "
                                 f"fix: choose moe_top_k dividing num_experts")
        elif self.moe_top_k not in (1, 2) or self.moe_top_k > self.num_experts:
            raise ValueError(f"{owner}: moe_top_k must be 1 or 2 (and <= num_experts), got "
                             f"{self.moe_top_k}")
        if self.moe_router not in ("topk", "prototype"):
            raise ValueError(f"{owner}: unknown moe_router {self.moe_router!r}; choose 'topk' "
                             f"or 'prototype'")
        if self.moe_impl not in ("capacity", "dropless"):
            raise ValueError(f"{owner}: unknown moe_impl {self.moe_impl!r}; choose 'capacity' "
                             f"or 'dropless'")

    @property
    def moe_mlp_dim(self) -> int:
        return self.moe_ffn_size or self.mlp_dim  # mlp_dim: the family's dense FFN width

    def moe_layer(self, *, activation: str, dtype: Any, param_dtype: Any, kernel_init: Any,
                  out_kernel_init: Any = None, name: str = "moe") -> MoeLayer:
        """The MoE FFN these fields describe (biases on, as in the dense FFNs here)."""
        return MoeLayer(num_experts=self.num_experts, hidden_dim=self.moe_mlp_dim,
                        top_k=self.moe_top_k, router=self.moe_router, impl=self.moe_impl,
                        train_capacity_factor=self.moe_train_capacity_factor,
                        eval_capacity_factor=self.moe_eval_capacity_factor,
                        min_capacity=self.moe_min_capacity, group_size=self.moe_group_size,
                        jitter_noise=self.moe_jitter_noise, activation=activation,
                        use_bias=True, dtype=dtype, param_dtype=param_dtype,
                        kernel_init=kernel_init, out_kernel_init=out_kernel_init, name=name)


class MoeGroup(nn.Module):
    """``n`` consecutive layers ``layer_cls(**layer_kwargs, use_moe=...)``, the last with the
    MoE FFN, named ``block_0 .. block_{n-1}``. Called like one layer: ``(x, *args) ->
    (x, None)``; scan it with ``LayerStack(MoeGroup, num_layers // n, ...)``."""

    layer_cls: Any
    n: int
    layer_kwargs: tuple = ()

    @nn.compact
    def __call__(self, x, *args):
        for i in range(self.n):
            x, _ = self.layer_cls(**dict(self.layer_kwargs), use_moe=i == self.n - 1,
                                  name=f"block_{i}")(x, *args)
        return x, None


def stack_kwargs(cfg: MoeFields, layer_cls: Any, num_layers: int, layer_kwargs: tuple) -> dict:
    """``LayerStack`` arguments for ``num_layers`` layers of ``layer_cls``: plain layers for a
    dense config, ``MoeGroup``s of ``moe_every_n`` layers with MoE."""
    if not cfg.num_experts:
        return {"layer_cls": layer_cls, "num_layers": num_layers, "layer_kwargs": layer_kwargs}
    return {"layer_cls": MoeGroup, "num_layers": num_layers // cfg.moe_every_n,
            "layer_kwargs": (("layer_cls", layer_cls), ("n", cfg.moe_every_n),
                             ("layer_kwargs", layer_kwargs))}


def active_param_count(params: Any, cfg: MoeFields) -> int:
    """Parameters one token meets, from a (possibly abstract) parameter tree: every expert
    weight (``moe/wi*``, ``moe/wo`` kernels and biases, which have an expert axis of size
    ``num_experts``) counts ``moe_top_k / num_experts`` of its size; everything else fully.
    Expert prototyping with ``moe_top_k`` groups also meets ``moe_top_k`` experts."""
    import math

    import jax
    total = 0.0
    for path, leaf in jax.tree_util.tree_flatten_with_path(nn.unbox(params))[0]:
        names = [str(getattr(p, "key", p)) for p in path]
        size = math.prod(leaf.shape)
        is_expert = "moe" in names and names[names.index("moe") + 1] != "gate"
        total += size * cfg.moe_top_k / cfg.num_experts if is_expert else size
    return int(round(total))
