"""Grounding results with a blank-image control: does a trained grounding mPLUG look at the
image, or does it place boxes from the phrase alone?

``grounding_with_controls`` scores one checkpoint (a
:class:`plug_jax.models.grounding.GroundingLM`) on an eval split twice, over the same
referring phrases and the pipeline the trainer uses (the task's seqio examples through the
``image_text`` converter), with masked greedy decoding (four location tokens):

* **model**: accuracy at IoU 0.5 (the share of phrases whose decoded box overlaps the gold
  box with IoU >= 0.5), and the mean IoU;
* **blank image**: the same model and phrases with every image replaced by zeros (after CLIP
  normalisation: a uniform grey picture, no product). Only the phrase is left: a position
  phrase ("the product on the left") still narrows the box to a third of the image, but
  sizes and vertical placement vary per image, so a model that reads the image should be
  far above this.

Run it as a module (``python -m plug_jax.families.mplug.controls`` does the same for a
grounding experiment)::

    python -m plug_jax.families.mplug.grounding_eval \\
        --gin_file=experiments/mplug/shop_grounding_tiny.gin --gin.MODEL_DIR=/tmp/mplug_grd
"""
from __future__ import annotations

from typing import Any

import jax
import numpy as np

from plug_jax.metrics.controls import batches as _batches
from plug_jax.metrics.controls import load_checkpoint
from plug_jax.metrics import boxes as box_metrics


def grounding_with_controls(model, params, dataset_cfg, split: str = "validation", *,
                            max_examples: int | None = None) -> dict[str, Any]:
    """``{'model': acc, 'blank_image': acc, 'mean_iou': .., 'blank_mean_iou': ..,
    'examples': n}`` on ``split`` (accuracies at IoU 0.5; module docstring)."""
    fn = jax.jit(model.eval_outputs)
    pred, blank, gold = [], [], []
    for b in _batches(dataset_cfg, split, max_examples):
        got = jax.device_get(fn(params, b))
        bl = jax.device_get(fn(params, {**b, "image": np.zeros_like(b["image"])}))
        keep = np.asarray(got["valid"]) > 0
        pred.append(np.asarray(got["pred_box"])[keep])
        blank.append(np.asarray(bl["pred_box"])[keep])
        gold.append(np.asarray(got["gold_box"])[keep])
    if not pred or not sum(len(p) for p in pred):
        raise ValueError(f"split {split!r} of {dataset_cfg.mixture_or_task_name} gave no "
                         f"boxes to score")
    pred, blank, gold = (np.concatenate(x)[:max_examples] for x in (pred, blank, gold))
    return {"model": box_metrics.grounding_accuracy(pred, gold, 0.5),
            "blank_image": box_metrics.grounding_accuracy(blank, gold, 0.5),
            "mean_iou": float(np.mean(box_metrics.iou(pred, gold))),
            "blank_mean_iou": float(np.mean(box_metrics.iou(blank, gold))),
            "examples": int(len(gold))}


def format_grounding_controls(res: dict, split: str) -> str:
    return (f"grounding accuracy@0.5 on {split} ({res['examples']} phrases, masked greedy): "
            f"model {res['model']:.3f} | blank image {res['blank_image']:.3f}\n"
            f"  mean IoU: model {res['mean_iou']:.3f} | blank image "
            f"{res.get('blank_mean_iou', float('nan')):.3f}")


def main(argv=None) -> int:
    import sys
    model, params, data, split = load_checkpoint(argv, __doc__.split("\n\n")[0])
    if not hasattr(model, "predict_boxes"):
        print(f"{type(model).__name__} is not a grounding model; fix: use a gin file whose "
              f"MODEL is GroundingLM (experiments/mplug/shop_grounding_tiny.gin)",
              file=sys.stderr)
        return 2
    res = grounding_with_controls(model, params, data, split=split)
    print(format_grounding_controls(res, split), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
