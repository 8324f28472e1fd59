"""Input pipeline vs train step: is the Shop World LM pipeline ever the bottleneck?

In one process, on this machine's CPU, with the shapes of ``make demo``
(``experiments/gpt3/shop_tiny.gin``: tiny GPT-3, vocabulary 1024, global batch 16 x 128,
packed):

1. the pipeline alone: a warm ``get_batch_iterator(TASK, ...)`` producing batches as fast as
   it can (examples/s, ms per batch); TASK is ``shop_lm_zh_v1`` (reads the prepared
   ``shop_world/text_zh`` TFDS files; prepared first if needed) or, with ``--task
   gpt3_shoplm_zh_v1``, the task that generates the same documents on the fly;
2. the train step alone: the jitted tiny GPT-3 step on one fixed, device-resident batch
   (ms per step, and the examples/s it consumes);
3. the two together as the trainer runs them: ``next(iterator)`` then the step.

Printed: the pipeline's cost as a share of step time (1 / 2), and the wall-time overhead the
pipeline adds to the real loop ((3 - 2) / 3). On a 2-core machine both compete for the same
cores, so (3) includes the contention.

Then, for index-based input (``--indexed_task``, default ``gpt3_shoplm_zh_v1``; see
docs/data.md):

4. resume cost against step: building the iterator at global batch 10, 1,000, 10,000 and
   100,000 and taking its first batch (the stream pipeline, which skips batches, at 10 and
   1,000 for reference), as a ratio to the cost at step 10;
5. per-process input with 1, 2 and 4 processes on this machine (one OS process each, all at
   once, as ``launch/local_multiprocess.sh`` starts them; the input needs no collectives):
   each builds only its rows of the same ``--process_batches`` global batches; printed are
   each process's examples/s and the examples generated and tokenized, summed over
   processes, as a ratio to what one process generates (tf.data's read-ahead included: a
   few batches per process, so it is measured over many batches).

Not a test: timings live here only.

    python benchmarks/input_pipeline.py [--task shop_lm_zh_v1] [--batch 16 --length 128]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time


def _median_ms(fn, n: int) -> float:
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(ts)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="shop_lm_zh_v1",
                    help="shop_lm_zh_v1 reads the prepared shop_world TFDS files; "
                         "gpt3_shoplm_zh_v1 generates the same text on the fly")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--length", type=int, default=128)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--indexed_task", default="gpt3_shoplm_zh_v1",
                    help="task for the index-based sections (4, 5)")
    ap.add_argument("--process_batches", type=int, default=1000,
                    help="global batches each process builds in section 5")
    ap.add_argument("--only", choices=("all", "indexed"), default="all",
                    help="'indexed': sections 4 and 5 only")
    ap.add_argument("--_worker", nargs=3, type=int, metavar=("P", "COUNT", "K"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    if args._worker:
        return _process_worker(args, *args._worker)
    if args.only == "indexed":
        _indexed_sections(args)
        return 0

    import jax
    import numpy as np
    from flax import linen as nn

    import plug_jax.tasks  # noqa: F401
    from plug_jax import models, optim
    from plug_jax.data.pipeline import get_batch_iterator, task_vocabulary
    from plug_jax.trainer.state import TrainState
    from plug_jax.trainer.step import make_train_step

    lengths = {"targets": args.length}
    vocab = task_vocabulary(args.task).vocab_size

    # 1. pipeline alone (warm: the first batches build the pipeline and fill the prefetch)
    it = get_batch_iterator(args.task, lengths, "train", args.batch, seed=0)
    for _ in range(20):
        next(it)
    t0 = time.perf_counter()
    segs = 0
    for _ in range(args.steps):
        b = next(it)
        segs += int(np.max(b["decoder_segment_ids"], axis=1).sum())
    pipe_s = (time.perf_counter() - t0) / args.steps
    docs_per_batch = segs / args.steps
    it.close()

    # 2. the step alone
    model = models.gpt3(args.preset, vocab_size=vocab)
    batch = next(get_batch_iterator(args.task, lengths, "train", args.batch, seed=1))
    params = nn.unbox(model.init_params(jax.random.PRNGKey(0), batch))
    state = TrainState.create(params, optim.adamw(1e-3, weight_decay=0.01, clip_norm=1.0))
    step = jax.jit(make_train_step(model, 1), donate_argnums=(0,))
    rng = jax.random.PRNGKey(0)
    dev_batch = jax.device_put(batch)
    for _ in range(5):
        state, m = step(state, dev_batch, rng)
    jax.block_until_ready(m)

    def one_step():
        nonlocal state
        state, m = step(state, dev_batch, rng)
        jax.block_until_ready(m)

    step_ms = _median_ms(one_step, args.steps)

    # 3. the loop as the trainer runs it
    it = get_batch_iterator(args.task, lengths, "train", args.batch, seed=2)
    for _ in range(20):
        state, m = step(state, jax.device_put(next(it)), rng)
    jax.block_until_ready(m)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        state, m = step(state, jax.device_put(next(it)), rng)
        jax.block_until_ready(m)
    loop_ms = 1e3 * (time.perf_counter() - t0) / args.steps
    it.close()

    n_params = models.count_params(params)
    print(f"task {args.task}, batch {args.batch} x {args.length} (packed, ~{docs_per_batch:.1f} "
          f"documents per batch); model gpt3/{args.preset} {n_params:,} params, vocab {vocab}; "
          f"jax {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} CPUs")
    print(f"pipeline alone: {1e3 * pipe_s:.2f} ms/batch = {args.batch / pipe_s:,.0f} "
          f"examples/s ({docs_per_batch / pipe_s:,.0f} documents/s)")
    print(f"train step alone: {step_ms:.2f} ms/step = consumes {1e3 * args.batch / step_ms:,.0f} "
          f"examples/s")
    print(f"loop (next batch + step): {loop_ms:.2f} ms/step")
    print(f"pipeline cost as a share of step time: {100 * 1e3 * pipe_s / step_ms:.1f}%  "
          f"(pipeline is {step_ms / (1e3 * pipe_s):.1f}x faster than the step consumes)")
    print(f"overhead the pipeline adds to the loop: {100 * (loop_ms - step_ms) / loop_ms:.1f}%")
    _indexed_sections(args)
    return 0


def _count_generated_examples() -> list[int]:
    """Patch the Shop World record generator to count the examples it generates."""
    import plug_jax.tasks.gpt3 as gpt3_tasks
    count = [0]
    generate = gpt3_tasks._generate

    def counting(indices, **kw):
        count[0] += len(indices)
        return generate(indices, **kw)

    gpt3_tasks._generate = counting
    return count


def _process_worker(args, process_index: int, process_count: int, per_batch: int) -> int:
    """Section 5's child: build this process's rows of ``--process_batches`` global batches."""
    import plug_jax.tasks  # noqa: F401
    from plug_jax.data.pipeline import get_batch_iterator
    count = _count_generated_examples()
    it = get_batch_iterator(args.indexed_task, {"targets": args.length}, "train", args.batch,
                            seed=0, process_index=process_index, process_count=process_count,
                            examples_per_batch=per_batch)
    next(it)  # build the pipeline
    t0 = time.perf_counter()
    for _ in range(args.process_batches):
        next(it)
    dt = time.perf_counter() - t0
    share = (process_index + 1) * per_batch // process_count - process_index * per_batch // \
        process_count
    print(json.dumps({"examples_per_s": share * args.process_batches / dt,
                      "generated": count[0], "used": share * (args.process_batches + 1)}))
    return 0


def _indexed_sections(args) -> None:
    import plug_jax.tasks  # noqa: F401
    from plug_jax.data.pipeline import get_batch_iterator
    lengths = {"targets": args.length}
    first = get_batch_iterator(args.indexed_task, lengths, "train", args.batch, seed=0)
    per_batch = first.examples_per_batch
    next(first)
    first.close()

    def resume_s(step, index_based=True):
        t0 = time.perf_counter()
        it = get_batch_iterator(args.indexed_task, lengths, "train", args.batch, seed=0,
                                start_step=step, index_based=index_based,
                                examples_per_batch=per_batch if index_based else None)
        next(it)
        it.close()
        return time.perf_counter() - t0

    print(f"\nindex-based input: task {args.indexed_task}, batch {args.batch} x {args.length}, "
          f"{per_batch} examples per global batch")
    base = resume_s(10)
    for step in (10, 1_000, 10_000, 100_000):
        t = base if step == 10 else resume_s(step)
        print(f"resume at step {step:>7,}: {t:6.3f} s  ({t / base:.2f}x step 10)")
    stream10 = resume_s(10, index_based=False)
    for step in (10, 1_000):
        t = stream10 if step == 10 else resume_s(step, index_based=False)
        print(f"stream pipeline, resume at step {step:>5,} (reference): {t:6.3f} s  "
              f"({t / base:.2f}x index-based step 10)")

    one = None
    for count in (1, 2, 4):
        if args.batch % count:
            continue
        procs = [subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--batch", str(args.batch), "--length",
             str(args.length), "--indexed_task", args.indexed_task, "--process_batches",
             str(args.process_batches), "--_worker", str(p), str(count), str(per_batch)],
            stdout=subprocess.PIPE, text=True) for p in range(count)]
        rows = [json.loads(pr.communicate()[0].strip().splitlines()[-1]) for pr in procs]
        total = sum(r["generated"] for r in rows)
        used = sum(r["used"] for r in rows)
        one = one or total
        print(f"{count} process(es): " + ", ".join(f"{r['examples_per_s']:,.0f}" for r in rows)
              + f" examples/s per process; examples generated and tokenized, summed over "
              f"processes: {total:,} ({total / one:.2f}x one process; {used:,} in the batches "
              f"taken, the rest read ahead)")


if __name__ == "__main__":
    raise SystemExit(main())
