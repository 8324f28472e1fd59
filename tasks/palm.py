"""PALM fine-tuning tasks on Shop World: title generation (summarisation).

``palm_title_{zh,en}_v1``: ``inputs`` = the product description (all its sentences, as
``text_example`` writes it), ``targets`` = the product title, both in the Shop World
SentencePiece vocabulary of the language with 100 extra ids (the vocabulary of
``tasks/curricula.py``, so a ``palm2_pretrain_*`` checkpoint fine-tunes on it directly),
EOS appended after trimming. Train with ``converter="encdec"``.

Splits and sizes are the LM tasks' (``SHOPLM_SPLIT_SIZES``): example ``i`` of a split is
product ``i`` of that Shop World split, and ``test`` holds attribute combinations never
seen in ``train`` (compositional generalisation). The source is a pure function of
``(world seed, split, index)``; :func:`title_example` / :func:`references` give the raw
text of the same examples for evaluation (ROUGE-L against the titles, the lead-sentence
baseline on the descriptions).
"""
from __future__ import annotations

import functools
from typing import Mapping


from plug_jax.data import configure_tensorflow

tf = configure_tensorflow()

import seqio  # noqa: E402

from plug_jax.data import registry, shop_world  # noqa: E402

from .curricula import EXTRA_IDS, shop_world_vocabulary  # noqa: E402
from .gpt3 import SHOPLM_SPLIT_SIZES, WORLD_SEED, shop_world_source  # noqa: E402

SHUFFLE_BUFFER_SIZE = 128
TITLE_TASKS = {"zh": "palm_title_zh_v1", "en": "palm_title_en_v1"}


def title_example(world_seed: int, split: str, index: int, lang: str) -> dict[str, str]:
    """``{"inputs": description, "targets": title}`` of Shop World example ``index``."""
    ex = shop_world.text_example(int(world_seed), split, int(index), lang,
                                 kinds=("title", "description"))
    return {"inputs": ex["description"], "targets": ex["title"]}


def references(split: str = "test", num: int = 64, lang: str = "zh", start: int = 0,
               world_seed: int = WORLD_SEED) -> list[dict[str, str]]:
    """Raw ``{"inputs", "targets"}`` text of examples ``start..start+num-1`` of ``split``
    (the same examples, in index order, that the task's unshuffled split yields)."""
    return [title_example(world_seed, split, i, lang) for i in range(start, start + num)]


def shop_world_title_source(lang: str = "zh", *, world_seed: int = WORLD_SEED,
                            split_sizes: Mapping[str, int] = SHOPLM_SPLIT_SIZES
                            ) -> seqio.FunctionDataSource:
    """``{"index", "inputs": description, "targets": title}`` of each split."""
    return shop_world_source(title_example, {"inputs": tf.string, "targets": tf.string},
                             lang, world_seed=world_seed, split_sizes=split_sizes)


def _keep_inputs_and_targets(dataset):
    return dataset.map(lambda ex: {"inputs": ex["inputs"], "targets": ex["targets"]})


def register_title_task(name: str, lang: str = "zh", *, world_seed: int = WORLD_SEED,
                        split_sizes: Mapping[str, int] = SHOPLM_SPLIT_SIZES) -> seqio.Task:
    """Register (once) a Shop World description -> title task; returns it."""
    shop_world.world.check_lang(lang)
    vocab = shop_world_vocabulary(lang)
    spec = {"kind": "shop_title", "lang": lang, "world_seed": int(world_seed),
            "extra_ids": EXTRA_IDS, "split_sizes": {k: int(v) for k, v in split_sizes.items()},
            "vocab": {k: v for k, v in vocab.spec.items() if k != "cache_dir"}}

    def build():
        return seqio.TaskRegistry.add(
            name,
            source=shop_world_title_source(lang, world_seed=world_seed,
                                           split_sizes=split_sizes),
            preprocessors=[
                functools.partial(seqio.preprocessors.tokenize, copy_pretokenized=False),
                seqio.CacheDatasetPlaceholder(),
                _keep_inputs_and_targets,
                seqio.preprocessors.append_eos_after_trim,
            ],
            output_features={
                "inputs": seqio.Feature(vocabulary=vocab, add_eos=True, dtype=tf.int32),
                "targets": seqio.Feature(vocabulary=vocab, add_eos=True, dtype=tf.int32),
            },
            shuffle_buffer_size=SHUFFLE_BUFFER_SIZE,
        )

    return registry.register_task(name, spec, build)


def description_inputs(split: str = "test", num: int = 4, lang: str = "zh", start: int = 0,
                       world_seed: int = WORLD_SEED) -> list[str]:
    """The descriptions (``inputs``) of examples ``start..start+num-1``: plug-infer prompts
    for title generation (the default test split: attribute combinations unseen in train)."""
    return [ex["inputs"] for ex in references(split, num, lang, start, world_seed)]


for _lang, _name in TITLE_TASKS.items():
    register_title_task(_name, _lang)
