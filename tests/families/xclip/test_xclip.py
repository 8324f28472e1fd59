"""X-CLIP family: published sizes, the four similarities and AOSM against numpy written from
the formulas (words != frames), the global contrastive loss on 8 fake devices with
GradCache against one device, and the one-line errors for wrong frame / word counts."""
import jax
import numpy as np
import pytest

from plug_jax.families.clip.config import ClipConfig
from plug_jax.families.clip.network import abstract_params as clip_abstract_params
from plug_jax.families.xclip.config import XClipConfig
from plug_jax.families.xclip.flops import training_flops
from plug_jax.families.xclip.network import (MATRICES, XCLIPDualEncoder, abstract_params,
                                             example_batch)
from plug_jax.models import DualEncoder
from plug_jax.models.base import count_params
from plug_jax.trainer import step as step_lib
from plug_jax.trainer.loop import MeshConfig, StateBuilder


def _release_extra(width, words, frames, context=77, layers=4):
    """What the release's XCLIP adds to its CLIP, counted from its module definitions:
    ``frame_position_embeddings`` (context x width), ``layers`` OpenAI residual blocks of
    the text width (in_proj 3w x w + 3w, out_proj w x w + w, two LayerNorms, c_fc w x 4w + 4w,
    c_proj 4w x w + w) and the eight square matrices (two D x D, three words^2, three
    frames^2)."""
    w = width
    block = (3 * w * w + 3 * w) + (w * w + w) + 2 * (2 * w) + (w * 4 * w + 4 * w) + (4 * w * w + w)
    return context * w + layers * block + 2 * w * w + 3 * words ** 2 + 3 * frames ** 2


@pytest.mark.parametrize("name, clip, words, frames", [
    ("ViT-B/32-msrvtt", "ViT-B/32", 32, 12), ("ViT-B/16-msrvtt", "ViT-B/16", 32, 12),
    ("ViT-B/32-didemo", "ViT-B/32", 64, 64), ("ViT-B/16-didemo", "ViT-B/16", 64, 64)])
def test_published_sizes_without_allocation(name, clip, words, frames):
    clip_count = count_params(clip_abstract_params(ClipConfig.from_preset(clip)))
    want = clip_count + _release_extra(512, words, frames)
    assert count_params(abstract_params(XClipConfig.from_preset(name))) == want
    c = XClipConfig.from_preset(name)
    assert (c.num_words, c.num_frames, c.temporal_layers, c.temporal_heads) == (
        words, frames, 4, 8)


def test_presets_overrides_and_config_errors():
    c = XClipConfig.from_preset("tiny", num_frames=4, scan_layers=False, text_layers=1)
    assert c.num_frames == 4 and c.clip.text.layers == 1 and not c.clip.vision.scan_layers
    assert XClipConfig.from_dict(__import__("dataclasses").asdict(c)) == c
    with pytest.raises(ValueError, match="unknown X-CLIP preset"):
        XClipConfig.from_preset("ViT-L/14-msrvtt")
    with pytest.raises(ValueError, match="num_frames 80 exceeds the 64 frame positions"):
        XClipConfig.from_preset("tiny", num_frames=80)
    with pytest.raises(ValueError, match="num_words 65 exceeds the text tower's max_len 64"):
        XClipConfig.from_preset("tiny", num_words=65)


def _small(**kw):
    return XClipConfig.from_preset("tiny", vision_image_size=16, text_vocab_size=64,
                                   text_max_len=12, num_words=7, num_frames=3,
                                   frame_positions=12, layers=1, temporal_layers=1, **kw)


def _numpy_terms(sent, words, video, frames, m, tau):
    """The four similarities [texts, videos] written from the formulas, pair by pair."""
    def attend(x, w):
        a = np.exp(x / tau - np.max(x / tau))
        return (a / a.sum()) @ w
    out = {k: np.zeros((len(sent), len(video))) for k in
           ("video_sentence", "video_word", "sentence_frame", "frame_word")}
    for t in range(len(sent)):
        for v in range(len(video)):
            out["video_sentence"][t, v] = sent[t] @ m["global_mat_weight"] @ video[v]
            mw = words[t] @ video[v]
            out["video_word"][t, v] = np.sum(attend(mw, m["word_logit_weight"]) * mw)
            mf = frames[v] @ sent[t]
            out["sentence_frame"][t, v] = np.sum(attend(mf, m["frame_logit_weight"]) * mf)
            big = words[t] @ m["local_mat_weight"] @ frames[v].T
            r = np.array([np.sum(attend(big[:, f], m["word_mat_weight"]) * big[:, f])
                          for f in range(big.shape[1])])
            c = np.array([np.sum(attend(big[w], m["frame_mat_weight"]) * big[w])
                          for w in range(big.shape[0])])
            out["frame_word"][t, v] = (np.sum(attend(r, m["frame_mat_weight2"]) * r)
                                       + np.sum(attend(c, m["word_mat_weight2"]) * c)) / 2
    return out


@pytest.mark.parametrize("tau", [0.01, 0.5])
def test_four_similarities_and_aosm_match_numpy(tau):
    """At 7 words x 3 frames, 4 texts x 5 videos, non-identity matrices, the network's
    terms and logits equal the formulas within 1e-5."""
    cfg = _small(temperature=tau)
    net = XCLIPDualEncoder(cfg)
    rs = np.random.RandomState(0)
    batch = {k: np.zeros(v.shape, v.dtype) for k, v in example_batch(cfg, 2).items()}
    params = jax.tree_util.tree_map(np.asarray, __import__("flax").linen.unbox(
        net.init(jax.random.PRNGKey(0), batch)["params"]))
    m = {name: (np.eye(len(params[name])) + 0.3 * rs.randn(*params[name].shape)).astype(
        np.float32) for name, _ in MATRICES}
    params.update(m)
    params["clip"]["logit_scale"] = np.float32(np.log(20.0))
    d = cfg.clip.projection_dim
    norm = lambda x: (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)  # noqa
    cols = {"sentence": norm(rs.randn(4, d)), "words": norm(rs.randn(4, 7, d))}
    rows = {"video": norm(rs.randn(5, d)), "frames": norm(rs.randn(5, 3, d))}
    v = {"params": params}
    terms = net.apply(v, rows, cols, method=net.similarity_terms)
    want = _numpy_terms(cols["sentence"].astype(np.float64), cols["words"].astype(np.float64),
                        rows["video"].astype(np.float64), rows["frames"].astype(np.float64),
                        {k: x.astype(np.float64) for k, x in m.items()}, tau)
    for k in want:
        np.testing.assert_allclose(terms[k], want[k], rtol=1e-5, atol=1e-5, err_msg=k)
    logits = net.apply(v, rows, cols, method=net.similarity)
    np.testing.assert_allclose(np.asarray(logits).T, 20.0 * sum(want.values()) / 4,
                               rtol=1e-5, atol=1e-4)
    # every term matters: moving one matrix changes the logits
    params2 = dict(params, frame_mat_weight2=m["frame_mat_weight2"] + 1.0)
    assert not np.allclose(net.apply({"params": params2}, rows, cols, method=net.similarity),
                           logits)


def test_identity_init_temperature_and_frame_order():
    cfg = _small()
    net = XCLIPDualEncoder(cfg)
    rs = np.random.RandomState(1)
    b = {"frames": rs.randn(2, 3, 16, 16, 3).astype(np.float32),
         "decoder_target_tokens": np.array([[5, 6, 1, 0, 0, 0, 0], [7, 1, 0, 0, 0, 0, 0]],
                                           np.int32)}
    params = net.init(jax.random.PRNGKey(0), b)["params"]
    p = __import__("flax").linen.unbox(params)
    for name, n in (("global_mat_weight", 64), ("word_logit_weight", 7),
                    ("frame_logit_weight", 3)):
        np.testing.assert_array_equal(p[name], np.eye(n))
    assert cfg.temperature == 0.01
    # the temporal transformer sees frame order (through its positions, 0.01-scale at
    # init, so set larger here); the frame features do not
    p = jax.tree_util.tree_map(np.asarray, p)
    p["temporal"]["frame_pos_embed"]["embedding"] = rs.randn(12, 64).astype(np.float32)
    rows = net.apply({"params": p}, b, method=net.embed_rows)
    flipped = net.apply({"params": p}, {**b, "frames": b["frames"][:, ::-1]},
                        method=net.embed_rows)
    np.testing.assert_allclose(flipped["frames"], rows["frames"][:, ::-1], atol=1e-6)
    assert np.abs(np.asarray(flipped["video"]) - np.asarray(rows["video"])).max() > 1e-4


def test_wrong_frame_or_word_counts_are_one_line():
    cfg = _small()
    net = XCLIPDualEncoder(cfg)
    b = {k: np.zeros(v.shape, v.dtype) for k, v in example_batch(cfg, 1).items()}
    params = net.init(jax.random.PRNGKey(0), b)
    with pytest.raises(ValueError, match=r"frames \[batch, 3, .*got shape \(1, 4, 16, 16, 3\)"):
        net.apply(params, {**b, "frames": np.zeros((1, 4, 16, 16, 3), np.float32)})
    with pytest.raises(ValueError, match=r"captions \[batch, 7\].*got shape \(1, 9\)"):
        net.apply(params, {**b, "decoder_target_tokens": np.ones((1, 9), np.int32)})


def test_flops_grow_with_frames_words_and_the_pairs():
    cfg = XClipConfig.from_preset("ViT-B/32-msrvtt")
    lengths = {"frames": (12, 224, 224, 3), "targets": 32}
    base = training_flops(cfg, 8, lengths)
    assert training_flops(cfg, 8, {**lengths, "frames": (24, 224, 224, 3)}) > 1.9 * base
    # the pair terms make the cost per example grow with the batch
    assert training_flops(cfg, 64, lengths) / 64 > base / 8


# --------------------------------------------- the global loss: 8 devices vs one device
B = 8


def _batch(seed=0):
    rs = np.random.RandomState(seed)
    ids = rs.randint(2, 64, size=(B, 7)).astype(np.int32)
    for r in range(B):
        end = rs.randint(2, 6)
        ids[r, end] = 1
        ids[r, end + 1:] = 0
    ids[5] = 0  # a padding row: not a pair, not a negative
    return {"frames": rs.randn(B, 3, 16, 16, 3).astype(np.float32),
            "decoder_target_tokens": ids}


def _sums_and_grads(mesh_cfg, k, batch):
    import optax
    model = DualEncoder(_small(), family="xclip")
    part = mesh_cfg.partitioner()
    builder = StateBuilder(model, part, optax.sgd(0.1), batch)
    arrays = builder.init(jax.random.PRNGKey(0))
    fn = step_lib._global_sums_and_grads(model, k)
    jitted = part.jit(fn, in_shardings=(builder.shardings["params"],
                                        part.batch_shardings(batch), None))
    sums, grads = jitted(arrays["params"], part.shard_batch(batch), jax.random.PRNGKey(1))
    return jax.device_get(sums), jax.device_get(grads), jax.device_get(arrays["params"])


def test_eight_devices_two_microbatches_equal_one_device():
    """data 2 x fsdp 4, GradCache over 2 microbatches vs 1 device, 1 batch (float32): the
    loss within 1e-5 and every gradient within 3e-5 of the leaf's largest gradient.

    The gradient bound is float32 reduction order: the two programs sum the same terms over
    devices and microbatches in different orders. On one CPU (an Intel Xeon without AVX-512,
    2026-12-07) the largest deviation was 1.19e-5 of the leaf's maximum (the text tower's
    final LayerNorm bias), with several leaves at 6-9e-6; earlier machines stayed under 1e-5.
    A wrong reduction (negatives missing across devices: the control below) is off by far
    more."""
    assert len(jax.devices()) == 8
    batch = _batch()
    one_sums, one_grads, p1 = _sums_and_grads(MeshConfig(ici=(1, 1, 1, 1), num_devices=1), 1,
                                              batch)
    eight_sums, eight_grads, p8 = _sums_and_grads(MeshConfig(ici=(2, 4, 1, 1)), 2, batch)
    jax.tree_util.tree_map(np.testing.assert_array_equal, p1, p8)
    assert one_sums["weight"] == B - 1
    for name in ("loss", "correct", "weight"):
        np.testing.assert_allclose(eight_sums[name], one_sums[name], rtol=1e-5, atol=1e-5)
    flat1 = jax.tree_util.tree_leaves_with_path(one_grads)
    flat8 = dict(jax.tree_util.tree_leaves_with_path(eight_grads))
    assert len(flat1) == len(flat8) > 20
    for path, g1 in flat1:
        scale = max(float(np.abs(g1).max()), 1e-2)  # see test_global_objective.py
        np.testing.assert_allclose(flat8[path], g1, rtol=0, atol=3e-5 * scale,
                                   err_msg=jax.tree_util.keystr(path))
    # the matrices of all four similarities get gradients from the loss
    for name, _ in MATRICES:
        assert np.abs(one_grads[name]).max() > 0, name
    # control: the loss of each microbatch's own negatives is a different number
    model = DualEncoder(_small(), family="xclip")
    local = sum(float(model.loss_sums(p1, {k: v[i * 4:(i + 1) * 4] for k, v in batch.items()},
                                      None, True)["loss"]) for i in range(2))
    assert abs(local - float(one_sums["loss"])) > 1e-2
