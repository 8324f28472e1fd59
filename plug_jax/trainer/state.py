"""``TrainState``: step, params and optimizer state as one pytree (flax struct)."""
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

    @classmethod
    def create(cls, params, tx: optax.GradientTransformation) -> "TrainState":
        return cls(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                   tx=tx)

    def arrays(self) -> dict:
        """The checkpointed part: ``{'step', 'params', 'opt_state'}``."""
        return {"step": self.step, "params": self.params, "opt_state": self.opt_state}

    def replace_arrays(self, tree: dict) -> "TrainState":
        return self.replace(step=tree["step"], params=tree["params"],
                            opt_state=tree["opt_state"])
