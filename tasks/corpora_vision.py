"""seqio tasks over real image/video-text corpora read from a manual directory
(``plug_jax.data.corpora_vision``).

Decoded-media tasks (no tokenization: a fine-tuning task maps the text features to
``inputs``/``targets`` with its own vocabulary). S = ``image_size`` (default 224),
T = ``num_frames`` (default 8):

=====================================  =====================================  ===========
task                                   features                               files in
=====================================  =====================================  ===========
``mplug_coco_captions_en_v1``          image uint8 [S,S,3], image_id,         ``coco/``
                                       captions [n] (one example per image)
``mplug_coco_caption_pairs_en_v1``     image, image_id, caption, caption_id   ``coco/``
                                       (one example per caption)
``mplug_vqav2_en_v1``                  image, image_id, question,             ``vqa_v2/``
                                       question_id, answer, answers [10],
                                       answer_type
``hitea_msrvtt_captions_en_v1``        frames uint8 [T,S,S,3], video_id,      ``msrvtt/``
                                       captions [n] (one example per video)
``hitea_msrvtt_caption_pairs_en_v1``   frames, video_id, caption, caption_id  ``msrvtt/``
=====================================  =====================================  ===========

The directory is ``$PLUG_JAX_DATA_DIR/<corpus>`` (default ``~/.cache/plug_jax/data/<corpus>``),
resolved when a dataset is built; ``register_vision_task(..., data_dir=...)`` fixes another.
Registration never touches the files, so importing this module works without them; building
a dataset without them raises a one-line ``ValueError`` naming the expected files.
Registration is idempotent (same name + same arguments returns the registered task).

Shuffling (``get_dataset(shuffle=True)``) permutes the annotation records before decoding;
the task's own example shuffle buffer is kept small (``SHUFFLE_BUFFER_SIZE``) because its
elements are decoded images.
"""
from __future__ import annotations

from typing import Optional

from plug_jax.data import configure_tensorflow

tf = configure_tensorflow()

import seqio  # noqa: E402

from plug_jax.data import corpora_vision, indexed, registry  # noqa: E402

# Readers for families whose folders come later (mPLUG, HiTeA); their own tasks modules
# will declare the same prefixes.
registry.add_task_prefixes("mplug")
registry.add_task_prefixes("hitea")

SHUFFLE_BUFFER_SIZE = 64


def register_vision_task(name: str, corpus: str, *, data_dir: Optional[str] = None,
                         per_caption: bool = False,
                         image_size: int = corpora_vision.DEFAULT_IMAGE_SIZE,
                         num_frames: int = corpora_vision.DEFAULT_NUM_FRAMES) -> seqio.Task:
    """Register (once) a decoded-media task over ``corpus`` (a key of
    ``corpora_vision.CORPORA``: ``coco``, ``vqa_v2``, ``msrvtt``).

    Re-registering ``name`` with the same arguments returns the existing task; different
    arguments raise.
    """
    if corpus not in corpora_vision.CORPORA:
        raise ValueError(f"unknown vision corpus {corpus!r}; pass one of "
                         f"{sorted(corpora_vision.CORPORA)}")
    if per_caption and corpus == "vqa_v2":
        raise ValueError("per_caption applies to caption corpora (coco, msrvtt), not vqa_v2")
    splits = corpora_vision.CORPORA[corpus][2]
    kwargs = {"per_caption": per_caption, "image_size": int(image_size),
              "num_frames": int(num_frames)}
    spec = {"kind": "vision_corpus", "corpus": corpus,
            "data_dir": None if data_dir is None else str(data_dir), **kwargs}

    def build():
        # Read by index for training (each process decodes only its own examples' media),
        # or as a stream.
        media = corpora_vision.VisionCorpusSource(corpus, data_dir, **kwargs)
        source = indexed.IndexedFunctionSource(
            corpora_vision.vision_dataset_fn(corpus, data_dir, **kwargs), media.records,
            splits=splits, num_records_fn=media.num_records)
        return seqio.TaskRegistry.add(name, source=source, preprocessors=[],
                                      output_features={},
                                      shuffle_buffer_size=SHUFFLE_BUFFER_SIZE)

    return registry.register_task(name, spec, build)


COCO_CAPTIONS_EN = "mplug_coco_captions_en_v1"
COCO_CAPTION_PAIRS_EN = "mplug_coco_caption_pairs_en_v1"
VQA_V2_EN = "mplug_vqav2_en_v1"
MSRVTT_CAPTIONS_EN = "hitea_msrvtt_captions_en_v1"
MSRVTT_CAPTION_PAIRS_EN = "hitea_msrvtt_caption_pairs_en_v1"

register_vision_task(COCO_CAPTIONS_EN, "coco")
register_vision_task(COCO_CAPTION_PAIRS_EN, "coco", per_caption=True)
register_vision_task(VQA_V2_EN, "vqa_v2")
register_vision_task(MSRVTT_CAPTIONS_EN, "msrvtt")
register_vision_task(MSRVTT_CAPTION_PAIRS_EN, "msrvtt", per_caption=True)
