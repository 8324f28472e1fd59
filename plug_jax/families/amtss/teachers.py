"""AMTSS teachers' logits: computed once for the data (default), or in the step (frozen).

A teacher is any task model with ``outputs(params, batch) -> [B, C]`` classification logits
(``EncoderModel(objectives=('classify',))``, StructBERT- or BERT-shaped, one fine-tuned per
language) and its parameters. Both modes run the same function, :func:`teacher_logits`:

* precomputed (what the student reads by default): :func:`add_teacher_logits` adds
  ``teacher_logits [B, N, C]`` to a batch once, when the student's data is written;
* frozen in the step: :func:`frozen_teacher_loss_sums` runs the teachers under
  ``stop_gradient`` inside the student's loss (the README weighs the memory and compute).

The teachers run deterministically (no dropout): a teacher's output is a target, and the
precomputed and in-step modes then give the same numbers.
"""
from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp


def teacher_logits(teachers: Sequence[tuple[Any, Any]], batch: dict):
    """``[B, N, C]`` float32 logits of the ``N`` ``(task model, params)`` teachers on
    ``batch`` (no gradient reaches the teachers)."""
    if not teachers:
        raise ValueError("AMTSS: no teachers")
    outs = []
    for model, params in teachers:
        z = jnp.asarray(model.outputs(jax.lax.stop_gradient(params), batch,
                                      deterministic=True), jnp.float32)
        if z.ndim != 2:
            raise ValueError(f"AMTSS: a teacher returned logits of shape {z.shape}; expected "
                             f"[batch, classes] (a classifier: objectives=('classify',))")
        outs.append(z)
    if len({z.shape for z in outs}) != 1:
        raise ValueError(f"AMTSS: the teachers' logits differ in shape "
                         f"{[z.shape for z in outs]}; every teacher needs the same classes")
    return jax.lax.stop_gradient(jnp.stack(outs, axis=1))


def add_teacher_logits(teachers, batch: dict) -> dict:
    """``batch`` plus ``teacher_logits`` (numpy, float32): the precomputed mode."""
    import numpy as np
    return {**batch, "teacher_logits": np.asarray(jax.device_get(teacher_logits(teachers,
                                                                               batch)))}


def frozen_teacher_loss_sums(student, params, teachers, batch: dict, rng=None,
                             deterministic: bool = False) -> dict:
    """The student's ``loss_sums`` with the teachers run in the step (frozen)."""
    return student.loss_sums(params, {**batch, "teacher_logits": teacher_logits(teachers, batch)},
                             rng, deterministic)
