"""Image-text and video-text formatting for seqio tasks (mPLUG, M6, mPLUG-2, HiTeA, X-CLIP).

Inputs are examples of the ``shop_world/images_*`` and ``shop_world/videos_*`` TFDS configs
(or any dataset with the same keys). Outputs keep pixels as float features and put the text
in ``inputs`` / ``targets`` strings, ready for ``seqio.preprocessors.tokenize``:

* ``image``: float32 ``[H, W, 3]``, scaled to [0, 1] then normalised with ``mean``/``std``
  (CLIP's by default); with ``patch_size`` also ``patches``: ``[H/p * W/p, p*p*3]`` in
  row-major patch order (the layout a ViT's patch embedding consumes).
* ``frames``: float32 ``[T, H, W, 3]``, normalised the same way.
* boxes become location tokens: each coordinate ``c`` of an ``[x0, y0, x1, y1]`` box in an
  image of side ``S`` is quantised to ``round(c / S * (num_bins - 1))`` and written as
  ``<loc_k>`` (the tokens ``WordPieceVocabulary(extra_tokens=location_tokens(num_bins))``
  encodes as single ids, as in mPLUG / OFA grounding).

Formats (``task=``): images: ``caption`` (targets = caption), ``vqa`` (one example per
question: inputs = question, targets = answer), ``grounding`` (one example per referring
phrase: inputs = phrase, targets = its box as four location tokens); videos: ``caption``,
``temporal_qa`` (one example per question), ``moments`` (inputs = event caption, targets =
``<frame_s><frame_e>``).

Feature converters ``image_text`` / ``video_text`` (:class:`ImageTextFeatureConverter`,
:class:`VideoTextFeatureConverter`; specs in :mod:`plug_jax.data.features`) turn such examples,
once ``inputs`` / ``targets`` are tokenized, into model features: the pixels as float32
(``image`` ``[H, W, C]`` / ``frames`` ``[T, H, W, C]``, sizes from ``task_feature_lengths``,
values unchanged: normalising is :func:`normalize_pixels`' job), the ``targets`` tokens as
``decoder_target_tokens`` / ``decoder_input_tokens`` / ``decoder_loss_weights`` and, with an
``inputs`` length, the prompt or question as ``encoder_input_tokens``.
"""
from __future__ import annotations

from typing import Sequence

from plug_jax.data import configure_tensorflow

tf = configure_tensorflow()

# Shop World VQA question types, in the order of the ``question_type`` ids.
VQA_TYPES = ("colour", "category", "count", "position", "material")
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGE_TASKS = ("caption", "vqa", "grounding")
VIDEO_TASKS = ("caption", "temporal_qa", "moments")


def quantize_boxes(boxes, image_size: int, num_bins: int = 1000):
    """``[..., 4]`` pixel boxes -> int32 bins in ``[0, num_bins)``."""
    if num_bins < 2:
        raise ValueError(f"num_bins={num_bins} must be >= 2; use e.g. 1000")
    b = tf.cast(boxes, tf.float32) / tf.cast(image_size, tf.float32) * float(num_bins - 1)
    return tf.clip_by_value(tf.cast(tf.round(b), tf.int32), 0, num_bins - 1)


def location_text(boxes, image_size: int, num_bins: int = 1000):
    """``[N, 4]`` pixel boxes -> ``[N]`` strings ``"<loc_a><loc_b><loc_c><loc_d>"``."""
    q = tf.strings.as_string(quantize_boxes(boxes, image_size, num_bins))
    return tf.strings.reduce_join("<loc_" + q + ">", axis=-1)


def normalize_pixels(pixels, mean: Sequence[float] = CLIP_MEAN,
                     std: Sequence[float] = CLIP_STD):
    x = tf.cast(pixels, tf.float32) / 255.0
    return (x - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)


def image_to_patches(image, patch_size: int):
    """``[H, W, C]`` -> ``[H/p * W/p, p*p*C]`` (row-major patches, each row-major inside)."""
    h, w, c = image.shape
    if h is None or w is None or h % patch_size or w % patch_size:
        raise ValueError(f"image {h}x{w} is not divisible into {patch_size}x{patch_size} "
                         f"patches; pick a patch_size that divides the image side")
    x = tf.reshape(image, (h // patch_size, patch_size, w // patch_size, patch_size, c))
    x = tf.transpose(x, (0, 2, 1, 3, 4))
    return tf.reshape(x, ((h // patch_size) * (w // patch_size), patch_size * patch_size * c))


def _pixels(ex, key, patch_size):
    out = {key: normalize_pixels(ex[key])}
    if patch_size and key == "image":
        out["patches"] = image_to_patches(out["image"], patch_size)
    return out


def _flat(base, inputs, targets, **per_item):
    n = tf.shape(targets)[0]
    extra = {k: tf.repeat(tf.expand_dims(v, 0), n, axis=0) for k, v in base.items()}
    return tf.data.Dataset.from_tensor_slices({**extra, "inputs": inputs, "targets": targets,
                                               **per_item})


def question_type_ids(types):
    """``[N]`` type names (``vqa_type``) -> int32 ids in :data:`VQA_TYPES` order."""
    table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(tf.constant(VQA_TYPES),
                                            tf.range(len(VQA_TYPES), dtype=tf.int32)), -1)
    return table.lookup(types)


def format_image_text(dataset: tf.data.Dataset, *, task: str, lang: str = "zh",
                      patch_size: int | None = None, num_bins: int = 1000,
                      question_types: bool = False) -> tf.data.Dataset:
    """Shop World image examples -> ``image`` (+ ``patches``), ``inputs``, ``targets``;
    ``vqa`` with ``question_types`` also ``question_type`` (int32 id in :data:`VQA_TYPES`;
    the source must give ``vqa_type``)."""
    if task not in IMAGE_TASKS:
        raise ValueError(f"unknown image-text task {task!r}; use one of {IMAGE_TASKS}")

    def base(ex):
        return {**_pixels(ex, "image", patch_size), "product_id": ex["product_id"]}

    if task == "caption":
        return dataset.map(lambda ex: {**base(ex), "inputs": tf.constant(""),
                                       "targets": ex[f"caption_{lang}"]})
    if task == "vqa":
        def per_question(ex):
            extra = ({"question_type": question_type_ids(ex["vqa_type"])}
                     if question_types else {})
            return _flat(base(ex), ex[f"vqa_question_{lang}"], ex[f"vqa_answer_{lang}"],
                         **extra)
        return dataset.flat_map(per_question)
    return dataset.flat_map(lambda ex: _flat(
        base(ex), ex[f"referring_phrase_{lang}"],
        location_text(ex["referring_box"], tf.shape(ex["image"])[0], num_bins)))


def format_video_text(dataset: tf.data.Dataset, *, task: str,
                      lang: str = "zh") -> tf.data.Dataset:
    """Shop World video examples -> ``frames``, ``inputs``, ``targets``."""
    if task not in VIDEO_TASKS:
        raise ValueError(f"unknown video-text task {task!r}; use one of {VIDEO_TASKS}")

    def base(ex):
        return {**_pixels(ex, "frames", None), "product_id": ex["product_id"]}

    if task == "caption":
        return dataset.map(lambda ex: {**base(ex), "inputs": tf.constant(""),
                                       "targets": ex[f"caption_{lang}"]})
    if task == "temporal_qa":
        return dataset.flat_map(lambda ex: _flat(base(ex), ex[f"tqa_question_{lang}"],
                                                 ex[f"tqa_answer_{lang}"]))
    return dataset.flat_map(lambda ex: _flat(
        base(ex), ex[f"event_caption_{lang}"],
        "<frame_" + tf.strings.as_string(ex["event_start"]) + "><frame_"
        + tf.strings.as_string(ex["event_end"]) + ">"))


# ------------------------------------------------------------------ feature converters
# Optional per-example int labels the converters pass through when ``task_feature_lengths``
# names them (any value, e.g. ``{'question_type': 1}``): evaluation groups by them (VQA
# accuracy per question type). A task without the label gives -1.
EXAMPLE_LABELS = ("question_type",)


class ImageTextFeatureConverter:
    """``image_text``: one example per row (never packed: ``pack`` has no effect).

    Task features: ``image`` (any real dtype, exactly ``task_feature_lengths['image']`` =
    ``(H, W, C)``), ``targets`` (int tokens) and optionally ``inputs``. Model features (see
    ``features.image_text_spec``): ``image`` float32 ``[H, W, C]`` (cast, values kept),
    ``decoder_target_tokens`` (targets trimmed / zero-padded to the ``targets`` length),
    ``decoder_input_tokens`` (shifted right, 0 first), ``decoder_loss_weights`` (1 on
    non-zero targets) and, when ``task_feature_lengths`` has ``inputs``,
    ``encoder_input_tokens`` (zeros for a task without ``inputs``) and, when
    ``task_feature_lengths`` names it, the int32 label ``question_type`` (:data:`EXAMPLE_LABELS`).
    """

    NAME, MEDIA = "image_text", "image"

    def __init__(self, pack: bool = False):
        self.pack = bool(pack)

    def get_model_feature_lengths(self, task_feature_lengths) -> dict:
        from plug_jax.data import features  # noqa: PLC0415
        return {k: (s.shape[0] if s.shape else 1) for k, s in
                features.feature_spec(self.NAME, task_feature_lengths).items()}

    def __call__(self, ds: tf.data.Dataset, task_feature_lengths) -> tf.data.Dataset:
        from plug_jax.data import features  # noqa: PLC0415
        specs = features.feature_spec(self.NAME, task_feature_lengths)
        media, shape = self.MEDIA, specs[self.MEDIA].shape
        lt = specs["decoder_target_tokens"].shape[0]
        li = specs["encoder_input_tokens"].shape[0] if "encoder_input_tokens" in specs else None
        spec = ds.element_spec
        for need in (media, "targets"):
            if need not in spec:
                raise ValueError(f"the {self.NAME!r} feature converter needs a {need!r} task "
                                 f"feature; the task gives {sorted(spec)}")
        if not spec[media].shape.is_compatible_with(shape):
            raise ValueError(f"task feature {media!r} has shape {tuple(spec[media].shape)} but "
                             f"task_feature_lengths[{media!r}] is {shape}; fix: resize in a "
                             f"preprocessor or pass {media!r}: {tuple(spec[media].shape)}")
        if not (spec[media].dtype.is_floating or spec[media].dtype.is_integer):
            raise ValueError(f"task feature {media!r} is {spec[media].dtype.name}, not pixels")

        def fit(x, n):
            x = tf.cast(x, tf.int32)[:n]
            return tf.pad(x, [[0, n - tf.size(x)]])

        def convert(ex):
            tgt = fit(ex["targets"], lt)
            out = {media: tf.ensure_shape(tf.cast(ex[media], tf.float32), shape),
                   "decoder_target_tokens": tgt,
                   "decoder_input_tokens": tf.pad(tgt[:-1], [[1, 0]]),
                   "decoder_loss_weights": tf.cast(tf.not_equal(tgt, 0), tf.int32)}
            if li is not None:
                out["encoder_input_tokens"] = (fit(ex["inputs"], li) if "inputs" in ex
                                               else tf.zeros([li], tf.int32))
            for name in EXAMPLE_LABELS:
                if name in specs:
                    out[name] = (tf.cast(ex[name], tf.int32) if name in ex
                                 else tf.constant(-1, tf.int32))
            return out

        return ds.map(convert, num_parallel_calls=tf.data.AUTOTUNE)


class VideoTextFeatureConverter(ImageTextFeatureConverter):
    """``video_text``: as ``image_text`` with ``frames`` float32 ``[T, H, W, C]``
    (``task_feature_lengths['frames']``)."""

    NAME, MEDIA = "video_text", "frames"
