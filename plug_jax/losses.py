"""Losses and token metrics, computed in float32 and returned as *sums* over tokens.

Returning sums (and the weight sum) lets the train step add microbatches exactly and
divide once, so ``k`` microbatches give the same update as one full batch.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def cross_entropy_sums(logits: jax.Array, targets: jax.Array, weights: jax.Array | None = None,
                       z_loss: float = 0.0) -> dict[str, jax.Array]:
    """Token cross-entropy (nats), optional z-loss, and accuracy, summed over tokens.

    Args:
      logits: float ``[..., vocab]``.
      targets: int ``[...]``.
      weights: ``[...]`` loss weights (0 for padding); default all ones.
      z_loss: coefficient of ``log(Z)**2`` (PaLM's z-loss); 0 disables it.

    Returns ``{'loss', 'z_loss', 'correct', 'weight'}``, each a float32 scalar sum;
    ``loss`` includes the weighted z-loss term.
    """
    logits = logits.astype(jnp.float32)
    if weights is None:
        weights = jnp.ones(targets.shape, jnp.float32)
    weights = weights.astype(jnp.float32)
    log_z = jax.nn.logsumexp(logits, axis=-1)
    target_logit = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32),
                                       axis=-1)[..., 0]
    nll = log_z - target_logit
    zl = z_loss * jnp.square(log_z)
    correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    return {
        "loss": jnp.sum((nll + zl) * weights),
        "z_loss": jnp.sum(zl * weights),
        "correct": jnp.sum(correct * weights),
        "weight": jnp.sum(weights),
    }
