"""Your own files as training data: reading and checking records (no TensorFlow).

``read_records(path, kind, ...)`` reads one file into a list of dicts, checked record by
record; the seqio side (``tasks/local.py``, :func:`plug_jax.tasks.local.local_task`) turns
them into a task. Formats, by extension:

* ``.jsonl`` / ``.json``: one JSON object per line (blank lines skipped);
* ``.tsv``: a header row naming the columns, then one record per row (tab-separated; a
  field may not contain a tab or a newline);
* ``.txt``: one record per line, as ``{text_key: line}`` (language modelling).

What each kind needs (keys renamable with ``text_key`` / ``inputs_key`` / ``targets_key`` /
``label_key`` / ``image_key``):

=================  ==================================================================
``lm``             ``text`` (a document to model)
``text2text``      ``inputs`` and ``targets`` (summarisation, translation, QA)
``classify``       ``inputs`` and ``label`` (a name from ``labels``, or its index)
``image_caption``  ``image`` (a path, relative to the file's folder) and ``text``
=================  ==================================================================

A malformed record is one :class:`LocalDataError` line, ``file:line: what; fix: ...``, raised
before anything trains (``plug-train`` prints it and exits 2).
"""
from __future__ import annotations

import csv
import io
import json
import os
from typing import Any, Sequence

from plug_jax.data.media import MediaError

KINDS = ("lm", "text2text", "classify", "image_caption")
FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".tsv": "tsv", ".txt": "text"}


class LocalDataError(MediaError):
    """A user data file that cannot be read: one line ``file:line: what; fix: ...``."""


def _fmt(path: str) -> str:
    ext = os.path.splitext(path)[1].lower()
    if ext not in FORMATS:
        raise LocalDataError(f"{path}: unknown file type {ext or '(none)'!r}; fix: name it "
                             f"*.jsonl, *.tsv or *.txt")
    return FORMATS[ext]


def _raw_records(path: str):
    """``(line_number, dict)`` for each record of ``path``."""
    if not os.path.isfile(path):
        raise LocalDataError(f"{path}: {'is a folder' if os.path.isdir(path) else 'no such file'}"
                             f"; fix: pass the path of a .jsonl, .tsv or .txt file")
    fmt = _fmt(path)
    with open(path, "rb") as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise LocalDataError(f"{path}:{line}: not UTF-8 text; fix: save the file as UTF-8") from None
    lines = text.split("\n")
    if fmt == "text":
        for n, line in enumerate(lines, 1):
            if line.strip():
                yield n, {"text": line.rstrip("\r")}
        return
    if fmt == "jsonl":
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise LocalDataError(f"{path}:{n}: invalid JSON ({e.msg} at column {e.colno}); "
                                     f"fix: one JSON object per line") from None
            if not isinstance(obj, dict):
                raise LocalDataError(f"{path}:{n}: a JSON {type(obj).__name__}, not an object; "
                                     f"fix: one JSON object per line")
            yield n, obj
        return
    rows = list(csv.reader(io.StringIO(text), delimiter="\t", quoting=csv.QUOTE_NONE))
    if not rows or not any(rows[0]):
        raise LocalDataError(f"{path}:1: no header row; fix: start the file with the column "
                             f"names, tab-separated")
    header = rows[0]
    for n, row in enumerate(rows[1:], 2):
        if not any(c.strip() for c in row):
            continue
        if len(row) != len(header):
            raise LocalDataError(f"{path}:{n}: {len(row)} fields, the header has {len(header)} "
                                 f"({', '.join(header)}); fix: one tab between fields, no tabs "
                                 f"inside a field")
        yield n, dict(zip(header, row))


def read_records(path: str | os.PathLike, kind: str = "lm", *, text_key: str = "text",
                 inputs_key: str = "inputs", targets_key: str = "targets",
                 label_key: str = "label", image_key: str = "image",
                 labels: Sequence[str] = ()) -> list[dict[str, Any]]:
    """The checked records of ``path`` for ``kind``, with the canonical keys ``text`` /
    ``inputs`` / ``targets`` / ``label`` (an int index) / ``image`` (an absolute path)."""
    if kind not in KINDS:
        raise LocalDataError(f"unknown kind {kind!r}; fix: choose one of {', '.join(KINDS)}")
    path = os.fspath(path)
    if kind == "classify" and not labels:
        raise LocalDataError(f"{path}: kind 'classify' needs the label names; fix: pass "
                             f"labels=('negative', 'positive') (gin: local_task.labels)")
    need = {"lm": {"text": text_key}, "text2text": {"inputs": inputs_key, "targets": targets_key},
            "classify": {"inputs": inputs_key, "label": label_key},
            "image_caption": {"image": image_key, "text": text_key}}[kind]
    if _fmt(path) == "text" and kind != "lm":
        raise LocalDataError(f"{path}: a .txt file holds one text per line, which is kind 'lm' "
                             f"only; fix: use .jsonl or .tsv with the keys "
                             f"{sorted(need.values())}")
    folder = os.path.dirname(os.path.abspath(path))
    out = []
    for n, rec in _raw_records(path):
        if _fmt(path) == "text":
            rec = {text_key: rec["text"]}
        item = {}
        for canon, key in need.items():
            if key not in rec:
                raise LocalDataError(f"{path}:{n}: no {key!r}; fix: every record of kind "
                                     f"{kind!r} needs {', '.join(repr(k) for k in need.values())}")
            value = rec[key]
            if canon == "label":
                value = _label(value, labels, path, n)
            elif not isinstance(value, str) or not value.strip():
                raise LocalDataError(f"{path}:{n}: {key!r} is {json.dumps(value)[:40]}, not a "
                                     f"non-empty string; fix: give text")
            elif canon == "image":
                value = os.path.join(folder, os.path.expanduser(value))
                if not os.path.isfile(value):
                    raise LocalDataError(f"{path}:{n}: image {value} does not exist; fix: paths "
                                         f"are relative to the file's folder")
            item[canon] = value
        out.append(item)
    if not out:
        raise LocalDataError(f"{path}: no records; fix: add at least one")
    return out


def _label(value, labels: Sequence[str], path: str, n: int) -> int:
    if isinstance(value, str) and value in labels:
        return list(labels).index(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(labels):
        return value
    if isinstance(value, str) and value.isdigit() and int(value) < len(labels):
        return int(value)
    raise LocalDataError(f"{path}:{n}: label {json.dumps(value)[:40]} is not one of "
                         f"{list(labels)} (or an index below {len(labels)}); fix: use those "
                         f"names or set labels")
