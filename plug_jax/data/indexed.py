"""Index-based input: each process reads only its own examples, and resuming costs O(1).

The stream pipeline (``pipeline.global_dataset``) builds every global batch on every process
and resumes by skipping ``step`` batches. This module addresses examples by **global
position** instead (docs/data.md, "Index-based input"):

* Global batch ``n`` holds the examples at global positions ``n*K .. n*K + K - 1``: ``K``
  examples per global batch (``K = B`` without packing). Position ``g`` is record
  ``shuffle_e(g mod N)`` of epoch ``e = g // N`` of a split of ``N`` records
  (``grain.experimental.index_shuffle``: a keyed permutation evaluated per index, no table),
  so a batch's examples depend only on the task, the seed and ``K``, never on the process
  count.
* Process ``p`` of ``P`` takes positions ``n*K + floor(p*K/P) .. n*K + floor((p+1)*K/P) - 1``
  and builds its ``B/P`` rows from them: it generates, tokenizes, preprocesses and packs
  only those examples. Without packing, row ``r`` is example ``n*B + r`` on any process
  count; with packing, the rows a process packs its share into depend on ``P``.
* Seeded seqio preprocessors (``seqio.map_over_dataset(num_seeds=...)``) get per-example
  seeds folded from the example's global position, not from its place in a stream, so a
  masked-LM mask is the same on 1 or 4 processes and after a resume.
* Starting at global batch ``n`` builds the same pipeline from position ``n * B * m``:
  nothing is replayed, so the cost of a resume does not grow with ``n``.
* Packing is per process and batch: the share's examples go through the task's packing
  (seqio's ``trim_and_pack`` for decoder-only LM, the feature converter otherwise) into
  exactly ``B/P`` rows; the rows an overfull share needs beyond those are dropped, a short
  share leaves all-padding rows. ``K`` is estimated once from the mean lengths of the first
  examples (``estimate_examples_per_batch``, filling rows to ``PACK_FILL`` on average) and
  then kept in the iterator's state, so a resume uses the same ``K``.

A task whose preprocessing makes several examples from one record marks that preprocessor
:func:`per_record`; its positions then count examples (item ``j`` of record ``r``), not
records (:func:`record_counts`, :func:`example_records`).

A task qualifies when its source is an ``IndexedSource`` (it can produce the examples of a
dataset of record indices): the Shop World sources (images and videos included) and
prepared record files are. A mixture
qualifies when its members do: position ``g`` goes to one member by a fixed pattern of the
mixing rates (:func:`mixture_schedule`), and that member reads it by its own position.
"""
from __future__ import annotations

import contextlib
import itertools
import math
import os
import threading
from typing import Callable, Mapping, Protocol, runtime_checkable

import numpy as np

from plug_jax.data import configure_tensorflow

tf = configure_tensorflow()

import seqio  # noqa: E402

# 2**62: an "endless" range of global batches (tf.data ranges are int64).
_ENDLESS = 1 << 62
_SHUFFLE_ROUNDS = 4
# Packing aims at this fraction of the rows' tokens on average, so that a share of longer
# examples than average still rarely needs more rows than it has.
PACK_FILL = 0.9
ESTIMATE_EXAMPLES = 64


@runtime_checkable
class IndexedSource(Protocol):
    """A data source that can produce any of its records by index."""

    def indexed_num_records(self, split: str) -> int:
        """The number of records of ``split`` (indices ``0 .. n - 1``)."""

    def indexed_dataset(self, split: str, indices: tf.data.Dataset, *,
                        chunk: int = 64) -> tf.data.Dataset:
        """The records of ``indices`` (a dataset of int64 scalars), one per index, in order,
        reading at most ``chunk`` ahead (the pipeline passes one process's share of a batch,
        so a process generates only the records it trains on)."""


class IndexedFunctionSource(seqio.FunctionDataSource):
    """A ``seqio.FunctionDataSource`` that can also read records by index.

    ``records_fn(split, indices, chunk=...) -> tf.data.Dataset`` maps a dataset of int64
    record indices to the records, in order, reading ``chunk`` at a time; the stream ``dataset_fn`` of the seqio source reads the same
    records, so both paths see one definition of the data.
    """

    def __init__(self, dataset_fn: Callable, records_fn: Callable, splits, *,
                 num_input_examples: Mapping[str, int] | None = None,
                 num_records_fn: Callable[[str], int] | None = None, **kwargs):
        if (num_input_examples is None) == (num_records_fn is None):
            raise ValueError("pass exactly one of num_input_examples (sizes known now) and "
                             "num_records_fn (split -> size, asked when first read)")
        super().__init__(dataset_fn, splits=splits, num_input_examples=num_input_examples,
                         **kwargs)
        self._records_fn = records_fn
        self._num_records_fn = num_records_fn
        self._sizes = {k: int(v) for k, v in (num_input_examples or {}).items()}

    def indexed_num_records(self, split: str) -> int:
        if self._num_records_fn is not None and split in self.splits:
            return int(self._num_records_fn(split))
        if split not in self._sizes:
            raise ValueError(f"split {split!r} is not one of "
                             f"{sorted(self._sizes or self.splits)}")
        return self._sizes[split]

    def indexed_dataset(self, split: str, indices: tf.data.Dataset, *,
                        chunk: int = 64) -> tf.data.Dataset:
        return self._records_fn(split, indices, chunk=chunk)


def supports_indexed(provider, split: str | None = None) -> bool:
    """Whether ``provider`` (a seqio Task or Mixture) can be read by global position: a task
    over an ``IndexedSource``, or a mixture whose every member (of ``split``, when given,
    with a positive rate) is one."""
    if isinstance(provider, seqio.Mixture):
        try:
            members = mixture_members(provider, split)
        except ValueError:
            return False
        return all(supports_indexed(t) for t, _ in members)
    return isinstance(provider, seqio.Task) and isinstance(provider.source, IndexedSource)


# ----------------------------------------------------------------------------- global order
def _epoch_seed(seed: int, epoch: int) -> int:
    return int((int(seed) * 1_000_003 + int(epoch) * 7_919 + 12_345) % (1 << 31))


def record_indices(positions: np.ndarray, num_records: int, seed: int,
                   shuffle: bool) -> np.ndarray:
    """Record index of each global position: ``shuffle_epoch(g mod N)``, a fresh keyed
    permutation per epoch (identity without ``shuffle``)."""
    positions = np.asarray(positions, np.int64)
    epochs, offsets = np.divmod(positions, int(num_records))
    if not shuffle or num_records == 1:
        return offsets
    from grain.experimental import index_shuffle  # noqa: PLC0415
    return np.array([index_shuffle(int(o), max_index=int(num_records) - 1,
                                   seed=_epoch_seed(seed, e), rounds=_SHUFFLE_ROUNDS)
                     for o, e in zip(offsets, epochs)], np.int64)


def share(examples_per_batch: int, process_index: int, process_count: int) -> tuple[int, int]:
    """``[lo, hi)``: the offsets, inside each global batch, of process ``p``'s examples."""
    k = int(examples_per_batch)
    return (process_index * k // process_count, (process_index + 1) * k // process_count)


# ----------------------------------------------------------------------------- seeds
_SEED_LOCK = threading.Lock()


@contextlib.contextmanager
def seeds_from_positions(positions: tf.data.Dataset, seed: int, first_map: int = 0):
    """Inside this context, seqio's seeded maps (``map_over_dataset(num_seeds=k)``) take each
    example's seeds from its global position instead of from a per-stream random dataset.

    ``positions`` must be aligned with the examples the maps see (the preprocessors before a
    seeded map keep one output per input, as every Shop World task's do). Map ``j`` of the
    task gets ``fold_in((seed, j), position)``, split into ``k`` seeds as seqio's own
    per-element path (``random_map``) does; ``j`` counts from ``first_map``.
    """
    cls = seqio.utils._GrainRandomMapFn
    original = cls.__call__
    counter = itertools.count(int(first_map))

    def call(self, dataset, *args, **kwargs):
        base = tf.constant([int(seed), 1000 + next(counter)], tf.int64)
        rngs = positions.map(lambda g: tf.random.experimental.stateless_fold_in(base, g))

        def map_fn(element, rng):
            if self.num_seeds == 1:
                return self._map_fn_with_special_kwargs(element, *args, seed=rng, **kwargs)
            seeds = tf.unstack(tf.random.experimental.stateless_split(rng, self.num_seeds))
            return self._map_fn_with_special_kwargs(element, *args, seeds=seeds, **kwargs)

        return tf.data.Dataset.zip((dataset, rngs)).map(map_fn,
                                                        num_parallel_calls=tf.data.AUTOTUNE)

    with _SEED_LOCK:
        cls.__call__ = call
        try:
            yield
        finally:
            cls.__call__ = original


# ----------------------------------------------------------------------------- per record
PER_RECORD_ATTR = "plug_jax_per_record"


def per_record(fn: Callable) -> Callable:
    """Mark a preprocessor that makes any number of examples from each record (a
    ``flat_map``: one VQA example per question of an image), each from that record alone.

    A task with a marked preprocessor is read by index **per example**: global position
    ``g`` is one preprocessed example, not one record (:func:`record_counts`). By marking it
    the task's author also says that the preprocessors up to it treat records independently
    (no ``scan`` across records) and that the number of examples of a record does not
    depend on the seed. The preprocessors after it must keep one output per input (checked
    when the pipeline is built).
    """
    setattr(fn, PER_RECORD_ATTR, True)
    return fn


def expands_per_record(task) -> bool:
    """Whether ``task`` has a :func:`per_record` preprocessor (through ``functools.partial``)."""
    if not isinstance(task, seqio.Task):
        return False
    return any(_marked(p) for p in task.preprocessors)


def _chain(task: seqio.Task) -> list[tuple[Callable, bool]]:
    """The task's preprocessors without the cache placeholder, each with whether seqio
    gives it the sequence lengths (only those after the placeholder get them)."""
    out, after = [], not task.supports_caching
    for p in task.preprocessors:
        if isinstance(p, seqio.CacheDatasetPlaceholder):
            after = True
            continue
        out.append((p, after))
    return out


def _marked(p) -> bool:
    while hasattr(p, "func") and not getattr(p, PER_RECORD_ATTR, False):
        p = p.func
    return bool(getattr(p, PER_RECORD_ATTR, False))


def _split_chain(task: seqio.Task):
    """``(head, tail)``: the preprocessors up to the last :func:`per_record` one, and the
    rest (one output per input, run on the selected examples)."""
    chain = _chain(task)
    last = max(i for i, (p, _) in enumerate(chain) if _marked(p))
    return chain[:last + 1], chain[last + 1:]


def _apply(task: seqio.Task, chain, ds: tf.data.Dataset, sequence_length: Mapping,
           seed: int) -> tf.data.Dataset:
    with seqio.utils.map_seed_manager(seed):
        for p, lengths in chain:
            ds = task._preprocess_dataset(  # noqa: SLF001  (seqio's own calling convention)
                ds, [p], dict(sequence_length) if lengths else None)
    return ds


def _record_preprocessor(task: seqio.Task, head, sequence_length: Mapping,
                         seed: int) -> Callable:
    """``fn(record, position)``: the dataset of the examples ``head`` makes from one record,
    its seeded maps seeded by ``position``."""
    def fn(record, position):
        ds = tf.data.Dataset.from_tensors(record)
        with seeds_from_positions(tf.data.Dataset.from_tensors(position).repeat(), seed):
            return _apply(task, head, ds, sequence_length, seed)
    return fn


_COUNTS: dict[tuple, np.ndarray] = {}
_COUNTS_LOCK = threading.Lock()


def _counts_file(task: seqio.Task, split: str, n: int) -> str | None:
    spec = getattr(task, "plug_jax_spec", None)
    if spec is None:
        return None
    import hashlib  # noqa: PLC0415
    import json  # noqa: PLC0415

    from plug_jax.data.vocab import default_cache_dir  # noqa: PLC0415
    key = hashlib.sha256(json.dumps([spec, split, int(n)], sort_keys=True,
                                    default=str).encode()).hexdigest()[:16]
    return os.path.join(default_cache_dir(), "indexed_counts", f"{task.name}-{split}-{key}.npy")


def record_counts(task: seqio.Task, split: str, *, num_records: int | None = None,
                  sequence_length: Mapping | None = None) -> np.ndarray:
    """int64 ``[N]``: how many examples the task's preprocessing makes from each record of
    ``split``.

    One pass over the split, once: kept in memory and, for tasks registered with a spec
    (``registry.register_task``), in ``$PLUG_JAX_CACHE/indexed_counts/`` keyed by the spec,
    the split and ``N`` (written whole or not at all), so every later run and process reads
    ``N`` integers instead.
    """
    source = task.source
    n = source.indexed_num_records(split) if num_records is None else int(num_records)
    key = (task.name, split, n)
    with _COUNTS_LOCK:
        if key in _COUNTS:
            return _COUNTS[key]
        path = _counts_file(task, split, n)
        counts = None
        if path and os.path.exists(path):
            try:
                counts = np.load(path, allow_pickle=False)
            except (OSError, ValueError):
                counts = None  # unreadable: count again and rewrite it
            if counts is not None and (counts.shape != (n,) or counts.dtype != np.int64):
                counts = None
        if counts is None:
            lengths = dict(sequence_length or {})
            fn = _record_preprocessor(task, _split_chain(task)[0], lengths, 0)
            records = source.indexed_dataset(split, tf.data.Dataset.range(n), chunk=64)
            # Each output is tagged with its record's index; the tags are then counted.
            ds = tf.data.Dataset.zip((records, tf.data.Dataset.range(n))).interleave(
                lambda r, i: fn(r, i).map(lambda _: i), cycle_length=1,
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            counts = np.zeros([n], np.int64)
            for tags in ds.batch(4096).as_numpy_iterator():
                counts += np.bincount(tags, minlength=n)
            if path:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                tmp = f"{path}.tmp{os.getpid()}"
                with open(tmp, "wb") as f:
                    np.save(f, counts, allow_pickle=False)
                os.replace(tmp, path)
        if int(counts.sum()) <= 0:
            raise ValueError(f"task {task.name!r} split {split!r} makes no examples from its "
                             f"{n} records")
        _COUNTS[key] = counts
        return counts


def example_records(positions: np.ndarray, counts: np.ndarray, seed: int,
                    shuffle: bool) -> tuple[np.ndarray, np.ndarray]:
    """``(record, item)`` of each global position of a per-record task: position ``g`` is
    example ``shuffle_e(g mod M)`` of the ``M = sum(counts)`` examples (record by record,
    in record order), and that is item ``item`` of record ``record``."""
    starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    e = record_indices(positions, int(starts[-1]), seed, shuffle)
    r = np.searchsorted(starts, e, side="right") - 1
    return r.astype(np.int64), (e - starts[r]).astype(np.int64)


def per_record_examples(task: seqio.Task, split: str, positions: tf.data.Dataset,
                        sequence_length: Mapping, *, seed: int, shuffle: bool,
                        chunk: int = 64, num_records: int | None = None) -> tf.data.Dataset:
    """:func:`task_examples` for a :func:`per_record` task: exactly one example per
    position. The position's record is read and run on its own through the preprocessors
    up to the marked one (seeded by the position), the one example the position names is
    kept, and the preprocessors after it run on the kept examples only."""
    head, tail = _split_chain(task)
    counts = record_counts(task, split, num_records=num_records,
                           sequence_length=sequence_length)

    def locate(pos):
        return example_records(pos, counts, seed, shuffle)

    located = (positions.batch(max(int(chunk), 1))
               .map(lambda p: tuple(tf.ensure_shape(t, [None]) for t in tf.numpy_function(
                   locate, [p], (tf.int64, tf.int64), stateful=False)))
               .unbatch())
    records = task.source.indexed_dataset(split, located.map(lambda r, j: r), chunk=chunk)
    fn = _record_preprocessor(task, head, sequence_length, seed)
    ds = tf.data.Dataset.zip((records, located, positions)).interleave(
        lambda rec, rj, g: fn(rec, g).skip(rj[1]).take(1), cycle_length=1,
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    # The head's seeded maps are numbered from 0, the tail's from 1000: no two share a seed.
    with seeds_from_positions(positions, seed, first_map=1000):
        out = _apply(task, tail, ds, sequence_length, seed)
    fake = tf.data.Dataset.range(8).map(lambda i: tf.nest.map_structure(
        lambda sp: tf.zeros([d if d is not None else 1 for d in sp.shape], sp.dtype),
        ds.element_spec))
    if int(_apply(task, tail, fake, sequence_length, seed).cardinality()) != 8:
        raise ValueError(f"task {task.name!r}: a preprocessor after its @indexed.per_record "
                         f"one changes the number of examples (a filter or flat_map); fix: "
                         f"mark the last expanding preprocessor, or move the filter before it")
    out = task._validate_preprocessing(out)  # noqa: SLF001
    return task._trim_output_features(out, sequence_length=dict(sequence_length))  # noqa: SLF001


# ----------------------------------------------------------------------------- examples
def task_examples(task: seqio.Task, split: str, positions: tf.data.Dataset,
                  sequence_length: Mapping, *, seed: int, shuffle: bool,
                  chunk: int = 64, num_records: int | None = None) -> tf.data.Dataset:
    """The task's preprocessed, trimmed examples at the global ``positions`` (in order),
    their records read ``chunk`` at a time."""
    if expands_per_record(task):
        return per_record_examples(task, split, positions, sequence_length, seed=seed,
                                   shuffle=shuffle, chunk=chunk, num_records=num_records)
    source = task.source
    n = source.indexed_num_records(split) if num_records is None else int(num_records)
    if n <= 0:
        raise ValueError(f"task {task.name!r} split {split!r} has no records")

    def to_records(pos):
        return np.asarray(record_indices(pos, n, seed, shuffle), np.int64)

    records = (positions.batch(max(int(chunk), 1))
               .map(lambda p: tf.ensure_shape(tf.numpy_function(to_records, [p], tf.int64,
                                                                stateful=False), [None]))
               .unbatch())
    ds = source.indexed_dataset(split, records, chunk=chunk)
    with seeds_from_positions(positions, seed):
        ds = task.preprocess_precache(ds, seed=seed)
        ds = task.preprocess_postcache(ds, sequence_length=dict(sequence_length), seed=seed)
    ds = task._validate_preprocessing(ds)  # noqa: SLF001  (seqio's own checks)
    return task._trim_output_features(ds, sequence_length=dict(sequence_length))  # noqa: SLF001


# ----------------------------------------------------------------------------- mixtures
# Mixing rates are rounded to integer shares of this many positions (then reduced by their
# greatest common divisor): each share is within 1/MIXTURE_RESOLUTION of its rate.
MIXTURE_RESOLUTION = 1000


def mixture_members(mixture: seqio.Mixture,
                    split: str | None = None) -> list[tuple[seqio.Task, float]]:
    """``[(task, rate)]`` of a mixture's leaf tasks with a positive rate (sub-mixtures
    flattened as seqio does), in seqio's order (by name); tasks without ``split`` are left
    out, as seqio's ``Mixture.get_dataset`` leaves them out."""
    out = []
    for task in mixture.tasks:
        if split is not None and split not in task.splits:
            continue
        rate = float(mixture.get_rate(task))
        if not math.isfinite(rate) or rate < 0:
            raise ValueError(f"mixture {mixture.name!r} gives task {task.name!r} the rate "
                             f"{rate}; fix: rates must be finite and >= 0")
        if rate > 0:
            out.append((task, rate))
    if not out:
        raise ValueError(f"mixture {mixture.name!r} has no task with a positive rate"
                         + (f" and a {split!r} split" if split else ""))
    return out


def mixture_schedule(rates, resolution: int = MIXTURE_RESOLUTION):
    """The deterministic mixing order: ``(pattern, rank, counts)``.

    The rates become integer ``counts`` (largest remainder over ``resolution`` slots, at
    least 1 each, reduced by their gcd) summing to the period ``P``. ``pattern[s]`` is the
    member at slot ``s`` of every period, spread by smooth weighted round robin (each member's
    slots as evenly apart as possible), and ``rank[s]`` counts the earlier slots of that
    member in the period. Global position ``g`` is then member ``pattern[g % P]``'s example
    number ``(g // P) * counts[m] + rank[g % P]``: O(1) per position, and each member's
    positions are exactly 0, 1, 2, ... in order.
    """
    w = np.asarray(rates, np.float64)
    if w.ndim != 1 or not len(w) or not np.all(np.isfinite(w)) or np.any(w <= 0):
        raise ValueError(f"mixing rates must be finite and > 0, got {list(rates)}")
    raw = w / w.sum() * int(resolution)
    counts = np.maximum(np.floor(raw).astype(np.int64), 1)
    while counts.sum() < resolution:
        counts[int(np.argmax(raw - counts))] += 1
    while counts.sum() > resolution and np.any(counts > 1):
        over = np.where(counts > 1, counts - raw, -np.inf)
        counts[int(np.argmax(over))] -= 1
    counts //= np.gcd.reduce(counts)
    period = int(counts.sum())
    credit = np.zeros(len(counts), np.int64)
    pattern = np.zeros(period, np.int64)
    rank = np.zeros(period, np.int64)
    seen = np.zeros(len(counts), np.int64)
    for slot in range(period):
        credit += counts
        m = int(np.argmax(credit))  # ties: the first member
        credit[m] -= period
        pattern[slot], rank[slot] = m, seen[m]
        seen[m] += 1
    return pattern, rank, counts


def _member_seed(seed: int, member: int) -> int:
    """Each member of a mixture shuffles and seeds its preprocessors with its own key."""
    return int((int(seed) * 1_000_003 + (int(member) + 1) * 104_729 + 7) % (1 << 31))


def _members(provider, split: str) -> list:
    return ([t for t, _ in mixture_members(provider, split)]
            if isinstance(provider, seqio.Mixture) else [provider])


def mixture_examples(mixture: seqio.Mixture, split: str, positions: tf.data.Dataset,
                     sequence_length: Mapping, *, seed: int, shuffle: bool,
                     chunk: int = 64,
                     num_records: Mapping[str, int] | None = None) -> tf.data.Dataset:
    """A mixture's preprocessed, trimmed examples at the global ``positions`` (in order):
    position ``g`` is the example of member ``m`` at that member's own position ``j``
    (:func:`mixture_schedule`), read through :func:`task_examples` with the member's seed.
    Examples keep the mixture's output features plus the features ``sequence_length``
    names (e.g. ``image``), as seqio's ``passthrough_features``. ``num_records``: each
    member's record count by task name, when the caller has read it already."""
    members = mixture_members(mixture, split)
    pattern, rank, counts = mixture_schedule([r for _, r in members])
    period = len(pattern)
    pat, rk, cnt = (tf.constant(a, tf.int64) for a in (pattern, rank, counts))

    def locate(g):
        s = g % period
        m = tf.gather(pat, s)
        return m, (g // period) * tf.gather(cnt, m) + tf.gather(rk, s)

    def located():  # a pipeline per consumer: tf.data's graph rewrites reject shared nodes
        return positions.map(locate)

    keep = set(mixture.output_features) | set(sequence_length)
    datasets, keys = [], None
    for i, (task, _) in enumerate(members):
        local = located().filter(lambda m, j, i=i: tf.equal(m, i)).map(lambda m, j: j)
        ds = task_examples(task, split, local, sequence_length, seed=_member_seed(seed, i),
                           shuffle=shuffle, chunk=chunk,
                           num_records=(num_records or {}).get(task.name))
        ds = ds.map(lambda ex: {k: v for k, v in ex.items() if k in keep})
        mine = sorted(ds.element_spec)
        if keys is not None and mine != keys:
            raise ValueError(f"mixture {mixture.name!r}: task {task.name!r} gives features "
                             f"{mine} but {members[0][0].name!r} gives {keys}; fix: make the "
                             f"members' preprocessors produce the same features")
        keys = mine
        datasets.append(ds)
    return tf.data.Dataset.choose_from_datasets(datasets, located().map(lambda m, j: m))


def examples_at(provider, split: str, positions: tf.data.Dataset, sequence_length: Mapping,
                *, seed: int, shuffle: bool, chunk: int = 64,
                num_records: Mapping[str, int] | None = None) -> tf.data.Dataset:
    """The examples of a task or mixture at the global ``positions``, in order
    (``num_records``: record counts by task name, read once by the caller)."""
    if isinstance(provider, seqio.Mixture):
        return mixture_examples(provider, split, positions, sequence_length, seed=seed,
                                shuffle=shuffle, chunk=chunk, num_records=num_records)
    return task_examples(provider, split, positions, sequence_length, seed=seed,
                         shuffle=shuffle, chunk=chunk,
                         num_records=(num_records or {}).get(provider.name))


def _zero_rows(ds: tf.data.Dataset, count: int) -> tf.data.Dataset:
    """``count`` all-zero rows shaped like ``ds``'s first row (all padding: loss weight 0)."""
    return ds.take(1).map(lambda row: tf.nest.map_structure(tf.zeros_like, row)).repeat(count)


def converter_packs(converter: str, lengths: Mapping) -> bool:
    """Whether ``converter`` puts several examples in a row when asked to pack (its packed
    features have segment ids); the others make one row per example."""
    from plug_jax.data import features  # noqa: PLC0415
    spec = features.feature_spec(converter, lengths, True)
    return any(k.endswith("segment_ids") for k in spec)


def share_rows(examples: tf.data.Dataset, *, converter: str, lengths: Mapping[str, int],
               pack: bool, local_batch_size: int, convert: Callable,
               share_size: int) -> tf.data.Dataset:
    """Exactly ``local_batch_size`` model-feature rows from one process's share of a batch.

    ``examples`` holds at most ``share_size`` examples. ``convert(ds, pack)`` is the
    pipeline's feature conversion of a stream of examples.
    Without packing (or with a converter that makes one row per example) each example is a
    row; with packing the share is packed on its own. Rows beyond ``local_batch_size`` are
    dropped; missing ones (a short share, or examples a task's filter removed) are all
    padding, so every global batch keeps its place.
    """
    b = int(local_batch_size)
    if converter == "decoder" and set(lengths) == {"targets"}:
        length = int(lengths["targets"])
        examples = examples.map(lambda ex: {"targets": tf.cast(ex["targets"], tf.int32)})
        if pack:  # first-fit of the whole share in one numpy call (no per-batch packer ops)
            return examples.ragged_batch(int(share_size)).map(
                lambda ex: _pack_lm(ex["targets"], b, length)).unbatch()

        def convert(ds, pk, _length=length):  # noqa: F811
            return seqio.utils.trim_and_pad_dataset(ds, {"targets": _length})
    rows = convert(examples, bool(pack and converter_packs(converter, lengths)))
    return rows.concatenate(_zero_rows(rows, b)).take(b)


def first_fit(lengths, rows: int, length: int) -> list[list[int]]:
    """Indices of the examples in each of ``rows`` rows of ``length`` tokens: every example
    (trimmed to ``length``) goes, in order, into the first row with room for all of it;
    examples that fit no row are dropped."""
    room = [int(length)] * int(rows)
    out: list[list[int]] = [[] for _ in range(int(rows))]
    for i, n in enumerate(lengths):
        n = min(int(n), int(length))
        for r in range(int(rows)):
            if room[r] >= n:
                room[r] -= n
                out[r].append(i)
                break
    return out


def _pack_rows(values: np.ndarray, splits: np.ndarray, rows: int, length: int):
    lens = np.diff(splits)
    targets = np.zeros((rows, length), np.int32)
    seg = np.zeros((rows, length), np.int32)
    pos = np.zeros((rows, length), np.int32)
    for r, members in enumerate(first_fit(lens, rows, length)):
        at = 0
        for k, i in enumerate(members, 1):
            n = min(int(lens[i]), length)
            targets[r, at:at + n] = values[splits[i]:splits[i] + n]
            seg[r, at:at + n] = k
            pos[r, at:at + n] = np.arange(n)
            at += n
    return targets, seg, pos


def _pack_lm(targets: tf.RaggedTensor, rows: int, length: int) -> dict:
    """One share of LM examples -> ``rows`` packed rows (``targets``, segment ids, positions
    in the layout of seqio's ``trim_and_pack_dataset``)."""
    t, s, p = tf.numpy_function(
        lambda v, sp: _pack_rows(v, sp, rows, length),
        [targets.flat_values, targets.row_splits], (tf.int32, tf.int32, tf.int32),
        stateful=False)
    shape = [rows, length]
    return {"targets": tf.ensure_shape(t, shape), "targets_segment_ids": tf.ensure_shape(s, shape),
            "targets_positions": tf.ensure_shape(p, shape)}


def _one_to_one(task: seqio.Task, split: str, lengths: Mapping, *, seed: int) -> bool:
    """Whether the task's preprocessing keeps one example per record (no ``filter`` or
    ``flat_map``): tf.data knows the cardinality of a finite pipeline of maps, statically."""
    probe = 8
    # The source reads records in chunks (batch / map / unbatch: unknown cardinality), so
    # probe the preprocessing alone on records of the source's own element spec.
    spec = task.source.indexed_dataset(split, tf.data.Dataset.range(1), chunk=1).element_spec
    fake = tf.data.Dataset.range(probe).map(
        lambda i: tf.nest.map_structure(lambda sp: tf.zeros(
            [d if d is not None else 1 for d in sp.shape], sp.dtype), spec))
    with seeds_from_positions(tf.data.Dataset.range(probe), seed):
        ds = task.preprocess_precache(fake, seed=seed)
        ds = task.preprocess_postcache(ds, sequence_length=dict(lengths), seed=seed)
    return int(ds.cardinality()) == probe


def process_rows(task, split: str, lengths: Mapping, *, start_batch: int,
                 examples_per_batch: int, process_index: int, process_count: int,
                 local_batch_size: int, seed: int, shuffle: bool, pack: bool, converter: str,
                 convert: Callable) -> tf.data.Dataset:
    """This process's rows of global batches ``start_batch, start_batch + 1, ...``.

    Each batch's share is read, preprocessed and packed by a pipeline of its own (an
    ordered ``interleave`` over batch indices), so what a batch holds depends only on its index: a
    task whose preprocessors drop examples (a ``filter``) shifts seeds inside a share at
    most, never into later batches, and a resume stays exact.
    """
    k = int(examples_per_batch)
    lo, hi = share(k, process_index, process_count)
    # Outside the traced function: a source's own errors (a missing or truncated shard)
    # surface as themselves, before any batch.
    members = _members(task, split)
    num_records = {m.name: m.source.indexed_num_records(split) for m in members}

    def examples_of(positions, chunk):
        return examples_at(task, split, positions, lengths, seed=seed, shuffle=shuffle,
                           chunk=chunk, num_records=num_records)

    b = int(local_batch_size)
    lm = converter == "decoder" and set(lengths) == {"targets"}
    if (lm or not (pack and converter_packs(converter, lengths))) and all(
            expands_per_record(m) or _one_to_one(m, split, lengths, seed=seed)
            for m in members):
        # Every preprocessor keeps one output per input: one continuous pipeline, grouped
        # into shares afterwards, gives the same rows at a fraction of the per-batch cost.
        positions = tf.data.Dataset.range(int(start_batch), _ENDLESS).flat_map(
            lambda n: tf.data.Dataset.range(n * k + lo, n * k + hi))
        examples = examples_of(positions, min(hi - lo, 64))
        if lm and pack:
            return examples.map(lambda ex: {"targets": tf.cast(ex["targets"], tf.int32)}) \
                .ragged_batch(hi - lo).map(lambda ex: _pack_lm(ex["targets"], b,
                                                               int(lengths["targets"]))) \
                .unbatch()
        if lm:
            examples = examples.map(lambda ex: {"targets": tf.cast(ex["targets"], tf.int32)})
            return seqio.utils.trim_and_pad_dataset(examples, {"targets": int(lengths["targets"])})
        return convert(examples, False)  # one row per example, K = B: b rows per batch

    def one_batch(n):
        positions = tf.data.Dataset.range(n * k + lo, n * k + hi)
        examples = examples_of(positions, min(hi - lo, 64))
        return share_rows(examples, converter=converter, lengths=lengths, pack=pack,
                          local_batch_size=local_batch_size, convert=convert,
                          share_size=hi - lo)

    # Several batches are built at once; block_length = the rows of one batch and
    # deterministic order give exactly the sequence of a flat_map.
    parallel = max(1, min(4, os.cpu_count() or 1))
    rows = tf.data.Dataset.range(int(start_batch), _ENDLESS).interleave(
        one_batch, cycle_length=parallel, block_length=int(local_batch_size),
        num_parallel_calls=parallel, deterministic=True)
    if isinstance(task, seqio.Mixture):
        # tf.data's map_and_batch_fusion rewrite fails on a mixture's per-batch pipelines
        # ("can't delete node(s) with retained fanouts", TF 2.x); the others are fine.
        options = tf.data.Options()
        options.experimental_optimization.map_and_batch_fusion = False
        rows = rows.with_options(options)
    return rows


def mean_lengths(task: seqio.Task, split: str, sequence_length: Mapping, *, seed: int,
                 shuffle: bool, count: int = ESTIMATE_EXAMPLES) -> dict[str, float]:
    """Mean trimmed length of each sequence feature over the first ``count`` positions."""
    ds = examples_at(task, split, tf.data.Dataset.range(count), sequence_length, seed=seed,
                     shuffle=shuffle)
    totals: dict[str, float] = {}
    n = 0
    for ex in ds.as_numpy_iterator():
        n += 1
        for k in sequence_length:
            if k in ex and np.ndim(ex[k]) >= 1:
                totals[k] = totals.get(k, 0.0) + float(np.shape(ex[k])[0])
    if n == 0:
        raise ValueError(f"task {task.name!r} split {split!r} gave no examples")
    return {k: v / n for k, v in totals.items()}


def estimate_examples_per_batch(task: seqio.Task, split: str, sequence_length: Mapping, *,
                                global_batch_size: int, seed: int, shuffle: bool,
                                pack: bool, converter: str) -> int:
    """``K``, the examples of one global batch: ``B`` without packing (or for a converter
    that makes one row per example), else
    ``floor(PACK_FILL * B * L / mean length)`` for the tightest sequence feature (at least
    ``B``)."""
    b = int(global_batch_size)
    if not pack or not converter_packs(converter, sequence_length):
        return b
    means = mean_lengths(task, split, sequence_length, seed=seed, shuffle=shuffle)
    ratios = [PACK_FILL * int(sequence_length[k]) / max(v, 1.0) for k, v in means.items()
              if isinstance(sequence_length.get(k), int)]
    return max(b, int(math.floor(b * min(ratios)))) if ratios else b


# ----------------------------------------------------------------------------- record files
_TF_TYPES = {"string": tf.string, "int64": tf.int64, "float32": tf.float32}


class RecordFilesSource(IndexedFunctionSource):
    """A seqio source over prepared record files (``plug_jax.data.record_files``): read by
    index for index-based input, or as a stream (seqio's ``shard_info`` gives a host its
    ``index % num_shards`` slice of the records).

    ``features`` declares ``{name: tf.DType}`` (scalar strings, int64 and float32); the
    prepared index must hold them. ``directory`` may be a callable that returns the
    directory, resolved at first read, so tasks can register before the files exist.
    """

    def __init__(self, directory, features: Mapping[str, "tf.DType"], splits):
        self._directory = directory
        self._features = dict(features)
        self._files = None
        super().__init__(self._stream, self._records, splits=tuple(splits),
                         num_input_examples={})

    @property
    def directory(self) -> str:
        d = self._directory() if callable(self._directory) else self._directory
        return str(d)

    def files(self):
        from plug_jax.data import record_files  # noqa: PLC0415
        if self._files is None:
            files = record_files.RecordFiles(self.directory)
            for split in files.splits:
                have = files.features(split)
                for name, dtype in self._features.items():
                    want = {tf.string: "string", tf.int64: "int64",
                            tf.float32: "float32"}[dtype]
                    if have.get(name) != want:
                        raise record_files.RecordFileError(
                            f"{self.directory} split {split!r} has feature {name!r} as "
                            f"{have.get(name)!r}, the task reads it as {want!r}; prepare the "
                            f"records from the task's own source")
            self._files = files
        return self._files

    def indexed_num_records(self, split: str) -> int:
        files = self.files()
        files.check(split)  # missing / truncated shards: one line before anything runs
        return files.num_records(split)

    def num_input_examples(self, split: str) -> int:
        return self.files().num_records(split)

    @property
    def supports_arbitrary_sharding(self) -> bool:
        return True

    def get_dataset(self, split: str = "train", shuffle: bool = True, seed=None,
                    shard_info=None, **unused):
        """The stream: records ``0 .. n-1`` (a host's ``index % num_shards`` slice with
        ``shard_info``), shuffled per epoch with ``shuffle``."""
        return self._stream(split, shuffle, seed, shard_info)

    def _read(self, split: str, idx: np.ndarray):
        rows = self.files().read(split.decode() if isinstance(split, bytes) else split, idx)
        out = []
        for name, dtype in self._features.items():
            if dtype == tf.string:
                out.append(np.array([r[name].encode("utf-8") for r in rows], dtype=object))
            else:
                out.append(np.array([r[name] for r in rows], dtype=dtype.as_numpy_dtype))
        return tuple(out)

    def _records(self, split: str, indices: tf.data.Dataset, *, chunk: int = 64):
        names, dtypes = list(self._features), tuple(self._features.values())

        def to_example(idx):
            values = tf.numpy_function(lambda i: self._read(split, i), [idx], dtypes,
                                       stateful=False)
            out = {"index": idx}
            for name, value in zip(names, values):
                value.set_shape(idx.shape)
                out[name] = value
            return out

        return indices.batch(max(int(chunk), 1)).map(to_example).unbatch()

    def _stream(self, split: str, shuffle_files: bool, seed=None, shard_info=None):
        n = self.files().num_records(split)
        ds = tf.data.Dataset.range(n)
        if shard_info is not None:
            ds = ds.shard(shard_info.num_shards, shard_info.index)
        if shuffle_files:
            ds = ds.shuffle(n, seed=seed, reshuffle_each_iteration=True)
        return self._records(split, ds)
