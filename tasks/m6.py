"""M6 tasks on Shop World: image-to-text, multimodality-to-text and text denoising.

The three pre-training transfers M6 names (MODEL_SPECS.md section 6), each a seqio task:

* ``m6_shop_title_{en,zh}_v1`` and ``m6_shop_description_{en,zh}_v1`` (image-to-text): a
  picture of one product (``shop_world/products_64``) -> its title / its description.
* ``m6_shop_title128_{en,zh}_v1``: the same at 128x128 (``shop_world/products_128``), for
  the image tokenizers trained at that size.
* ``m6_shop_mm2text_{en,zh}_v1`` (multimodality-to-text): the picture and the start of its
  description (``inputs``: a random 20-80 % of the tokens, PALM's split) -> the rest.
* ``m6_shop_denoise_{en,zh}_v1`` (text-to-text): a description with spans covering 30 % of
  its tokens collapsed to one mask id each (BART text infilling) -> the description. No image:
  the M6 network reads the source alone (``models.EncoderDecoderLM``, kind ``encdec_lm``).

And text-to-image:

* ``m6_shop_t2i_{en,zh}_v1``: a title (``inputs``) -> the VQGAN codes of its picture
  (``targets``: ``grid * grid`` ids, code ``c`` as id ``text_vocab_size + c``, no EOS), read
  from the image-code corpus (``plug_jax.families.m6.image_codes``; written once from a
  trained tokenizer, located when the task is first read). ``models.TextToImageLM`` samples
  codes in that id range and decodes them to pixels.

Every task uses the Shop World SentencePiece vocabulary of its language with 100 extra ids
(the last one is the mask), so one M6 checkpoint reads them all. Image tasks use the
``image_text`` feature converter (``image`` float32 ``[64, 64, 3]``, CLIP-normalised);
denoising uses ``encdec``. ``products_64`` is not a default config: the first task read
builds it (about half a minute).
"""
from __future__ import annotations

import functools

from plug_jax.data import configure_tensorflow

tf = configure_tensorflow()

import seqio  # noqa: E402

from plug_jax.data import multimodal, registry  # noqa: E402
from plug_jax.data import preprocessors as pp  # noqa: E402
from plug_jax.data.shop_world_tfds import VERSION, ShopWorldTfdsSource  # noqa: E402
from plug_jax.data.vocab import ShopWorldVocabulary  # noqa: E402

from .curricula import EXTRA_IDS  # noqa: E402
from .gpt3 import WORLD_SEED  # noqa: E402

PRODUCTS_CONFIG = "products_64"
PRODUCT_SIZES = (64, 128)
KINDS = ("title", "description", "mm2text", "denoise")
T2I_KIND = "t2i"


def vocabulary(lang: str) -> ShopWorldVocabulary:
    return ShopWorldVocabulary(None, seed=WORLD_SEED, lang=lang, extra_ids=EXTRA_IDS)


def _image_pairs(dataset, *, kind: str, lang: str):
    """``products_64`` records -> ``image`` (CLIP-normalised), ``targets`` (title or
    description) and the labels the controls read."""
    field = "title" if kind == "title" else "description"

    def f(ex):
        return {"image": multimodal.normalize_pixels(ex["image"]),
                "targets": ex[f"{field}_{lang}"], "product_id": ex["product_id"],
                "category": ex["category"], "colour": ex["colour"]}
    return dataset.map(f, num_parallel_calls=tf.data.AUTOTUNE)


def _keep(dataset, keys=("image", "inputs", "targets", "product_id")):
    return dataset.map(lambda ex: {k: ex[k] for k in keys if k in ex})


def _infilling(dataset, output_features):
    vocab = output_features["targets"].vocabulary
    return pp.text_infilling(dataset, mask_id=vocab.vocab_size - 1)


def register_m6_task(name: str, kind: str, lang: str = "en", size: int = 64) -> None:
    """Register (once) an M6 task of ``kind`` in :data:`KINDS` (pictures of ``size``: 64 or
    128)."""
    if kind not in KINDS:
        raise ValueError(f"unknown M6 task kind {kind!r}; use one of {KINDS}")
    if size not in PRODUCT_SIZES:
        raise ValueError(f"M6 product pictures come at {PRODUCT_SIZES} px, not {size}")
    vocab = vocabulary(lang)
    spec = {"kind": f"m6_shop_{kind}", "version": VERSION, "lang": lang,
            "vocab": {k: v for k, v in vocab.spec.items() if k != "cache_dir"}}
    if size != 64:
        spec["size"] = size
    feature = functools.partial(seqio.Feature, vocabulary=vocab, add_eos=True, dtype=tf.int32)
    tokenize = functools.partial(seqio.preprocessors.tokenize, copy_pretokenized=False)

    def build():
        if kind == "denoise":
            source = ShopWorldTfdsSource(f"text_{lang}", features=["description"])
            preprocessors = [
                lambda ds: ds.map(lambda ex: {"targets": ex["description"]}),
                tokenize, _infilling, _keep, seqio.preprocessors.append_eos_after_trim]
        else:
            source = ShopWorldTfdsSource(f"products_{size}", features=[
                "image", "product_id", "category", "colour", f"title_{lang}",
                f"description_{lang}"])
            preprocessors = [functools.partial(_image_pairs, kind=kind, lang=lang), tokenize]
            if kind == "mm2text":  # the start of the description joins the image
                preprocessors.append(functools.partial(pp.palm_split, min_frac=0.2,
                                                       max_frac=0.8))
            preprocessors += [_keep, seqio.preprocessors.append_eos_after_trim]
        output = {"targets": feature()}
        if kind in ("mm2text", "denoise"):
            output = {"inputs": feature(), **output}
        return seqio.TaskRegistry.add(name, source=source, preprocessors=preprocessors,
                                      output_features=output, shuffle_buffer_size=1024)

    registry.register_task(name, spec, build)


def _t2i_source():
    """The image-code corpus's splits as a ``seqio.FunctionDataSource`` (the directory is
    resolved when a split is first read)."""
    def dataset_fn(split, shuffle_files=False, seed=None):
        from plug_jax.families.m6 import image_codes
        arrays = image_codes.read_split(split)
        return tf.data.Dataset.from_tensor_slices(
            {k: arrays[k] for k in ("codes", "title_en", "title_zh", "product_id",
                                    "category", "colour")})
    return seqio.FunctionDataSource(dataset_fn, splits=("train", "validation", "test"))


def register_t2i_task(name: str, lang: str = "en") -> None:
    """Register (once) the title -> image codes task of ``lang``."""
    vocab = vocabulary(lang)
    spec = {"kind": "m6_shop_t2i", "version": VERSION, "lang": lang,
            "vocab": {k: v for k, v in vocab.spec.items() if k != "cache_dir"}}
    offset = vocab.vocab_size

    def titles(dataset):
        return dataset.map(lambda ex: {"inputs": ex[f"title_{lang}"], "codes": ex["codes"],
                                       "product_id": ex["product_id"]})

    def codes_as_targets(dataset):
        return dataset.map(lambda ex: {
            "inputs": ex["inputs"], "product_id": ex["product_id"],
            "targets": tf.cast(ex["codes"], tf.int32) + offset})

    def build():
        output = {"inputs": seqio.Feature(vocab, add_eos=True, dtype=tf.int32),
                  "targets": seqio.Feature(vocab, add_eos=False, dtype=tf.int32)}
        return seqio.TaskRegistry.add(
            name, source=_t2i_source(),
            preprocessors=[titles, functools.partial(seqio.preprocessors.tokenize,
                                                     copy_pretokenized=False),
                           codes_as_targets, seqio.preprocessors.append_eos_after_trim],
            output_features=output, shuffle_buffer_size=1024)

    registry.register_task(name, spec, build)


def t2i_code_offset(lang: str = "en") -> int:
    """The id of code 0 in ``m6_shop_t2i_<lang>_v1``'s targets: the text vocabulary's size."""
    return vocabulary(lang).vocab_size


TASKS = {(kind, lang): f"m6_shop_{kind}_{lang}_v1" for kind in KINDS for lang in ("en", "zh")}
for (_kind, _lang), _name in TASKS.items():
    register_m6_task(_name, _kind, _lang)
TITLE128_TASKS = {lang: f"m6_shop_title128_{lang}_v1" for lang in ("en", "zh")}
for _lang, _name in TITLE128_TASKS.items():
    register_m6_task(_name, "title", _lang, size=128)
T2I_TASKS = {lang: f"m6_shop_t2i_{lang}_v1" for lang in ("en", "zh")}
for _lang, _name in T2I_TASKS.items():
    register_t2i_task(_name, _lang)
