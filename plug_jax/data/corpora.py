"""Readers for real Chinese NLU / summarisation corpora stored in a manual directory.

Each corpus is read from its *published* file format; nothing is downloaded. Put the files
in ``data_dir`` (or, for the registered tasks, ``$PLUG_JAX_DATA_DIR/<corpus>``, default
``~/.cache/plug_jax/data/<corpus>``):

================  ==========================================================================
corpus            files (split: file)
================  ==========================================================================
CLUE TNEWS        train: ``train.json``, validation: ``dev.json``, test: ``test.json``
CLUE AFQMC        train: ``train.json``, validation: ``dev.json``, test: ``test.json``
LCSTS             train: ``PART_I.txt``, validation: ``PART_II.txt``, test: ``PART_III.txt``
XNLI              train: ``multinli.train.{lang}.tsv``, validation: ``xnli.dev.tsv``,
                  test: ``xnli.test.tsv``
================  ==========================================================================

``read_<corpus>(data_dir, split, ...)`` yields plain python dicts; ``<corpus>_dataset``
wraps a reader as a ``tf.data.Dataset`` (the signature in ``<CORPUS>_FEATURES``) and is what
the seqio sources in ``tasks/corpora.py`` call. A missing file raises a one-line
``ValueError`` naming the expected file(s) when reading starts, never at import.

Labels: CLUE test files carry no label (-1). TNEWS ``label`` is the index of the label code
in ``TNEWS_LABELS`` (the 15 codes 100..116 without 105 and 111, as in CLUE's
``labels.json``; those two codes never occur). XNLI / MultiNLI labels are entailment 0,
neutral 1, contradiction 2 (MultiNLI-translated files spell contradiction
"contradictory").
"""
from __future__ import annotations

import csv
import functools
import json
import os
import sys
from pathlib import Path
from typing import Callable, Iterator, Mapping, Optional, Sequence

from plug_jax.data import configure_tensorflow

tf = configure_tensorflow()

# CLUE TNEWS: label code -> label_desc (CLUE labels.json); 105 and 111 are unused codes.
TNEWS_LABEL_DESCS = {
    "100": "news_story", "101": "news_culture", "102": "news_entertainment",
    "103": "news_sports", "104": "news_finance", "106": "news_house", "107": "news_car",
    "108": "news_edu", "109": "news_tech", "110": "news_military", "112": "news_travel",
    "113": "news_world", "114": "news_stock", "115": "news_agriculture", "116": "news_game",
}
TNEWS_LABELS = tuple(TNEWS_LABEL_DESCS)  # index = class id
assert len(TNEWS_LABELS) == 15 and "105" not in TNEWS_LABELS and "111" not in TNEWS_LABELS
NLI_LABELS = ("entailment", "neutral", "contradiction")
_NLI_LABEL_IDS = {"entailment": 0, "neutral": 1, "contradiction": 2, "contradictory": 2}
XNLI_LANGUAGES = ("ar", "bg", "de", "el", "en", "es", "fr", "hi", "ru", "sw", "th", "tr",
                  "ur", "vi", "zh")

CLUE_FILES = {"train": "train.json", "validation": "dev.json", "test": "test.json"}
LCSTS_FILES = {"train": "PART_I.txt", "validation": "PART_II.txt", "test": "PART_III.txt"}
XNLI_FILES = {"train": "multinli.train.{lang}.tsv", "validation": "xnli.dev.tsv",
              "test": "xnli.test.tsv"}

_S, _I = tf.string, tf.int32
TNEWS_FEATURES = {"idx": _I, "sentence": _S, "keywords": _S, "label": _I, "label_desc": _S}
AFQMC_FEATURES = {"idx": _I, "sentence1": _S, "sentence2": _S, "label": _I}
LCSTS_FEATURES = {"id": _I, "text": _S, "summary": _S, "human_label": _I}
XNLI_FEATURES = {"language": _S, "premise": _S, "hypothesis": _S, "label": _I}


def default_data_dir(corpus: str) -> Path:
    """``$PLUG_JAX_DATA_DIR/<corpus>``, else ``~/.cache/plug_jax/data/<corpus>``."""
    root = os.environ.get("PLUG_JAX_DATA_DIR")
    base = Path(root) if root else Path.home() / ".cache" / "plug_jax" / "data"
    return base / corpus


def _split_file(data_dir, split: str, files: Mapping[str, str], corpus: str, **fmt) -> Path:
    if split not in files:
        raise ValueError(f"{corpus} has splits {sorted(files)}, not {split!r}; pass one of "
                         f"them")
    path = Path(data_dir) / files[split].format(**fmt)
    if not path.is_file():
        expected = ", ".join(f"{s}: {f.format(**fmt)}" for s, f in files.items())
        raise ValueError(f"{corpus} {split} file {str(path)!r} not found; put the published "
                         f"files ({expected}) in {str(data_dir)!r}")
    return path


def _json_lines(path: Path) -> Iterator[tuple[int, dict]]:
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno} is not a JSON line ({e.msg}); the file "
                                 f"must hold one JSON object per line") from None


def _row_idx(row: dict, default: int) -> int:
    for key in ("idx", "id"):
        if key in row:
            try:
                return int(row[key])
            except (TypeError, ValueError):
                pass
    return default


# ------------------------------------------------------------------------- CLUE
def read_tnews(data_dir, split: str) -> Iterator[dict]:
    """CLUE TNEWS: ``{"idx", "sentence", "keywords", "label", "label_desc"}``."""
    path = _split_file(data_dir, split, CLUE_FILES, "CLUE TNEWS")
    for n, (lineno, row) in enumerate(_json_lines(path)):
        code = str(row.get("label", "")).strip()
        if code:
            if code not in TNEWS_LABEL_DESCS:
                raise ValueError(f"{path}:{lineno} has TNEWS label {code!r}, not one of the "
                                 f"15 codes {list(TNEWS_LABELS)}; is this the TNEWS file?")
            label = TNEWS_LABELS.index(code)
            desc = row.get("label_desc") or TNEWS_LABEL_DESCS[code]
        else:
            label, desc = -1, ""
        yield {"idx": _row_idx(row, n), "sentence": row.get("sentence", ""),
               "keywords": row.get("keywords", ""), "label": label, "label_desc": desc}


def read_afqmc(data_dir, split: str) -> Iterator[dict]:
    """CLUE AFQMC: ``{"idx", "sentence1", "sentence2", "label"}`` (label 0/1, -1 on test)."""
    path = _split_file(data_dir, split, CLUE_FILES, "CLUE AFQMC")
    for n, (lineno, row) in enumerate(_json_lines(path)):
        code = str(row.get("label", "")).strip()
        if code not in ("", "0", "1"):
            raise ValueError(f"{path}:{lineno} has AFQMC label {code!r}, not '0' or '1'; is "
                             f"this the AFQMC file?")
        yield {"idx": _row_idx(row, n), "sentence1": row.get("sentence1", ""),
               "sentence2": row.get("sentence2", ""), "label": int(code) if code else -1}


# ------------------------------------------------------------------------- LCSTS
def read_lcsts(data_dir, split: str) -> Iterator[dict]:
    """LCSTS release format: ``{"id", "text", "summary", "human_label"}`` per ``<doc>``.

    ``human_label`` (1..5 relevance score, PART_II/III only) is -1 where absent.
    """
    path = _split_file(data_dir, split, LCSTS_FILES, "LCSTS")
    doc: Optional[dict] = None
    field: Optional[str] = None
    lines: list[str] = []
    with open(path, encoding="utf-8") as f:
        for lineno, raw in enumerate(f, 1):
            line = raw.strip()
            if not line:
                continue
            if line.startswith("<doc"):
                doc_id = line[4:].rstrip(">").strip()
                doc_id = doc_id[3:] if doc_id.startswith("id=") else doc_id
                doc = {"id": int(doc_id.strip("\"'") or -1), "text": "", "summary": "",
                       "human_label": -1}
            elif doc is None:
                raise ValueError(f"{path}:{lineno} is outside a <doc> block; expected the "
                                 f"LCSTS <doc id=N>...</doc> format")
            elif line.startswith("<human_label>"):
                doc["human_label"] = int(line[len("<human_label>"):].split("<", 1)[0])
            elif line in ("<summary>", "<short_text>"):
                field, lines = ("summary" if line == "<summary>" else "text"), []
            elif line in ("</summary>", "</short_text>"):
                doc[field] = "".join(lines)  # Chinese text: a wrapped line needs no space
                field = None
            elif line == "</doc>":
                yield doc
                doc = None
            elif field is not None:
                lines.append(line)
            else:
                raise ValueError(f"{path}:{lineno} has unexpected line {line[:40]!r}; "
                                 f"expected the LCSTS <doc>/<summary>/<short_text> format")


# ------------------------------------------------------------------------- XNLI
def _nli_label(value: str, path: Path, lineno: int) -> int:
    key = value.strip().lower()
    if key not in _NLI_LABEL_IDS:
        raise ValueError(f"{path}:{lineno} has NLI label {value!r}, not one of "
                         f"{sorted(_NLI_LABEL_IDS)}; is this an XNLI/MultiNLI file?")
    return _NLI_LABEL_IDS[key]


def _tsv_rows(path: Path, required: Sequence[str]) -> Iterator[tuple[int, dict]]:
    csv.field_size_limit(min(sys.maxsize, 2 ** 31 - 1))
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, None) or []
        missing = [c for c in required if c not in header]
        if missing:
            raise ValueError(f"{path} header lacks column(s) {missing} (has {header[:8]}); "
                             f"expected the published XNLI/MultiNLI tsv with a header row")
        cols = {c: header.index(c) for c in required}
        for lineno, fields in enumerate(reader, 2):
            if not any(fields):
                continue
            if len(fields) < len(header):  # a few translated rows are short: pad them
                fields = fields + [""] * (len(header) - len(fields))
            yield lineno, {c: fields[i] for c, i in cols.items()}


def read_xnli(data_dir, split: str, language: Optional[str] = "zh") -> Iterator[dict]:
    """XNLI: ``{"language", "premise", "hypothesis", "label"}``.

    validation/test read ``xnli.dev.tsv``/``xnli.test.tsv`` keeping rows of ``language``
    (``None`` keeps all 15); train reads the machine-translated
    ``multinli.train.{language}.tsv`` (``language`` is required there).
    """
    if language is not None and language not in XNLI_LANGUAGES:
        raise ValueError(f"XNLI language {language!r} is not one of {list(XNLI_LANGUAGES)}; "
                         f"pass one of them (or None for all, dev/test only)")
    if split == "train":
        if language is None:
            raise ValueError("XNLI train is one multinli.train.{lang}.tsv per language; pass "
                             "language='zh' (or another XNLI language)")
        path = _split_file(data_dir, split, XNLI_FILES, "XNLI", lang=language)
        for lineno, row in _tsv_rows(path, ("premise", "hypo", "label")):
            yield {"language": language, "premise": row["premise"],
                   "hypothesis": row["hypo"], "label": _nli_label(row["label"], path, lineno)}
        return
    path = _split_file(data_dir, split, XNLI_FILES, "XNLI", lang=language or "{lang}")
    cols = ("language", "gold_label", "sentence1", "sentence2")
    for lineno, row in _tsv_rows(path, cols):
        if language is not None and row["language"] != language:
            continue
        yield {"language": row["language"], "premise": row["sentence1"],
               "hypothesis": row["sentence2"],
               "label": _nli_label(row["gold_label"], path, lineno)}


# ------------------------------------------------------------------------- tf.data
def reader_dataset(reader: Callable[..., Iterator[dict]], features: Mapping[str, tf.DType],
                   data_dir, split: str, **reader_kwargs) -> tf.data.Dataset:
    """``reader(data_dir, split, **reader_kwargs)`` as a ``tf.data.Dataset`` of scalars.

    The first example is read eagerly, so a missing or malformed file fails here (with the
    reader's one-line ``ValueError``) rather than inside the tf.data runtime.
    """
    first = next(iter(reader(data_dir, split, **reader_kwargs)), None)  # validates now
    del first

    def gen():
        for ex in reader(data_dir, split, **reader_kwargs):
            yield {k: ex[k] for k in features}

    signature = {k: tf.TensorSpec([], dtype) for k, dtype in features.items()}
    return tf.data.Dataset.from_generator(gen, output_signature=signature)


def corpus_dataset_fn(reader: Callable[..., Iterator[dict]], features: Mapping[str, tf.DType],
                      corpus: str, data_dir=None, **reader_kwargs):
    """A seqio ``FunctionDataSource`` ``dataset_fn(split, shuffle_files, seed)``.

    ``data_dir=None`` resolves ``default_data_dir(corpus)`` when the dataset is built (so
    ``$PLUG_JAX_DATA_DIR`` may be set after the tasks are imported). Every corpus is one
    file per split, so ``shuffle_files`` has nothing to shuffle; seqio's example shuffle
    buffer does the shuffling.
    """
    def dataset_fn(split: str, shuffle_files: bool = False, seed: Optional[int] = None):
        del shuffle_files, seed
        root = default_data_dir(corpus) if data_dir is None else data_dir
        return reader_dataset(reader, features, root, split, **reader_kwargs)

    return dataset_fn


tnews_dataset = functools.partial(reader_dataset, read_tnews, TNEWS_FEATURES)
afqmc_dataset = functools.partial(reader_dataset, read_afqmc, AFQMC_FEATURES)
lcsts_dataset = functools.partial(reader_dataset, read_lcsts, LCSTS_FEATURES)
xnli_dataset = functools.partial(reader_dataset, read_xnli, XNLI_FEATURES)
