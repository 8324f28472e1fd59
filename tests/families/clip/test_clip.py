"""CLIP family: published sizes, the FLOP formula against XLA's count, the dual-encoder
network against the CLIP model it extends."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from plug_jax.families.clip.config import ClipConfig
from plug_jax.families.clip.flops import training_flops
from plug_jax.families.clip.network import CLIPDualEncoder, abstract_params
from plug_jax.layers.clip import CLIPModel
from plug_jax.models.base import count_params

# Parameter counts of the released OpenAI CLIP checkpoints (transformers CLIPModel).
PUBLISHED = {"ViT-B/32": 151_277_313, "ViT-B/16": 149_620_737, "ViT-L/14": 427_616_513,
             "ViT-L/14-336": 427_944_193}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_sizes_without_allocation(name):
    assert count_params(abstract_params(ClipConfig.from_preset(name))) == PUBLISHED[name]


def test_presets_and_overrides():
    c = ClipConfig.from_preset("tiny", vision_image_size=32, scan_layers=False)
    assert c.clip.vision.image_size == 32 and c.clip.text.max_len == 64
    assert not c.clip.vision.scan_layers and not c.clip.text.scan_layers
    assert c.preset == "tiny" and c.vocab_size == 1024
    with pytest.raises(ValueError, match="unknown CLIP preset 'ViT-H'"):
        ClipConfig.from_preset("ViT-H")
    with pytest.raises(ValueError, match="from_preset"):
        ClipConfig.from_preset("tiny", vision_no_such_field=1)


def _xla_forward_flops(cfg, batch):
    net = CLIPDualEncoder(cfg.clip)
    params = jax.eval_shape(lambda: net.init(jax.random.PRNGKey(0), batch))

    def fwd(p, b):
        return net.apply(p, b)
    compiled = jax.jit(fwd).lower(params, batch).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost["flops"])


@pytest.mark.parametrize("media", ["image", "frames"])
def test_flop_formula_matches_xla_count(media):
    """The formula (3x forward) against XLA's FLOP count of one forward pass: pixels and
    frames included, within 10% (XLA also counts norms, softmax and GELU)."""
    # unrolled layers: XLA counts the body of a scanned loop once
    cfg = ClipConfig.from_preset("tiny", text_vocab_size=128, text_max_len=16, scan_layers=False)
    b = 4
    ids = jnp.ones((b, 16), jnp.int32)
    if media == "image":
        batch = {"image": jnp.zeros((b, 64, 64, 3)), "decoder_target_tokens": ids}
        lengths = {"image": (64, 64, 3), "targets": 16}
    else:
        batch = {"frames": jnp.zeros((b, 3, 64, 64, 3)), "decoder_target_tokens": ids}
        lengths = {"frames": (3, 64, 64, 3), "targets": 16}
    want = training_flops(cfg, b, lengths) / 3
    got = _xla_forward_flops(cfg, batch)
    assert abs(got - want) / want < 0.10, (got, want)
    if media == "frames":  # a one-frame video costs what its image costs
        img = training_flops(cfg, b, {"image": (64, 64, 3), "targets": 16})
        assert training_flops(cfg, b, {"frames": (1, 64, 64, 3), "targets": 16}) == img


def test_dual_encoder_similarity_is_clip_logits():
    """The family network is CLIPModel with methods added: same params, same logits."""
    cfg = ClipConfig.from_preset("tiny", text_vocab_size=64, text_max_len=8)
    rs = np.random.RandomState(0)
    ids = rs.randint(2, 64, size=(3, 8)).astype(np.int32)
    ids[:, 5] = 1
    ids[:, 6:] = 0
    images = rs.randn(3, 64, 64, 3).astype(np.float32)
    net = CLIPDualEncoder(cfg.clip)
    params = jax.jit(net.init)(jax.random.PRNGKey(0),
                               {"image": images, "decoder_target_tokens": ids})
    got = jax.jit(net.apply)(params, {"image": images, "decoder_target_tokens": ids})
    want = jax.jit(lambda p: CLIPModel(cfg.clip).apply(p, images, ids, ids != 0))(params)[
        "logits_per_image"]
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)
    # a video of identical frames embeds as that image
    video = {"frames": np.repeat(images[:, None], 4, axis=1), "decoder_target_tokens": ids}
    got_v = jax.jit(net.apply)(params, video)
    np.testing.assert_allclose(np.asarray(got_v), np.asarray(want), rtol=1e-4, atol=1e-4)
