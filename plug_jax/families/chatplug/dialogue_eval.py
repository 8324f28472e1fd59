"""Does ChatPLUG answer from the retrieved passage? Attribute accuracy, knowledge F1 and
controls on held-out Shop World dialogues.

Each example of ``chatplug_shop_{zh,en}_v1`` ends with the user's turn; the reference
response (the dialogue's final assistant turn) states some of the product's attributes
(a follow-up answer: the one asked about, e.g. material; the recommendation: brand, colour,
material, category, price, season) and quotes the description sentence that states it.
The model's response (ChatPLUG's released decoding: beams 3, length penalty 1.2, repetition
penalty 1.2, no-repeat 6-gram, minimum length 10) is scored by:

* **attribute accuracy**: the share of responses that state *every* attribute value the
  reference states (the product's value of that attribute appears in the response; an
  attribute counts only where its value appears in the reference itself). Also per
  attribute, and on the examples whose gold description the retriever returned;
* **knowledge F1**: unigram F1 between the response and the gold knowledge (the product's
  description), characters for Chinese, lower-cased words for English (the F1 of
  ``plug_jax.metrics.rouge.tokenize``), as in the knowledge-grounded dialogue literature;
* **F1** against the reference response.

Controls, printed beside the model: the same model with the knowledge passages removed at
test time (their slots emptied), and, with ``--control_dir``, a model trained on
``chatplug_shop_nopassage_*`` (the same dialogues, never any knowledge passage). The
dialogue context keeps the recommendation turn, which names colour, material and price, so
a follow-up about those can be answered without a passage; size, season and a
recommendation cannot. ``--check_cache N`` also decodes N examples greedily through the
recompute path (the encoder and the whole decoder prefix re-run every step) and checks the
tokens equal the cached path's::

    python -m plug_jax.families.chatplug.dialogue_eval \\
        --gin_file=experiments/chatplug/shop_dialogue_zh_tiny.gin --gin.MODEL_DIR=/tmp/cp \\
        [--split test] [--limit 300] [--control_dir /tmp/cp0] [--check_cache 8]
"""
from __future__ import annotations

import re
import sys
import time
from collections import Counter
from typing import Optional, Sequence

import jax
import numpy as np

# Released decoding defaults (XDPX chat pipeline; MODEL_SPECS.md section 13).
RELEASED_DECODING = {"num_beams": 3, "length_penalty": 1.2, "repetition_penalty": 1.2,
                     "no_repeat_ngram_size": 6, "min_length": 10}
CHECKED_ATTRIBUTES = ("brand", "colour", "material", "category", "size", "season", "price")


# --------------------------------------------------------------------------- scoring
def parse_product_id(product_id: str) -> tuple[int, str, int]:
    """``"sw0-test-12"`` -> ``(0, "test", 12)``."""
    m = re.fullmatch(r"sw(\d+)-([a-z]+)-(\d+)", product_id)
    if not m:
        raise ValueError(f"not a Shop World product id: {product_id!r}")
    return int(m.group(1)), m.group(2), int(m.group(3))


def attribute_values(product_id: str, lang: str) -> dict[str, str]:
    """The surface form of each checked attribute of the product, as dialogues write it."""
    from plug_jax.data.shop_world import world
    seed, split, index = parse_product_id(product_id)
    p = world.product(seed, split, index)
    names = p.names(lang)
    out = {a: names[a] for a in CHECKED_ATTRIBUTES if a in names}
    out["price"] = str(p.price)
    return out


def mentions(text: str, value: str, lang: str) -> bool:
    """Whether ``text`` states ``value``: a substring for Chinese; a case-insensitive
    whole-word (or whole-number) match for English."""
    if lang == "zh":
        return value in text
    return re.search(r"(?<![\w-])" + re.escape(value.lower()) + r"(?![\w-])",
                     text.lower()) is not None


def unigram_f1(prediction: str, reference: str, lang: str) -> float:
    from plug_jax.metrics import rouge
    p, r = rouge.tokenize(prediction, lang), rouge.tokenize(reference, lang)
    common = sum((Counter(p) & Counter(r)).values())
    if not p or not r or common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(r)
    return 2 * precision * recall / (precision + recall)


def score_responses(predictions: Sequence[str], references: Sequence[str],
                    product_ids: Sequence[str], knowledge: Sequence[str], lang: str,
                    retrieved: Optional[Sequence[bool]] = None) -> dict:
    """Attribute accuracy (overall, per attribute, on retrieved examples), knowledge F1
    and reference F1 of ``predictions``; see the module docstring."""
    if not (len(predictions) == len(references) == len(product_ids) == len(knowledge)):
        raise ValueError("predictions, references, product_ids and knowledge differ in length")
    if not predictions:
        raise ValueError("no predictions to score")
    right, per_attr, right_retrieved = [], {}, []
    for i, (pred, ref, pid) in enumerate(zip(predictions, references, product_ids)):
        values = attribute_values(pid, lang)
        stated = [a for a, v in values.items() if mentions(ref, v, lang)]
        ok = [mentions(pred, values[a], lang) for a in stated]
        for a, good in zip(stated, ok):
            per_attr.setdefault(a, []).append(good)
        right.append(all(ok))
        if retrieved is not None and retrieved[i]:
            right_retrieved.append(all(ok))
    return {
        "attribute_accuracy": float(np.mean(right)),
        "per_attribute": {a: (float(np.mean(v)), len(v)) for a, v in sorted(per_attr.items())},
        "attribute_accuracy_retrieved": (float(np.mean(right_retrieved))
                                         if right_retrieved else float("nan")),
        "num_retrieved": len(right_retrieved),
        "knowledge_f1": float(np.mean([unigram_f1(p, k, lang)
                                       for p, k in zip(predictions, knowledge)])),
        "f1": float(np.mean([unigram_f1(p, r, lang) for p, r in zip(predictions, references)])),
        "num_examples": len(predictions),
        "correct": right,
    }


# --------------------------------------------------------------------------- examples
def held_out_examples(task_name: str, split: str, lengths: dict,
                      limit: Optional[int] = None) -> list[dict]:
    """The task's preprocessed examples of ``split`` in order (no shuffle): ``inputs``
    ids, ``passages``, ``targets_pretokenized``, ``product_id``, ``gold_rank``."""
    import seqio

    from plug_jax.data import configure_tensorflow
    configure_tensorflow()
    ds = seqio.get_mixture_or_task(task_name).get_dataset(
        dict(lengths), split=split, shuffle=False)
    if limit:
        ds = ds.take(int(limit))
    out = []
    for ex in ds.as_numpy_iterator():
        out.append({"inputs": np.asarray(ex["inputs"], np.int32),
                    "passages": [p.decode() for p in ex["passages"]],
                    "reference": ex["targets_pretokenized"].decode(),
                    "product_id": ex["product_id"].decode(),
                    "gold_rank": int(ex["gold_rank"])})
    return out


def gold_knowledge(product_id: str, lang: str) -> str:
    """The product's own description (the gold knowledge passage)."""
    from plug_jax.data.shop_world import spans, world
    seed, split, index = parse_product_id(product_id)
    return spans.description_of(world.product(seed, split, index), lang)["description"]


def without_knowledge(inputs: np.ndarray, passages: Sequence[str], passage_length: int,
                      knowledge_marker: str) -> np.ndarray:
    """``inputs`` with every knowledge passage's slot emptied (all padding): the test-time
    no-passage control. A knowledge passage is one whose text holds the template's
    knowledge suffix (``knowledge_marker``)."""
    rows = np.array(inputs, np.int32).reshape(-1, passage_length)
    for i, text in enumerate(passages):
        if text and knowledge_marker in text:
            rows[i] = 0
    return rows.reshape(-1)


# --------------------------------------------------------------------------- decoding
def generate(model, params, inputs: np.ndarray, vocabulary, *, max_new_tokens: int,
             batch_size: int = 16, cache: bool = True, method: str = "beam",
             progress: bool = True, **decoding_options) -> list[str]:
    """Decoded responses of the encoder rows ``inputs [N, P * L]`` (``method`` ``beam``
    with ``decoding_options``, or ``greedy``), in fixed-shape batches."""
    from plug_jax import decoding
    fns = model.decode_fns(cache=cache)
    eos = vocabulary.eos_id
    out: list[str] = []
    n = len(inputs)
    t0 = time.time()
    for start in range(0, n, batch_size):
        chunk = inputs[start:start + batch_size]
        enc = np.zeros((batch_size, inputs.shape[1]), np.int32)
        enc[:len(chunk)] = chunk
        p = {"model": params, "encoder_ids": enc}
        ids = np.zeros((batch_size, 1), np.int32)
        mask = np.ones((batch_size, 1), np.int32)
        if method == "beam":
            seqs = decoding.beam_search(*fns, p, ids, mask, max_new_tokens, eos_id=eos,
                                        **decoding_options).sequences
        else:
            seqs = decoding.generate(*fns, p, ids, mask, max_new_tokens, eos_id=eos).tokens
        for row in np.asarray(seqs)[:len(chunk)]:
            toks = [int(t) for t in row]
            if eos in toks:
                toks = toks[:toks.index(eos)]
            out.append(vocabulary.decode([t for t in toks if t > 0]))
        if progress:
            done = min(start + batch_size, n)
            rate = done / max(time.time() - t0, 1e-9)
            print(f"  decoded {done}/{n} ({rate:.1f}/s, ETA {(n - done) / rate:.0f}s)",
                  flush=True)
    return out


def cached_equals_recompute(model, params, inputs: np.ndarray, max_new_tokens: int) -> bool:
    """Greedy tokens of the cached path (passages encoded once) equal the recompute path's."""
    from plug_jax import decoding
    p = {"model": params, "encoder_ids": np.asarray(inputs, np.int32)}
    ids = np.zeros((len(inputs), 1), np.int32)
    mask = np.ones_like(ids)
    fast = decoding.generate(*model.decode_fns(), p, ids, mask, max_new_tokens).tokens
    slow = decoding.generate(*model.decode_fns(cache=False), p, ids, mask,
                             max_new_tokens).tokens
    return bool(np.array_equal(np.asarray(fast), np.asarray(slow)))


# --------------------------------------------------------------------------- report
def evaluate(model, params, task_name: str, lengths: dict, lang: str, *, split: str = "test",
             limit: Optional[int] = None, passage_length: int, batch_size: int = 16,
             control: Optional[tuple] = None, check_cache: int = 0,
             decoding_options: Optional[dict] = None) -> dict:
    """Rows ``{name: score_responses(...)}`` for the model, the model without its knowledge
    passages and (``control = (model, params, task_name)``) the no-passage-trained model;
    plus ``samples`` and ``cache_equal``."""
    from plug_jax.data.pipeline import task_vocabulary
    from plug_jax.families.chatplug import templates
    opts = dict(RELEASED_DECODING if decoding_options is None else decoding_options)
    vocab = task_vocabulary(task_name)
    max_new = int(lengths["targets"])
    examples = held_out_examples(task_name, split, lengths, limit)
    refs = [e["reference"] for e in examples]
    pids = [e["product_id"] for e in examples]
    know = [gold_knowledge(pid, lang) for pid in pids]
    retrieved = [e["gold_rank"] >= 0 for e in examples]
    inputs = np.stack([e["inputs"] for e in examples])
    marker = templates.SUFFIX_TEMPLATES[lang]["knowledge"].split("{")[0]
    rows, samples = {}, {}
    print(f"{len(examples)} {split} dialogues of {task_name}; gold description retrieved for "
          f"{np.mean(retrieved):.2f}", flush=True)
    print("model, passages as retrieved:", flush=True)
    preds = generate(model, params, inputs, vocab, max_new_tokens=max_new,
                     batch_size=batch_size, **opts)
    rows["model"] = score_responses(preds, refs, pids, know, lang, retrieved)
    samples["model"] = preds
    print("control: the same model, knowledge passages removed:", flush=True)
    blank = np.stack([without_knowledge(e["inputs"], e["passages"], passage_length, marker)
                      for e in examples])
    preds = generate(model, params, blank, vocab, max_new_tokens=max_new,
                     batch_size=batch_size, **opts)
    rows["model, no knowledge passage"] = score_responses(preds, refs, pids, know, lang,
                                                          retrieved)
    samples["model, no knowledge passage"] = preds
    if control is not None:
        c_model, c_params, c_task = control
        c_examples = held_out_examples(c_task, split, lengths, limit)
        if [e["product_id"] for e in c_examples] != pids:
            raise ValueError(f"{c_task} and {task_name} hold different {split} dialogues")
        print(f"control: a model trained on {c_task}:", flush=True)
        preds = generate(c_model, c_params, np.stack([e["inputs"] for e in c_examples]),
                         vocab, max_new_tokens=max_new, batch_size=batch_size, **opts)
        rows["trained without passages"] = score_responses(preds, refs, pids, know, lang,
                                                           retrieved)
        samples["trained without passages"] = preds
    cache_equal = None
    if check_cache:
        cache_equal = cached_equals_recompute(model, params, inputs[:int(check_cache)],
                                              max_new)
    return {"rows": rows, "samples": samples, "references": refs, "examples": examples,
            "cache_equal": cache_equal, "check_cache": int(check_cache), "split": split,
            "decoding": opts}


def format_report(res: dict, num_samples: int = 3) -> str:
    rows = res["rows"]
    attrs = sorted({a for r in rows.values() for a in r["per_attribute"]})
    head = (f"{'':30s} {'attr acc':>8s} {'retrieved':>9s} {'know F1':>8s} {'F1':>6s}  "
            + " ".join(f"{a[:8]:>8s}" for a in attrs))
    lines = [f"ChatPLUG on {res['split']} (decoding {res['decoding']})", head]
    for name, r in rows.items():
        per = " ".join(f"{r['per_attribute'].get(a, (float('nan'), 0))[0]:8.3f}"
                       for a in attrs)
        lines.append(f"{name:30s} {r['attribute_accuracy']:8.3f} "
                     f"{r['attribute_accuracy_retrieved']:9.3f} {r['knowledge_f1']:8.3f} "
                     f"{r['f1']:6.3f}  {per}")
    first = next(iter(rows.values()))
    lines.append(f"(n = {first['num_examples']}; 'retrieved': the {first['num_retrieved']} "
                 f"dialogues whose gold description was retrieved; per attribute: examples "
                 + ", ".join(f"{a} {first['per_attribute'][a][1]}" for a in attrs) + ")")
    if res["cache_equal"] is not None:
        lines.append(f"cached decoding == recompute path (greedy, {res['check_cache']} "
                     f"dialogues): {res['cache_equal']}")
    for i in range(min(num_samples, len(res["references"]))):
        lines.append(f"sample {i}: reference  {res['references'][i]}")
        for name, preds in res["samples"].items():
            lines.append(f"          {name[:28]:28s} {preds[i]}")
    return "\n".join(lines)


def main(argv=None) -> int:
    import argparse

    from plug_jax.metrics.controls import load_checkpoint
    from plug_jax.trainer import loop
    bindings = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(add_help=False)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--control_dir", default=None)
    ap.add_argument("--control_task", default=None)
    ap.add_argument("--check_cache", type=int, default=8)
    ap.add_argument("--batch_size", type=int, default=16)
    own, rest = ap.parse_known_args(bindings)
    if not any(a.startswith("--split") for a in rest):
        rest = rest + ["--split", "test"]
    model, params, data, split = load_checkpoint(rest, __doc__.split("\n\n")[0])
    task = data.mixture_or_task_name
    lang = "en" if task.endswith("_en_v1") else "zh"
    passage_length = int(model.config.passage_length)
    control = None
    if own.control_dir:
        c_task = own.control_task or task.replace("chatplug_shop_", "chatplug_shop_nopassage_")
        c_params, c_step, _ = loop.load_for_inference(
            model, own.control_dir, data, loop.MeshConfig(rules="dp"))
        print(f"{own.control_dir} @ step {c_step} (control, {c_task})")
        control = (model, jax.device_get(c_params), c_task)
    res = evaluate(model, params, task, data.task_feature_lengths, lang, split=split,
                   limit=own.limit, passage_length=passage_length,
                   batch_size=own.batch_size, control=control, check_cache=own.check_cache)
    print(format_report(res), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
