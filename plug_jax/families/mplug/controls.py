"""Learning results with their controls: does a trained mPLUG use the image?

Captioning models (``encoder_text=False``) are scored with ``captions_with_controls``
(:mod:`plug_jax.metrics.controls`, shared with M6): greedy captions of the split's images and
of blank images, corpus CIDEr-D and BLEU-4 against the references.

``vqa_with_controls`` scores one checkpoint on an eval split three ways, over the same
questions and the same pipeline the trainer uses (the task's seqio examples through the
``image_text`` converter):

* **model**: greedy exact-match accuracy (teacher-forced argmax of every answer token, EOS
  included, which is what greedy decoding reproduces), overall and per question type;
* **blank image**: the same model and questions with every image replaced by zeros (after
  CLIP normalisation: a uniform grey picture, no product);
* **answer prior**: answering every question with the most frequent training answer of its
  question type; the accuracy a model that ignores the image can reach from the type alone;
* **answer list** (VQA by ranking, the released ``rank_answer``): the most likely of every
  distinct training answer, by summed log-probability (``ImageTextLM.answer_scores``).

A model that reads the image beats the prior; the blank-image run falls back to about the
prior.

Retrieval models (``models.ImageTextPretrain``) are scored with ``retrieval_with_controls``:
R@1/5/10 both ways over the split's image-caption pairs (ITC alone, and after ITM re-ranking
of the ITC top ``k_test``), and the same with every image blank; ties among the blank
images are broken at random, so the control is the chance level.

Grounding models are scored by :mod:`plug_jax.families.mplug.grounding_eval` (accuracy at
IoU 0.5 next to blank images), which this command line also runs for a grounding experiment.

Run it as a module::

    python -m plug_jax.families.mplug.controls --gin_file=experiments/mplug/shop_vqa_tiny.gin \\
        --gin.MODEL_DIR=/tmp/mplug_vqa
"""
from __future__ import annotations

import collections
from typing import Any

import jax
import numpy as np

from plug_jax.metrics.controls import batches as _batches
from plug_jax.metrics.controls import (captions_with_controls, format_caption_controls,  # noqa: F401
                                       load_checkpoint)


def _key(row) -> tuple:
    return tuple(int(t) for t in row if t > 0)


def _answer_counts(dataset_cfg, split: str, max_examples: int | None) -> dict:
    counts: dict[int, collections.Counter] = collections.defaultdict(collections.Counter)
    for b in _batches(dataset_cfg, split, max_examples):
        for qt, tgt in zip(b["question_type"].reshape(-1), b["decoder_target_tokens"]):
            if (tgt > 0).any():  # not a padding row of the last batch
                counts[int(qt)][_key(tgt)] += 1
    return counts


def answer_prior(dataset_cfg, split: str = "train", max_examples: int | None = None) -> dict:
    """``{question_type: most frequent target token sequence}`` over ``split``."""
    counts = _answer_counts(dataset_cfg, split, max_examples)
    return {qt: c.most_common(1)[0][0] for qt, c in counts.items()}


def answer_list(counts: dict, width: int) -> np.ndarray:
    """``[N, width]`` int32: every distinct answer of ``counts`` (0-padded), the closed list
    that answer-list ranking chooses from."""
    keys = sorted({k for c in counts.values() for k in c})
    out = np.zeros((len(keys), width), np.int32)
    for i, k in enumerate(keys):
        out[i, :len(k[:width])] = k[:width]
    return out


def vqa_with_controls(model, params, dataset_cfg, *, split: str = "validation",
                      prior_split: str = "train", max_examples: int | None = None,
                      prior_examples: int | None = None,
                      answer_lists: bool = True) -> dict[str, Any]:
    """``{'model': acc, 'blank_image': acc, 'answer_prior': acc, 'per_type': {name: (model,
    blank, prior[, answer list])}, 'examples': n}`` on ``split`` (see the module
    docstring); with ``answer_lists`` (and a model with ``answer_scores``) also
    ``'answer_list'``: the accuracy of choosing the most likely answer of the closed list of
    every distinct ``prior_split`` answer (the released ``rank_answer``)."""
    if "question_type" not in dict(dataset_cfg.task_feature_lengths):
        raise ValueError("vqa_with_controls needs the question_type label: add "
                         "'question_type': 1 to TASK_FEATURE_LENGTHS")
    counts = _answer_counts(dataset_cfg, prior_split, prior_examples)
    prior = {qt: c.most_common(1)[0][0] for qt, c in counts.items()}
    fn = jax.jit(model.eval_outputs)
    ranked = hasattr(model, "answer_scores") and answer_lists
    if ranked:
        width = int(dict(dataset_cfg.task_feature_lengths)["targets"])
        answers = answer_list(counts, width)
        keys = [_key(a) for a in answers]
        score = jax.jit(model.answer_scores)
    rows = collections.defaultdict(list)  # type -> [(model, blank, prior[, ranked])]
    for b in _batches(dataset_cfg, split, max_examples):
        got = jax.device_get(fn(params, b))
        blank = jax.device_get(fn(params, {**b, "image": np.zeros_like(b["image"])}))
        if ranked:
            best = np.argmax(np.asarray(score(params, {
                "image": b["image"], "encoder_input_tokens": b["encoder_input_tokens"]},
                answers)), axis=1)
        for i, qt in enumerate(b["question_type"].reshape(-1)):
            if got["valid"][i] <= 0:
                continue
            truth = _key(b["decoder_target_tokens"][i])
            p = prior.get(int(qt)) == truth
            row = (got["exact"][i], blank["exact"][i], float(p))
            if ranked:
                row += (float(keys[best[i]] == truth),)
            rows[int(qt)].append(row)
    allrows = np.asarray([r for rs in rows.values() for r in rs], np.float64)
    if not len(allrows):
        raise ValueError(f"split {split!r} of {dataset_cfg.mixture_or_task_name} gave no "
                         f"answers to score")
    names = getattr(model, "question_types", ())
    per = {}
    for qt in sorted(rows):
        name = names[qt] if 0 <= qt < len(names) else f"type_{qt}"
        per[name] = tuple(float(x) for x in np.mean(np.asarray(rows[qt]), axis=0))
    means = [float(x) for x in allrows.mean(axis=0)]
    out = {"model": means[0], "blank_image": means[1], "answer_prior": means[2],
           "per_type": per, "examples": int(len(allrows))}
    if ranked:
        out["answer_list"] = means[3]
        out["answer_list_size"] = int(len(answers))
    return out


def retrieval_with_controls(model, params, dataset_cfg, *, split: str = "validation",
                            max_examples: int | None = 256,
                            tie_breaks: int = 10) -> dict[str, Any]:
    """``{'model': metrics, 'blank_image': metrics, 'examples': n}``: the model's
    ``whole_set_metrics`` over the first ``max_examples`` pairs of ``split``, with the real
    images and with blank ones (the mean over ``tie_breaks`` random tie-breaks)."""
    fn = jax.jit(model.eval_outputs)
    real, blank = [], []
    for b in _batches(dataset_cfg, split, max_examples):
        real.append(jax.device_get(fn(params, b)))
        blank.append(jax.device_get(fn(params, {**b, "image": np.zeros_like(b["image"])})))

    def cat(parts):
        out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        return {k: v[:max_examples] for k, v in out.items()} if max_examples else out

    real, blank = cat(real), cat(blank)
    # blank images tie: the control is the mean over random tie-breaks (the chance level)
    runs = [model.whole_set_metrics(params, blank, tie_break_seed=s) for s in range(tie_breaks)]
    return {"model": model.whole_set_metrics(params, real),
            "blank_image": {k: float(np.mean([r[k] for r in runs])) for k in runs[0]},
            "examples": int(np.sum(real["valid"] > 0))}


def format_retrieval_controls(res: dict, split: str) -> str:
    m, b = res["model"], res["blank_image"]
    lines = [f"retrieval on {split} ({res['examples']} image-caption pairs; identical "
             f"captions count as positives):"]
    for prefix, name in (("itc_", "ITC"), ("", "ITC + ITM re-rank")):
        for d in ("i2t", "t2i"):
            cells = " ".join(f"R@{k} {m[f'{prefix}{d}_r@{k}']:.3f} (blank "
                             f"{b[f'{prefix}{d}_r@{k}']:.3f})" for k in (1, 5, 10))
            lines.append(f"  {name:17s} {d}: {cells}")
    return "\n".join(lines)


def format_controls(res: dict, split: str) -> str:
    lines = [f"VQA accuracy on {split} ({res['examples']} questions): model "
             f"{res['model']:.3f} | blank image {res['blank_image']:.3f} | answer prior "
             f"{res['answer_prior']:.3f}"]
    if "answer_list" in res:
        lines[0] += (f" | ranking the {res['answer_list_size']}-answer list "
                     f"{res['answer_list']:.3f}")
    for name, (m, b, p, *r) in res["per_type"].items():
        lines.append(f"  {name:9s} model {m:.3f} | blank image {b:.3f} | answer prior {p:.3f}"
                     + (f" | answer list {r[0]:.3f}" if r else ""))
    return "\n".join(lines)


def main(argv=None) -> int:
    model, params, data, split = load_checkpoint(argv, __doc__.split("\n\n")[0])
    if hasattr(model, "predict_boxes"):  # grounding
        from plug_jax.families.mplug import grounding_eval
        res = grounding_eval.grounding_with_controls(model, params, data, split=split)
        print(grounding_eval.format_grounding_controls(res, split), flush=True)
    elif hasattr(model, "rerank"):  # retrieval / pre-training
        res = retrieval_with_controls(model, params, data, split=split)
        print(format_retrieval_controls(res, split), flush=True)
    elif getattr(model, "encoder_text", True):
        res = vqa_with_controls(model, params, data, split=split)
        print(format_controls(res, split), flush=True)
    else:  # a captioning model
        lang = "zh" if "_zh_" in data.mixture_or_task_name else "en"
        res = captions_with_controls(model, params, data, split=split, lang=lang,
                                     max_new_tokens=int(data.task_feature_lengths["targets"]))
        print(format_caption_controls(res, split), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
