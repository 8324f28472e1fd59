"""CLIP tasks on Shop World images.

``clip_shop_captions_{en,zh}_v1``: the ``shop_world/images_64`` TFDS config, one example per
image: ``image`` (float32 ``[64, 64, 3]``, CLIP-normalised pixels) and ``targets`` (its
caption, tokenized with the Shop World vocabulary of the language, ending in EOS = 1, the
token the text tower pools). Feature converter ``image_text``; ``TASK_FEATURE_LENGTHS =
{'image': (64, 64, 3), 'targets': 64}``. The English vocabulary is SentencePiece (1024 ids),
the Chinese one character-level WordPiece-style (1124 ids).

``clip_shop_video_captions_en_v1``: ``shop_world/videos_8``: ``frames`` float32
``[8, 64, 64, 3]`` and the caption; feature converter ``video_text``, lengths
``{'frames': (8, 64, 64, 3), 'targets': 64}`` (CLIP4Clip-style mean of frame embeddings).
"""
from __future__ import annotations

import functools

from plug_jax.data import configure_tensorflow

tf = configure_tensorflow()

import seqio  # noqa: E402

from plug_jax.data import multimodal, registry  # noqa: E402
from plug_jax.data.shop_world_tfds import VERSION, ShopWorldTfdsSource  # noqa: E402
from plug_jax.data.vocab import ShopWorldVocabulary  # noqa: E402

from .gpt3 import WORLD_SEED  # noqa: E402

_MEDIA = {"images": ("image", multimodal.format_image_text, 256),
          "videos": ("frames", multimodal.format_video_text, 64)}


def _format(dataset, *, fmt, lang: str):
    return fmt(dataset, task="caption", lang=lang)


def register_caption_task(name: str, lang: str = "en", config: str = "images_64", *,
                          media_preprocessors=(), media_spec=None):
    """Register (once) a caption task over ``shop_world/<config>`` (an ``images_*`` or a
    ``videos_*`` config): the pixels (``image`` or ``frames``) and the tokenized caption.
    ``media_preprocessors`` run on the formatted pixels before tokenizing (X-CLIP's frame
    sampling); ``media_spec`` describes them in the task's registered spec."""
    media, fmt, buffer = _MEDIA[config.split("_")[0]]
    vocab = ShopWorldVocabulary(None, seed=WORLD_SEED, lang=lang)
    kind = "clip_shop_captions" if media == "image" else "clip_shop_video_captions"
    spec = {"kind": kind, "config": config, "version": VERSION, "lang": lang,
            "vocab": {k: v for k, v in vocab.spec.items() if k != "cache_dir"}}
    if media_spec is not None:
        spec["media"] = media_spec

    def build():
        return seqio.TaskRegistry.add(
            name,
            source=ShopWorldTfdsSource(config, features=[media, "product_id",
                                                         f"caption_{lang}"]),
            preprocessors=[
                functools.partial(_format, fmt=fmt, lang=lang),
                *media_preprocessors,
                functools.partial(seqio.preprocessors.tokenize, copy_pretokenized=False),
                seqio.preprocessors.append_eos_after_trim,
            ],
            output_features={
                "targets": seqio.Feature(vocabulary=vocab, add_eos=True, dtype=tf.int32),
            },
            shuffle_buffer_size=buffer,
        )

    return registry.register_task(name, spec, build)


CAPTIONS_EN = "clip_shop_captions_en_v1"
CAPTIONS_ZH = "clip_shop_captions_zh_v1"
register_caption_task(CAPTIONS_EN, "en")
register_caption_task(CAPTIONS_ZH, "zh")
# on shop_world/images_64_xl (20,000 training images; tasks/mplug.py says why)
CAPTIONS_XL_EN = "clip_shop_captions_xl_en_v1"
register_caption_task(CAPTIONS_XL_EN, "en", "images_64_xl")
VIDEO_CAPTIONS_EN = "clip_shop_video_captions_en_v1"
register_caption_task(VIDEO_CAPTIONS_EN, "en", "videos_8")
