"""M6: published sizes, the prefix-LM stack, encode-once decoding, the text kind, M6 tasks."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from plug_jax import decoding
from plug_jax.families.m6 import network as N
from plug_jax.families.m6.config import M6Config
from plug_jax.models import EncoderDecoderLM, ImageTextLM

# 32 px images (16 patches) keep the checks fast
TINY = M6Config.from_preset("tiny", vocab_size=64, image_size=32)


def _hand_count(c: M6Config) -> int:
    """Parameters from the README's definition, written out by hand: embeddings (tokens, text
    positions, 3 types, patch kernel + bias, patch positions); per layer two LayerNorms, the
    four attention projections with biases, and the FFN (dense: wi, wo with biases; MoE: the
    router ``d x E`` without bias plus E experts' wi, wo with biases); the final LayerNorm."""
    d, hk = c.hidden_size, c.num_heads * c.kv_dim
    emb = (c.vocab_size + c.max_text_positions + 3) * d + c.patch_size ** 2 * c.num_channels * d \
        + d + c.num_patches * d
    attn = 3 * (d * hk + hk) + hk * d + d
    dense = 2 * d * c.mlp_dim + c.mlp_dim + d
    f = c.moe_mlp_dim
    moe = d * c.num_experts + c.num_experts * (2 * d * f + f + d)
    moe_layers = c.num_layers // c.moe_every_n if c.num_experts else 0
    per_layer = 4 * d + attn
    return emb + c.num_layers * per_layer + (c.num_layers - moe_layers) * dense \
        + moe_layers * moe + 2 * d


@pytest.mark.parametrize("preset, published", [("10B", 10e9), ("100B", 100e9)])
def test_published_sizes_are_within_two_percent(preset, published):
    c = M6Config.from_preset(preset)
    total = N.param_count(c)
    assert total == _hand_count(c)
    assert abs(total / published - 1) < 0.02, f"M6-{preset}: {total:,}"
    active = N.active_param_count(c)
    print(f"M6-{preset}: {total:,} parameters, {active:,} active per token")
    if c.num_experts:  # k of E experts per MoE layer
        f = c.moe_mlp_dim
        expert = 2 * c.hidden_size * f + f + c.hidden_size
        skipped = (c.num_layers // c.moe_every_n) * (c.num_experts - c.moe_top_k) * expert
        assert active == total - skipped
    else:
        assert active == total


def test_base_and_trillion_presets():
    assert N.param_count(M6Config.from_preset("base")) == _hand_count(M6Config.from_preset("base"))
    big = M6Config.from_preset("1T")
    assert big.moe_router == "prototype" and big.num_experts % big.moe_top_k == 0
    assert _hand_count(big) > 1e12  # over a trillion, as the M6-T run


def _image_setup(encoder_text: bool):
    model = ImageTextLM(TINY, family="m6", encoder_text=encoder_text)
    img = jax.random.normal(jax.random.PRNGKey(1), (2, 32, 32, 3))
    src = jnp.array([[5, 6, 7, 1, 0, 0], [8, 9, 1, 0, 0, 0]], jnp.int32)
    batch = {"image": img, "encoder_input_tokens": src,
             "decoder_input_tokens": jnp.zeros((2, 5), jnp.int32)}
    params = jax.jit(model.init_params)(jax.random.PRNGKey(0), batch)
    params = jax.tree_util.tree_map(lambda x: x * 3.0, params)  # outputs depend on the input
    return model, params, {"image": img, "encoder_input_tokens": src}


@pytest.mark.parametrize("encoder_text", [True, False])
def test_cached_decoding_equals_recompute(encoder_text):
    """The prefix is computed once (the cache's first slots) and the target over the cache:
    step logits equal teacher forcing, and greedy / beam outputs equal the recompute path."""
    model, params, feats = _image_setup(encoder_text)
    dec = jnp.array([[0, 11, 12, 13, 14], [0, 21, 22, 23, 24]], jnp.int32)
    full = jax.jit(lambda p: model.module.apply({"params": p}, feats, dec,
                                                method="lm_logits"))(params)
    step, init = model.decode_fns()
    prepared = jax.jit(step.prepare_params)({"model": params, "encoder_features": feats})
    cache = jax.jit(lambda p: init(2, 8, p))(prepared)
    outs = []
    for t in range(dec.shape[1]):
        logits, cache = jax.jit(step)(prepared, cache, dec[:, t:t + 1], jnp.full((2, 1), t),
                                      jnp.ones((2, 1), bool))
        outs.append(logits)
    np.testing.assert_allclose(np.asarray(jnp.concatenate(outs, 1)), np.asarray(full),
                               atol=2e-5, rtol=1e-5)
    p = {"model": params, "encoder_features": feats}
    start, ones = np.zeros((2, 1), np.int32), np.ones((2, 1), np.int32)
    cached, plain = model.decode_fns(cache=True), model.decode_fns(cache=False)
    g_c = decoding.generate(*cached, p, start, ones, 6).tokens
    g_p = decoding.generate(*plain, p, start, ones, 6).tokens
    np.testing.assert_array_equal(np.asarray(g_c), np.asarray(g_p))
    assert not np.array_equal(np.asarray(g_c)[0], np.asarray(g_c)[1])
    b_c = decoding.beam_search(*cached, p, start, ones, 6, num_beams=3, eos_id=1)
    b_p = decoding.beam_search(*plain, p, start, ones, 6, num_beams=3, eos_id=1)
    np.testing.assert_array_equal(np.asarray(b_c.sequences), np.asarray(b_p.sequences))


def test_prefix_lm_mask():
    """Targets are causal (a later target token leaves earlier logits alone); the prefix is
    read (another image or source changes the logits), source padding is not (more padding
    leaves them unchanged), and encoder_text=False ignores the source."""
    model, params, feats = _image_setup(True)
    m = model.module
    dec = jnp.array([[0, 11, 12, 13], [0, 21, 22, 23]], jnp.int32)

    def logits(f, d, mod=m):
        return np.asarray(mod.apply({"params": params}, f, d, method="lm_logits"))

    base = logits(feats, dec)
    later = logits(feats, dec.at[:, 3].set(40))
    np.testing.assert_allclose(later[:, :3], base[:, :3], atol=1e-6)
    assert np.abs(later[:, 3] - base[:, 3]).max() > 1e-3
    padded = {**feats, "encoder_input_tokens": jnp.pad(feats["encoder_input_tokens"],
                                                       ((0, 0), (0, 3)))}
    np.testing.assert_allclose(logits(padded, dec), base, atol=1e-5)
    other_src = {**feats, "encoder_input_tokens": feats["encoder_input_tokens"].at[:, 0].set(30)}
    assert np.abs(logits(other_src, dec) - base).max() > 1e-3
    other_img = {**feats, "image": -feats["image"]}
    assert np.abs(logits(other_img, dec) - base).max() > 1e-3
    cap = ImageTextLM(TINY, family="m6", encoder_text=False).module
    np.testing.assert_allclose(logits(feats, dec, cap),
                               logits({"image": feats["image"]}, dec, cap), atol=1e-6)
    with pytest.raises(ValueError, match="image' or 'encoder_input_tokens"):
        m.apply({"params": params}, {}, dec, method="lm_logits")
    with pytest.raises(ValueError, match="IMAGE_SIZE"):
        m.apply({"params": params}, {"image": jnp.zeros((2, 64, 64, 3))}, dec,
                method="lm_logits")


def _text_model():
    return EncoderDecoderLM(TINY, family="m6")


def test_text_kind_shares_the_parameter_tree_and_packs_exactly():
    """``encdec_lm`` (text denoising) builds the same tree as ``image_to_text``; a packed row
    of two examples gives each example's logits as if it were alone."""
    img_model, params, _ = _image_setup(True)
    text = _text_model()
    enc = jnp.array([[5, 6, 7, 1, 0, 0]], jnp.int32)
    dec = jnp.array([[0, 11, 12, 0, 0, 0]], jnp.int32)
    t_params = text.init_params(jax.random.PRNGKey(0), {"encoder_input_tokens": enc,
                                                        "decoder_input_tokens": dec})

    def shapes(tree):
        return jax.tree_util.tree_map(lambda x: tuple(x.shape), nn.unbox(tree))
    assert shapes(t_params) == shapes(params)
    m = text.module
    a_enc, a_dec = jnp.array([[5, 6, 7, 1]]), jnp.array([[0, 11, 12]])
    b_enc, b_dec = jnp.array([[8, 9, 1]]), jnp.array([[0, 21, 22, 23]])
    alone_a = m.apply({"params": params}, a_enc, a_dec)["logits"]
    alone_b = m.apply({"params": params}, b_enc, b_dec)["logits"]
    packed = m.apply({"params": params}, jnp.concatenate([a_enc, b_enc, jnp.zeros((1, 1),
                                                                                  jnp.int32)], 1),
                     jnp.concatenate([a_dec, b_dec], 1),
                     encoder_segment_ids=jnp.array([[1, 1, 1, 1, 2, 2, 2, 0]]),
                     decoder_segment_ids=jnp.array([[1, 1, 1, 2, 2, 2, 2]]),
                     encoder_positions=jnp.array([[0, 1, 2, 3, 0, 1, 2, 0]]),
                     decoder_positions=jnp.array([[0, 1, 2, 0, 1, 2, 3]]))["logits"]
    np.testing.assert_allclose(packed[:, :3], alone_a, atol=2e-5)
    np.testing.assert_allclose(packed[:, 3:], alone_b, atol=2e-5)
    # text-only decoding: the source is the prefix
    p = {"model": params, "encoder_ids": jnp.concatenate([a_enc, jnp.array([[9, 1, 0, 0]])])}
    start, ones = np.zeros((2, 1), np.int32), np.ones((2, 1), np.int32)
    g_c = decoding.generate(*text.decode_fns(cache=True), p, start, ones, 5).tokens
    g_p = decoding.generate(*text.decode_fns(cache=False), p, start, ones, 5).tokens
    np.testing.assert_array_equal(np.asarray(g_c), np.asarray(g_p))


def test_moe_preset_routes_through_prototypes():
    c = dataclasses.replace(M6Config.from_preset("tiny-moe"), vocab_size=64, image_size=32)
    model = ImageTextLM(c, family="m6", encoder_text=False)
    batch = {"image": jnp.ones((2, 32, 32, 3)), "decoder_input_tokens": jnp.zeros((2, 4),
                                                                                  jnp.int32)}
    params = model.init_params(jax.random.PRNGKey(0), batch)
    moe = nn.unbox(params)["trunk"]["blocks"]["layers"]["block_1"]["moe"]
    assert moe["wi"]["kernel"].shape[1:3] == (4, 64)  # [layers, experts, d, f]
    assert c.moe_top_k == 2 and c.moe_router == "prototype"
    # the router's auxiliary losses reach the train step (weighted by the token count)
    batch = {**batch, "decoder_target_tokens": jnp.array([[5, 6, 1, 0], [7, 1, 0, 0]])}
    sums = model.loss_sums(params, batch, deterministic=True)
    assert float(sums["weight"]) == 5.0
    lb = float(sums["aux_loss/load_balance_loss"]) / 5.0
    assert lb > 0.0 and sums["moe/tokens_per_expert"].shape == (1, 4)


@pytest.mark.parametrize("preset", ["tiny", "base", "10B", "100B", "1T"])
def test_model_gin_equals_preset(preset):
    import os

    import gin

    from plug_jax import gin_utils
    root = os.path.join(os.path.dirname(__file__), "..", "..", "..", "gin_configs")
    gin_utils.parse_gin([f"models/m6/{preset}.gin"], [], [root])
    model = gin.query_parameter("%MODEL").scoped_configurable_fn()
    assert model.config == M6Config.from_preset(preset)
    assert model.family == "m6"
