"""Readers for real image / video-text corpora stored in a manual directory.

Each corpus is read from its *published* annotation format; nothing is downloaded. Put the
files in ``data_dir`` (or, for the registered tasks, ``$PLUG_JAX_DATA_DIR/<corpus>``,
default ``~/.cache/plug_jax/data/<corpus>``):

==============  ============================================================================
corpus          files
==============  ============================================================================
COCO captions   ``dataset_coco.json`` (Karpathy split) + images at
(``coco``)      ``<filepath>/<filename>`` (e.g. ``val2014/COCO_val2014_000000391895.jpg``);
                train = Karpathy ``train`` + ``restval``, validation = ``val``,
                test = ``test``
VQA v2          ``v2_OpenEnded_mscoco_{train2014,val2014}_questions.json``,
(``vqa_v2``)    ``v2_mscoco_{train2014,val2014}_annotations.json`` + images at
                ``{train2014,val2014}/COCO_{train2014,val2014}_{image_id:012d}.jpg``;
                train = train2014, validation = val2014 (test2015 has no answers)
MSR-VTT         ``MSRVTT_data.json`` (or the original ``videodatainfo.json``; same layout)
(``msrvtt``)    + pre-extracted frames at ``frames/<video_id>/<NNNNN>.jpg``;
                train / validation / test = the file's ``train`` / ``validate`` / ``test``
==============  ============================================================================

MSR-VTT is read from *pre-extracted JPEG frames*, not from the ``.mp4`` files: decoding
video needs ffmpeg, which is not a pip dependency of this project, whereas a frame folder
per video is the common pre-extracted layout. Extract them once, e.g.
``ffmpeg -i video0.mp4 -q:v 2 frames/video0/%05d.jpg`` (any frame rate; files are sorted
by their numeric name and ``num_frames`` of them are sampled uniformly, see
``sample_frame_indices``).

``read_<corpus>(data_dir, split, ...)`` yields plain python dicts; with ``decode=True``
(default) ``image`` is a decoded ``uint8 [S, S, 3]`` array and ``frames`` a
``uint8 [T, S, S, 3]`` array (JPEG decoded with ``tf.io.decode_jpeg``, three channels, so
grey-scale COCO images come out RGB, resized to the square ``image_size`` S with
``tf.image.resize`` bicubic + antialias, rounded and clipped); with ``decode=False`` they
carry ``image_path`` / ``frame_paths`` instead. ``vision_dataset`` builds the
``tf.data.Dataset`` the seqio sources in ``tasks/corpora_vision.py`` use: the annotation
records are read in python and the JPEGs decoded in the tf.data graph (in parallel). A
missing annotation file raises a one-line ``ValueError`` naming the expected files; a
missing image or frame folder raises one naming the expected path.

``per_caption=True`` (COCO, MSR-VTT) yields one example per caption (``caption``,
``caption_id``) for caption training instead of one per image/video with all ``captions``.
"""
from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Callable, Iterator, Mapping, Optional, Sequence

import numpy as np

from plug_jax.data import configure_tensorflow
from plug_jax.data.corpora import default_data_dir

tf = configure_tensorflow()

DEFAULT_IMAGE_SIZE = 224
DEFAULT_NUM_FRAMES = 8
RESIZE_METHOD = "bicubic"

COCO_FILE = "dataset_coco.json"
COCO_SPLITS = {"train": ("train", "restval"), "validation": ("val",), "test": ("test",)}
VQA_SUBSETS = {"train": "train2014", "validation": "val2014"}
VQA_QUESTIONS = "v2_OpenEnded_mscoco_{subset}_questions.json"
VQA_ANNOTATIONS = "v2_mscoco_{subset}_annotations.json"
VQA_IMAGE = "{subset}/COCO_{subset}_{image_id:012d}.jpg"
MSRVTT_FILES = ("MSRVTT_data.json", "videodatainfo.json")  # first one found is read
MSRVTT_SPLITS = {"train": "train", "validation": "validate", "test": "test"}
MSRVTT_FRAMES = "frames"

_S, _I = tf.string, tf.int64
# Feature -> (dtype, shape); S = image_size, T = num_frames, None = variable length.
COCO_CAPTIONS_FEATURES = {"image": (tf.uint8, ("S", "S", 3)), "image_id": (_I, ()),
                          "captions": (_S, (None,))}
COCO_CAPTION_PAIR_FEATURES = {"image": (tf.uint8, ("S", "S", 3)), "image_id": (_I, ()),
                              "caption": (_S, ()), "caption_id": (_I, ())}
VQA_FEATURES = {"image": (tf.uint8, ("S", "S", 3)), "image_id": (_I, ()),
                "question": (_S, ()), "question_id": (_I, ()), "answer": (_S, ()),
                "answers": (_S, (None,)), "answer_type": (_S, ())}
MSRVTT_CAPTIONS_FEATURES = {"frames": (tf.uint8, ("T", "S", "S", 3)), "video_id": (_S, ()),
                            "captions": (_S, (None,))}
MSRVTT_CAPTION_PAIR_FEATURES = {"frames": (tf.uint8, ("T", "S", "S", 3)),
                                "video_id": (_S, ()), "caption": (_S, ()),
                                "caption_id": (_I, ())}


# ------------------------------------------------------------------------- helpers
def _check_split(split: str, splits: Sequence[str], corpus: str) -> None:
    if split not in splits:
        raise ValueError(f"{corpus} has splits {sorted(splits)}, not {split!r}; pass one of "
                         f"them")


def _missing(corpus: str, split: str, data_dir, paths: Sequence[Path], expected: str):
    names = ", ".join(repr(str(p)) for p in paths)
    return ValueError(f"{corpus} {split} file(s) {names} not found; put the published files "
                      f"({expected}) in {str(data_dir)!r}")


def _load_json(path: Path, top_key: str):
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not JSON ({e.msg} at line {e.lineno}); expected the "
                         f"published annotation file") from None
    if not isinstance(data, dict) or top_key not in data:
        raise ValueError(f"{path} has no top-level {top_key!r} list; expected the published "
                         f"annotation file")
    return data


def _need_image(path: Path, what: str) -> str:
    if not path.is_file():
        raise ValueError(f"{what} image {str(path)!r} not found; the annotations list it, put "
                         f"the images there")
    return str(path)


def decode_image(path, image_size: int = DEFAULT_IMAGE_SIZE, method: str = RESIZE_METHOD):
    """JPEG file ``path`` -> ``uint8 [image_size, image_size, 3]`` tensor (graph-safe)."""
    img = tf.io.decode_jpeg(tf.io.read_file(path), channels=3)
    img = tf.image.resize(img, [image_size, image_size], method=method, antialias=True)
    img = tf.cast(tf.clip_by_value(tf.round(img), 0.0, 255.0), tf.uint8)
    return tf.ensure_shape(img, [image_size, image_size, 3])


def decode_frames(paths, image_size: int = DEFAULT_IMAGE_SIZE, method: str = RESIZE_METHOD):
    """JPEG files ``paths [T]`` -> ``uint8 [T, image_size, image_size, 3]`` tensor."""
    spec = tf.TensorSpec([image_size, image_size, 3], tf.uint8)
    return tf.map_fn(lambda p: decode_image(p, image_size, method), paths,
                     fn_output_signature=spec)


def sample_frame_indices(num_available: int, num_frames: int) -> list[int]:
    """``num_frames`` indices into ``num_available`` frames, uniformly spread.

    Segment centres: the clip is cut into ``num_frames`` equal segments and the frame at
    each segment's middle is taken, ``floor((i + 0.5) * N / T)``; with fewer frames than
    ``num_frames`` some are repeated (so every video gives exactly ``num_frames``).
    """
    if num_available <= 0 or num_frames <= 0:
        raise ValueError(f"cannot sample {num_frames} frames from {num_available}; both must "
                         f"be positive")
    return [min(num_available - 1, int((i + 0.5) * num_available / num_frames))
            for i in range(num_frames)]


def _frame_key(path: Path):
    stem = path.stem
    return (0, int(stem), "") if stem.isdigit() else (1, 0, stem)


def list_frames(data_dir, video_id: str) -> list[Path]:
    """The ``.jpg`` frames of ``video_id`` under ``<data_dir>/frames/<video_id>``, in order."""
    folder = Path(data_dir) / MSRVTT_FRAMES / video_id
    frames = sorted(folder.glob("*.jpg"), key=_frame_key) if folder.is_dir() else []
    if not frames:
        raise ValueError(f"MSR-VTT frames of {video_id!r} not found: no .jpg in "
                         f"{str(folder)!r}; extract them to <data_dir>/{MSRVTT_FRAMES}/"
                         f"<video_id>/<NNNNN>.jpg (e.g. ffmpeg -i {video_id}.mp4 -q:v 2 "
                         f"{MSRVTT_FRAMES}/{video_id}/%05d.jpg)")
    return frames


# ------------------------------------------------------------------------- records
def coco_records(data_dir, split: str, per_caption: bool = False) -> Iterator[dict]:
    """COCO Karpathy annotation records with ``image_path`` (images not opened)."""
    _check_split(split, COCO_SPLITS, "COCO Karpathy")
    path = Path(data_dir) / COCO_FILE
    if not path.is_file():
        raise _missing("COCO Karpathy", split, data_dir, [path],
                       f"{COCO_FILE} + images at <filepath>/<filename>")
    wanted = COCO_SPLITS[split]
    for entry in _load_json(path, "images")["images"]:
        if entry.get("split") not in wanted:
            continue
        image_path = str(Path(data_dir) / entry["filepath"] / entry["filename"])
        image_id = int(entry.get("cocoid", entry.get("imgid", -1)))
        sentences = entry.get("sentences", [])
        if per_caption:
            for n, s in enumerate(sentences):
                yield {"image_path": image_path, "image_id": image_id,
                       "caption": s["raw"].strip(), "caption_id": int(s.get("sentid", n))}
        else:
            yield {"image_path": image_path, "image_id": image_id,
                   "captions": [s["raw"].strip() for s in sentences]}


def vqa_records(data_dir, split: str) -> Iterator[dict]:
    """VQA v2 question + annotation records with ``image_path`` (images not opened)."""
    _check_split(split, VQA_SUBSETS, "VQA v2")
    subset = VQA_SUBSETS[split]
    root = Path(data_dir)
    q_path = root / VQA_QUESTIONS.format(subset=subset)
    a_path = root / VQA_ANNOTATIONS.format(subset=subset)
    missing = [p for p in (q_path, a_path) if not p.is_file()]
    if missing:
        expected = (f"{VQA_QUESTIONS.format(subset=subset)}, "
                    f"{VQA_ANNOTATIONS.format(subset=subset)} + images at "
                    f"{subset}/COCO_{subset}_<image_id:012d>.jpg")
        raise _missing("VQA v2", split, data_dir, missing, expected)
    annotations = {int(a["question_id"]): a
                   for a in _load_json(a_path, "annotations")["annotations"]}
    for q in _load_json(q_path, "questions")["questions"]:
        qid = int(q["question_id"])
        ann = annotations.get(qid)
        if ann is None:
            raise ValueError(f"{q_path} question {qid} has no annotation in {a_path}; are the "
                             f"two files of the same VQA v2 release and subset?")
        answers = sorted(ann.get("answers", []), key=lambda a: a.get("answer_id", 0))
        image_id = int(q["image_id"])
        yield {"image_path": str(root / VQA_IMAGE.format(subset=subset, image_id=image_id)),
               "image_id": image_id, "question": q["question"], "question_id": qid,
               "answer": ann["multiple_choice_answer"],
               "answers": [a["answer"] for a in answers],
               "answer_type": ann.get("answer_type", "")}


def msrvtt_records(data_dir, split: str, per_caption: bool = False,
                   num_frames: int = DEFAULT_NUM_FRAMES) -> Iterator[dict]:
    """MSR-VTT records with the ``num_frames`` sampled ``frame_paths`` (frames not opened)."""
    _check_split(split, MSRVTT_SPLITS, "MSR-VTT")
    root = Path(data_dir)
    path = next((root / f for f in MSRVTT_FILES if (root / f).is_file()), None)
    if path is None:
        raise _missing("MSR-VTT", split, data_dir, [root / f for f in MSRVTT_FILES],
                       f"{' or '.join(MSRVTT_FILES)} + frames at "
                       f"{MSRVTT_FRAMES}/<video_id>/<NNNNN>.jpg")
    data = _load_json(path, "videos")
    captions: dict[str, list[tuple[int, str]]] = {}
    for n, s in enumerate(data.get("sentences", [])):
        captions.setdefault(s["video_id"], []).append((int(s.get("sen_id", n)),
                                                       s["caption"].strip()))
    for video in data["videos"]:
        if video.get("split") != MSRVTT_SPLITS[split]:
            continue
        video_id = video["video_id"]
        frames = list_frames(root, video_id)
        frame_paths = [str(frames[i]) for i in sample_frame_indices(len(frames), num_frames)]
        sents = sorted(captions.get(video_id, []))
        if per_caption:
            for sen_id, caption in sents:
                yield {"frame_paths": frame_paths, "video_id": video_id, "caption": caption,
                       "caption_id": sen_id}
        else:
            yield {"frame_paths": frame_paths, "video_id": video_id,
                   "captions": [c for _, c in sents]}


# ------------------------------------------------------------------------- readers
def _decoded(records: Iterator[dict], image_size: int, what: str) -> Iterator[dict]:
    for rec in records:
        rec = dict(rec)
        if "image_path" in rec:
            path = _need_image(Path(rec.pop("image_path")), what)
            rec["image"] = decode_image(path, image_size).numpy()
        else:
            rec["frames"] = decode_frames(tf.constant(rec.pop("frame_paths")),
                                          image_size).numpy()
        yield rec


def read_coco_captions(data_dir, split: str, *, per_caption: bool = False,
                       image_size: int = DEFAULT_IMAGE_SIZE, decode: bool = True
                       ) -> Iterator[dict]:
    """COCO captions (Karpathy): ``{"image", "image_id", "captions"}`` per image, or
    ``{"image", "image_id", "caption", "caption_id"}`` per caption (``per_caption``)."""
    records = coco_records(data_dir, split, per_caption)
    return _decoded(records, image_size, "COCO") if decode else records


def read_vqa_v2(data_dir, split: str, *, image_size: int = DEFAULT_IMAGE_SIZE,
                decode: bool = True) -> Iterator[dict]:
    """VQA v2: ``{"image", "image_id", "question", "question_id", "answer", "answers",
    "answer_type"}``; ``answer`` is ``multiple_choice_answer``, ``answers`` the 10 human
    answers (by ``answer_id``)."""
    records = vqa_records(data_dir, split)
    return _decoded(records, image_size, "VQA v2") if decode else records


def read_msrvtt(data_dir, split: str, *, per_caption: bool = False,
                num_frames: int = DEFAULT_NUM_FRAMES, image_size: int = DEFAULT_IMAGE_SIZE,
                decode: bool = True) -> Iterator[dict]:
    """MSR-VTT: ``{"frames" [T,S,S,3], "video_id", "captions"}`` per video, or
    ``{"frames", "video_id", "caption", "caption_id"}`` per caption (``per_caption``)."""
    records = msrvtt_records(data_dir, split, per_caption, num_frames)
    return _decoded(records, image_size, "MSR-VTT") if decode else records


# ------------------------------------------------------------------------- tf.data
# corpus key (also the sub-directory of $PLUG_JAX_DATA_DIR) -> (records, features, splits)
CORPORA: Mapping[str, tuple[Callable[..., Iterator[dict]], Callable[[bool], Mapping], tuple]] = {
    "coco": (coco_records,
             lambda per_caption: (COCO_CAPTION_PAIR_FEATURES if per_caption
                                  else COCO_CAPTIONS_FEATURES),
             tuple(COCO_SPLITS)),
    "vqa_v2": (vqa_records, lambda per_caption: VQA_FEATURES, tuple(VQA_SUBSETS)),
    "msrvtt": (msrvtt_records,
               lambda per_caption: (MSRVTT_CAPTION_PAIR_FEATURES if per_caption
                                    else MSRVTT_CAPTIONS_FEATURES),
               tuple(MSRVTT_SPLITS)),
}


def _as_spec(dtype, shape, image_size: int, num_frames: int) -> tf.TensorSpec:
    sizes = {"S": image_size, "T": num_frames}
    return tf.TensorSpec([sizes.get(d, d) for d in shape], dtype)


def _split_records(corpus: str, data_dir, split: str, *, per_caption: bool, image_size: int,
                   num_frames: int):
    """``(records, signature, decode)``: the split's annotation records (read now: a
    missing or malformed annotation file, or the first image, fails here with one line),
    the ``tf.data`` signature of one record with its media as paths, and the map that
    decodes the paths."""
    if corpus not in CORPORA:
        raise ValueError(f"unknown vision corpus {corpus!r}; pass one of {sorted(CORPORA)}")
    records_fn, features_fn, _ = CORPORA[corpus]
    kwargs = {"num_frames": num_frames} if corpus == "msrvtt" else {}
    if corpus != "vqa_v2":
        kwargs["per_caption"] = per_caption
    records = list(records_fn(data_dir, split, **kwargs))
    what = {"coco": "COCO", "vqa_v2": "VQA v2", "msrvtt": "MSR-VTT"}[corpus]
    if records and "image_path" in records[0]:
        _need_image(Path(records[0]["image_path"]), what)

    features = features_fn(per_caption)
    media = "frames" if "frames" in features else "image"
    path_key = "frame_paths" if media == "frames" else "image_path"
    signature = {k: _as_spec(d, s, image_size, num_frames) for k, (d, s) in features.items()
                 if k != media}
    signature[path_key] = tf.TensorSpec([num_frames] if media == "frames" else [], tf.string)

    def row(i):
        rec = records[int(i)]
        if media == "image":
            _need_image(Path(rec["image_path"]), what)
        return {k: (np.array(rec[k], dtype=object) if isinstance(rec[k], list) else rec[k])
                for k in signature}

    def decode(ex):
        ex = dict(ex)
        paths = ex.pop(path_key)
        ex[media] = (decode_frames(paths, image_size) if media == "frames"
                     else decode_image(paths, image_size))
        return ex

    return records, signature, row, decode


def vision_dataset(corpus: str, data_dir, split: str, *, per_caption: bool = False,
                   image_size: int = DEFAULT_IMAGE_SIZE, num_frames: int = DEFAULT_NUM_FRAMES,
                   shuffle: bool = False, seed: Optional[int] = None) -> tf.data.Dataset:
    """``corpus`` (a key of ``CORPORA``) as a ``tf.data.Dataset`` of decoded examples.

    The annotation records are read now, so a missing or malformed annotation file (or the
    first image) fails here with a one-line ``ValueError``. ``shuffle`` permutes the records
    (a fresh permutation each pass, from ``seed``) before any image is decoded, so a large
    shuffle buffer of decoded images is not needed.
    """
    records, signature, row, decode = _split_records(
        corpus, data_dir, split, per_caption=per_caption, image_size=image_size,
        num_frames=num_frames)
    rng = np.random.default_rng(seed)

    def gen():
        order = rng.permutation(len(records)) if shuffle else range(len(records))
        for i in order:
            yield row(i)

    ds = tf.data.Dataset.from_generator(gen, output_signature=signature)
    return ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


class VisionCorpusSource:
    """Random access to a vision corpus (``plug_jax.data.indexed.IndexedSource``): the
    annotation records of a split are read once per process and kept; record ``i``'s image
    or frames are decoded from their files when ``i`` is read, so a process decodes only
    the media of its own examples."""

    def __init__(self, corpus: str, data_dir=None, **kwargs):
        self.corpus, self.data_dir, self.kwargs = corpus, data_dir, dict(kwargs)
        self._splits: dict = {}

    def _split(self, split: str):
        if split not in self._splits:
            root = default_data_dir(self.corpus) if self.data_dir is None else self.data_dir
            self._splits[split] = _split_records(self.corpus, root, split, **{
                "per_caption": False, "image_size": DEFAULT_IMAGE_SIZE,
                "num_frames": DEFAULT_NUM_FRAMES, **self.kwargs})
        return self._splits[split]

    def num_records(self, split: str) -> int:
        return len(self._split(split)[0])

    def records(self, split: str, indices: tf.data.Dataset, *, chunk: int = 64):
        _, signature, row, decode = self._split(split)

        def one(i):
            yield row(i)

        ds = indices.flat_map(lambda i: tf.data.Dataset.from_generator(
            one, args=(i,), output_signature=signature))
        return ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def vision_dataset_fn(corpus: str, data_dir=None, **kwargs):
    """A seqio ``FunctionDataSource`` ``dataset_fn(split, shuffle_files, seed)``.

    ``data_dir=None`` resolves ``default_data_dir(corpus)`` when the dataset is built.
    ``shuffle_files`` shuffles the records before decoding (see ``vision_dataset``).
    """
    def dataset_fn(split: str, shuffle_files: bool = False, seed: Optional[int] = None):
        root = default_data_dir(corpus) if data_dir is None else data_dir
        return vision_dataset(corpus, root, split, shuffle=shuffle_files, seed=seed, **kwargs)

    return dataset_fn


coco_captions_dataset = functools.partial(vision_dataset, "coco")
vqa_v2_dataset = functools.partial(vision_dataset, "vqa_v2")
msrvtt_dataset = functools.partial(vision_dataset, "msrvtt")
