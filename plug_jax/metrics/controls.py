"""What every family's learning checks share: the eval batches of a split, a trained model
read back from an experiment's ``MODEL_DIR``, and generation next to a blank-image control.

* :func:`batches` and :func:`load_checkpoint`: the trainer's own eval pipeline and restore
  (used by the controls of mPLUG, X-CLIP and M6 and by mPLUG's grounding evaluation).
* :func:`captions_with_controls`: greedy texts (encoded once, KV-cached decoding) of a split's
  images and of as many blank images, scored with corpus CIDEr-D and BLEU-4
  (:mod:`plug_jax.metrics.captions`) and, given attribute names, with
  :func:`attribute_accuracy`: the share of examples whose generated text names the attribute
  value its reference names (the category or colour in a product title).
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping, Sequence

import jax
import numpy as np


def batches(dataset_cfg, split: str, max_examples: int | None):
    """The eval batches of ``dataset_cfg`` on ``split`` as numpy dicts, in order, through
    the pipeline the trainer uses (no shuffle, no repeat); stops once ``max_examples``
    rows were yielded (``None``: the whole split)."""
    from plug_jax.trainer import loop
    cfg = dataclasses.replace(dataset_cfg, split=split)
    seen = 0
    for b in loop._batch_iterator(cfg, repeat=False, shuffle=False):
        b = {k: np.asarray(v) for k, v in b.items()}
        yield b
        seen += len(b["decoder_target_tokens"])
        if max_examples is not None and seen >= max_examples:
            return


def load_checkpoint(argv, description: str, *, with_step: bool = False):
    """``(model, params, dataset_cfg, split)`` from gin flags (``--gin_file``,
    ``--gin.NAME=VALUE``) and ``--split``: the experiment's model restored from its
    ``MODEL_DIR`` (the command lines of ``controls``, ``grounding_eval``, ``t2i_eval`` and
    ``image_codes``); ``with_step`` appends the restored step."""
    import argparse
    import sys

    import gin

    from plug_jax import gin_utils
    from plug_jax.cli import add_gin_flags
    from plug_jax.trainer import loop
    bindings, rest = gin_utils.split_gin_flags(sys.argv[1:] if argv is None else argv)
    ap = add_gin_flags(argparse.ArgumentParser(description=description))
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
    print(f"{model_dir} @ step {step}")
    out = (model, jax.device_get(params), data, a.split)
    return out + (step,) if with_step else out


def _key(row) -> tuple:
    return tuple(int(t) for t in row if t > 0)


def attribute_accuracy(predictions: Sequence[str], references: Sequence[str],
                       names: Sequence[str], whole_words: bool = True) -> tuple[float, int]:
    """``(accuracy, n)``: over the ``n`` references that name exactly one of ``names``
    (case-insensitive, as whole words unless ``whole_words=False``, for Chinese; the longest
    name wins where one contains another, as "T-shirt" and "shirt"), the share of predictions
    that name the same one."""
    pats = sorted(set(names), key=len, reverse=True)
    edge = (r"(?<![\w-])", r"(?![\w-])") if whole_words else ("", "")
    regex = [(n, re.compile(edge[0] + re.escape(n.lower()) + edge[1])) for n in pats]

    def found(text: str) -> set[str]:
        text, out = text.lower(), set()
        for n, r in regex:
            if r.search(text) and not any(n.lower() in o.lower() for o in out):
                out.add(n)
        return out
    hits = n = 0
    for p, r in zip(predictions, references):
        want = found(r)
        if len(want) != 1:
            continue
        n += 1
        hits += int(want <= found(p))
    return (hits / n if n else float("nan")), n


def decode_texts(model, params, images, vocabulary, max_new_tokens: int,
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
                           lang: str = "en",
                           attributes: Mapping[str, Sequence[str]] | None = None
                           ) -> dict[str, Any]:
    """Greedy captions (encoded once, KV-cached decoding) of ``split``'s images and of the
    same number of blank images, scored against the references with corpus CIDEr-D and
    BLEU-4 (:mod:`plug_jax.metrics.captions`) and, for each ``attributes`` entry (``{name:
    the values' names}``), :func:`attribute_accuracy` as ``'<name>_accuracy'``:
    ``{'model': {...}, 'blank_image': {...}, 'examples': n, 'samples': [(prediction,
    reference)]}``."""
    from plug_jax.data.pipeline import task_vocabulary
    from plug_jax.metrics.captions import caption_scores
    vocab = task_vocabulary(dataset_cfg.mixture_or_task_name)
    images, refs = [], []
    for b in batches(dataset_cfg, split, max_examples):
        for img, tgt in zip(b["image"], b["decoder_target_tokens"]):
            if not (tgt > 0).any():
                continue
            images.append(img)
            refs.append(vocab.decode([t for t in _key(tgt) if t != getattr(vocab, "eos_id", 1)]))
    if max_examples is not None:
        images, refs = images[:max_examples], refs[:max_examples]
    images = np.stack(images).astype(np.float32)
    preds = decode_texts(model, params, images, vocab, max_new_tokens)
    blank = decode_texts(model, params, np.zeros_like(images), vocab, max_new_tokens)
    refs_l = [[r] for r in refs]
    out = {"model": caption_scores(preds, refs_l, lang),
           "blank_image": caption_scores(blank, refs_l, lang), "examples": len(refs),
           "samples": list(zip(preds[:3], refs[:3])), "blank_sample": blank[0]}
    for name, values in (attributes or {}).items():
        for key, texts in (("model", preds), ("blank_image", blank)):
            acc, n = attribute_accuracy(texts, refs, values, whole_words=lang != "zh")
            out[key][f"{name}_accuracy"] = acc
            out[f"{name}_examples"] = n
    return out


def format_caption_controls(res: dict, split: str) -> str:
    m, b = res["model"], res["blank_image"]
    lines = [f"captions on {split} ({res['examples']} images, greedy): CIDEr {m['cider']:.3f} "
             f"BLEU-4 {m['bleu4']:.3f} | blank image CIDEr {b['cider']:.3f} BLEU-4 "
             f"{b['bleu4']:.3f}"]
    for key in sorted(k for k in m if k.endswith("_accuracy")):
        name = key[:-len("_accuracy")]
        lines.append(f"  {name} named as in the reference ({res[f'{name}_examples']} texts): "
                     f"model {m[key]:.3f} | blank image {b[key]:.3f}")
    for p, r in res["samples"]:
        lines.append(f"  model: {p}\n  truth: {r}")
    lines.append(f"  blank image: {res['blank_sample']}")
    return "\n".join(lines)
