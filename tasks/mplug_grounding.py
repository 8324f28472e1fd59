"""mPLUG visual grounding on Shop World images (``shop_world/images_64``): a referring
phrase ("the red hat", "the red leather hat", "the product on the left") -> its box.

* ``mplug_shop_grounding_{en,zh}_v1``: one example per referring phrase.
  ``image`` (float32 ``[64, 64, 3]``, CLIP-normalised), ``inputs`` (the phrase, tokenized with
  the Shop World vocabulary of the language, ending in EOS = 1) and ``targets``: five int32
  ids, the box's four location ids then EOS, produced here directly (not tokenized).

Id layout (the Shop World SentencePiece vocabularies cannot take new ``<loc_k>`` pieces, so
the location tokens live above them, as mPLUG's live in BERT's ``[unused]`` range)::

    0 .. V-1                       the language's text vocabulary (V = vocab.vocab_size:
                                   512 for en, 1024 for zh); 0 pad, 1 EOS
    V + k, k = 0 .. image_size     location token k: pixel coordinate k (x or y), the
                                   released layout's "bins = integer pixels", so there are
                                   image_size + 1 = 65 bins at 64 px (mPLUG: 337 at 336 px)

``targets = [V + x0, V + y0, V + x1, V + y1, 1]`` for the box ``[x0, y0, x1, y1]`` (pixels,
exclusive ends; :func:`multimodal.quantize_boxes` with ``num_bins = image_size + 1`` is the
identity on integer pixels). The model's ``vocab_size`` must be at least ``V + image_size +
1`` (en: 577; the tiny preset's 1024 holds it) and its ``loc_offset`` must be ``V``
(:func:`loc_offset`). The gold box is recovered from the target ids
(``targets[:4] - V``), so the ``image_text`` converter needs no extra label.

Feature converter ``image_text``; ``TASK_FEATURE_LENGTHS = {'image': (64, 64, 3), 'inputs':
16, 'targets': 5}`` (the longest en phrase, "the product in the middle" / "the red leather
sneakers", is well under 16 pieces with EOS).
"""
from __future__ import annotations

import functools

from plug_jax.data import configure_tensorflow

tf = configure_tensorflow()

import seqio  # noqa: E402

from plug_jax.data import indexed, multimodal, registry  # noqa: E402
from plug_jax.data.shop_world_tfds import VERSION, ShopWorldTfdsSource  # noqa: E402
from plug_jax.data.vocab import ShopWorldVocabulary  # noqa: E402

from .gpt3 import WORLD_SEED  # noqa: E402

GROUNDING_EN, GROUNDING_ZH = "mplug_shop_grounding_en_v1", "mplug_shop_grounding_zh_v1"
IMAGE_SIZE = 64
NUM_BINS = IMAGE_SIZE + 1          # location tokens: pixel coordinates 0 .. IMAGE_SIZE
TASK_FEATURE_LENGTHS = {"image": (IMAGE_SIZE, IMAGE_SIZE, 3), "inputs": 16, "targets": 5}


def vocabulary(lang: str) -> ShopWorldVocabulary:
    return ShopWorldVocabulary(None, seed=WORLD_SEED, lang=lang)


def loc_offset(lang: str = "en") -> int:
    """The id of location token 0 for ``lang`` (the text vocabulary's size)."""
    return int(vocabulary(lang).vocab_size)


def location_ids(dataset, *, vocab, image_size: int = IMAGE_SIZE):
    """``targets`` ``"<loc_a><loc_b><loc_c><loc_d>"`` (from ``format_image_text(task=
    'grounding', num_bins=image_size + 1)``) -> int32 ``[offset + a, .., offset + d, EOS]``
    with ``offset = vocab.vocab_size``."""
    offset = int(vocab.vocab_size)
    eos = int(getattr(vocab, "eos_id", 1))

    def convert(ex):
        digits = tf.strings.regex_replace(ex["targets"], r"<loc_(\d+)>", r"\1 ")
        k = tf.strings.to_number(tf.strings.split(tf.strings.strip(digits)), tf.int32)
        k = tf.ensure_shape(k, [4])
        tf.debugging.assert_less_equal(k, image_size)
        return {**ex, "targets": tf.concat([k + offset, [eos]], axis=0)}

    return dataset.map(convert)


def _format(dataset, *, lang: str):
    return multimodal.format_image_text(dataset, task="grounding", lang=lang,
                                        num_bins=NUM_BINS)


def _tokenize_inputs(dataset, output_features):
    """Tokenize ``inputs`` only (``targets`` are ids already)."""
    return seqio.preprocessors.tokenize(dataset, {"inputs": output_features["inputs"]},
                                        copy_pretokenized=False)


def register_grounding_task(name: str, lang: str = "en", config: str = "images_64"):
    """Register (once) a grounding task for ``lang`` on ``shop_world/<config>`` (64 px)."""
    vocab = vocabulary(lang)
    spec = {"kind": "mplug_shop_grounding", "config": config, "version": VERSION,
            "lang": lang, "num_bins": NUM_BINS, "targets": "loc_offset + pixel, EOS",
            "vocab": {k: v for k, v in vocab.spec.items() if k != "cache_dir"}}
    output_features = {
        "inputs": seqio.Feature(vocabulary=vocab, add_eos=True, dtype=tf.int32),
        # ids beyond the vocabulary (location tokens); EOS is already there
        "targets": seqio.Feature(vocabulary=vocab, add_eos=False, dtype=tf.int32),
    }

    def build():
        return seqio.TaskRegistry.add(
            name,
            source=ShopWorldTfdsSource(config, features=[
                "image", "product_id", f"referring_phrase_{lang}", "referring_box"]),
            preprocessors=[
                # one example per referring phrase of an image (read by index per example)
                indexed.per_record(functools.partial(_format, lang=lang)),
                functools.partial(location_ids, vocab=vocab),
                _tokenize_inputs,
                seqio.preprocessors.append_eos_after_trim,
            ],
            output_features=output_features,
            shuffle_buffer_size=1024,
        )

    return registry.register_task(name, spec, build)


register_grounding_task(GROUNDING_EN, "en")
register_grounding_task(GROUNDING_ZH, "zh")
# the same task on shop_world/images_64_xl (20,000 training images; tasks/mplug.py)
GROUNDING_XL_EN = "mplug_shop_grounding_xl_en_v1"
register_grounding_task(GROUNDING_XL_EN, "en", config="images_64_xl")
