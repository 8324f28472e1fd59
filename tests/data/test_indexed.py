"""Index-based input (plug_jax/data/indexed.py): which records a process reads, per-example
seeds from global positions, constant-time resume, and the one-line errors."""
import functools

import numpy as np
import pytest

import plug_jax.tasks  # noqa: F401  (registers the Shop World tasks)
from plug_jax.data import indexed, pipeline

N = 40  # records in the counting task's train split
LENGTHS = {"targets": 16}
TASK = "test_indexed_counting_zh"


def _records(split, indices, *, chunk, log):
    """Record i is the document "i i i" of i's decimal digits; every generated index is
    appended to ``log`` (the test's view of what a process reads)."""
    import tensorflow as tf

    def gen(idx):
        log.extend(int(i) for i in idx)
        return np.array([(" ".join([str(int(i))] * 3)).encode() for i in idx], dtype=object)

    def to_example(idx):
        text = tf.numpy_function(gen, [idx], tf.string, stateful=True)
        text.set_shape(idx.shape)
        return {"index": idx, "text": text}

    return indices.batch(chunk).map(to_example).unbatch()


LOG: list[int] = []


def _counting_source():
    """The N counting records, by index (reads logged in LOG) or as a stream (not logged)."""
    import tensorflow as tf

    def stream(split, shuffle_files, seed=None):
        return _records(split, tf.data.Dataset.range(N), chunk=8, log=[])

    return indexed.IndexedFunctionSource(
        stream, functools.partial(_records, log=LOG), splits=("train",),
        num_input_examples={"train": N})


@pytest.fixture(scope="module")
def task():
    import seqio
    from plug_jax.data.vocab import ShopWorldVocabulary

    if TASK not in seqio.TaskRegistry.names():
        source = _counting_source()
        plug_jax.tasks.gpt3.add_lm_task(TASK, source, "text",
                                        ShopWorldVocabulary(None, seed=0, lang="zh"))
    return TASK


def _close(it):
    """Stop an iterator's read-ahead before the next one's reads are logged."""
    import gc
    import time
    it.close()
    gc.collect()
    time.sleep(0.2)


def _iter(task, **kw):
    kw = {"seed": 0, "pack": False, "shuffle": False, **kw}
    return pipeline.get_batch_iterator(task, LENGTHS, "train", 4, **kw)


def test_record_order_is_a_fresh_permutation_every_epoch():
    for n in (1, 7, 1000):
        pos = np.arange(3 * n)
        rec = indexed.record_indices(pos, n, seed=5, shuffle=True)
        epochs = rec.reshape(3, n)
        for e in epochs:  # each epoch visits every record once
            assert sorted(e.tolist()) == list(range(n))
        if n > 7:
            assert not np.array_equal(epochs[0], epochs[1])
            assert not np.array_equal(rec[:n], indexed.record_indices(pos[:n], n, 6, True))
        np.testing.assert_array_equal(indexed.record_indices(pos, n, 5, False), pos % n)
    # Any position is computed on its own: the same value alone or inside a range.
    assert indexed.record_indices([123_456_789_012], 1000, 5, True)[0] == \
        indexed.record_indices(np.arange(123_456_789_000, 123_456_789_013), 1000, 5, True)[-1]


def test_share_partitions_each_global_batch():
    for k, p in ((16, 1), (16, 2), (30, 4), (7, 3)):
        shares = [indexed.share(k, i, p) for i in range(p)]
        assert shares[0][0] == 0 and shares[-1][1] == k
        assert all(a[1] == b[0] for a, b in zip(shares, shares[1:]))
        assert max(hi - lo for lo, hi in shares) - min(hi - lo for lo, hi in shares) <= 1


def test_each_process_generates_only_its_own_records(task):
    it = _iter(task)
    assert it.index_based and it.examples_per_batch == 4
    whole = [next(it) for _ in range(3)]
    _close(it)
    for p in range(2):
        LOG.clear()
        part = _iter(task, process_index=p, process_count=2)
        rows = [next(part) for _ in range(3)]
        _close(part)
        # Unshuffled, position g is record g mod N; process p's rows of batch n are the
        # positions 4n + 2p, 4n + 2p + 1 (read-ahead reaches later batches, never others').
        mine = {(4 * n + 2 * p + j) % N for n in range(N) for j in (0, 1)}
        assert LOG and set(LOG) <= mine, sorted(set(LOG) - mine)
        assert set(range(2 * p, 2 * p + 2)) | set(range(4 + 2 * p, 6 + 2 * p)) <= set(LOG)
        for n in range(3):
            for k, v in rows[n].items():
                np.testing.assert_array_equal(v, whole[n][k][2 * p:2 * p + 2])


def test_a_resume_at_a_huge_step_reads_only_that_batch(task):
    step = 10 ** 12  # the stream would replay 4e12 examples; this reads the batch's own
    LOG.clear()
    it = _iter(task, start_step=step)
    first = next(it)
    _close(it)
    want = [(step * 4 + r) % N for r in range(4)]
    # (Later batches are built ahead, in parallel: still only positions from `step` on.)
    assert set(want) <= set(LOG) <= {(step * 4 + g) % N for g in range(4 * 64)}
    fresh = _iter(task)
    for _ in range(want[0] // 4):  # record (4 n) % N is row 0 of batch n for n < N / 4
        next(fresh)
    np.testing.assert_array_equal(next(fresh)["decoder_target_tokens"],
                                  first["decoder_target_tokens"])


def _one_and_two_processes(name, lengths, kw, batches=3):
    """``(iterator, its first batches)`` of one index-based process; the rows two processes
    build for the same batches must be its rows, split in halves."""
    it = pipeline.get_batch_iterator(name, lengths, "train", 4, **kw)
    assert it.index_based
    whole = [next(it) for _ in range(batches)]
    parts = [[next(i) for _ in range(batches)] for i in (
        pipeline.get_batch_iterator(name, lengths, "train", 4, process_index=p,
                                    process_count=2, **kw) for p in range(2))]
    for n in range(batches):
        for k in whole[n]:
            np.testing.assert_array_equal(np.concatenate([parts[0][n][k], parts[1][n][k]]),
                                          whole[n][k])
    return it, whole


def test_masks_follow_the_example_not_the_process_count():
    """StructBERT's masked-LM task draws its noise in a seeded map: with index-based input the
    seeds come from each example's global position, so 1 and 2 processes, and a resume,
    see the same masks."""
    name, lengths = "structbert_pretrain_zh_v2", {"inputs": 48}
    it, whole = _one_and_two_processes(name, lengths, dict(seed=3, converter="encoder",
                                                           pack=False))
    assert any(int(b["mlm_weights"].sum()) > 0 for b in whole)
    resumed = pipeline.BatchIterator.from_state({**it.state(), "step": 1})
    rows = [next(resumed) for _ in range(2)]
    for n in (1, 2):
        for k in whole[n]:
            np.testing.assert_array_equal(rows[n - 1][k], whole[n][k])


def _stream_only_task():
    """The counting task's records behind a plain seqio.FunctionDataSource (no index)."""
    import seqio
    import tensorflow as tf
    from plug_jax.data.vocab import ShopWorldVocabulary
    name = "test_indexed_stream_only_zh"
    if name not in seqio.TaskRegistry.names():
        source = seqio.FunctionDataSource(
            lambda split, shuffle_files, seed=None: _records(
                split, tf.data.Dataset.range(N), chunk=8, log=[]), splits=("train",))
        plug_jax.tasks.gpt3.add_lm_task(name, source, "text",
                                        ShopWorldVocabulary(None, seed=0, lang="zh"))
    return name


def test_paths_and_errors(task):
    # Finite passes and stream-only tasks read the stream; forcing the index path on them
    # is one line naming the fix.
    assert not _iter(task, repeat=False).index_based
    assert not _iter(_stream_only_task()).index_based
    with pytest.raises(ValueError, match="cannot be read by global example index.*"
                                         "INDEX_BASED_INPUT=False"):
        _iter(_stream_only_task(), index_based=True)
    with pytest.raises(ValueError, match="endless training streams"):
        _iter(task, repeat=False, index_based=True)
    with pytest.raises(ValueError, match="examples_per_batch=2 is less than the batch size 4"):
        _iter(task, examples_per_batch=2)
    state = _iter(task, start_step=5).state()
    assert state["index_based"] is True and state["examples_per_batch"] == 4
    old = {k: v for k, v in state.items() if k not in ("index_based", "examples_per_batch")}
    assert not pipeline.BatchIterator.from_state(old).index_based  # pre-#21 checkpoints


def test_shop_world_text_reads_by_index_from_its_array_record_layout(tmp_path):
    """shop_lm_zh_v1 is read by index from TFDS's ArrayRecord layout: the records equal
    TFDS's own decoding, and a truncated shard is one line naming it."""
    import shutil

    import seqio
    import tensorflow as tf
    import tensorflow_datasets as tfds

    from plug_jax.data import shop_world_tfds as sw
    from plug_jax.data.record_files import RecordFileError
    name = "shop_lm_zh_v1"
    assert pipeline.get_batch_iterator(name, LENGTHS, "train", 4).index_based
    src = seqio.get_mixture_or_task(name).source
    picks = [5, 0, 9999]
    ds = src.indexed_dataset("train", tf.data.Dataset.from_tensor_slices(
        tf.constant(picks, tf.int64)), chunk=2)
    builder = tfds.builder(f"shop_world/text_zh:{sw.VERSION}", data_dir=sw.records_dir(),
                           file_format="array_record")
    assert len(sw._shard_files(builder, "train")) == sw.RECORDS_SHARDS
    ref = builder.as_data_source(split="train")
    assert [e["lm_document"] for e in ds.as_numpy_iterator()] == \
        [ref[i]["lm_document"] for i in picks]
    # A copy of the layout with one shard cut in half.
    shutil.copytree(sw.records_dir(), sw.records_dir(str(tmp_path)))
    copy = tfds.builder(f"shop_world/text_zh:{sw.VERSION}",
                        data_dir=sw.records_dir(str(tmp_path)), file_format="array_record")
    shard = sw._shard_files(copy, "train")[3]
    with open(shard, "rb") as f:
        data = f.read()
    with open(shard, "wb") as f:
        f.write(data[:len(data) // 2])
    broken = sw.ShopWorldTfdsSource("text_zh", path=str(tmp_path), features=["lm_document"])
    with pytest.raises(RecordFileError) as e:
        broken.indexed_num_records("train")
    assert "\n" not in str(e.value) and shard in str(e.value) and "fix:" in str(e.value)


# ----------------------------------------------------------------------------- mixtures
def test_mixture_schedule_keeps_the_rates_in_every_period():
    for rates in ((1, 1), (1, 3), (0.2, 0.3, 0.5), (2.0, 1.0, 1.0, 4.0), (1e-4, 1.0)):
        pattern, rank, counts = indexed.mixture_schedule(rates)
        period = len(pattern)
        w = np.asarray(rates, float) / sum(rates)
        # Each member's share of the period is its rate, to 1/1000 (and at least 1 slot).
        assert counts.sum() == period and np.all(counts >= 1)
        assert np.all(np.abs(counts / period - w) <= max(1e-3, 1 / period)), (rates, counts)
        for m in range(len(rates)):
            slots = np.flatnonzero(pattern == m)
            assert len(slots) == counts[m]
            np.testing.assert_array_equal(rank[slots], np.arange(counts[m]))
            # Spread evenly: after t slots a member has had within one of its share.
            seen = np.cumsum(pattern == m)
            assert np.all(np.abs(seen - np.arange(1, period + 1) * counts[m] / period) < 1)
    pattern, rank, counts = indexed.mixture_schedule((1, 3))
    np.testing.assert_array_equal(counts, [1, 3])
    assert sorted(pattern.tolist()) == [0, 1, 1, 1]
    with pytest.raises(ValueError, match="finite and > 0"):
        indexed.mixture_schedule((1.0, 0.0))


N_MIX = 1000  # records per mixture member: read-ahead never wraps into a second epoch


def _counting_task(name: str, offset: int, log: list):
    """A counting task of ``N_MIX`` records whose record i is the document of ``i + offset``."""
    import seqio
    import tensorflow as tf
    from plug_jax.data.vocab import ShopWorldVocabulary

    def records(split, indices, *, chunk):
        return _records(split, indices.map(lambda i: i + offset), chunk=chunk, log=log)

    if name not in seqio.TaskRegistry.names():
        source = indexed.IndexedFunctionSource(
            lambda split, shuffle_files, seed=None: records(split,
                                                            tf.data.Dataset.range(N_MIX), chunk=8),
            records, splits=("train",), num_input_examples={"train": N_MIX})
        plug_jax.tasks.gpt3.add_lm_task(name, source, "text",
                                        ShopWorldVocabulary(None, seed=0, lang="zh"))
    return name


LOG_A: list[int] = []
LOG_B: list[int] = []


@pytest.fixture(scope="module")
def mixture():
    """Two counting tasks mixed 1 : 3 (A's documents are 0..999, B's 10000..10999)."""
    import seqio
    from plug_jax.data import registry
    a = _counting_task("test_indexed_mix_a_zh", 0, LOG_A)
    b = _counting_task("test_indexed_mix_b_zh", 10_000, LOG_B)
    name = "test_indexed_mix_zh"
    if name not in seqio.MixtureRegistry.names():
        registry.register_mixture(name, [(a, 1.0), (b, 3.0)])
    return name


def test_a_mixture_is_read_by_index_in_its_proportions(mixture):
    it = _iter(mixture)
    assert it.index_based and it.examples_per_batch == 4
    whole = [next(it) for _ in range(5)]
    _close(it)
    vocab = pipeline.task_vocabulary(mixture)
    for batch in whole:  # a period is 4 positions: one example of A, three of B per batch
        docs = [vocab.decode([int(t) for t in row if t > 1])
                for row in batch["decoder_target_tokens"]]
        nums = [int(d.split()[0]) for d in docs]
        assert sum(n < 10_000 for n in nums) == 1 and sum(n >= 10_000 for n in nums) == 3, docs
    # Unshuffled, each member reads its own records in order: A 0, 1, ...; B 0, 1, 2, ...
    a_seen = [n for b in whole for n in _numbers(vocab, b) if n < 10_000]
    b_seen = [n - 10_000 for b in whole for n in _numbers(vocab, b) if n >= 10_000]
    assert a_seen == list(range(5)) and b_seen == list(range(15))
    # Two processes: the same rows, and each process generates only its own examples.
    for p in range(2):
        LOG_A.clear()
        LOG_B.clear()
        part = _iter(mixture, process_index=p, process_count=2)
        rows = [next(part) for _ in range(5)]
        _close(part)
        for n in range(5):
            np.testing.assert_array_equal(rows[n]["decoder_target_tokens"],
                                          whole[n]["decoder_target_tokens"][2 * p:2 * p + 2])
        mine = {x for n in range(5) for x in _numbers(vocab, rows[n])}
        others = {x for n in range(5) for x in _numbers(vocab, whole[n])} - mine
        generated = set(LOG_A) | set(LOG_B)
        assert mine <= generated and not (others & generated), sorted(others & generated)
    # A resume at any step is that batch, and costs no replay.
    resumed = pipeline.BatchIterator.from_state({**it.state(), "step": 3})
    np.testing.assert_array_equal(next(resumed)["decoder_target_tokens"],
                                  whole[3]["decoder_target_tokens"])
    _close(resumed)


def _numbers(vocab, batch):
    return [int(vocab.decode([int(t) for t in row if t > 1]).split()[0])
            for row in batch["decoder_target_tokens"]]


def test_a_shop_world_mixture_gives_the_same_rows_on_any_process_count():
    """PALM 2.0's denoising mixture (infilling + sentence shuffling, seeded noise): rows of
    1 and 2 processes and of a resume agree exactly; a state from before mixtures were read
    by index resumes on the stream."""
    name, lengths = "palm2_denoise_zh_v1", {"inputs": 48, "targets": 32}
    kw = dict(seed=1, converter="encdec", pack=False)
    it, whole = _one_and_two_processes(name, lengths, kw)
    resumed = pipeline.BatchIterator.from_state({**it.state(), "step": 2})
    for k, v in next(resumed).items():
        np.testing.assert_array_equal(v, whole[2][k])
    old = {k: v for k, v in it.state().items() if k not in ("index_based",
                                                             "examples_per_batch")}
    assert not pipeline.BatchIterator.from_state(old).index_based
    # Packed: each batch's share is packed on its own, and a resume gives the same rows.
    packed = pipeline.get_batch_iterator(name, {"inputs": 256, "targets": 256}, "train", 4,
                                         **{**kw, "pack": True})
    assert packed.index_based and packed.examples_per_batch > 4
    rows = [next(packed) for _ in range(2)]
    assert int((rows[1]["decoder_segment_ids"].max(axis=1) > 1).sum()) > 0  # really packed
    again = pipeline.BatchIterator.from_state({**packed.state(), "step": 1})
    for k, v in next(again).items():
        np.testing.assert_array_equal(v, rows[1][k])


# ----------------------------------------------------------------------------- per record
PER_RECORD_TASK = "test_indexed_per_record_zh"
ITEMS = (0, 1, 2, 1)  # examples made from record i: ITEMS[i % 4] (40 from the N = 40 records)


@indexed.per_record
def _items(dataset):
    """Record i makes ``ITEMS[i % 4]`` examples, example k the text ``"i i i k"``."""
    import tensorflow as tf
    items = tf.constant(ITEMS, tf.int64)
    return dataset.flat_map(lambda ex: tf.data.Dataset.range(items[ex["index"] % 4]).map(
        lambda k: {"text": ex["text"] + " " + tf.strings.as_string(k)}))


@pytest.fixture(scope="module")
def per_record_task():
    import seqio
    import tensorflow as tf
    from plug_jax.data.vocab import ShopWorldVocabulary

    if PER_RECORD_TASK not in seqio.TaskRegistry.names():
        source = _counting_source()
        vocab = ShopWorldVocabulary(None, seed=0, lang="zh")
        seqio.TaskRegistry.add(
            PER_RECORD_TASK, source=source,
            preprocessors=[_items,
                           functools.partial(seqio.preprocessors.rekey,
                                             key_map={"targets": "text"}),
                           functools.partial(seqio.preprocessors.tokenize,
                                             copy_pretokenized=False),
                           seqio.preprocessors.append_eos_after_trim],
            output_features={"targets": seqio.Feature(vocabulary=vocab, add_eos=True,
                                                      dtype=tf.int32)})
    return PER_RECORD_TASK


def test_a_task_that_expands_records_is_read_one_example_per_position(task, per_record_task):
    """Position g is one *example* (record r's item j), not one record: unshuffled, the
    index path gives the stream's examples in order; each process reads only the records
    of its own positions; a huge step reads only that batch's records."""
    import seqio
    expanding = seqio.get_mixture_or_task(per_record_task)
    assert indexed.expands_per_record(expanding) and not indexed.expands_per_record(
        seqio.get_mixture_or_task(task))
    counts = indexed.record_counts(expanding, "train")
    np.testing.assert_array_equal(counts, np.array(ITEMS)[np.arange(N) % 4])
    # The examples in record order: record r's items 0 .. ITEMS[r % 4] - 1.
    pairs = [(r, j) for r in range(N) for j in range(ITEMS[r % 4])]
    m = len(pairs)
    assert m % 4 == 0  # so process p's positions mod m are always the same half
    r, j = indexed.example_records(np.arange(2 * m), counts, seed=0, shuffle=False)
    assert list(zip(r.tolist(), j.tolist())) == pairs + pairs
    shuffled = indexed.example_records(np.arange(m, 2 * m), counts, seed=4, shuffle=True)
    assert sorted(zip(*(a.tolist() for a in shuffled))) == pairs  # an epoch: each once
    # Unshuffled rows equal seqio's own stream of the task (record order, flat_map).
    stream = _iter(per_record_task, index_based=False)
    want = [next(stream)["decoder_target_tokens"] for _ in range(m // 4 + 1)]
    _close(stream)
    it = _iter(per_record_task)
    assert it.index_based and it.examples_per_batch == 4
    got = [next(it)["decoder_target_tokens"] for _ in range(6)]
    _close(it)
    for n in range(6):
        np.testing.assert_array_equal(got[n], want[n])
    # Two processes: process p's rows are its half, and it reads only its positions' records.
    for p in range(2):
        LOG.clear()
        part = _iter(per_record_task, process_index=p, process_count=2)
        rows = [next(part)["decoder_target_tokens"] for _ in range(3)]
        _close(part)
        mine = {pairs[(4 * n + 2 * p + k) % m][0] for n in range(m) for k in (0, 1)}
        assert len(mine) < N - N // 4  # records with examples that process p never reads
        assert LOG and set(LOG) <= mine, sorted(set(LOG) - mine)
        for n in range(3):
            np.testing.assert_array_equal(rows[n], got[n][2 * p:2 * p + 2])
    step = 10 ** 12
    LOG.clear()
    far = _iter(per_record_task, start_step=step)
    first = next(far)["decoder_target_tokens"]
    _close(far)
    assert set(LOG) <= {pairs[(step * 4 + g) % m][0] for g in range(4 * 64)}
    assert {pairs[(step * 4 + g) % m][0] for g in range(4)} <= set(LOG)
    # Row g is example (4 step + g) mod M of the stream (whose first M rows hold each once).
    flat = np.concatenate(want)
    np.testing.assert_array_equal(first, flat[[(step * 4 + g) % m for g in range(4)]])


def test_mplug_vqa_is_read_by_index_one_example_per_question():
    """mPLUG's VQA task (one example per question of an image) reads Shop World images by
    index from the ArrayRecord layout: record counts are the images' question counts, and
    example g is question j of image r with TFDS's own pixels and text; 1 and 2 processes
    build the same rows."""
    import seqio
    import tensorflow as tf
    import tensorflow_datasets as tfds

    from plug_jax.data import multimodal
    from plug_jax.data import shop_world_tfds as sw
    name = "mplug_shop_vqa_en_v1"
    task = seqio.get_mixture_or_task(name)
    assert indexed.expands_per_record(task) and indexed.supports_indexed(task, "validation")
    counts = indexed.record_counts(task, "validation")  # prepares the layout if needed
    ref = tfds.builder(f"shop_world/images_64:{sw.VERSION}", data_dir=sw.records_dir(),
                       file_format="array_record").as_data_source(split="validation")
    np.testing.assert_array_equal(counts, [len(ref[i]["vqa_question_en"])
                                           for i in range(len(ref))])
    lengths = {"image": (64, 64, 3), "inputs": 24, "targets": 8}
    picks = [0, 1, 2, 700, int(counts.sum()) - 1]
    got = list(indexed.examples_at(task, "validation", tf.data.Dataset.from_tensor_slices(
        np.array(picks, np.int64)), lengths, seed=0, shuffle=False).as_numpy_iterator())
    vocab = task.output_features["inputs"].vocabulary
    starts = np.concatenate([[0], np.cumsum(counts)])
    for g, ex in zip(picks, got):
        r = int(np.searchsorted(starts, g, side="right") - 1)
        j = g - int(starts[r])
        rec = ref[r]
        q, a = rec["vqa_question_en"][j].decode(), rec["vqa_answer_en"][j].decode()
        assert ex["inputs"].tolist() == vocab.encode(q)[:23] + [1]
        assert ex["targets"].tolist() == vocab.encode(a)[:7] + [1]
        assert ex["question_type"] == multimodal.VQA_TYPES.index(rec["vqa_type"][j].decode())
        pixels = (rec["image"] / 255.0 - np.array(multimodal.CLIP_MEAN)) / np.array(
            multimodal.CLIP_STD)
        np.testing.assert_allclose(ex["image"], pixels, atol=1e-5)
    lengths = {**lengths, "question_type": 1}
    it, _ = _one_and_two_processes(name, lengths, dict(seed=0, converter="image_text"),
                                   batches=2)
    assert it.examples_per_batch == 4


def test_shop_world_videos_are_read_by_index():
    """CLIP's video captions (one example per video) read ``videos_8`` by index: frames and
    caption equal TFDS's own decoding of the ArrayRecord layout."""
    import seqio
    import tensorflow as tf
    import tensorflow_datasets as tfds

    from plug_jax.data import multimodal
    from plug_jax.data import shop_world_tfds as sw
    task = seqio.get_mixture_or_task("clip_shop_video_captions_en_v1")
    assert indexed.supports_indexed(task, "validation") and not indexed.expands_per_record(task)
    lengths = {"frames": (8, 64, 64, 3), "targets": 32}
    picks = [3, 99]
    got = list(indexed.examples_at(task, "validation", tf.data.Dataset.from_tensor_slices(
        np.array(picks, np.int64)), lengths, seed=0, shuffle=False).as_numpy_iterator())
    ref = tfds.builder(f"shop_world/videos_8:{sw.VERSION}", data_dir=sw.records_dir(),
                       file_format="array_record").as_data_source(split="validation")
    vocab = task.output_features["targets"].vocabulary
    for i, ex in zip(picks, got):
        want = (np.asarray(ref[i]["frames"]) / 255.0 - np.array(multimodal.CLIP_MEAN)) / np.array(
            multimodal.CLIP_STD)
        np.testing.assert_allclose(ex["frames"], want, atol=1e-5)
        assert ex["targets"].tolist() == vocab.encode(ref[i]["caption_en"].decode())[:31] + [1]


def test_a_filter_after_the_per_record_preprocessor_is_one_line(task, per_record_task):
    """After the marked preprocessor every example must stay one example (positions count
    them); a filter there is refused when the iterator is built, naming the fix."""
    import seqio
    name = "test_indexed_per_record_filtered_zh"
    if name not in seqio.TaskRegistry.names():
        base = seqio.get_mixture_or_task(per_record_task)
        seqio.TaskRegistry.add(
            name, source=base.source,
            preprocessors=[*base.preprocessors, lambda dataset: dataset.filter(
                lambda ex: ex["targets"][0] > 0)],
            output_features=base.output_features)
    with pytest.raises(ValueError, match="after its @indexed.per_record one changes the "
                                         "number of examples.*fix:"):
        _iter(name)
