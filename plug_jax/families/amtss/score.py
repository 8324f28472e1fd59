"""The AMTSS teacher scoring job: every Shop World query scored by every language's teacher.

    python -m plug_jax.families.amtss.score --teacher zh=DIR --teacher en=DIR ... \\
        --out FILE [--teacher_gin experiments/amtss/shop_teacher_small.gin] \\
        [--splits train,validation,test] [--limit N] [--batch_size 256]

Each ``DIR`` is a teacher's MODEL_DIR, restored as ``plug-eval`` restores one: the teacher
gin file (with ``LANG`` set to the teacher's language) gives the task model, the latest
checkpoint its parameters (:func:`plug_jax.trainer.loop.load_for_inference`). Design
(tasks/amtss.py, README "Teacher scoring"): teacher ``t`` scores the example's translation in
language ``t`` (query ``6 (i // 6) + t``; the six queries of a product are parallel), so
query ``i`` of every language gets all teachers' logits; a language without a teacher gets
mask 0. The file (:mod:`plug_jax.families.amtss.logits_file`) holds, per split, the rows of
query examples ``0 .. n-1`` (``--limit`` scores a prefix); the student task reads it.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from typing import Mapping, Sequence

import numpy as np

DEFAULT_TEACHER_GIN = "experiments/amtss/shop_teacher_small.gin"
SPLITS = ("train", "validation", "test")


def _tasks():
    import plug_jax.tasks.amtss as amtss_tasks
    return amtss_tasks


def load_teacher(model_dir: str, lang: str, gin_files: Sequence[str] = (DEFAULT_TEACHER_GIN,),
                 bindings: Sequence[str] = ()):
    """``(task model, params, task_feature_lengths)`` of the teacher trained in
    ``model_dir`` (its gin files with ``LANG`` = ``lang``, as plug-eval restores a MODEL_DIR)."""
    import gin
    import jax

    from plug_jax import gin_utils
    from plug_jax.trainer import loop
    try:
        gin_utils.parse_gin(list(gin_files), [*bindings, f"LANG='{lang}'",
                                              f"MODEL_DIR='{model_dir}'"])
        model = gin.query_parameter("%MODEL").scoped_configurable_fn()
        lengths = dict(gin.query_parameter("%TASK_FEATURE_LENGTHS"))
    finally:
        gin.clear_config()
    cfg = loop.DatasetConfig(_tasks().teacher_task_name(lang), lengths, batch_size=1,
                             converter="encoder")
    params, step, _ = loop.load_for_inference(model, model_dir, cfg,
                                              loop.MeshConfig(rules="dp", num_devices=1))
    return model, jax.device_get(params), lengths, step


def query_ids(split: str, products: int, lang: int, length: int, vocab=None,
              world_seed: int | None = None) -> np.ndarray:
    """``[products, length]`` ``[CLS] query`` ids of products ``0 .. products-1``'s queries in
    language ``lang`` (query examples ``6 p + lang``), as the tasks tokenize them."""
    t = _tasks()
    vocab = t.vocabulary() if vocab is None else vocab
    seed = t.WORLD_SEED if world_seed is None else world_seed
    ids = np.zeros((products, length), np.int32)
    for p in range(products):
        rec = t.query_record(seed, split, t.translation_index(p * len(t.QUERY_LANGS), lang))
        row = t.encode_query(vocab, rec["text"], length)
        ids[p, :len(row)] = row
    return ids


def score_split(teachers: Mapping[str, tuple], split: str, n: int, length: int,
                batch_size: int = 256, vocab=None, log=print) -> dict:
    """``{logits [n, N, C], mask [n, N], label [n], lang [n]}`` of query examples
    ``0 .. n-1`` of ``split``: teacher ``t`` (``teachers[QUERY_LANGS[t]] = (model, params)``)
    scores each example's translation in its language."""
    import jax
    t = _tasks()
    langs = t.QUERY_LANGS
    products = math.ceil(n / len(langs))
    recs = [t.query_record(t.WORLD_SEED, split, i) for i in range(n)]
    label = np.array([r["label"] for r in recs], np.int32)
    lang = np.array([r["lang"] for r in recs], np.int32)
    logits, mask, classes = None, np.zeros((n, len(langs)), np.float32), None
    for k, name in enumerate(langs):
        if name not in teachers:
            continue
        model, params = teachers[name]
        t0 = time.time()
        ids = query_ids(split, products, k, length, vocab)
        fn = jax.jit(lambda p, b, m=model: m.outputs(p, b))
        out = []
        for s in range(0, products, batch_size):
            chunk = ids[s:s + batch_size]
            pad = batch_size - len(chunk)  # one compiled shape
            chunk = np.concatenate([chunk, np.zeros((pad, length), np.int32)]) if pad else chunk
            z = np.asarray(jax.device_get(fn(params, {"encoder_input_tokens": chunk})))
            out.append(z[:batch_size - pad])
        per_product = np.concatenate(out).astype(np.float32)  # [products, C]
        if logits is None:
            classes = per_product.shape[-1]
            logits = np.zeros((n, len(langs), classes), np.float32)
        logits[:, k] = per_product[np.arange(n) // len(langs)]
        mask[:, k] = 1.0
        log(f"scored {split} with teacher {name}: {products} {name} queries -> {n} examples "
            f"({time.time() - t0:.1f}s)")
    if logits is None:
        raise ValueError("AMTSS scoring: no teachers given")
    return {"logits": logits, "mask": mask, "label": label, "lang": lang}


def score(teachers: Mapping[str, tuple], out: str, splits: Sequence[str] = SPLITS,
          limit: int | None = None, length: int = 32, batch_size: int = 256, vocab=None,
          log=print, source: str = "") -> str:
    """Scores ``splits`` (the first ``limit`` examples of each, or all) and writes ``out``."""
    from plug_jax.families.amtss import logits_file
    t = _tasks()
    unknown = sorted(set(teachers) - set(t.QUERY_LANGS))
    if unknown:
        raise ValueError(f"AMTSS scoring: teachers {unknown} are not Shop World query "
                         f"languages {t.QUERY_LANGS}")
    data = {}
    for split in splits:
        n = t.QUERY_SPLIT_SIZES[split] if limit is None else min(int(limit),
                                                                 t.QUERY_SPLIT_SIZES[split])
        data[split] = score_split(teachers, split, n, length, batch_size, vocab, log)
    classes = next(iter(data.values()))["logits"].shape[-1]
    path = logits_file.write(out, data, t.QUERY_LANGS, classes,
                             source=source or "shop_world queries, seed "
                             f"{t.WORLD_SEED}; teachers {sorted(teachers)}")
    log(f"wrote {path}: " + ", ".join(f"{s} {d['logits'].shape[0]} examples"
                                      for s, d in data.items())
        + f", {len(teachers)} of {len(t.QUERY_LANGS)} teachers")
    return path


def _parse_teacher(value: str) -> tuple[str, str]:
    lang, sep, path = value.partition("=")
    if not sep or not lang or not path:
        raise argparse.ArgumentTypeError(f"--teacher {value!r}: write LANG=MODEL_DIR")
    return lang, path


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m plug_jax.families.amtss.score",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--teacher", action="append", type=_parse_teacher, required=True,
                    help="LANG=MODEL_DIR of a trained teacher (repeat per language)")
    ap.add_argument("--out", required=True, help="the teacher-logits .npz to write")
    ap.add_argument("--teacher_gin", action="append", default=None,
                    help=f"the teachers' gin file(s) (default {DEFAULT_TEACHER_GIN})")
    ap.add_argument("--gin", action="append", default=[], help="extra NAME=VALUE bindings")
    ap.add_argument("--splits", default=",".join(SPLITS))
    ap.add_argument("--limit", type=int, default=None,
                    help="score only the first N examples of each split")
    ap.add_argument("--batch_size", type=int, default=256)
    args = ap.parse_args(argv)
    teachers, lengths = {}, None
    for lang, model_dir in args.teacher:
        if lang in teachers:
            ap.error(f"two teachers for {lang!r}")
        model, params, lengths, step = load_teacher(model_dir, lang,
                                                    args.teacher_gin or [DEFAULT_TEACHER_GIN],
                                                    args.gin)
        print(f"restored teacher {lang} from {model_dir} @ step {step}", flush=True)
        teachers[lang] = (model, params)
    score(teachers, args.out, [s for s in args.splits.split(",") if s], args.limit,
          int(lengths["inputs"]), args.batch_size,
          log=lambda m: print(m, flush=True),
          source="teachers " + ", ".join(f"{k}={v}" for k, v in args.teacher))
    return 0


if __name__ == "__main__":
    sys.exit(main())
