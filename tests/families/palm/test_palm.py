"""PALM: published sizes without allocation, the copy (pointer-generator) head, masks, scan
layout, decoding through the encoder-decoder adapter, GNMT beam scores, training."""
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from plug_jax import decoding, models
from plug_jax.families.palm import PUBLISHED_PARAMS, PalmConfig, PalmModel, param_count

TINY = PalmConfig.from_preset("tiny")
# One encoder and one decoder layer: the tests that compile whole decode loops or train steps.
SMALL = TINY.replace(num_encoder_layers=1, num_decoder_layers=1)


@functools.lru_cache(maxsize=None)
def _init(cfg, enc_len=10, dec_len=6, seed=0):
    e = jnp.ones((2, enc_len), jnp.int32)
    d = jnp.ones((2, dec_len), jnp.int32)
    init = jax.jit(lambda r: PalmModel(cfg).init(r, e, d)["params"])
    return nn.unbox(init(jax.random.PRNGKey(seed)))


def _ids(shape, seed, lo=1, hi=1000):
    return jnp.asarray(np.random.RandomState(seed).randint(lo, hi, shape), jnp.int32)


@functools.lru_cache(maxsize=None)
def _forward(cfg):
    """One jitted forward per config (compiled once per shape, shared by the tests)."""
    return jax.jit(lambda p, e, d, s: PalmModel(cfg).apply({"params": p}, e, d,
                                                           encoder_segment_ids=s))


def _apply(cfg, params, enc, dec, seg=None):
    enc, dec = jnp.asarray(enc, jnp.int32), jnp.asarray(dec, jnp.int32)
    seg = (enc > 0).astype(jnp.int32) if seg is None else jnp.asarray(seg, jnp.int32)
    return _forward(cfg)(params, enc, dec, seg)


def test_published_sizes_without_allocation():
    """palm.en.base 257M and palm.en.large 483M (AliceMind PALM/README.md): the abstract
    count is within 0.5% and equals a hand count."""
    for name in ("base", "large"):
        n = param_count(PalmConfig.from_preset(name))  # jax.eval_shape: shapes only
        assert abs(n - PUBLISHED_PARAMS[name]) / PUBLISHED_PARAMS[name] < 0.005, (name, n)
    cfg = PalmConfig.from_preset("base")
    assert (cfg.num_encoder_layers, cfg.num_decoder_layers, cfg.hidden_size, cfg.num_heads,
            cfg.num_decoder_heads, cfg.decoder_ffn_size, cfg.vocab_size) == (
        12, 12, 768, 12, 8, 2048, 50265)
    h, f, fd, v = 768, 3072, 2048, 50265
    enc = (v + 514 + 1) * h + 2 * h + 12 * (4 * h * h + 4 * h + 2 * h * f + f + h + 4 * h)
    pooler = h * h + h
    dec = 12 * (2 * (4 * h * h + 4 * h) + 2 * h * fd + fd + h + 6 * h) + v * h + 2 * h
    head = v + 3 * h + 1  # output bias + copy gate over [context; state; input]
    assert param_count(cfg) == enc + pooler + dec + head
    assert param_count(cfg.replace(copy=False)) == enc + pooler + dec + v


def test_copy_distribution_is_normalised_and_skips_encoder_padding():
    params = _init(TINY)
    enc = _ids((2, 10), 1)
    seg = jnp.asarray([[1] * 7 + [0] * 3, [1] * 10], jnp.int32)
    enc = enc.at[0, 7:].set(1111)  # a token id found only at padding positions
    dec = _ids((2, 6), 2)
    low = jax.tree_util.tree_map(lambda x: x, params)
    low["copy_gate"] = dict(params["copy_gate"], bias=jnp.full((1,), -30.0))  # p_gen ~ 0
    for p in (params, low):
        out = _apply(TINY, p, enc, dec, seg)
        logp = out["logits"]
        assert logp.dtype == jnp.float32 and logp.shape == (2, 6, TINY.vocab_size)
        np.testing.assert_allclose(jnp.exp(logp).sum(-1), 1.0, atol=1e-5)
        np.testing.assert_allclose(jax.nn.log_softmax(logp), logp, atol=1e-5)
        assert np.all(np.asarray(out["copy_attention"])[0, :, 7:] == 0.0)
        np.testing.assert_allclose(out["copy_attention"].sum(-1), 1.0, atol=1e-5)
        # Changing what sits at the padding positions changes nothing.
        other = _apply(TINY, p, enc.at[0, 7:].set(5), dec, seg)["logits"]
        np.testing.assert_allclose(other, logp, atol=1e-6)
    out = _apply(TINY, low, enc, dec, seg)
    assert float(jnp.max(out["p_gen"])) < 1e-10
    assert float(jnp.max(jnp.exp(out["logits"][0, :, 1111]))) < 1e-6  # no copy mass


def test_copy_raises_probability_of_a_source_only_token():
    params = _init(TINY)
    enc = _ids((2, 10), 3, hi=500).at[:, 4].set(900)  # 900 appears only in the encoder input
    dec = _ids((2, 6), 4, hi=500)
    plain = {k: v for k, v in params.items() if k != "copy_gate"}
    base = jax.nn.softmax(_apply(TINY.replace(copy=False), plain, enc, dec)["logits"])[..., 900]
    low = dict(params, copy_gate=dict(params["copy_gate"], bias=jnp.full((1,), -30.0)))
    out = _apply(TINY, low, enc, dec)
    p900 = jnp.exp(out["logits"][..., 900])
    assert float(jnp.min(p900 - base)) > 0.01
    # With p_gen ~ 0 it is the copy attention on the positions holding 900.
    np.testing.assert_allclose(p900, out["copy_attention"][..., 4], rtol=1e-4, atol=1e-7)
    # Default gate: the mixture lies between the generator's and the copy probability.
    mid = jnp.exp(_apply(TINY, params, enc, dec)["logits"][..., 900])
    assert bool(jnp.all((mid > base) & (mid < p900)))


def test_decoder_is_causal():
    params = _init(TINY)
    enc, dec = _ids((2, 10), 5), _ids((2, 6), 6)
    base = _apply(TINY, params, enc, dec)["logits"]
    later = _apply(TINY, params, enc, dec.at[:, 4].set(7))["logits"]
    np.testing.assert_allclose(later[:, :4], base[:, :4], atol=1e-6)
    assert not np.allclose(later[:, 4:], base[:, 4:])


def test_scanned_and_unrolled_layouts_agree():
    from plug_jax.layers.scan import unstack_layers
    cfg = TINY.replace(num_decoder_layers=3)
    params = _init(cfg)
    flat = dict(params, decoder=unstack_layers(params["decoder"], 2))
    flat["encoder"] = dict(params["encoder"], stack=unstack_layers(params["encoder"]["stack"],
                                                                    2))
    enc, dec = _ids((2, 10), 7), _ids((2, 6), 8)
    a = _apply(cfg, params, enc, dec)["logits"]
    b = _apply(cfg.replace(scan_layers=False), flat, enc, dec)["logits"]
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_greedy_decoding_equals_full_recompute_and_gnmt_beam_scores():
    """encdec_adapter decodes from the copy mixture (its log-probs) unchanged: greedy =
    argmax of a plain forward pass step by step; a GNMT beam score is the recomputed
    sum of log-probs / ((5 + length) / 6) ** alpha."""
    model = models.EncoderDecoderLM(SMALL, family="palm")
    params = _init(SMALL)
    enc = np.asarray([[5, 6, 7, 8, 9, 0, 0], [11, 12, 13, 14, 15, 16, 17]], np.int32)
    step_fn, init_cache = model.decode_fns()
    start, mask = np.zeros((2, 1), np.int32), np.ones((2, 1), np.int32)
    inputs = {"model": params, "encoder_ids": enc}
    out = decoding.generate(step_fn, init_cache, inputs, start, mask, 5)
    tokens = np.asarray(out.tokens)
    # Full recompute over a fixed-size buffer (causal: later slots do not matter).
    seq = np.zeros((2, 6), np.int32)
    for t in range(5):
        logits = _apply(SMALL, params, enc, seq)["logits"]
        nxt = np.asarray(jnp.argmax(logits[:, t], axis=-1))
        np.testing.assert_array_equal(nxt, tokens[:, t])
        seq[:, t + 1] = nxt
    alpha = 0.95
    beams = decoding.beam_search(step_fn, init_cache, inputs, start, mask, 4, num_beams=3,
                                 length_penalty=alpha, length_penalty_form="gnmt")
    seqs = np.concatenate([np.zeros((2, 1), np.int32), np.asarray(beams.sequences)], 1)
    logp = _apply(SMALL, params, enc, np.pad(seqs[:, :-1], ((0, 0), (0, 1))))["logits"]
    total = np.asarray(jnp.take_along_axis(logp[:, :4], seqs[:, 1:, None], -1)).sum((1, 2))
    want = total / ((5 + 4) / 6) ** alpha
    np.testing.assert_allclose(np.asarray(beams.scores), want, rtol=1e-4)
    with pytest.raises(ValueError, match="length_penalty_form"):
        decoding.beam_search(step_fn, init_cache, inputs, start, mask, 4,
                             length_penalty_form="wu")


def test_training_steps_reduce_the_loss():
    """EncoderDecoderLM's cross-entropy on the copy log-probs trains: the loss falls on a
    fixed random batch and every gradient is finite."""
    import optax
    model = models.EncoderDecoderLM(SMALL, family="palm")
    rng = np.random.RandomState(0)
    enc = rng.randint(1, 300, (4, 12)).astype(np.int32)
    enc[:, 9:] = 0
    tgt = np.concatenate([enc[:, 2:8], rng.randint(1, 300, (4, 2))], axis=1).astype(np.int32)
    batch = {"encoder_input_tokens": enc, "decoder_target_tokens": tgt,
             "decoder_input_tokens": np.concatenate([np.zeros((4, 1), np.int32), tgt[:, :-1]],
                                                    1),
             "decoder_loss_weights": np.ones(tgt.shape, np.float32)}
    params = nn.unbox(jax.jit(lambda r: model.init_params(r, batch))(jax.random.PRNGKey(0)))
    opt = optax.adam(3e-3)
    state = opt.init(params)

    def loss(p):
        s = model.loss_sums(p, batch, deterministic=True)
        return s["loss"] / s["weight"]

    @jax.jit
    def step(p, st):
        val, g = jax.value_and_grad(loss)(p)
        upd, st = opt.update(g, st, p)
        return optax.apply_updates(p, upd), st, val, g

    losses = []
    for i in range(10):
        params, state, val, g = step(params, state)
        if i == 0:
            assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree_util.tree_leaves(g))
        losses.append(float(val))
    assert losses[-1] < losses[0] - 0.5, losses
    flops = model.flops_per_step(4, {"inputs": 12, "targets": 8})
    plain = models.EncoderDecoderLM(SMALL.replace(copy=False), family="palm")
    assert flops > plain.flops_per_step(4, {"inputs": 12, "targets": 8}) > 0


@pytest.mark.parametrize("preset", ["tiny", "base", "large"])
def test_model_gin_equals_preset(preset):
    import gin

    from plug_jax import gin_utils
    root = os.path.join(os.path.dirname(__file__), "..", "..", "..", "gin_configs")
    gin_utils.parse_gin([f"models/palm/{preset}.gin"], [], [root])
    model = gin.query_parameter("%MODEL").scoped_configurable_fn()
    assert model.family == "palm"
    want = PalmConfig.from_preset(preset)
    if preset != "tiny":  # the gin files default to the released dropout rates
        want = want.replace(dropout_rate=0.1, attention_dropout_rate=0.1,
                            decoder_dropout_rate=0.2)
    assert model.config == want
