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


def contrastive_sums(logits: jax.Array, valid: jax.Array | None = None) -> dict[str, jax.Array]:
    """Symmetric InfoNCE over a ``[N, N]`` similarity matrix whose diagonal holds the pairs.

    ``logits[i, j]`` scores row item ``i`` (e.g. image ``i``) against column item ``j``
    (text ``j``), temperature already applied. Every row is classified over the columns and
    every column over the rows (CLIP's objective); ``valid`` ``[N]`` (1 = a real pair, 0 =
    a padding row) removes padding rows from both sides, as rows and as negatives.

    Returns float32 sums over the valid pairs: ``loss`` (the mean of the two directions'
    cross-entropies, summed over pairs), ``correct`` (the mean of the two directions' top-1
    hits), ``weight`` (the number of pairs: the objective's denominator) and the per
    direction groups ``row2col_{loss,correct,weight}`` / ``col2row_{loss,correct,weight}``
    that the train step reports with their own denominators.

    Negatives are every other column of ``logits``: pass the similarity of the *global*
    batch (``plug_jax.trainer.step`` builds it from every microbatch and, under ``jit``, every
    device) to get in-batch negatives over the whole batch.
    """
    logits = jnp.asarray(logits, jnp.float32)
    n = logits.shape[0]
    if logits.shape != (n, n):
        raise ValueError(f"contrastive_sums needs a square [N, N] similarity matrix, got "
                         f"{logits.shape}")
    valid = (jnp.ones((n,), jnp.float32) if valid is None
             else jnp.asarray(valid, jnp.float32))
    big_neg = jnp.finfo(jnp.float32).min / 2
    keep = valid[:, None] * valid[None, :] > 0
    masked = jnp.where(keep, logits, big_neg)
    diag = jnp.diagonal(logits)
    idx = jnp.arange(n)
    row_ce = jax.nn.logsumexp(masked, axis=1) - diag
    col_ce = jax.nn.logsumexp(masked, axis=0) - diag
    row_ok = (jnp.argmax(masked, axis=1) == idx).astype(jnp.float32)
    col_ok = (jnp.argmax(masked, axis=0) == idx).astype(jnp.float32)
    w = jnp.sum(valid)
    return {
        "loss": jnp.sum(0.5 * (row_ce + col_ce) * valid),
        "correct": jnp.sum(0.5 * (row_ok + col_ok) * valid),
        "weight": w,
        "row2col_loss": jnp.sum(row_ce * valid), "row2col_correct": jnp.sum(row_ok * valid),
        "row2col_weight": w,
        "col2row_loss": jnp.sum(col_ce * valid), "col2row_correct": jnp.sum(col_ok * valid),
        "col2row_weight": w,
    }
