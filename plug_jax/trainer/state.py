"""``TrainState``: step, params, optimizer state and (for models that keep one) the model's
own state, as one pytree (flax struct).

``model_state`` is ``None`` unless the model defines ``init_state`` and it returns a tree:
arrays the train step updates without gradients (e.g. ALBEF's momentum encoders and feature
queues, ``models.ImageTextPretrain(momentum_distillation=True)``). It is checkpointed with
the rest and restored by a full resume.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct


class TrainState(struct.PyTreeNode):
    step: jax.Array
    params: Any
    opt_state: Any
    tx: optax.GradientTransformation = struct.field(pytree_node=False)
    model_state: Any = None

    @classmethod
    def create(cls, params, tx: optax.GradientTransformation) -> "TrainState":
        return cls(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                   tx=tx)

    def arrays(self) -> dict:
        """The checkpointed part: ``{'step', 'params', 'opt_state'}`` and ``'model_state'``
        when there is one."""
        out = {"step": self.step, "params": self.params, "opt_state": self.opt_state}
        if self.model_state is not None:
            out["model_state"] = self.model_state
        return out

    def replace_arrays(self, tree: dict) -> "TrainState":
        return self.replace(step=tree["step"], params=tree["params"],
                            opt_state=tree["opt_state"],
                            model_state=tree.get("model_state"))
