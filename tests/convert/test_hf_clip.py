"""transformers CLIPModel <-> plug_jax CLIPModel: parity on random weights, round trips, errors."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import linen as nn

from plug_jax.convert.hf_clip import (clip_config_from_hf, clip_from_hf, clip_to_hf,
                                      clip_to_hf_config, load_clip_checkpoint)
from plug_jax.layers.clip import CLIPConfig, CLIPModel, abstract_params

ATOL = 1e-4

# Two tiny configs. "odd": 3 and 5 heads (not powers of two), eos_token_id 5 that is NOT the
# largest id and doubles as padding (pooling at its first occurrence), scanned layers.
# "legacy": eos_token_id 2, transformers' old rule (pool at the largest id), unscanned layers.
CONFIGS = {
    "odd": dict(
        text=dict(vocab_size=99, hidden_size=60, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=5, max_position_embeddings=16, eos_token_id=5,
                  pad_token_id=5, bos_token_id=6),
        vision=dict(hidden_size=48, intermediate_size=80, num_hidden_layers=2,
                    num_attention_heads=3, image_size=32, patch_size=8),
        projection_dim=24, scan=True),
    "legacy": dict(
        text=dict(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=2, max_position_embeddings=12, eos_token_id=2,
                  pad_token_id=0, bos_token_id=1, layer_norm_eps=1e-6),
        vision=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                    num_attention_heads=4, image_size=24, patch_size=6, layer_norm_eps=1e-6),
        projection_dim=16, scan=False),
}
LENGTHS = (9, 5, 2)  # real tokens per row (incl. BOS and EOT), right-padded to 11


def _hf_model(name, seed=0):
    c = CONFIGS[name]
    cfg = transformers.CLIPConfig(text_config=c["text"], vision_config=c["vision"],
                                  projection_dim=c["projection_dim"])
    torch.manual_seed(seed)
    model = transformers.CLIPModel(cfg).eval()
    with torch.no_grad():  # LayerNorms and biases away from their 1 / 0 init
        for n, p in model.named_parameters():
            if "layer_norm" in n or "layrnorm" in n:
                p.copy_((1.0 if n.endswith("weight") else 0.0) + 0.1 * torch.randn_like(p))
            elif n.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
        model.logit_scale.fill_(2.0)
    return model


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def case(request):
    return request.param, _hf_model(request.param)


def _texts(name):
    """Right-padded ids ``[3, 11]`` of different lengths, each ending in the EOT token."""
    t = CONFIGS[name]["text"]
    g = torch.Generator().manual_seed(1)
    if t["eos_token_id"] == 2:  # legacy: EOT is the largest id, padding 0
        eot, pad, lo, hi = t["vocab_size"] - 1, 0, 3, t["vocab_size"] - 1
    else:  # EOT id 5 is small; padding repeats it
        eot, pad, lo, hi = t["eos_token_id"], t["eos_token_id"], 7, t["vocab_size"]
    ids = torch.full((3, 11), pad, dtype=torch.long)
    mask = torch.zeros(3, 11, dtype=torch.long)
    for row, n in enumerate(LENGTHS):
        ids[row, 0] = t["bos_token_id"]
        ids[row, 1:n - 1] = torch.randint(lo, hi, (n - 2,), generator=g)
        ids[row, n - 1] = eot
        mask[row, :n] = 1
    return ids, mask


def _images(name, batch=2):
    v = CONFIGS[name]["vision"]
    g = torch.Generator().manual_seed(2)
    return torch.randn(batch, 3, v["image_size"], v["image_size"], generator=g)  # NCHW


def _nhwc(pixels):
    return jnp.asarray(pixels.permute(0, 2, 3, 1).numpy())


def _diff(a, b):
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max())


def _ours(name, model):
    cfg = clip_config_from_hf(model.config, scan_layers=CONFIGS[name]["scan"])
    return cfg, clip_from_hf(model.state_dict(), model.config,
                             scan_layers=CONFIGS[name]["scan"])


def test_config_from_hf(case):
    name, model = case
    cfg, params = _ours(name, model)
    c = CONFIGS[name]
    assert cfg.text.pooling == ("argmax" if c["text"]["eos_token_id"] == 2 else "eos")
    assert (cfg.vision.heads, cfg.text.heads) == (c["vision"]["num_attention_heads"],
                                                  c["text"]["num_attention_heads"])
    assert cfg.vision.activation == cfg.text.activation == "quick_gelu"
    assert cfg.projection_dim == c["projection_dim"]
    assert math.isclose(cfg.logit_scale_init, 2.6592)
    assert ("layers" in params["vision"]["stack"]) is c["scan"]
    assert clip_config_from_hf(clip_to_hf_config(cfg), scan_layers=c["scan"]) == cfg


@pytest.fixture(scope="module")
def ours(case):
    """One jitted program (eager flax dispatch is slow on a shared CPU): the full model, the
    text tower with every token projected, and frames through the image tower."""
    name, model = case
    cfg, params = _ours(name, model)
    ids, mask = _texts(name)
    m = CLIPModel(cfg)

    @jax.jit
    def run(params, pixels, ids, mask):
        v = {"params": params}
        frames = pixels[None]  # one clip whose two frames are the two images
        return (m.apply(v, pixels, ids, mask),
                m.apply(v, ids, mask, return_token_embeds=True, method=CLIPModel.encode_text),
                m.apply(v, frames, method=CLIPModel.encode_image))

    return cfg, params, run(params, _nhwc(_images(name)), jnp.asarray(ids.numpy()),
                            jnp.asarray(mask.numpy()))


def test_clip_parity(case, ours):
    """Embeddings, logits, pooled and all-token states equal transformers' CLIPModel."""
    name, model = case
    cfg, _, (out, txt, _) = ours
    ids, mask = _texts(name)
    pixels = _images(name)
    with torch.no_grad():
        ref = model(input_ids=ids, pixel_values=pixels, attention_mask=mask)
        img_feats = model.get_image_features(pixel_values=pixels)
        txt_feats = model.get_text_features(input_ids=ids, attention_mask=mask)
        vision = model.vision_model(pixel_values=pixels)
        all_tokens_ln = model.vision_model.post_layernorm(vision.last_hidden_state)
        word_feats = model.text_projection(txt_feats.last_hidden_state)
    # transformers 5.x: get_*_features return BaseModelOutputWithPooling whose pooler_output
    # is the projected (unnormalised) embedding; so is CLIPOutput.vision_model_output's.
    assert isinstance(img_feats, transformers.modeling_outputs.BaseModelOutputWithPooling)
    eot = np.asarray(out["text"]["eot_index"])
    np.testing.assert_array_equal(eot, np.asarray(LENGTHS) - 1)
    diffs = {
        "image_embeds": _diff(out["image_embeds"], ref.image_embeds),
        "text_embeds": _diff(out["text_embeds"], ref.text_embeds),
        "logits_per_image": _diff(out["logits_per_image"], ref.logits_per_image),
        "logits_per_text": _diff(out["logits_per_text"], ref.logits_per_text),
        "image_features": _diff(out["vision"]["embeds"], img_feats.pooler_output),
        "text_features": _diff(out["text"]["embeds"], txt_feats.pooler_output),
        "vision_last_hidden": _diff(out["vision"]["last_hidden_state"],
                                    vision.last_hidden_state),
        "vision_tokens_after_ln_post": _diff(out["vision"]["tokens"], all_tokens_ln),
        "vision_pooled": _diff(out["vision"]["pooled"], vision.pooler_output),
        "text_tokens": _diff(out["text"]["tokens"], txt_feats.last_hidden_state),
        "text_token_embeds": _diff(txt["token_embeds"], word_feats),
    }
    print(f"CLIP parity ({name}) max abs diffs: {diffs}")
    assert max(diffs.values()) < ATOL, diffs
    assert out["logits_per_image"].shape == (2, 3) and out["logits_per_image"].dtype == jnp.float32
    np.testing.assert_allclose(float(out["logit_scale"]), 2.0)


def test_frames_go_through_the_image_tower(ours):
    """X-CLIP: frames [B, T, H, W, C] give per-frame outputs with a T axis."""
    cfg, _, (out, _, clip) = ours
    assert clip["embeds"].shape == (1, 2, cfg.projection_dim)
    assert clip["tokens"].shape == (1, 2, cfg.vision.num_positions, cfg.vision.width)
    for k in ("embeds", "pooled", "tokens", "last_hidden_state"):
        np.testing.assert_allclose(clip[k][0], out["vision"][k], atol=1e-6)


def test_round_trip_is_exact(case):
    name, model = case
    sd = model.state_dict()
    cfg, params = _ours(name, model)
    back = clip_to_hf(params, cfg)
    assert set(back) == set(sd)
    for k, v in sd.items():
        assert back[k].dtype == np.float32 and back[k].shape == tuple(v.shape), k
        assert np.array_equal(back[k], v.numpy()), k
    # Boxed params from init (other layout) export too, and load strictly into transformers.
    fresh = transformers.CLIPModel(clip_to_hf_config(cfg))
    fresh.load_state_dict(clip_to_hf(params, cfg, as_torch=True), strict=True)
    init = nn.unbox(abstract_params(cfg.replace(vision=cfg.vision.replace(scan_layers=True))))
    zeros = jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), init)
    assert set(clip_to_hf(zeros, cfg)) == set(sd)


def test_load_checkpoint(tmp_path):
    model = _hf_model("odd", seed=3)
    model.save_pretrained(tmp_path / "clip")
    cfg, params = load_clip_checkpoint(tmp_path / "clip")
    assert cfg == clip_config_from_hf(model.config)
    back = clip_to_hf(params, cfg)
    assert all(np.array_equal(back[k], v.numpy()) for k, v in model.state_dict().items())


def test_errors_are_one_line():
    model = _hf_model("odd")
    sd = dict(model.state_dict())
    cfg = clip_config_from_hf(model.config)
    checks = []
    with pytest.raises(ValueError, match=r"missing tensor 'text_model\.encoder\.layers\.1\.") as e:
        clip_from_hf({k: v for k, v in sd.items()
                      if k != "text_model.encoder.layers.1.mlp.fc2.bias"}, cfg)
    checks.append(e)
    with pytest.raises(ValueError, match="unexpected tensor 'classifier.weight'") as e:
        clip_from_hf({**sd, "classifier.weight": torch.zeros(2, 3)}, cfg)
    checks.append(e)
    assert "classifier" not in str(clip_from_hf({**sd, "classifier.weight": torch.zeros(2)},
                                                cfg, strict=False).keys())
    # Old checkpoints carry the position_ids buffers: ignored.
    clip_from_hf({**sd, "text_model.embeddings.position_ids": torch.arange(16)[None]}, cfg)
    bad = {**sd, "visual_projection.weight": torch.zeros(24, 50)}
    with pytest.raises(ValueError, match="projection/kernel has shape") as e:
        clip_from_hf(bad, cfg)
    checks.append(e)
    bad = {**sd, "vision_model.encoder.layers.0.self_attn.q_proj.weight": torch.zeros(50, 48)}
    with pytest.raises(ValueError, match="does not fit the config") as e:
        clip_from_hf(bad, cfg)
    checks.append(e)
    params = clip_from_hf(sd, cfg)
    params["text"]["pos_embed"]["embedding"] = np.zeros((8, 60), np.float32)
    with pytest.raises(ValueError, match="text/pos_embed/embedding has shape") as e:
        clip_to_hf(params, cfg)
    checks.append(e)
    with pytest.raises(ValueError, match="hidden_act 'gelu_10'") as e:
        clip_config_from_hf({"text_config": {"hidden_act": "gelu_10"}})
    checks.append(e)
    with pytest.raises(ValueError, match="not divisible by heads") as e:
        CLIPConfig.preset("ViT-B/16").vision.replace(heads=7)
    checks.append(e)
    assert all("\n" not in str(c.value) for c in checks)


@pytest.mark.parametrize("preset", ["ViT-B/16", "ViT-L/14"])
def test_preset_parameter_counts(preset):
    """The presets have exactly the parameters of transformers' CLIPModel at that size."""
    cfg = CLIPConfig.preset(preset)
    ours = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(
        nn.unbox(abstract_params(cfg))))
    with torch.device("meta"):
        ref = transformers.CLIPModel(clip_to_hf_config(cfg))
    assert ours == sum(p.numel() for p in ref.parameters())
    assert ours == {"ViT-B/16": 149_620_737, "ViT-L/14": 427_616_513}[preset]


@pytest.mark.parametrize("case", ["legacy"], indirect=True)  # "odd": 3 / 5 heads on model=2
def test_sharded_params_and_activations_give_the_same_outputs(case, ours):
    """fsdp_tp on a (data 2, fsdp 2, model 2) mesh of fake devices: parameters placed by their
    logical axes, activations constrained; the outputs equal the single-device ones."""
    from plug_jax.partitioning import Partitioner, activate, create_mesh

    name, model = case
    cfg, params, (want, _, _) = ours
    part = Partitioner(create_mesh((2, 2, 1, 2)), "fsdp_tp")
    ids, mask = _texts(name)
    pixels, ids, mask = _nhwc(_images(name)), jnp.asarray(ids.numpy()), jnp.asarray(mask.numpy())
    m = CLIPModel(cfg)
    abstract = part.abstract_init(m.init, jax.random.PRNGKey(0), pixels, ids)["params"]
    shardings = part.param_shardings(abstract)
    sharded = jax.device_put(params, shardings)
    spec = shardings["text"]["stack"]["layers_0"]["attn"]["query"]["kernel"].spec
    assert spec == jax.sharding.PartitionSpec("fsdp", "model", None)
    with activate(part.mesh, part.rules):
        got = jax.jit(m.apply)({"params": sharded}, pixels, ids, mask)
    for k in ("image_embeds", "text_embeds", "logits_per_image"):
        np.testing.assert_allclose(got[k], want[k], atol=1e-5)
    np.testing.assert_allclose(got["vision"]["tokens"], want["vision"]["tokens"], atol=1e-5)
