"""seqio tasks of the Chinese GPT-3 family.

``gpt3_shoplm_zh_v1`` / ``gpt3_shoplm_en_v1``: language modelling on Shop World documents
(``title \\n description \\n 买家评价：review``), one document per example, tokenized with the
Shop World SentencePiece vocabulary of the language, EOS appended after trimming. Pack and
batch them with ``plug_jax.data.pipeline.get_batch_iterator`` (``DecoderFeatureConverter``).

Registration is idempotent: importing this module again (or under both ``tasks.gpt3`` and
``plug_jax.tasks.gpt3``), or calling ``register_shoplm_task`` again with the same arguments,
returns the registered task.
"""
from __future__ import annotations

import functools
from typing import Callable, Mapping, Optional

import numpy as np

from plug_jax.data import configure_tensorflow

tf = configure_tensorflow()

import seqio  # noqa: E402

from plug_jax.data import registry, shop_world  # noqa: E402
from plug_jax.data.indexed import IndexedFunctionSource  # noqa: E402
from plug_jax.data.vocab import ShopWorldVocabulary  # noqa: E402

# Fixed split sizes (number of documents; indices 0..n-1 of each Shop World split).
SHOPLM_SPLIT_SIZES = {"train": 50_000, "validation": 1_000, "test": 1_000}
WORLD_SEED = 0
_GENERATION_CHUNK = 64  # documents generated per numpy_function call
# The source already permutes the whole split every epoch, so seqio's example-level shuffle
# only needs a small buffer (it must fill before the first batch: 128 docs, not 1000).
SHUFFLE_BUFFER_SIZE = 128


def _generate(indices: np.ndarray, *, example_fn: Callable, features: Mapping[str, tf.DType],
              split: str, lang: str, world_seed: int) -> tuple[np.ndarray, ...]:
    rows = [example_fn(world_seed, split, int(i), lang) for i in indices]
    out = []
    for name, dtype in features.items():
        if dtype == tf.string:
            out.append(np.array([r[name].encode("utf-8") for r in rows], dtype=object))
        else:
            out.append(np.array([r[name] for r in rows], dtype=dtype.as_numpy_dtype))
    return tuple(out)


def shop_world_dataset(split: str, shuffle_files: bool, seed: Optional[int] = None, *,
                       example_fn: Callable, features: Mapping[str, tf.DType], lang: str,
                       world_seed: int, split_sizes: Mapping[str, int]) -> tf.data.Dataset:
    """``{"index": int64, **features}`` for examples ``0..n-1`` of ``split``, feature values
    from ``example_fn(world_seed, split, index, lang) -> dict``.

    With ``shuffle_files`` the indices are fully permuted (``seed``-determined, a new
    permutation each epoch when the dataset is repeated) before any text is generated, so
    shuffling costs nothing and needs no large buffer.
    """
    n = int(split_sizes[split])
    ds = tf.data.Dataset.range(n)
    if shuffle_files:
        ds = ds.shuffle(n, seed=seed, reshuffle_each_iteration=True)
    return shop_world_records(split, ds, example_fn=example_fn, features=features, lang=lang,
                              world_seed=world_seed)


def shop_world_records(split: str, indices: tf.data.Dataset, *, example_fn: Callable,
                       features: Mapping[str, tf.DType], lang: str, world_seed: int,
                       chunk: int = _GENERATION_CHUNK) -> tf.data.Dataset:
    """``{"index": int64, **features}`` of the Shop World examples ``indices`` (a dataset
    of int64 indices), in order, generated ``chunk`` per call: the records of the stream and
    of index-based input."""
    gen = functools.partial(_generate, example_fn=example_fn, features=dict(features),
                            split=split, lang=lang, world_seed=world_seed)

    def to_example(idx):
        values = tf.numpy_function(gen, [idx], tuple(features.values()), stateful=False)
        out = {"index": idx}
        for name, value in zip(features, values):
            value.set_shape(idx.shape)
            out[name] = value
        return out

    return indices.batch(int(chunk)).map(to_example).unbatch()


def shop_world_source(example_fn: Callable, features: Mapping[str, tf.DType],
                      lang: str = "zh", *, world_seed: int = WORLD_SEED,
                      split_sizes: Mapping[str, int] = SHOPLM_SPLIT_SIZES
                      ) -> IndexedFunctionSource:
    """A seqio source of Shop World examples (``shop_world_dataset``; by index,
    ``shop_world_records``): the LM documents
    here, titles (tasks/palm.py) and reviews (tasks/structbert.py) use it."""
    split_sizes = {k: int(v) for k, v in split_sizes.items()}
    for split in split_sizes:
        shop_world.world.check_split(split)
    fn = functools.partial(shop_world_dataset, example_fn=example_fn, features=dict(features),
                           lang=lang, world_seed=int(world_seed), split_sizes=split_sizes)
    records = functools.partial(shop_world_records, example_fn=example_fn,
                                features=dict(features), lang=lang, world_seed=int(world_seed))
    return IndexedFunctionSource(fn, records, splits=tuple(split_sizes),
                                 num_input_examples=split_sizes)


def _lm_example(world_seed: int, split: str, index: int, lang: str) -> dict:
    return {"text": shop_world.lm_document(world_seed, split, index, lang)}


def shop_world_lm_source(lang: str = "zh", *, world_seed: int = WORLD_SEED,
                         split_sizes: Mapping[str, int] = SHOPLM_SPLIT_SIZES
                         ) -> seqio.FunctionDataSource:
    """``{"index", "text"}``: the LM documents of each split."""
    return shop_world_source(_lm_example, {"text": tf.string}, lang, world_seed=world_seed,
                             split_sizes=split_sizes)


def register_shoplm_task(name: str, lang: str = "zh", *, world_seed: int = WORLD_SEED,
                         split_sizes: Mapping[str, int] = SHOPLM_SPLIT_SIZES,
                         vocab_size: Optional[int] = None) -> seqio.Task:
    """Register (once) a Shop World LM task; returns the registered task.

    Re-registering ``name`` with the same arguments returns the existing task; with
    different arguments it raises, since two meanings of one task name would make
    checkpoints and evaluations ambiguous.
    """
    shop_world.world.check_lang(lang)
    vocab = ShopWorldVocabulary(vocab_size, seed=world_seed, lang=lang)
    spec = {"kind": "shoplm", "lang": lang, "world_seed": int(world_seed),
            "split_sizes": {k: int(v) for k, v in split_sizes.items()},
            "vocab": {k: v for k, v in vocab.spec.items() if k != "cache_dir"}}

    def build():
        return add_lm_task(name, shop_world_lm_source(lang, world_seed=world_seed,
                                                      split_sizes=split_sizes), "text", vocab)

    return registry.register_task(name, spec, build)


def add_lm_task(name: str, source: seqio.DataSource, text_key: str,
                vocab: seqio.Vocabulary) -> seqio.Task:
    """``seqio.TaskRegistry.add`` of an LM task: ``source[text_key]`` tokenized as
    ``targets`` with eos (the preprocessors every Shop World LM task uses)."""
    return seqio.TaskRegistry.add(
        name,
        source=source,
        preprocessors=[
            functools.partial(seqio.preprocessors.rekey, key_map={"targets": text_key}),
            functools.partial(seqio.preprocessors.tokenize, copy_pretokenized=False),
            seqio.CacheDatasetPlaceholder(),
            seqio.preprocessors.append_eos_after_trim,
        ],
        output_features={
            "targets": seqio.Feature(vocabulary=vocab, add_eos=True, dtype=tf.int32),
        },
        shuffle_buffer_size=SHUFFLE_BUFFER_SIZE,
    )


SHOPLM_ZH = "gpt3_shoplm_zh_v1"
SHOPLM_EN = "gpt3_shoplm_en_v1"

register_shoplm_task(SHOPLM_ZH, "zh")
register_shoplm_task(SHOPLM_EN, "en")
