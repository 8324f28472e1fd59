"""Optimizers and learning-rate schedules (optax), configured from gin.

``adamw(...)`` returns an ``optax.GradientTransformation`` that clips by global norm,
then applies AdamW with decoupled weight decay on every weight except biases and
normalisation scales. Schedules are functions ``step -> learning rate``.
"""
from plug_jax.optim.optimizers import adamw, decay_mask
from plug_jax.optim.schedules import constant, warmup_cosine, warmup_rsqrt, warmup_linear

__all__ = ["adamw", "decay_mask", "constant", "warmup_cosine", "warmup_rsqrt", "warmup_linear"]
