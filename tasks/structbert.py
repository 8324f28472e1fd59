"""StructBERT tasks on Shop World (train them with ``converter="encoder"``).

==================================  ============================================================
``structbert_pretrain_{lang}_v1``   StructBERT pre-training on the LM documents (title,
                                    description sentences, review sentences): a 3-way sentence
                                    pair ``[CLS] S1 [SEP] S2`` (``label`` 0 = S2 follows S1,
                                    1 = S2 precedes S1, 2 = S2 from another document), then
                                    BERT MLM (15%, 80/10/10) and word-structural trigram
                                    shuffling (5% of the trigrams) on that pair
``structbert_sentiment_{lang}_v1``  review sentiment: ``[CLS] review``, ``label`` 0 negative,
                                    1 positive (Shop World's review kind)
``plug_stage1_{lang}_v1``           PLUG stage 1: the same data as
                                    ``structbert_pretrain_{lang}_v1`` (PLUG's encoder is
                                    trained with the StructBERT objectives first)
==================================  ============================================================

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
from .gpt3 import SHOPLM_SPLIT_SIZES, WORLD_SEED, shop_world_lm_source, shop_world_source  # noqa: E402,E501

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
def sentence_pair(dataset, output_features):
    return pp.sentence_order(dataset, sep_id=_specials(output_features)["sep"],
                             feature="targets")


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


# ------------------------------------------------------------------ review source
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
    """``S1 \\n S2`` prompts from ``split``'s descriptions: adjacent sentences, in order for
    even ``i`` and swapped for odd ``i`` (for ``plug-infer`` of the pre-trained encoder)."""
    out = []
    for i in range(num):
        sents = shop_world.text_example(WORLD_SEED, split, i, lang)["description_sentences"]
        a, b = sents[0], sents[1]
        out.append(f"{a}\n{b}" if i % 2 == 0 else f"{b}\n{a}")
    return out


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
            source=shop_world_lm_source(lang, world_seed=WORLD_SEED,
                                        split_sizes=SHOPLM_SPLIT_SIZES),
            preprocessors=[
                functools.partial(split_sentences, lang=lang),
                functools.partial(seqio.preprocessors.rekey, key_map={"targets": "text"}),
                functools.partial(seqio.preprocessors.tokenize, copy_pretokenized=False),
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

    return registry.register_task(name, _spec("structbert_pretrain", lang), build)


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


for _lang in ("zh", "en"):
    register_pretrain_task(f"structbert_pretrain_{_lang}_v1", _lang)
    register_pretrain_task(f"plug_stage1_{_lang}_v1", _lang)
    register_sentiment_task(f"structbert_sentiment_{_lang}_v1", _lang)
