"""The jitted train and eval steps.

``train_step(state, batch, rng) -> (state, metrics)``:

* the global batch is split into ``num_microbatches`` along the batch axis and the
  per-microbatch sums of loss and gradients are accumulated with ``lax.scan``; the
  gradient is divided by the total loss weight once, so ``k`` microbatches give the
  update of one full batch;
* ``grad_norm`` is the global norm before clipping (clipping is part of the optax chain);
* a non-finite loss or gradient norm never reaches the parameters: the step keeps the
  old params and optimizer state (``skipped = 1``) and only the step counter advances,
  so the data position stays in step with the counter. Whether the loop then goes on
  or stops is the ``nonfinite`` policy of the loop.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import optax

from plug_jax.trainer.state import TrainState


def _split(batch: dict, k: int) -> dict:
    def leaf(x):
        if x.shape[0] % k:
            raise ValueError(f"batch dimension {x.shape[0]} is not divisible by "
                             f"num_microbatches {k}; fix: choose a divisor of the batch size")
        return x.reshape((k, x.shape[0] // k) + x.shape[1:])
    return jax.tree_util.tree_map(leaf, batch)


# Default weights of the auxiliary losses a network sows (mixture of experts): Switch /
# GShard / DeepSpeed-MoE use 0.01 for load balancing; the router z-loss (ST-MoE) 0.001.
DEFAULT_AUX_LOSS_FACTORS = {"load_balance_loss": 0.01, "router_z_loss": 0.001}
_CE_KEYS = ("loss", "z_loss", "correct", "weight")


def extra_metrics(sums: Mapping[str, Any], denom) -> dict:
    """Metrics of the sums beyond cross-entropy's four keys.

    A group ``<g>_weight`` (e.g. ``mlm_weight``: the number of masked encoder tokens) has
    its own denominator: ``<g>_loss`` and ``<g>_correct`` become ``<g>_loss`` and
    ``<g>_accuracy`` divided by it, and ``<g>_weight`` itself is reported as ``<g>_tokens``.
    Every other key is divided by ``denom`` (the main loss weight).
    """
    groups = {n[:-len("_weight")] for n in sums if n.endswith("_weight")}
    out = {}
    for name, value in sums.items():
        if name in _CE_KEYS:
            continue
        group = next((g for g in groups if name.startswith(g + "_")), None)
        if group is None:
            out[name] = value / denom
            continue
        own = value if name == group + "_weight" else None
        if own is not None:
            out[group + "_tokens"] = value
        elif name == group + "_correct":
            out[group + "_accuracy"] = value / jnp.maximum(sums[group + "_weight"], 1.0)
        else:
            out[name] = value / jnp.maximum(sums[group + "_weight"], 1.0)
    return out


def aux_objective(sums: dict, factors: Mapping[str, float]) -> jax.Array:
    """``sum_n factor_n * sums['aux_loss/' + n]`` over the auxiliary losses present.

    An auxiliary loss without a factor is an error (it would silently not be trained).
    """
    total = jnp.zeros((), jnp.float32)
    for key, value in sums.items():
        if not key.startswith("aux_loss/"):
            continue
        name = key[len("aux_loss/"):]
        if name not in factors:
            raise ValueError(f"the model sows auxiliary loss {name!r} but aux_loss_factors "
                             f"{dict(factors)} has no factor for it; fix: bind "
                             f"aux_loss_factors with a {name!r} entry (0.0 to ignore it)")
        total = total + float(factors[name]) * value
    return total


def make_train_step(model, num_microbatches: int = 1,
                    learning_rate_fn: Callable | None = None,
                    aux_loss_factors: Mapping[str, float] | None = None) -> Callable:
    """Builds ``train_step(state, batch, rng) -> (state, metrics)`` (not yet jitted).

    ``aux_loss_factors`` weights the auxiliary losses the network sows (``aux_loss/<name>``
    sums of :meth:`loss_sums`); the objective is cross-entropy + z-loss + their weighted
    sum. ``metrics['loss']`` stays the cross-entropy alone; each auxiliary loss and MoE
    statistic is reported as its per-token mean under its own key.
    """
    k = int(num_microbatches or 1)
    factors = dict(DEFAULT_AUX_LOSS_FACTORS if aux_loss_factors is None else aux_loss_factors)

    def sums_and_grads(params, mb, rng):
        def f(p):
            sums = model.loss_sums(p, mb, rng, deterministic=False)
            return sums["loss"] + aux_objective(sums, factors), sums
        (_, sums), grads = jax.value_and_grad(f, has_aux=True)(params)
        return sums, grads

    def train_step(state: TrainState, batch: dict, rng: jax.Array):
        rng = jax.random.fold_in(rng, state.step)
        if k == 1:
            sums, grads = sums_and_grads(state.params, batch, rng)
        else:
            mbs = _split(batch, k)

            def body(carry, xs):
                i, mb = xs
                s, g = sums_and_grads(state.params, mb, jax.random.fold_in(rng, i))
                acc_s, acc_g = carry
                return (jax.tree_util.tree_map(jnp.add, acc_s, s),
                        jax.tree_util.tree_map(jnp.add, acc_g, g)), None

            zero_g = jax.tree_util.tree_map(jnp.zeros_like, state.params)
            first = jax.tree_util.tree_map(lambda x: x[0], mbs)
            zero_s = jax.tree_util.tree_map(
                lambda a: jnp.zeros(a.shape, a.dtype),
                jax.eval_shape(lambda p, b: model.loss_sums(p, b, rng, deterministic=False),
                               state.params, first))
            (sums, grads), _ = jax.lax.scan(body, (zero_s, zero_g), (jnp.arange(k), mbs))
        denom = jnp.maximum(sums["weight"], 1.0)
        grads = jax.tree_util.tree_map(lambda g: g / denom, grads)
        loss = sums["loss"] / denom
        grad_norm = optax.global_norm(grads)
        ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        updates, new_opt = state.tx.update(grads, state.opt_state, state.params)
        new_params = optax.apply_updates(state.params, updates)
        keep = lambda new, old: jax.tree_util.tree_map(  # noqa: E731
            lambda a, b: jnp.where(ok, a, b), new, old)
        new_state = state.replace(step=state.step + 1, params=keep(new_params, state.params),
                                  opt_state=keep(new_opt, state.opt_state))
        metrics = {
            "loss": loss,
            "z_loss": sums["z_loss"] / denom,
            "accuracy": sums["correct"] / denom,
            "grad_norm": grad_norm,
            "tokens": sums["weight"],
            "skipped": (~ok).astype(jnp.int32),
        }
        metrics.update(extra_metrics(sums, denom))
        if learning_rate_fn is not None:
            metrics["learning_rate"] = learning_rate_fn(state.step)
        return new_state, metrics

    return train_step


def make_eval_step(model) -> Callable:
    """``eval_step(params, batch) -> sums`` (no dropout); add the sums over batches."""
    def eval_step(params, batch):
        return model.loss_sums(params, batch, None, deterministic=True)
    return eval_step


def finalize_eval(sums: dict[str, Any]) -> dict[str, float]:
    """Loss, perplexity and token accuracy from summed eval outputs."""
    import math
    import numpy as np
    w = max(float(sums["weight"]), 1.0)
    loss = float(sums["loss"]) / w
    out = {"loss": loss, "perplexity": math.exp(min(loss, 50.0)),
           "accuracy": float(sums["correct"]) / w, "tokens": float(sums["weight"])}
    sums64 = {n: np.asarray(v, np.float64) for n, v in sums.items()}
    # auxiliary losses and MoE statistics: per-token means; <g>_weight groups: their own
    for name, value in extra_metrics(sums64, w).items():
        value = np.asarray(value, np.float64)
        out[name] = float(value) if value.ndim == 0 else value.tolist()
    return out
