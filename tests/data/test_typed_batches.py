"""Typed batches: the converter registry's FeatureSpecs, float pixels through the pipeline,
the trainer's dummy batch and the batch shardings of rank > 2 features."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from plug_jax.data import features

PIXEL_TASK = "test_typed_pixels"
VIDEO_TASK = "test_typed_frames"
# The AMTSS student's task over the contract's committed teacher-logits file (registered in
# the test: its name depends on the file's path).
AMTSS_TASK = "amtss_student_over_the_contract_logits"
AMTSS_LOGITS = os.path.join(os.path.dirname(__file__), "..", "families", "amtss", "testdata",
                            "contract_teacher_logits.npz")
IMAGE = (5, 7, 3)  # odd sizes: nothing lines up by accident
FRAMES = (2, 5, 7, 3)
NUM = {"train": 10, "validation": 6}
TARGETS = 6
INPUTS = 4
BATCH_AXES = ("data", "fsdp", "expert")


def _examples(split: str, media: str, shape):
    """Example ``i``: random float32 pixels (``rng.random``, never multiples of anything),
    1..TARGETS random non-zero target tokens and 0..INPUTS input tokens."""
    rng = np.random.default_rng([7, len(split), len(media)])
    out = []
    for i in range(NUM[split]):
        out.append({media: rng.random(shape, np.float32),
                    "targets": rng.integers(1, 100, 1 + i % TARGETS).astype(np.int32),
                    "inputs": rng.integers(1, 100, i % (INPUTS + 1)).astype(np.int32)})
    return out


def _register(name: str, media: str, shape):
    import seqio

    from plug_jax.data import pipeline
    tf = pipeline.tf
    if name in seqio.TaskRegistry.names():
        return

    def dataset_fn(split, shuffle_files=False, seed=None):
        exs = _examples(split, media, shape)
        sig = {media: tf.TensorSpec(shape, tf.float32),
               "targets": tf.TensorSpec([None], tf.int32),
               "inputs": tf.TensorSpec([None], tf.int32)}
        return tf.data.Dataset.from_generator(lambda: iter(exs), output_signature=sig)

    vocab = seqio.PassThroughVocabulary(100)
    seqio.TaskRegistry.add(
        name, source=seqio.FunctionDataSource(dataset_fn, splits=list(NUM)),
        preprocessors=[],
        output_features={
            media: seqio.Feature(seqio.PassThroughVocabulary(1), add_eos=False,
                                 dtype=tf.float32, rank=len(shape)),
            "inputs": seqio.Feature(vocab, add_eos=False, required=False),
            "targets": seqio.Feature(vocab, add_eos=False)},
        shuffle_buffer_size=4)


@pytest.fixture(scope="module")
def pipeline():
    from plug_jax.data import pipeline
    _register(PIXEL_TASK, "image", IMAGE)
    _register(VIDEO_TASK, "frames", FRAMES)
    return pipeline


def _fit(x, n):
    out = np.zeros(n, np.int32)
    out[:min(n, len(x))] = x[:n]
    return out


# ----------------------------------------------------------------------- registry, TF-free
def test_features_module_imports_without_tensorflow():
    code = ("import sys\n"
            "from plug_jax.data import features\n"
            "s = features.feature_spec('image_text', {'image': (224, 224, 3), 'targets': 8})\n"
            "assert s['image'].shape == (224, 224, 3)\n"
            "bad = [m for m in ('tensorflow', 'seqio') if m in sys.modules]\n"
            "print('loaded:', bad)\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONSTARTUP"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "loaded: []", out.stdout


def test_specs_resolve_symbolic_dims():
    lengths = {"image": (224, 224, 3), "frames": (8, 224, 224, 3), "targets": 32, "inputs": 16}
    img = features.feature_spec("image_text", lengths)
    assert img["image"] == features.FeatureSpec("image", np.float32, (224, 224, 3))
    assert img["decoder_target_tokens"] == features.FeatureSpec(
        "decoder_target_tokens", "int32", (32,))
    assert img["encoder_input_tokens"].shape == (16,)
    assert features.feature_spec("video_text", lengths)["frames"].shape == (8, 224, 224, 3)
    enc = features.feature_spec("encoder", {"inputs": 48})
    assert enc["label"].shape == (1,) and enc["label"].dtype == np.int32
    # a custom spec: named dims, fixed dims, a tuple-valued length expanding to its dims
    spec = features.FeatureSpec("boxes", "float32", ("objects", 4)).resolve({"objects": 3})
    assert spec.shape == (3, 4) and spec.zeros(2).shape == (2, 3, 4)
    assert spec.zeros(2).dtype == np.float32
    # lists from a JSON state are tuples again
    assert features.normalize_lengths({"image": [5, 7, 3], "targets": 6}) == {
        "image": (5, 7, 3), "targets": 6}


def test_bad_names_and_duplicate_registrations_give_one_line_errors(monkeypatch):
    monkeypatch.setattr(features, "_REGISTRY", dict(features._REGISTRY))
    with pytest.raises(ValueError, match="unknown feature converter 'image_txt'.*image_text") as e:
        features.feature_spec("image_txt", {"targets": 8})
    assert "\n" not in str(e.value)

    def spec_a(lengths):
        return {"x": features.FeatureSpec("x", "float32", (2,))}

    def spec_b(lengths):
        return {"x": features.FeatureSpec("x", "int32", (2,))}

    features.register_feature_converter("test_conv", spec_a, "seqio:DecoderFeatureConverter")
    features.register_feature_converter("test_conv", spec_a, "seqio:DecoderFeatureConverter")
    assert "test_conv" in features.converter_names()
    for args in ((spec_b, "seqio:DecoderFeatureConverter"),
                 (spec_a, "seqio:EncDecFeatureConverter")):
        with pytest.raises(ValueError, match="'test_conv' is already registered") as e:
            features.register_feature_converter("test_conv", *args)
        assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="already registered"):
        features.register_feature_converter("decoder", spec_a, "seqio:DecoderFeatureConverter")
    with pytest.raises(ValueError, match="needs an 'inputs' length") as e:
        features.feature_spec("encoder", {"targets": 8})
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="'image' as a 3-tuple") as e:
        features.feature_spec("image_text", {"image": 224, "targets": 8})
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="not 'module:attr'"):
        features.register_feature_converter("test_conv2", spec_a, "seqio.DecoderFeatureConverter")


# ---------------------------------------------------------------------- float pixels
@pytest.mark.parametrize("task, media, shape, converter", [
    (PIXEL_TASK, "image", IMAGE, "image_text"),
    (VIDEO_TASK, "frames", FRAMES, "video_text")])
def test_float_pixels_pass_through_bit_exactly(pipeline, task, media, shape, converter):
    lengths = {media: shape, "targets": TARGETS, "inputs": INPUTS}
    src = _examples("train", media, shape)
    it = pipeline.get_batch_iterator(task, lengths, "train", 4, shuffle=False, repeat=False,
                                     converter=converter)
    assert it.feature_shapes[media] == (4, *shape)
    assert it.feature_specs[media] == features.FeatureSpec(media, "float32", shape)
    batches = list(it)
    assert len(batches) == 3  # 10 examples: 4 + 4 + 2 real rows and 2 padding rows
    pixels = np.concatenate([b[media] for b in batches])
    assert pixels.dtype == np.float32 and pixels.shape == (12, *shape)
    np.testing.assert_array_equal(pixels[:10], np.stack([e[media] for e in src]))
    assert not pixels[10:].any()  # padding rows: float32 zeros
    assert pixels[:10].min() > 0 and (pixels[:10] % 1).all()  # real fractions, not zeros
    tgt = np.concatenate([b["decoder_target_tokens"] for b in batches])
    inp = np.concatenate([b["decoder_input_tokens"] for b in batches])
    w = np.concatenate([b["decoder_loss_weights"] for b in batches])
    enc = np.concatenate([b["encoder_input_tokens"] for b in batches])
    for i, e in enumerate(src):
        np.testing.assert_array_equal(tgt[i], _fit(e["targets"], TARGETS))
        np.testing.assert_array_equal(inp[i], np.concatenate([[0], tgt[i][:-1]]))
        np.testing.assert_array_equal(w[i], (tgt[i] != 0).astype(np.int32))
        np.testing.assert_array_equal(enc[i], _fit(e["inputs"], INPUTS))
    assert {b[k].dtype for b in batches for k in b if k != media} == {np.dtype(np.int32)}


def test_float_pixels_survive_resume_and_process_slicing(pipeline):
    lengths = {"image": IMAGE, "targets": TARGETS}
    fresh_it = pipeline.get_batch_iterator(PIXEL_TASK, lengths, "train", 4, seed=5,
                                           converter="image_text")
    fresh = [next(fresh_it) for _ in range(6)]  # 24 rows over 10-example epochs
    state = json.loads(json.dumps(pipeline.BatchIterator(
        PIXEL_TASK, lengths, "train", 4, seed=5, start_step=2, converter="image_text").state()))
    assert state["feature_lengths"]["image"] == list(IMAGE)
    resumed = pipeline.BatchIterator.from_state(state)
    assert resumed.feature_lengths["image"] == IMAGE
    half = pipeline.BatchIterator.from_state({**state, "step": 3}, process_index=1,
                                             process_count=2)
    src = np.stack([e["image"] for e in _examples("train", "image", IMAGE)])
    for n in range(2, 6):
        b = next(resumed)
        assert b.keys() == fresh[n].keys()
        for k in b:
            assert b[k].dtype == fresh[n][k].dtype
            np.testing.assert_array_equal(b[k], fresh[n][k], err_msg=k)
        assert b["image"].dtype == np.float32
        # every row is one of the source images, bit for bit
        for row in b["image"]:
            assert any(np.array_equal(row, s) for s in src)
        if n >= 3:
            np.testing.assert_array_equal(next(half)["image"], fresh[n]["image"][2:])


# ------------------------------------------------------- every converter's spec is the truth
TEXT_CASES = [
    ("decoder", "gpt3_shoplm_zh_v1", {"targets": 64}),
    ("encdec", "plug_gen_zh_v1", {"inputs": 32, "targets": 16}),
    ("prefix_lm", "plug_gen_zh_v1", {"inputs": 32, "targets": 16}),
    ("encdec_mlm", "plug_genae_zh_v1", {"inputs": 32, "targets": 16}),
    ("encoder", "structbert_sentiment_zh_v1", {"inputs": 32}),
    ("image_text", PIXEL_TASK, {"image": IMAGE, "targets": TARGETS}),
    ("video_text", VIDEO_TASK, {"frames": FRAMES, "targets": TARGETS, "inputs": INPUTS}),
    ("amtss_student", AMTSS_TASK, {"inputs": 32, "teacher_logits": (6, 5)}),
]


def test_every_registered_converter_has_a_case():
    assert {c for c, _, _ in TEXT_CASES} == set(features.converter_names())


@pytest.mark.parametrize("pack", [True, False])
@pytest.mark.parametrize("converter, task, lengths", TEXT_CASES,
                         ids=[f"{c}-{t}" for c, t, _ in TEXT_CASES])
def test_spec_matches_the_batches(pipeline, converter, task, lengths, pack):
    import plug_jax.tasks  # noqa: F401
    if task == AMTSS_TASK:
        from plug_jax.tasks import amtss
        task = amtss.student_task(os.path.abspath(AMTSS_LOGITS))
    specs = features.feature_spec(converter, lengths, pack=pack)
    it = pipeline.get_batch_iterator(task, lengths, "validation", 4, shuffle=False,
                                     pack=pack, converter=converter)
    assert it.feature_specs == specs
    assert it.feature_shapes == {k: (4, *s.shape) for k, s in specs.items()}
    for _ in range(2):
        b = next(it)
        assert set(b) == set(specs)
        for k, s in specs.items():
            assert b[k].dtype == s.dtype and b[k].shape == (4, *s.shape), k
    it.close()


def test_feature_converters_view_keeps_working(pipeline):
    import seqio
    assert pipeline.FEATURE_CONVERTERS["decoder"] is seqio.DecoderFeatureConverter
    assert pipeline.FEATURE_CONVERTERS["encoder"] is pipeline.EncoderFeatureConverter
    assert set(pipeline.FEATURE_CONVERTERS) == set(features.converter_names())
    assert "image_text" in pipeline.FEATURE_CONVERTERS
    with pytest.raises(ValueError, match="unknown feature converter"):
        pipeline.feature_converter("nope")


# --------------------------------------------------------- trainer dummy batch, shardings
@pytest.mark.parametrize("converter, lengths, media", [
    ("image_text", {"image": (32, 24, 3), "targets": 16, "inputs": 8}, "image"),
    ("video_text", {"frames": (4, 32, 24, 3), "targets": 16}, "frames")])
def test_dummy_batch_follows_the_spec(converter, lengths, media):
    from plug_jax.trainer import loop
    cfg = loop.DatasetConfig("unused", lengths, batch_size=8, converter=converter)
    dummy = loop._dummy_batch(cfg)
    specs = features.feature_spec(converter, lengths)
    assert set(dummy) == set(specs)
    for k, s in specs.items():
        assert dummy[k].dtype == s.dtype and dummy[k].shape == (8, *s.shape)
        assert not dummy[k].any()
    assert dummy[media].dtype == np.float32 and dummy[media].shape == (8, *lengths[media])
    # text converters: the same arrays as before (int32 [B, L], packed layout)
    text = loop._dummy_batch(loop.DatasetConfig("unused", {"targets": 64}, batch_size=2))
    assert {k: (v.dtype, v.shape) for k, v in text.items()} == {
        k: (np.dtype(np.int32), (2, 64)) for k in (
            "decoder_target_tokens", "decoder_input_tokens", "decoder_loss_weights",
            "decoder_segment_ids", "decoder_positions")}
    with pytest.raises(loop.TrainError, match="unknown feature converter"):
        loop._dummy_batch(loop.DatasetConfig("unused", lengths, converter="pixels"))


@pytest.mark.parametrize("ici, batch_shards", [((1, 8, 1, 1), 8), ((2, 2, 1, 2), 4)])
def test_rank4_and_rank5_batch_shardings_split_the_batch_axes_only(ici, batch_shards):
    from plug_jax import plan
    from plug_jax.partitioning import Partitioner, create_mesh
    from plug_jax.trainer import loop
    assert len(jax.devices()) == 8
    part = Partitioner(create_mesh(ici), "fsdp")
    for converter, lengths, media in [
            ("image_text", {"image": (6, 5, 3), "targets": 4}, "image"),
            ("video_text", {"frames": (3, 6, 5, 3), "targets": 4}, "frames")]:
        cfg = loop.DatasetConfig("unused", lengths, batch_size=16, converter=converter)
        dummy = loop._dummy_batch(cfg)
        rng = np.random.default_rng(0)
        dummy[media] = rng.random(dummy[media].shape, np.float32)
        sh = part.batch_shardings(dummy)
        rank = dummy[media].ndim
        assert sh[media].spec == PartitionSpec(BATCH_AXES, *([None] * (rank - 1)))
        assert sh["decoder_target_tokens"].spec == PartitionSpec(BATCH_AXES, None)
        out = part.shard_batch(dummy)
        assert out[media].sharding.is_equivalent_to(sh[media], rank)
        rows = 16 // batch_shards
        for shard in out[media].addressable_shards:
            assert shard.data.shape == (rows, *dummy[media].shape[1:])  # only the batch split
            np.testing.assert_array_equal(np.asarray(shard.data), dummy[media][shard.index])
        np.testing.assert_array_equal(np.asarray(out[media]), dummy[media])
        # plug-plan's per-device batch bytes count the float pixels at 4 bytes each
        assert plan.shard_bytes(dummy[media].shape, dummy[media].dtype, sh[media]) == \
            rows * int(np.prod(dummy[media].shape[1:])) * 4
        # a jitted step with these in_shardings keeps them
        f = part.jit(lambda b: {k: v * 2 for k, v in b.items()}, in_shardings=(sh,),
                     out_shardings=sh)
        res = f(out)
        assert res[media].sharding.is_equivalent_to(sh[media], rank)
        np.testing.assert_array_equal(np.asarray(res[media]), dummy[media] * 2)
