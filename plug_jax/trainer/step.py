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

Two kinds of objective (``model.objective``, default ``'additive'``):

* ``'additive'``: ``model.loss_sums(params, batch, rng, deterministic)`` returns sums over
  examples or tokens (``loss`` and its denominator ``weight``, plus metric sums); sums of
  microbatches add up to the sums of the whole batch.
* ``'global'``: the loss couples the examples of the batch (a contrastive loss whose
  negatives are the other examples). The model splits it in two:
  ``model.embed(params, batch, rng, deterministic) -> per-example pytree`` (leading batch
  axis) and ``model.global_loss_sums(params, embeddings, batch) -> sums`` over the embeddings
  of the *whole global batch*. With ``k`` microbatches the step runs the exact gradient
  cache of Gao et al. 2021 (GradCache): embed each microbatch without keeping activations,
  take the loss and its gradient with respect to all embeddings at once, then re-run each
  microbatch's embedding with ``jax.vjp`` and pull that microbatch's slice of the embedding
  gradient back to the parameters. The result equals the one-batch gradient (each
  microbatch's dropout key is the same in both passes); memory is one microbatch's
  activations plus the ``[B, ...]`` embeddings. Across devices nothing extra is needed:
  under ``jit`` the embeddings are one global array sharded over the batch axes, and XLA
  gathers them for the ``[B, B]`` similarity, so the negatives span every device (and
  every process).

A global objective may keep a model state (``TrainState.model_state``, from
``model.init_state(params, rng)``), e.g. ALBEF's momentum encoders and feature queues. Each
step then runs, with no gradient through the state:
``model_state, context = model.begin_step(model_state, params, batch)`` (the momentum
update and the momentum features of the global batch), the loss as above with
``model.global_loss_sums(params, embeddings, batch, context=context)``, and
``model_state = model.end_step(model_state, context)`` (enqueue). A skipped (non-finite)
step keeps the old state too.
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
    if objective_kind(model) == "global":
        batch_sums_and_grads = _global_sums_and_grads(model, k)
    else:
        batch_sums_and_grads = None

    def sums_and_grads(params, mb, rng):
        def f(p):
            sums = model.loss_sums(p, mb, rng, deterministic=False)
            return sums["loss"] + aux_objective(sums, factors), sums
        (_, sums), grads = jax.value_and_grad(f, has_aux=True)(params)
        return sums, grads

    def train_step(state: TrainState, batch: dict, rng: jax.Array):
        rng = jax.random.fold_in(rng, state.step)
        model_state = state.model_state
        if model_state is not None:
            if batch_sums_and_grads is None:
                raise ValueError(f"{type(model).__name__} keeps a model state, which only a "
                                 f"global objective updates; fix: objective = 'global'")
            model_state, context = jax.lax.stop_gradient(
                model.begin_step(model_state, state.params, batch))
            sums, grads = batch_sums_and_grads(state.params, batch, rng, context)
            model_state = model.end_step(model_state, context)
        elif batch_sums_and_grads is not None:
            sums, grads = batch_sums_and_grads(state.params, batch, rng)
        elif k == 1:
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
        if model_state is not None:
            new_state = new_state.replace(model_state=keep(model_state, state.model_state))
        metrics = {"loss": loss}
        if "z_loss" in sums:
            metrics["z_loss"] = sums["z_loss"] / denom
        if "correct" in sums:
            metrics["accuracy"] = sums["correct"] / denom
        metrics.update({
            "grad_norm": grad_norm,
            "tokens": sums["weight"],
            "skipped": (~ok).astype(jnp.int32),
        })
        metrics.update(extra_metrics(sums, denom))
        if learning_rate_fn is not None:
            metrics["learning_rate"] = learning_rate_fn(state.step)
        return new_state, metrics

    return train_step


def objective_kind(model) -> str:
    """``'additive'`` (sums over examples / tokens) or ``'global'`` (a whole-batch loss)."""
    kind = getattr(model, "objective", "additive")
    if kind not in ("additive", "global"):
        raise ValueError(f"{type(model).__name__}.objective is {kind!r}; it must be "
                         f"'additive' or 'global'")
    if kind == "global" and not (hasattr(model, "embed") and hasattr(model, "global_loss_sums")):
        raise ValueError(f"{type(model).__name__} declares a global objective but lacks "
                         f"embed() / global_loss_sums(); add both")
    return kind


def _global_sums_and_grads(model, k: int) -> Callable:
    """``(params, batch, rng) -> (sums, grads)`` of a global objective (see the module
    docstring): plain ``value_and_grad`` for one microbatch, GradCache for ``k > 1``."""
    def run(params, batch, rng, context=None):
        def loss_of_embeddings(params, emb, batch):
            if context is None:
                sums = model.global_loss_sums(params, emb, batch)
            else:
                sums = model.global_loss_sums(params, emb, batch, context=context)
            return sums["loss"], sums

        if k == 1:
            def f(p):
                return loss_of_embeddings(p, model.embed(p, batch, rng, deterministic=False),
                                          batch)
            (_, sums), grads = jax.value_and_grad(f, has_aux=True)(params)
            return sums, grads
        mbs = _split(batch, k)

        def embed_mb(p, i, mb):
            return model.embed(p, mb, jax.random.fold_in(rng, i), deterministic=False)

        # 1. embeddings of every microbatch, no activations kept
        _, embs = jax.lax.scan(lambda c, xs: (c, embed_mb(params, *xs)), None,
                               (jnp.arange(k), mbs))
        emb_all = jax.tree_util.tree_map(
            lambda x: jax.lax.stop_gradient(x.reshape((-1,) + x.shape[2:])), embs)
        # 2. the loss over the whole batch; gradients for the parameters it reads directly
        #    (e.g. a temperature) and for every embedding
        (_, sums), (g_direct, g_emb) = jax.value_and_grad(
            loss_of_embeddings, argnums=(0, 1), has_aux=True)(params, emb_all, batch)
        g_emb = jax.tree_util.tree_map(lambda x: x.reshape((k, -1) + x.shape[1:]), g_emb)

        # 3. each microbatch again, its embedding gradient pulled back to the parameters
        def back(acc, xs):
            i, mb, ge = xs
            _, vjp = jax.vjp(lambda p: embed_mb(p, i, mb), params)
            return jax.tree_util.tree_map(jnp.add, acc, vjp(ge)[0]), None

        grads, _ = jax.lax.scan(back, g_direct, (jnp.arange(k), mbs, g_emb))
        return sums, grads

    return run


def make_eval_step(model) -> Callable:
    """``eval_step(params, batch) -> sums`` (no dropout); add the sums over batches. A
    global objective is evaluated over each eval batch (its in-batch negatives)."""
    if objective_kind(model) == "global":
        def global_eval_step(params, batch):
            emb = model.embed(params, batch, None, deterministic=True)
            return model.global_loss_sums(params, emb, batch)
        return global_eval_step

    def eval_step(params, batch):
        return model.loss_sums(params, batch, None, deterministic=True)
    return eval_step


def finalize_eval(sums: dict[str, Any], *, perplexity: bool = True) -> dict[str, float]:
    """Loss, perplexity (``perplexity=True``: token losses only) and accuracy from summed
    eval outputs; ``tokens`` is the loss's denominator (tokens or examples)."""
    import math
    import numpy as np
    w = max(float(sums["weight"]), 1.0)
    loss = float(sums["loss"]) / w
    out = {"loss": loss}
    if perplexity:
        out["perplexity"] = math.exp(min(loss, 50.0))
    if "correct" in sums:
        out["accuracy"] = float(sums["correct"]) / w
    out["tokens"] = float(sums["weight"])
    sums64 = {n: np.asarray(v, np.float64) for n, v in sums.items()}
    # auxiliary losses and MoE statistics: per-token means; <g>_weight groups: their own
    for name, value in extra_metrics(sums64, w).items():
        value = np.asarray(value, np.float64)
        out[name] = float(value) if value.ndim == 0 else value.tolist()
    return out
