"""Box overlap metrics for visual grounding (mPLUG grounding; MODEL_SPECS.md section 5).

Boxes are ``[..., 4]`` arrays ``[x0, y0, x1, y1]`` with exclusive ends (the Shop World
convention: a box covers the pixels ``x0 <= x < x1``, ``y0 <= y < y1``), so a box's area is
``(x1 - x0) * (y1 - y0)``. A box with ``x1 <= x0`` or ``y1 <= y0`` is empty (area 0; a
decoder can produce one). Every function works elementwise over the leading axes.

* :func:`iou`: intersection over union; 0 when the union is empty.
* :func:`giou`: generalised IoU (Rezatofighi et al. 2019): ``iou - (C - U) / C`` with ``C``
  the area of the smallest box enclosing both; in ``(-1, 1]``; equals ``iou`` when the
  enclosing box has no area.
* :func:`grounding_accuracy`: the share of predictions with ``iou >= threshold`` (0.5: the
  usual RefCOCO "Acc@0.5").

``xp`` (default numpy) lets the model's loss use the same formulas with ``jax.numpy``.
"""
from __future__ import annotations

import numpy as np


def _area(b, xp):
    return xp.maximum(b[..., 2] - b[..., 0], 0) * xp.maximum(b[..., 3] - b[..., 1], 0)


def _safe_div(num, den, xp):
    return xp.where(den > 0, num / xp.where(den > 0, den, 1), 0)


def _terms(a, b, xp):
    """``(intersection, union, enclosing area)`` (float)."""
    a = xp.asarray(a, xp.float32 if xp is not np else np.float64)
    b = xp.asarray(b, a.dtype)
    iw = xp.maximum(xp.minimum(a[..., 2], b[..., 2]) - xp.maximum(a[..., 0], b[..., 0]), 0)
    ih = xp.maximum(xp.minimum(a[..., 3], b[..., 3]) - xp.maximum(a[..., 1], b[..., 1]), 0)
    inter = iw * ih
    union = _area(a, xp) + _area(b, xp) - inter
    # the enclosing box of the two boxes as given (an empty box still spans its corners)
    lo_x = xp.minimum(xp.minimum(a[..., 0], a[..., 2]), xp.minimum(b[..., 0], b[..., 2]))
    hi_x = xp.maximum(xp.maximum(a[..., 0], a[..., 2]), xp.maximum(b[..., 0], b[..., 2]))
    lo_y = xp.minimum(xp.minimum(a[..., 1], a[..., 3]), xp.minimum(b[..., 1], b[..., 3]))
    hi_y = xp.maximum(xp.maximum(a[..., 1], a[..., 3]), xp.maximum(b[..., 1], b[..., 3]))
    enclosing = (hi_x - lo_x) * (hi_y - lo_y)
    return inter, union, enclosing


def iou(a, b, xp=np):
    """Elementwise IoU of ``[..., 4]`` boxes ``a`` and ``b`` -> ``[...]`` in [0, 1]."""
    inter, union, _ = _terms(a, b, xp)
    return _safe_div(inter, union, xp)


def giou(a, b, xp=np):
    """Elementwise generalised IoU -> ``[...]`` in (-1, 1]."""
    inter, union, enclosing = _terms(a, b, xp)
    return _safe_div(inter, union, xp) - _safe_div(enclosing - union, enclosing, xp)


def grounding_accuracy(pred, gold, threshold: float = 0.5) -> float:
    """The share of rows of ``pred`` / ``gold`` (``[N, 4]``) with IoU >= ``threshold``
    (0.0 for no rows)."""
    pred, gold = np.asarray(pred), np.asarray(gold)
    if pred.shape != gold.shape:
        raise ValueError(f"pred {pred.shape} and gold {gold.shape} boxes differ in shape")
    if pred.size == 0:
        return 0.0
    return float(np.mean(iou(pred, gold) >= threshold))


__all__ = ["giou", "grounding_accuracy", "iou"]
