"""Local-file image/video-text readers (COCO Karpathy, VQA v2, MSR-VTT frames) and tasks."""
import importlib.util
import json
import pathlib

import numpy as np
import pytest
import seqio

from plug_jax.data import corpora_vision as cv
from tasks import corpora_vision as vision_tasks

tf = cv.tf
_spec = importlib.util.spec_from_file_location(  # the published-format writers
    "plug_jax_tests_corpus_fixtures",
    pathlib.Path(__file__).resolve().parents[1] / "corpus_fixtures.py")
corpus_fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(corpus_fixtures)
RED, GREEN, BLUE, GREY = (200, 30, 30), (30, 180, 40), (20, 40, 210), (128, 128, 128)


_jpeg = corpus_fixtures.write_jpeg


def _close(img, colour, tol=8):
    return np.abs(img.astype(int) - np.array(colour)).max() <= tol


COCO_IMAGES = [  # (filepath, cocoid, split, colour, captions)
    ("val2014", 391895, "train", RED, ["A man riding a moped. ", "A person on a bike."]),
    ("train2014", 9, "restval", GREEN, ["Food in bowls.", "A lunch box.", "Some food."]),
    ("val2014", 42, "val", BLUE, ["A blue square."]),
    ("val2014", 73, "test", GREY, ["A grey square.", "Nothing but grey."]),
]


def _coco_dir(root):
    return corpus_fixtures.write_coco(root, COCO_IMAGES)


VQA = {  # subset -> [(image_id, colour, question_id, question, mc answer, answers, type)]
    "train2014": [(9, RED, 9000, "What colour is it?", "red", ["red"] * 9 + ["pink"],
                   "other"),
                  (9, RED, 9001, "Is it square?", "yes", ["yes"] * 10, "yes/no")],
    "val2014": [(42, BLUE, 42000, "How many squares?", "1", ["1"] * 8 + ["one", "2"],
                 "number")],
}


def _vqa_dir(root):
    return corpus_fixtures.write_vqa(root, VQA)


MSRVTT_VIDEOS = [("video0", "train", 10), ("video1", "train", 3), ("video2", "validate", 5),
                 ("video3", "test", 4)]
MSRVTT_SENTENCES = [("video0", "a man is talking"), ("video1", "a cat plays"),
                    ("video0", "someone speaks"), ("video2", "cars race"),
                    ("video3", "a song plays")]


def _frame_grey(video_index, frame_index):
    return 10 + 20 * frame_index + video_index  # distinct grey level per frame


def _msrvtt_dir(root, file_name="MSRVTT_data.json"):
    videos = []
    for i, (vid, split, n) in enumerate(MSRVTT_VIDEOS):
        videos.append({"category": 9, "url": "https://example.invalid", "video_id": vid,
                       "start time": 0.0, "end time": 10.0, "split": split, "id": i})
        for f in range(n):  # ffmpeg %05d numbering starts at 1
            g = _frame_grey(i, f)
            _jpeg(root / "frames" / vid / f"{f + 1:05d}.jpg", (g, g, g), 8, 8)
    sentences = [{"caption": c, "video_id": v, "sen_id": k}
                 for k, (v, c) in enumerate(MSRVTT_SENTENCES)]
    (root / file_name).write_text(json.dumps({"info": {}, "videos": videos,
                                              "sentences": sentences}))
    return root


def test_sample_frame_indices():
    assert cv.sample_frame_indices(10, 4) == [1, 3, 6, 8]
    assert cv.sample_frame_indices(8, 8) == list(range(8))
    assert cv.sample_frame_indices(3, 8) == [0, 0, 0, 1, 1, 2, 2, 2]
    assert cv.sample_frame_indices(3, 4) == [0, 1, 1, 2]
    assert cv.sample_frame_indices(1, 2) == [0, 0]
    with pytest.raises(ValueError, match="cannot sample"):
        cv.sample_frame_indices(0, 8)


def test_coco_captions(tmp_path):
    root = _coco_dir(tmp_path)
    train = list(cv.read_coco_captions(root, "train", image_size=8))
    assert [r["image_id"] for r in train] == [391895, 9]  # train + restval
    assert train[0]["captions"] == ["A man riding a moped.", "A person on a bike."]
    assert train[0]["image"].shape == (8, 8, 3) and train[0]["image"].dtype == np.uint8
    assert _close(train[0]["image"], RED) and _close(train[1]["image"], GREEN)
    val = list(cv.read_coco_captions(root, "validation"))  # default size 224
    assert len(val) == 1 and val[0]["image_id"] == 42 and val[0]["captions"] == [
        "A blue square."]
    assert val[0]["image"].shape == (224, 224, 3) and _close(val[0]["image"], BLUE)
    test = list(cv.read_coco_captions(root, "test", decode=False))
    assert test == [{"image_path": str(root / "val2014" / "COCO_val2014_000000000073.jpg"),
                     "image_id": 73, "captions": ["A grey square.", "Nothing but grey."]}]
    pairs = list(cv.read_coco_captions(root, "train", per_caption=True, decode=False))
    assert [(p["image_id"], p["caption_id"], p["caption"]) for p in pairs] == [
        (391895, 0, "A man riding a moped."), (391895, 1, "A person on a bike."),
        (9, 2, "Food in bowls."), (9, 3, "A lunch box."), (9, 4, "Some food.")]
    with pytest.raises(ValueError, match="COCO Karpathy has splits"):
        list(cv.read_coco_captions(root, "restval"))


def test_vqa_v2(tmp_path):
    root = _vqa_dir(tmp_path)
    train = list(cv.read_vqa_v2(root, "train", image_size=12))
    assert [r["question_id"] for r in train] == [9000, 9001]
    first = train[0]
    assert first["question"] == "What colour is it?" and first["answer"] == "red"
    assert first["answers"] == ["red"] * 9 + ["pink"] and first["answer_type"] == "other"
    assert first["image_id"] == 9 and first["image"].shape == (12, 12, 3)
    assert _close(first["image"], RED)
    assert train[1]["answers"] == ["yes"] * 10 and train[1]["answer_type"] == "yes/no"
    val = list(cv.read_vqa_v2(root, "validation", decode=False))
    assert len(val) == 1 and val[0]["answer"] == "1"
    assert val[0]["answers"] == ["1"] * 8 + ["one", "2"]
    assert val[0]["image_path"] == str(root / "val2014" / "COCO_val2014_000000000042.jpg")


@pytest.mark.parametrize("file_name", ["MSRVTT_data.json", "videodatainfo.json"])
def test_msrvtt(tmp_path, file_name):
    root = _msrvtt_dir(tmp_path, file_name)
    train = list(cv.read_msrvtt(root, "train", num_frames=4, decode=False))
    assert [r["video_id"] for r in train] == ["video0", "video1"]
    assert train[0]["captions"] == ["a man is talking", "someone speaks"]
    names = [p.rsplit("/", 1)[1] for p in train[0]["frame_paths"]]
    assert names == ["00002.jpg", "00004.jpg", "00007.jpg", "00009.jpg"]  # indices 1,3,6,8
    decoded = list(cv.read_msrvtt(root, "train", num_frames=4, image_size=6))
    frames = decoded[1]["frames"]  # video1 has 3 frames: indices 0, 1, 1, 2
    assert frames.shape == (4, 6, 6, 3) and frames.dtype == np.uint8
    for t, idx in enumerate([0, 1, 1, 2]):
        assert _close(frames[t], [_frame_grey(1, idx)] * 3), (t, frames[t].mean())
    val = list(cv.read_msrvtt(root, "validation", decode=False))  # default 8 frames
    assert len(val) == 1 and val[0]["video_id"] == "video2"
    assert len(val[0]["frame_paths"]) == 8 and val[0]["captions"] == ["cars race"]
    pairs = list(cv.read_msrvtt(root, "train", per_caption=True, decode=False))
    assert [(p["video_id"], p["caption_id"], p["caption"]) for p in pairs] == [
        ("video0", 0, "a man is talking"), ("video0", 2, "someone speaks"),
        ("video1", 1, "a cat plays")]


@pytest.mark.parametrize("reader, files", [
    (cv.read_coco_captions, ["dataset_coco.json"]),
    (cv.read_vqa_v2, ["v2_OpenEnded_mscoco_train2014_questions.json",
                      "v2_mscoco_train2014_annotations.json"]),
    (cv.read_msrvtt, ["MSRVTT_data.json", "videodatainfo.json"])])
def test_missing_files_one_line_error(tmp_path, reader, files):
    with pytest.raises(ValueError, match="not found; put the published files") as info:
        list(reader(tmp_path / "nowhere", "train"))
    message = str(info.value)
    assert "\n" not in message and all(f in message for f in files)
    with pytest.raises(ValueError, match="not found"):
        list(reader(tmp_path / "nowhere", "validation"))


def test_missing_media_one_line_error(tmp_path):
    root = _coco_dir(tmp_path / "coco")
    (root / "val2014" / "COCO_val2014_000000000042.jpg").unlink()
    with pytest.raises(ValueError, match=r"COCO image .*COCO_val2014_000000000042\.jpg"):
        list(cv.read_coco_captions(root, "validation"))
    with pytest.raises(ValueError, match="COCO_val2014_000000000042"):
        cv.coco_captions_dataset(root, "validation")
    root = _msrvtt_dir(tmp_path / "msrvtt")
    for frame in (root / "frames" / "video3").iterdir():
        frame.unlink()
    with pytest.raises(ValueError, match=r"frames of 'video3' not found.*ffmpeg") as info:
        list(cv.read_msrvtt(root, "test"))
    assert "\n" not in str(info.value)


def test_registered_tasks(tmp_path, monkeypatch):
    names = [vision_tasks.COCO_CAPTIONS_EN, vision_tasks.COCO_CAPTION_PAIRS_EN,
             vision_tasks.VQA_V2_EN, vision_tasks.MSRVTT_CAPTIONS_EN,
             vision_tasks.MSRVTT_CAPTION_PAIRS_EN]
    assert names == ["mplug_coco_captions_en_v1", "mplug_coco_caption_pairs_en_v1",
                     "mplug_vqav2_en_v1", "hitea_msrvtt_captions_en_v1",
                     "hitea_msrvtt_caption_pairs_en_v1"]
    assert set(names) <= set(seqio.TaskRegistry.names())
    assert vision_tasks.register_vision_task(names[0], "coco") is seqio.get_mixture_or_task(
        names[0])
    with pytest.raises(ValueError, match="already registered"):
        vision_tasks.register_vision_task(names[0], "coco", image_size=384)
    monkeypatch.setenv("PLUG_JAX_DATA_DIR", str(tmp_path))
    coco = seqio.get_mixture_or_task(vision_tasks.COCO_CAPTIONS_EN)
    with pytest.raises(ValueError, match=r"COCO Karpathy train .*dataset_coco\.json.* not "):
        coco.get_dataset(sequence_length=None, split="train", shuffle=False)
    _coco_dir(tmp_path / "coco")
    got = list(coco.get_dataset(sequence_length=None, split="validation",
                                shuffle=False).as_numpy_iterator())
    assert len(got) == 1 and int(got[0]["image_id"]) == 42
    assert got[0]["image"].shape == (224, 224, 3) and _close(got[0]["image"], BLUE)


def _task_rows(name, corpus, data_dir, split, shuffle=False, **kwargs):
    task = vision_tasks.register_vision_task(name, corpus, data_dir=str(data_dir), **kwargs)
    try:
        ds = task.get_dataset(sequence_length=None, split=split, shuffle=shuffle, seed=0)
        return list(ds.as_numpy_iterator())
    finally:
        seqio.TaskRegistry.remove(name)


def test_tasks_with_explicit_data_dir(tmp_path):
    coco = _coco_dir(tmp_path / "coco")
    rows = _task_rows("test_mplug_coco_caption_pairs", "coco", coco, "train", shuffle=True,
                      per_caption=True, image_size=8)
    assert sorted(int(r["caption_id"]) for r in rows) == [0, 1, 2, 3, 4]
    by_id = {int(r["caption_id"]): r for r in rows}
    assert by_id[3]["caption"].decode() == "A lunch box." and int(by_id[3]["image_id"]) == 9
    assert by_id[3]["image"].shape == (8, 8, 3) and _close(by_id[3]["image"], GREEN)

    vqa = _vqa_dir(tmp_path / "vqa")
    rows = _task_rows("test_mplug_vqav2", "vqa_v2", vqa, "validation", image_size=8)
    assert len(rows) == 1 and rows[0]["question"].decode() == "How many squares?"
    assert [a.decode() for a in rows[0]["answers"]] == ["1"] * 8 + ["one", "2"]
    assert rows[0]["answer"].decode() == "1" and rows[0]["answer_type"].decode() == "number"
    assert int(rows[0]["question_id"]) == 42000 and _close(rows[0]["image"], BLUE)

    msrvtt = _msrvtt_dir(tmp_path / "msrvtt")
    rows = _task_rows("test_hitea_msrvtt_captions", "msrvtt", msrvtt, "train",
                      num_frames=4, image_size=6)
    assert [r["video_id"].decode() for r in rows] == ["video0", "video1"]
    assert [c.decode() for c in rows[0]["captions"]] == ["a man is talking", "someone speaks"]
    assert rows[0]["frames"].shape == (4, 6, 6, 3) and rows[0]["frames"].dtype == np.uint8
    for t, idx in enumerate([1, 3, 6, 8]):
        assert _close(rows[0]["frames"][t], [_frame_grey(0, idx)] * 3)


def test_vision_corpus_tasks_are_read_by_index(tmp_path):
    """A vision corpus task reads any record by index (each process decodes only the media
    of its own examples): record i by index equals row i of the unshuffled stream."""
    import tensorflow as tf

    from plug_jax.data import indexed
    coco = _coco_dir(tmp_path / "coco")
    msrvtt = _msrvtt_dir(tmp_path / "msrvtt")
    for name, corpus, root, split, kw in (
            ("test_mplug_coco_pairs_indexed", "coco", coco, "train",
             dict(per_caption=True, image_size=8)),
            ("test_hitea_msrvtt_indexed", "msrvtt", msrvtt, "train",
             dict(num_frames=4, image_size=6))):
        task = vision_tasks.register_vision_task(name, corpus, data_dir=str(root), **kw)
        try:
            assert indexed.supports_indexed(task, split)
            stream = list(task.get_dataset(sequence_length=None, split=split,
                                           shuffle=False).as_numpy_iterator())
            n = task.source.indexed_num_records(split)
            assert n == len(stream) >= 2
            picks = [n - 1, 0, n - 1]
            got = list(task.source.indexed_dataset(split, tf.data.Dataset.from_tensor_slices(
                np.array(picks, np.int64))).as_numpy_iterator())
            assert len(got) == len(picks)
            for i, row in zip(picks, got):
                assert sorted(row) == sorted(stream[i])
                for k in row:
                    np.testing.assert_array_equal(row[k], stream[i][k])
        finally:
            seqio.TaskRegistry.remove(name)
    with pytest.raises(ValueError, match="exactly one of num_input_examples"):
        indexed.IndexedFunctionSource(lambda *a: None, lambda *a: None, splits=("train",))
