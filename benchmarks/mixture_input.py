"""Mixtures by global index against the stream: pipeline time per batch, one host.

Each row builds a ``pipeline.BatchIterator`` for a task or mixture on both input paths in
the same run (``index_based=False``: seqio's stream, the reference; ``True``: the index
path of ``plug_jax/data/indexed.py``), takes one batch to warm it up, then times the next
``--batches`` and prints ms per batch and the ratio index / stream::

    python benchmarks/mixture_input.py
    python benchmarks/mixture_input.py --tasks plug_genmlm_zh_v1 --batch 32 --length 256

The model is not involved: this is the input pipeline alone, on whatever cores the machine
has (tf.data uses them all).
"""
from __future__ import annotations

import argparse
import time


def ms_per_batch(name: str, lengths: dict, batch: int, pack: bool, index_based: bool,
                 batches: int, converter: str) -> float:
    from plug_jax.data import pipeline
    it = pipeline.get_batch_iterator(name, lengths, "train", batch, converter=converter,
                                     pack=pack, index_based=index_based)
    next(it)
    t0 = time.perf_counter()
    for _ in range(batches):
        next(it)
    dt = (time.perf_counter() - t0) / batches
    it.close()
    return dt * 1000.0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", default="palm2_denoise_zh_v1,palm2_infill_zh_v1",
                    help="comma-separated tasks or mixtures (encoder-decoder Shop World ones)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--length", type=int, default=128, help="inputs and targets length")
    ap.add_argument("--batches", type=int, default=30)
    ap.add_argument("--converter", default="encdec")
    a = ap.parse_args(argv)
    import plug_jax.tasks  # noqa: F401  (registers the tasks and mixtures)
    lengths = {"inputs": a.length, "targets": a.length}
    print(f"batch {a.batch}, lengths {lengths}, {a.batches} batches after the first")
    for name in [t for t in a.tasks.split(",") if t]:
        for pack in (True, False):
            stream = ms_per_batch(name, lengths, a.batch, pack, False, a.batches, a.converter)
            index = ms_per_batch(name, lengths, a.batch, pack, True, a.batches, a.converter)
            print(f"{name:24s} {'packed' if pack else 'unpacked':8s} stream {stream:6.1f} ms, "
                  f"index-based {index:6.1f} ms: {index / stream:.2f}x the stream", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
