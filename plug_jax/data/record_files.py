"""Prepared corpora as sharded ArrayRecord files with an index: any record by its index.

A prepared split is ``S`` ArrayRecord shards plus one JSON index (``records_index.json``)
in a directory::

    <dir>/records_index.json
    <dir>/<split>-00000-of-00016.array_record
    ...

Record ``i`` of a split is record ``i // S`` of shard ``i % S`` (round robin), so a writer
needs no record count up front and a reader finds any record with no table. Each record is
one example as a UTF-8 JSON object (strings, integers, floats and lists of them): no pickle,
readable without TensorFlow. The index holds, per split, every shard's file name, record
count and byte size, and the features' types. ``RecordFiles.check`` compares the files with
it (missing, truncated or grown shards) and every read turns a corrupt chunk into one
``RecordFileError`` line that names the shard and the fix.

``python -m plug_jax.data.record_files prepare --task NAME --out DIR`` writes a registered
seqio task's source records (before any preprocessing) of each split; ``make prepare`` does
it for the Shop World LM documents. ``plug_jax.data.indexed.RecordFilesSource`` reads a
prepared directory as a seqio source, by index (index-based input) or as a stream.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from typing import Any, Iterable, Mapping, Optional, Sequence

INDEX_FILE = "records_index.json"
FORMAT = "plug_jax.records/1"
FEATURE_TYPES = ("string", "int64", "float32")
DEFAULT_SHARDS = 16


class RecordFileError(ValueError):
    """A prepared record file is missing, truncated or corrupt (one line: shard and fix)."""


def shard_name(split: str, shard: int, num_shards: int) -> str:
    return f"{split}-{shard:05d}-of-{num_shards:05d}.array_record"


def _fix(directory: str) -> str:
    return (f"fix: prepare it again (python -m plug_jax.data.record_files prepare ... --out "
            f"{directory}), or restore the directory from a copy")


def _feature_type(value: Any) -> str:
    if isinstance(value, bool):
        return "int64"
    if isinstance(value, int):
        return "int64"
    if isinstance(value, float):
        return "float32"
    if isinstance(value, str):
        return "string"
    raise ValueError(f"record values must be str, int or float, got {type(value).__name__}")


def _plain(value: Any) -> Any:
    """numpy / bytes values -> JSON-able python values."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return value


def write_split(directory: str, split: str, examples: Iterable[Mapping[str, Any]], *,
                num_shards: int = DEFAULT_SHARDS, progress_every: int = 0) -> dict:
    """Write ``examples`` as split ``split`` of ``directory`` (round robin over
    ``num_shards`` shards) and record it in the index; returns the split's index entry.

    Shards are written under temporary names and renamed, and the index is replaced
    atomically last, so a crash mid-write leaves the previous prepared state readable.
    """
    from array_record.python import array_record_module  # noqa: PLC0415
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    os.makedirs(directory, exist_ok=True)
    tmp = [os.path.join(directory, shard_name(split, s, num_shards) + ".tmp")
           for s in range(num_shards)]
    writers = [array_record_module.ArrayRecordWriter(p, "group_size:1") for p in tmp]
    counts = [0] * num_shards
    features: dict[str, str] = {}
    t0 = time.time()
    n = 0
    try:
        for n, ex in enumerate(examples, 1):
            row = {k: _plain(v) for k, v in ex.items()}
            for k, v in row.items():
                kind = _feature_type(v[0] if isinstance(v, list) and v else v)
                kind = kind + "[]" if isinstance(v, list) else kind
                if features.setdefault(k, kind) != kind:
                    raise ValueError(f"feature {k!r} is {features[k]} in earlier records but "
                                     f"{kind} in record {n - 1}")
            s = (n - 1) % num_shards
            writers[s].write(json.dumps(row, ensure_ascii=False).encode("utf-8"))
            counts[s] += 1
            if progress_every and n % progress_every == 0:
                print(f"  {split}: {n:,} records ({n / (time.time() - t0):,.0f}/s)",
                      flush=True)
    finally:
        for w in writers:
            w.close()
    shards = []
    for s, p in enumerate(tmp):
        final = os.path.join(directory, shard_name(split, s, num_shards))
        os.replace(p, final)
        shards.append({"file": os.path.basename(final), "records": counts[s],
                       "bytes": os.path.getsize(final)})
    entry = {"records": n, "shards": shards, "features": features}
    index = _read_index(directory, missing_ok=True) or {"format": FORMAT, "splits": {}}
    index["splits"][split] = entry
    tmp_index = os.path.join(directory, INDEX_FILE + ".tmp")
    with open(tmp_index, "w", encoding="utf-8") as f:
        json.dump(index, f, indent=1, sort_keys=True)
    os.replace(tmp_index, os.path.join(directory, INDEX_FILE))
    return entry


def _read_index(directory: str, missing_ok: bool = False) -> Optional[dict]:
    path = os.path.join(directory, INDEX_FILE)
    if not os.path.exists(path):
        if missing_ok:
            return None
        raise RecordFileError(f"{path} does not exist: {directory} holds no prepared records; "
                              f"{_fix(directory)}")
    try:
        with open(path, encoding="utf-8") as f:
            index = json.load(f)
    except (OSError, ValueError) as e:
        raise RecordFileError(f"{path} is not a readable JSON index ({e}); "
                              f"{_fix(directory)}") from None
    if index.get("format") != FORMAT:
        raise RecordFileError(f"{path} has format {index.get('format')!r}, not {FORMAT!r}; "
                              f"{_fix(directory)}")
    return index


def is_prepared(directory: str, split: str) -> bool:
    index = _read_index(directory, missing_ok=True)
    return bool(index and split in index.get("splits", {}))


class RecordFiles:
    """Random access to the prepared splits of ``directory``."""

    def __init__(self, directory: str):
        self.directory = str(directory)
        self.index = _read_index(self.directory)
        self._readers: dict[tuple[str, int], Any] = {}
        self._lock = threading.Lock()

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(sorted(self.index["splits"]))

    def _entry(self, split: str) -> dict:
        if split not in self.index["splits"]:
            raise RecordFileError(f"{self.directory} has no prepared split {split!r} (it has "
                                  f"{list(self.splits)}); {_fix(self.directory)}")
        return self.index["splits"][split]

    def num_records(self, split: str) -> int:
        return int(self._entry(split)["records"])

    def features(self, split: str) -> dict[str, str]:
        return dict(self._entry(split)["features"])

    def check(self, split: str) -> None:
        """Every shard of ``split`` exists with the size the index records (O(shards))."""
        entry = self._entry(split)
        shards = entry["shards"]
        counts = [s["records"] for s in shards]
        if sum(counts) != entry["records"] or max(counts) - min(counts) > 1:
            raise RecordFileError(f"{os.path.join(self.directory, INDEX_FILE)}: split "
                                  f"{split!r} shard counts {counts} are not a round robin of "
                                  f"{entry['records']} records; {_fix(self.directory)}")
        for s in shards:
            path = os.path.join(self.directory, s["file"])
            if not os.path.exists(path):
                raise RecordFileError(f"prepared shard {path} is missing; "
                                      f"{_fix(self.directory)}")
            size = os.path.getsize(path)
            if size != s["bytes"]:
                raise RecordFileError(f"prepared shard {path} is {size:,} bytes but the index "
                                      f"records {s['bytes']:,} (truncated or overwritten); "
                                      f"{_fix(self.directory)}")

    def _reader(self, split: str, shard: int):
        key = (split, shard)
        with self._lock:
            reader = self._readers.get(key)
            if reader is None:
                from array_record.python import array_record_module  # noqa: PLC0415
                path = os.path.join(self.directory, self._entry(split)["shards"][shard]["file"])
                try:
                    reader = array_record_module.ArrayRecordReader(
                        path, "readahead_buffer_size:0")
                except (RuntimeError, OSError, ValueError) as e:
                    raise RecordFileError(self._corrupt(path, e)) from None
                self._readers[key] = reader
        return reader

    def _corrupt(self, path: str, error: BaseException) -> str:
        reason = " ".join(str(error).split())[:200]
        return (f"prepared shard {path} is truncated or corrupt ({reason}); "
                f"{_fix(self.directory)}")

    def read(self, split: str, indices: Sequence[int]) -> list[dict]:
        """The records ``indices`` of ``split`` (decoded JSON dicts), in order."""
        entry = self._entry(split)
        num_shards, total = len(entry["shards"]), int(entry["records"])
        by_shard: dict[int, list[tuple[int, int]]] = {}
        for pos, i in enumerate(indices):
            i = int(i)
            if not 0 <= i < total:
                raise IndexError(f"record {i} of split {split!r} is out of range [0, {total})")
            by_shard.setdefault(i % num_shards, []).append((pos, i // num_shards))
        out: list[Optional[dict]] = [None] * len(indices)
        for shard, items in by_shard.items():
            reader = self._reader(split, shard)
            path = os.path.join(self.directory, entry["shards"][shard]["file"])
            try:
                raw = reader.read([off for _, off in items])
                rows = [json.loads(r) for r in raw]
            except (RuntimeError, OSError, ValueError, IndexError) as e:
                raise RecordFileError(self._corrupt(path, e)) from None
            for (pos, _), row in zip(items, rows):
                out[pos] = row
        return out  # type: ignore[return-value]

    def close(self) -> None:
        with self._lock:
            for r in self._readers.values():
                r.close()
            self._readers.clear()


# ----------------------------------------------------------------------------- prepare
def source_records(task_name: str, split: str) -> Iterable[dict]:
    """The records of a registered seqio task's source (unshuffled, before preprocessing)."""
    import seqio  # noqa: PLC0415

    import plug_jax.tasks  # noqa: F401,PLC0415  (registers the project's tasks)
    task = seqio.get_mixture_or_task(task_name)
    if not isinstance(task, seqio.Task):
        raise ValueError(f"{task_name!r} is a mixture; prepare each of its tasks")
    ds = task.source.get_dataset(split=split, shuffle=False)
    for ex in ds.as_numpy_iterator():
        yield {k: v for k, v in ex.items()}


def prepare_task(task_name: str, directory: str, splits: Sequence[str], *,
                 num_shards: int = DEFAULT_SHARDS, verbose: bool = True) -> dict:
    out = {}
    for split in splits:
        t0 = time.time()
        entry = write_split(directory, split, source_records(task_name, split),
                            num_shards=num_shards, progress_every=10_000 if verbose else 0)
        out[split] = entry
        if verbose:
            print(f"prepared {task_name} {split}: {entry['records']:,} records in "
                  f"{num_shards} shards under {directory} ({time.time() - t0:.1f}s)",
                  flush=True)
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m plug_jax.data.record_files",
                                 description="Prepared record files (ArrayRecord shards).")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare", help="write a task's source records as ArrayRecord shards")
    p.add_argument("--task", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--splits", default="train,validation,test")
    p.add_argument("--num_shards", type=int, default=DEFAULT_SHARDS)
    c = sub.add_parser("check", help="check every shard against the index")
    c.add_argument("dir")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "prepare":
            prepare_task(args.task, args.out, [s for s in args.splits.split(",") if s],
                         num_shards=args.num_shards)
        else:
            files = RecordFiles(args.dir)
            for split in files.splits:
                files.check(split)
                n = files.num_records(split)
                files.read(split, range(n))  # reads every chunk: its checksums are verified
                print(f"{args.dir} {split}: {n:,} records, every shard readable")
    except (RecordFileError, ValueError) as e:
        print(f"plug_jax: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
