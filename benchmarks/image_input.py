"""Image tasks by global index against the stream: pipeline time per batch, one host.

Each row builds a ``pipeline.BatchIterator`` for a Shop World image task on both input
paths in the same run (``index_based=False``: seqio's stream with its shuffle buffer, the
reference; ``True``: the index path, which reads each example's image from the ArrayRecord
layout), takes one batch to warm it up, then times the next ``--batches`` and prints ms per
batch and the ratio index / stream. For tasks that make several examples per image
(``@indexed.per_record``: VQA, grounding) it also times the one-time pass that counts the
examples of every train image (``indexed.record_counts``, then cached on disk)::

    python benchmarks/image_input.py
    python benchmarks/image_input.py --tasks mplug_shop_vqa_en_v1 --batch 32

The model is not involved: this is the input pipeline alone, on whatever cores the machine
has (tf.data uses them all).
"""
from __future__ import annotations

import argparse
import os
import time

LENGTHS = {
    "mplug_shop_vqa_en_v1": {"image": (64, 64, 3), "inputs": 24, "targets": 8},
    "mplug_shop_grounding_en_v1": {"image": (64, 64, 3), "inputs": 16, "targets": 5},
    "mplug_shop_captions_en_v1": {"image": (64, 64, 3), "targets": 32},
}


def ms_per_batch(name: str, batch: int, index_based: bool, batches: int) -> float:
    # The timing loop of benchmarks/mixture_input.py (this folder is on sys.path when the
    # script runs), unpacked with the image_text converter.
    from mixture_input import ms_per_batch as timed
    return timed(name, LENGTHS[name], batch, False, index_based, batches, "image_text")


def cold_count_seconds(name: str) -> float:
    import seqio

    from plug_jax.data import indexed
    task = seqio.get_mixture_or_task(name)
    n = task.source.indexed_num_records("train")
    path = indexed._counts_file(task, "train", n)  # noqa: SLF001
    indexed._COUNTS.clear()  # noqa: SLF001
    if path and os.path.exists(path):
        os.remove(path)
    t0 = time.perf_counter()
    counts = indexed.record_counts(task, "train")
    dt = time.perf_counter() - t0
    print(f"{name}: {n} images make {int(counts.sum())} examples; counting them took "
          f"{dt:.1f} s (once, then read from the cache)", flush=True)
    return dt


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", default=",".join(LENGTHS), help="comma-separated, of "
                    + ", ".join(LENGTHS))
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--batches", type=int, default=30)
    a = ap.parse_args(argv)
    import seqio

    import plug_jax.tasks  # noqa: F401  (registers the tasks)
    from plug_jax.data import indexed
    print(f"batch {a.batch}, {a.batches} batches after the first")
    for name in [t for t in a.tasks.split(",") if t]:
        if name not in LENGTHS:
            raise SystemExit(f"unknown task {name!r}; use one of {sorted(LENGTHS)}")
        if indexed.expands_per_record(seqio.get_mixture_or_task(name)):
            cold_count_seconds(name)
        stream = ms_per_batch(name, a.batch, False, a.batches)
        index = ms_per_batch(name, a.batch, True, a.batches)
        print(f"{name:28s} stream {stream:6.1f} ms, index-based {index:6.1f} ms: "
              f"{index / stream:.2f}x the stream", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
