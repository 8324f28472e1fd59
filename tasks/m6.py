"""M6 tasks on Shop World: image-to-text, multimodality-to-text and text denoising.

The three pre-training transfers M6 names (MODEL_SPECS.md section 6), each a seqio task:

* ``m6_shop_title_{en,zh}_v1`` and ``m6_shop_description_{en,zh}_v1`` (image-to-text): a
  picture of one product (``shop_world/products_64``) -> its title / its description.
* ``m6_shop_mm2text_{en,zh}_v1`` (multimodality-to-text): the picture and the start of its
  description (``inputs``: a random 20-80 % of the tokens, PALM's split) -> the rest.
* ``m6_shop_denoise_{en,zh}_v1`` (text-to-text): a description with spans covering 30 % of
  its tokens collapsed to one mask id each (BART text infilling) -> the description. No image:
  the M6 network reads the source alone (``models.EncoderDecoderLM``, kind ``encdec_lm``).

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
KINDS = ("title", "description", "mm2text", "denoise")


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


def register_m6_task(name: str, kind: str, lang: str = "en") -> None:
    """Register (once) an M6 task of ``kind`` in :data:`KINDS`."""
    if kind not in KINDS:
        raise ValueError(f"unknown M6 task kind {kind!r}; use one of {KINDS}")
    vocab = vocabulary(lang)
    spec = {"kind": f"m6_shop_{kind}", "version": VERSION, "lang": lang,
            "vocab": {k: v for k, v in vocab.spec.items() if k != "cache_dir"}}
    feature = functools.partial(seqio.Feature, vocabulary=vocab, add_eos=True, dtype=tf.int32)
    tokenize = functools.partial(seqio.preprocessors.tokenize, copy_pretokenized=False)

    def build():
        if kind == "denoise":
            source = ShopWorldTfdsSource(f"text_{lang}", features=["description"])
            preprocessors = [
                lambda ds: ds.map(lambda ex: {"targets": ex["description"]}),
                tokenize, _infilling, _keep, seqio.preprocessors.append_eos_after_trim]
        else:
            source = ShopWorldTfdsSource(PRODUCTS_CONFIG, features=[
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


TASKS = {(kind, lang): f"m6_shop_{kind}_{lang}_v1" for kind in KINDS for lang in ("en", "zh")}
for (_kind, _lang), _name in TASKS.items():
    register_m6_task(_name, _kind, _lang)
