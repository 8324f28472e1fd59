"""Mixture-of-experts layers (see docs/moe.md)."""
from plug_jax.layers.moe.capacity import expert_capacity, make_dispatch
from plug_jax.layers.moe.layer import IMPLS, ExpertWeights, MoeLayer
from plug_jax.layers.moe.router import (ROUTERS, Routing, load_balance_loss, route,
                                        router_z_loss, tokens_per_expert)

__all__ = ["MoeLayer", "ExpertWeights", "IMPLS", "ROUTERS", "Routing", "route",
           "load_balance_loss", "router_z_loss", "tokens_per_expert", "expert_capacity",
           "make_dispatch"]
