"""Learning results with their controls: does a trained mPLUG use the image?

Captioning models (``encoder_text=False``) are scored with ``captions_with_controls``: greedy
captions of the split's images and of blank images, corpus CIDEr-D and BLEU-4 against the
references (:mod:`plug_jax.metrics.captions`).

``vqa_with_controls`` scores one checkpoint on an eval split three ways, over the same
questions and the same pipeline the trainer uses (the task's seqio examples through the
``image_text`` converter):

* **model**: greedy exact-match accuracy (teacher-forced argmax of every answer token, EOS
  included, which is what greedy decoding reproduces), overall and per question type;
* **blank image**: the same model and questions with every image replaced by zeros (after
  CLIP normalisation: a uniform grey picture, no product);
* **answer prior**: answering every question with the most frequent training answer of its
  question type; the accuracy a model that ignores the image can reach from the type alone.

A model that reads the image beats the prior; the blank-image run falls back to about the
prior. Run it as a module::

    python -m plug_jax.families.mplug.controls --gin_file=experiments/mplug/shop_vqa_tiny.gin \\
        --gin.MODEL_DIR=/tmp/mplug_vqa
"""
from __future__ import annotations

import collections
import dataclasses
from typing import Any

import jax
import numpy as np


def _batches(dataset_cfg, split: str, max_examples: int | None):
    from plug_jax.trainer import loop
    cfg = dataclasses.replace(dataset_cfg, split=split)
    seen = 0
    for b in loop._batch_iterator(cfg, repeat=False, shuffle=False):
        b = {k: np.asarray(v) for k, v in b.items()}
        yield b
        seen += len(b["decoder_target_tokens"])
        if max_examples is not None and seen >= max_examples:
            return


def _key(row) -> tuple:
    return tuple(int(t) for t in row if t > 0)


def answer_prior(dataset_cfg, split: str = "train", max_examples: int | None = None) -> dict:
    """``{question_type: most frequent target token sequence}`` over ``split``."""
    counts: dict[int, collections.Counter] = collections.defaultdict(collections.Counter)
    for b in _batches(dataset_cfg, split, max_examples):
        for qt, tgt in zip(b["question_type"].reshape(-1), b["decoder_target_tokens"]):
            counts[int(qt)][_key(tgt)] += 1
    return {qt: c.most_common(1)[0][0] for qt, c in counts.items()}


def vqa_with_controls(model, params, dataset_cfg, *, split: str = "validation",
                      prior_split: str = "train", max_examples: int | None = None,
                      prior_examples: int | None = None) -> dict[str, Any]:
    """``{'model': acc, 'blank_image': acc, 'answer_prior': acc, 'per_type': {name: (model,
    blank, prior)}, 'examples': n}`` on ``split`` (see the module docstring)."""
    if "question_type" not in dict(dataset_cfg.task_feature_lengths):
        raise ValueError("vqa_with_controls needs the question_type label: add "
                         "'question_type': 1 to TASK_FEATURE_LENGTHS")
    prior = answer_prior(dataset_cfg, prior_split, prior_examples)
    fn = jax.jit(model.eval_outputs)
    rows = collections.defaultdict(list)  # type -> [(model, blank, prior)]
    for b in _batches(dataset_cfg, split, max_examples):
        got = jax.device_get(fn(params, b))
        blank = jax.device_get(fn(params, {**b, "image": np.zeros_like(b["image"])}))
        for i, qt in enumerate(b["question_type"].reshape(-1)):
            if got["valid"][i] <= 0:
                continue
            p = prior.get(int(qt)) == _key(b["decoder_target_tokens"][i])
            rows[int(qt)].append((got["exact"][i], blank["exact"][i], float(p)))
    allrows = np.asarray([r for rs in rows.values() for r in rs], np.float64)
    if not len(allrows):
        raise ValueError(f"split {split!r} of {dataset_cfg.mixture_or_task_name} gave no "
                         f"answers to score")
    names = getattr(model, "question_types", ())
    per = {}
    for qt in sorted(rows):
        name = names[qt] if 0 <= qt < len(names) else f"type_{qt}"
        per[name] = tuple(float(x) for x in np.mean(np.asarray(rows[qt]), axis=0))
    m, bl, pr = (float(x) for x in allrows.mean(axis=0))
    return {"model": m, "blank_image": bl, "answer_prior": pr, "per_type": per,
            "examples": int(len(allrows))}


def _decode_captions(model, params, images, vocabulary, max_new_tokens: int,
                     batch: int = 50) -> list[str]:
    from plug_jax import decoding
    step_fn, init_cache = model.decode_fns()
    eos = getattr(vocabulary, "eos_id", 1)
    out = []
    for s in range(0, len(images), batch):
        chunk = images[s:s + batch]
        n = len(chunk)
        if n < batch:  # one shape: one compilation
            chunk = np.concatenate([chunk, np.zeros((batch - n,) + chunk.shape[1:],
                                                    chunk.dtype)])
        toks = np.asarray(decoding.generate(
            step_fn, init_cache, {"model": params, "encoder_features": {"image": chunk}},
            np.zeros((batch, 1), np.int32), np.ones((batch, 1), np.int32), max_new_tokens,
            eos_id=eos).tokens)[:n]
        for row in toks:
            ids = [int(t) for t in row]
            ids = ids[:ids.index(eos)] if eos in ids else ids
            out.append(vocabulary.decode([t for t in ids if t > 0]))
    return out


def captions_with_controls(model, params, dataset_cfg, *, split: str = "validation",
                           max_examples: int | None = None, max_new_tokens: int = 48,
                           lang: str = "en") -> dict[str, Any]:
    """Greedy captions (encoded once, KV-cached decoding) of ``split``'s images and of the
    same number of blank images, scored against the references with corpus CIDEr-D and
    BLEU-4 (:mod:`plug_jax.metrics.captions`): ``{'model': {...}, 'blank_image': {...},
    'examples': n, 'samples': [(prediction, reference)]}``."""
    from plug_jax.data.pipeline import task_vocabulary
    from plug_jax.metrics.captions import caption_scores
    vocab = task_vocabulary(dataset_cfg.mixture_or_task_name)
    images, refs = [], []
    for b in _batches(dataset_cfg, split, max_examples):
        for img, tgt in zip(b["image"], b["decoder_target_tokens"]):
            if not (tgt > 0).any():
                continue
            images.append(img)
            refs.append(vocab.decode([t for t in _key(tgt) if t != getattr(vocab, "eos_id", 1)]))
    if max_examples is not None:
        images, refs = images[:max_examples], refs[:max_examples]
    images = np.stack(images).astype(np.float32)
    preds = _decode_captions(model, params, images, vocab, max_new_tokens)
    blank = _decode_captions(model, params, np.zeros_like(images), vocab, max_new_tokens)
    refs_l = [[r] for r in refs]
    return {"model": caption_scores(preds, refs_l, lang),
            "blank_image": caption_scores(blank, refs_l, lang), "examples": len(refs),
            "samples": list(zip(preds[:3], refs[:3])), "blank_sample": blank[0]}


def format_caption_controls(res: dict, split: str) -> str:
    m, b = res["model"], res["blank_image"]
    lines = [f"captions on {split} ({res['examples']} images, greedy): CIDEr {m['cider']:.3f} "
             f"BLEU-4 {m['bleu4']:.3f} | blank image CIDEr {b['cider']:.3f} BLEU-4 "
             f"{b['bleu4']:.3f}"]
    for p, r in res["samples"]:
        lines.append(f"  model: {p}\n  truth: {r}")
    lines.append(f"  blank image: {res['blank_sample']}")
    return "\n".join(lines)


def format_controls(res: dict, split: str) -> str:
    lines = [f"VQA accuracy on {split} ({res['examples']} questions): model "
             f"{res['model']:.3f} | blank image {res['blank_image']:.3f} | answer prior "
             f"{res['answer_prior']:.3f}"]
    for name, (m, b, p) in res["per_type"].items():
        lines.append(f"  {name:9s} model {m:.3f} | blank image {b:.3f} | answer prior {p:.3f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    import argparse

    import gin

    from plug_jax import gin_utils
    from plug_jax.trainer import loop
    from plug_jax.cli import add_gin_flags
    import sys
    bindings, rest = gin_utils.split_gin_flags(sys.argv[1:] if argv is None else argv)
    ap = add_gin_flags(argparse.ArgumentParser(description=__doc__.split("\n\n")[0]))
    ap.add_argument("--split", default="validation")
    a = ap.parse_args(rest)
    search = a.gin_search_paths.split(",") if a.gin_search_paths else None
    gin_utils.parse_gin(a.gin_file, bindings, search)
    model = gin.query_parameter("%MODEL").scoped_configurable_fn()
    model_dir = gin.query_parameter("%MODEL_DIR")
    data = loop.DatasetConfig(gin.query_parameter("%MIXTURE_OR_TASK_NAME"),
                              gin.query_parameter("%TASK_FEATURE_LENGTHS"), batch_size=64,
                              converter=gin.query_parameter("%FEATURE_CONVERTER"))
    params, step, _ = loop.load_for_inference(model, model_dir, data,
                                              loop.MeshConfig(rules="dp"))
    params = jax.device_get(params)
    print(f"{model_dir} @ step {step}")
    if getattr(model, "encoder_text", True):
        res = vqa_with_controls(model, params, data, split=a.split)
        print(format_controls(res, a.split), flush=True)
    else:  # a captioning model
        lang = "zh" if "_zh_" in data.mixture_or_task_name else "en"
        res = captions_with_controls(model, params, data, split=a.split, lang=lang,
                                     max_new_tokens=int(data.task_feature_lengths["targets"]))
        print(format_caption_controls(res, a.split), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
