"""AMTSS objective: distillation from the weighted teachers plus the gold label.

Per example ``b`` (student logits ``s``, teacher logits ``z_t``, weights ``w_t`` of
:mod:`plug_jax.families.amtss.weights`, temperature ``T``)::

    q_T    = softmax(s / T)                         the student, softened
    pbar_T = sum_t w_t softmax(z_t / T)             the weighted teacher mixture
    distill = T^2 * KL(pbar_T || q_T)
    ce      = -log softmax(s)[gold]                 at temperature 1
    loss    = distill + alpha * ce

Mixture KL or weighted sum of per-teacher KLs? ``sum_t w_t KL(p_t || q)`` expands to
``sum_t w_t sum_c p_t log p_t - sum_c pbar(c) log q(c)`` and ``KL(pbar || q)`` to
``sum_c pbar log pbar - sum_c pbar(c) log q(c)``: they differ by a term that does not depend on
the student (the weighted Jensen gap between the teachers), so both give *the same gradient*
and the same optimum (``q = pbar``). The mixture form is the one reported here because its
value means something on its own: 0 exactly when the student reproduces the weighted
teachers, whereas the per-teacher sum keeps a floor set by how much the teachers disagree.
:func:`per_teacher_kl` computes the other form (tests check the gradients agree).

``T^2`` keeps the distillation gradient's scale independent of ``T`` (Hinton et al. 2015), so
``alpha`` means the same at any temperature. An example with no teacher present (all-zero
weights) contributes only ``alpha * ce``.

Sums follow the trainer's convention (``plug_jax.models.base``): float32 sums over the real
examples (``real`` ``[B]``, 0 for padding rows), with ``weight`` the number of real examples,
so microbatches and eval batches add up.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from plug_jax.families.amtss.weights import teacher_weights


def _xlogx_over(p, logq):
    """``sum_c p log p - p log q`` with ``0 log 0 = 0`` (the KL of each row)."""
    safe = jnp.where(p > 0, p, 1.0)
    return jnp.sum(jnp.where(p > 0, p * (jnp.log(safe) - logq), 0.0), axis=-1)


def mixture_kl(student_logits, teacher_logits, weights, temperature: float = 1.0):
    """``[B]`` ``KL(sum_t w_t softmax(z_t/T) || softmax(s/T))`` (not scaled by ``T^2``)."""
    t = float(temperature)
    logq = jax.nn.log_softmax(jnp.asarray(student_logits, jnp.float32) / t, axis=-1)
    probs = jax.nn.softmax(jnp.asarray(teacher_logits, jnp.float32) / t, axis=-1)
    mix = jnp.einsum("bn,bnc->bc", jnp.asarray(weights, jnp.float32), probs)
    return _xlogx_over(mix, logq)


def per_teacher_kl(student_logits, teacher_logits, weights, temperature: float = 1.0):
    """``[B]`` ``sum_t w_t KL(softmax(z_t/T) || softmax(s/T))``: the other form (same
    gradient with respect to the student, a larger value)."""
    t = float(temperature)
    logq = jax.nn.log_softmax(jnp.asarray(student_logits, jnp.float32) / t, axis=-1)
    probs = jax.nn.softmax(jnp.asarray(teacher_logits, jnp.float32) / t, axis=-1)
    kl = _xlogx_over(probs, logq[:, None, :])  # [B, N]
    return jnp.sum(jnp.asarray(weights, jnp.float32) * kl, axis=-1)


def distillation_sums(student_logits, teacher_logits, labels, real=None, *,
                      weighting: str = "max_margin", temperature: float = 2.0,
                      tau: float = 1.0, alpha: float = 1.0, teacher_mask=None) -> dict:
    """The AMTSS loss as the trainer's sums (module docstring).

    Args:
      student_logits: ``[B, C]``.
      teacher_logits: ``[B, N, C]`` (N teachers).
      labels: int ``[B]`` gold classes.
      real: ``[B]`` 1 for real examples, 0 for padding (default all real).
      weighting, tau: :func:`~plug_jax.families.amtss.weights.teacher_weights`
        (``'uniform'`` is the ablation).
      temperature: ``T``, of both the weights' margins and the distillation.
      alpha: factor of the gold-label cross-entropy.
      teacher_mask: ``[B, N]`` 1 where the teacher's logits are present.

    Returns float32 sums: ``loss`` (``distill + alpha * ce``), ``weight`` (real examples),
    ``correct`` (student argmax == gold), ``distill_loss``, ``ce_loss`` and
    ``teacher_importance`` ``[N]`` (the weights summed over examples: divided by ``weight``,
    the mean weight of each teacher), ``teacher_correct`` ``[N]`` (examples each present teacher
    gets right) and ``teacher_present`` ``[N]``.
    """
    if alpha < 0:
        raise ValueError(f"AMTSS: alpha must be >= 0, got {alpha}")
    s = jnp.asarray(student_logits, jnp.float32)
    z = jnp.asarray(teacher_logits, jnp.float32)
    if z.ndim != 3 or s.ndim != 2 or z.shape[0] != s.shape[0] or z.shape[2] != s.shape[1]:
        raise ValueError(f"AMTSS: student_logits {s.shape} must be [B, C] and teacher_logits "
                         f"{z.shape} [B, N, C]")
    labels = jnp.asarray(labels, jnp.int32).reshape(-1)
    real = (jnp.ones(labels.shape, jnp.float32) if real is None
            else jnp.asarray(real, jnp.float32).reshape(-1))
    w = teacher_weights(z, labels, weighting=weighting, temperature=temperature, tau=tau,
                        teacher_mask=teacher_mask)
    distill = float(temperature) ** 2 * mixture_kl(s, z, w, temperature)
    logp = jax.nn.log_softmax(s, axis=-1)
    ce = -jnp.take_along_axis(logp, labels[:, None], axis=-1)[:, 0]
    present = (jnp.ones(z.shape[:2], jnp.float32) if teacher_mask is None
               else (jnp.asarray(teacher_mask) > 0).astype(jnp.float32)) * real[:, None]
    t_correct = (jnp.argmax(z, -1) == labels[:, None]).astype(jnp.float32) * present
    return {
        "loss": jnp.sum((distill + alpha * ce) * real),
        "weight": jnp.sum(real),
        "correct": jnp.sum((jnp.argmax(s, -1) == labels).astype(jnp.float32) * real),
        "z_loss": jnp.zeros((), jnp.float32),
        "distill_loss": jnp.sum(distill * real),
        "ce_loss": jnp.sum(ce * real),
        "teacher_importance": jnp.sum(w * real[:, None], axis=0),
        "teacher_correct": jnp.sum(t_correct, axis=0),
        "teacher_present": jnp.sum(present, axis=0),
    }
