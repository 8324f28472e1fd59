"""The teacher-logits file: what the scoring job writes and the student task reads.

One ``.npz`` (numpy only, no pickle) keyed by example index. For each scored split ``S``:

``S_logits``  float32 ``[n, N, C]``  row ``i``: the N teachers' logits for example ``i``
``S_mask``    float32 ``[n, N]``     1 where teacher ``t`` scored example ``i``
``S_label``   int32 ``[n]``          the gold label of example ``i`` (a check: the student task
                                     refuses a file whose labels are not its examples')
``S_lang``    int32 ``[n]``          the language index of example ``i``

Rows are the examples ``0 .. n-1`` of the split in index order (a scoring run with
``--limit`` scores a prefix; the student task then trains on that prefix). Plus
``teachers`` (``<U`` ``[N]``: the teachers' names, the languages in order), ``num_labels``,
``source`` (what was scored) and ``format`` (``FORMAT``).
"""
from __future__ import annotations

import os
from typing import Mapping

import numpy as np

from plug_jax.data.record_files import RecordFileError

FORMAT = "amtss_teacher_logits_v1"
SCORE_COMMAND = "python -m plug_jax.families.amtss.score --teacher LANG=TEACHER_MODEL_DIR ..."


class TeacherLogitsError(RecordFileError):
    """The teacher-logits file is missing or is not one (one line; the command line prints
    it as a user error: exit status 2, no traceback)."""


def write(path: str | os.PathLike, splits: Mapping[str, Mapping[str, np.ndarray]],
          teachers, num_labels: int, source: str = "") -> str:
    """Writes ``splits`` (``{split: {logits, mask, label, lang}}``) to ``path`` atomically."""
    teachers = [str(t) for t in teachers]
    arrays = {"format": np.array(FORMAT), "teachers": np.array(teachers),
              "num_labels": np.array(int(num_labels), np.int32), "source": np.array(source)}
    for split, d in splits.items():
        logits = np.asarray(d["logits"], np.float32)
        n = logits.shape[0]
        if logits.shape[1:] != (len(teachers), int(num_labels)):
            raise ValueError(f"{split} logits {logits.shape} must be [n, {len(teachers)}, "
                             f"{num_labels}]")
        mask = np.asarray(d.get("mask", np.ones(logits.shape[:2])), np.float32)
        label = np.asarray(d["label"], np.int32).reshape(n)
        lang = np.asarray(d["lang"], np.int32).reshape(n)
        arrays.update({f"{split}_logits": logits, f"{split}_mask": mask.reshape(n, -1),
                       f"{split}_label": label, f"{split}_lang": lang})
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp.npz"
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, path)
    return path


def missing_message(path) -> str:
    return (f"AMTSS: the teacher-logits file {path} does not exist; write it with "
            f"`python -m plug_jax.families.amtss.score --teacher zh=DIR ... --teacher "
            f"ja=DIR --out {path}` (one trained teacher MODEL_DIR per language: "
            f"experiments/amtss/shop_teacher_small.gin), or run "
            f"`python -m plug_jax.families.amtss.shop_experiment`")


_CACHE: dict = {}


def read(path: str | os.PathLike) -> dict:
    """``{'teachers', 'num_labels', 'source', 'splits': {split: {logits, mask, label, lang}}}``
    (cached per path and modification time). A missing file raises a one-line
    :class:`TeacherLogitsError` naming the command that writes it."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise TeacherLogitsError(missing_message(path))
    key = (os.path.abspath(path), os.stat(path).st_mtime_ns)
    if key not in _CACHE:
        with np.load(path, allow_pickle=False) as z:
            if "format" not in z.files or str(z["format"]) != FORMAT:
                raise TeacherLogitsError(f"AMTSS: {path} is not a teacher-logits file ({FORMAT}); "
                                 f"write it with {SCORE_COMMAND}")
            splits = {}
            for name in z.files:
                if name.endswith("_logits"):
                    s = name[:-len("_logits")]
                    splits[s] = {k: z[f"{s}_{k}"] for k in ("logits", "mask", "label", "lang")}
            _CACHE[key] = {"teachers": tuple(str(t) for t in z["teachers"]),
                           "num_labels": int(z["num_labels"]), "source": str(z["source"]),
                           "splits": splits}
    return _CACHE[key]
