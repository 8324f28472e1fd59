"""X-CLIP and OpenAI CLIP checkpoints, written by the released classes, against our networks.

The fixture (tests/reference_env/modelscope_xclip.py) builds the release's ``XCLIP``
parameters from the modelscope package's CLIP4Clip classes (``module_clip.CLIP``, OpenAI's
CLIP class; ``module_cross.Transformer``, X-CLIP's ``TransformerClip``) at a tiny size with
12 words and 5 frames, saves them as the release does (``torch.save(state_dict)``,
``pytorch_model.bin.0``; the CLIP part alone as ``clip.pt``) and records the features the
PyTorch modules compute. Here, in float32 and within 1e-4:

* the CLIP towers imported from the OpenAI layout give the reference's frame, sentence and
  word features, and so does transformers ``CLIPModel`` loaded with our export of them;
* X-CLIP imported through ``plug-convert --source xclip`` gives the reference's temporal
  transformer output and the video and frame features, and its similarity equals the four
  X-CLIP similarities computed in numpy from the reference's features and matrices;
* ``--to xclip`` writes back the fixture's tensors bit for bit (same keys, same values);
* a checkpoint whose matrices do not fit the preset, and a folder with several checkpoint
  files, give one error line;
* an OpenAI CLIP state dict starts X-CLIP as the release does.
"""
import contextlib
import io
import os
import shutil

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from plug_jax.convert.cli import main
from plug_jax.families.clip import convert_hf as hf_clip
from plug_jax.families.clip import convert_openai as oa
from plug_jax.families.xclip.config import XClipConfig
from plug_jax.families.xclip.network import XCLIPDualEncoder
from plug_jax.layers.clip import CLIPModel
from plug_jax.trainer import checkpointing

ATOL = 1e-4


def _run(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([str(a) for a in argv])
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def fixture_dir(modelscope_checkpoint):
    return modelscope_checkpoint("modelscope_xclip.py")


@pytest.fixture(scope="module")
def ref(fixture_dir):
    return dict(np.load(os.path.join(fixture_dir, "reference.npz")))


def _l2n(x):
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_openai_clip_towers_equal_the_reference_and_transformers(fixture_dir, ref):
    sd = oa.read_state_dict(os.path.join(fixture_dir, "clip.pt"))
    config, params = oa.clip_from_openai(sd)
    assert (config.vision.image_size, config.vision.heads, config.text.heads) == (32, 1, 1)
    assert config.text.pooling == "argmax" and config.text.eos_token_id == 99
    model, v = CLIPModel(config), {"params": params}
    video = ref["video"]
    frames = model.apply(v, jnp.asarray(video), method=model.encode_image)["embeds"]
    np.testing.assert_allclose(frames, ref["frame_embeds"], atol=ATOL)
    ids = jnp.asarray(ref["input_ids"])
    text = model.apply(v, ids, None, return_token_embeds=True, method=model.encode_text)
    np.testing.assert_allclose(text["embeds"], ref["sequence_output"], atol=ATOL)
    np.testing.assert_allclose(text["token_embeds"], ref["word_embeds"], atol=ATOL)

    # transformers CLIPModel holding our export of the same towers. transformers pools the
    # first eos_token_id (99 ends each row once, so that is the argmax position too).
    import transformers
    hf_config = hf_clip.clip_to_hf_config(config.replace(text=config.text.replace(
        pooling="eos")))
    hf = transformers.CLIPModel(hf_config).eval()
    hf.load_state_dict(hf_clip.clip_to_hf(params, config, as_torch=True), strict=True)
    with torch.no_grad():
        pix = torch.from_numpy(video.reshape((-1,) + video.shape[2:])).permute(0, 3, 1, 2)
        img = hf.get_image_features(pixel_values=pix)
        img = getattr(img, "pooler_output", img)
        ids_t = torch.from_numpy(ref["input_ids"]).long()
        txt = hf.get_text_features(input_ids=ids_t)
        txt = getattr(txt, "pooler_output", txt)
    np.testing.assert_allclose(img.numpy().reshape(ref["frame_embeds"].shape),
                               ref["frame_embeds"], atol=ATOL)
    np.testing.assert_allclose(txt.numpy(), ref["sequence_output"], atol=ATOL)
    # and the OpenAI layout written back is the file's, tensor for tensor
    back = oa.clip_to_openai(params, config)
    assert set(back) == set(sd)
    for k, x in back.items():
        np.testing.assert_array_equal(x, np.asarray(sd[k]), err_msg=k)


def _numpy_logits(sent, words, video, frames, m, scale, tau=0.01):
    """X-CLIP's logits [texts, videos] from MODEL_SPECS.md section 10, one pair at a time."""
    def attend(x, w):  # softmax(x / tau) over the vector, mixed by the square matrix
        a = np.exp(x / tau - np.max(x / tau))
        return (a / a.sum()) @ w
    out = np.zeros((len(sent), len(video)))
    for t in range(len(sent)):
        for v in range(len(video)):
            s_vs = sent[t] @ m["global_mat_weight"] @ video[v]
            mw = words[t] @ video[v]
            s_vw = np.sum(attend(mw, m["word_logit_weight"]) * mw)
            mf = frames[v] @ sent[t]
            s_sf = np.sum(attend(mf, m["frame_logit_weight"]) * mf)
            big = words[t] @ m["local_mat_weight"] @ frames[v].T  # [W, F]
            r = np.array([np.sum(attend(big[:, f], m["word_mat_weight"]) * big[:, f])
                          for f in range(big.shape[1])])
            c = np.array([np.sum(attend(big[w], m["frame_mat_weight"]) * big[w])
                          for w in range(big.shape[0])])
            s_fw = (np.sum(attend(r, m["frame_mat_weight2"]) * r)
                    + np.sum(attend(c, m["word_mat_weight2"]) * c)) / 2
            out[t, v] = scale * (s_vs + s_vw + s_sf + s_fw) / 4
    return out


@pytest.fixture(scope="module")
def imported(fixture_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("xclip_import") / "model"
    rc, stdout, err = _run(["--family", "xclip", "--source", "xclip", "--input",
                            os.path.join(fixture_dir, "pytorch_model.bin.0"), "--output", out])
    assert rc == 0, err
    config_dict, params, _ = checkpointing.load_params(str(out))
    return XClipConfig.from_dict(config_dict), params, str(out), stdout


def test_xclip_checkpoint_gives_the_reference_features_and_logits(imported, ref):
    config, params, _, stdout = imported
    assert "5 frames x 12 words" in stdout
    assert (config.num_frames, config.num_words, config.temporal_layers) == (5, 12, 2)
    net, v = XCLIPDualEncoder(config), {"params": params}
    batch = {"frames": jnp.asarray(ref["video"]),
             "decoder_target_tokens": jnp.asarray(ref["input_ids"])}
    rows = net.apply(v, batch, method=net.embed_rows)
    cols = net.apply(v, batch, method=net.embed_cols)
    e = net.apply(v, batch["frames"], method=net.frame_features)
    temporal = net.apply(v, e, method=lambda m, x: m.temporal(x) + x)
    np.testing.assert_allclose(temporal, ref["temporal_output"], atol=ATOL)
    video = _l2n(_l2n(ref["temporal_output"]).mean(axis=1))
    np.testing.assert_allclose(rows["video"], video, atol=ATOL)
    np.testing.assert_allclose(rows["frames"], _l2n(ref["frame_embeds"]), atol=ATOL)
    np.testing.assert_allclose(cols["sentence"], _l2n(ref["sequence_output"]), atol=ATOL)
    np.testing.assert_allclose(cols["words"], _l2n(ref["word_embeds"]), atol=ATOL)
    logits = net.apply(v, rows, cols, method=net.similarity)  # [videos, texts]
    want = _numpy_logits(_l2n(ref["sequence_output"]), _l2n(ref["word_embeds"]), video,
                         _l2n(ref["frame_embeds"]), ref, float(np.exp(ref["logit_scale"])))
    np.testing.assert_allclose(np.asarray(logits).T, want, atol=ATOL, rtol=1e-5)


def test_export_writes_the_release_tensors_back_exactly(imported, fixture_dir, tmp_path):
    _, _, model_dir, _ = imported
    rc, _, err = _run(["--family", "xclip", "--to", "xclip", "--input", model_dir,
                       "--output", tmp_path / "back"])
    assert rc == 0, err
    got = torch.load(tmp_path / "back" / "model.pt", weights_only=True)
    want = torch.load(os.path.join(fixture_dir, "pytorch_model.bin.0"), weights_only=True)
    assert set(got) == set(want)
    for k in want:
        assert got[k].shape == want[k].shape, k
        assert torch.equal(got[k], want[k]), k


def test_matrices_that_do_not_fit_the_preset_give_one_line(fixture_dir, tmp_path):
    rc, out, err = _run(["--family", "xclip", "--source", "xclip", "--preset",
                         "ViT-B/32-msrvtt", "--input",
                         os.path.join(fixture_dir, "pytorch_model.bin.0"),
                         "--output", tmp_path / "o"])
    assert rc == 2 and "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "word matrices are 12x12 and frame matrices 5x5" in lines[0]
    assert "32 words and 12 frames" in lines[0]
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())
    # a folder with two checkpoint files: which one is meant is not guessed
    two = tmp_path / "two"
    two.mkdir()
    for name in ("a.pt", "b.pt"):
        shutil.copy(os.path.join(fixture_dir, "clip.pt"), two / name)
    rc, _, err = _run(["--family", "xclip", "--source", "openai", "--input", two,
                       "--output", tmp_path / "o2"])
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "pass the file itself" in err


def test_an_openai_clip_starts_xclip_as_the_release_does(fixture_dir, tmp_path):
    rc, out, err = _run(["--family", "xclip", "--source", "openai", "--input",
                         os.path.join(fixture_dir, "clip.pt"), "--output", tmp_path / "o"])
    assert rc == 0, err
    # the default (MSR-VTT) frames and words; as many temporal blocks as the release's 4,
    # capped by the 2 text blocks they are copied from
    assert "starts from the first 2 text blocks" in out and "12 frames, 32 words" in out
    config_dict, params, _ = checkpointing.load_params(str(tmp_path / "o"))
    config = XClipConfig.from_dict(config_dict)
    assert (config.num_frames, config.num_words, config.temporal_layers) == (12, 32, 2)
    sd = oa.read_state_dict(os.path.join(fixture_dir, "clip.pt"))
    np.testing.assert_array_equal(params["temporal"]["frame_pos_embed"]["embedding"],
                                  np.asarray(sd["positional_embedding"]))
    for name in ("global_mat_weight", "word_logit_weight", "frame_mat_weight2"):
        np.testing.assert_array_equal(params[name], np.eye(len(params[name])))
    # the temporal blocks are the text blocks: exporting them gives the text blocks' tensors
    from plug_jax.families.xclip import convert
    back = convert.xclip_to_state_dict(params, config)
    for i in range(config.temporal_layers):
        for key in ("attn.in_proj_weight", "mlp.c_fc.bias", "ln_2.weight"):
            np.testing.assert_array_equal(back[f"transformerClip.resblocks.{i}.{key}"],
                                          np.asarray(sd[f"transformer.resblocks.{i}.{key}"]))
