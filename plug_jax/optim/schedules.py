"""Learning-rate schedules: ``step (int array) -> learning rate (float32)``.

All warm up linearly from 0 over ``warmup_steps`` (the first step, 0, already has a
non-zero rate ``peak / warmup_steps`` so no step is wasted).
"""
from __future__ import annotations

import jax.numpy as jnp


def _warmup(step, peak: float, warmup_steps: int):
    if warmup_steps <= 0:
        return jnp.float32(peak)
    return jnp.float32(peak) * jnp.minimum(1.0, (step + 1) / warmup_steps)


def constant(learning_rate: float):
    """A fixed rate."""
    def schedule(step):
        del step
        return jnp.float32(learning_rate)
    return schedule


def warmup_cosine(peak_learning_rate: float, warmup_steps: int, total_steps: int,
                  end_ratio: float = 0.1):
    """Linear warm-up to ``peak``, then cosine decay to ``end_ratio * peak`` at ``total_steps``."""
    if total_steps <= 0:
        raise ValueError(f"warmup_cosine: total_steps must be > 0, got {total_steps}; fix: "
                         "set it to the number of training steps")

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        decay_steps = max(total_steps - warmup_steps, 1)
        frac = jnp.clip((step - warmup_steps) / decay_steps, 0.0, 1.0)
        cos = end_ratio + (1.0 - end_ratio) * 0.5 * (1.0 + jnp.cos(jnp.pi * frac))
        return jnp.where(step < warmup_steps, _warmup(step, peak_learning_rate, warmup_steps),
                         jnp.float32(peak_learning_rate) * cos).astype(jnp.float32)
    return schedule


def warmup_linear(peak_learning_rate: float, warmup_steps: int, total_steps: int,
                  end_ratio: float = 0.0):
    """Linear warm-up, then linear decay to ``end_ratio * peak`` at ``total_steps``."""
    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        decay_steps = max(total_steps - warmup_steps, 1)
        frac = jnp.clip((step - warmup_steps) / decay_steps, 0.0, 1.0)
        lin = 1.0 - (1.0 - end_ratio) * frac
        return jnp.where(step < warmup_steps, _warmup(step, peak_learning_rate, warmup_steps),
                         jnp.float32(peak_learning_rate) * lin).astype(jnp.float32)
    return schedule


def warmup_rsqrt(peak_learning_rate: float, warmup_steps: int):
    """Linear warm-up, then ``peak * sqrt(warmup_steps / step)`` (T5's inverse square root)."""
    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        decay = jnp.sqrt(max(warmup_steps, 1) / jnp.maximum(step + 1, max(warmup_steps, 1)))
        return jnp.where(step < warmup_steps, _warmup(step, peak_learning_rate, warmup_steps),
                         jnp.float32(peak_learning_rate) * decay).astype(jnp.float32)
    return schedule
