"""Training FLOPs of an X-CLIP step.

The CLIP part is :func:`plug_jax.families.clip.flops.training_flops` over the frames (every
frame through the image tower) and the text. X-CLIP adds, per video, the temporal
transformer over ``T`` frame tokens of width ``P`` (the CLIP block formula), and per
(text, video) pair of the ``[B, B]`` similarity: the word-video and sentence-frame products
(``2 (W + T) P``), the fine-grained matrix ``words . L . frames`` (``2 W T P``, the ``W x P``
product by ``L`` counted once per text) and the attention mixes by the square matrices
(``2 (W^2 + T^2)`` for the two cross-grained vectors, ``2 W T (W + T)`` for the two AOSM
steps on the ``W x T`` matrix, ``2 (T^2 + W^2)`` for the aggregation). Training is 3x the
forward, as for CLIP.
"""
from __future__ import annotations

from plug_jax.families.clip.flops import tower_forward_flops
from plug_jax.families.clip.flops import training_flops as clip_training_flops


def training_flops(config, batch: int, lengths) -> float:
    """``config``: an ``XClipConfig``; ``lengths``: ``{'frames': (T, H, W, C), 'targets': W}``."""
    p = config.clip.projection_dim
    t = int(lengths["frames"][0]) if "frames" in lengths else config.num_frames
    w = int(lengths.get("targets", config.num_words))
    tmp = config.temporal
    per_video = tower_forward_flops(t, tmp.layers, tmp.width, tmp.mlp_dim)
    per_text = 2.0 * w * p * p + 2.0 * p * p  # words . L and sent . G
    per_pair = (2.0 * (w + t) * p + 2.0 * w * t * p + 2.0 * (w * w + t * t)
                + 2.0 * w * t * (w + t) + 2.0 * (t * t + w * w) + 2.0 * p)
    return (clip_training_flops(config, batch, lengths)
            + 3.0 * batch * (per_video + per_text + batch * per_pair))
