"""``MoeLayer``: a mixture-of-experts feed-forward block (see docs/moe.md)."""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from plug_jax.layers.dense import DenseGeneral, default_kernel_init
from plug_jax.layers.mlp import get_activation
from plug_jax.layers.moe import capacity as cap
from plug_jax.layers.moe import router as R
from plug_jax.layers.moe.dropless import dropless_moe
from plug_jax.partitioning import axes as A
from plug_jax.partitioning import constraints
from plug_jax.partitioning.constraints import with_logical_constraint

IMPLS = ("capacity", "dropless")


class ExpertWeights(nn.Module):
    """A stacked per-expert kernel ``[E, in, out]`` and optional bias ``[E, out]``.

    Each expert's kernel is initialised as an independent ``[in, out]`` matrix so
    fan-in based initialisers see the true fan-in.
    """

    num_experts: int
    shape: tuple[int, int]
    kernel_axes: tuple[str, str, str]
    use_bias: bool = True
    param_dtype: Any = jnp.float32
    kernel_init: Any = default_kernel_init
    bias_init: Any = nn.initializers.zeros

    @nn.compact
    def __call__(self):
        def init(key, shape, dtype):
            keys = jax.random.split(key, shape[0])
            return jax.vmap(lambda k: self.kernel_init(k, shape[1:], dtype))(keys)

        kernel = self.param("kernel", nn.with_logical_partitioning(init, self.kernel_axes),
                            (self.num_experts,) + tuple(self.shape), self.param_dtype)
        bias = None
        if self.use_bias:
            bias = self.param("bias", nn.with_logical_partitioning(
                self.bias_init, (self.kernel_axes[0], self.kernel_axes[2])),
                (self.num_experts, self.shape[1]), self.param_dtype)
        return kernel, bias


class MoeLayer(nn.Module):
    """Mixture of experts replacing an MLP: ``[batch, length, embed]`` -> same shape.

    Attributes:
      num_experts, hidden_dim: number of experts and each expert's FFN width.
      top_k: experts per token (1 or 2; with ``'prototype'`` the number of groups, any
        divisor of ``num_experts``).
      router: ``'topk'`` or ``'prototype'`` (M6-T expert prototyping: ``top_k``
        equal expert groups, top-1 in each).
      impl: ``'capacity'`` (GShard/Switch dispatch, drops past capacity) or
        ``'dropless'`` (sort + ``ragged_dot``; expert-parallel ``shard_map``).
      train_capacity_factor, eval_capacity_factor, min_capacity: capacity
        ``C = min(S, max(min_capacity, ceil(S * k * factor / E)))`` per group of
        ``S`` tokens; the eval factor is used when ``deterministic``.
      group_size: tokens per routing group (capacity impl); ``None``: one group
        per batch row. Must divide ``batch * length``.
      normalize_top_k: rescale the ``k`` gates to sum to 1 (Mixtral).
      jitter_noise: in training, multiply the router input by
        ``U(1 - eps, 1 + eps)`` (Switch); uses the ``'dropout'`` rng.
      activation, gated, use_bias: the expert FFN, as in :class:`MLP`.

    Sown: ``aux_loss/load_balance_loss``, ``aux_loss/router_z_loss`` (unweighted
    float32 scalars), ``moe_metrics/tokens_per_expert`` (float32 ``[E]``,
    assignments before drops) and ``moe_metrics/drop_fraction`` (scalar).
    """

    num_experts: int
    hidden_dim: int
    top_k: int = 1
    router: str = "topk"
    impl: str = "capacity"
    train_capacity_factor: float = 1.0
    eval_capacity_factor: float = 2.0
    min_capacity: int = 4
    group_size: int | None = None
    normalize_top_k: bool = False
    jitter_noise: float = 0.0
    activation: str = "gelu"
    gated: bool = False
    use_bias: bool = True
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    kernel_init: Any = default_kernel_init
    out_kernel_init: Any = None

    def _check(self):
        if self.router == "prototype":
            # M6-T expert prototyping: top_k groups of experts, top-1 in each (M6-T used k up
            # to 4 and more); the groups must split the experts evenly.
            if self.top_k < 1 or self.num_experts % self.top_k:
                raise ValueError(f"MoeLayer: prototype router with top_k={self.top_k} groups "
                                 f"needs top_k >= 1 dividing num_experts={self.num_experts}")
        elif self.top_k not in (1, 2) or self.top_k > self.num_experts:
            raise ValueError(f"MoeLayer: top_k={self.top_k} must be 1 or 2 and <= num_experts")
        if self.impl not in IMPLS:
            raise ValueError(f"MoeLayer: unknown impl {self.impl!r}; choose one of {IMPLS}")
        if self.router not in R.ROUTERS:
            raise ValueError(f"MoeLayer: unknown router {self.router!r}; choose one of {R.ROUTERS}")

    @nn.compact
    def __call__(self, x, *, deterministic: bool = True, token_mask=None):
        self._check()
        batch, length, embed = x.shape
        num_tokens = batch * length
        act = get_activation(self.activation)
        x = with_logical_constraint(jnp.asarray(x, self.dtype),
                                    (A.ACT_BATCH, A.ACT_LENGTH, A.ACT_EMBED))

        # ---- router (float32)
        router_in = x.astype(jnp.float32)
        if not deterministic and self.jitter_noise > 0:
            noise = jax.random.uniform(self.make_rng("dropout"), router_in.shape, jnp.float32,
                                       1.0 - self.jitter_noise, 1.0 + self.jitter_noise)
            router_in = router_in * noise
        logits = DenseGeneral(self.num_experts, (A.EMBED, None), use_bias=False,
                              dtype=jnp.float32, param_dtype=self.param_dtype,
                              kernel_init=self.kernel_init, name="gate")(router_in)
        logits = logits.reshape(num_tokens, self.num_experts)
        routing = R.route(logits, self.top_k, self.router, self.normalize_top_k)
        mask = None if token_mask is None else token_mask.reshape(num_tokens).astype(bool)
        gates = routing.gates if mask is None else routing.gates * mask[:, None]

        self.sow("aux_loss", "load_balance_loss",
                 R.load_balance_loss(routing.probs, routing.expert_index, mask))
        self.sow("aux_loss", "router_z_loss", R.router_z_loss(logits, mask))
        self.sow("moe_metrics", "tokens_per_expert",
                 R.tokens_per_expert(routing.expert_index, self.num_experts, mask))

        # ---- expert weights
        def weights(name, shape, axes, init):
            return ExpertWeights(self.num_experts, shape, axes, self.use_bias,
                                 self.param_dtype, init, name=name)()

        in_axes = (A.EXPERT, A.EXPERT_EMBED, A.EXPERT_MLP)
        out_axes = (A.EXPERT, A.EXPERT_MLP, A.EXPERT_EMBED)
        names = ("wi_0", "wi_1") if self.gated else ("wi",)
        w = {n: weights(n, (embed, self.hidden_dim), in_axes, self.kernel_init) for n in names}
        w["wo"] = weights("wo", (self.hidden_dim, embed), out_axes,
                          self.out_kernel_init or self.kernel_init)

        if self.impl == "capacity":
            y, dropped = self._capacity(x, routing, gates, mask, w, act, deterministic)
            total = jnp.float32(num_tokens * self.top_k) if mask is None else \
                jnp.sum(mask).astype(jnp.float32) * self.top_k
            drop_fraction = dropped / jnp.maximum(total, 1.0)
        else:
            ctx = constraints.active()
            mesh = None if ctx is None else ctx[0]
            w = {n: (jnp.asarray(k, self.dtype), None if b is None else jnp.asarray(b, self.dtype))
                 for n, (k, b) in w.items()}
            y = dropless_moe(x, routing.expert_index.reshape(batch, length, -1),
                             gates.reshape(batch, length, -1).astype(self.dtype), w,
                             num_experts=self.num_experts, act=act, gated=self.gated, mesh=mesh)
            drop_fraction = jnp.float32(0.0)
        self.sow("moe_metrics", "drop_fraction", drop_fraction)
        y = jnp.asarray(y, self.dtype)
        return with_logical_constraint(y, (A.ACT_BATCH, A.ACT_LENGTH, A.ACT_EMBED))

    def _capacity(self, x, routing, gates, mask, w, act, deterministic):
        batch, length, embed = x.shape
        num_tokens = batch * length
        size = length if self.group_size is None else int(self.group_size)
        if num_tokens % size:
            raise ValueError(f"MoeLayer: group_size={size} does not divide batch * length = "
                             f"{num_tokens}")
        groups = num_tokens // size
        factor = self.eval_capacity_factor if deterministic else self.train_capacity_factor
        capacity = cap.expert_capacity(size, self.num_experts, self.top_k, factor,
                                       self.min_capacity)
        d = cap.make_dispatch(routing.expert_index.reshape(groups, size, self.top_k),
                              gates.reshape(groups, size, self.top_k), self.num_experts,
                              capacity, None if mask is None else mask.reshape(groups, size),
                              dtype=self.dtype)

        def proj(name, h, axes):
            kernel, bias = w[name]
            y = jnp.einsum("egci,eio->egco", h, jnp.asarray(kernel, self.dtype))
            if bias is not None:
                y = y + jnp.asarray(bias, self.dtype)[:, None, None, :]
            return with_logical_constraint(y, axes)

        hid_axes = (A.ACT_EXPERT, A.ACT_EXPERT_GROUP, A.ACT_CAPACITY, A.ACT_MLP)
        out_axes = (A.ACT_EXPERT, A.ACT_EXPERT_GROUP, A.ACT_CAPACITY, A.ACT_EMBED)

        def expert_fn(h):
            if self.gated:
                hid = act(proj("wi_0", h, hid_axes)) * proj("wi_1", h, hid_axes)
            else:
                hid = act(proj("wi", h, hid_axes))
            return proj("wo", hid, out_axes)

        y = cap.capacity_moe(x.reshape(groups, size, embed), d, expert_fn)
        return y.reshape(batch, length, embed), d.dropped
