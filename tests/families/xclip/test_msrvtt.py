"""X-CLIP on MSR-VTT (tasks/xclip_msrvtt.py, experiments/xclip/msrvtt_vit_b32.gin): the
registered tasks read a fixture in the published layout (MSRVTT_data.json, JPEG frame
folders, OpenAI CLIP's BPE files) under a temporary $PLUG_JAX_DATA_DIR; registration touches
no file; frames come out CLIP-normalised, captions as [start] + BPE + [end], trimmed to 32;
the experiment builds the published ViT-B/32-msrvtt model with matching lengths."""
import importlib.util
import json
import pathlib

import numpy as np
import pytest
import seqio

pytest.importorskip("transformers")

import plug_jax.tasks  # noqa: E402,F401  (registers the tasks)
from plug_jax.data import corpora_vision as cv  # noqa: E402
from plug_jax.data import indexed, multimodal  # noqa: E402
from plug_jax.tasks import xclip_msrvtt  # noqa: E402

tf = cv.tf
TESTS = pathlib.Path(__file__).resolve().parents[2]


def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


corpus_fixtures = _load("plug_jax_tests_corpus_fixtures", TESTS / "corpus_fixtures.py")
clip_bpe_fixture = _load("plug_jax_tests_clip_bpe", TESTS / "data" / "test_clip_bpe.py")

SOT, EOT = 49406, 49407
LONG = " ".join(["a man is talking"] * 10)  # 40 BPE tokens: trimmed to 30
MSRVTT_VIDEOS = [("video0", "train", 10), ("video1", "train", 3), ("video2", "validate", 5),
                 ("video3", "test", 4)]
MSRVTT_SENTENCES = [("video0", "a man is talking"), ("video1", "a cat plays"),
                    ("video0", "someone speaks"), ("video2", "cars race"),
                    ("video3", "a song plays"), ("video1", LONG)]


def _frame_grey(video_index, frame_index):
    return 10 + 20 * frame_index + video_index  # distinct grey level per frame


def _msrvtt_dir(root):
    """MSRVTT_data.json + ffmpeg-numbered 8x8 grey JPEG frames (tests/data/
    test_corpora_vision.py's fixture, with a caption longer than 32 tokens)."""
    videos = []
    for i, (vid, split, n) in enumerate(MSRVTT_VIDEOS):
        videos.append({"category": 9, "url": "https://example.invalid", "video_id": vid,
                       "start time": 0.0, "end time": 10.0, "split": split, "id": i})
        for f in range(n):
            g = _frame_grey(i, f)
            corpus_fixtures.write_jpeg(root / "frames" / vid / f"{f + 1:05d}.jpg", (g, g, g),
                                       8, 8)
    sentences = [{"caption": c, "video_id": v, "sen_id": k}
                 for k, (v, c) in enumerate(MSRVTT_SENTENCES)]
    (root / "MSRVTT_data.json").write_text(json.dumps({"info": {}, "videos": videos,
                                                       "sentences": sentences}))
    return root


def _clip_normalised(frames_uint8):
    mean, std = np.array(multimodal.CLIP_MEAN), np.array(multimodal.CLIP_STD)
    return ((frames_uint8.astype(np.float32) / 255.0 - mean) / std).astype(np.float32)


def _rows(task, split, lengths=None):
    ds = task.get_dataset(lengths or {"targets": 32}, split=split, shuffle=False)
    return list(ds.as_numpy_iterator())


def test_registered_tasks_read_the_published_layout(tmp_path, monkeypatch):
    """xclip_msrvtt_retrieval_en_v1 at 12 x 224 x 224 from $PLUG_JAX_DATA_DIR/msrvtt: one
    example per caption, frames = the reader's uint8 frames CLIP-normalised, targets =
    [49406] + BPE + [49407] (the largest id), at most 32 ids, decoding to the caption; the
    first-caption task gives one example per video; missing files are one line."""
    assert {xclip_msrvtt.RETRIEVAL_EN, xclip_msrvtt.RETRIEVAL_FIRST_CAPTION_EN} <= set(
        seqio.TaskRegistry.names())
    task = seqio.get_mixture_or_task(xclip_msrvtt.RETRIEVAL_EN)
    first = seqio.get_mixture_or_task(xclip_msrvtt.RETRIEVAL_FIRST_CAPTION_EN)
    vocab = task.output_features["targets"].vocabulary
    # == (same folder), not `is`: tests that import the top-level `tasks` package register
    # the tasks from a second copy of the module, whose VOCABULARY is another object.
    assert vocab == xclip_msrvtt.VOCABULARY and vocab.vocab_size == 49408  # files unread
    monkeypatch.setenv("PLUG_JAX_DATA_DIR", str(tmp_path))
    with pytest.raises(ValueError, match=r"MSR-VTT train .*MSRVTT_data\.json.* not found"):
        _rows(task, "train")
    root = _msrvtt_dir(tmp_path / "msrvtt")
    with pytest.raises(ValueError, match="CLIP BPE folder .*clip_bpe.* not found") as info:
        _rows(task, "train")
    assert "\n" not in str(info.value) and str(root / "clip_bpe") in str(info.value)
    clip_bpe_fixture.write_clip_bpe(root / "clip_bpe", size=49408)

    rows = _rows(task, "train")
    assert [(r["video_id"].decode(), int(r["caption_id"])) for r in rows] == [
        ("video0", 0), ("video0", 2), ("video1", 1), ("video1", 5)]
    reader = {(r["video_id"], r["caption_id"]): r for r in cv.read_msrvtt(
        root, "train", per_caption=True, num_frames=12, image_size=224)}
    for r in rows:
        key = (r["video_id"].decode(), int(r["caption_id"]))
        frames = r["frames"]
        assert frames.shape == (12, 224, 224, 3) and frames.dtype == np.float32
        np.testing.assert_allclose(frames, _clip_normalised(reader[key]["frames"]), atol=1e-6)
        video = int(key[0][-1])
        picks = cv.sample_frame_indices(MSRVTT_VIDEOS[video][2], 12)
        grey = np.array([_frame_grey(video, k) for k in picks], np.float32)
        want = (grey[:, None] / 255.0 - np.array(multimodal.CLIP_MEAN)) / np.array(
            multimodal.CLIP_STD)
        np.testing.assert_allclose(frames.mean(axis=(1, 2)), want, atol=0.1)  # JPEG error
        ids = r["targets"].tolist()
        assert ids[0] == SOT and ids[-1] == EOT and max(ids) == EOT and len(ids) <= 32
        assert EOT not in ids[:-1] and SOT not in ids[1:]
        caption = reader[key]["caption"]
        if caption == LONG:
            assert len(ids) == 32 and ids[1:-1] == vocab.encode(LONG)[1:31]
        else:
            assert vocab.decode(ids) == caption and ids == vocab.encode(caption) + [EOT]

    converted = multimodal.VideoTextFeatureConverter()(
        task.get_dataset({"targets": 32}, split="train", shuffle=False),
        {"frames": (12, 224, 224, 3), "targets": 32})
    batch = next(converted.as_numpy_iterator())
    tokens = batch["decoder_target_tokens"]
    assert batch["frames"].shape == (12, 224, 224, 3) and tokens.shape == (32,)
    n = vocab.encode("a man is talking")
    assert tokens.tolist() == n + [EOT] + [0] * (32 - len(n) - 1)

    by_split = {s: _rows(first, s) for s in ("train", "validation", "test")}
    assert [(r["video_id"].decode(), vocab.decode(r["targets"].tolist()))
            for s in ("train", "validation", "test") for r in by_split[s]] == [
        ("video0", "a man is talking"), ("video1", "a cat plays"), ("video2", "cars race"),
        ("video3", "a song plays")]
    assert by_split["test"][0]["frames"].shape == (12, 224, 224, 3)


def test_small_task_with_explicit_data_dir_reads_by_index(tmp_path):
    """register_retrieval_task with a data_dir (its clip_bpe/ inside), 4 frames at 8 px:
    registering reads nothing; the sampled frames' grey levels; record i read by index
    equals row i of the stream."""
    root = tmp_path / "msrvtt"
    name = "test_xclip_msrvtt_small"
    task = xclip_msrvtt.register_retrieval_task(name, data_dir=str(root), num_frames=4,
                                                image_size=8)
    try:
        assert not task.output_features["targets"].vocabulary.loaded  # nothing read yet
        _msrvtt_dir(root)
        clip_bpe_fixture.write_clip_bpe(root / "clip_bpe", size=49408)
        assert xclip_msrvtt.register_retrieval_task(
            name, data_dir=str(root), num_frames=4, image_size=8) is task
        with pytest.raises(ValueError, match="already registered"):
            xclip_msrvtt.register_retrieval_task(name, data_dir=str(root), num_frames=8,
                                                 image_size=8)
        rows = _rows(task, "train")
        assert rows[0]["frames"].shape == (4, 8, 8, 3)
        for t, idx in enumerate([1, 3, 6, 8]):  # video0: 10 frames, segment centres
            g = (_frame_grey(0, idx) / 255.0 - np.array(multimodal.CLIP_MEAN)) / np.array(
                multimodal.CLIP_STD)
            np.testing.assert_allclose(rows[0]["frames"][t], np.broadcast_to(g, (8, 8, 3)),
                                       atol=0.1)
        assert rows[2]["targets"].tolist() == [SOT] + task.output_features[
            "targets"].vocabulary.encode("a cat plays")[1:] + [EOT]
        assert indexed.supports_indexed(task, "train")
        got = list(task.source.indexed_dataset(
            "train", tf.data.Dataset.from_tensor_slices(np.array([3, 0], np.int64)))
            .as_numpy_iterator())
        raw = list(task.source.get_dataset("train", shuffle=False).as_numpy_iterator())
        for i, row in zip([3, 0], got):
            assert row["caption"] == raw[i]["caption"]
            np.testing.assert_array_equal(row["frames"], raw[i]["frames"])
    finally:
        seqio.TaskRegistry.remove(name)


def test_experiment_builds_the_published_model():
    """experiments/xclip/msrvtt_vit_b32.gin: the ViT-B/32-msrvtt preset in bf16 (164,454,065
    parameters), targets length = num_words, frames = num_frames x 224 x 224, a batch the 8
    data-parallel devices divide, the two MSR-VTT tasks, OpenAI's vocabulary size."""
    import gin

    from plug_jax import gin_utils
    from plug_jax.families.xclip.config import XClipConfig
    from plug_jax.families.xclip.network import abstract_params
    from plug_jax.models.base import count_params
    root = str(pathlib.Path(__file__).resolve().parents[3] / "gin_configs")
    gin_utils.parse_gin(["models/xclip/vit_b32_msrvtt.gin"], [], [root])
    assert gin.query_parameter("%MODEL").scoped_configurable_fn().config == \
        XClipConfig.from_preset("ViT-B/32-msrvtt")
    gin_utils.parse_gin(["experiments/xclip/msrvtt_vit_b32.gin"],
                        ["MODEL_DIR='/tmp/unused'", "INIT_CHECKPOINT='/tmp/x'"], [root])
    config = gin.query_parameter("%MODEL").scoped_configurable_fn().config
    assert config == XClipConfig.from_preset("ViT-B/32-msrvtt", dtype="bfloat16")
    assert count_params(abstract_params(config)) == 164_454_065
    lengths = gin.query_parameter("%TASK_FEATURE_LENGTHS")
    size = config.clip.vision.image_size
    assert lengths == {"frames": (config.num_frames, size, size, 3),
                       "targets": config.num_words} == {"frames": (12, 224, 224, 3),
                                                        "targets": 32}
    assert config.clip.text.vocab_size == 49408 and config.clip.text.eos_token_id == EOT
    assert config.clip.text.pooling == "argmax"
    assert gin.query_parameter("%BATCH_SIZE") % 8 == 0
    assert gin.query_parameter("%MIXTURE_OR_TASK_NAME") == xclip_msrvtt.RETRIEVAL_EN
    assert gin.query_parameter("%EVAL_TASK") == xclip_msrvtt.RETRIEVAL_FIRST_CAPTION_EN
    assert gin.query_parameter("%FEATURE_CONVERTER") == "video_text"
