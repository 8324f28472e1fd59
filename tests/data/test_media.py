"""plug_jax.data.media: images / videos named by prompts, read without TensorFlow."""
import ast
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from plug_jax.data import media
from plug_jax.data.media import (CLIP_MEAN, CLIP_STD, MediaError, Prompt, load_image,
                                 load_prompts, load_video, parse_prompt)

MEAN = np.array(CLIP_MEAN, np.float64)
STD = np.array(CLIP_STD, np.float64)


def _rand_u8(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def _save(path, pixels, **kw):
    Image.fromarray(pixels).save(path, **kw)
    return str(path)


def _reference(path, hw, mean=MEAN, std=STD):
    """Independent numpy reference: Pillow resize (bicubic) then (x/255 - mean)/std."""
    with Image.open(path) as im:
        im = im.convert("RGB")
        if im.size != (hw[1], hw[0]):
            im = im.resize((hw[1], hw[0]), Image.Resampling.BICUBIC)
        x = np.asarray(im).astype(np.float64)
    return (x / 255.0 - mean) / std


def _one_line_with(err: pytest.ExceptionInfo, *needles):
    msg = str(err.value)
    assert "\n" not in msg, msg
    assert "fix" in msg, msg
    for n in needles:
        assert str(n) in msg, (n, msg)
    assert isinstance(err.value, ValueError)
    return msg


# ------------------------------------------------------------------------ constants
def test_clip_constants_equal_multimodal():
    """multimodal.py imports TensorFlow, so its tuples are read from its source."""
    src = open(os.path.join(os.path.dirname(media.__file__), "multimodal.py"),
               encoding="utf-8").read()
    found = {}
    for node in ast.parse(src).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 \
                and isinstance(node.targets[0], ast.Name) \
                and node.targets[0].id in ("CLIP_MEAN", "CLIP_STD"):
            found[node.targets[0].id] = ast.literal_eval(node.value)
        if isinstance(node, ast.ImportFrom) and node.module == "plug_jax.data.media":
            found.update({a.asname or a.name: getattr(media, a.name) for a in node.names
                          if a.name in ("CLIP_MEAN", "CLIP_STD")})
    assert found == {"CLIP_MEAN": CLIP_MEAN, "CLIP_STD": CLIP_STD}


def test_media_imports_no_tensorflow():
    code = ("import sys; import plug_jax.data.media; "
            "print('tensorflow' in sys.modules, 'jax' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["False", "False"]


# ------------------------------------------------------------------------ images
@pytest.mark.parametrize("ext,kw", [("png", {}), ("jpg", {"quality": 90})])
@pytest.mark.parametrize("size,hw", [(24, (24, 24)), ((16, 40), (16, 40))])
def test_load_image_matches_numpy_reference(tmp_path, ext, kw, size, hw):
    path = _save(tmp_path / f"x.{ext}", _rand_u8((37, 29, 3), seed=1), **kw)
    got = load_image(path, size)
    assert got.dtype == np.float32 and got.shape == hw + (3,)
    np.testing.assert_allclose(got, _reference(path, hw), rtol=0, atol=1e-6)


def test_load_image_at_model_size_is_not_resampled(tmp_path):
    pixels = _rand_u8((32, 48, 3), seed=2)
    path = _save(tmp_path / "x.png", pixels)
    got = load_image(path, (32, 48))
    want = (pixels.astype(np.float32) / np.float32(255.0)
            - np.asarray(CLIP_MEAN, np.float32)) / np.asarray(CLIP_STD, np.float32)
    np.testing.assert_array_equal(got, want)
    # and the round trip recovers the exact bytes
    back = np.rint((got * np.asarray(CLIP_STD, np.float32)
                    + np.asarray(CLIP_MEAN, np.float32)) * 255).astype(np.uint8)
    np.testing.assert_array_equal(back, pixels)


def test_load_image_grey_and_rgba_become_rgb_and_mean_std_override(tmp_path):
    grey = _rand_u8((10, 10), seed=3)
    path = _save(tmp_path / "g.png", grey)
    got = load_image(path, 10, mean=(0, 0, 0), std=(1, 1, 1))
    np.testing.assert_allclose(got, np.repeat(grey[..., None], 3, -1) / 255.0, atol=1e-7)
    rgba = _rand_u8((10, 10, 4), seed=4)
    path = _save(tmp_path / "a.png", rgba)
    got = load_image(path, 10, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    np.testing.assert_allclose(got, (rgba[..., :3] / 255.0 - 0.5) / 0.5, atol=1e-6)


def test_image_errors_are_one_line_with_path(tmp_path):
    missing = str(tmp_path / "nope.png")
    with pytest.raises(MediaError) as e:
        load_image(missing, 8)
    _one_line_with(e, missing, "does not exist")
    corrupt = tmp_path / "bad.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n not really a png\n\n")
    with pytest.raises(MediaError) as e:
        load_image(corrupt, 8)
    _one_line_with(e, str(corrupt), "cannot be read")
    truncated = tmp_path / "cut.jpg"
    _save(truncated, _rand_u8((64, 64, 3)), quality=95)
    truncated.write_bytes(truncated.read_bytes()[:300])
    with pytest.raises(MediaError) as e:
        load_image(truncated, 8)
    _one_line_with(e, str(truncated))
    with pytest.raises(MediaError) as e:
        load_image(tmp_path, 8)
    _one_line_with(e, str(tmp_path), "folder")


# ------------------------------------------------------------------------ videos
def _frame_folder(folder, n, hw=(12, 14)):
    """Frames named frame_1 .. frame_n (no zero padding); frame k is constant k*10."""
    folder.mkdir()
    for k in range(1, n + 1):
        _save(folder / f"frame_{k}.png", np.full(hw + (3,), k * 10, np.uint8))
    return folder


def _frame_values(frames):
    """Recover each frame's constant pixel value (frames are constant images)."""
    x = frames * np.asarray(CLIP_STD, np.float32) + np.asarray(CLIP_MEAN, np.float32)
    return [int(round(float(v))) for v in (x * 255).mean(axis=(1, 2, 3))]


def test_frame_folder_natural_order_and_uniform_sampling(tmp_path):
    folder = _frame_folder(tmp_path / "clip", 12)
    (folder / "notes.txt").write_text("not a frame")
    (folder / ".hidden.png").write_bytes(b"junk")
    names = [os.path.basename(p) for p in media.frame_files(folder)]
    assert names == [f"frame_{k}.png" for k in range(1, 13)]  # frame_2 before frame_10
    got = load_video(folder, 4, (12, 14))
    assert got.dtype == np.float32 and got.shape == (4, 12, 14, 3)
    # 12 frames in 4 segments of 3: the middle frame of each (indices 1, 4, 7, 10)
    assert _frame_values(got) == [20, 50, 80, 110]
    assert _frame_values(load_video(folder, 12, (12, 14))) == [10 * k for k in range(1, 13)]
    assert _frame_values(load_video(folder, 1, (12, 14))) == [70]


def test_frame_folder_resizes_like_load_image(tmp_path):
    folder = tmp_path / "clip"
    folder.mkdir()
    for k in range(3):
        _save(folder / f"f{k}.jpg", _rand_u8((20, 30, 3), seed=k))
    got = load_video(folder, 3, 16)
    for k in range(3):
        np.testing.assert_allclose(got[k], _reference(folder / f"f{k}.jpg", (16, 16)),
                                   atol=1e-6)


def test_sample_indices():
    assert media.sample_indices(10, 10).tolist() == list(range(10))
    assert media.sample_indices(100, 4).tolist() == [12, 37, 62, 87]
    for n in range(1, 30):
        for t in range(1, n + 1):
            idx = media.sample_indices(n, t)
            assert len(set(idx.tolist())) == t and idx.min() >= 0 and idx.max() < n
            assert np.all(np.diff(idx) > 0)


def test_npy_uint8_and_float(tmp_path):
    u8 = _rand_u8((6, 10, 8, 3), seed=5)
    np.save(tmp_path / "u8.npy", u8)
    got = load_video(tmp_path / "u8.npy", 3, (10, 8))
    idx = [1, 3, 5]
    want = (u8[idx] / 255.0 - MEAN) / STD
    np.testing.assert_allclose(got, want, atol=1e-6)
    # resized: each frame as Pillow bicubic
    got = load_video(tmp_path / "u8.npy", 3, 5)
    for j, k in enumerate(idx):
        ref = np.asarray(Image.fromarray(u8[k]).resize((5, 5), Image.Resampling.BICUBIC))
        np.testing.assert_allclose(got[j], (ref / 255.0 - MEAN) / STD, atol=1e-6)
    f = np.random.default_rng(6).random((6, 10, 8, 3)).astype(np.float32)
    np.save(tmp_path / "f.npy", f)
    got = load_video(tmp_path / "f.npy", 3, (10, 8))
    np.testing.assert_allclose(got, (f[idx] - MEAN) / STD, atol=1e-6)
    got = load_video(tmp_path / "f.npy", 2, (20, 16))  # float resize keeps float precision
    assert got.shape == (2, 20, 16, 3) and np.all(np.isfinite(got))
    np.save(tmp_path / "f64.npy", f.astype(np.float64))
    np.testing.assert_allclose(load_video(tmp_path / "f64.npy", 3, (10, 8)),
                               (f[idx] - MEAN) / STD, atol=1e-6)


def test_npy_object_array_refused_without_unpickling(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "evil.npy"
    np.save(path, np.array([Evil(), Evil()], dtype=object), allow_pickle=True)
    assert not marker.exists()
    with pytest.raises(MediaError) as e:
        load_video(path, 1, 8)
    _one_line_with(e, str(path), "never unpickled")
    assert not marker.exists()


@pytest.mark.parametrize("name,arr,needle", [
    ("shape.npy", np.zeros((4, 8, 8), np.uint8), "shape"),
    ("gray.npy", np.zeros((4, 8, 8, 1), np.uint8), "shape"),
    ("int.npy", np.zeros((4, 8, 8, 3), np.int64), "int64"),
    ("range.npy", np.full((4, 8, 8, 3), 2.0, np.float32), "outside [0, 1]"),
    ("nan.npy", np.full((4, 8, 8, 3), np.nan, np.float32), "outside [0, 1]"),
    ("few.npy", np.zeros((2, 8, 8, 3), np.uint8), "has 2 frame(s) but the model needs 4"),
])
def test_npy_errors(tmp_path, name, arr, needle):
    path = tmp_path / name
    np.save(path, arr)
    with pytest.raises(MediaError) as e:
        load_video(path, 4, 8)
    _one_line_with(e, str(path), needle)


def test_video_errors_are_one_line_with_path(tmp_path):
    missing = str(tmp_path / "nope")
    with pytest.raises(MediaError) as e:
        load_video(missing, 2, 8)
    _one_line_with(e, missing, "does not exist")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("x")
    with pytest.raises(MediaError) as e:
        load_video(empty, 2, 8)
    _one_line_with(e, str(empty), "no frame images", "ffmpeg")
    folder = _frame_folder(tmp_path / "three", 3)
    with pytest.raises(MediaError) as e:
        load_video(folder, 8, 8)
    _one_line_with(e, str(folder), "has 3 frame(s) but the model needs 8")
    (folder / "frame_2.png").write_bytes(b"broken")
    with pytest.raises(MediaError) as e:
        load_video(folder, 3, 8)
    _one_line_with(e, str(folder / "frame_2.png"), "cannot be read")
    mp4 = tmp_path / "clip.mp4"
    mp4.write_bytes(b"\x00\x00\x00\x18ftypmp42")
    with pytest.raises(MediaError) as e:
        load_video(mp4, 2, 8)
    _one_line_with(e, str(mp4), "ffmpeg")
    bad = tmp_path / "bad.npy"
    bad.write_bytes(b"not numpy")
    with pytest.raises(MediaError) as e:
        load_video(bad, 2, 8)
    _one_line_with(e, str(bad), "not a readable .npy")
    with pytest.raises(MediaError):
        load_video(folder, 0, 8)


# ------------------------------------------------------------------------ prompt syntax
@pytest.mark.parametrize("text,want", [
    ("a photo of", Prompt("a photo of")),
    ("", Prompt("")),
    ("image:cat.png", Prompt("", image_path="cat.png")),
    ("image:cat.png|a photo of", Prompt("a photo of", image_path="cat.png")),
    ("image: my cat.png |a | b", Prompt("a | b", image_path="my cat.png")),
    ("video:clips/run|what happens?", Prompt("what happens?", video_path="clips/run")),
    ("video:v.npy|image:c.png|Q: x", Prompt("Q: x", image_path="c.png", video_path="v.npy")),
    ("Question: what is it?", Prompt("Question: what is it?")),
    ("translate:hello", Prompt("translate:hello")),
    ("Image: a cat on a mat", Prompt("Image: a cat on a mat")),
    ("a|b", Prompt("a|b")),
    ("|image:not a path", Prompt("image:not a path")),
    ("image:c.png||image:literal", Prompt("image:literal", image_path="c.png")),
])
def test_parse_prompt(text, want):
    assert parse_prompt(text) == want


def test_parse_prompt_expands_home(monkeypatch):
    monkeypatch.setenv("HOME", "/home/someone")
    assert parse_prompt("image:~/cat.png").image_path == "/home/someone/cat.png"


@pytest.mark.parametrize("text,needle", [
    ("audio:x.wav|hi", "'audio:'"),
    ("img:cat.png", "'img:'"),
    ("Image:cat.png", "'Image:'"),
    ("foo:bar|baz", "'foo:'"),
    ("image:|text", "no path"),
    ("image:a.png|image:b.png|t", "twice"),
])
def test_parse_prompt_errors(text, needle):
    with pytest.raises(MediaError) as e:
        parse_prompt(text)
    _one_line_with(e, needle)


# ------------------------------------------------------------------------ load_prompts
def test_load_prompts_cli_and_jsonl(tmp_path):
    img = _save(tmp_path / "cat.png", _rand_u8((9, 9, 3), seed=7))
    sub = tmp_path / "data"
    sub.mkdir()
    _save(sub / "dog.jpg", _rand_u8((20, 12, 3), seed=8))
    _frame_folder(sub / "clip", 5, hw=(8, 8))
    jsonl = sub / "batch.jsonl"
    jsonl.write_text("\n".join([
        json.dumps({"image": "dog.jpg", "text": "a photo of", "target": "a dog", "id": 3}),
        "",
        json.dumps({"video": "clip", "id": "v1"}),
        json.dumps({"text": "image:not/parsed.png", "meta": {"k": [1, 2]}}),
        json.dumps({"image": str(tmp_path / "cat.png"), "video": "clip"}),
    ]) + "\n")
    out = load_prompts([f"image:{img}|what is", "just text"], str(jsonl),
                       image_size=8, num_frames=2)
    assert len(out) == 6
    assert out[0]["text"] == "what is" and out[0]["image"].shape == (8, 8, 3)
    np.testing.assert_allclose(out[0]["image"], _reference(img, (8, 8)), atol=1e-6)
    assert out[1] == {"text": "just text"}
    assert set(out[2]) == {"text", "image", "target", "id", "source"}
    assert out[2]["source"] == str(sub / "dog.jpg")
    assert (out[2]["text"], out[2]["target"], out[2]["id"]) == ("a photo of", "a dog", 3)
    np.testing.assert_allclose(out[2]["image"], _reference(sub / "dog.jpg", (8, 8)), atol=1e-6)
    assert out[3]["text"] == "" and out[3]["id"] == "v1" and "video" not in out[3]
    assert out[3]["frames"].shape == (2, 8, 8, 3) and out[3]["frames"].dtype == np.float32
    assert out[4] == {"text": "image:not/parsed.png", "meta": {"k": [1, 2]}}
    assert out[5]["image"].shape == (8, 8, 3) and out[5]["frames"].shape == (2, 8, 8, 3)
    assert load_prompts(None, None, image_size=8, num_frames=2) == []
    assert load_prompts(["hi"], None, image_size=None, num_frames=None) == [{"text": "hi"}]


@pytest.mark.parametrize("lines,needle", [
    (['{"text": "ok"}', '{"text": "unterminated'], "line 2: invalid JSON"),
    (['{"text": "ok"}', '', '[1, 2]'], "line 3: a JSON list"),
    (['{"image": 5}'], "line 1: 'image' is 5"),
    (['{"id": 1}'], "line 1: none of 'text', 'image', 'video'"),
    (['{"video": "v", "frames": 3}'], "line 1: 'frames'"),
])
def test_jsonl_errors_name_the_line(tmp_path, lines, needle):
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text("\n".join(lines) + "\n")
    with pytest.raises(MediaError) as e:
        load_prompts([], str(jsonl), image_size=8, num_frames=2)
    _one_line_with(e, str(jsonl), needle)


def test_jsonl_media_error_names_line_and_resolved_path(tmp_path):
    sub = tmp_path / "sub"
    sub.mkdir()
    jsonl = sub / "p.jsonl"
    jsonl.write_text('{"text": "a"}\n{"image": "missing.png"}\n')
    with pytest.raises(MediaError) as e:
        load_prompts([], str(jsonl), image_size=8, num_frames=2)
    _one_line_with(e, str(jsonl), "line 2:", str(sub / "missing.png"), "does not exist")


def test_jsonl_missing_file_and_non_utf8(tmp_path):
    missing = str(tmp_path / "none.jsonl")
    with pytest.raises(MediaError) as e:
        load_prompts([], missing, image_size=8, num_frames=2)
    _one_line_with(e, missing, "does not exist")
    bad = tmp_path / "latin.jsonl"
    bad.write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(MediaError) as e:
        load_prompts([], str(bad), image_size=8, num_frames=2)
    _one_line_with(e, str(bad), "line 2", "UTF-8")


def test_media_for_a_text_model_is_refused(tmp_path):
    img = _save(tmp_path / "cat.png", _rand_u8((4, 4, 3)))
    with pytest.raises(MediaError) as e:
        load_prompts([f"image:{img}"], None, image_size=None, num_frames=None)
    _one_line_with(e, img, "image_size is None")
    _frame_folder(tmp_path / "clip", 2)
    with pytest.raises(MediaError) as e:
        load_prompts([f"video:{tmp_path / 'clip'}"], None, image_size=8, num_frames=None)
    _one_line_with(e, str(tmp_path / "clip"), "num_frames is None")


# ------------------------------------------------------------------------ CLI
@pytest.mark.parametrize("prog,mode", [("plug-infer", "infer"), ("plug-eval", "eval"),
                                       ("plug_jax.main", None)])
def test_prompts_jsonl_flag(prog, mode):
    from plug_jax.cli import base_parser
    args = base_parser(prog, mode).parse_args(
        ["--gin_file", "x.gin", "--prompt", "image:a.png|hi", "--prompts_jsonl", "x.jsonl"])
    assert args.prompts_jsonl == "x.jsonl" and args.prompt == ["image:a.png|hi"]
    assert base_parser(prog, mode).parse_args([]).prompts_jsonl is None


def test_prompts_jsonl_not_a_train_flag():
    from plug_jax.cli import base_parser
    ap = base_parser("plug-train", "train")
    assert ap.parse_args([]).prompts_jsonl is None
    with pytest.raises(SystemExit):
        ap.parse_args(["--prompts_jsonl", "x.jsonl"])


def test_media_error_is_a_user_error():
    from plug_jax.cli import user_errors
    assert MediaError in user_errors()


def test_videos_folder_gives_one_prompt_per_video_in_natural_order(tmp_path):
    root = tmp_path / "vids"
    root.mkdir()
    for name in ("clip_10", "clip_2"):
        _frame_folder(root / name, 4, hw=(8, 8))
    np.save(root / "clip_3.npy", _rand_u8((4, 8, 8, 3), seed=3))
    (root / "notes.txt").write_text("not a video")
    (root / ".hidden").mkdir()
    got = media.load_prompts([f"videos:{root}", "a hat"], None, image_size=8, num_frames=4)
    assert [g.get("source") for g in got] == [str(root / "clip_2"), str(root / "clip_3.npy"),
                                              str(root / "clip_10"), None]
    assert all(g["frames"].shape == (4, 8, 8, 3) for g in got[:3]) and got[3]["text"] == "a hat"
    with pytest.raises(MediaError, match="holds no frame folders"):
        media.video_folders(root / "clip_2")
    with pytest.raises(MediaError, match="does not exist"):
        media.video_folders(tmp_path / "nope")


def test_frames_of_one_video_must_share_a_size(tmp_path):
    folder = _frame_folder(tmp_path / "v", 4, hw=(8, 8))
    _save(folder / "frame_9.png", _rand_u8((8, 6, 3), seed=1))
    with pytest.raises(MediaError) as e:
        media.load_video(folder, 4, 8)
    msg = str(e.value)
    assert "\n" not in msg and "mixes frame sizes" in msg and "6x8" in msg
