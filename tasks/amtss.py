"""AMTSS tasks: Shop World multilingual intent classification (one teacher per language, one
student), and XNLI through the existing reader (``plug_xnli_*``) for users who have it.

==========================================  ==================================================
``amtss_teacher_shop_{lang}_v1``            one language's shopping queries (Shop World
                                            ``queries``): ``[CLS] query`` -> intent (5
                                            classes, ``INTENTS``); for
                                            ``EncoderModel(objectives=('classify',),
                                            num_labels=5)`` on the ``encoder`` converter
``amtss_distill_shop_multi_v1``             the student's task: every query of the six
                                            languages with its ``lang`` id and the six
                                            teachers' precomputed logits
                                            (``teacher_logits [6, 5]``, ``teacher_mask [6]``)
                                            read from the teacher-logits file
                                            (``default_teacher_logits_path()``); the
                                            ``amtss_student`` converter
``amtss_distill_shop_<key>_multi_v1``       the same over another teacher-logits file
                                            (``student_task(teacher_logits=PATH)``, what gin's
                                            ``TEACHER_LOGITS`` sets; ``key`` hashes the path)
``amtss_teacher_xnli_{lang}_v1``            XNLI in one language through the existing reader
                                            (``corpora.read_xnli``), for users who have it:
                                            ``[CLS] premise [SEP] hypothesis`` -> 3 labels,
                                            tokenized with their SentencePiece model
                                            (``XNLI_SPM_FILE``); zh en de fr es ru ar vi th
==========================================  ==================================================

Indexing (the ``queries`` config of ``shop_world_tfds``): query example ``i`` of a split is
in language ``QUERY_LANGS[i % 6]`` about product ``i // 6``, and the six queries of one
product are translations of one another (same intent, same template). Teacher ``lang``'s
example ``j`` is query example ``6 j + QUERY_LANGS.index(lang)`` (train 2000 / validation
100 / test 100 per language); the student's example ``i`` is query example ``i`` (train 12000
/ validation 600 / test 600, or the prefix the teacher-logits file scored).

Teacher scoring (``plug_jax.families.amtss.score``): teacher ``t`` scores the example's
*translation in language t* (query ``6 (i // 6) + t``), so every example gets all six
teachers' logits; the max-margin weights then choose among them per example.

Vocabulary (``vocabulary()``): one SentencePiece model (unigram, ``VOCAB_SIZE`` pieces, the
Shop World trainer options) trained on the 12000 training queries of the six languages,
cached in the Shop World vocabulary cache (``vocab/`` of ``$PLUG_JAX_CACHE``), plus
``EXTRA_IDS`` extra ids; ``[CLS]`` is the last id (``vocab_size - 1``). Queries are at most
25 pieces, so ``TASK_FEATURE_LENGTHS = {'inputs': 32}`` holds every one.

The teacher-logits file is read when a split's data (or size) is first asked for, not at
import; a missing file gives one line naming the command that writes it
(:func:`plug_jax.families.amtss.logits_file.read`).
"""
from __future__ import annotations

import functools
import hashlib
import os
from typing import Optional

import numpy as np

from plug_jax.data import configure_tensorflow

tf = configure_tensorflow()

import seqio  # noqa: E402

from plug_jax.data import registry, shop_world  # noqa: E402
from plug_jax.data import vocab as shop_vocab  # noqa: E402
from plug_jax.data.indexed import IndexedFunctionSource  # noqa: E402
from plug_jax.families.amtss import logits_file  # noqa: E402

from .gpt3 import WORLD_SEED, shop_world_source  # noqa: E402

QUERY_LANGS = tuple(shop_world.QUERY_LANGS)  # ("zh", "en", "de", "fr", "es", "ja")
INTENTS = tuple(shop_world.INTENTS)
QUERY_SPLIT_SIZES = {"train": 12_000, "validation": 600, "test": 600}
VOCAB_SIZE = 1024
EXTRA_IDS = 8  # [CLS] is the last; the rest pad the table to a multiple of 8
SHUFFLE_BUFFER_SIZE = 128
_CHUNK = 64


def teacher_split_sizes() -> dict[str, int]:
    n = len(QUERY_LANGS)
    return {k: v // n for k, v in QUERY_SPLIT_SIZES.items()}


# ------------------------------------------------------------------------- the queries
def query_record(world_seed: int, split: str, index: int) -> dict:
    """Query example ``index`` of the ``queries`` config: ``text``, ``label`` (intent),
    ``lang`` (index into ``QUERY_LANGS``), ``product`` (``index // 6``)."""
    n = len(QUERY_LANGS)
    lang = index % n
    ex = shop_world.query_example(int(world_seed), split, int(index) // n, QUERY_LANGS[lang])
    return {"text": ex["query"], "label": int(ex["intent_label"]), "lang": lang,
            "product": int(index) // n}


def translation_index(index: int, lang: int) -> int:
    """The query example that is example ``index``'s translation into language ``lang``."""
    n = len(QUERY_LANGS)
    return (int(index) // n) * n + int(lang)


# ------------------------------------------------------------------------- vocabulary
@functools.lru_cache(maxsize=2)
def vocabulary_corpus(seed: int = WORLD_SEED) -> tuple[str, ...]:
    """The 12000 training queries of the six languages, in index order."""
    return tuple(query_record(seed, "train", i)["text"]
                 for i in range(QUERY_SPLIT_SIZES["train"]))


class QueryVocabulary(seqio.SentencePieceVocabulary):
    """The AMTSS query vocabulary (module docstring), trained and cached at first use."""

    def __init__(self, vocab_size: int = VOCAB_SIZE, seed: int = WORLD_SEED,
                 cache_dir: Optional[str] = None, extra_ids: int = EXTRA_IDS):
        self._query_spec = (int(vocab_size), int(seed),
                            None if cache_dir is None else str(cache_dir))
        super().__init__(sentencepiece_model_file="", extra_ids=extra_ids)

    @property
    def spec(self) -> dict:
        vocab_size, seed, cache_dir = self._query_spec
        return {"vocab_size": vocab_size, "seed": seed, "corpus": "shop_world_queries_train",
                "cache_dir": cache_dir}

    def _ensure_file(self) -> None:
        if not self._sentencepiece_model_file:
            vocab_size, seed, cache_dir = self._query_spec
            self._sentencepiece_model_file = shop_vocab.ensure_corpus_model(
                vocabulary_corpus(seed), vocab_size, "amtss_queries", cache_dir)

    def _model_context(self):
        if self._model is None:
            self._ensure_file()
        return super()._model_context()

    @property
    def sentencepiece_model_file(self) -> str:
        self._ensure_file()
        return self._sentencepiece_model_file

    @property
    def _base_vocab_size(self) -> int:
        return self._query_spec[0] + self.extra_ids  # known without training the model

    def __eq__(self, other):
        if not isinstance(other, QueryVocabulary):
            return NotImplemented if not isinstance(other, seqio.Vocabulary) else False
        return (self._query_spec, self.extra_ids) == (other._query_spec, other.extra_ids)

    def __hash__(self):
        return hash(("amtss_queries", self._query_spec, self.extra_ids))

    def __repr__(self) -> str:
        return (f"QueryVocabulary(vocab_size={self._query_spec[0]}, seed={self._query_spec[1]}"
                f", extra_ids={self.extra_ids})")


@functools.lru_cache(maxsize=None)
def vocabulary() -> QueryVocabulary:
    return QueryVocabulary()


def cls_id(vocab) -> int:
    return vocab.vocab_size - 1


def encode_query(vocab, text: str, length: int) -> list[int]:
    """``[CLS] query`` ids as the tasks give them (cut to ``length``)."""
    return [cls_id(vocab), *vocab.encode(text)][:length]


# ------------------------------------------------------------------------ preprocessors
def prepend_cls(dataset, output_features):
    cls = cls_id(output_features["inputs"].vocabulary)
    return dataset.map(lambda ex: {**ex, "inputs": tf.concat(
        [[cls], tf.cast(ex["inputs"], tf.int32)], 0)}, num_parallel_calls=tf.data.AUTOTUNE)


def trim_inputs(dataset, sequence_length):
    n = int(sequence_length["inputs"])
    return dataset.map(lambda ex: {**ex, "inputs": ex["inputs"][:n]},
                       num_parallel_calls=tf.data.AUTOTUNE)


def keep(*names):
    def f(dataset):
        return dataset.map(lambda ex: {k: ex[k] for k in names if k in ex},
                           num_parallel_calls=tf.data.AUTOTUNE)
    return f


def _output_features():
    return {"inputs": seqio.Feature(vocabulary=vocabulary(), add_eos=False, dtype=tf.int32)}


def _vocab_spec() -> dict:
    return {k: v for k, v in vocabulary().spec.items() if k != "cache_dir"}


# ----------------------------------------------------------------------------- teachers
def teacher_task_name(lang: str) -> str:
    return f"amtss_teacher_shop_{lang}_v1"


def _teacher_example(world_seed: int, split: str, index: int, lang: str) -> dict:
    rec = query_record(world_seed, split, translation_index(index * len(QUERY_LANGS),
                                                            QUERY_LANGS.index(lang)))
    return {"text": rec["text"], "label": rec["label"]}


def register_teacher_task(lang: str):
    if lang not in QUERY_LANGS:
        raise ValueError(f"AMTSS Shop World teachers come in {QUERY_LANGS}, not {lang!r}")
    name = teacher_task_name(lang)

    def build():
        return seqio.TaskRegistry.add(
            name,
            source=shop_world_source(_teacher_example, {"text": tf.string, "label": tf.int32},
                                     lang, split_sizes=teacher_split_sizes()),
            preprocessors=[
                functools.partial(seqio.preprocessors.rekey,
                                  key_map={"inputs": "text", "label": "label"}),
                functools.partial(seqio.preprocessors.tokenize, copy_pretokenized=False),
                prepend_cls, trim_inputs, keep("inputs", "label")],
            output_features=_output_features(), shuffle_buffer_size=SHUFFLE_BUFFER_SIZE)

    spec = {"kind": "amtss_teacher_shop", "lang": lang, "world_seed": WORLD_SEED,
            "vocab": _vocab_spec()}
    return registry.register_task(name, spec, build)


def teacher_task(lang: str = "zh") -> str:
    """The name of teacher ``lang``'s task (gin: ``MIXTURE_OR_TASK_NAME =
    @amtss_tasks.teacher_task()`` with ``amtss_tasks.teacher_task.lang = %LANG``)."""
    return register_teacher_task(lang).name


# ------------------------------------------------------------------------------ student
def default_teacher_logits_path(cache_dir: Optional[str] = None) -> str:
    """Where the Shop World teacher logits live by default: ``amtss/`` of the Shop World
    cache dir (``$PLUG_JAX_CACHE`` or ``~/.cache/plug_jax``)."""
    return str(shop_vocab.default_cache_dir(cache_dir) / "amtss"
               / "shop_teacher_logits_v1.npz")


def _student_split(path: str, split: str) -> dict:
    data = logits_file.read(path)
    if split not in data["splits"]:
        raise ValueError(f"AMTSS: {path} holds no {split!r} teacher logits (it has "
                         f"{sorted(data['splits'])}); score that split with "
                         f"{logits_file.SCORE_COMMAND}")
    return data["splits"][split]


def _student_records(indices, *, path: str, split: str, world_seed: int):
    d = _student_split(path, split)
    rows = [query_record(world_seed, split, int(i)) for i in indices]
    label = np.array([r["label"] for r in rows], np.int32)
    lang = np.array([r["lang"] for r in rows], np.int32)
    idx = np.asarray(indices, np.int64)
    if len(idx) and (np.any(d["label"][idx] != label) or np.any(d["lang"][idx] != lang)):
        bad = int(idx[np.flatnonzero((d["label"][idx] != label) | (d["lang"][idx] != lang))[0]])
        raise ValueError(f"AMTSS: {path} does not match the Shop World queries at {split} "
                         f"example {bad} (label / language differ); rescore with "
                         f"{logits_file.SCORE_COMMAND}")
    return (np.array([r["text"].encode("utf-8") for r in rows], dtype=object), label, lang,
            d["logits"][idx].astype(np.float32), d["mask"][idx].astype(np.float32))


def student_source(path: str, world_seed: int = WORLD_SEED) -> IndexedFunctionSource:
    def records(split: str, indices: tf.data.Dataset, chunk: int = _CHUNK):
        # read here (eagerly: a missing file fails now, in one line), not in the traced map
        n, c = _student_split(path, split)["logits"].shape[1:]
        gen = functools.partial(_student_records, path=path, split=split,
                                world_seed=world_seed)

        @tf.autograph.experimental.do_not_convert
        def to_example(idx):
            text, label, lang, logits, mask = tf.numpy_function(
                gen, [idx], (tf.string, tf.int32, tf.int32, tf.float32, tf.float32),
                stateful=False)
            text.set_shape(idx.shape)
            label.set_shape(idx.shape)
            lang.set_shape(idx.shape)
            logits.set_shape(idx.shape.concatenate([n, c]))
            mask.set_shape(idx.shape.concatenate([n]))
            return {"index": idx, "text": text, "label": label, "lang": lang,
                    "teacher_logits": logits, "teacher_mask": mask}
        return indices.batch(int(chunk)).map(to_example).unbatch()

    def size(split: str) -> int:
        return int(_student_split(path, split)["logits"].shape[0])

    def dataset_fn(split: str, shuffle_files: bool, seed: Optional[int] = None):
        n = size(split)
        ds = tf.data.Dataset.range(n)
        if shuffle_files:
            ds = ds.shuffle(n, seed=seed, reshuffle_each_iteration=True)
        return records(split, ds)

    return IndexedFunctionSource(dataset_fn, records, splits=tuple(QUERY_SPLIT_SIZES),
                                 num_records_fn=size)


def student_task_name(teacher_logits: Optional[str] = None) -> str:
    if teacher_logits is None:
        return "amtss_distill_shop_multi_v1"
    key = hashlib.sha256(os.path.abspath(teacher_logits).encode()).hexdigest()[:8]
    return f"amtss_distill_shop_{key}_multi_v1"


def register_student_task(teacher_logits: Optional[str] = None):
    """The student's task over ``teacher_logits`` (None: ``default_teacher_logits_path()``,
    resolved when the data is first read)."""
    name = student_task_name(teacher_logits)
    path = (os.path.abspath(teacher_logits) if teacher_logits is not None
            else default_teacher_logits_path())

    def build():
        return seqio.TaskRegistry.add(
            name, source=student_source(path),
            preprocessors=[
                functools.partial(seqio.preprocessors.rekey, key_map={
                    "inputs": "text", "label": "label", "lang": "lang",
                    "teacher_logits": "teacher_logits", "teacher_mask": "teacher_mask"}),
                functools.partial(seqio.preprocessors.tokenize, copy_pretokenized=False),
                prepend_cls, trim_inputs,
                keep("inputs", "label", "lang", "teacher_logits", "teacher_mask")],
            output_features=_output_features(), shuffle_buffer_size=SHUFFLE_BUFFER_SIZE)

    spec = {"kind": "amtss_distill_shop", "teacher_logits": path, "world_seed": WORLD_SEED,
            "vocab": _vocab_spec()}
    return registry.register_task(name, spec, build)


def student_task(teacher_logits: Optional[str] = None) -> str:
    """The name of the student's task over ``teacher_logits`` (gin: ``MIXTURE_OR_TASK_NAME =
    @amtss_tasks.student_task()`` with ``amtss_tasks.student_task.teacher_logits =
    %TEACHER_LOGITS``; None: the default file)."""
    return register_student_task(teacher_logits).name


# --------------------------------------------------------------------------------- XNLI
# XNLI through the existing reader (plug_jax.data.corpora.read_xnli: train
# multinli.train.{lang}.tsv, validation xnli.dev.tsv, test xnli.test.tsv under
# $PLUG_JAX_DATA_DIR/xnli/), for users who have it: one teacher task per XNLI language that
# the task-name convention knows. Tokenized with the user's SentencePiece model
# (XNLI_SPM_FILE in that folder, e.g. XLM-R's sentencepiece.bpe.model) plus two extra ids,
# [CLS] (vocab_size - 2) and [SEP] (vocab_size - 1): [CLS] premise [SEP] hypothesis, token
# types 0 / 1, label entailment 0 / neutral 1 / contradiction 2. Nothing is read until a
# dataset is built. Not done for XNLI: the scoring job and the student task (its train split
# is one machine-translated file per language, parallel by line).
XNLI_LANGS = ("zh", "en", "de", "fr", "es", "ru", "ar", "vi", "th")
XNLI_SPM_FILE = "sentencepiece.bpe.model"
XNLI_LABELS = ("entailment", "neutral", "contradiction")


def xnli_vocabulary(spm_model: Optional[str] = None) -> seqio.SentencePieceVocabulary:
    from plug_jax.data import corpora
    path = spm_model or str(corpora.default_data_dir("xnli") / XNLI_SPM_FILE)
    return seqio.SentencePieceVocabulary(path, extra_ids=2)


def xnli_pair(dataset, output_features):
    """``[CLS] premise [SEP] hypothesis`` with token types 0 (through [SEP]) / 1."""
    size = output_features["inputs"].vocabulary.vocab_size
    cls, sep = size - 2, size - 1

    def f(ex):
        a = tf.cast(ex["premise"], tf.int32)
        b = tf.cast(ex["hypothesis"], tf.int32)
        ids = tf.concat([[cls], a, [sep], b], 0)
        types = tf.concat([tf.zeros([tf.size(a) + 2], tf.int32), tf.ones_like(b)], 0)
        return {"inputs": ids, "token_type_ids": types, "label": ex["label"]}

    return dataset.map(f, num_parallel_calls=tf.data.AUTOTUNE)


def trim_pair(dataset, sequence_length):
    n = int(sequence_length["inputs"])
    return dataset.map(lambda ex: {**ex, "inputs": ex["inputs"][:n],
                                   "token_type_ids": ex["token_type_ids"][:n]},
                       num_parallel_calls=tf.data.AUTOTUNE)


def register_xnli_teacher_task(lang: str, name: Optional[str] = None,
                               data_dir: Optional[str] = None,
                               spm_model: Optional[str] = None):
    """``amtss_teacher_xnli_{lang}_v1`` (or ``name``): XNLI in ``lang`` for
    ``EncoderModel(objectives=('classify',), num_labels=3)`` on the ``encoder`` converter.
    ``data_dir`` / ``spm_model`` default to ``$PLUG_JAX_DATA_DIR/xnli`` and its
    ``XNLI_SPM_FILE``."""
    from plug_jax.data import corpora
    name = name or f"amtss_teacher_xnli_{lang}_v1"
    vocab = xnli_vocabulary(spm_model)

    def build():
        source = seqio.FunctionDataSource(
            corpora.corpus_dataset_fn(corpora.read_xnli, corpora.XNLI_FEATURES, "xnli",
                                      data_dir, language=lang),
            splits=tuple(corpora.XNLI_FILES))
        feature = seqio.Feature(vocabulary=vocab, add_eos=False, dtype=tf.int32)
        text = seqio.Feature(vocabulary=vocab, add_eos=False, dtype=tf.int32, required=False)
        return seqio.TaskRegistry.add(
            name, source=source,
            preprocessors=[
                functools.partial(seqio.preprocessors.tokenize, copy_pretokenized=False),
                xnli_pair, trim_pair, keep("inputs", "token_type_ids", "label")],
            output_features={"inputs": feature, "premise": text, "hypothesis": text},
            shuffle_buffer_size=10_000)

    spec = {"kind": "amtss_teacher_xnli", "lang": lang,
            "data_dir": None if data_dir is None else str(data_dir),
            "spm_model": None if spm_model is None else str(spm_model)}
    return registry.register_task(name, spec, build)


for _lang in QUERY_LANGS:
    register_teacher_task(_lang)
register_student_task()
for _lang in XNLI_LANGS:
    register_xnli_teacher_task(_lang)
