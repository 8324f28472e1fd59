"""mPLUG encode-once decoding: the image (and question) encoded once, the BERT decoder over a
KV cache, against recomputing everything without a cache."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from plug_jax import decoding
from plug_jax.families.mplug.config import MPlugConfig
from plug_jax.families.mplug.network import MPlug
from plug_jax.models import ImageTextLM


# 32 px images (16 patches + CLS) keep the decoding checks fast
TINY = MPlugConfig.from_preset("tiny")
TINY = TINY.replace(vision=TINY.vision.replace(image_size=32))


def _setup(encoder_text: bool):
    model = ImageTextLM(TINY, encoder_text=encoder_text)
    img = jax.random.normal(jax.random.PRNGKey(1), (2, 32, 32, 3))
    q = jnp.array([[5, 6, 7, 1, 0, 0], [8, 9, 1, 0, 0, 0]], jnp.int32)
    batch = {"image": img, "encoder_input_tokens": q,
             "decoder_input_tokens": jnp.zeros((2, 5), jnp.int32)}
    params = jax.jit(model.init_params)(jax.random.PRNGKey(0), batch)
    # larger weights so the tiny random model's argmax depends on the image and question
    params = jax.tree_util.tree_map(lambda x: x * 3.0, params)
    return model, params, {"image": img, "encoder_input_tokens": q}


def _lm_logits(module, params, features, decoder_ids):
    """``MPlug.lm_logits`` of one row, jitted (one compilation per module and shapes)."""
    fn = _LM_CACHE.get(module)
    if fn is None:
        fn = _LM_CACHE[module] = jax.jit(
            lambda p, f, d: module.apply({"params": p}, f, d, method="lm_logits"))
    return fn(params, features, decoder_ids)


_LM_CACHE: dict = {}


@pytest.mark.parametrize("encoder_text", [True, False])
def test_cached_step_logits_equal_teacher_forced(encoder_text):
    model, params, feats = _setup(encoder_text)
    dec = jnp.array([[0, 11, 12, 13, 14], [0, 21, 22, 23, 24]], jnp.int32)
    full = jax.jit(lambda p: model.module.apply({"params": p}, feats, dec,
                                                method="lm_logits"))(params)
    step, init = model.decode_fns()
    prepared = jax.jit(step.prepare_params)({"model": params, "encoder_features": feats})
    cache = jax.jit(lambda p: init(2, 8, p))(prepared)
    step = jax.jit(step)
    outs = []
    for t in range(dec.shape[1]):
        logits, cache = step(prepared, cache, dec[:, t:t + 1], jnp.full((2, 1), t),
                             jnp.ones((2, 1), bool))
        outs.append(logits)
    np.testing.assert_allclose(np.asarray(jnp.concatenate(outs, 1)), np.asarray(full),
                               atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("encoder_text", [True, False])
def test_cached_generation_equals_recompute(encoder_text):
    model, params, feats = _setup(encoder_text)
    p = {"model": params, "encoder_features": feats}
    start = np.zeros((2, 1), np.int32)
    ones = np.ones((2, 1), np.int32)
    cached, plain = model.decode_fns(cache=True), model.decode_fns(cache=False)
    assert isinstance(plain.step_fn, decoding.EncDecFeaturesStep)
    g_c = decoding.generate(*cached, p, start, ones, 6).tokens
    g_p = decoding.generate(*plain, p, start, ones, 6).tokens
    np.testing.assert_array_equal(np.asarray(g_c), np.asarray(g_p))
    # the two images give different outputs: the decoder reads the encoded image
    assert not np.array_equal(np.asarray(g_c)[0], np.asarray(g_c)[1])
    if not encoder_text:
        return
    b_c = decoding.beam_search(*cached, p, start, ones, 6, num_beams=3, eos_id=1)
    b_p = decoding.beam_search(*plain, p, start, ones, 6, num_beams=3, eos_id=1)
    np.testing.assert_array_equal(np.asarray(b_c.sequences), np.asarray(b_p.sequences))
    np.testing.assert_allclose(np.asarray(b_c.scores), np.asarray(b_p.scores), atol=1e-4)


def test_encoder_text_switch_changes_the_memory():
    model, params, feats = _setup(True)
    m = model.module
    enc = jax.jit(lambda p: m.apply({"params": p}, feats, method="encode"))(params)
    assert enc["hidden_states"].shape == (2, 17 + 6, 64)
    np.testing.assert_array_equal(np.asarray(enc["mask"][:, 17:]),
                                  np.asarray(feats["encoder_input_tokens"] > 0))
    cap = ImageTextLM(model.config, encoder_text=False).module
    enc2 = jax.eval_shape(lambda p: cap.apply({"params": p}, feats, method="encode"), params)
    assert enc2["hidden_states"].shape == (2, 17, 64)
    with pytest.raises(ValueError, match="encoder_input_tokens"):
        m.apply({"params": params}, {"image": feats["image"]}, method="encode")


def test_bert_decode_refuses_a_scanned_stack_and_a_missing_cache():
    from plug_jax.families.structbert.network import BertEncoder
    cfg = TINY.bert(2)
    enc = jnp.zeros((1, 3, 64))
    ids = jnp.zeros((1, 1), jnp.int32)
    dec = BertEncoder(cfg, cross_attention=True, causal=True, decode=True, cache_length=4)
    with pytest.raises(ValueError, match="scan_layers=False"):
        dec.init(jax.random.PRNGKey(0), ids, None, None, ids, None, enc)
    plain = BertEncoder(cfg.replace(scan_layers=False), cross_attention=True, causal=True)
    params = plain.init(jax.random.PRNGKey(0), ids, None, None, None, None, enc)["params"]
    dec = dec.clone(config=cfg.replace(scan_layers=False))
    with pytest.raises(ValueError, match="create the cache first"):
        dec.apply({"params": params}, ids, None, None, ids, mutable=["cache"])


def test_text_scores_are_mean_token_log_probs_of_each_pair():
    model, params, feats = _setup(False)
    texts = jnp.array([[11, 12, 1, 0], [21, 1, 0, 0], [31, 32, 33, 1]], jnp.int32)
    got = np.asarray(jax.jit(model.text_scores)(params, feats["image"], texts))
    assert got.shape == (2, 3)
    m = model.module
    for i in range(2):
        for j in range(3):
            tgt = np.asarray(texts[j])
            n = int((tgt > 0).sum())
            dec = np.concatenate([[0], tgt[:-1]])[None]
            logits = _lm_logits(m, params, {"image": feats["image"][i:i + 1]}, dec)[0]
            logp = np.asarray(jax.nn.log_softmax(logits.astype(jnp.float32)))
            want = np.mean([logp[t, tgt[t]] for t in range(n)])
            np.testing.assert_allclose(got[i, j], want, rtol=1e-5, atol=1e-5)


def test_answer_scores_sum_the_log_probs_of_each_answer_given_image_and_question():
    model, params, feats = _setup(True)
    answers = jnp.array([[11, 12, 1], [21, 1, 0], [31, 1, 0]], jnp.int32)
    score = jax.jit(model.answer_scores)
    got = np.asarray(score(params, feats, answers))
    assert got.shape == (2, 3)
    m = model.module
    for i in range(2):
        row = {k: v[i:i + 1] for k, v in feats.items()}
        for j in range(3):
            tgt = np.asarray(answers[j])
            n = int((tgt > 0).sum())
            dec = np.concatenate([[0], tgt[:-1]])[None]
            logits = _lm_logits(m, params, row, dec)[0]
            logp = np.asarray(jax.nn.log_softmax(logits.astype(jnp.float32)))
            want = np.sum([logp[t, tgt[t]] for t in range(n)])
            np.testing.assert_allclose(got[i, j], want, rtol=1e-5, atol=1e-4)
    # the question matters: another question gives other scores
    other = {**feats, "encoder_input_tokens": feats["encoder_input_tokens"][::-1]}
    assert not np.allclose(np.asarray(score(params, other, answers))[0], got[0])
