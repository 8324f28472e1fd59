"""AdamW with global-norm clipping and a weight-decay mask built from parameter names."""
from __future__ import annotations

from typing import Any, Callable

import jax
import optax

# Leaves with these names are not decayed (biases and LayerNorm / RMSNorm scales).
NO_DECAY_NAMES = ("bias", "scale")


def decay_mask(params: Any) -> Any:
    """``True`` for leaves that get weight decay: all but biases and norm scales.

    Decided by the leaf's name, not its rank, because scanned layers give biases a
    leading layer dimension.
    """
    def leaf(path, _):
        name = getattr(path[-1], "key", getattr(path[-1], "name", str(path[-1])))
        return str(name) not in NO_DECAY_NAMES
    return jax.tree_util.tree_map_with_path(leaf, params)


def adamw(learning_rate: float | Callable = 1e-3, b1: float = 0.9, b2: float = 0.95,
          eps: float = 1e-8, weight_decay: float = 0.1, clip_norm: float | None = 1.0
          ) -> optax.GradientTransformation:
    """Global-norm clipping (skipped when ``clip_norm`` is None or <= 0), then AdamW.

    ``learning_rate`` is a float or a schedule ``step -> rate``; the step it sees is the
    optimizer's own update count, which equals the train step.
    """
    parts = []
    if clip_norm is not None and clip_norm > 0:
        parts.append(optax.clip_by_global_norm(clip_norm))
    parts.append(optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay,
                             mask=decay_mask))
    return optax.chain(*parts)
