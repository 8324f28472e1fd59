"""Generation evaluation of encoder-decoder models: ROUGE-L against the lead baseline.

``evaluate_generation`` decodes the encoder inputs of ``num_examples`` examples of a task's
split (beam search by default, PALM's beam 5 / length penalty 0.95), scores the outputs
against the task's ``targets`` with ROUGE-L (:mod:`plug_jax.metrics.rouge`), and scores the
extractive lead baseline (the first sentence of each input) the same way, so one line says
whether the model beats copying the first sentence. It writes ``gen/rouge_l`` and
``gen/lead_rouge_l`` to ``MODEL_DIR/metrics.jsonl`` at the checkpoint's step.

On the command line it is ``plug-eval`` with ``runs/eval_generation.gin`` (which sets
``EVAL_GENERATION = True``; ``plug_jax.main`` then calls this instead of
``loop.evaluate``)::

    plug-eval --gin_file=experiments/palm/shop_title_tiny.gin --gin.MODEL_DIR=/tmp/title

The examples are the raw text of the task's source (``inputs`` / ``targets`` strings, in
the unshuffled split's order); a source without text features falls back to decoding the
task's preprocessed token ids. The encoder sees what training fed it: the vocabulary's
encoding of ``inputs`` trimmed to the ``inputs`` feature length with EOS appended.
"""
from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np

from plug_jax.metrics import rouge
from plug_jax.trainer import loop
from plug_jax.trainer.loop import DatasetConfig, MeshConfig, TrainError
from plug_jax.trainer.metrics import MetricsLogger

METHODS = ("beam", "greedy")
GIN_SWITCH = "EVAL_GENERATION"  # the gin macro that makes plug-eval run this


def selected_by_gin() -> bool:
    """Whether the parsed gin config sets ``EVAL_GENERATION = True`` (plug-eval's choice
    between this and ``loop.evaluate``)."""
    import gin
    try:
        return gin.query_parameter(f"%{GIN_SWITCH}") is True
    except (ValueError, KeyError):
        return False


def _task_name(name: str) -> str:
    """The task whose examples are scored: a curriculum's last stage, a mixture's first task."""
    import seqio

    from plug_jax.data import curriculum
    if name not in seqio.TaskRegistry.names() and name not in seqio.MixtureRegistry.names() \
            and curriculum.is_curriculum(name):
        name = curriculum.get_curriculum(name).stages[-1].mixture_or_task_name
    if name in seqio.MixtureRegistry.names():
        name = seqio.MixtureRegistry.get(name).tasks[0].name
    return name


def task_text_examples(task_name: str, split: str, num_examples: int,
                       task_feature_lengths: dict | None = None) -> list[dict[str, str]]:
    """The first ``num_examples`` ``{"inputs", "targets"}`` texts of ``split`` (no shuffle)."""
    import seqio

    from plug_jax.data import configure_tensorflow
    configure_tensorflow()
    task = seqio.get_mixture_or_task(_task_name(task_name))
    out: list[dict[str, str]] = []
    ds = task.source.get_dataset(split=split, shuffle=False)
    spec = ds.element_spec
    if all(k in spec and spec[k].dtype.name == "string" for k in ("inputs", "targets")):
        for ex in ds.take(num_examples).as_numpy_iterator():
            out.append({k: ex[k].decode("utf-8") for k in ("inputs", "targets")})
        return out
    # Token features only (e.g. a pre-training objective): decode the preprocessed ids.
    ds = task.get_dataset(dict(task_feature_lengths or {}), split=split, shuffle=False)
    feats = task.output_features
    for ex in ds.take(num_examples).as_numpy_iterator():
        row = {}
        for k in ("inputs", "targets"):
            ids = [int(t) for t in ex[k]]
            eos = feats[k].vocabulary.eos_id
            if eos in ids:
                ids = ids[:ids.index(eos)]
            row[k] = feats[k].vocabulary.decode([t for t in ids if t > 0])
        out.append(row)
    return out


def _task_lang(task_name: str) -> str:
    import seqio
    spec = getattr(seqio.get_mixture_or_task(_task_name(task_name)), "plug_jax_spec", None) or {}
    return spec.get("lang", "zh")


def _generate(model, params, encoder_ids: np.ndarray, *, method: str, num_beams: int,
              length_penalty: float, max_new_tokens: int, eos: int | None,
              length_penalty_form: str = "power") -> np.ndarray:
    from plug_jax import decoding
    step_fn, init_cache = model.decode_fns()
    rows = encoder_ids.shape[0]
    p = {"model": params, "encoder_ids": encoder_ids}
    ids = np.zeros((rows, 1), np.int32)  # the decoder starts from token 0 (as loop.infer)
    mask = np.ones((rows, 1), np.int32)
    if method == "beam":
        return np.asarray(decoding.beam_search(
            step_fn, init_cache, p, ids, mask, max_new_tokens, num_beams=num_beams,
            length_penalty=length_penalty, eos_id=eos,
            length_penalty_form=length_penalty_form).sequences)
    return np.asarray(decoding.generate(step_fn, init_cache, p, ids, mask, max_new_tokens,
                                        eos_id=eos).tokens)


def evaluate_generation(*, model, model_dir: str, dataset_cfg: DatasetConfig,
                        split: str = "test", num_examples: int = 64, method: str = "beam",
                        num_beams: int = 5, length_penalty: float = 0.95,
                        length_penalty_form: str = "gnmt",
                        max_new_tokens: int = 32, lang: str | None = None,
                        batch_size: int = 16, num_samples: int = 3,
                        mesh: MeshConfig = MeshConfig(rules="dp"),
                        metric_writer: Any = None, params=None, vocabulary=None,
                        examples: Sequence[dict] | None = None) -> dict:
    """ROUGE-L F of the model's outputs and of the lead baseline on ``split``; returns
    ``{"rouge_l", "rouge_l_precision", "rouge_l_recall", "lead_rouge_l", "num_examples",
    "step", "predictions", "references"}``.

    Args:
      model: an encoder-decoder task wrapper (``models.EncoderDecoderLM``).
      model_dir: the run whose latest checkpoint is scored; ``metrics.jsonl`` gets the row.
      dataset_cfg: the task (``mixture_or_task_name``, a curriculum scores its last stage)
        and ``task_feature_lengths`` (``inputs`` trims the encoder input).
      split / num_examples: the first ``num_examples`` examples of ``split``, unshuffled.
      method: ``'beam'`` (``num_beams``, ``length_penalty``) or ``'greedy'``.
      lang: ROUGE tokenisation and sentence split (``None``: the task's language).
      batch_size: examples decoded together (the last batch is padded to it).
      num_samples: (input head, reference, prediction) triples printed.
      params / vocabulary / examples: use these instead of the checkpoint, the task's
        vocabulary and the task's examples (notebooks, tests).
    """
    if method not in METHODS:
        raise TrainError(f"evaluate_generation method={method!r} is not one of "
                         f"{list(METHODS)}; fix: --gin.GEN_METHOD=\"'beam'\"")
    if not getattr(model, "encoder_decoder", False):
        raise TrainError("evaluate_generation needs an encoder-decoder model (PALM, PLUG); "
                         "fix: use an encoder-decoder model gin file")
    name = dataset_cfg.mixture_or_task_name
    if vocabulary is None:
        from plug_jax.data.pipeline import task_vocabulary
        vocabulary = task_vocabulary(name, "inputs")
    lang = lang or _task_lang(name)
    if examples is None:
        examples = task_text_examples(name, split, num_examples,
                                      dict(dataset_cfg.task_feature_lengths))
    examples = list(examples)[:num_examples]
    if not examples:
        raise TrainError(f"split {split!r} of {name} gave no examples")
    step = None
    if params is None:
        params, step, _ = loop.load_for_inference(model, model_dir, dataset_cfg, mesh)
    if jax.process_count() > 1:  # params sharded over processes: gather them
        from jax.experimental import multihost_utils
        params = multihost_utils.process_allgather(params, tiled=True)
    params = jax.device_get(params)

    eos = getattr(vocabulary, "eos_id", None)
    width = int(dataset_cfg.task_feature_lengths["inputs"])
    keep = width - (1 if eos is not None else 0)
    encoded = [list(vocabulary.encode(ex["inputs"]))[:keep] + ([eos] if eos is not None else [])
               for ex in examples]
    bs = max(1, min(int(batch_size), len(encoded)))
    predictions: list[str] = []
    for start in range(0, len(encoded), bs):
        chunk = encoded[start:start + bs]
        enc = np.zeros((bs, width), np.int32)  # fixed shape: one compilation
        for r, e in enumerate(chunk):
            enc[r, :len(e)] = e
        out = _generate(model, params, enc, method=method, num_beams=int(num_beams),
                        length_penalty=float(length_penalty),
                        max_new_tokens=int(max_new_tokens), eos=eos,
                        length_penalty_form=length_penalty_form)
        for r in range(len(chunk)):
            toks = [int(t) for t in out[r]]
            if eos is not None and eos in toks:
                toks = toks[:toks.index(eos)]
            predictions.append(vocabulary.decode([t for t in toks if t > 0]))

    references = [ex["targets"] for ex in examples]
    leads = [rouge.lead_baseline(ex["inputs"], lang) for ex in examples]
    per = [rouge.rouge_l(p, r, lang) for p, r in zip(predictions, references)]
    n = len(per)
    res = {
        "rouge_l": sum(s["f"] for s in per) / n,
        "rouge_l_precision": sum(s["precision"] for s in per) / n,
        "rouge_l_recall": sum(s["recall"] for s in per) / n,
        "lead_rouge_l": rouge.corpus_rouge_l(leads, references, lang),
        "num_examples": n,
        "step": step,
    }
    logger = MetricsLogger(model_dir, metric_writer)
    logger.write(step if step is not None else 0,
                 {f"gen/{k}": res[k] for k in ("rouge_l", "rouge_l_precision",
                                               "rouge_l_recall", "lead_rouge_l",
                                               "num_examples")})
    logger.close()
    if jax.process_index() == 0:
        what = "title generation" if "title" in name else "generation"
        how = (f"beam {num_beams}, alpha {length_penalty:g}" if method == "beam" else "greedy")
        beats = res["rouge_l"] > res["lead_rouge_l"]
        print(f"{what} on {name}/{split} ({n} examples, {how}"
              + (f", step {step}" if step is not None else "")
              + f"): ROUGE-L F {res['rouge_l']:.4f}  | lead-sentence baseline "
              f"{res['lead_rouge_l']:.4f} -> the model {'beats' if beats else 'does NOT beat'} it",
              flush=True)
        print(f"  ROUGE-L precision {res['rouge_l_precision']:.4f}  recall "
              f"{res['rouge_l_recall']:.4f}", flush=True)
        for i in range(min(int(num_samples), n)):
            head = examples[i]["inputs"]
            head = head if len(head) <= 48 else head[:48] + "…"
            print(f"  sample {i}: input   {head}\n            reference  {references[i]}\n"
                  f"            prediction {predictions[i]}", flush=True)
    res["predictions"] = predictions
    res["references"] = references
    return res


__all__ = ["evaluate_generation", "selected_by_gin", "task_text_examples"]
