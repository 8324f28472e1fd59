"""Shop World vocabulary, seqio tasks and the checkpointable batch iterator."""
import importlib
import json
import math

import numpy as np
import pytest

from plug_jax.data import shop_world as sw

LENGTHS = {"targets": 256}
TINY = "test_gpt3_shoplm_tiny_zh"
TINY_SIZES = {"train": 24, "validation": 7, "test": 8}


# ---------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    """One vocabulary cache per test session (per xdist worker), never ~/.cache."""
    path = tmp_path_factory.mktemp("plug_jax_cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("PLUG_JAX_CACHE", str(path))
    yield path
    mp.undo()


@pytest.fixture(scope="session")
def vocab_mod(cache_dir):
    from plug_jax.data import vocab
    return vocab


@pytest.fixture(scope="session")
def zh_vocab(vocab_mod):
    return vocab_mod.shop_world_sentencepiece(lang="zh")  # trains once, into cache_dir


@pytest.fixture(scope="session")
def en_vocab(vocab_mod):
    return vocab_mod.shop_world_sentencepiece(lang="en")


@pytest.fixture(scope="session")
def pipeline(zh_vocab):
    import plug_jax.tasks
    from plug_jax.data import pipeline
    plug_jax.tasks.gpt3.register_shoplm_task(TINY, "zh", split_sizes=TINY_SIZES)
    return pipeline


def _take(it, n):
    return [next(it) for _ in range(n)]


def _assert_batches_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def _segments(batch):
    return int(batch["decoder_segment_ids"].max(axis=1).sum())


# ---------------------------------------------------------------------------- vocabulary
@pytest.mark.parametrize("lang", sw.LANGS)
def test_vocabulary_round_trips_generated_text(lang, request):
    import tensorflow as tf
    vocab = request.getfixturevalue(f"{lang}_vocab")
    assert (vocab.pad_id, vocab.eos_id, vocab.unk_id) == (0, 1, 2)
    assert vocab.vocab_size == {"zh": 1024, "en": 512}[lang]
    texts = [sw.lm_document(0, split, i, lang) for split in sw.SPLITS for i in range(40)]
    texts += sw.description_prompts(lang=lang)
    for t in texts:
        ids = vocab.encode(t)
        assert vocab.unk_id not in ids
        assert vocab.decode(ids) == t
    ids = vocab.encode_tf(tf.constant(texts[0]))
    assert vocab.decode_tf(ids).numpy().decode("utf-8") == texts[0]
    assert list(ids.numpy()) == vocab.encode(texts[0])


def test_vocabulary_is_cached_and_fingerprinted(vocab_mod, zh_vocab, cache_dir, monkeypatch):
    fp = vocab_mod.vocab_fingerprint(zh_vocab)
    assert len(fp) == 16 and int(fp, 16) >= 0
    path = vocab_mod.model_path(1024, 0, "zh")
    assert path.exists() and str(path).startswith(str(cache_dir))
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]

    def no_training(*args, **kwargs):
        raise AssertionError("the cached model should have been loaded")

    monkeypatch.setattr(vocab_mod, "train_model", no_training)
    again = vocab_mod.shop_world_sentencepiece(vocab_size=1024, seed=0, lang="zh")
    assert vocab_mod.vocab_fingerprint(again) == fp and again == zh_vocab
    other_key = vocab_mod.model_path(1024, 1, "zh")
    assert other_key != path


def test_cache_writes_are_atomic_and_first_writer_wins(vocab_mod, tmp_path):
    path = tmp_path / "vocab" / "m.model"
    vocab_mod._write_once(path, b"first")
    vocab_mod._write_once(path, b"second")
    assert path.read_bytes() == b"first"
    assert [p.name for p in path.parent.iterdir()] == ["m.model"]


def test_unreachable_vocab_sizes_give_one_line_errors(vocab_mod, tmp_path):
    with pytest.raises(ValueError, match=r"vocab_size=100 is too small .* vocab_size >= \d+") as e:
        vocab_mod.shop_world_sentencepiece(100, lang="zh", cache_dir=tmp_path)
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match=r"vocab_size=5000 is too large .* vocab_size <= \d+") as e:
        vocab_mod.shop_world_sentencepiece(5000, lang="en", cache_dir=tmp_path)
    assert "\n" not in str(e.value)
    assert not list(tmp_path.rglob("*.model"))


# ---------------------------------------------------------------------------- tasks
def test_task_registration_is_idempotent(pipeline):
    import seqio

    import plug_jax.tasks
    from plug_jax.tasks import gpt3
    task = seqio.get_mixture_or_task("gpt3_shoplm_zh_v1")
    importlib.reload(gpt3)
    importlib.reload(plug_jax.tasks)
    assert gpt3.register_shoplm_task("gpt3_shoplm_zh_v1", "zh") is task
    assert seqio.get_mixture_or_task("gpt3_shoplm_zh_v1") is task
    assert "gpt3_shoplm_en_v1" in seqio.TaskRegistry.names()
    assert task.source.num_input_examples("train") == 50_000
    assert pipeline.task_vocabulary("gpt3_shoplm_zh_v1").vocab_size == 1024
    with pytest.raises(ValueError, match="already registered"):
        gpt3.register_shoplm_task("gpt3_shoplm_zh_v1", "zh", split_sizes={"train": 10})


# ---------------------------------------------------------------------------- batches
def test_packed_batches_are_well_formed(pipeline):
    it = pipeline.get_batch_iterator("gpt3_shoplm_zh_v1", {"targets": 512}, "train", 4)
    assert it.feature_shapes == {k: (4, 512) for k in
                                 ("decoder_target_tokens", "decoder_input_tokens",
                                  "decoder_loss_weights", "decoder_segment_ids",
                                  "decoder_positions")}
    packed_rows = 0
    for batch in _take(it, 3):
        assert set(batch) == set(it.feature_shapes)
        for v in batch.values():
            assert v.shape == (4, 512) and v.dtype == np.int32
        tgt, inp = batch["decoder_target_tokens"], batch["decoder_input_tokens"]
        seg, pos = batch["decoder_segment_ids"], batch["decoder_positions"]
        np.testing.assert_array_equal(batch["decoder_loss_weights"], (seg != 0).astype(np.int32))
        np.testing.assert_array_equal(tgt != 0, seg != 0)
        for r in range(4):
            s = seg[r]
            real = s[s != 0]
            assert real[0] == 1 and np.all(np.diff(real) >= 0) and np.all(np.diff(real) <= 1)
            assert np.all(s[len(real):] == 0)  # padding only at the end
            packed_rows += int(real[-1] > 1)
            for t in range(len(real)):
                new_segment = t == 0 or s[t] != s[t - 1]
                if new_segment:
                    assert pos[r, t] == 0 and inp[r, t] == 0
                else:
                    assert pos[r, t] == pos[r, t - 1] + 1 and inp[r, t] == tgt[r, t - 1]
                if t + 1 == len(real) or s[t + 1] != s[t]:
                    assert tgt[r, t] == 1  # every document ends with EOS
    assert packed_rows > 0


def test_resume_equals_fresh_iterator_across_epochs(pipeline):
    fresh_it = pipeline.get_batch_iterator(TINY, LENGTHS, "train", 4, seed=3)
    fresh = _take(fresh_it, 12)
    assert fresh_it.step == 12
    # 24 documents per epoch: the 12 batches span more than two epochs.
    assert sum(_segments(b) for b in fresh) > 2 * TINY_SIZES["train"]
    for n in (5, 9):
        resumed = pipeline.get_batch_iterator(TINY, LENGTHS, "train", 4, seed=3, start_step=n)
        _assert_batches_equal(_take(resumed, 12 - n), fresh[n:])
    state = json.loads(json.dumps(fresh_it.state()))
    assert state["step"] == 12 and state["task"] == TINY and state["seed"] == 3
    more = _take(pipeline.BatchIterator.from_state(
        {**state, "step": 7}), 2)
    _assert_batches_equal(more, fresh[7:9])
    other_seed = _take(pipeline.get_batch_iterator(TINY, LENGTHS, "train", 4, seed=4), 2)
    assert any(not np.array_equal(a["decoder_target_tokens"], b["decoder_target_tokens"])
               for a, b in zip(other_seed, fresh))


def _documents(batch):
    """The token sequences of the documents packed in a batch, sorted."""
    out = []
    for tokens, seg in zip(batch["decoder_target_tokens"], batch["decoder_segment_ids"]):
        out += [tuple(tokens[seg == k]) for k in range(1, int(seg.max()) + 1)]
    return sorted(out)


def test_processes_slice_the_global_batch(pipeline):
    # Without packing, process p's rows are rows p*B/P .. (p+1)*B/P - 1 of the global batch.
    whole = _take(pipeline.get_batch_iterator(TINY, LENGTHS, "train", 4, seed=1, pack=False), 3)
    parts = [_take(pipeline.get_batch_iterator(TINY, LENGTHS, "train", 4, seed=1, pack=False,
                                               process_index=p, process_count=2), 3)
             for p in range(2)]
    for n in range(3):
        for k, v in whole[n].items():
            assert parts[0][n][k].shape == (2, 256)
            np.testing.assert_array_equal(np.concatenate([parts[0][n][k], parts[1][n][k]]), v)
    # A state saved on one process resumes on two.
    it = pipeline.get_batch_iterator(TINY, LENGTHS, "train", 4, seed=1, pack=False)
    _take(it, 1)
    resumed = pipeline.BatchIterator.from_state(it.state(), process_index=1, process_count=2)
    np.testing.assert_array_equal(next(resumed)["decoder_target_tokens"],
                                  whole[1]["decoder_target_tokens"][2:])
    # With packing, each process packs the documents of its share of the batch's global
    # positions into its own rows: the rows differ, the documents do not (6 documents per
    # batch of 4 rows of 256 tokens all fit).
    kw = dict(seed=1, examples_per_batch=6)
    whole = _take(pipeline.get_batch_iterator(TINY, LENGTHS, "train", 4, **kw), 3)
    parts = [_take(pipeline.get_batch_iterator(TINY, LENGTHS, "train", 4, process_index=p,
                                               process_count=2, **kw), 3) for p in range(2)]
    for n in range(3):
        assert len(_documents(whole[n])) == 6
        assert [len(_documents(parts[p][n])) for p in range(2)] == [3, 3]
        assert _documents(whole[n]) == sorted(_documents(parts[0][n]) + _documents(parts[1][n]))


def test_finite_epoch_yields_every_document_once_and_pads(pipeline, zh_vocab):
    packed = list(pipeline.get_batch_iterator(TINY, LENGTHS, "validation", 4, shuffle=False,
                                              repeat=False))
    assert sum(_segments(b) for b in packed) == TINY_SIZES["validation"]
    # Unpacked: one document per row, 7 rows = a full batch and a batch with 1 padded row.
    rows = list(pipeline.get_batch_iterator(TINY, LENGTHS, "validation", 4, shuffle=False,
                                            repeat=False, pack=False))
    assert len(rows) == 2
    assert set(rows[0]) == {"decoder_target_tokens", "decoder_input_tokens",
                            "decoder_loss_weights"}
    assert all(v.shape == (4, 256) for b in rows for v in b.values())
    weights = np.concatenate([b["decoder_loss_weights"] for b in rows])
    assert weights[:7].any(axis=1).all() and not weights[7].any()
    targets = np.concatenate([b["decoder_target_tokens"] for b in rows])
    for i in range(7):  # unshuffled: documents 0..6 of the split, in order, EOS-terminated
        assert zh_vocab.decode(targets[i]) == sw.lm_document(0, "validation", i, "zh")
        assert targets[i][weights[i] > 0][-1] == zh_vocab.eos_id


def test_unigram_baseline_equals_a_numpy_count_on_the_same_batches(pipeline, zh_vocab,
                                                                   report_result):
    """``unigram_baseline`` against a count done here: add-one-smoothed frequencies of the
    loss-weighted target tokens of the first ``n`` shuffled train batches (seed ``seed``),
    scored on the first ``m`` unshuffled validation batches, with the same loss weights."""
    task, vocab_size, batch, n, m, seed = "gpt3_shoplm_zh_v1", zh_vocab.vocab_size, 8, 4, 4, 3
    result = pipeline.unigram_baseline(task, LENGTHS, vocab_size, num_batches=n,
                                       global_batch_size=batch, seed=seed, num_eval_batches=m)

    train = _take(pipeline.get_batch_iterator(task, LENGTHS, "train", batch, shuffle=True,
                                              seed=seed, repeat=True), n)
    evaluation = _take(pipeline.get_batch_iterator(task, LENGTHS, "validation", batch,
                                                   shuffle=False, repeat=False), m)
    counts = np.zeros(vocab_size, np.float64)
    for b in train:
        w = b["decoder_loss_weights"]
        assert (w == 0).any() and set(np.unique(w)) == {0, 1}  # padding: weights matter
        np.add.at(counts, b["decoder_target_tokens"][w > 0], 1.0)
    prob = (counts + 1.0) / (counts.sum() + vocab_size)
    most_frequent = int(np.argmax(counts))
    tokens = np.concatenate([b["decoder_target_tokens"][b["decoder_loss_weights"] > 0]
                             for b in evaluation])
    expected_loss = float(-np.log(prob[tokens]).mean())
    expected_accuracy = float((tokens == most_frequent).mean())
    uniform = math.log(vocab_size)

    report_result("unigram baseline held-out loss (pipeline)", result["loss"],
                  control=f"numpy count on the same batches {expected_loss:.6f}; uniform "
                          f"{uniform:.4f}",
                  accuracy=f"{result['accuracy']:.4f}", numpy_accuracy=f"{expected_accuracy:.4f}")
    assert result["loss"] == pytest.approx(expected_loss, rel=0, abs=1e-5), (
        f"unigram_baseline loss {result['loss']!r} != numpy count {expected_loss!r}")
    assert result["accuracy"] == pytest.approx(expected_accuracy, rel=0, abs=1e-5), (
        f"unigram_baseline accuracy {result['accuracy']!r} != numpy count "
        f"{expected_accuracy!r}")
    assert result["train_tokens"] == counts.sum() and result["eval_tokens"] == tokens.size, (
        result, counts.sum(), tokens.size)
    # and the count itself is what a frequency model should give on Shop World
    assert 0 < expected_loss < uniform - 1.0 and 0 < expected_accuracy < 0.2


def test_bad_arguments_give_one_line_errors(pipeline):
    with pytest.raises(ValueError, match="not divisible by process_count=2") as e:
        pipeline.get_batch_iterator(TINY, LENGTHS, "train", 5, process_count=2)
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="unknown seqio task or mixture") as e:
        pipeline.get_batch_iterator("gpt3_shoplm_zh_v9", LENGTHS, "train", 4)
    assert "\n" not in str(e.value) and "gpt3_shoplm_zh_v1" in str(e.value)
    with pytest.raises(ValueError, match="no split"):
        pipeline.get_batch_iterator(TINY, LENGTHS, "dev", 4)


def test_process_exits_with_a_live_iterator(pipeline, cache_dir):
    # A tf.data iterator still prefetching at interpreter teardown can deadlock; the
    # pipeline closes live iterators at exit.
    import os
    import subprocess
    import sys
    # (Without the fix this hangs in about half the runs: it is a timing race.)
    code = ("from plug_jax.data import pipeline as P\n"
            "its = [P.get_batch_iterator('gpt3_shoplm_zh_v1', {'targets': 256}, 'train', 16,"
            " seed=s) for s in range(3)]\n"
            "for it in its: next(it)\n"
            "print('ok')\n")
    env = {**os.environ, "PLUG_JAX_CACHE": str(cache_dir)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=180)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


@pytest.mark.parametrize("pack", [True, False])
def test_batched_lm_conversion_equals_seqio_decoder_converter(pipeline, pack):
    """The per-batch LM conversion gives exactly seqio's DecoderFeatureConverter batches."""
    import seqio
    lengths = {"targets": 400}  # several documents pack into one row

    def reference():
        ds = seqio.get_mixture_or_task(TINY).get_dataset(
            sequence_length=lengths, split="train", use_cached=False, shuffle=False,
            num_epochs=1, try_in_mem_cache=False)
        ds = seqio.DecoderFeatureConverter(pack=pack)(ds, lengths)
        return list(ds.batch(2).as_numpy_iterator())

    fast = list(pipeline.global_dataset(TINY, lengths, "train", 2, shuffle=False,
                                        repeat=False, pack=pack).as_numpy_iterator())
    ref = reference()
    assert len(ref) >= 2
    if pack:
        assert max(int(b["decoder_segment_ids"].max()) for b in ref) >= 2  # really packed
    _assert_batches_equal(fast, ref)
