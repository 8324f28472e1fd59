"""X-CLIP tasks on Shop World videos: video-text retrieval pairs.

Each example is one video: ``frames`` (float32 ``[T, 64, 64, 3]``, CLIP-normalised pixels)
and ``targets`` (the English caption, which states the order of the events, tokenized with
the Shop World SentencePiece vocabulary, ending in EOS = 1, the token the text tower pools).
Feature converter ``video_text``. The caption length must equal the model's ``num_words``
(its word matrices are that size): the feature converter pads every caption to
``TASK_FEATURE_LENGTHS['targets']``.

| task | videos | frames |
|---|---|---|
| ``xclip_shop_video_retrieval_en_v1`` | ``videos_8`` (800 / 100 / 100) | all 8 |
| ``xclip_shop_video_retrieval_xl_en_v1`` | ``videos_8_xl`` (4000 / 100 / 600) | all 8 |
| ``xclip_shop_video_retrieval_16f_en_v1`` | ``videos_16`` (1500 / 150 / 150) | all 16 |
| ``xclip_shop_video_retrieval_16to8_uniform_en_v1`` | ``videos_16`` | 8: the middle frame of each of 8 equal segments |
| ``xclip_shop_video_retrieval_16to8_random_en_v1`` | ``videos_16`` | 8: one random frame in each segment (training) |

**Frame sampling** (:func:`sample_frames`). ``uniform`` takes the middle frame of each of
``T`` equal segments (the indices :func:`plug_jax.data.media.sample_indices` gives, which
``plug-infer`` uses for frame folders); ``random`` takes one frame drawn uniformly within
each segment, so frame order is kept and a training run sees other frames of a video each
epoch. The draw is seeded by seqio's map seed (``seqio.map_over_dataset(num_seeds=1)``): a
run with the same seed and input position reads the same frames, with index-based input or
on the stream. Users of the released X-CLIP report that frame sampling changes results
(the authors' advice: sample from the raw video rather than from pre-extracted frames);
train with ``random`` and evaluate with ``uniform`` (``shop_16to8.gin``).
"""
from __future__ import annotations

import functools

from plug_jax.data import configure_tensorflow

tf = configure_tensorflow()

import seqio  # noqa: E402

from . import clip as _clip  # noqa: E402

SAMPLING = ("uniform", "random")


def _segments(n, t: int):
    i = tf.range(t, dtype=tf.int32)
    return (i * n) // t, ((i + 1) * n) // t


def sample_frames(dataset, *, num_frames: int, mode: str = "uniform"):
    """``frames`` ``[N, H, W, C]`` -> ``[num_frames, H, W, C]`` (see the module docstring).
    A video with fewer than ``num_frames`` frames fails at read time with the counts."""
    if mode not in SAMPLING:
        raise ValueError(f"unknown frame sampling {mode!r}; choose one of {SAMPLING}")
    t = int(num_frames)

    def check(n):
        return tf.debugging.assert_greater_equal(
            n, t, message=f"a video has fewer frames than the {t} to sample")

    if mode == "uniform":
        def uniform(ex):
            n = tf.shape(ex["frames"])[0]
            with tf.control_dependencies([check(n)]):
                idx = (2 * tf.range(t, dtype=tf.int32) + 1) * n // (2 * t)
            return {**ex, "frames": tf.gather(ex["frames"], idx)}
        return dataset.map(uniform, num_parallel_calls=tf.data.AUTOTUNE)

    @seqio.map_over_dataset(num_seeds=1)
    def random(ex, seed):
        n = tf.shape(ex["frames"])[0]
        with tf.control_dependencies([check(n)]):
            lo, hi = _segments(n, t)
        u = tf.random.stateless_uniform([t], seed=seed)
        idx = lo + tf.cast(tf.floor(u * tf.cast(hi - lo, tf.float32)), tf.int32)
        return {**ex, "frames": tf.gather(ex["frames"], tf.minimum(idx, hi - 1))}
    return random(dataset)


def register_retrieval_task(name: str, config: str, *, num_frames: int | None = None,
                            sampling: str = "uniform", lang: str = "en"):
    """A video-text retrieval task over ``shop_world/<config>``; ``num_frames`` samples that
    many frames per video (``None``: keep them all)."""
    if num_frames is None:
        return _clip.register_caption_task(name, lang, config)
    return _clip.register_caption_task(
        name, lang, config,
        media_preprocessors=[functools.partial(sample_frames, num_frames=num_frames,
                                               mode=sampling)],
        media_spec={"num_frames": int(num_frames), "sampling": sampling})


VIDEO_RETRIEVAL_EN = "xclip_shop_video_retrieval_en_v1"
VIDEO_RETRIEVAL_XL_EN = "xclip_shop_video_retrieval_xl_en_v1"
VIDEO_RETRIEVAL_16F_EN = "xclip_shop_video_retrieval_16f_en_v1"
register_retrieval_task(VIDEO_RETRIEVAL_EN, "videos_8")
register_retrieval_task(VIDEO_RETRIEVAL_XL_EN, "videos_8_xl")
register_retrieval_task(VIDEO_RETRIEVAL_16F_EN, "videos_16")
for _mode in SAMPLING:
    register_retrieval_task(f"xclip_shop_video_retrieval_16to8_{_mode}_en_v1", "videos_16",
                            num_frames=8, sampling=_mode)
