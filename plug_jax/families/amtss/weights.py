"""AMTSS teacher importance weights: which teacher the student should listen to, per example.

AMTSS (arXiv 2305.07928; only the abstract is public, MODEL_SPECS.md section 12) distils
several teachers (one fine-tuned encoder per language) into one multilingual student with "an
adaptive learning strategy and teacher importance weight, which enables a student to
effectively learn from max-margin teachers". The abstract does not define the weight; this
module does, and ``plug_jax/families/amtss/README.md`` repeats the definition.

Definition (``weighting='max_margin'``). For example ``b`` with gold label ``y`` and teacher
``t`` with logits ``z_t`` over ``C`` classes, at distillation temperature ``T``::

    p_t      = softmax(z_t / T)
    margin_t = p_t(y) - max_{c != y} p_t(c)                 in [-1, 1]
    w_t      = exp(margin_t / tau) / sum_{s present} exp(margin_s / tau)

so ``sum_t w_t = 1`` over the teachers present for the example (``teacher_mask``). Reasoning:

* the margin is the teacher's confidence *in the right answer* over its strongest rival:
  a teacher that is confidently right (margin near +1) gets the most weight, an uncertain one
  (margin near 0) less, and a confidently wrong one (negative margin, its top class is not the
  gold one) the least. Plain confidence (max probability) would reward confidently wrong
  teachers; the gold-label margin cannot, which is why it needs the gold label (available at
  training time, where the weights are used);
* the margin is measured on the *softened* distribution the student is trained to match
  (temperature ``T``), so the weight and the distillation target agree about what the teacher
  says;
* ``tau`` sets how adaptive the choice is: ``tau -> 0`` picks the max-margin teacher alone
  (``tau=0`` is that hard choice; ties share equally), ``tau -> inf`` tends to the uniform
  average. Margins lie in ``[-1, 1]``, so ``tau`` around 0.1 - 1 is the useful range.
* Teachers absent for an example (``teacher_mask`` 0: no teacher for that language, or
  logits that were not computed) get weight 0 and take no part in the normalisation. An
  example with no teacher at all gets all-zero weights (it then learns from its gold label
  only; :func:`plug_jax.families.amtss.losses.distillation_sums` handles it).

The weights are functions of the teachers' logits and the gold label only, so they carry no
gradient to the student (they are wrapped in ``stop_gradient`` all the same).

``weighting='uniform'`` is the ablation: ``w_t = 1 / (number of teachers present)``.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

WEIGHTINGS = ("max_margin", "uniform")


def check_weighting(weighting: str) -> str:
    if weighting not in WEIGHTINGS:
        raise ValueError(f"AMTSS: unknown teacher weighting {weighting!r}; choose one of "
                         f"{WEIGHTINGS}")
    return weighting


def teacher_margins(teacher_logits, labels, temperature: float = 1.0):
    """``[B, N]`` margins ``p_t(gold) - max_{c != gold} p_t(c)`` of ``N`` teachers.

    ``teacher_logits`` ``[B, N, C]``; ``labels`` int ``[B]``; ``p_t`` is the softmax of the
    teacher's logits divided by ``temperature``."""
    if temperature <= 0:
        raise ValueError(f"AMTSS: temperature must be > 0, got {temperature}")
    logits = jnp.asarray(teacher_logits, jnp.float32)
    if logits.ndim != 3:
        raise ValueError(f"AMTSS: teacher_logits must be [batch, teachers, classes], got "
                         f"shape {logits.shape}")
    if logits.shape[-1] < 2:
        raise ValueError("AMTSS: the margin needs at least 2 classes")
    probs = jax.nn.softmax(logits / temperature, axis=-1)
    labels = jnp.asarray(labels, jnp.int32).reshape(-1)
    gold = jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.bool_)[:, None, :]  # [B,1,C]
    p_gold = jnp.sum(jnp.where(gold, probs, 0.0), axis=-1)
    p_rival = jnp.max(jnp.where(gold, -jnp.inf, probs), axis=-1)
    return p_gold - p_rival


def _mask(teacher_mask, shape):
    if teacher_mask is None:
        return jnp.ones(shape, jnp.bool_)
    m = jnp.asarray(teacher_mask)
    if m.shape != shape:
        raise ValueError(f"AMTSS: teacher_mask has shape {m.shape}, expected {shape} "
                         f"[batch, teachers]")
    return m > 0


def teacher_weights(teacher_logits, labels, *, weighting: str = "max_margin",
                    temperature: float = 1.0, tau: float = 1.0, teacher_mask=None):
    """``[B, N]`` float32 teacher importance weights (module docstring).

    Each row sums to 1 over the teachers present (``teacher_mask`` ``[B, N]``, 1 = present;
    default all present), or is all zero where no teacher is present."""
    check_weighting(weighting)
    if tau < 0:
        raise ValueError(f"AMTSS: tau must be >= 0 (0 = pick the max-margin teacher), got "
                         f"{tau}")
    logits = jnp.asarray(teacher_logits, jnp.float32)
    mask = _mask(teacher_mask, logits.shape[:2])
    if weighting == "uniform":
        scores = jnp.zeros(logits.shape[:2], jnp.float32)
    else:
        margins = teacher_margins(logits, labels, temperature)
        if tau == 0:  # the max-margin teacher(s): a hard choice, ties share equally
            best = jnp.max(jnp.where(mask, margins, -jnp.inf), axis=-1, keepdims=True)
            scores = jnp.where(margins >= best, 0.0, -jnp.inf)
        else:
            scores = margins / tau
    scores = jnp.where(mask, scores, -jnp.inf)
    top = jnp.max(scores, axis=-1, keepdims=True)
    top = jnp.where(jnp.isfinite(top), top, 0.0)
    e = jnp.where(mask, jnp.exp(scores - top), 0.0)
    w = e / jnp.maximum(jnp.sum(e, axis=-1, keepdims=True), 1e-30)
    return jax.lax.stop_gradient(w)


def weights_by_language(weights, lang, num_languages: int, real=None):
    """``[num_languages, N]``: the mean teacher weight over the examples of each language
    (what ``colabs/amtss.ipynb`` is to plot; rows of languages without examples are 0).

    ``weights`` ``[B, N]`` (:func:`teacher_weights`), ``lang`` int ``[B]``, ``real`` ``[B]``."""
    w = jnp.asarray(weights, jnp.float32)
    lang = jnp.asarray(lang, jnp.int32).reshape(-1)
    real = (jnp.ones(lang.shape, jnp.float32) if real is None
            else jnp.asarray(real, jnp.float32).reshape(-1))
    onehot = jax.nn.one_hot(lang, num_languages, dtype=jnp.float32) * real[:, None]  # [B, L]
    total = onehot.T @ w
    return total / jnp.maximum(jnp.sum(onehot, axis=0)[:, None], 1.0)
