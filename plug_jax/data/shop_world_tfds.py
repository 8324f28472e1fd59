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
import contextlib
import dataclasses
import functools
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
from plug_jax.data.shop_world import spans  # noqa: E402
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


TEXT_SPLIT_SIZES = {"train": 10_000, "validation": 1_000, "test": 1_000}

CONFIG_SPECS: dict[str, ConfigSpec] = {}


def add_config(spec: ConfigSpec) -> None:
    if "ShopWorld" in globals():
        raise RuntimeError("add_config after the builder class exists has no effect; add the "
                           "spec in plug_jax/data/shop_world_tfds.py before the class")
    CONFIG_SPECS[spec.name] = spec


for _lang in ("zh", "en"):
    add_config(ConfigSpec(
        f"text_{_lang}", f"Product records with title, description and review ({_lang}).",
        _text_features, _text_example(_lang), TEXT_SPLIT_SIZES, default=_lang == "zh"))


# ------------------------------------------------------------------- images and videos
def _seq_text():
    return tfds.features.Sequence(tfds.features.Text())


def _image_features(size: int):
    f = tfds.features
    d = {"image": f.Image(shape=(size, size, 3)),
         "boxes": f.Tensor(shape=(None, 4), dtype=np.int32),
         "boxes_norm": f.Tensor(shape=(None, 4), dtype=np.float32),
         "referring_box": f.Tensor(shape=(None, 4), dtype=np.int32),
         "product_id": f.Text(), "vqa_type": _seq_text()}
    for k in ("categories", "colours", "materials", "positions", "product_ids"):
        d[k] = _seq_text()
    for lang in ("zh", "en"):
        d[f"caption_{lang}"] = f.Text()
        for k in ("vqa_question", "vqa_answer", "referring_phrase"):
            d[f"{k}_{lang}"] = _seq_text()
    return f.FeaturesDict(d)


def _image_example(size: int):
    def example(seed: int, split: str, index: int) -> dict:
        out = {}
        for lang in ("zh", "en"):
            ex = shop_world.image_example(seed, split, index, size=size, lang=lang)
            out[f"caption_{lang}"] = ex["caption"]
            out[f"vqa_question_{lang}"] = [q for q, _, _ in ex["vqa"]]
            out[f"vqa_answer_{lang}"] = [a for _, a, _ in ex["vqa"]]
            out[f"referring_phrase_{lang}"] = [p for p, _ in ex["referring"]]
        out.update(image=ex["image"], boxes=np.asarray(ex["boxes"], np.int32),
                   boxes_norm=np.asarray(ex["boxes_norm"], np.float32),
                   referring_box=np.asarray([b for _, b in ex["referring"]], np.int32),
                   product_id=ex["product_id"], vqa_type=[t for _, _, t in ex["vqa"]],
                   **{k: list(ex[k]) for k in ("categories", "colours", "materials",
                                               "positions", "product_ids")})
        return out
    return example


def _video_features(frames: int, size: int):
    f = tfds.features
    d = {"frames": f.Video(shape=(frames, size, size, 3)),
         "boxes": f.Tensor(shape=(frames, 4), dtype=np.int32),
         "event_type": _seq_text(),
         "event_start": f.Tensor(shape=(None,), dtype=np.int32),
         "event_end": f.Tensor(shape=(None,), dtype=np.int32),
         "tqa_type": _seq_text()}
    for k in ("product_id", "category", "colour", "material"):
        d[k] = f.Text()
    for lang in ("zh", "en"):
        d[f"caption_{lang}"] = f.Text()
        for k in ("event_caption", "tqa_question", "tqa_answer"):
            d[f"{k}_{lang}"] = _seq_text()
    return f.FeaturesDict(d)


def _video_example(frames: int, size: int):
    def example(seed: int, split: str, index: int) -> dict:
        out = {}
        for lang in ("zh", "en"):
            ex = shop_world.video_example(seed, split, index, num_frames=frames, size=size,
                                          lang=lang)
            out[f"caption_{lang}"] = ex["caption"]
            out[f"event_caption_{lang}"] = [e["caption"] for e in ex["events"]]
            out[f"tqa_question_{lang}"] = [q for q, _, _ in ex["temporal_qa"]]
            out[f"tqa_answer_{lang}"] = [a for _, a, _ in ex["temporal_qa"]]
        out.update(frames=ex["frames"], boxes=np.asarray(ex["boxes"], np.int32),
                   event_type=[e["type"] for e in ex["events"]],
                   event_start=np.asarray([e["start_frame"] for e in ex["events"]], np.int32),
                   event_end=np.asarray([e["end_frame"] for e in ex["events"]], np.int32),
                   tqa_type=[t for _, _, t in ex["temporal_qa"]],
                   **{k: ex[k] for k in ("product_id", "category", "colour", "material")})
        return out
    return example


# ------------------------------------------------------ queries, knowledge, dialogue
def _query_features():
    f = tfds.features
    return f.FeaturesDict({"query": f.Text(), "lang": f.Text(), "intent": f.Text(),
                           "intent_label": f.Scalar(np.int64), "category": f.Text(),
                           "category_label": f.Scalar(np.int64), "product_id": f.Text()})


def _query_example(seed: int, split: str, index: int) -> dict:
    """Example ``i`` is in language ``QUERY_LANGS[i % 6]`` about product ``i // 6``."""
    langs = shop_world.QUERY_LANGS
    ex = shop_world.query_example(seed, split, index // len(langs), langs[index % len(langs)])
    return {"query": ex["query"], "lang": ex["lang"], "intent": ex["intent"],
            "intent_label": int(ex["intent_label"]), "category": ex["query_category"],
            "category_label": int(ex["category_label"]), "product_id": ex["product_id"]}


def _knowledge_features():
    f = tfds.features
    span = {"start": f.Tensor(shape=(None,), dtype=np.int32),
            "end": f.Tensor(shape=(None,), dtype=np.int32)}
    return f.FeaturesDict({
        "product_id": f.Text(), "title": f.Text(), "description": f.Text(),
        "triple_relation": _seq_text(), "triple_object": _seq_text(),
        "triple_source": _seq_text(),
        **{f"triple_{k}": v for k, v in span.items()},
        "glossary_term": _seq_text(), "glossary_definition": _seq_text(),
        **{f"glossary_{k}": v for k, v in span.items()},
        "qa_attribute": _seq_text(), "qa_question": _seq_text(), "qa_answer": _seq_text()})


def _knowledge_example(lang: str):
    def example(seed: int, split: str, index: int) -> dict:
        ex = shop_world.text_example(seed, split, index, lang,
                                     kinds=("attribute_qa", "glossary", "triples"))
        t, g, q = ex["triples"], ex["glossary_entries"], ex["qa_pairs"]
        return {
            "product_id": ex["product_id"], "title": ex["triples_title"],
            "description": ex["triples_text"],
            "triple_relation": [x["relation"] for x in t],
            "triple_object": [x["object"] for x in t],
            "triple_source": [x["source"] for x in t],
            "triple_start": np.asarray([x["start"] for x in t], np.int32),
            "triple_end": np.asarray([x["end"] for x in t], np.int32),
            "glossary_term": [x["term"] for x in g],
            "glossary_definition": [x["definition"] for x in g],
            "glossary_start": np.asarray([x["start"] for x in g], np.int32),
            "glossary_end": np.asarray([x["end"] for x in g], np.int32),
            "qa_attribute": [x["attribute"] for x in q],
            "qa_question": [x["question"] for x in q],
            "qa_answer": [x["answer"] for x in q]}
    return example


def _product_image_features(size: int):
    f = tfds.features
    d = {"image": f.Image(shape=(size, size, 3)), "product_id": f.Text(),
         "category": f.Text(), "colour": f.Text(), "material": f.Text()}
    for lang in ("zh", "en"):
        for k in ("title", "description", "caption"):
            d[f"{k}_{lang}"] = f.Text()
    return f.FeaturesDict(d)


def _product_image_example(size: int):
    """One product alone in the picture, with its own title and description: the pairs that
    image-to-title / description and text-to-image (M6) learn from."""
    def example(seed: int, split: str, index: int) -> dict:
        p = shop_world.world.product(seed, split, index)
        out = {"product_id": p.product_id, "category": p.category, "colour": p.colour,
               "material": p.material}
        for lang in ("zh", "en"):
            ex = shop_world.image_example(seed, split, index, size=size, lang=lang,
                                          num_objects=1)
            out["image"] = ex["image"]
            out[f"caption_{lang}"] = ex["caption"]
            out[f"title_{lang}"] = spans.title_of(p, lang)
            out[f"description_{lang}"] = spans.description_of(p, lang)["description"]
        return out
    return example


def _dialogue_features():
    f = tfds.features
    return f.FeaturesDict({
        "product_id": f.Text(), "dialogue": f.Text(), "speaker": _seq_text(),
        "turn": _seq_text(), "profile": f.Text(), "persona": _seq_text(),
        "passage_title": _seq_text(), "passage": _seq_text(),
        "gold_passage": f.Scalar(np.int64)})


def _dialogue_example(lang: str):
    def example(seed: int, split: str, index: int) -> dict:
        ex = shop_world.text_example(seed, split, index, lang, kinds=("dialogue",))
        return {"product_id": ex["product_id"], "dialogue": ex["dialogue_text"],
                "speaker": [t["speaker"] for t in ex["dialogue_turns"]],
                "turn": [t["text"] for t in ex["dialogue_turns"]],
                "profile": ex["dialogue_profile"]["text"],
                "persona": list(ex["dialogue_persona"]),
                "passage_title": [p["title"] for p in ex["dialogue_passages"]],
                "passage": [p["text"] for p in ex["dialogue_passages"]],
                "gold_passage": int(ex["dialogue_gold_passage"])}
    return example


add_config(ConfigSpec("images_64", "64x64 product images with boxes, captions, VQA and "
                      "referring phrases (zh, en).", functools.partial(_image_features, 64),
                      _image_example(64), {"train": 2_000, "validation": 200, "test": 200}))
add_config(ConfigSpec("images_64_xl", "64x64 product images (as images_64; the same "
                      "examples at the same indices) with 20000 training and 1000 test "
                      "images: enough distinct pictures for a ViT trained from scratch to "
                      "generalise to unseen attribute combinations.",
                      functools.partial(_image_features, 64), _image_example(64),
                      {"train": 20_000, "validation": 200, "test": 1_000}, default=False))
add_config(ConfigSpec("images_224", "224x224 product images (as images_64).",
                      functools.partial(_image_features, 224), _image_example(224),
                      {"train": 4_000, "validation": 400, "test": 400}, default=False))
add_config(ConfigSpec("products_64", "64x64 pictures of one product each, with its title, "
                      "description and caption (zh, en) and its category, colour and "
                      "material.", functools.partial(_product_image_features, 64),
                      _product_image_example(64),
                      {"train": 4_000, "validation": 200, "test": 400}, default=False))
add_config(ConfigSpec("products_128", "128x128 pictures of one product each (as products_64: "
                      "the same products, layouts and labels at the same indices; the image "
                      "tokenizers' larger resolution).",
                      functools.partial(_product_image_features, 128),
                      _product_image_example(128),
                      {"train": 4_000, "validation": 200, "test": 400}, default=False))
add_config(ConfigSpec("videos_8", "8-frame 64x64 product videos with events, captions, "
                      "moments and temporal QA (zh, en).",
                      functools.partial(_video_features, 8, 64), _video_example(8, 64),
                      {"train": 800, "validation": 100, "test": 100}))
add_config(ConfigSpec("videos_16", "16-frame 64x64 product videos (as videos_8).",
                      functools.partial(_video_features, 16, 64), _video_example(16, 64),
                      {"train": 1_500, "validation": 150, "test": 150}, default=False))
add_config(ConfigSpec("videos_8_xl", "8-frame 64x64 product videos (as videos_8; the same "
                      "examples at the same indices) with 4000 training and 600 test videos: "
                      "whole-set video-text retrieval over 500+ held-out videos.",
                      functools.partial(_video_features, 8, 64), _video_example(8, 64),
                      {"train": 4_000, "validation": 100, "test": 600}, default=False))
add_config(ConfigSpec("queries", "Shopping-intent queries in " + ", ".join(
    shop_world.QUERY_LANGS) + " with intent and category labels.", _query_features,
    _query_example, {"train": 12_000, "validation": 600, "test": 600}))
for _lang in ("zh", "en"):
    add_config(ConfigSpec(f"knowledge_{_lang}", "Descriptions with span-aligned knowledge "
                          f"triples, glossary mentions and attribute QA ({_lang}).",
                          _knowledge_features, _knowledge_example(_lang),
                          {"train": 2_000, "validation": 200, "test": 200},
                          default=_lang == "zh"))
    add_config(ConfigSpec(f"dialogue_{_lang}", "Multi-turn shopping dialogues with profile, "
                          f"persona and retrieved passages ({_lang}).", _dialogue_features,
                          _dialogue_example(_lang), {"train": 3_000, "validation": 300,
                                                     "test": 300}, default=_lang == "zh"))


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


@contextlib.contextmanager
def _preparing(d: str, name: str):
    """One process at a time prepares ``name`` under ``d`` (an exclusive ``flock``): TFDS
    renames its finished directory into place, which fails if another process (a pytest
    worker, a second host process) finished the same config first."""
    import fcntl  # noqa: PLC0415
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f".prepare-{name}.lock"), "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def prepare(config: str, path: Optional[str] = None, *, verbose: bool = False) -> str:
    """Generate and write ``shop_world/<config>`` once; returns the data directory."""
    _check_config(config)
    d = data_dir(path)
    builder = tfds.builder(f"shop_world/{config}:{VERSION}", data_dir=d)
    if not builder.is_prepared():
        with _preparing(d, config):
            return _prepare_locked(config, d, verbose)
    if verbose:
        print(f"shop_world/{config} is already prepared under {d}", flush=True)
    return d


def _prepare_locked(config: str, d: str, verbose: bool) -> str:
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
        prepare_records(n, path, verbose=verbose)
    return names


# --------------------------------------------------------------------------- random access
RECORDS_SHARDS = 16  # ArrayRecord shards per split of the random-access layout


def records_dir(path: Optional[str] = None) -> str:
    """TFDS data directory of the ArrayRecord layout (beside the TFRecord one)."""
    return os.path.join(data_dir(path), "array_record")


def _text_only(config: str, features: Optional[Sequence[str]] = None) -> bool:
    """Whether the config's (selected) features are all text or scalars: the random-access
    reader parses those in batches in the graph, the others with TFDS's decoding."""
    feats = CONFIG_SPECS[config].features()
    names = list(features) if features is not None else list(feats.keys())
    return all(isinstance(feats[n], (tfds.features.Text, tfds.features.Scalar))
               for n in names if n in feats)


def prepare_records(config: str, path: Optional[str] = None, *, verbose: bool = False) -> str:
    """Write ``shop_world/<config>`` once in the random-access layout: ``RECORDS_SHARDS``
    ArrayRecord shards per split (``tfds`` ``file_format="array_record"``), read by index
    (``ShopWorldTfdsSource.indexed_dataset``). Returns the data directory."""
    _check_config(config)
    d = records_dir(path)
    builder = tfds.builder(f"shop_world/{config}:{VERSION}", data_dir=d,
                           file_format="array_record")
    if builder.is_prepared():
        return d
    with _preparing(d, config):
        builder = tfds.builder(f"shop_world/{config}:{VERSION}", data_dir=d,
                               file_format="array_record")
        if not builder.is_prepared():  # (another process may have prepared it meanwhile)
            t0 = time.time()
            builder.download_and_prepare(
                download_config=tfds.download.DownloadConfig(
                    download_mode=tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS,
                    num_shards=RECORDS_SHARDS))
            if verbose:
                print(f"prepared shop_world/{config} as ArrayRecord ({RECORDS_SHARDS} shards "
                      f"per split) in {time.time() - t0:.1f}s under {d}", flush=True)
    return d


def _shard_files(builder, split: str) -> list[str]:
    pattern = os.path.join(builder.data_dir, f"shop_world-{split}.array_record-*")
    return sorted(tf.io.gfile.glob(pattern))


def _corrupt_shard_error(builder, split: str, error: BaseException):
    """The one-line error naming the first shard of ``split`` that does not open or read."""
    from array_record.python import array_record_module  # noqa: PLC0415

    from plug_jax.data.record_files import RecordFileError  # noqa: PLC0415
    fix = (f"fix: delete {builder.data_dir} and prepare it again "
           f"(python -m plug_jax.data.shop_world_tfds)")
    info = builder.info.splits[split]
    files = _shard_files(builder, split)
    if len(files) != len(info.shard_lengths):
        return RecordFileError(f"shop_world {split} has {len(files)} ArrayRecord shards under "
                               f"{builder.data_dir}, its dataset_info lists "
                               f"{len(info.shard_lengths)}; {fix}")
    for path, want in zip(files, info.shard_lengths):
        try:
            reader = array_record_module.ArrayRecordReader(path)
            n = reader.num_records()
            reader.read(list(range(n)))
            reader.close()
        except (RuntimeError, OSError, ValueError) as e:
            reason = " ".join(str(e).split())[:160]
            return RecordFileError(f"prepared shard {path} is truncated or corrupt ({reason}); "
                                   f"{fix}")
        if n != want:
            return RecordFileError(f"prepared shard {path} holds {n} records, dataset_info "
                                   f"says {want}; {fix}")
    reason = " ".join(str(error).split())[:200]
    return RecordFileError(f"shop_world {split} under {builder.data_dir} cannot be read "
                           f"({reason}); {fix}")


class ShopWorldTfdsSource(seqio.TfdsDataSource):
    """``seqio.TfdsDataSource`` over ``shop_world/<config>`` that prepares it at first use.

    The data directory is resolved when the source is first read (not at registration), so
    ``PLUG_JAX_CACHE`` set after import is honoured.
    """

    def __init__(self, config: str, path: Optional[str] = None,
                 features: Optional[Sequence[str]] = None):
        _check_config(config)
        self._shop_config, self._shop_path, self._shop_ready = config, path, False
        self._shop_features = None if features is None else tuple(features)
        decoders = None
        if features is not None:  # read only these features (TFDS partial decoding)
            decoders = tfds.decode.PartialDecoding({name: True for name in features})
        super().__init__(tfds_name=f"shop_world/{config}:{VERSION}",
                         splits=tuple(CONFIG_SPECS[config].split_sizes), decoders=decoders)

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

    # Random access (plug_jax.data.indexed.IndexedSource): every config. Text and scalar
    # features are parsed in the graph in batches; images, videos and tensors go through
    # TFDS's own decoding of each record (FeaturesDict.deserialize_example).
    def _records_source(self, split: str):
        key = ("_records", split)
        cache = self.__dict__.setdefault("_shop_records", {})
        if key not in cache:
            d = prepare_records(self._shop_config, self._shop_path)
            builder = tfds.builder(f"shop_world/{self._shop_config}:{VERSION}", data_dir=d,
                                   file_format="array_record")
            from array_record.python import array_record_data_source  # noqa: PLC0415
            try:
                # The serialized tf.train.Examples, in TFDS's order (shards concatenated);
                # the features are parsed in the graph (TFDS's Python decoding of every
                # feature cost 5 ms per 16 records).
                src = array_record_data_source.ArrayRecordDataSource(
                    _shard_files(builder, split))
                if len(src) != builder.info.splits[split].num_examples:
                    raise ValueError(f"{len(src)} records, dataset_info says "
                                     f"{builder.info.splits[split].num_examples}")
            except (RuntimeError, OSError, ValueError) as e:
                raise _corrupt_shard_error(builder, split, e) from None
            cache[key] = (builder, src)
        return cache[key]

    def indexed_num_records(self, split: str) -> int:
        builder, src = self._records_source(split)
        files = _shard_files(builder, split)
        lengths = builder.info.splits[split].shard_lengths
        if len(files) != len(lengths):
            raise _corrupt_shard_error(builder, split, ValueError("shard count"))
        return len(src)

    def indexed_dataset(self, split: str, indices, *, chunk: int = 64):
        feats = CONFIG_SPECS[self._shop_config].features()
        names = list(self._shop_features or feats.keys())

        def read(idx):
            builder, src = self._records_source(split)
            try:
                # One record at a time: ArrayRecordDataSource.__getitems__ starts a thread
                # pool per call (one thread per shard touched), 30x slower here for 16
                # records on 2 cores (7.2 ms against 0.2 ms).
                rows = [src[int(i)] for i in idx]
            except (RuntimeError, OSError, ValueError) as e:
                raise _corrupt_shard_error(builder, split, e) from None
            return np.array(rows, dtype=object)

        def serialized(idx):
            raw = tf.numpy_function(read, [idx], tf.string, stateful=False)
            raw.set_shape(idx.shape)
            return raw

        raws = indices.batch(max(int(chunk), 1)).map(serialized)
        if _text_only(self._shop_config, names):
            spec = {n: tf.io.FixedLenFeature(
                [], tf.string if isinstance(feats[n], tfds.features.Text)
                else tf.as_dtype(feats[n].np_dtype)) for n in names}
            return raws.map(lambda raw: tf.io.parse_example(raw, spec)).unbatch()
        selected = tfds.decode.PartialDecoding({n: True for n in names}).extract_features(
            feats)
        return raws.unbatch().map(selected.deserialize_example,
                                  num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


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
