"""The modelscope mPLUG reference fixture (tests/reference_env/modelscope_mplug.py).

The script runs in the reference env (modelscope 1.40.2, transformers 4.x) through
``tests/reference_env/build.py``'s ``run``: it builds random tiny ``MPlugForVisualQuestion
Answering``, ``MPlugForImageCaption`` and ``MPlugForImageTextRetrieval`` models, saves each as a
modelscope model dir, reloads it with ``MPlugForAllTasks`` (``MPlug.from_pretrained``), exits
non-zero unless the reloaded state dict equals the saved one, and records outputs. This test
checks that what it wrote has the released key layout and sane outputs; the parity of
plug_jax's mPLUG against these outputs belongs to the converter's tests."""
import importlib.util
import json
import pathlib

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _reference_run(script, *args):
    """``tests/reference_env/build.py``'s ``run`` (the script in the reference env)."""
    path = ROOT / "reference_env" / "build.py"
    spec = importlib.util.spec_from_file_location("plug_jax_reference_env_mplug", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.run(script, *args, timeout=300)


# WAVE2_REFERENCES.md §1: the names of the released modelscope mPLUG checkpoints.
COMMON = [
    "visual_encoder.visual.class_embedding",
    "visual_encoder.visual.positional_embedding",
    "visual_encoder.visual.conv1.weight",
    "visual_encoder.visual.ln_pre.weight",
    "visual_encoder.visual.ln_post.bias",
    "visual_encoder.visual.proj",
    "visual_encoder.visual.transformer.resblocks.0.attn.in_proj_weight",
    "visual_encoder.visual.transformer.resblocks.0.attn.in_proj_bias",
    "visual_encoder.visual.transformer.resblocks.0.attn.out_proj.weight",
    "visual_encoder.visual.transformer.resblocks.0.mlp.c_fc.weight",
    "visual_encoder.visual.transformer.resblocks.0.mlp.c_proj.bias",
    "visual_encoder.visual.transformer.resblocks.0.ln_1.weight",
    "visual_encoder.visual.transformer.resblocks.0.ln_2.bias",
    "visual_encoder.token_embedding.weight",  # the unused CLIP text tower is saved too
    "visn_fc.weight", "visn_fc.bias", "visn_layer_norm.weight", "visn_layer_norm.bias",
    "text_encoder.embeddings.word_embeddings.weight",
    "text_encoder.encoder.layer.0.attention.self.query.weight",
    "text_encoder.encoder.layer.1.output.LayerNorm.bias",
    "fusion_encoder.encoder.layer.0.attention.self.query.weight",  # below the start layer
    "fusion_encoder.encoder.layer.4.attention.self.key.weight",
    "fusion_encoder.encoder.layer.4.crossattention.self.key.weight",
    "fusion_encoder.encoder.layer.4.crossattention.output.LayerNorm.weight",
    "fusion_encoder.encoder.layer.4.output.dense.bias",
]
DECODER = [
    "text_decoder.bert.embeddings.word_embeddings.weight",
    "text_decoder.bert.encoder.layer.1.attention.self.value.weight",
    "text_decoder.bert.encoder.layer.1.crossattention.self.key.weight",
    "text_decoder.bert.encoder.layer.1.crossattention.output.dense.weight",
    "text_decoder.cls.predictions.bias",
    "text_decoder.cls.predictions.transform.dense.weight",
    "text_decoder.cls.predictions.transform.LayerNorm.weight",
    "text_decoder.cls.predictions.decoder.weight",
]
RETRIEVAL = ["vision_proj.weight", "vision_proj.bias", "text_proj.weight", "text_proj.bias",
             "itm_head.weight", "itm_head.bias", "temp", "image_queue", "text_queue",
             "idx_queue", "queue_ptr", "visual_encoder_m.visual.conv1.weight",
             "text_proj_m.weight",
             "fusion_encoder_m.encoder.layer.4.crossattention.self.key.weight"]


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_modelscope_mplug_fixture(tmp_path):
    out = _reference_run("modelscope_mplug.py", str(tmp_path), "--seed", "0")
    # MPlug.from_pretrained prints load_state_dict(strict=False)'s message, once per task.
    assert out.stdout.count("<All keys matched successfully>") == 3, out.stdout[-2000:]
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["modelscope"] == "1.40.2"
    tasks = manifest["tasks"]
    assert set(tasks) == {"vqa", "caption", "retrieval"}
    classes = {k: v["modelscope_class"].rsplit(".", 1)[-1] for k, v in tasks.items()}
    assert classes == {"vqa": "MPlugForVisualQuestionAnswering",
                       "caption": "MPlugForImageCaption",
                       "retrieval": "MPlugForImageTextRetrieval"}
    H, V, W = 64, 128, 768
    for name, entry in tasks.items():
        sd = entry["state_dict"]
        want = COMMON + (RETRIEVAL if name == "retrieval" else DECODER)
        assert not [k for k in want if k not in sd], name
        assert not [k for k in sd if k.startswith(("model.", "module."))]
        assert sd["visual_encoder.visual.transformer.resblocks.0.attn.in_proj_weight"]["shape"] \
            == [3 * W, W]
        assert sd["visual_encoder.visual.positional_embedding"]["shape"] == [10, W]  # (48/16)^2+1
        assert sd["visn_fc.weight"]["shape"] == [H, W]
        assert sd["fusion_encoder.encoder.layer.4.crossattention.self.key.weight"]["shape"] \
            == [H, H]
        assert entry["fusion_start_layer"] == 1 and entry["large_visn_fc"]
        d = tmp_path / entry["dir"]
        for f in ("pytorch_model.bin", "config.yaml", "config_bert.json", "vocab.txt",
                  "configuration.json", "outputs.npz"):
            assert (d / f).is_file() and f in entry["files"], (name, f)
        assert json.loads((d / "configuration.json").read_text())["model"]["type"] == "mplug"
        if name != "retrieval":
            assert ["text_decoder.bert.embeddings.word_embeddings.weight",
                    "text_decoder.cls.predictions.decoder.weight"] in entry["tied"]
        momentum = [k for k in sd if k.split(".")[0].endswith("_m")]  # *_m copies
        assert bool(momentum) == (name == "retrieval"), name  # distill only for retrieval

    x = np.load(tmp_path / "inputs.npz")
    assert x["image"].shape == (2, 3, 48, 48) and x["image"].dtype == np.float32
    B, Lq, La = 2, x["question_ids"].shape[1], x["answer_ids"].shape[1]
    outs = {name: dict(np.load(tmp_path / name / "outputs.npz")) for name in tasks}
    for name, o in outs.items():
        for k, v in o.items():
            assert np.isfinite(v).all(), (name, k)
        assert o["vision_ln_post"].shape == (B, 10, W)
        assert o["vision_embeds"].shape == (B, 10, H)

    vqa = outs["vqa"]
    assert vqa["decoder_logits"].shape == (B, La, V)
    assert vqa["fused_states"].shape == (B, 10 + Lq, H)
    np.testing.assert_array_equal(
        vqa["fused_states"], np.concatenate([vqa["fused_image"], vqa["fused_text"]], 1))
    np.testing.assert_array_equal(vqa["fused_mask"][:, 10:], x["question_mask"])
    # the connected (stride) fusion layer adds its vision output back: fused != input tokens
    assert np.abs(vqa["fused_image"] - vqa["vision_embeds"]).max() > 1e-2
    assert vqa["loss"].shape == (B,) and (vqa["loss"] > 0).all()
    assert not np.allclose(vqa["decoder_logits"][0], vqa["decoder_logits"][1], atol=1e-3)

    cap = outs["caption"]
    assert cap["decoder_logits"].shape == (B, La, V)
    # a different model (own seed, cross-attention over the image only): different logits
    assert not np.allclose(cap["decoder_logits"], vqa["decoder_logits"], atol=1e-3)

    ret = outs["retrieval"]
    for k in ("image_feat", "text_feat"):
        assert ret[k].shape == (B, 16)
        np.testing.assert_allclose(np.linalg.norm(ret[k], axis=-1), 1.0, rtol=1e-5)
    assert ret["sim_i2t"].shape == (B, B) and 0.05 < float(ret["temp"]) < 0.1
    np.testing.assert_allclose(ret["sim_i2t"], ret["image_feat"] @ ret["text_feat"].T
                               / ret["temp"], rtol=1e-4, atol=1e-4)
    assert ret["itm_logits"].shape == (B, B, 2) and ret["itm_scores"].shape == (B, 2)
    np.testing.assert_allclose(_softmax(ret["itm_logits"][np.arange(B), np.arange(B)]),
                               ret["itm_scores"], rtol=1e-5, atol=1e-6)
