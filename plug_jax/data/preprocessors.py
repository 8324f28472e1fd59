"""seqio preprocessors for the PLUG pre-training objectives (StructBERT, PALM, BART, T5).

Every preprocessor works on already-tokenized int32 features (put them after
``seqio.preprocessors.tokenize`` in a Task's list) and binds its options with
``functools.partial``. Randomness comes only from ``tf.random.stateless_*`` ops fed by the
seeds of ``seqio.map_over_dataset(num_seeds=...)``, so a Task's output is a function of
seqio's seed (``seqio.map_seed_manager`` / ``get_dataset(seed=...)``).

Ids follow ``plug_jax.data.vocab``: pad 0, eos 1, unk 2. Features not named below are passed
through unchanged.

Objectives and the features they produce:

* ``mlm``: BERT masked LM -> ``inputs`` (corrupted), ``targets`` (original), ``mlm_weights``.
* ``word_structural``: StructBERT trigram shuffling -> ``inputs``, ``targets``,
  ``structural_weights`` (composes with ``mlm``: masked positions are never shuffled).
* ``sentence_order``: StructBERT 3-way sentence order -> ``inputs`` (S1 [sep] S2),
  ``token_type_ids`` (0 for S1 and the separator, 1 for S2), ``label`` (0 in order,
  1 swapped, 2 S2 from another document).
* ``palm_split`` / ``prefix_lm``: ``targets`` split at a random point into ``inputs``
  (context / prefix) and ``targets`` (continuation / suffix).
* ``text_infilling`` / ``sentence_shuffle``: BART noising -> ``inputs`` (noised),
  ``targets`` (original).
* ``span_corruption``: T5 spans -> ``inputs`` with sentinels, ``targets`` = sentinel + span
  tokens ..., eos.
* ``random_lengths``: PLUG's variable-length training, truncates features at random lengths.

Documents with sentences (``sentence_order``, ``sentence_shuffle``) are a single int32
feature in which sentences are separated by a ``sep_id`` token (e.g. the id of ``"\\n"`` or
of a full stop); empty sentences (repeated separators) are ignored and a trailing eos is
not part of any sentence.
"""
from __future__ import annotations

from typing import Optional, Sequence

from plug_jax.data import configure_tensorflow

tf = configure_tensorflow()

import seqio  # noqa: E402

PAD_ID, EOS_ID, UNK_ID = 0, 1, 2
DEFAULT_SPECIAL_IDS = (PAD_ID, EOS_ID, UNK_ID)
# The six permutations of a trigram; index 0 is the identity.
_TRIGRAM_PERMUTATIONS = ((0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0))


# ------------------------------------------------------------------------------ checks
def _check_rate(name: str, value: float, *, allow_one: bool = False):
    ok = 0.0 < value <= 1.0 if allow_one else 0.0 < value < 1.0
    if not ok:
        upper = "1]" if allow_one else "1)"
        raise ValueError(f"{name}={value!r} is outside (0, {upper}; pass a fraction such as 0.15")


def _check_vocab_id(name: str, value: int, vocab_size: Optional[int] = None):
    if value < 0 or (vocab_size is not None and value >= vocab_size):
        bound = f" below vocab_size={vocab_size}" if vocab_size is not None else ""
        raise ValueError(f"{name}={value!r} is not a valid token id; pass an id >= 0{bound}")


def _require(ex, key: str, fn: str):
    if key not in ex:
        raise ValueError(f"{fn} needs a {key!r} feature but the example has {sorted(ex)}; "
                         f"tokenize first or pass the feature name to use")
    return tf.convert_to_tensor(ex[key])


# ----------------------------------------------------------------------------- helpers
def _split_seed(seed, num: int):
    return tf.unstack(tf.random.experimental.stateless_split(seed, num=num))


def _stochastic_round(x, seed):
    """``floor(x + u)`` with ``u ~ U[0, 1)``: an integer whose expectation is exactly ``x``."""
    u = tf.random.stateless_uniform([], seed)
    return tf.cast(tf.floor(x + u), tf.int32)


def _choose(eligible, num, seed):
    """Boolean mask selecting ``num`` positions uniformly at random among ``eligible`` ones."""
    scores = tf.random.stateless_uniform(tf.shape(eligible), seed)
    scores = tf.where(eligible, scores, 2.0)  # ineligible positions rank last
    ranks = tf.argsort(tf.argsort(scores))
    return tf.logical_and(ranks < num, eligible)


def _is_special(tokens, special_ids: Sequence[int]):
    special = tf.constant(list(special_ids) or [-1], tf.int32)
    return tf.reduce_any(tokens[:, None] == special[None, :], axis=1)


def _strip_eos(tokens):
    """(tokens without a trailing eos, whether there was one)."""
    has_eos = tf.reduce_any(tf.equal(tokens[-1:], EOS_ID))
    body = tokens[:tf.size(tokens) - tf.cast(has_eos, tf.int32)]
    return body, has_eos


def _maybe_append_eos(tokens, flag):
    return tf.cond(flag, lambda: tf.concat([tokens, [EOS_ID]], 0), lambda: tokens)


def _sentences(tokens, sep_id: int):
    """Ragged ``[num_sentences, None]`` sentences of ``tokens`` split at ``sep_id``."""
    body, _ = _strip_eos(tokens)
    is_sep = tf.equal(body, sep_id)
    row = tf.cumsum(tf.cast(is_sep, tf.int32))
    keep = tf.logical_not(is_sep)
    values = tf.boolean_mask(body, keep)
    rows = tf.boolean_mask(row, keep)
    # Re-number rows so that empty sentences disappear.
    _, rows = tf.unique(rows)
    nrows = tf.cond(tf.size(rows) > 0, lambda: tf.reduce_max(rows) + 1, lambda: 0)
    return tf.RaggedTensor.from_value_rowids(values, rows, nrows=nrows)


def _random_split_point(n, low, high, seed):
    """Integer uniform in ``[low, high]`` (clipped into ``[1, n - 1]``; 0 when ``n < 2``)."""
    lo = tf.clip_by_value(low, 1, tf.maximum(n - 1, 1))
    hi = tf.clip_by_value(high, lo, tf.maximum(n - 1, 1))
    k = tf.random.stateless_uniform([], seed, minval=lo, maxval=hi + 1, dtype=tf.int32)
    return tf.where(n < 2, tf.minimum(n, 0), k)


def _random_partition(total, parts, seed):
    """``parts`` positive integers summing to ``total`` (``1 <= parts <= total``), uniform."""
    # Choose parts - 1 distinct cut points among 1 .. total - 1.
    cuts = tf.random.experimental.stateless_shuffle(tf.range(1, total), seed)[:parts - 1]
    bounds = tf.concat([[0], tf.sort(cuts), [total]], 0)
    return bounds[1:] - bounds[:-1]


def _span_mask(length, noise_density: float, mean_span: float, seed):
    """Boolean noise mask over ``length`` tokens and the span index of every token.

    ``round(noise_density * length)`` tokens (at least one, never all) in
    ``round(num_noise / mean_span)`` spans; span lengths are a uniformly random composition,
    so they are roughly geometric with mean ``mean_span``. The sequence starts with non-noise.
    Returns ``(mask, span)``: ``span`` numbers the alternating non-noise/noise runs 0, 1, ...
    """
    s_noise, s_clean = _split_seed(seed, 2)
    lengthf = tf.cast(length, tf.float32)
    num_noise = tf.cast(tf.round(lengthf * noise_density), tf.int32)
    num_noise = tf.clip_by_value(num_noise, 1, tf.maximum(length - 1, 1))
    num_spans = tf.cast(tf.round(tf.cast(num_noise, tf.float32) / mean_span), tf.int32)
    num_spans = tf.clip_by_value(num_spans, 1, tf.minimum(num_noise, length - num_noise))
    num_spans = tf.maximum(num_spans, 1)

    def spans():
        noise = _random_partition(num_noise, num_spans, s_noise)
        clean = _random_partition(length - num_noise, num_spans, s_clean)
        run_lengths = tf.reshape(tf.stack([clean, noise], 1), [-1])
        run = tf.repeat(tf.range(2 * num_spans), run_lengths)
        return tf.equal(run % 2, 1), run

    def nothing():
        return tf.zeros([length], tf.bool), tf.zeros([length], tf.int32)

    return tf.cond(length >= 2, spans, nothing)


def _collapse_runs(tokens, mask, replacement):
    """Replace every run of masked positions by one token ``replacement[i]`` (same shape)."""
    prev = tf.concat([[False], mask[:-1]], 0)
    keep = tf.logical_not(tf.logical_and(mask, prev))
    return tf.boolean_mask(tf.where(mask, replacement, tokens), keep)


# -------------------------------------------------------------------------------- MLM
@seqio.map_over_dataset(num_seeds=2)
def mlm(ex, seeds, *, vocab_size: int, mask_id: int, noise_density: float = 0.15,
        mask_rate: float = 0.8, random_rate: float = 0.1,
        special_ids: Sequence[int] = DEFAULT_SPECIAL_IDS,
        random_token_min_id: Optional[int] = None, random_token_max_id: Optional[int] = None,
        feature: str = "targets"):
    """BERT masked LM on ``ex[feature]``.

    ``noise_density`` of the tokens that are neither in ``special_ids`` nor ``mask_id`` are
    selected (stochastically rounded per example, so the rate is exact in expectation); of
    those, ``mask_rate`` become ``mask_id``, ``random_rate`` a token uniform in
    ``[random_token_min_id, random_token_max_id)`` (defaults: one past the largest special
    id, and ``vocab_size``; pass the sentencepiece size to keep sentinels out) and the
    rest stay unchanged. Produces ``inputs`` (corrupted), ``targets`` (original) and
    ``mlm_weights`` (float32, 1.0 at selected positions).
    """
    _check_rate("noise_density", noise_density)
    _check_vocab_id("mask_id", mask_id, vocab_size)
    if not (0.0 <= mask_rate and 0.0 <= random_rate and mask_rate + random_rate <= 1.0):
        raise ValueError(f"mask_rate={mask_rate!r} and random_rate={random_rate!r} must be "
                         f">= 0 with a sum <= 1; lower them (BERT uses 0.8 and 0.1)")
    low = max(special_ids, default=-1) + 1 if random_token_min_id is None else random_token_min_id
    high = vocab_size if random_token_max_id is None else int(random_token_max_id)
    if not 0 <= low < high <= vocab_size:
        raise ValueError(f"random tokens from [{low}, {high}) do not fit in vocab_size="
                         f"{vocab_size}; pass 0 <= random_token_min_id < random_token_max_id "
                         f"<= vocab_size")
    tokens = tf.cast(_require(ex, feature, "mlm"), tf.int32)
    s_count, s_pick, s_kind, s_rand = _split_seed(seeds[0], 2) + _split_seed(seeds[1], 2)
    eligible = tf.logical_not(_is_special(tokens, tuple(special_ids) + (mask_id,)))
    n_eligible = tf.reduce_sum(tf.cast(eligible, tf.float32))
    selected = _choose(eligible, _stochastic_round(noise_density * n_eligible, s_count), s_pick)
    kind = tf.random.stateless_uniform(tf.shape(tokens), s_kind)
    random_tokens = tf.random.stateless_uniform(tf.shape(tokens), s_rand, minval=low,
                                                maxval=high, dtype=tf.int32)
    corrupted = tf.where(kind < mask_rate, mask_id,
                         tf.where(kind < mask_rate + random_rate, random_tokens, tokens))
    out = dict(ex)
    out["inputs"] = tf.where(selected, corrupted, tokens)
    out["targets"] = tokens
    out["mlm_weights"] = tf.cast(selected, tf.float32)
    return out


# ------------------------------------------------------------------ word structural
@seqio.map_over_dataset(num_seeds=2)
def word_structural(ex, seeds, *, shuffle_rate: float = 0.05,
                    special_ids: Sequence[int] = DEFAULT_SPECIAL_IDS,
                    mask_id: Optional[int] = None):
    """StructBERT word-structural objective: shuffle ``shuffle_rate`` of the trigrams.

    The sequence is cut into non-overlapping trigrams ``[3k, 3k+3)``; a trigram is eligible
    when none of its tokens is in ``special_ids`` (or is ``mask_id``) and, if the example has
    ``mlm_weights`` (``mlm`` ran first), none is MLM-selected. ``shuffle_rate`` of the
    eligible trigrams (stochastically rounded per example) get a random non-identity
    permutation in ``inputs``. Works on ``inputs`` if present (``targets`` keep the original
    ids), else on ``targets`` (copied to ``inputs``). Produces ``inputs``, ``targets`` and
    ``structural_weights`` (float32, 1.0 on the three positions of every shuffled trigram).
    """
    _check_rate("shuffle_rate", shuffle_rate, allow_one=True)
    targets = tf.cast(_require(ex, "targets", "word_structural"), tf.int32)
    inputs = tf.cast(ex["inputs"], tf.int32) if "inputs" in ex else targets
    s_count, s_pick, s_perm = _split_seed(seeds[0], 2) + [seeds[1]]
    specials = tuple(special_ids) + (() if mask_id is None else (mask_id,))
    ok = tf.logical_not(_is_special(inputs, specials))
    if "mlm_weights" in ex:
        ok = tf.logical_and(ok, tf.equal(tf.cast(ex["mlm_weights"], tf.float32), 0.0))
    n = tf.size(inputs)
    num_tri = n // 3
    tri = tf.reshape(inputs[:3 * num_tri], [num_tri, 3])
    eligible = tf.reduce_all(tf.reshape(ok[:3 * num_tri], [num_tri, 3]), axis=1)
    n_eligible = tf.reduce_sum(tf.cast(eligible, tf.float32))
    chosen = _choose(eligible, _stochastic_round(shuffle_rate * n_eligible, s_count), s_pick)
    perm_index = tf.random.stateless_uniform([num_tri], s_perm, minval=1,
                                             maxval=len(_TRIGRAM_PERMUTATIONS), dtype=tf.int32)
    perms = tf.gather(tf.constant(_TRIGRAM_PERMUTATIONS, tf.int32), perm_index)
    shuffled = tf.where(chosen[:, None], tf.gather(tri, perms, batch_dims=1), tri)
    out = dict(ex)
    out["inputs"] = tf.concat([tf.reshape(shuffled, [-1]), inputs[3 * num_tri:]], 0)
    out["targets"] = targets
    weights = tf.repeat(tf.cast(chosen, tf.float32), 3)
    out["structural_weights"] = tf.concat([weights, tf.zeros([n - 3 * num_tri])], 0)
    return out


# ------------------------------------------------------------------ sentence order
def _segment(sentences, start, stop, sep_id: int):
    """Sentences ``[start, stop)`` of a ragged ``[n, None]`` tensor joined by ``sep_id``."""
    part = sentences[start:stop]
    seps = tf.RaggedTensor.from_tensor(tf.fill([part.nrows(), 1], tf.constant(sep_id, tf.int32)),
                                       row_splits_dtype=part.row_splits.dtype)
    return tf.concat([part, seps], axis=1).flat_values[:-1]


@seqio.map_over_dataset(num_seeds=2)
def _sentence_order_pair(ex, seeds, *, sep_id: int, feature: str, prev_key: str,
                         has_prev_key: str, max_segment_sentences: int):
    sentences = _sentences(tf.cast(ex[feature], tf.int32), sep_id)
    prev = _sentences(ex[prev_key], sep_id)
    num = sentences.nrows(out_type=tf.int32)
    num_prev = prev.nrows(out_type=tf.int32)
    m = max_segment_sentences
    s_label, s_pos = seeds
    s_pos, s_other = _split_seed(s_pos, 2)
    num_labels = tf.where(ex[has_prev_key], 3, 2)
    label = tf.random.stateless_uniform([], s_label, minval=0, maxval=num_labels,
                                        dtype=tf.int32)
    # The boundary b: segment A = sentences [b - m, b), segment B = [b, b + m) (clipped).
    b = tf.random.stateless_uniform([], s_pos, minval=1, maxval=num, dtype=tf.int32)
    seg_a = _segment(sentences, tf.maximum(b - m, 0), b, sep_id)
    len_b = tf.minimum(num - b, m)
    seg_b = _segment(sentences, b, b + len_b, sep_id)
    # "Another document": as many sentences as segment B, from a random place of the
    # previous document.
    len_r = tf.maximum(tf.minimum(len_b, num_prev), 1)
    j = tf.random.stateless_uniform([], s_other, minval=0,
                                    maxval=tf.maximum(num_prev - len_r + 1, 1), dtype=tf.int32)
    s1 = tf.cond(label == 1, lambda: seg_b, lambda: seg_a)
    s2 = tf.switch_case(label, [lambda: seg_b, lambda: seg_a,
                                lambda: _segment(prev, j, j + len_r, sep_id)])
    out = {k: v for k, v in ex.items() if k not in (feature, prev_key, has_prev_key)}
    out["inputs"] = tf.concat([s1, [sep_id], s2], 0)
    out["token_type_ids"] = tf.concat([tf.zeros([tf.size(s1) + 1], tf.int32),
                                       tf.ones([tf.size(s2)], tf.int32)], 0)
    out["label"] = label
    return out


def sentence_order(dataset: tf.data.Dataset, *, sep_id: int, feature: str = "targets",
                   max_segment_sentences: int = 1) -> tf.data.Dataset:
    """StructBERT sentence-structural objective (3-way sentence order prediction).

    ``ex[feature]`` holds a document whose sentences are separated by ``sep_id``; documents
    with fewer than two sentences are dropped. For each document a random sentence boundary
    ``b`` (``1 <= b < n``) and a label uniform over three classes are drawn. Segment ``A`` is
    the (up to) ``max_segment_sentences`` sentences before ``b``, segment ``B`` the (up to)
    ``max_segment_sentences`` sentences from ``b`` on (with the default 1, the adjacent pair
    ``(S_b-1, S_b)``); the sentences of a segment stay joined by ``sep_id``. Label 0 ->
    ``(A, B)`` (S2 follows S1), 1 -> ``(B, A)`` (swapped: S2 precedes S1), 2 -> ``(A, R)`` with
    ``R`` as many consecutive sentences as ``B`` (fewer if it is shorter) from a random place
    of the previous document in the dataset (the first document has no predecessor and draws
    its label from {0, 1} only). Segments, as BERT and StructBERT pair them, give the
    classifier attributes to compare across the boundary; single sentences often share none.
    Produces ``inputs`` = ``S1 sep S2``, ``token_type_ids`` (0 on S1 and the separator after
    it, 1 on S2) and ``label`` (int32); ``ex[feature]`` is consumed, other features pass
    through.
    """
    _check_vocab_id("sep_id", sep_id)
    if not isinstance(max_segment_sentences, int) or max_segment_sentences < 1:
        raise ValueError(f"max_segment_sentences={max_segment_sentences!r} must be an int >= 1 "
                         f"(sentences per segment); pass e.g. 1 for sentence pairs or 2")
    if feature not in dataset.element_spec:
        raise ValueError(f"sentence_order needs a {feature!r} feature but the dataset has "
                         f"{sorted(dataset.element_spec)}; pass feature= the document feature")
    prev_key, has_prev_key = "_sentence_order_prev", "_sentence_order_has_prev"

    def enough(ex):
        return _sentences(tf.cast(ex[feature], tf.int32), sep_id).nrows() >= 2

    def attach_previous(state, ex):
        prev, has_prev = state
        doc = tf.cast(ex[feature], tf.int32)
        return (doc, True), {**ex, prev_key: prev, has_prev_key: has_prev}

    dataset = dataset.filter(enough)
    dataset = dataset.scan((tf.zeros([0], tf.int32), tf.constant(False)), attach_previous)
    return _sentence_order_pair(dataset, sep_id=sep_id, feature=feature, prev_key=prev_key,
                                has_prev_key=has_prev_key,
                                max_segment_sentences=max_segment_sentences)


# ------------------------------------------------------------------ PALM / prefix LM
def _split_features(ex, k, feature):
    tokens = tf.convert_to_tensor(ex[feature])
    out = dict(ex)
    out["inputs"] = tokens[:k]
    out["targets"] = tokens[k:]
    return out


@seqio.map_over_dataset(num_seeds=1)
def palm_split(ex, seed, *, min_frac: float = 0.2, max_frac: float = 0.8,
               feature: str = "targets"):
    """PALM context-to-continuation: split ``ex[feature]`` at a random point.

    The split index ``k`` is uniform in ``[ceil(min_frac * n), floor(max_frac * n)]``,
    clipped to ``[1, n - 1]`` so both parts are non-empty (``n >= 2``). Produces ``inputs`` =
    ``tokens[:k]`` (the context) and ``targets`` = ``tokens[k:]`` (the continuation; a
    trailing eos stays there); ``inputs + targets`` is the original.
    """
    if not 0.0 <= min_frac <= max_frac <= 1.0:
        raise ValueError(f"min_frac={min_frac!r}, max_frac={max_frac!r} must satisfy "
                         f"0 <= min_frac <= max_frac <= 1; pass e.g. 0.2 and 0.8")
    n = tf.size(_require(ex, feature, "palm_split"))
    nf = tf.cast(n, tf.float32)
    low = tf.cast(tf.math.ceil(min_frac * nf), tf.int32)
    high = tf.cast(tf.math.floor(max_frac * nf), tf.int32)
    return _split_features(ex, _random_split_point(n, low, high, seed), feature)


@seqio.map_over_dataset(num_seeds=1)
def prefix_lm(ex, seed, *, feature: str = "targets"):
    """Prefix LM: split ``ex[feature]`` at ``k`` uniform in ``[1, n - 1]``.

    Produces ``inputs`` (prefix) and ``targets`` (suffix), usable with an encoder-decoder or
    with ``seqio.PrefixLMFeatureConverter`` for decoder-only models.
    """
    n = tf.size(_require(ex, feature, "prefix_lm"))
    return _split_features(ex, _random_split_point(n, 1, n - 1, seed), feature)


# ------------------------------------------------------------------------------ BART
@seqio.map_over_dataset(num_seeds=1)
def text_infilling(ex, seed, *, mask_id: int, noise_density: float = 0.3,
                   mean_span: float = 3.0, feature: str = "targets"):
    """BART text infilling: spans covering ``noise_density`` of the tokens -> one mask each.

    Span lengths are a random composition with mean ``mean_span`` (see ``_span_mask``); a
    trailing eos is never masked. Produces ``inputs`` (each span replaced by a single
    ``mask_id``) and ``targets`` (the original sequence).
    """
    _check_rate("noise_density", noise_density)
    _check_vocab_id("mask_id", mask_id)
    if mean_span < 1:
        raise ValueError(f"mean_span={mean_span!r} is below 1; pass a mean span length >= 1")
    tokens = tf.cast(_require(ex, feature, "text_infilling"), tf.int32)
    body, has_eos = _strip_eos(tokens)
    mask, _ = _span_mask(tf.size(body), noise_density, mean_span, seed)
    out = dict(ex)
    out["inputs"] = _maybe_append_eos(
        _collapse_runs(body, mask, tf.fill(tf.shape(body), mask_id)), has_eos)
    out["targets"] = tokens
    return out


@seqio.map_over_dataset(num_seeds=1)
def sentence_shuffle(ex, seed, *, sep_id: int, feature: str = "targets"):
    """BART sentence permutation: shuffle the ``sep_id``-separated sentences.

    Produces ``inputs`` = the non-empty sentences in a random order joined by single
    ``sep_id`` tokens (plus the trailing eos if the original had one) and ``targets`` = the
    original sequence.
    """
    _check_vocab_id("sep_id", sep_id)
    tokens = tf.cast(_require(ex, feature, "sentence_shuffle"), tf.int32)
    _, has_eos = _strip_eos(tokens)
    sentences = _sentences(tokens, sep_id)
    order = tf.random.experimental.stateless_shuffle(
        tf.range(sentences.nrows(out_type=tf.int32)), seed)
    shuffled = tf.gather(sentences, order)
    with_sep = tf.concat([shuffled, tf.fill([shuffled.nrows(), 1], sep_id)], axis=1)
    joined = with_sep.flat_values[:tf.maximum(tf.size(with_sep.flat_values) - 1, 0)]
    out = dict(ex)
    out["inputs"] = _maybe_append_eos(joined, has_eos)
    out["targets"] = tokens
    return out


# -------------------------------------------------------------------------------- T5
@seqio.map_over_dataset(num_seeds=1)
def span_corruption(ex, seed, *, vocab_size: int, noise_density: float = 0.15,
                    mean_noise_span_length: float = 3.0, sentinel_start: Optional[int] = None,
                    feature: str = "targets"):
    """T5 span corruption on ``ex[feature]``.

    ``round(noise_density * n)`` tokens in spans of mean length ``mean_noise_span_length``
    (the sequence starts with non-noise; a trailing eos is never noise). Span ``j`` uses the
    sentinel ``sentinel_start - j`` (default ``sentinel_start = vocab_size - 1``, counting
    down). Produces ``inputs`` = the sequence with every span replaced by its sentinel (eos
    kept if the original ended in eos) and ``targets`` = ``sentinel_0 span_0 sentinel_1
    span_1 ... eos``. Sentinel ids must not occur in the text.
    """
    _check_rate("noise_density", noise_density)
    start = vocab_size - 1 if sentinel_start is None else sentinel_start
    _check_vocab_id("sentinel_start", start, vocab_size)
    if mean_noise_span_length < 1:
        raise ValueError(f"mean_noise_span_length={mean_noise_span_length!r} is below 1; "
                         f"pass a mean span length >= 1")
    tokens = tf.cast(_require(ex, feature, "span_corruption"), tf.int32)
    body, has_eos = _strip_eos(tokens)
    mask, run = _span_mask(tf.size(body), noise_density, mean_noise_span_length, seed)
    # Run 2j + 1 is noise span j, run 2j the clean run before it.
    sentinels = start - run // 2
    out = dict(ex)
    out["inputs"] = _maybe_append_eos(_collapse_runs(body, mask, sentinels), has_eos)
    out["targets"] = tf.concat(
        [_collapse_runs(body, tf.logical_not(mask), sentinels), [EOS_ID]], 0)
    return out


# ---------------------------------------------------------------------- PLUG lengths
@seqio.map_over_dataset(num_seeds=1)
def random_lengths(ex, seed, *, min_length: int = 32, max_length: int = 512,
                   features: Sequence[str] = ("inputs", "targets"),
                   keep_end: Sequence[str] = ()):
    """PLUG variable-length training: truncate each of ``features`` independently.

    Each feature present in the example is cut to ``L`` tokens with ``L`` uniform in
    ``[min_length, max_length]`` (shorter features are left as they are). Missing features
    are skipped. Features named in ``keep_end`` keep their last ``L`` tokens instead of the
    first (for a context that a continuation follows: ``keep_end=("inputs",)``).
    """
    if not 1 <= min_length <= max_length:
        raise ValueError(f"min_length={min_length!r}, max_length={max_length!r} must satisfy "
                         f"1 <= min_length <= max_length; pass e.g. 32 and 512")
    if isinstance(features, str):
        raise ValueError(f"features={features!r} is a string; pass a tuple of feature names")
    present = [k for k in features if k in ex]
    out = dict(ex)
    if not present:
        return out
    lengths = tf.random.stateless_uniform([len(present)], seed, minval=min_length,
                                          maxval=max_length + 1, dtype=tf.int32)
    for i, key in enumerate(present):
        x = tf.convert_to_tensor(ex[key])
        if key in keep_end:
            out[key] = x[tf.maximum(tf.shape(x)[0] - lengths[i], 0):]
        else:
            out[key] = x[:lengths[i]]
    return out
