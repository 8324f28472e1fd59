"""mPLUG fine-tuning tasks on the real corpora at the published resolutions: COCO Karpathy
captions and VQA v2, read from their published files by ``plug_jax.data.corpora_vision``
(nothing is downloaded; for users who have the data).

=================================  =====================================================
task                               one example per ... / features
=================================  =====================================================
``mplug_coco_caption_{S}_en_v1``   caption (Karpathy train + restval, val, test):
                                   ``inputs`` = ``""`` (not tokenized, as the Shop World
                                   caption tasks), ``targets`` = the caption
``mplug_vqav2_{S}_en_v1``          question (train2014, val2014): ``inputs`` = ``[CLS]``
                                   + the question, ``targets`` = the answer
=================================  =====================================================

S is 384 (mPLUG base's VQA resolution) or 336 (large's VQA and captioning resolution).
Every task gives ``image`` float32 ``[S, S, 3]`` (decoded, resized to S x S bicubic with
antialias, then CLIP-normalised by ``multimodal.normalize_pixels``), ``image_id`` and the
token features, like the Shop World tasks of ``tasks/mplug.py``, so the ``image_text``
feature converter and ``models.ImageTextLM`` read them unchanged (that converter reads
``image``, ``targets`` and, with an ``inputs`` length, ``inputs``; it needs no
``product_id``, which is a Shop World key). The VQA tasks also keep ``question_id`` and the
ten human ``answers`` (strings, for a VQA-score evaluation outside the trainer).

Text is tokenized with mPLUG's released vocabulary, the bert-base-uncased WordPiece
``vocab.txt`` (30522 ids; ``[SEP]`` = EOS ends ``inputs`` and ``targets``). The file is
read from ``$PLUG_JAX_MPLUG_VOCAB`` if set, else ``$PLUG_JAX_DATA_DIR/mplug/vocab.txt``
(default ``~/.cache/plug_jax/data/mplug/vocab.txt``), resolved when a dataset is first
built (:class:`plug_jax.data.wordpiece.LazyWordPieceVocabulary`): registration never
touches the files, so importing ``plug_jax.tasks`` works without them. Every released or
converted mPLUG checkpoint has that file (``plug-convert`` copies it to
``<output>/vocab/vocab.txt``); pointing ``$PLUG_JAX_MPLUG_VOCAB`` there also satisfies the
trainer's check that a converted ``INIT_CHECKPOINT`` and the task use the same vocabulary.
The images and annotations are in ``$PLUG_JAX_DATA_DIR/coco`` and
``$PLUG_JAX_DATA_DIR/vqa_v2`` (the layouts are in ``plug_jax/data/corpora_vision.py``).

The question starts with ``[CLS]`` because the released model's text encoder reads
BERT-tokenized ``[CLS] question [SEP]``; ``plug-infer`` encodes a typed question without
it, so start such a prompt with ``[CLS]`` (WordPiece encodes the literal as that one id).

Single target (a simplification): ``targets`` is the reader's ``answer``, VQA v2's
``multiple_choice_answer`` (the most frequent of the ten human answers). The released VQA
fine-tuning trains on every distinct answer of a question, each loss weighted by its
frequency among the ten (and distils soft targets from a momentum model); these tasks do
not, so their loss and exact-match accuracy are against the one answer, not the VQA score.
"""
from __future__ import annotations

import functools
import os
from typing import Optional

from plug_jax.data import configure_tensorflow

tf = configure_tensorflow()

import seqio  # noqa: E402

from plug_jax.data import corpora_vision, multimodal, registry  # noqa: E402
from plug_jax.data.corpora import default_data_dir  # noqa: E402
from plug_jax.data.wordpiece import LazyWordPieceVocabulary  # noqa: E402

from .corpora_vision import SHUFFLE_BUFFER_SIZE  # noqa: E402

registry.add_task_prefixes("mplug")

VOCAB_ENV = "PLUG_JAX_MPLUG_VOCAB"
VOCAB_SIZE = 30522  # bert-base-uncased, the released mPLUG embedding rows
IMAGE_SIZES = (384, 336)
KINDS = {"caption": "coco", "vqa": "vqa_v2"}  # task kind -> corpus (reader)


def mplug_vocab_path() -> str:
    """``$PLUG_JAX_MPLUG_VOCAB`` if set, else ``<$PLUG_JAX_DATA_DIR>/mplug/vocab.txt``
    (reads the environment only; the file is not opened)."""
    path = os.environ.get(VOCAB_ENV)
    return path if path else str(default_data_dir("mplug") / "vocab.txt")


def mplug_vocabulary() -> LazyWordPieceVocabulary:
    """A new lazy bert-base-uncased vocabulary at :func:`mplug_vocab_path` (the tasks share
    one, ``VOCABULARY``, so the file is read once per process)."""
    return LazyWordPieceVocabulary(
        mplug_vocab_path, do_lower_case=True, expected_vocab_size=VOCAB_SIZE,
        missing_hint=(f"put the bert-base-uncased vocab.txt ({VOCAB_SIZE} lines; every "
                      f"released or converted mPLUG checkpoint has one, plug-convert copies "
                      f"it to <output>/vocab/vocab.txt) there, or set ${VOCAB_ENV} to its "
                      f"path"))


VOCABULARY = mplug_vocabulary()


def _format(dataset: tf.data.Dataset, *, kind: str) -> tf.data.Dataset:
    """Decoded reader examples -> ``image`` (CLIP-normalised float32), ``inputs`` and
    ``targets`` strings, and the ids kept for evaluation."""
    def caption(ex):
        return {"image": multimodal.normalize_pixels(ex["image"]), "image_id": ex["image_id"],
                "caption_id": ex["caption_id"], "inputs": tf.constant(""),
                "targets": ex["caption"]}

    def vqa(ex):
        return {"image": multimodal.normalize_pixels(ex["image"]), "image_id": ex["image_id"],
                "question_id": ex["question_id"], "answers": ex["answers"],
                "inputs": ex["question"], "targets": ex["answer"]}

    return dataset.map(caption if kind == "caption" else vqa,
                       num_parallel_calls=tf.data.AUTOTUNE)


def prepend_bos(dataset: tf.data.Dataset, output_features) -> tf.data.Dataset:
    """Tokenized ``inputs`` -> ``[bos_id] + inputs`` (``[CLS]`` for WordPiece)."""
    bos = int(output_features["inputs"].vocabulary.bos_id)

    def f(ex):
        out = dict(ex)
        out["inputs"] = tf.concat([[bos], tf.cast(ex["inputs"], tf.int32)], 0)
        return out

    return dataset.map(f, num_parallel_calls=tf.data.AUTOTUNE)


def register_corpus_task(name: str, kind: str, image_size: int, *,
                         data_dir: Optional[str] = None) -> seqio.Task:
    """Register (once) an mPLUG fine-tuning task: ``kind`` = ``'caption'`` (COCO Karpathy,
    one example per caption) or ``'vqa'`` (VQA v2, one example per question), images at
    ``image_size``. ``data_dir`` fixes the corpus folder (default: ``default_data_dir`` of
    the corpus, resolved when a dataset is built)."""
    if kind not in KINDS:
        raise ValueError(f"unknown mPLUG corpus task kind {kind!r}; use one of {sorted(KINDS)}")
    corpus = KINDS[kind]
    size = int(image_size)
    spec = {"kind": f"mplug_corpus_{kind}", "corpus": corpus, "image_size": size,
            "data_dir": None if data_dir is None else str(data_dir),
            "vocab": {"kind": "wordpiece", "size": VOCAB_SIZE, "do_lower_case": True,
                      "file": f"${VOCAB_ENV}, else $PLUG_JAX_DATA_DIR/mplug/vocab.txt"}}
    token = seqio.Feature(vocabulary=VOCABULARY, add_eos=True, dtype=tf.int32)
    output_features = ({"targets": token} if kind == "caption"
                       else {"inputs": token, "targets": token})
    reader_kwargs = {"image_size": size}
    if kind == "caption":
        reader_kwargs["per_caption"] = True

    def build():
        source = seqio.FunctionDataSource(
            corpora_vision.vision_dataset_fn(corpus, data_dir, **reader_kwargs),
            splits=corpora_vision.CORPORA[corpus][2])
        steps = [functools.partial(_format, kind=kind),
                 functools.partial(seqio.preprocessors.tokenize, copy_pretokenized=False)]
        if kind == "vqa":
            steps.append(prepend_bos)
        steps.append(seqio.preprocessors.append_eos_after_trim)
        return seqio.TaskRegistry.add(name, source=source, preprocessors=steps,
                                      output_features=output_features,
                                      shuffle_buffer_size=SHUFFLE_BUFFER_SIZE)

    return registry.register_task(name, spec, build)


def caption_task_name(image_size: int) -> str:
    return f"mplug_coco_caption_{int(image_size)}_en_v1"


def vqa_task_name(image_size: int) -> str:
    return f"mplug_vqav2_{int(image_size)}_en_v1"


for _size in IMAGE_SIZES:
    register_corpus_task(caption_task_name(_size), "caption", _size)
    register_corpus_task(vqa_task_name(_size), "vqa", _size)
