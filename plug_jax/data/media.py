"""Images and videos named by ``plug-infer`` / ``plug-eval`` prompts, read into arrays.

No TensorFlow: numpy and Pillow only, so reading a prompt's media costs no TF start-up.

* :func:`load_image` -- any file Pillow opens -> float32 ``[H, W, 3]``, RGB, resized (bicubic,
  as CLIP) to the model's size and normalised ``(x / 255 - mean) / std`` (CLIP's mean / std).
* :func:`load_video` -- a folder of frame images (natural name order) or a ``.npy`` array
  (uint8 ``[T, H, W, 3]`` or float in ``[0, 1]``, read with ``allow_pickle=False``) ->
  float32 ``[T, H, W, 3]``, ``T`` frames sampled uniformly.
* :func:`parse_prompt` / :func:`load_prompts` -- the prompt syntax
  ``image:PATH|text``, ``video:PATH|text``, ``videos:DIR`` (a folder of videos: one prompt
  per frame folder or ``.npy`` in it) and the ``--prompts_jsonl`` file -> one dict per
  prompt with ``text`` and, when named, ``image`` / ``frames``.

Every bad input raises :class:`MediaError` (a ``ValueError``) whose message is one line
naming the path and the fix; ``plug_jax.cli.user_errors`` turns it into ``error:`` + exit 2.
See docs/media_prompts.md.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any, Sequence

import numpy as np

# CLIP's pixel statistics (the values plug_jax.data.multimodal uses; a test keeps them equal).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# Files of a frame folder that count as frames (compared lower-case).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff",
                    ".ppm", ".pgm")
MEDIA_KINDS = ("image", "video", "videos")
# Prefixes that look like an attempt at naming media: refused rather than sent as text.
_MEDIA_LIKE = frozenset({"image", "images", "img", "picture", "photo", "pic", "video",
                         "videos", "vid", "frames", "frame", "clip", "movie", "audio"})
JSONL_MEDIA_KEYS = ("image", "video")
_FRAMES_FIX = "fix: extract frames, e.g. `ffmpeg -i clip.mp4 DIR/frame_%04d.png`, and name DIR"


class MediaError(ValueError):
    """Bad media input; the message is one line naming the path and the fix."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).splitlines()))


@dataclasses.dataclass(frozen=True)
class Prompt:
    """One parsed ``--prompt``: its text (may be ``""``) and the media it names."""
    text: str = ""
    image_path: str | None = None
    video_path: str | None = None
    videos_path: str | None = None  # videos:DIR, a folder of videos (one item per video)


def _q(path) -> str:
    """A path quoted for a one-line message (newlines and odd characters escaped)."""
    return repr(os.fspath(path))


def _one_line(err: BaseException) -> str:
    lines = str(err).splitlines()
    return f"{type(err).__name__}: {lines[0] if lines else ''}".rstrip(": ")


def _hw(size) -> tuple[int, int]:
    """``int`` or ``(height, width)`` -> ``(height, width)``."""
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        h = w = int(size)
    else:
        try:
            h, w = (int(s) for s in size)
        except (TypeError, ValueError):
            raise MediaError(f"image size {size!r} is not an int or (height, width); "
                             f"fix: pass e.g. 224 or (224, 224)") from None
    if h < 1 or w < 1:
        raise MediaError(f"image size {size!r} is not positive; fix: pass e.g. 224")
    return h, w


def _normalize(x: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """float32 pixels in ``[0, 1]`` -> ``(x - mean) / std`` (float32 throughout)."""
    return (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


def _pixels_u8(pixels: np.ndarray, mean, std) -> np.ndarray:
    """uint8 ``[..., 3]`` -> ``(x / 255 - mean) / std`` as float32."""
    return _normalize(pixels.astype(np.float32) / np.float32(255.0), mean, std)


def _bicubic():
    from PIL import Image
    return Image.Resampling.BICUBIC


def _open_rgb(path: str, what: str = "image"):
    """Pillow image of ``path`` in RGB, fully decoded; MediaError if it cannot be."""
    from PIL import Image
    if not os.path.exists(path):
        raise MediaError(f"{what} {_q(path)} does not exist; fix: check the path (relative "
                         f"paths are from the current folder, or the JSONL file's folder)")
    if os.path.isdir(path):
        raise MediaError(f"{what} {_q(path)} is a folder; fix: name an image file "
                         f"(a folder of frames is a video: use video:PATH)")
    try:
        with Image.open(path) as im:
            im.load()
            return im.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise MediaError(f"{what} {_q(path)} cannot be read as an image ({_one_line(e)}); "
                         f"fix: re-save it as PNG or JPEG") from None


def _resized(im, hw: tuple[int, int]):
    h, w = hw
    if im.size == (w, h):  # Pillow sizes are (width, height)
        return im
    return im.resize((w, h), resample=_bicubic())


def load_image(path: str | os.PathLike, size: int | tuple[int, int], *,
               mean: Sequence[float] = CLIP_MEAN,
               std: Sequence[float] = CLIP_STD) -> np.ndarray:
    """Any image Pillow opens -> float32 ``[H, W, 3]``: RGB, bicubic-resized to ``size``
    (``int`` for square, or ``(height, width)``; an image already that size is not
    resampled), then ``(x / 255 - mean) / std``."""
    hw = _hw(size)
    path = os.fspath(path)
    im = _resized(_open_rgb(path), hw)
    return _pixels_u8(np.asarray(im, dtype=np.uint8), mean, std)


def _natural_key(name: str):
    """``frame_2`` before ``frame_10``: digit runs compare as numbers."""
    parts = re.split(r"(\d+)", name)
    return [int(p) if i % 2 else p.lower() for i, p in enumerate(parts)], name


def frame_files(folder: str | os.PathLike) -> list[str]:
    """The frame images of ``folder`` (image extensions, no hidden files), natural order."""
    folder = os.fspath(folder)
    names = [n for n in os.listdir(folder)
             if not n.startswith(".") and os.path.splitext(n)[1].lower() in IMAGE_EXTENSIONS
             and os.path.isfile(os.path.join(folder, n))]
    return [os.path.join(folder, n) for n in sorted(names, key=_natural_key)]


def sample_indices(num_available: int, num_frames: int) -> np.ndarray:
    """``num_frames`` indices spread uniformly over ``num_available`` frames: the middle
    frame of each of ``num_frames`` equal segments (all frames, in order, when the counts
    are equal)."""
    i = np.arange(num_frames, dtype=np.int64)
    return (2 * i + 1) * num_available // (2 * num_frames)


def _too_few(path: str, n: int, num_frames: int) -> MediaError:
    return MediaError(f"video {_q(path)} has {n} frame(s) but the model needs {num_frames}; "
                      f"fix: give a video with at least {num_frames} frames")


def _video_from_folder(path, num_frames, hw, mean, std) -> np.ndarray:
    files = frame_files(path)
    if not files:
        raise MediaError(f"video folder {_q(path)} has no frame images "
                         f"({', '.join(IMAGE_EXTENSIONS[:3])}, ...); {_FRAMES_FIX}")
    if len(files) < num_frames:
        raise _too_few(path, len(files), num_frames)
    _check_one_frame_size(path, files)
    frames = [np.asarray(_resized(_open_rgb(files[k], "frame"), hw), dtype=np.uint8)
              for k in sample_indices(len(files), num_frames)]
    return _pixels_u8(np.stack(frames), mean, std)


def _check_one_frame_size(path: str, files: list[str]) -> None:
    """Every frame of a video has one size (read from the headers only): a frame of another
    size means frames of different videos or extractions were mixed in one folder."""
    from PIL import Image
    first = None
    for f in files:
        try:
            with Image.open(f) as im:
                size = im.size
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            raise MediaError(f"frame {_q(f)} of video {_q(path)} cannot be read "
                             f"({_one_line(e)}); fix: re-extract the frames") from None
        if first is None:
            first = (f, size)
        elif size != first[1]:
            raise MediaError(
                f"video folder {_q(path)} mixes frame sizes: {_q(os.path.basename(f))} is "
                f"{size[0]}x{size[1]} but {_q(os.path.basename(first[0]))} is "
                f"{first[1][0]}x{first[1][1]}; fix: give every frame of a video one size "
                f"(extract them again, e.g. `ffmpeg -i clip.mp4 -vf scale=W:H DIR/frame_%04d.png`)")


def video_folders(path: str | os.PathLike) -> list[str]:
    """The videos of a folder of videos (``videos:DIR``): its sub-folders and ``.npy`` files,
    in natural name order (hidden entries skipped)."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise MediaError(f"videos folder {_q(path)} "
                         f"{'is a file' if os.path.exists(path) else 'does not exist'}; fix: "
                         f"name a folder holding one frame folder (or .npy file) per video")
    names = sorted((n for n in os.listdir(path) if not n.startswith(".")), key=_natural_key)
    found = [os.path.join(path, n) for n in names
             if os.path.isdir(os.path.join(path, n)) or n.lower().endswith(".npy")]
    if not found:
        raise MediaError(f"videos folder {_q(path)} holds no frame folders or .npy videos; "
                         f"fix: put one folder of frames per video in it ({_FRAMES_FIX})")
    return found


def _resize_float(frame: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """float ``[h, w, 3]`` -> float32 ``[H, W, 3]``, each channel bicubic in Pillow's "F"
    mode (no rounding to 8 bits)."""
    from PIL import Image
    h, w = hw
    if frame.shape[:2] == (h, w):
        return frame.astype(np.float32)
    return np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(frame[..., c],
                                                                     dtype=np.float32), "F")
                                .resize((w, h), resample=_bicubic()), dtype=np.float32)
                     for c in range(frame.shape[-1])], axis=-1)


def _video_from_npy(path, num_frames, hw, mean, std) -> np.ndarray:
    from PIL import Image
    fix = "fix: save frames as np.save(PATH, uint8 array [T, H, W, 3])"
    try:
        with open(path, "rb") as f:
            magic = f.read(6)
        if magic != b"\x93NUMPY":  # np.load would take it for a pickle (and refuse it)
            raise MediaError(f"video {_q(path)} is not a readable .npy file (no .npy "
                             f"header); {fix}")
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as e:
        if isinstance(e, MediaError):
            raise
        if "pickle" in str(e).lower() or "object" in str(e).lower():
            raise MediaError(f"video {_q(path)} holds Python objects, which are never "
                             f"unpickled; {fix}") from None
        raise MediaError(f"video {_q(path)} is not a readable .npy file "
                         f"({_one_line(e)}); {fix}") from None
    except (OSError, EOFError) as e:
        raise MediaError(f"video {_q(path)} is not a readable .npy file "
                         f"({_one_line(e)}); {fix}") from None
    if not isinstance(arr, np.ndarray):  # np.load gives an NpzFile for .npz data
        raise MediaError(f"video {_q(path)} is not a single .npy array; {fix}")
    if arr.dtype.hasobject or arr.dtype.fields is not None:
        raise MediaError(f"video {_q(path)} holds {arr.dtype} values; {fix}")
    if arr.ndim != 4 or arr.shape[-1] != 3 or 0 in arr.shape[1:3]:
        raise MediaError(f"video {_q(path)} has shape {tuple(arr.shape)}, not [T, H, W, 3]; "
                         f"{fix}")
    is_float = np.issubdtype(arr.dtype, np.floating)
    if arr.dtype != np.uint8 and not is_float:
        raise MediaError(f"video {_q(path)} holds {arr.dtype} values, not uint8 or float in "
                         f"[0, 1]; {fix}")
    if arr.shape[0] < num_frames:
        raise _too_few(path, arr.shape[0], num_frames)
    picked = np.array(arr[sample_indices(arr.shape[0], num_frames)])  # copy off the mmap
    del arr
    if not is_float:
        frames = [np.asarray(_resized(Image.fromarray(f, "RGB"), hw), dtype=np.uint8)
                  for f in picked]
        return _pixels_u8(np.stack(frames), mean, std)
    outside = int(np.count_nonzero(~((picked >= 0) & (picked <= 1))))  # NaN counts
    if outside:
        raise MediaError(f"video {_q(path)} has {outside} float value(s) outside [0, 1] in "
                         f"the sampled frames; fix: scale them to [0, 1] or save uint8 0..255")
    return _normalize(np.stack([_resize_float(f, hw) for f in picked]), mean, std)


def load_video(path: str | os.PathLike, num_frames: int, size: int | tuple[int, int], *,
               mean: Sequence[float] = CLIP_MEAN,
               std: Sequence[float] = CLIP_STD) -> np.ndarray:
    """A folder of frame images or a ``.npy`` uint8 ``[T, H, W, 3]`` (or float in
    ``[0, 1]``) -> float32 ``[num_frames, H, W, 3]``: frames sampled uniformly
    (:func:`sample_indices`), each treated like :func:`load_image`."""
    hw = _hw(size)
    if isinstance(num_frames, bool) or not isinstance(num_frames, (int, np.integer)) \
            or num_frames < 1:
        raise MediaError(f"num_frames={num_frames!r} is not a positive int; fix: pass the "
                         f"model's frame count, e.g. 8")
    num_frames = int(num_frames)
    path = os.fspath(path)
    if not os.path.exists(path):
        raise MediaError(f"video {_q(path)} does not exist; fix: check the path (relative "
                         f"paths are from the current folder, or the JSONL file's folder)")
    if os.path.isdir(path):
        return _video_from_folder(path, num_frames, hw, mean, std)
    if path.lower().endswith(".npy"):
        return _video_from_npy(path, num_frames, hw, mean, std)
    raise MediaError(f"video {_q(path)} is neither a folder of frame images nor a .npy "
                     f"file; {_FRAMES_FIX}")


# ------------------------------------------------------------------------ prompt syntax
_SEGMENT = re.compile(r"([A-Za-z][A-Za-z0-9_-]*):(.*)", re.S)


def parse_prompt(text: str) -> Prompt:
    """``[image:PATH|][video:PATH|]TEXT`` -> :class:`Prompt`.

    The prompt is split at ``|``: leading segments ``image:PATH`` / ``video:PATH`` name
    media (each kind at most once, ``~`` expanded); the rest is the text, ``|`` included.
    An empty segment ends the media part and is dropped, so ``|image:x`` is the text
    ``image:x``. A prompt without ``|`` and without a media prefix is plain text, e.g.
    ``Question: why?``. A leading ``KEY:VALUE`` (no spaces) with an unknown ``KEY`` is
    refused when a ``|`` follows it or ``KEY`` reads like a media kind (``img:``,
    ``Image:``, ``audio:``).
    """
    if not isinstance(text, str):
        raise MediaError(f"prompt {text!r} is not a string; fix: pass text such as "
                         f"'image:cat.png|a photo of'")
    media: dict[str, str] = {}
    rest = text
    while True:
        segment, sep, tail = rest.partition("|")
        if sep and not segment:  # "|..." : the rest is text
            rest = tail
            break
        m = _SEGMENT.fullmatch(segment)
        if not m:
            break
        key, value = m.group(1), m.group(2)
        if key in MEDIA_KINDS:
            path = value.strip()
            if not path:
                raise MediaError(f"prompt {text!r} names {key}: with no path; fix: write "
                                 f"{key}:PATH|text")
            if key in media:
                raise MediaError(f"prompt {text!r} names {key}: twice; fix: one {key} per "
                                 f"prompt (use --prompts_jsonl for batches)")
            media[key] = os.path.expanduser(path)
            rest = tail if sep else ""
            if not sep:
                break
            continue
        if not re.search(r"\s", segment) and (sep or key.lower() in _MEDIA_LIKE):
            raise MediaError(f"prompt {text!r} starts with unknown media kind {key + ':'!r}; "
                             f"fix: use image:PATH or video:PATH, or begin the prompt with "
                             f"'|' to send it as plain text")
        break
    if "videos" in media and (rest.strip() or len(media) > 1):
        raise MediaError(f"prompt {text!r}: videos:DIR stands alone (each of its videos is "
                         f"a prompt); fix: give the texts to rank as separate prompts")
    return Prompt(text=rest, image_path=media.get("image"), video_path=media.get("video"),
                  videos_path=media.get("videos"))


def _load_media(out: dict, image_path, video_path, image_size, num_frames, mean, std):
    if image_path is not None:
        out["image"] = load_image(image_path, image_size, mean=mean, std=std)
    if video_path is not None:
        if num_frames is None:
            raise MediaError(f"video {_q(video_path)} given but the model takes no video "
                             f"(num_frames is None); fix: use an image or a video model")
        out["frames"] = load_video(video_path, num_frames, image_size, mean=mean, std=std)


def _jsonl_rows(jsonl: str):
    """``(line_number, object)`` for each non-blank line of ``jsonl``."""
    if not os.path.isfile(jsonl):
        raise MediaError(f"--prompts_jsonl {_q(jsonl)} "
                         f"{'is a folder' if os.path.isdir(jsonl) else 'does not exist'}; "
                         f"fix: name a file with one JSON object per line")
    with open(jsonl, "rb") as f:
        raw = f.read()
    for n, line in enumerate(raw.split(b"\n"), start=1):
        def bad(why):
            return MediaError(f"{_q(jsonl)} line {n}: {why}; fix: write one JSON object per "
                              f"line, e.g. {{\"image\": \"cat.png\", \"text\": \"a photo of\"}}")
        try:
            line = line.decode("utf-8")
        except UnicodeDecodeError:
            raise bad("not UTF-8 text") from None
        if n == 1:
            line = line.removeprefix("\ufeff")
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise bad(f"invalid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(obj, dict):
            raise bad(f"a JSON {type(obj).__name__}, not an object")
        for key in ("text",) + JSONL_MEDIA_KEYS:
            if key in obj and not isinstance(obj[key], str):
                raise bad(f"{key!r} is {json.dumps(obj[key])[:40]}, not a string")
        for key in JSONL_MEDIA_KEYS:
            if key in obj and not obj[key].strip():
                raise bad(f"{key!r} is an empty path")
        if "frames" in obj:
            raise bad("'frames' is filled from 'video'; name the video as \"video\": PATH")
        if not any(k in obj for k in ("text",) + JSONL_MEDIA_KEYS):
            raise bad("none of 'text', 'image', 'video'")
        yield n, obj


def load_prompts(prompts: Sequence[str] | None, jsonl: str | os.PathLike | None, *,
                 image_size: int | tuple[int, int] | None,
                 num_frames: int | None,
                 mean: Sequence[float] = CLIP_MEAN,
                 std: Sequence[float] = CLIP_STD) -> list[dict[str, Any]]:
    """``--prompt`` values (:func:`parse_prompt` syntax), then the ``--prompts_jsonl``
    lines -> one dict per prompt: ``text`` (str, may be ``""``), ``image`` float32
    ``[H, W, 3]`` and / or ``frames`` float32 ``[T, H, W, 3]`` when named, and ``source``
    (the image's path, else the video's) when media are named.

    JSONL lines are objects with keys among ``text``, ``image``, ``video`` (relative paths
    are from the JSONL file's folder; ``text`` is taken as is, not parsed); other keys
    (``target``, ``id``, ...) are passed through unchanged. ``image_size`` / ``num_frames``
    are the model's; naming media a model without them cannot take is a MediaError.
    """
    def load(out, image_path, video_path):
        if image_size is None and (image_path or video_path):
            named = image_path if image_path is not None else video_path
            raise MediaError(f"{_q(named)} given but the model takes no images or videos "
                             f"(image_size is None); fix: send text only")
        _load_media(out, image_path, video_path, image_size, num_frames, mean, std)
        if image_path or video_path:
            out.setdefault("source", image_path or video_path)
        return out

    results = []
    for text in prompts or ():
        p = parse_prompt(text)
        if p.videos_path is not None:  # one prompt per video of the folder
            results.extend(load({"text": ""}, None, v) for v in video_folders(p.videos_path))
            continue
        results.append(load({"text": p.text}, p.image_path, p.video_path))
    if jsonl is not None:
        jsonl = os.fspath(jsonl)
        folder = os.path.dirname(os.path.abspath(jsonl))
        for n, obj in _jsonl_rows(jsonl):
            paths = {k: os.path.join(folder, os.path.expanduser(obj[k]))
                     for k in JSONL_MEDIA_KEYS if k in obj}
            out = {"text": obj.get("text", "")}
            out.update((k, v) for k, v in obj.items() if k not in ("text",) + JSONL_MEDIA_KEYS)
            try:
                results.append(load(out, paths.get("image"), paths.get("video")))
            except MediaError as e:
                raise MediaError(f"{_q(jsonl)} line {n}: {e}") from None
    return results
