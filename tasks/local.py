"""Your own files as a seqio task: ``local_task(...)`` (gin: ``@local.local_task()``).

A user task is one gin file or a few ``--gin.`` lines on top of an experiment, e.g. to
fine-tune GPT-3 tiny on your JSONL (docs/data.md, "Your own data")::

    plug-train --gin_file=experiments/gpt3/shop_tiny.gin --gin.MODEL_DIR=/tmp/mine \\
        --gin_file=runs/local_data.gin --gin.LOCAL_TRAIN="'/data/train.jsonl'"

``local_task`` reads and checks every record first (``plug_jax.data.local_files``: a bad
record is one ``file:line`` error line and exit 2, before anything is written), registers
the task ``name`` (``local_<objective>_<lang>_v<N>``) and returns its name, so
``MIXTURE_OR_TASK_NAME = @local.local_task()`` works. Splits: ``train``; ``validation`` (its
own file, or every 20th record of the train file held out); ``test`` (its own file, or the
validation records). Kinds and the feature converter each feeds:

=================  ==========================================  =========================
``lm``             ``targets`` = the text + EOS                ``decoder`` (GPT-3)
``text2text``      ``inputs`` / ``targets`` + EOS              ``encdec`` (PALM, PLUG)
``classify``       ``[CLS] inputs`` and ``label``              ``encoder`` (StructBERT)
``image_caption``  ``image`` float32 ``[S, S, 3]`` (CLIP-      ``image_text`` (CLIP)
                   normalised, read with Pillow) + ``targets``
=================  ==========================================  =========================

The vocabulary is the Shop World one of ``lang`` (what the Shop World experiments train
with), a SentencePiece model file (``vocabulary='/path/spm.model'``), a BERT WordPiece
``vocab.txt``, or a plug-convert output folder, whose carried vocabulary is used
(runs/converted.gin sets that).
"""
from __future__ import annotations

import functools
import os
from typing import Optional, Sequence

from plug_jax.data import configure_tensorflow

tf = configure_tensorflow()

import seqio  # noqa: E402

from plug_jax.data import local_files, registry  # noqa: E402
from plug_jax.data.vocab import ShopWorldVocabulary  # noqa: E402

from .curricula import shop_world_vocabulary  # noqa: E402
from .gpt3 import WORLD_SEED  # noqa: E402
from .structbert import keep, prepend_cls, trim_inputs  # noqa: E402

registry.add_task_prefixes("local")
HOLD_OUT_EVERY = 20


def _vocabulary(kind: str, lang: str, path: Optional[str]):
    if path:
        from plug_jax.convert import vocabulary as carried
        try:
            if os.path.isdir(path):  # a plug-convert output: the vocabulary it carries
                vocab = carried.carried_vocabulary(path)
                if vocab is None:
                    raise local_files.LocalDataError(
                        f"vocabulary {path} is a folder that carries no vocabulary (its "
                        f"metadata.json names none); fix: pass a vocab.txt or SentencePiece "
                        f".model file, or convert again with --vocab")
                return vocab
            return carried.load(path)
        except carried.VocabularyError as e:
            raise local_files.LocalDataError(str(e)) from None
    if kind in ("lm", "image_caption"):
        return ShopWorldVocabulary(None, seed=WORLD_SEED, lang=lang)
    return shop_world_vocabulary(lang)


def _splits(train, validation, test, read):
    train_recs = read(train)
    if validation:
        val_recs = read(validation)
    else:  # hold out every 20th record (at least one) of the train file
        val_recs = train_recs[::HOLD_OUT_EVERY]
        train_recs = [r for i, r in enumerate(train_recs) if i % HOLD_OUT_EVERY] or train_recs
    return {"train": train_recs, "validation": val_recs,
            "test": read(test) if test else val_recs}


def _dataset_fn(split, shuffle_files=False, seed=None, *, records, kind, image_size):
    recs = records[split]
    if kind == "image_caption":
        from plug_jax.data import media
        sig = {"image": tf.TensorSpec((image_size, image_size, 3), tf.float32),
               "text": tf.TensorSpec((), tf.string)}

        def gen():
            for r in recs:
                yield {"image": media.load_image(r["image"], image_size), "text": r["text"]}
        return tf.data.Dataset.from_generator(gen, output_signature=sig)
    keys = sorted(recs[0])
    cols = {k: [r[k] for r in recs] for k in keys}
    return tf.data.Dataset.from_tensor_slices(
        {k: tf.constant(v, tf.int32 if k == "label" else tf.string) for k, v in cols.items()})


def local_task(name: str = "local_lm_zh_v1", train: str = None, validation: Optional[str] = None,
               test: Optional[str] = None, *, kind: str = "lm", lang: str = "zh",
               vocabulary: Optional[str] = None, text_key: str = "text",
               inputs_key: str = "inputs", targets_key: str = "targets",
               label_key: str = "label", image_key: str = "image",
               labels: Sequence[str] = (), image_size: int = 64) -> str:
    """Register (once) a task over your files; returns its name (see the module docstring)."""
    if not train:
        raise local_files.LocalDataError("local_task needs a train file; fix: set train= "
                                         "(gin: local.local_task.train or LOCAL_TRAIN)")
    if os.path.isdir(train):
        return _prepared_task(name, train, kind=kind, lang=lang, vocabulary=vocabulary,
                              text_key=text_key, inputs_key=inputs_key,
                              targets_key=targets_key, label_key=label_key)
    read = functools.partial(local_files.read_records, kind=kind, text_key=text_key,
                             inputs_key=inputs_key, targets_key=targets_key,
                             label_key=label_key, image_key=image_key, labels=tuple(labels))
    records = _splits(train, validation, test, read)
    vocab = _vocabulary(kind, lang, vocabulary)
    files = [os.path.abspath(p) for p in (train, validation, test) if p]
    spec = {"kind": f"local_{kind}", "files": files,
            "sizes": [os.path.getsize(p) for p in files], "lang": lang,
            "vocabulary": vocabulary, "labels": list(labels), "image_size": int(image_size)}
    tokens = seqio.Feature(vocabulary=vocab, add_eos=True, dtype=tf.int32)
    if kind == "lm":
        steps = [functools.partial(seqio.preprocessors.rekey, key_map={"targets": "text"}),
                 functools.partial(seqio.preprocessors.tokenize, copy_pretokenized=False),
                 seqio.preprocessors.append_eos_after_trim]
        features = {"targets": tokens}
    elif kind == "text2text":
        steps = [functools.partial(seqio.preprocessors.tokenize, copy_pretokenized=False),
                 keep("inputs", "targets"), seqio.preprocessors.append_eos_after_trim]
        features = {"inputs": tokens, "targets": tokens}
    elif kind == "classify":
        steps = [functools.partial(seqio.preprocessors.tokenize, copy_pretokenized=False),
                 prepend_cls, trim_inputs, keep("inputs", "label")]
        features = {"inputs": seqio.Feature(vocabulary=vocab, add_eos=False, dtype=tf.int32)}
    else:  # image_caption
        steps = [functools.partial(seqio.preprocessors.rekey,
                                   key_map={"image": "image", "targets": "text"}),
                 functools.partial(seqio.preprocessors.tokenize, copy_pretokenized=False),
                 seqio.preprocessors.append_eos_after_trim]
        features = {"targets": tokens}
    sizes = {k: len(v) for k, v in records.items()}
    return _register(name, spec, lambda: seqio.FunctionDataSource(
        functools.partial(_dataset_fn, records=records, kind=kind, image_size=int(image_size)),
        splits=tuple(records), num_input_examples=sizes), steps, features)


def _register(name: str, spec: dict, make_source, steps, features) -> str:
    """Register (once) the task ``name`` over ``make_source()``; a different task already
    under that name is one ``LocalDataError`` line. Returns ``name``."""
    def build():
        return seqio.TaskRegistry.add(name, source=make_source(), preprocessors=steps,
                                      output_features=features, shuffle_buffer_size=1024)

    try:
        registry.register_task(name, spec, build)
    except ValueError as e:
        raise local_files.LocalDataError(str(e)) from None
    return name


def _prepared_task(name: str, directory: str, *, kind: str, lang: str,
                   vocabulary: Optional[str], text_key: str, inputs_key: str,
                   targets_key: str, label_key: str) -> str:
    """A task over a prepared record-files directory (``plug_jax.data.record_files``): read
    by global example index, each process only its own records (docs/data.md)."""
    from plug_jax.data import record_files
    from plug_jax.data.indexed import RecordFilesSource
    try:
        files = record_files.RecordFiles(directory)
    except record_files.RecordFileError as e:
        raise local_files.LocalDataError(str(e)) from None
    keys = {"lm": {"text": text_key}, "text2text": {"inputs": inputs_key,
                                                      "targets": targets_key},
            "classify": {"inputs": inputs_key, "label": label_key}}
    if kind not in keys:
        raise local_files.LocalDataError(
            f"kind {kind!r} cannot read a prepared records directory ({directory}); fix: "
            f"use one of {sorted(keys)}, or pass {kind} files")
    key_map = keys[kind]
    features = {src: (tf.int64 if ours == "label" else tf.string)
                for ours, src in key_map.items()}
    splits = files.splits
    if "train" not in splits:
        raise local_files.LocalDataError(f"{directory} has no prepared 'train' split (it has "
                                         f"{list(splits)}); fix: prepare one")
    vocab = _vocabulary(kind, lang, vocabulary)
    tokens = seqio.Feature(vocabulary=vocab, add_eos=True, dtype=tf.int32)
    rekey = functools.partial(seqio.preprocessors.rekey, key_map=dict(key_map))
    tokenize = functools.partial(seqio.preprocessors.tokenize, copy_pretokenized=False)
    if kind == "lm":
        steps = [functools.partial(seqio.preprocessors.rekey, key_map={"targets": text_key}),
                 tokenize, seqio.preprocessors.append_eos_after_trim]
        out = {"targets": tokens}
    elif kind == "text2text":
        steps = [rekey, tokenize, seqio.preprocessors.append_eos_after_trim]
        out = {"inputs": tokens, "targets": tokens}
    else:
        steps = [rekey, tokenize, prepend_cls, trim_inputs, keep("inputs", "label")]
        out = {"inputs": seqio.Feature(vocabulary=vocab, add_eos=False, dtype=tf.int32)}
    index = os.path.join(os.path.abspath(directory), record_files.INDEX_FILE)
    spec = {"kind": f"local_records_{kind}", "directory": os.path.abspath(directory),
            "index_bytes": os.path.getsize(index), "lang": lang, "vocabulary": vocabulary,
            "keys": dict(key_map)}
    return _register(name, spec, lambda: RecordFilesSource(os.path.abspath(directory),
                                                           features, splits), steps, out)
