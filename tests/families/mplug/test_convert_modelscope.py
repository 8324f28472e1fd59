"""plug_jax.families.mplug.convert_modelscope against modelscope's own mPLUG classes.

A module-scoped fixture runs ``tests/reference_env/modelscope_mplug.py`` once (random tiny
``MPlugForVisualQuestionAnswering`` / ``MPlugForImageCaption`` / ``MPlugForImageTextRetrieval``
saved as modelscope dirs, with their outputs); the dirs are converted with
``from_modelscope`` and our ``MPlug`` methods must reproduce the outputs (float32, 1e-4)."""
import dataclasses
import importlib.util
import pathlib

import jax.numpy as jnp
import numpy as np
import pytest

from plug_jax.convert import io as cio
from plug_jax.families.mplug import convert_modelscope as cm
from plug_jax.families.mplug.network import MPlug

ROOT = pathlib.Path(__file__).resolve().parents[2]
ATOL = 1e-4
ALLOW = {"vqa": cm.RETRIEVAL_HEADS, "caption": cm.RETRIEVAL_HEADS, "retrieval": cm.DECODER}


@pytest.fixture(scope="module")
def ref(tmp_path_factory):
    out = tmp_path_factory.mktemp("modelscope_mplug")
    spec = importlib.util.spec_from_file_location("plug_jax_reference_env_mplug_convert",
                                                  ROOT / "reference_env" / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.run("modelscope_mplug.py", str(out), "--seed", "0", timeout=300)
    x = dict(np.load(out / "inputs.npz"))
    inputs = dict(image=jnp.asarray(x["image"].transpose(0, 2, 3, 1)),  # NCHW -> NHWC
                  **{k: jnp.asarray(x[k], jnp.int32) for k in
                     ("question_ids", "question_mask", "answer_ids", "answer_mask")})
    return out, inputs


def _load(ref, task):
    out, _ = ref
    report = []
    config, params = cm.from_modelscope(out / task, report=report, allow_missing=ALLOW[task])
    return config, params, report, dict(np.load(out / task / "outputs.npz"))


def _close(name, got, want, diffs):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, (name, got.shape, want.shape)
    diffs[name] = float(np.abs(got - want).max())
    np.testing.assert_allclose(got, want, rtol=0, atol=ATOL, err_msg=name)


def test_config_from_modelscope(ref):
    config = cm.config_from_modelscope(ref[0] / "vqa")
    assert (config.vision.width, config.vision.layers, config.vision.patch_size,
            config.vision.heads, config.vision.image_size) == (768, 1, 16, 12, 48)
    assert (config.hidden_size, config.num_heads, config.ffn_size, config.vocab_size) == \
        (64, 4, 128, 128)
    assert (config.text_layers, config.fusion_layers, config.fusion_total_layers,
            config.fusion_start_layer, config.stride, config.decoder_layers) == (2, 4, 5, 1, 2, 2)
    assert config.vision_proj_to_text and config.embed_dim == 16 and config.tie_decoder_embeddings


def _vision(ref, task):
    """The task's converted model and its vision tokens, checked against modelscope's."""
    config, p, report, o = _load(ref, task)
    m, v, d = MPlug(config), {"params": p}, {}
    vis = m.apply(v, ref[1]["image"], method=MPlug.encode_image)
    _close("vision_embeds", vis, o["vision_embeds"], d)
    return m, v, d, o, report, vis


def _text(m, v, d, o, x):
    txt = m.apply(v, x["question_ids"], x["question_mask"], method=MPlug.encode_text)
    _close("text_embeds", txt, o["text_embeds"], d)
    return txt


def test_vqa_parity(ref):
    x = ref[1]
    m, v, d, o, report, vis = _vision(ref, "vqa")
    txt = _text(m, v, d, o, x)
    vmask = jnp.ones(vis.shape[:2], jnp.int32)
    fv, ft = m.apply(v, vis, vmask, txt, x["question_mask"], method=MPlug.fuse)
    _close("fused_image", fv, o["fused_image"], d)
    _close("fused_text", ft, o["fused_text"], d)
    logits = m.apply(v, x["answer_ids"], x["answer_mask"], jnp.concatenate([fv, ft], 1),
                     jnp.concatenate([vmask, x["question_mask"]], 1), method=MPlug.decode_full)
    _close("decoder_logits", logits, o["decoder_logits"], d)
    print("vqa max abs diff", d)
    text = "\n".join(report)
    for group in ("unused CLIP text tower", "fusion layers below the start layer 1",
                  "position_ids buffers", "tied decoder copies",
                  "freshly initialised (absent from the checkpoint, allowed): itm_head, temp, "
                  "text_proj, vision_proj"):
        assert group in text, (group, report)


def test_caption_parity(ref):
    x = ref[1]
    m, v, d, o, _, vis = _vision(ref, "caption")
    # the caption decoder cross-attends over the image tokens only
    logits = m.apply(v, x["answer_ids"], x["answer_mask"], vis,
                     jnp.ones(vis.shape[:2], jnp.int32), method=MPlug.decode_full)
    _close("decoder_logits", logits, o["decoder_logits"], d)
    print("caption max abs diff", d)


def test_retrieval_parity(ref):
    x = ref[1]
    m, v, d, o, report, vis = _vision(ref, "retrieval")
    txt = _text(m, v, d, o, x)
    image_feat, text_feat = m.apply(v, vis, txt, method=MPlug.itc_features)
    _close("image_feat", image_feat, o["image_feat"], d)
    _close("text_feat", text_feat, o["text_feat"], d)
    temp = m.apply(v, method=MPlug.temperature)
    _close("temp", temp, o["temp"], d)
    _close("sim_i2t", image_feat @ text_feat.T / temp, o["sim_i2t"], d)
    b = vis.shape[0]
    vmask = jnp.ones((b, vis.shape[1]), jnp.int32)
    itm = []
    for i in range(b):  # image i against every text
        _, ft = m.apply(v, jnp.broadcast_to(vis[i:i + 1], vis.shape), vmask, txt,
                        x["question_mask"], method=MPlug.fuse)
        itm.append(m.apply(v, ft, method=MPlug.itm_logits))
    _close("itm_logits", jnp.stack(itm), o["itm_logits"], d)
    print("retrieval max abs diff", d)
    text = "\n".join(report)
    for group in ("momentum copies (*_m", "queues (image_queue", "unused CLIP text tower",
                  "freshly initialised (absent from the checkpoint, allowed): decoder"):
        assert group in text, (group, report)


def test_round_trip(ref):
    out, _ = ref
    config, p, _, _ = _load(ref, "vqa")
    sd = cm.to_modelscope(config, p)
    # params -> modelscope -> params: exact
    _, back = cm.from_modelscope(sd, config, allow_missing=ALLOW["vqa"])
    a, b = cio.flatten_tree(p), cio.flatten_tree(back)
    assert set(a) == set(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k
    # file -> params -> modelscope: every exported key the file has is bit-identical
    file_sd = cio.load_weights_file(out / "vqa" / "pytorch_model.bin")
    shared = sorted(set(sd) & set(file_sd))
    assert sorted(set(sd) - set(file_sd)) == sorted(
        [f"{h}.{w}" for h in ("vision_proj", "text_proj", "itm_head") for w in ("weight", "bias")]
        + ["temp"])
    for k in shared:
        want = file_sd[k].numpy()
        assert sd[k].shape == want.shape and np.array_equal(sd[k], want), k
    # model./module. wrappers are stripped; the unscanned layout converts to the same dict
    wrapped = {f"module.model.{k}": val for k, val in file_sd.items()}
    cfg_u = dataclasses.replace(config, scan_layers=False,
                                vision=dataclasses.replace(config.vision, scan_layers=False))
    _, pu = cm.from_modelscope(wrapped, cfg_u, allow_missing=ALLOW["vqa"])
    assert "layers_1" in pu["text_encoder"]["stack"]
    sd_u = cm.to_modelscope(cfg_u, pu)
    for k in shared:
        assert np.array_equal(sd_u[k], sd[k]), k


def test_bad_inputs(ref):
    config, p, _, _ = _load(ref, "vqa")
    sd = cm.to_modelscope(config, p)
    sd["text_encoder.encoder.layer.7.output.dense.weight"] = sd["visn_fc.weight"]
    with pytest.raises(ValueError, match=r"unexpected tensor "
                       r"'text_encoder\.encoder\.layer\.7\.output\.dense\.weight'") as e:
        cm.from_modelscope(sd, config, allow_missing=ALLOW["vqa"])
    assert "\n" not in str(e.value)
    # a VQA dir has no retrieval heads: an error unless allowed
    with pytest.raises(ValueError, match=r"missing tensor 'vision_proj\.weight'") as e:
        cm.from_modelscope(ref[0] / "vqa")
    assert "\n" not in str(e.value)


def test_tied_decoder_copy(ref):
    config, p, _, _ = _load(ref, "vqa")
    sd = cm.to_modelscope(config, p)
    assert np.array_equal(sd["text_decoder.cls.predictions.decoder.weight"],
                          sd["text_decoder.bert.embeddings.word_embeddings.weight"])
    # an untied config reads the copy as its own output matrix and writes it back
    untied = dataclasses.replace(config, tie_decoder_embeddings=False)
    sd["text_decoder.cls.predictions.decoder.weight"] = \
        sd["text_decoder.cls.predictions.decoder.weight"] + 1.0
    _, pu = cm.from_modelscope(sd, untied, allow_missing=ALLOW["vqa"])
    np.testing.assert_array_equal(pu["decoder"]["output_embedding"],
                                  sd["text_decoder.cls.predictions.decoder.weight"])
    back = cm.to_modelscope(untied, pu)
    assert all(np.array_equal(back[k], sd[k]) for k in sd)
    # a tied config refuses a copy that differs from the word embeddings
    with pytest.raises(ValueError, match=r"decoder\.weight' differs") as e:
        cm.from_modelscope(sd, config, allow_missing=ALLOW["vqa"])
    assert "\n" not in str(e.value)


def test_plug_convert_cli_both_ways(ref, tmp_path, capsys):
    """plug-convert --family mplug on the VQA dir modelscope's own class saved: the import
    carries vocab.txt and names the skipped groups; --to modelscope writes a dir whose state
    dict holds the original tensors exactly."""
    from plug_jax.convert import io as cio
    from plug_jax.convert.cli import main
    out, _ = ref
    ours, back = tmp_path / "ours", tmp_path / "back"
    assert main(["--family", "mplug", "--source", "modelscope", "--input",
                 str(out / "vqa"), "--output", str(ours)]) == 0
    printed = capsys.readouterr().out
    assert "vision_proj" in printed  # the retrieval heads a VQA dir lacks, initialised
    assert (ours / "vocab" / "vocab.txt").read_text() == (out / "vqa" / "vocab.txt").read_text()
    assert main(["--family", "mplug", "--to", "modelscope", "--input", str(ours),
                 "--output", str(back)]) == 0
    assert (back / "vocab.txt").exists()
    want = cio.load_weights_files(cio.find_hf_weights(str(out / "vqa")))
    got = cio.load_weights_files(cio.find_hf_weights(str(back)))
    common = [k for k in got if k in want]
    assert len(common) > 50
    for k in common:
        np.testing.assert_array_equal(np.asarray(got[k]), np.asarray(want[k]), err_msg=k)


def test_released_momentum_copies_and_queues_reach_the_momentum_state(ref, tmp_path, capsys):
    """The retrieval dir modelscope saved holds ALBEF's ``*_m`` copies and queues:
    ``momentum_state_from_modelscope`` lays them out as ``ImageTextPretrain.init_state``
    does, plug-convert keeps them (``model_state.npz``) and a momentum-distillation run
    started from the conversion loads them."""
    import jax
    from flax import linen as nn

    from plug_jax.convert.cli import main
    from plug_jax.models import ImageTextPretrain
    from plug_jax.optim import adamw
    from plug_jax.trainer import checkpointing, loop
    out, _ = ref
    assert cm.momentum_state_from_modelscope(out / "vqa") is None  # no copies saved there
    sd = {k: np.asarray(cio.to_numpy(v)) for k, v in
          cio.load_weights_files(cio.find_hf_weights(str(out / "retrieval"))).items()}
    state = cm.momentum_state_from_modelscope(out / "retrieval")
    pm = state["params_m"]
    # the fixture's vision (768) is wider than its BERT: visn_fc / visn_layer_norm too
    assert sorted(pm) == ["text_encoder", "text_proj", "vision", "vision_proj",
                          "vision_to_text"]
    np.testing.assert_array_equal(pm["vision_to_text"]["fc"]["kernel"],
                                  sd["visn_fc_m.weight"].T)
    # the published layout, by hand: torch Linear [out, in] -> our kernel [in, out]
    np.testing.assert_array_equal(pm["vision_proj"]["kernel"], sd["vision_proj_m.weight"].T)
    np.testing.assert_array_equal(pm["text_proj"]["bias"], sd["text_proj_m.bias"])
    np.testing.assert_array_equal(pm["vision"]["class_embed"]["embedding"],
                                  sd["visual_encoder_m.visual.class_embedding"])
    np.testing.assert_array_equal(
        pm["text_encoder"]["word_embed"]["embedding"],
        sd["text_encoder_m.embeddings.word_embeddings.weight"])
    # the copies differ from the online tensors (they are their own tensors)
    assert not np.array_equal(sd["vision_proj_m.weight"], sd["vision_proj.weight"])
    np.testing.assert_array_equal(state["image_queue"], sd["image_queue"].T)
    np.testing.assert_array_equal(state["text_queue"], sd["text_queue"].T)
    assert (state["idx_queue"] == -1).all()

    ours = tmp_path / "ours"
    assert main(["--family", "mplug", "--source", "modelscope", "--input",
                 str(out / "retrieval"), "--output", str(ours)]) == 0
    assert "model_state.npz, loaded into the momentum state" in capsys.readouterr().out
    assert cm.MODEL_STATE_FILE == checkpointing.MODEL_STATE_FILE
    config = cm.config_from_modelscope(out / "retrieval")
    q = state["image_queue"].shape[0]
    model = ImageTextPretrain(config, momentum_distillation=True, queue_size=q, cls_id=101,
                              mask_id=103, mlm_weight=0.0, lm_weight=0.0)  # retrieval
    s = config.vision.image_size
    batch = {"image": np.zeros((2, s, s, 3), np.float32),
             "decoder_target_tokens": np.ones((2, 8), np.int32)}
    builder = loop.StateBuilder(model, loop.MeshConfig(rules="dp").partitioner(),
                                adamw(1e-3), batch)
    fresh = nn.unbox(builder.init(jax.random.PRNGKey(0)))
    arrays = loop.ConvertedCheckpoint(str(ours)).restore_into(builder, fresh, "mplug")
    got = arrays["model_state"]
    np.testing.assert_array_equal(arrays["params"]["vision_proj"]["kernel"],
                                  sd["vision_proj.weight"].T)  # the online weights
    np.testing.assert_array_equal(got["image_queue"], state["image_queue"])
    np.testing.assert_array_equal(got["params_m"]["vision_proj"]["kernel"],
                                  pm["vision_proj"]["kernel"])
    np.testing.assert_array_equal(got["queue_ptr"], state["queue_ptr"])
