"""Shop World as a TFDS dataset: builder ``shop_world``, one config per modality or task group.

Generated locally by the project's own generator (no download): ``prepare("text_zh")``
writes ``shop_world/text_zh/1.0.0`` under the TFDS data directory
(``$PLUG_JAX_CACHE/tfds``, default ``~/.cache/plug_jax/tfds``) once, and seqio tasks read it
with ``ShopWorldTfdsSource``, a ``seqio.TfdsDataSource`` that prepares the config on first
use. Example ``i`` of split ``s`` in any config is the generator's ``(seed, s, i)`` example,
so TFDS and the plain Python iterators agree.

A config is a ``ConfigSpec``: its features (a ``tfds.features.FeaturesDict`` factory), an
``example(seed, split, index)`` function returning plain Python / numpy values, and split
sizes. New modalities slot in by adding a spec to ``CONFIG_SPECS`` before the builder class
is created (this module's bottom), which keeps every config's version and examples stable.

    python -m plug_jax.data.shop_world_tfds [--configs text_zh,text_en] [--data_dir DIR]
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np

from plug_jax.data import configure_tensorflow

tf = configure_tensorflow()

import seqio  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402

from plug_jax.data import shop_world  # noqa: E402
from plug_jax.data.vocab import default_cache_dir  # noqa: E402

WORLD_SEED = 0
VERSION = "1.0.0"


@dataclasses.dataclass(frozen=True)
class ConfigSpec:
    name: str
    description: str
    features: Callable[[], "tfds.features.FeaturesDict"]
    example: Callable[[int, str, int], Mapping[str, Any]]
    split_sizes: Mapping[str, int]
    default: bool = True  # prepared by ``prepare_defaults`` / ``make prepare``


# --------------------------------------------------------------------------- text configs
_ATTRS = ("category", "colour", "material", "style", "audience", "season", "brand", "size")


def _text_features():
    f = tfds.features
    d = {k: f.Text() for k in ("product_id", "lang", "title", "description", "review",
                               "lm_document", *_ATTRS)}
    d.update(price=f.Scalar(np.int64), label=f.Scalar(np.int64), rating=f.Scalar(np.int64),
             description_sentences=f.Sequence(f.Text()))
    return f.FeaturesDict(d)


def _text_example(lang: str):
    def example(seed: int, split: str, index: int) -> dict:
        ex = shop_world.text_example(seed, split, index, lang)
        out = {k: ex[k] for k in ("product_id", "lang", "title", "description", "review",
                                  *_ATTRS)}
        out.update(price=int(ex["price"]), label=int(ex["label"]), rating=int(ex["rating"]),
                   description_sentences=list(ex["description_sentences"]),
                   lm_document=shop_world.format_lm_document(ex))
        return out
    return example


TEXT_SPLIT_SIZES = {"train": 20_000, "validation": 1_000, "test": 1_000}

CONFIG_SPECS: dict[str, ConfigSpec] = {}


def add_config(spec: ConfigSpec) -> None:
    if "ShopWorld" in globals():
        raise RuntimeError("add_config after the builder class exists has no effect; add the "
                           "spec in plug_jax/data/shop_world_tfds.py before the class")
    CONFIG_SPECS[spec.name] = spec


for _lang in ("zh", "en"):
    add_config(ConfigSpec(
        f"text_{_lang}", f"Product records with title, description and review ({_lang}).",
        _text_features, _text_example(_lang), TEXT_SPLIT_SIZES))


# ----------------------------------------------------------------------------- builder
class ShopWorldBuilderConfig(tfds.core.BuilderConfig):
    def __init__(self, spec: ConfigSpec):
        super().__init__(name=spec.name, version=VERSION, description=spec.description)
        self.spec = spec


class ShopWorld(tfds.core.GeneratorBasedBuilder):
    """Shop World: the embedded, deterministic, generated e-commerce world of plug_jax."""

    VERSION = tfds.core.Version(VERSION)
    BUILDER_CONFIGS = [ShopWorldBuilderConfig(s) for s in CONFIG_SPECS.values()]

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self, description=self.builder_config.spec.description,
            features=self.builder_config.spec.features(),
            homepage="https://github.com/ (plug_jax, generated locally)")

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        return {split: self._generate_examples(split, n)
                for split, n in self.builder_config.spec.split_sizes.items()}

    def _generate_examples(self, split: str, n: int):
        example = self.builder_config.spec.example
        for i in range(int(n)):
            yield i, example(WORLD_SEED, split, i)


# --------------------------------------------------------------------------- preparing
def data_dir(path: Optional[str] = None) -> str:
    return str(path) if path else os.path.join(default_cache_dir(), "tfds")


def _check_config(config: str) -> None:
    if config not in CONFIG_SPECS:
        raise ValueError(f"unknown shop_world config {config!r}; use one of "
                         f"{sorted(CONFIG_SPECS)}")


def prepare(config: str, path: Optional[str] = None, *, verbose: bool = False) -> str:
    """Generate and write ``shop_world/<config>`` once; returns the data directory."""
    _check_config(config)
    d = data_dir(path)
    builder = tfds.builder(f"shop_world/{config}:{VERSION}", data_dir=d)
    if not builder.is_prepared():
        t0 = time.time()
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(
                download_mode=tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS))
        if verbose:
            sizes = CONFIG_SPECS[config].split_sizes
            print(f"prepared shop_world/{config} ({sum(sizes.values()):,} examples) in "
                  f"{time.time() - t0:.1f}s under {d}", flush=True)
    elif verbose:
        print(f"shop_world/{config} is already prepared under {d}", flush=True)
    return d


def prepare_defaults(path: Optional[str] = None, *, verbose: bool = False) -> list[str]:
    names = [n for n, s in CONFIG_SPECS.items() if s.default]
    for n in names:
        prepare(n, path, verbose=verbose)
    return names


class ShopWorldTfdsSource(seqio.TfdsDataSource):
    """``seqio.TfdsDataSource`` over ``shop_world/<config>`` that prepares it at first use.

    The data directory is resolved when the source is first read (not at registration), so
    ``PLUG_JAX_CACHE`` set after import is honoured.
    """

    def __init__(self, config: str, path: Optional[str] = None):
        _check_config(config)
        self._shop_config, self._shop_path, self._shop_ready = config, path, False
        super().__init__(tfds_name=f"shop_world/{config}:{VERSION}",
                         splits=tuple(CONFIG_SPECS[config].split_sizes))

    def _ensure(self) -> None:
        if not self._shop_ready:
            self.tfds_dataset.override_data_dir(prepare(self._shop_config, self._shop_path))
            self._shop_ready = True

    def get_dataset(self, *args, **kwargs):
        self._ensure()
        return super().get_dataset(*args, **kwargs)

    def num_input_examples(self, split: str) -> int:
        return int(CONFIG_SPECS[self._shop_config].split_sizes[split])

    def list_shards(self, split: str):
        self._ensure()
        return super().list_shards(split)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m plug_jax.data.shop_world_tfds",
                                 description="Prepare Shop World TFDS configs.")
    ap.add_argument("--configs", default="", help="comma-separated (default: the default set)")
    ap.add_argument("--data_dir", default=None)
    args = ap.parse_args(argv)
    t0 = time.time()
    try:
        if args.configs:
            for c in args.configs.split(","):
                prepare(c.strip(), args.data_dir, verbose=True)
        else:
            prepare_defaults(args.data_dir, verbose=True)
    except ValueError as e:
        print(f"plug_jax: error: {e}", file=sys.stderr)
        return 2
    print(f"done in {time.time() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
