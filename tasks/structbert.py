"""StructBERT tasks on Shop World (train them with ``converter="encoder"``).

==================================  ============================================================
``structbert_pretrain_{lang}_v2``   StructBERT pre-training on the product description pages
                                    (title, then the description sentences in their discourse
                                    order; ``description_document``): a 3-way segment pair
                                    ``[CLS] S1 [SEP] S2`` of up to ``SEGMENT_SENTENCES``
                                    sentences each around a random sentence boundary
                                    (``label`` 0 = S2 follows S1, 1 = S2 precedes S1, 2 = S2
                                    from another document), then BERT MLM (15%, 80/10/10)
                                    and word-structural trigram shuffling (5% of the
                                    trigrams) on that pair
``structbert_sentiment_{lang}_v1``  review sentiment: ``[CLS] review``, ``label`` 0 negative,
                                    1 positive (Shop World's review kind). Every review holds
                                    a cue phrase of its own sentiment, so a fresh encoder
                                    learns it as fast as a pre-trained one (docs/data.md)
``structbert_sentswap_{lang}_v1``   sentence-pair order, the fine-tune that pre-training
                                    helps: ``[CLS] S1 [SEP] S2``, two adjacent sentences of a
                                    description page (title first), ``label`` 1 in order, 0
                                    swapped (``_sentence_swap_example``)
``plug_stage1_{lang}_v2``           PLUG stage 1: the same data as
                                    ``structbert_pretrain_{lang}_v2`` (PLUG's encoder is
                                    trained with the StructBERT objectives first)
==================================  ============================================================

Why description pages and not the LM documents (v1 used those, title + description +
review): SHOP_WORLD.md assigns sentence order to the descriptions, which follow a fixed
discourse order. The review tail of an LM document breaks the 3-way labels: its aspect
sentences come in random order (so a swapped pair is often a real order too) and about 30% of
its sentences are generic ("物流很快，包装完好。"), so "S2 from another document" is often
indistinguishable from a real next sentence. Measured on 1000 test documents against 20000
training documents, an "other document" pair also occurs verbatim as a real adjacent pair
3.2% of the time on LM documents and 1.3% on description pages, and a swapped pair occurs
as a real one 3.8% vs 0% of the time.

Why segments of two sentences and not single sentences: two single sentences of a page often
share no attribute ("专为学生设计，容量为30升。" then "到手价仅1089元，喜欢就带回家吧。" reads the
same whether the price belongs to that product or another), so "from another document" can
only be guessed. Segments, as BERT and StructBERT pair text, carry brand, colour, material
and category on both sides. experiments/structbert/shop_pretrain_tiny.gin (2000 steps) on the
1000 test pairs: single sentences 0.898 sentence-order accuracy (recall 99.7% / 100% / 71%
for follows / precedes / other document), two-sentence segments 0.922 (100% / 100% / 75%;
with the in-document tokenization below).

Every sentence is tokenized as it reads inside a document (``newline_first`` then
``drop_through_first_sep``): SentencePiece marks the start of a text (``"▁The"``, against
``"The"`` after a newline), which would make a page's first sentence recognisable by its first
token and make ``plug-infer`` prompts, encoded from their start, differ from the training
pairs. ``plug_jax.families.structbert.prompts.encode_in_document`` encodes prompts
(``"S1\\tS2"``) the same way.

Ids (the Shop World SentencePiece vocabulary with 100 extra ids, as the PALM/PLUG tasks):
``[CLS]`` is the second-to-last extra id (``vocab_size - 2``), ``[MASK]`` the last
(``vocab_size - 1``), and ``[SEP]`` the ``"\\n"`` piece that already separates sentences.
Features (before the encoder converter): ``inputs`` (corrupted pair), ``targets``
(original pair), ``token_type_ids``, ``mlm_weights``, ``structural_weights``, ``label``.
"""
from __future__ import annotations

import functools

from plug_jax.data import configure_tensorflow

tf = configure_tensorflow()

import seqio  # noqa: E402

from plug_jax.data import preprocessors as pp  # noqa: E402
from plug_jax.data import registry, shop_world  # noqa: E402

from .curricula import EXTRA_IDS, SHUFFLE_BUFFER_SIZE, shop_world_vocabulary, split_sentences  # noqa: E402,E501
from .gpt3 import SHOPLM_SPLIT_SIZES, WORLD_SEED, shop_world_source  # noqa: E402

SENTENCE_ORDER_LABELS = ("S2 follows S1", "S2 precedes S1", "S2 from another document")
SENTIMENT_LABELS = shop_world.text.SENTIMENTS  # ("negative", "positive")


def special_ids(vocab) -> dict[str, int]:
    """``cls``, ``mask``, ``sep`` and ``sp_size`` (SentencePiece pieces only) of ``vocab``."""
    size = vocab.vocab_size
    return {"cls": size - 2, "mask": size - 1, "sep": vocab.tokenizer.piece_to_id("\n"),
            "sp_size": size - vocab.extra_ids}


def _specials(output_features) -> dict[str, int]:
    return special_ids(output_features["inputs"].vocabulary)


# ------------------------------------------------------------------ preprocessors
def newline_first(dataset):
    """``text`` -> ``"\\n" + text`` (with ``drop_through_first_sep`` after tokenizing: every
    sentence, the first one too, is then tokenized as it reads inside a document)."""
    return dataset.map(lambda ex: {**ex, "text": tf.strings.join(["\n", ex["text"]])},
                       num_parallel_calls=tf.data.AUTOTUNE)


def drop_through_first_sep(dataset, output_features, feature="targets"):
    """Drops the tokens up to and including the first ``[SEP]`` of ``feature``: the
    SentencePiece start-of-text piece (``"▁"``) that ``newline_first``'s newline split off.
    ``plug_jax.families.structbert.prompts.encode_in_document`` tokenizes ``plug-infer``
    prompts the same way."""
    sep = _specials(output_features)["sep"]

    def f(ex):
        t = ex[feature]
        first = tf.argmax(tf.cast(tf.equal(t, sep), tf.int32), output_type=tf.int32)
        return {**ex, feature: t[first + 1:]}

    return dataset.map(f, num_parallel_calls=tf.data.AUTOTUNE)


SEGMENT_SENTENCES = 2  # sentences per segment of a sentence-order pair


def sentence_pair(dataset, output_features):
    return pp.sentence_order(dataset, sep_id=_specials(output_features)["sep"],
                             feature="targets", max_segment_sentences=SEGMENT_SENTENCES)


def prepend_cls(dataset, output_features):
    cls = _specials(output_features)["cls"]

    def f(ex):
        out = dict(ex)
        out["inputs"] = tf.concat([[cls], tf.cast(ex["inputs"], tf.int32)], 0)
        if "token_type_ids" in ex:
            out["token_type_ids"] = tf.concat([[0], tf.cast(ex["token_type_ids"], tf.int32)], 0)
        return out

    return dataset.map(f, num_parallel_calls=tf.data.AUTOTUNE)


def trim_inputs(dataset, sequence_length):
    """Cut the pair to the encoder length before masking, so the MLM / structural rates
    hold on the tokens the model sees."""
    n = int(sequence_length["inputs"])
    keys = ("inputs", "token_type_ids")
    return dataset.map(lambda ex: {k: (v[:n] if k in keys else v) for k, v in ex.items()},
                       num_parallel_calls=tf.data.AUTOTUNE)


def mask_and_shuffle(dataset, output_features):
    ids = _specials(output_features)
    specials = pp.DEFAULT_SPECIAL_IDS + (ids["cls"], ids["sep"])
    size = output_features["inputs"].vocabulary.vocab_size
    dataset = pp.mlm(dataset, vocab_size=size, mask_id=ids["mask"], feature="inputs",
                     random_token_min_id=max(pp.DEFAULT_SPECIAL_IDS) + 1,
                     random_token_max_id=ids["sp_size"], special_ids=specials)
    return pp.word_structural(dataset, special_ids=specials, mask_id=ids["mask"])


def keep(*names):
    def f(dataset):
        return dataset.map(lambda ex: {k: ex[k] for k in names})
    f.__name__ = f"keep_{'_'.join(names)}"
    return f


# ------------------------------------------------------------------ sources
def description_document(ex: dict) -> str:
    """``title \\n description``: the product page the sentence-order pairs are drawn from."""
    return f"{ex['title']}\n{ex['description']}"


def _description_example(world_seed: int, split: str, index: int, lang: str) -> dict:
    ex = shop_world.text_example(world_seed, split, index, lang, kinds=("title", "description"))
    return {"text": description_document(ex)}


def shop_world_description_source(lang: str) -> seqio.FunctionDataSource:
    """``{"index", "text": title \\n description}`` of each split (the LM documents' split
    sizes)."""
    return shop_world_source(_description_example, {"text": tf.string}, lang,
                             world_seed=WORLD_SEED, split_sizes=SHOPLM_SPLIT_SIZES)


def _review_example(world_seed: int, split: str, index: int, lang: str) -> dict:
    ex = shop_world.text_example(world_seed, split, index, lang)
    return {"text": ex["review"], "label": ex["label"]}


def shop_world_review_source(lang: str) -> seqio.FunctionDataSource:
    """``{"index", "text": review, "label": 0 negative / 1 positive}`` of each split."""
    return shop_world_source(_review_example, {"text": tf.string, "label": tf.int32}, lang)


def review_prompts(split: str = "test", num: int = 4, lang: str = "zh",
                   start: int = 0) -> list[str]:
    """``num`` reviews of ``split`` (for ``plug-infer`` of the sentiment classifier)."""
    return [shop_world.text_example(WORLD_SEED, split, i, lang)["review"]
            for i in range(start, start + num)]


def sentence_pair_prompts(split: str = "test", num: int = 4, lang: str = "zh") -> list[str]:
    """``"S1\\tS2"`` prompts shaped like the pre-training pairs (for ``plug-infer`` of the
    pre-trained encoder): on product ``i``'s page, segment A = the title and the first
    description sentence, B = the next two sentences (joined by ``"\\n"``); ``(A, B)`` for
    ``i % 3 == 0``, ``(B, A)`` for 1, and ``(A, B of product i + 1)`` for 2."""
    def segments(i):
        ex = shop_world.text_example(WORLD_SEED, split, i, lang)
        page = [ex["title"], *ex["description_sentences"]]
        k = SEGMENT_SENTENCES  # A ends at the boundary k, B starts there
        return "\n".join(page[:k]), "\n".join(page[k:2 * k])

    out = []
    for i in range(num):
        a, b = segments(i)
        out.append((f"{a}\t{b}", f"{b}\t{a}", f"{a}\t{segments(i + 1)[1]}")[i % 3])
    return out


def pair_token_types(dataset, output_features):
    """``token_type_ids`` of a ``S1 [SEP] S2`` pair in ``inputs``: 0 up to and including the
    first ``[SEP]``, 1 after it (as the pre-training pairs)."""
    sep = _specials(output_features)["sep"]

    def f(ex):
        t = tf.cast(ex["inputs"], tf.int32)
        after = tf.cumsum(tf.cast(tf.equal(t, sep), tf.int32), exclusive=True) > 0
        return {**ex, "token_type_ids": tf.cast(after, tf.int32)}

    return dataset.map(f, num_parallel_calls=tf.data.AUTOTUNE)


def _sentence_swap_example(world_seed: int, split: str, index: int, lang: str) -> dict:
    """Two adjacent sentences of product ``index``'s description page (title first), in
    order (``label`` 1) or swapped (0), a half each, as ``"S1\\nS2"``. The draws come from
    their own stream (``kind_rng(..., "sentence_swap")``), so the page is the generator's."""
    ex = shop_world.text_example(world_seed, split, index, lang, kinds=("title", "description"))
    rng = shop_world.text.kind_rng(world_seed, split, index, "sentence_swap")
    page = [ex["title"], *ex["description_sentences"]]
    i = int(rng.integers(0, len(page) - 1))
    label = int(rng.random() < 0.5)
    a, b = page[i], page[i + 1]
    return {"text": f"{a}\n{b}" if label else f"{b}\n{a}", "label": label}


# ------------------------------------------------------------------ registration
def _spec(kind: str, lang: str) -> dict:
    vocab = shop_world_vocabulary(lang)
    return {"kind": kind, "lang": lang, "world_seed": WORLD_SEED, "extra_ids": EXTRA_IDS,
            "vocab": {k: v for k, v in vocab.spec.items() if k != "cache_dir"}}


def register_pretrain_task(name: str, lang: str = "zh"):
    vocab = shop_world_vocabulary(lang)

    def build():
        return seqio.TaskRegistry.add(
            name,
            source=shop_world_description_source(lang),
            preprocessors=[
                functools.partial(split_sentences, lang=lang),
                newline_first,
                functools.partial(seqio.preprocessors.rekey, key_map={"targets": "text"}),
                functools.partial(seqio.preprocessors.tokenize, copy_pretokenized=False),
                drop_through_first_sep,
                seqio.CacheDatasetPlaceholder(),
                sentence_pair,
                prepend_cls,
                trim_inputs,
                mask_and_shuffle,
                keep("inputs", "targets", "token_type_ids", "mlm_weights",
                     "structural_weights", "label"),
            ],
            output_features={
                "inputs": seqio.Feature(vocabulary=vocab, add_eos=False, dtype=tf.int32),
                "targets": seqio.Feature(vocabulary=vocab, add_eos=False, dtype=tf.int32),
            },
            shuffle_buffer_size=SHUFFLE_BUFFER_SIZE,
        )

    spec = {**_spec("structbert_pretrain", lang), "document": "title+description",
            "segment_sentences": SEGMENT_SENTENCES, "tokenized": "in-document"}
    return registry.register_task(name, spec, build)


def register_sentiment_task(name: str, lang: str = "zh"):
    vocab = shop_world_vocabulary(lang)

    def build():
        return seqio.TaskRegistry.add(
            name,
            source=shop_world_review_source(lang),
            preprocessors=[
                functools.partial(seqio.preprocessors.rekey,
                                  key_map={"inputs": "text", "label": "label"}),
                functools.partial(seqio.preprocessors.tokenize, copy_pretokenized=False),
                seqio.CacheDatasetPlaceholder(),
                prepend_cls,
                trim_inputs,
                keep("inputs", "label"),
            ],
            output_features={
                "inputs": seqio.Feature(vocabulary=vocab, add_eos=False, dtype=tf.int32)},
            shuffle_buffer_size=SHUFFLE_BUFFER_SIZE,
        )

    return registry.register_task(name, _spec("structbert_sentiment", lang), build)


def register_pair_task(name: str, example_fn, lang: str = "zh", kind: str = "pair"):
    """A 2-way sentence-pair classification task ``[CLS] S1 [SEP] S2`` (token types 0 / 1
    as in pre-training, every sentence tokenized as inside a document) over the Shop World
    examples ``example_fn(world_seed, split, index, lang) -> {"text": "S1\\nS2", "label"}``."""
    vocab = shop_world_vocabulary(lang)

    def build():
        return seqio.TaskRegistry.add(
            name,
            source=shop_world_source(example_fn, {"text": tf.string, "label": tf.int32}, lang),
            preprocessors=[
                newline_first,
                functools.partial(seqio.preprocessors.rekey,
                                  key_map={"inputs": "text", "label": "label"}),
                functools.partial(seqio.preprocessors.tokenize, copy_pretokenized=False),
                functools.partial(drop_through_first_sep, feature="inputs"),
                seqio.CacheDatasetPlaceholder(),
                pair_token_types,
                prepend_cls,
                trim_inputs,
                keep("inputs", "token_type_ids", "label"),
            ],
            output_features={
                "inputs": seqio.Feature(vocabulary=vocab, add_eos=False, dtype=tf.int32)},
            shuffle_buffer_size=SHUFFLE_BUFFER_SIZE,
        )

    return registry.register_task(name, _spec(kind, lang), build)


for _lang in ("zh", "en"):
    register_pretrain_task(f"structbert_pretrain_{_lang}_v2", _lang)
    register_pretrain_task(f"plug_stage1_{_lang}_v2", _lang)
    register_sentiment_task(f"structbert_sentiment_{_lang}_v1", _lang)
    register_pair_task(f"structbert_sentswap_{_lang}_v1", _sentence_swap_example, _lang,
                       "structbert_sentswap")
