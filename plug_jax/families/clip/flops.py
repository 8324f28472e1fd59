"""Training FLOPs of a CLIP step, from the inputs' own sizes (pixels included).

Per tower with ``T`` tokens, ``L`` layers, width ``D`` and MLP width ``M``, the forward pass
costs ``T * L * (2 * (4 D^2 + 2 D M) + 4 T D)`` (the four attention projections and the MLP
as 2 FLOPs per weight per token, plus ``QK^T`` and ``AV``); training is 3x the forward (the
backward pass costs two forwards). The vision tower's ``T`` is ``(H / p) * (W / p) + 1``
(patches and the class token) and its patch embedding adds ``2 * p^2 * C * D`` per patch;
each tower's projection adds ``2 * D * P`` per example; the ``[B, B]`` similarity adds
``2 * B * P`` per example. GradCache's second forward pass (``NUM_MICROBATCHES > 1``) is not
counted, as MFU counts model FLOPs, not recomputation.
"""
from __future__ import annotations


def tower_forward_flops(tokens: int, layers: int, width: int, mlp_dim: int) -> float:
    t, d = float(tokens), float(width)
    return t * layers * (2.0 * (4 * d * d + 2 * d * mlp_dim) + 4.0 * t * d)


def training_flops(config, batch: int, lengths) -> float:
    """``config``: a ``ClipConfig``; ``lengths``: ``task_feature_lengths`` (``image``
    ``(H, W, C)``, ``targets``)."""
    v, t = config.clip.vision, config.clip.text
    if "frames" in lengths:  # videos: every frame through the image tower
        frames, h, w, c = (int(x) for x in lengths["frames"])
    else:
        frames = 1
        h, w, c = (int(x) for x in lengths.get("image", (v.image_size, v.image_size,
                                                          v.num_channels)))
    patches = (h // v.patch_size) * (w // v.patch_size)
    fwd = (frames * (tower_forward_flops(patches + 1, v.layers, v.width, v.mlp_dim)
                     + 2.0 * patches * v.patch_size ** 2 * c * v.width
                     + 2.0 * v.width * v.projection_dim)
           + tower_forward_flops(int(lengths["targets"]), t.layers, t.width, t.mlp_dim)
           + 2.0 * t.width * t.projection_dim + 2.0 * batch * v.projection_dim)
    return 3.0 * batch * fwd
