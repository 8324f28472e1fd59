"""X-CLIP video-text retrieval on MSR-VTT at the published sizes, read from the published files
by ``plug_jax.data.corpora_vision`` (nothing is downloaded; for users who have the data).

==============================================  ==============================================
task                                            one example per ...
==============================================  ==============================================
``xclip_msrvtt_retrieval_en_v1``                caption (training: the release's
                                                ``--expand_msrvtt_sentences``)
``xclip_msrvtt_retrieval_first_caption_en_v1``  video, with its first caption (by
                                                ``sen_id``): whole-set retrieval with one
                                                text per video (evaluation)
==============================================  ==============================================

Every example: ``frames`` float32 ``[12, 224, 224, 3]`` (12 frames sampled uniformly from the
video's pre-extracted JPEGs by the reader, resized to 224 x 224, then CLIP-normalised by
``multimodal.normalize_pixels``), ``targets`` (the caption tokenized with OpenAI CLIP's BPE,
:class:`plug_jax.data.clip_bpe.ClipBpeVocabulary`: ``<|startoftext|>`` first, then, by
``append_eos_after_trim``, ``<|endoftext|>`` = 49407, the largest id, which the text tower
pools), ``video_id`` and, per caption, ``caption_id``. Feature converter ``video_text``
with ``TASK_FEATURE_LENGTHS = {'frames': (12, 224, 224, 3), 'targets': 32}``: 32 is the
model's ``num_words``, so a caption is ``<|startoftext|>`` + at most 30 BPE tokens +
``<|endoftext|>``, zero-padded to 32, as the release builds its ``max_words = 32``
captions. Splits: the annotation file's ``train`` / ``validate`` / ``test`` (MSR-VTT's own
6,513 / 497 / 2,990 videos, 20 captions each).

Files (``$PLUG_JAX_DATA_DIR`` defaults to ``~/.cache/plug_jax/data``)::

    $PLUG_JAX_DATA_DIR/msrvtt/MSRVTT_data.json          (or videodatainfo.json)
    $PLUG_JAX_DATA_DIR/msrvtt/frames/<video_id>/<NNNNN>.jpg
    $PLUG_JAX_DATA_DIR/msrvtt/clip_bpe/vocab.json + merges.txt   (or tokenizer.json)

Extract the frames at 1 fps as the release samples them (``--feature_framerate 1``), e.g.
``ffmpeg -i video0.mp4 -vf fps=1 -q:v 2 frames/video0/%05d.jpg``. The BPE folder holds
OpenAI CLIP's tokenizer files (``CLIPTokenizer.from_pretrained(
'openai/clip-vit-base-patch32').save_pretrained(DIR)`` on a machine with internet writes
them); the folders are resolved when a dataset is first built: registration never touches
the files, so importing ``plug_jax.tasks`` works without them, and a missing file is a
one-line ``ValueError`` then.

Not as released (differences of the reader or of these tasks): the training split is
MSR-VTT's 6,513 ``train`` videos (130,260 pairs), not the 9k split of
``MSRVTT_train.9k.csv`` (9,000 videos, 180,000 pairs), and evaluation is over the
``validate`` / ``test`` videos with their first captions, not the 1,000 pairs of
``MSRVTT_JSFUSION_test.csv`` (1k-A); frames are the reader's segment centres
(``floor((i + 0.5) * N / 12)``), the release takes ``np.linspace(0, N - 1, 12)``; a video
with fewer than 12 frames repeats some (the release zero-pads and masks them); frames are
resized to a square (the release resizes the short side and centre-crops); the BPE skips
OpenAI's ``ftfy`` / HTML clean-up (``plug_jax/data/clip_bpe.py``).
"""
from __future__ import annotations

import functools
import os
from typing import Optional

from plug_jax.data import configure_tensorflow

tf = configure_tensorflow()

import seqio  # noqa: E402

from plug_jax.data import corpora_vision, indexed, multimodal, registry  # noqa: E402
from plug_jax.data.clip_bpe import OPENAI_VOCAB_SIZE, ClipBpeVocabulary  # noqa: E402
from plug_jax.data.corpora import default_data_dir  # noqa: E402

from .corpora_vision import SHUFFLE_BUFFER_SIZE  # noqa: E402

CORPUS = "msrvtt"
BPE_FOLDER = "clip_bpe"  # inside the corpus folder
NUM_FRAMES = 12   # the release's --max_frames for MSR-VTT
IMAGE_SIZE = 224  # OpenAI ViT-B/32 and ViT-B/16
NUM_WORDS = 32    # the release's --max_words = the model's num_words


def clip_bpe_folder(data_dir: Optional[str] = None) -> str:
    """``<data_dir>/clip_bpe``; ``data_dir=None``: ``$PLUG_JAX_DATA_DIR/msrvtt/clip_bpe``
    (reads the environment only; nothing is opened)."""
    root = default_data_dir(CORPUS) if data_dir is None else data_dir
    return os.path.join(os.fspath(root), BPE_FOLDER)


def clip_vocabulary(data_dir: Optional[str] = None) -> ClipBpeVocabulary:
    """A lazy OpenAI CLIP BPE (49408 ids) in :func:`clip_bpe_folder` (the default tasks share
    one, ``VOCABULARY``, so the files are read once per process)."""
    return ClipBpeVocabulary(functools.partial(clip_bpe_folder, data_dir), lazy=True,
                             expected_vocab_size=OPENAI_VOCAB_SIZE)


VOCABULARY = clip_vocabulary()


def format_retrieval(dataset: tf.data.Dataset, output_features=None, *,
                     first_caption: bool = False) -> tf.data.Dataset:
    """Decoded reader examples -> ``frames`` (CLIP-normalised float32), ``targets`` (the
    caption string; ``first_caption``: the video's first caption, ``""`` for a video without
    one) and the ids kept for evaluation. The vocabulary is loaded here, in python, so a
    missing BPE file is one error line rather than a traceback from inside tf.data."""
    for feature in (output_features or {}).values():
        feature.vocabulary.eos_id  # noqa: B018  (loads a lazy vocabulary)

    def per_caption(ex):
        return {"frames": multimodal.normalize_pixels(ex["frames"]),
                "video_id": ex["video_id"], "caption_id": ex["caption_id"],
                "targets": ex["caption"]}

    def per_video(ex):
        return {"frames": multimodal.normalize_pixels(ex["frames"]),
                "video_id": ex["video_id"],
                "targets": tf.concat([ex["captions"], [""]], 0)[0]}

    return dataset.map(per_video if first_caption else per_caption,
                       num_parallel_calls=tf.data.AUTOTUNE)


def register_retrieval_task(name: str, *, first_caption: bool = False,
                            num_frames: int = NUM_FRAMES, image_size: int = IMAGE_SIZE,
                            data_dir: Optional[str] = None) -> seqio.Task:
    """Register (once) an X-CLIP MSR-VTT retrieval task: one example per caption, or with
    ``first_caption`` one per video. ``data_dir`` fixes the corpus folder (its
    ``clip_bpe/`` holds the BPE); default: ``$PLUG_JAX_DATA_DIR/msrvtt``, resolved when a
    dataset is built. Tests register small ``num_frames`` / ``image_size``."""
    kwargs = {"per_caption": not first_caption, "image_size": int(image_size),
              "num_frames": int(num_frames)}
    data_dir = None if data_dir is None else os.fspath(data_dir)
    vocab = VOCABULARY if data_dir is None else clip_vocabulary(data_dir)
    spec = {"kind": "xclip_msrvtt_retrieval", "corpus": CORPUS, "data_dir": data_dir,
            "first_caption": bool(first_caption), **kwargs,
            "vocab": {"kind": "clip_bpe", "size": OPENAI_VOCAB_SIZE,
                      "folder": clip_bpe_folder(data_dir) if data_dir is not None
                      else f"$PLUG_JAX_DATA_DIR/{CORPUS}/{BPE_FOLDER}"}}

    def build():
        # Read by index for training (each process decodes only its own examples' frames),
        # or as a stream; the same source as tasks/corpora_vision.py's MSR-VTT tasks.
        media = corpora_vision.VisionCorpusSource(CORPUS, data_dir, **kwargs)
        source = indexed.IndexedFunctionSource(
            corpora_vision.vision_dataset_fn(CORPUS, data_dir, **kwargs), media.records,
            splits=corpora_vision.CORPORA[CORPUS][2], num_records_fn=media.num_records)
        return seqio.TaskRegistry.add(
            name, source=source,
            preprocessors=[
                functools.partial(format_retrieval, first_caption=first_caption),
                functools.partial(seqio.preprocessors.tokenize, copy_pretokenized=False),
                seqio.preprocessors.append_eos_after_trim,
            ],
            output_features={"targets": seqio.Feature(vocabulary=vocab, add_eos=True,
                                                      dtype=tf.int32)},
            shuffle_buffer_size=SHUFFLE_BUFFER_SIZE)

    return registry.register_task(name, spec, build)


RETRIEVAL_EN = "xclip_msrvtt_retrieval_en_v1"
RETRIEVAL_FIRST_CAPTION_EN = "xclip_msrvtt_retrieval_first_caption_en_v1"
register_retrieval_task(RETRIEVAL_EN)
register_retrieval_task(RETRIEVAL_FIRST_CAPTION_EN, first_caption=True)
