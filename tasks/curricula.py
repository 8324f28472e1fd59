"""Shop World encoder-decoder pre-training tasks and the registered curricula.

Tasks (features ``inputs`` and ``targets``, both in the Shop World SentencePiece vocabulary
with 100 extra ids; train them with ``converter="encdec"``):

==============================  ==============================================================
``palm2_mlm_{lang}_v1``         BERT MLM 80/10/10 (``inputs`` corrupted, ``targets`` original)
``palm2_infill_{lang}_v1``      text infilling: spans (30% of tokens) -> one mask each
``palm2_sentshuffle_{lang}_v1`` sentence shuffle: ``inputs`` = sentences permuted
``palm2_denoise_{lang}_v1``     mixture of the two above, equal rates
``palm2_ar_{lang}_v1``          PALM context -> continuation (split at 20-80% of the text)
``plug_gen_{lang}_v1``          PALM split, then encoder and decoder lengths cut at random
                                in [32, 512] (PLUG stage 2; the context keeps its end)
``plug_mlm_{lang}_v1``          MLM, cut the same way
``plug_genmlm_{lang}_v1``       mixture of ``plug_gen`` and ``plug_mlm``, equal rates
``plug_genae_{lang}_v1``        ``plug_gen`` with BERT MLM on the encoder's context:
                                ``mlm_targets`` / ``mlm_weights`` for the encoder's MLM
                                head (converter ``encdec_mlm``)
==============================  ==============================================================

Curricula (``plug_jax.data.curriculum``):

* ``palm2_pretrain_{lang}_v1``: MLM for the first third of the run's examples, then text
  infilling + sentence shuffle for the second third, then autoregressive (context ->
  continuation). The seed documents give the order of the three stages but not their
  lengths; equal thirds is our choice.
* ``plug_stage2_{lang}_v2`` (PLUG stage 2 as MODEL_SPECS.md §3 describes it): for the first
  90% of the run's examples ``plug_genae`` — the context goes MLM-corrupted to the encoder,
  which keeps its MLM loss, and the decoder generates the continuation — then ``plug_gen``
  (MLM off: no ``mlm_weights``, the ``encdec_mlm`` converter gives zero weights). Train
  with converter ``"encdec_mlm"``.
* ``plug_stage2_{lang}_v1`` (kept for runs that use it): the mixture ``plug_genmlm``
  (generation, and MLM as sequence-to-sequence denoising by the decoder) for the first
  90%, then generation alone.

The mask token is the last extra id (``vocab_size - 1``); MLM's random replacements are
drawn from the SentencePiece pieces only. Sentences are split at 。！？ (zh) or ``. ! ?``
followed by a space (en) and separated by the ``"\\n"`` piece, which the LM documents already
use between title, description and review.
"""
from __future__ import annotations

import functools

from plug_jax.data import configure_tensorflow

tf = configure_tensorflow()

import seqio  # noqa: E402

from plug_jax.data import curriculum, registry  # noqa: E402
from plug_jax.data import preprocessors as pp  # noqa: E402
from plug_jax.data.vocab import ShopWorldVocabulary  # noqa: E402

from .gpt3 import SHOPLM_SPLIT_SIZES, WORLD_SEED, shop_world_lm_source  # noqa: E402

# PALM 2.0's tasks are named palm2_* (family palm).
registry.add_task_prefixes("palm", "palm2")

EXTRA_IDS = 100
SHUFFLE_BUFFER_SIZE = 128
PLUG_MIN_LENGTH, PLUG_MAX_LENGTH = 32, 512  # PLUG stage 2 random encoder/decoder lengths
_SENTENCE_END = {"zh": (r"([。！？])", "\\1\n"), "en": (r"([.!?]) ", "\\1\n")}


def shop_world_vocabulary(lang: str) -> ShopWorldVocabulary:
    return ShopWorldVocabulary(None, seed=WORLD_SEED, lang=lang, extra_ids=EXTRA_IDS)


# ------------------------------------------------------------------ preprocessors
def split_sentences(dataset: tf.data.Dataset, *, lang: str) -> tf.data.Dataset:
    """End every sentence of ``text`` with ``"\\n"`` (fields already end with one)."""
    pattern, repl = _SENTENCE_END[lang]

    def f(ex):
        t = tf.strings.regex_replace(ex["text"], pattern, repl)
        t = tf.strings.regex_replace(t, "\n+", "\n")
        return {**ex, "text": tf.strings.regex_replace(t, "\n$", "")}

    return dataset.map(f, num_parallel_calls=tf.data.AUTOTUNE)


def _ids(output_features):
    vocab = output_features["targets"].vocabulary
    sp_size = vocab.vocab_size - vocab.extra_ids
    return vocab.vocab_size, vocab.vocab_size - 1, sp_size, vocab.tokenizer.piece_to_id("\n")


def mlm_objective(dataset, output_features):
    size, mask, sp_size, _ = _ids(output_features)
    return pp.mlm(dataset, vocab_size=size, mask_id=mask, random_token_max_id=sp_size)


def infilling_objective(dataset, output_features):
    _, mask, _, _ = _ids(output_features)
    return pp.text_infilling(dataset, mask_id=mask)


def sentence_shuffle_objective(dataset, output_features):
    _, _, _, sep = _ids(output_features)
    return pp.sentence_shuffle(dataset, sep_id=sep)


def keep_inputs_and_targets(dataset):
    return dataset.map(lambda ex: {"inputs": ex["inputs"], "targets": ex["targets"]})


_ENCODER_MLM_FEATURES = ("inputs", "targets", "mlm_targets", "mlm_weights")


def encoder_mlm_objective(dataset, output_features):
    """MLM on the encoder's ``inputs`` (the context) while ``targets`` (the continuation)
    stay the decoder's: adds ``mlm_targets`` (uncorrupted context) and ``mlm_weights``."""
    size, mask, sp_size, _ = _ids(output_features)
    dataset = dataset.map(lambda ex: {**ex, "_continuation": ex["targets"]})
    dataset = pp.mlm(dataset, vocab_size=size, mask_id=mask, random_token_max_id=sp_size,
                     feature="inputs")
    return dataset.map(lambda ex: {"inputs": ex["inputs"], "targets": ex["_continuation"],
                                   "mlm_targets": ex["targets"],
                                   "mlm_weights": ex["mlm_weights"]})


def keep_encoder_mlm_features(dataset):
    return dataset.map(lambda ex: {k: ex[k] for k in _ENCODER_MLM_FEATURES})


def align_mlm_with_inputs(dataset):
    """After ``append_eos_after_trim`` cut ``inputs`` and appended EOS: the same cut and EOS
    (weight 0) for ``mlm_targets`` / ``mlm_weights``, so they stay position-aligned."""
    def f(ex):
        n = tf.size(ex["inputs"]) - 1
        out = dict(ex)
        out["mlm_targets"] = tf.concat([tf.cast(ex["mlm_targets"][:n], tf.int32),
                                        [pp.EOS_ID]], 0)
        out["mlm_weights"] = tf.concat([tf.cast(ex["mlm_weights"][:n], tf.float32), [0.0]], 0)
        return out
    return dataset.map(f, num_parallel_calls=tf.data.AUTOTUNE)


# ------------------------------------------------------------------ registration
def register_encdec_task(name: str, objective: str, lang: str = "zh"):
    """Register (once) a Shop World encoder-decoder task with one of ``OBJECTIVES``."""
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; use one of {sorted(OBJECTIVES)}")
    vocab = shop_world_vocabulary(lang)
    spec = {"kind": "shop_encdec", "objective": objective, "lang": lang,
            "world_seed": WORLD_SEED, "extra_ids": EXTRA_IDS,
            "vocab": {k: v for k, v in vocab.spec.items() if k != "cache_dir"}}

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
                *OBJECTIVES[objective],
                *((keep_encoder_mlm_features, seqio.preprocessors.append_eos_after_trim,
                   align_mlm_with_inputs) if objective in ENCODER_MLM_OBJECTIVES else
                  (keep_inputs_and_targets, seqio.preprocessors.append_eos_after_trim)),
            ],
            output_features={
                "inputs": seqio.Feature(vocabulary=vocab, add_eos=True, dtype=tf.int32),
                "targets": seqio.Feature(vocabulary=vocab, add_eos=True, dtype=tf.int32),
            },
            shuffle_buffer_size=SHUFFLE_BUFFER_SIZE,
        )

    return registry.register_task(name, spec, build)


# The context keeps its end, so the continuation still follows it directly.
_RANDOM_LENGTHS = functools.partial(pp.random_lengths, min_length=PLUG_MIN_LENGTH,
                                    max_length=PLUG_MAX_LENGTH, keep_end=("inputs",))
OBJECTIVES = {
    "mlm": (mlm_objective,),
    "infill": (infilling_objective,),
    "sentshuffle": (sentence_shuffle_objective,),
    "ar": (pp.palm_split,),
    "plug_gen": (pp.palm_split, _RANDOM_LENGTHS),
    "plug_mlm": (mlm_objective, _RANDOM_LENGTHS),
    "plug_genae": (pp.palm_split, _RANDOM_LENGTHS, encoder_mlm_objective),
}
ENCODER_MLM_OBJECTIVES = ("plug_genae",)  # train with converter "encdec_mlm"

for _lang in ("zh", "en"):
    for _obj in ("mlm", "infill", "sentshuffle", "ar"):
        register_encdec_task(f"palm2_{_obj}_{_lang}_v1", _obj, _lang)
    register_encdec_task(f"plug_gen_{_lang}_v1", "plug_gen", _lang)
    register_encdec_task(f"plug_mlm_{_lang}_v1", "plug_mlm", _lang)
    register_encdec_task(f"plug_genae_{_lang}_v1", "plug_genae", _lang)
    registry.register_mixture(f"palm2_denoise_{_lang}_v1",
                              [(f"palm2_infill_{_lang}_v1", 1.0),
                               (f"palm2_sentshuffle_{_lang}_v1", 1.0)])
    registry.register_mixture(f"plug_genmlm_{_lang}_v1",
                              [(f"plug_gen_{_lang}_v1", 1.0), (f"plug_mlm_{_lang}_v1", 1.0)])
    curriculum.register_curriculum(f"palm2_pretrain_{_lang}_v1", [
        curriculum.Stage(f"palm2_mlm_{_lang}_v1", until_fraction=1 / 3),
        curriculum.Stage(f"palm2_denoise_{_lang}_v1", until_fraction=2 / 3),
        curriculum.Stage(f"palm2_ar_{_lang}_v1"),
    ])
    curriculum.register_curriculum(f"plug_stage2_{_lang}_v2", [
        curriculum.Stage(f"plug_genae_{_lang}_v1", until_fraction=0.9),
        curriculum.Stage(f"plug_gen_{_lang}_v1"),
    ])
    curriculum.register_curriculum(f"plug_stage2_{_lang}_v1", [
        curriculum.Stage(f"plug_genmlm_{_lang}_v1", until_fraction=0.9),
        curriculum.Stage(f"plug_gen_{_lang}_v1"),
    ])
