"""plug_jax.data.preprocessors: objective statistics, invariants, determinism, packing."""
import functools

import numpy as np
import pytest

from plug_jax.data import configure_tensorflow

tf = configure_tensorflow()

import seqio  # noqa: E402

from plug_jax.data import preprocessors as pp  # noqa: E402

VOCAB = 1000
MASK, SEP = 3, 4
FIRST_TEXT_ID = 5  # text tokens are drawn from [FIRST_TEXT_ID, VOCAB - 50)
SPECIAL = (0, 1, 2)


# ----------------------------------------------------------------------------- helpers
def _docs(num, seed=0, min_len=40, max_len=160, eos=True, high=VOCAB - 50):
    rng = np.random.default_rng(seed)
    docs = []
    for _ in range(num):
        doc = rng.integers(FIRST_TEXT_ID, high, rng.integers(min_len, max_len + 1))
        docs.append(np.concatenate([doc, [1]] if eos else [doc]).astype(np.int32))
    return docs


def _dataset(docs, key="targets", **extra):
    """``{key: int32[None], extra...: int32[None]}`` examples from lists of arrays."""
    def gen():
        # Copies: tf.data may wrap a yielded numpy array without copying, and a TF kernel
        # that forwards its input buffer would then overwrite the test's reference docs.
        for i, doc in enumerate(docs):
            yield {key: np.array(doc, copy=True),
                   **{k: np.array(v[i], copy=True) for k, v in extra.items()}}

    spec = {k: tf.TensorSpec([None], tf.int32) for k in (key, *extra)}
    return tf.data.Dataset.from_generator(gen, output_signature=spec)


def _run(preprocessor, dataset, seed=0):
    with seqio.map_seed_manager(seed):
        out = preprocessor(dataset)
    return list(out.as_numpy_iterator())


def _sentence_docs(num, seed=0):
    """Documents of 1-6 sentences; every token of sentence j of document d is 10 + 8d + j."""
    rng = np.random.default_rng(seed)
    docs = []
    for d in range(num):
        parts = []
        for j in range(rng.integers(1, 7)):
            parts += [10 + 8 * d + j] * int(rng.integers(1, 5)) + [SEP]
        if rng.random() < 0.5:
            parts = parts[:-1]  # no separator after the last sentence
        docs.append(np.array(parts + [1], np.int32))
    return docs


def _decode(token):
    return divmod(int(token) - 10, 8)  # (document, sentence)


def _split_on(tokens, sep):
    out, cur = [], []
    for t in tokens:
        if t == sep:
            if cur:
                out.append(cur)
            cur = []
        else:
            cur.append(int(t))
    if cur:
        out.append(cur)
    return out


MLM = functools.partial(pp.mlm, vocab_size=VOCAB, mask_id=MASK, special_ids=SPECIAL)


# --------------------------------------------------------------------------------- MLM
def test_mlm_statistics():
    docs = _docs(400)
    out = _run(MLM, _dataset(docs))
    assert len(out) == len(docs)
    tgt = np.concatenate([o["targets"] for o in out])
    inp = np.concatenate([o["inputs"] for o in out])
    w = np.concatenate([o["mlm_weights"] for o in out])
    np.testing.assert_array_equal(tgt, np.concatenate(docs))
    eligible = ~np.isin(tgt, SPECIAL + (MASK,))
    sel = w == 1.0
    assert eligible.sum() > 10_000
    assert set(np.unique(w)) <= {0.0, 1.0}
    assert not np.any(sel & ~eligible)  # eos never selected
    np.testing.assert_array_equal(inp[~sel], tgt[~sel])
    assert abs(sel.sum() / eligible.sum() - 0.15) < 0.01
    masked = inp[sel] == MASK
    replaced = (inp[sel] != MASK) & (inp[sel] != tgt[sel])
    kept = inp[sel] == tgt[sel]
    n = sel.sum()
    assert abs(masked.sum() / n - 0.8) < 0.02
    assert abs(replaced.sum() / n - 0.1) < 0.02
    assert abs(kept.sum() / n - 0.1) < 0.02
    random_ids = inp[sel][replaced]
    assert random_ids.min() >= 3 and random_ids.max() < VOCAB
    # The random ids span the whole range, not just the text ids.
    assert random_ids.max() >= VOCAB - 50


# --------------------------------------------------------------------- word structural
def _check_trigrams(out, rate):
    touched = eligible = 0
    for o in out:
        inp, tgt, w = o["inputs"], o["targets"], o["structural_weights"]
        assert len(inp) == len(tgt) == len(w)
        ntri = len(tgt) // 3
        ok = ~np.isin(o.get("_orig_inputs", tgt), SPECIAL)
        if "mlm_weights" in o:
            ok &= o["mlm_weights"] == 0
        tri_ok = ok[:3 * ntri].reshape(ntri, 3).all(1)
        tri_w = w[:3 * ntri].reshape(ntri, 3)
        assert np.all(w[3 * ntri:] == 0)
        assert np.all((tri_w == 0).all(1) | (tri_w == 1).all(1))  # whole, aligned trigrams
        shuffled = tri_w[:, 0] == 1
        assert not np.any(shuffled & ~tri_ok)
        before = o.get("_orig_inputs", tgt)[:3 * ntri].reshape(ntri, 3)
        after = inp[:3 * ntri].reshape(ntri, 3)
        np.testing.assert_array_equal(np.sort(after[shuffled], 1), np.sort(before[shuffled], 1))
        distinct = np.array([len(set(t)) == 3 for t in before])
        assert np.all((after[shuffled & distinct] != before[shuffled & distinct]).any(1))
        np.testing.assert_array_equal(after[~shuffled], before[~shuffled])
        np.testing.assert_array_equal(inp[3 * ntri:], o.get("_orig_inputs", tgt)[3 * ntri:])
        touched += shuffled.sum()
        eligible += tri_ok.sum()
    assert eligible > 3000
    assert abs(touched / eligible - rate) < 0.01


def test_word_structural_statistics_and_permutations():
    docs = _docs(400)
    out = _run(pp.word_structural, _dataset(docs))
    for o, d in zip(out, docs):
        np.testing.assert_array_equal(o["targets"], d)
    assert sum(len(d) for d in docs) > 10_000
    _check_trigrams(out, 0.05)


def test_word_structural_after_mlm_skips_masked_positions():
    docs = _docs(300, seed=1)

    def both(ds):
        ds = MLM(ds)
        ds = ds.map(lambda ex: {**ex, "_orig_inputs": ex["inputs"]})
        return pp.word_structural(ds, shuffle_rate=0.2, mask_id=MASK)

    out = _run(both, _dataset(docs))
    for o, d in zip(out, docs):
        np.testing.assert_array_equal(o["targets"], d)
        assert not np.any((o["structural_weights"] == 1) & (o["mlm_weights"] == 1))
    _check_trigrams(out, 0.2)


# ---------------------------------------------------------------------- sentence order
def test_sentence_order_balance_and_semantics():
    docs = _sentence_docs(3800)
    out = _run(functools.partial(pp.sentence_order, sep_id=SEP), _dataset(docs))
    kept = [d for d in docs if len(_split_on(d[:-1], SEP)) >= 2]
    assert len(out) == len(kept) >= 3000
    labels = np.array([o["label"] for o in out])
    for c in range(3):
        assert abs(np.mean(labels == c) - 1 / 3) < 0.03, np.bincount(labels)
    prev_doc = None
    for o, doc in zip(out, kept):
        assert set(o) == {"inputs", "token_type_ids", "label"}
        inp, tt = o["inputs"], o["token_type_ids"]
        n1 = int((tt == 0).sum())
        assert np.all(tt[:n1] == 0) and np.all(tt[n1:] == 1) and n1 < len(tt)
        assert inp[n1 - 1] == SEP and SEP not in inp[:n1 - 1] and SEP not in inp[n1:]
        (d1, j1), (d2, j2) = _decode(inp[0]), _decode(inp[n1])
        assert len(set(inp[:n1 - 1])) == 1 and len(set(inp[n1:])) == 1  # whole sentences
        doc_id = _decode(doc[0])[0]
        assert d1 == doc_id
        if o["label"] == 0:
            assert d2 == d1 and j2 == j1 + 1
        elif o["label"] == 1:
            assert d2 == d1 and j2 == j1 - 1
        else:
            assert d2 == prev_doc != d1
        # The sentences are copied in full.
        assert list(inp[:n1 - 1]) in _split_on(doc[:-1], SEP)
        prev_doc = doc_id


def test_sentence_order_segments():
    """max_segment_sentences=2: segment A = the (up to) 2 sentences before a boundary, B =
    the (up to) 2 from it, R = as many consecutive sentences of the previous document."""
    docs = _sentence_docs(1500, seed=1)
    out = _run(functools.partial(pp.sentence_order, sep_id=SEP, max_segment_sentences=2),
               _dataset(docs))
    kept = [d for d in docs if len(_split_on(d[:-1], SEP)) >= 2]
    assert len(out) == len(kept)
    labels = np.array([o["label"] for o in out])
    assert set(labels) == {0, 1, 2}
    widths = set()
    prev = None
    for o, doc in zip(out, kept):
        inp, tt = o["inputs"], o["token_type_ids"]
        n1 = int((tt == 0).sum())
        assert inp[n1 - 1] == SEP and np.all(tt[n1:] == 1)
        segs = [[_decode(s[0]) for s in _split_on(part, SEP)] for part in (inp[:n1 - 1], inp[n1:])]
        for seg in segs:  # whole sentences, consecutive, of one document, at most 2
            assert 1 <= len(seg) <= 2 and len({d for d, _ in seg}) == 1
            assert [j for _, j in seg] == list(range(seg[0][1], seg[0][1] + len(seg)))
        doc_id, n = _decode(doc[0])[0], len(_split_on(doc[:-1], SEP))
        a, b = (segs[1], segs[0]) if o["label"] == 1 else segs
        assert a[0][0] == doc_id
        boundary = a[-1][1] + 1
        # A is as long as the document allows before the boundary (up to 2 sentences)
        assert len(a) == min(2, boundary)
        if o["label"] == 2:
            assert b[0][0] == prev[0] and len(b) == min(2, n - boundary, prev[1])
        else:
            assert b[0] == (doc_id, boundary) and len(b) == min(2, n - boundary)
        widths.add((len(a), len(b)))
        prev = (doc_id, n)
    assert widths == {(1, 1), (1, 2), (2, 1), (2, 2)}


def test_sentence_order_rejects_bad_segment_sizes():
    with pytest.raises(ValueError, match="max_segment_sentences=0 must be an int >= 1"):
        pp.sentence_order(_dataset(_sentence_docs(4)), sep_id=SEP, max_segment_sentences=0)


# -------------------------------------------------------------------------------- T5
def _merge_span_corruption(inputs, targets, start):
    """Put the target spans back in place of the input sentinels."""
    assert targets[-1] == 1
    spans, cur, expected = {}, None, start
    for t in targets[:-1]:
        if t > start - 40:  # sentinel (text ids are < VOCAB - 50)
            assert t == expected
            expected -= 1
            cur = spans.setdefault(int(t), [])
        else:
            cur.append(int(t))
    merged, used = [], []
    for t in inputs:
        if t in spans:
            assert spans[t], "empty noise span"
            merged += spans[t]
            used.append(int(t))
        else:
            merged.append(int(t))
    assert used == sorted(spans, reverse=True)
    return merged


@pytest.mark.parametrize("eos", [True, False])
def test_span_corruption_round_trip(eos):
    docs = _docs(200, seed=2, eos=eos)
    out = _run(functools.partial(pp.span_corruption, vocab_size=VOCAB), _dataset(docs))
    noise = total = 0
    for o, d in zip(out, docs):
        assert o["targets"][-1] == 1 and (o["inputs"][-1] == 1) == eos
        assert o["targets"][0] == VOCAB - 1
        assert _merge_span_corruption(o["inputs"], o["targets"], VOCAB - 1) == list(d)
        n_sent = int(np.sum(o["targets"] > VOCAB - 1 - 40))
        noise += len(o["targets"]) - 1 - n_sent
        total += len(d) - eos
    assert abs(noise / total - 0.15) < 0.01


# ------------------------------------------------------------------------------ BART
def test_text_infilling_invariants():
    docs = _docs(200, seed=3)
    out = _run(functools.partial(pp.text_infilling, mask_id=MASK), _dataset(docs))
    masked = total = spans = 0
    for o, d in zip(out, docs):
        np.testing.assert_array_equal(o["targets"], d)
        inp = o["inputs"]
        assert inp[-1] == 1 and inp[0] != MASK
        is_mask = inp == MASK
        assert not np.any(is_mask[1:] & is_mask[:-1])  # one mask per span
        # The unmasked pieces appear in order in the original, separated by >= 1 token.
        pos, body = 0, list(d[:-1])
        pieces = _split_on(inp[:-1], MASK)
        for piece in pieces:
            while body[pos:pos + len(piece)] != piece:
                pos += 1
                assert pos <= len(body), "clean piece not found in order"
            pos += len(piece)
        kept = sum(len(p) for p in pieces)
        masked += len(body) - kept
        total += len(body)
        spans += is_mask.sum()
    assert abs(masked / total - 0.3) < 0.01
    assert 2.5 < masked / spans < 3.5


def test_sentence_shuffle_is_a_permutation():
    docs = _sentence_docs(300, seed=4)
    out = _run(functools.partial(pp.sentence_shuffle, sep_id=SEP), _dataset(docs))
    moved = 0
    for o, d in zip(out, docs):
        np.testing.assert_array_equal(o["targets"], d)
        assert o["inputs"][-1] == 1
        orig, new = _split_on(d[:-1], SEP), _split_on(o["inputs"][:-1], SEP)
        assert sorted(orig) == sorted(new)
        assert len(o["inputs"]) == sum(map(len, orig)) + len(orig) - 1 + 1  # single seps
        moved += orig != new
    assert moved > 100


# ------------------------------------------------------------------------ PALM/prefix
def test_palm_split_and_prefix_lm():
    docs = _docs(300, seed=5, min_len=2, max_len=60)
    palm = _run(functools.partial(pp.palm_split, min_frac=0.25, max_frac=0.5), _dataset(docs))
    prefix = _run(pp.prefix_lm, _dataset(docs))
    ks = set()
    for p, q, d in zip(palm, prefix, docs):
        n = len(d)
        for o in (p, q):
            np.testing.assert_array_equal(np.concatenate([o["inputs"], o["targets"]]), d)
            assert len(o["inputs"]) >= 1 and len(o["targets"]) >= 1
        k = len(p["inputs"])
        assert max(1, np.ceil(0.25 * n)) <= k <= max(1, min(np.floor(0.5 * n), n - 1))
        ks.add(len(q["inputs"]) / n)
    assert min(ks) < 0.1 and max(ks) > 0.9  # prefix_lm splits anywhere


# ------------------------------------------------------------------------------ PLUG
def test_random_lengths_bounds():
    docs = _docs(300, seed=6, min_len=10, max_len=80)
    other = _docs(300, seed=7, min_len=10, max_len=80)
    fn = functools.partial(pp.random_lengths, min_length=20, max_length=50)
    out = _run(fn, _dataset(docs, key="targets", inputs=other))
    lengths = {"inputs": [], "targets": []}
    for o, d, e in zip(out, docs, other):
        for key, orig in (("targets", d), ("inputs", e)):
            n = len(o[key])
            np.testing.assert_array_equal(o[key], orig[:n])
            if len(orig) <= 20:
                assert n == len(orig)
            else:
                assert 20 <= n <= min(50, len(orig))
            if len(orig) > 50:
                lengths[key].append(n)
    # Uniform over the range and independent per feature.
    assert min(lengths["targets"]) == 20 and max(lengths["targets"]) == 50
    assert lengths["inputs"][:40] != lengths["targets"][:40]
    # keep_end keeps the last tokens of the context (the continuation follows them).
    fn = functools.partial(pp.random_lengths, min_length=20, max_length=50, keep_end=("inputs",))
    out = _run(fn, _dataset(docs, key="targets", inputs=other))
    assert any(len(o["inputs"]) < len(e) for o, e in zip(out, other))
    for o, e in zip(out, other):
        n = len(o["inputs"])
        np.testing.assert_array_equal(o["inputs"], e[len(e) - n:])


# ----------------------------------------------------------------- determinism / seqio
DETERMINISTIC = {
    "mlm": MLM,
    "word_structural": pp.word_structural,
    "sentence_order": functools.partial(pp.sentence_order, sep_id=SEP),
    "palm_split": pp.palm_split,
    "prefix_lm": pp.prefix_lm,
    "text_infilling": functools.partial(pp.text_infilling, mask_id=MASK),
    "sentence_shuffle": functools.partial(pp.sentence_shuffle, sep_id=SEP),
    "span_corruption": functools.partial(pp.span_corruption, vocab_size=VOCAB),
    "random_lengths": functools.partial(pp.random_lengths, min_length=5, max_length=30),
}


def _as_lists(examples):
    return [{k: np.asarray(v).tolist() for k, v in ex.items()} for ex in examples]


@pytest.mark.parametrize("name", sorted(DETERMINISTIC))
def test_same_seed_same_output(name):
    docs = _sentence_docs(40, seed=8) if "sentence" in name else _docs(40, seed=8)
    fn = DETERMINISTIC[name]
    a = _as_lists(_run(fn, _dataset(docs), seed=11))
    b = _as_lists(_run(fn, _dataset(docs), seed=11))
    c = _as_lists(_run(fn, _dataset(docs), seed=12))
    assert a == b
    assert a != c


def test_in_a_seqio_task():
    docs = _docs(30, seed=9)
    vocab = seqio.PassThroughVocabulary(VOCAB)
    name = "test_plug_jax_preprocessors_prefix_lm"
    seqio.TaskRegistry.remove(name)
    seqio.TaskRegistry.add(
        name,
        source=seqio.FunctionDataSource(
            lambda split, shuffle_files, seed=None: _dataset(docs), splits=["train"]),
        preprocessors=[pp.prefix_lm,
                       functools.partial(pp.random_lengths, min_length=5, max_length=20)],
        output_features={"inputs": seqio.Feature(vocab, add_eos=False),
                         "targets": seqio.Feature(vocab, add_eos=False)})
    try:
        task = seqio.get_mixture_or_task(name)
        get = functools.partial(task.get_dataset, sequence_length=None, split="train",
                                shuffle=False)
        a, b, c = (_as_lists(get(seed=s).as_numpy_iterator()) for s in (1, 1, 2))
        assert a == b and a != c and len(a) == len(docs)
        for ex, d in zip(a, docs):
            assert ex["inputs"] == list(d[:len(ex["inputs"])])
    finally:
        seqio.TaskRegistry.remove(name)


# ---------------------------------------------------------------------------- packing
def test_trim_and_pack_segment_ids_and_positions():
    rng = np.random.default_rng(10)
    inputs = [rng.integers(3, 50, rng.integers(1, 12)).astype(np.int32) for _ in range(60)]
    targets = [rng.integers(3, 50, rng.integers(1, 8)).astype(np.int32) for _ in range(60)]
    lengths = {"inputs": 24, "targets": 16}
    ds = _dataset(inputs, key="inputs", targets=targets)
    packed = list(seqio.utils.trim_and_pack_dataset(ds, lengths).as_numpy_iterator())
    queue = list(zip(inputs, targets))
    total_segments = 0
    for ex in packed:
        for key, length in lengths.items():
            assert ex[key].shape == (length,)
            assert ex[f"{key}_segment_ids"].shape == ex[f"{key}_positions"].shape == (length,)
        seg = ex["inputs_segment_ids"]
        nseg = seg.max()
        assert nseg >= 1
        for key in lengths:
            seg, pos, tok = (ex[key + "_segment_ids"], ex[key + "_positions"], ex[key])
            used = seg > 0
            n_used = used.sum()
            assert np.all(used[:n_used]) and not np.any(used[n_used:])  # padding at the end
            assert np.all(tok[n_used:] == 0) and np.all(pos[n_used:] == 0)
            assert seg[0] == 1 and np.all(np.diff(seg[:n_used]) >= 0)
            assert np.all(np.diff(seg[:n_used]) <= 1) and seg[:n_used].max() == nseg
            for s in range(1, nseg + 1):
                np.testing.assert_array_equal(pos[seg == s], np.arange((seg == s).sum()))
        for s in range(1, nseg + 1):  # segments are the original examples, in order
            inp, tgt = queue.pop(0)
            np.testing.assert_array_equal(ex["inputs"][ex["inputs_segment_ids"] == s], inp)
            np.testing.assert_array_equal(ex["targets"][ex["targets_segment_ids"] == s], tgt)
        total_segments += nseg
    assert total_segments == len(inputs) and not queue
    assert len(packed) < len(inputs) / 2  # it really packed


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize("fn, kwargs, match", [
    (pp.mlm, dict(vocab_size=VOCAB, mask_id=MASK, noise_density=1.5), "noise_density"),
    (pp.mlm, dict(vocab_size=VOCAB, mask_id=VOCAB), "mask_id"),
    (pp.mlm, dict(vocab_size=VOCAB, mask_id=MASK, mask_rate=0.9, random_rate=0.2),
     "mask_rate"),
    (pp.word_structural, dict(shuffle_rate=0.0), "shuffle_rate"),
    (pp.palm_split, dict(min_frac=0.8, max_frac=0.2), "min_frac"),
    (pp.span_corruption, dict(vocab_size=VOCAB, mean_noise_span_length=0.5), "mean_noise"),
    (pp.text_infilling, dict(mask_id=MASK, noise_density=0.0), "noise_density"),
    (pp.random_lengths, dict(min_length=10, max_length=5), "min_length"),
    (pp.random_lengths, dict(features="targets"), "features"),
    (pp.sentence_order, dict(sep_id=SEP, feature="text"), "text"),
    (pp.mlm, dict(vocab_size=VOCAB, mask_id=MASK, feature="text"), "text"),
])
def test_bad_arguments_raise(fn, kwargs, match):
    with pytest.raises(ValueError, match=match):
        _run(functools.partial(fn, **kwargs), _dataset(_docs(2)))
