"""Image-text and video-text formatting on Shop World examples."""
import numpy as np
import pytest


@pytest.fixture(scope="module")
def mm():
    from plug_jax.data import multimodal
    return multimodal


def _image_ds(n=3):
    import tensorflow as tf

    from plug_jax.data import shop_world_tfds as swt
    spec = swt.CONFIG_SPECS["images_64"]
    exs = [spec.example(0, "train", i) for i in range(n)]
    s = tf.TensorSpec
    sig = {"image": s((64, 64, 3), tf.uint8), "product_id": s((), tf.string),
           "referring_box": s((None, 4), tf.int32)}
    for lang in ("zh", "en"):
        for k in ("vqa_question", "vqa_answer", "referring_phrase"):
            sig[f"{k}_{lang}"] = s((None,), tf.string)
        sig[f"caption_{lang}"] = s((), tf.string)
    gen = lambda: ({k: e[k] for k in sig} for e in exs)  # noqa: E731
    return tf.data.Dataset.from_generator(gen, output_signature=sig), exs


def test_location_tokens_quantize_boxes(mm):
    out = mm.location_text(np.array([[0, 32, 63, 64]]), 64, num_bins=1000).numpy()
    assert out[0].decode() == "<loc_0><loc_500><loc_983><loc_999>"  # 63/64*999 = 983.4
    with pytest.raises(ValueError, match="num_bins"):
        mm.quantize_boxes(np.zeros((1, 4)), 64, num_bins=1)


def test_patches_are_row_major_and_invertible(mm):
    img = np.arange(8 * 8 * 3, dtype=np.float32).reshape(8, 8, 3)
    p = mm.image_to_patches(img, 4).numpy()
    assert p.shape == (4, 48)
    np.testing.assert_array_equal(p[1].reshape(4, 4, 3), img[:4, 4:])  # top-right patch
    np.testing.assert_array_equal(p[2].reshape(4, 4, 3), img[4:, :4])
    with pytest.raises(ValueError, match="patch_size"):
        mm.image_to_patches(img, 3)


def test_image_formats(mm):
    ds, exs = _image_ds()
    cap = list(mm.format_image_text(ds, task="caption", lang="en", patch_size=16)
               .as_numpy_iterator())
    assert [c["targets"].decode() for c in cap] == [e["caption_en"] for e in exs]
    assert cap[0]["image"].dtype == np.float32 and cap[0]["patches"].shape == (16, 768)
    white = (1.0 - np.array(mm.CLIP_MEAN)) / np.array(mm.CLIP_STD)
    assert cap[0]["image"].max() <= white.max() + 1e-5
    vqa = list(mm.format_image_text(ds, task="vqa", lang="zh").as_numpy_iterator())
    want = [(q, a) for e in exs for q, a in zip(e["vqa_question_zh"], e["vqa_answer_zh"])]
    assert [(v["inputs"].decode(), v["targets"].decode()) for v in vqa] == want
    grd = list(mm.format_image_text(ds, task="grounding", lang="en").as_numpy_iterator())
    first = exs[0]
    box = first["referring_box"][0]
    bins = [int(round(c / 64 * 999)) for c in box]
    assert grd[0]["inputs"].decode() == first["referring_phrase_en"][0]
    assert grd[0]["targets"].decode() == "".join(f"<loc_{b}>" for b in bins)
    with pytest.raises(ValueError, match="unknown image-text task"):
        mm.format_image_text(ds, task="nope")


def test_video_formats(mm):
    import tensorflow as tf

    from plug_jax.data import shop_world_tfds as swt
    spec = swt.CONFIG_SPECS["videos_8"]
    exs = [spec.example(0, "train", i) for i in range(2)]
    s = tf.TensorSpec
    sig = {"frames": s((8, 64, 64, 3), tf.uint8), "product_id": s((), tf.string),
           "event_start": s((None,), tf.int32), "event_end": s((None,), tf.int32),
           "caption_en": s((), tf.string), "tqa_question_en": s((None,), tf.string),
           "tqa_answer_en": s((None,), tf.string), "event_caption_en": s((None,), tf.string)}
    ds = tf.data.Dataset.from_generator(lambda: ({k: e[k] for k in sig} for e in exs),
                                        output_signature=sig)
    mom = list(mm.format_video_text(ds, task="moments", lang="en").as_numpy_iterator())
    want = [(c, f"<frame_{a}><frame_{b}>") for e in exs
            for c, a, b in zip(e["event_caption_en"], e["event_start"], e["event_end"])]
    assert [(m["inputs"].decode(), m["targets"].decode()) for m in mom] == want
    assert mom[0]["frames"].shape == (8, 64, 64, 3) and mom[0]["frames"].dtype == np.float32
    tqa = list(mm.format_video_text(ds, task="temporal_qa", lang="en").as_numpy_iterator())
    assert len(tqa) == sum(len(e["tqa_question_en"]) for e in exs)
