"""Attention: masks, grouped KV heads, packing, prefix LM, cross-attention, KV cache."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from plug_jax.layers.attention import (MultiHeadAttention, causal_mask, combine_masks,
                                       dot_product_attention, padding_mask, prefix_mask,
                                       segment_mask)

RNG = jax.random.PRNGKey(1)


def _reference_attention(q, k, v, mask):
    """Plain numpy attention, repeating KV heads to the query head count."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    groups = q.shape[2] // k.shape[2]
    k = np.repeat(k, groups, axis=2)
    v = np.repeat(v, groups, axis=2)
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
    if mask is not None:
        logits = np.where(np.asarray(mask), logits, -1e10)
    w = np.exp(logits - logits.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    return np.einsum("bhqk,bkhd->bqhd", w, v)


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (6, 2), (4, 1)])
def test_dot_product_attention_matches_reference_with_grouped_kv(heads, kv_heads):
    ks = jax.random.split(RNG, 3)
    q = jax.random.normal(ks[0], (2, 5, heads, 8))
    k = jax.random.normal(ks[1], (2, 7, kv_heads, 8))
    v = jax.random.normal(ks[2], (2, 7, kv_heads, 8))
    mask = causal_mask(2, 5, 7, offset=2)
    out = dot_product_attention(q, k, v, mask)
    np.testing.assert_allclose(out, _reference_attention(q, k, v, mask), rtol=1e-5, atol=1e-5)


def test_mask_helpers():
    c = causal_mask(1, 3)[0, 0]
    np.testing.assert_array_equal(c, np.tril(np.ones((3, 3), bool)))
    seg = jnp.array([[1, 1, 2, 2, 0]])
    s = segment_mask(seg)[0, 0]
    assert s[1, 0] and not s[2, 1] and s[3, 2] and not s[4, 4] and not s[0, 4]
    p = prefix_mask(jnp.array([[1, 1, 0, 0]]))[0, 0]
    assert p[0, 1] and p[1, 0] and not p[0, 2] and p[3, 0] and not p[2, 3]
    pad = padding_mask(jnp.array([[1, 1, 0]]))[0, 0]
    np.testing.assert_array_equal(pad, [[1, 1, 0]] * 3)
    assert combine_masks(None, None) is None
    np.testing.assert_array_equal(combine_masks(causal_mask(1, 3), padding_mask(jnp.array([[1, 0, 1]])))[0, 0],
                                  [[1, 0, 0], [1, 0, 0], [1, 0, 1]])


def _mha(heads=4, kv_heads=None):
    return MultiHeadAttention(num_heads=heads, head_dim=8, num_kv_heads=kv_heads)


def test_causal_attention_ignores_future_tokens():
    x = jax.random.normal(RNG, (1, 6, 16))
    mha = _mha()
    v = mha.init(RNG, x)
    y = mha.apply(v, x, mask=causal_mask(1, 6))
    x2 = x.at[:, 4:].set(jax.random.normal(jax.random.PRNGKey(9), (1, 2, 16)))
    y2 = mha.apply(v, x2, mask=causal_mask(1, 6))
    np.testing.assert_allclose(y[:, :4], y2[:, :4], rtol=1e-6, atol=1e-6)
    assert not np.allclose(y[:, 4:], y2[:, 4:])


def test_packed_segments_equal_separate_sequences():
    ks = jax.random.split(RNG, 2)
    a = jax.random.normal(ks[0], (1, 3, 16))
    b = jax.random.normal(ks[1], (1, 4, 16))
    packed = jnp.concatenate([a, b, jnp.zeros((1, 1, 16))], axis=1)
    seg = jnp.array([[1, 1, 1, 2, 2, 2, 2, 0]])
    mha = _mha(4, 2)
    v = mha.init(RNG, packed)
    y = mha.apply(v, packed, mask=combine_masks(causal_mask(1, 8), segment_mask(seg)))
    ya = mha.apply(v, a, mask=causal_mask(1, 3))
    yb = mha.apply(v, b, mask=causal_mask(1, 4))
    np.testing.assert_allclose(y[:, :3], ya, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(y[:, 3:7], yb, rtol=1e-5, atol=1e-5)
    assert np.all(np.isfinite(y))


def test_prefix_lm_prefix_tokens_see_each_other():
    x = jax.random.normal(RNG, (1, 5, 16))
    mha = _mha()
    v = mha.init(RNG, x)
    mask = prefix_mask(jnp.array([[1, 1, 1, 0, 0]]))
    y = mha.apply(v, x, mask=mask)
    x2 = x.at[:, 2].add(1.0)  # change the last prefix token
    y2 = mha.apply(v, x2, mask=mask)
    assert not np.allclose(y[:, 0], y2[:, 0])  # earlier prefix token sees it
    x3 = x.at[:, 4].add(1.0)  # change a target token
    y3 = mha.apply(v, x3, mask=mask)
    np.testing.assert_allclose(y[:, :4], y3[:, :4], rtol=1e-6, atol=1e-6)


def test_cross_attention_shapes_and_padding():
    ks = jax.random.split(RNG, 2)
    q = jax.random.normal(ks[0], (2, 3, 16))
    kv = jax.random.normal(ks[1], (2, 5, 12))
    mha = _mha(4, 2)
    v = mha.init(RNG, q, kv)
    p = nn.unbox(v)["params"]
    assert p["key"]["kernel"].shape == (12, 2, 8) and p["query"]["kernel"].shape == (16, 4, 8)
    valid = jnp.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    mask = padding_mask(jnp.ones((2, 3)), valid)
    y = mha.apply(v, q, kv, mask=mask)
    assert y.shape == (2, 3, 16)
    kv2 = kv.at[0, 3:].set(7.0)  # padded keys of row 0 must not matter
    np.testing.assert_allclose(mha.apply(v, q, kv2, mask=mask)[0], y[0], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("b", [1, 2])  # both cache layouts (attention.cache_heads_first)
@pytest.mark.parametrize("kv_heads", [None, 2])
def test_kv_cache_matches_full_attention(kv_heads, b):
    length, max_len = 7, 10
    x = jax.random.normal(RNG, (b, length, 16))
    mha = _mha(4, kv_heads)
    params = mha.init(RNG, x)["params"]
    full = mha.apply({"params": params}, x, mask=causal_mask(b, length))
    cache = mha.init(RNG, jnp.zeros((b, max_len, 16)), decode=True)["cache"]
    assert cache["cached_key"].shape[0] == b and cache["cache_index"].shape == (b,)
    out, mut = mha.apply({"params": params, "cache": cache}, x[:, :4], decode=True,
                         mutable=["cache"])
    outs = [out]
    cache = mut["cache"]
    for t in range(4, length):
        out, mut = mha.apply({"params": params, "cache": cache}, x[:, t:t + 1], decode=True,
                             mutable=["cache"])
        cache = mut["cache"]
        outs.append(out)
    np.testing.assert_allclose(jnp.concatenate(outs, 1), full, rtol=1e-5, atol=1e-5)
    assert int(cache["cache_index"][0]) == length


def test_kv_cache_skips_invalid_slots():
    x = jax.random.normal(RNG, (1, 4, 16))
    mha = _mha()
    params = mha.init(RNG, x)["params"]
    cache = mha.init(RNG, jnp.zeros((1, 6, 16)), decode=True)["cache"]
    # Left-padded prompt: the first slot is padding and must be ignored.
    out, _ = mha.apply({"params": params, "cache": cache}, x, decode=True,
                       token_mask=jnp.array([[0, 1, 1, 1]]), mutable=["cache"])
    ref = mha.apply({"params": params}, x[:, 1:], mask=causal_mask(1, 3))
    np.testing.assert_allclose(out[:, 1:], ref, rtol=1e-5, atol=1e-5)


def test_decode_rejects_cross_attention():
    mha = _mha()
    with pytest.raises(ValueError, match="self-attention"):
        mha.init(RNG, jnp.ones((1, 2, 16)), jnp.ones((1, 3, 16)), decode=True)


@pytest.mark.parametrize("b", [1, 2])  # both cache layouts (attention.cache_heads_first)
def test_prefill_writes_a_bidirectional_prefix_then_decodes_causally(b):
    """``prefill=True`` (a prefix LM's prompt, M6): the call that creates the cache attends
    with the caller's mask (bidirectional over the prefix, padding slot excluded) and writes
    the prefix into the first slots; later tokens see every valid prefix slot and earlier
    tokens. Reference: one full pass with the prefix-LM mask."""
    p, t, slots = 5, 3, 10
    x = jax.random.normal(RNG, (b, p + t, 16))
    valid = np.ones((b, p + t), bool)
    valid[:, 1] = False  # a padded prefix slot
    mha = _mha(4, 2)
    params = mha.init(RNG, x)["params"]
    is_prefix = jnp.arange(p + t)[None, :] < p
    full_mask = prefix_mask(jnp.broadcast_to(is_prefix, (b, p + t))) & valid[:, None, None, :]
    full = mha.apply({"params": params}, x, mask=full_mask)
    pre_mask = jnp.broadcast_to(jnp.asarray(valid[:, None, None, :p]), (b, 1, p, p))
    out, mut = mha.apply({"params": params}, x[:, :p], mask=pre_mask, decode=True,
                         prefill=True, token_mask=jnp.asarray(valid[:, :p]), cache_length=slots,
                         mutable=["cache"])
    cache = mut["cache"]
    assert int(cache["cache_index"][0]) == p
    np.testing.assert_array_equal(np.asarray(cache["cached_mask"])[:, :p], valid[:, :p])
    outs = [out]
    for i in range(p, p + t):
        out, mut = mha.apply({"params": params, "cache": cache}, x[:, i:i + 1], decode=True,
                             mutable=["cache"])
        cache = mut["cache"]
        outs.append(out)
    got = jnp.concatenate(outs, 1)
    keep = valid[0]  # padded rows' outputs are not compared
    np.testing.assert_allclose(np.asarray(got)[:, keep], np.asarray(full)[:, keep],
                               rtol=1e-5, atol=1e-5)
    # without prefill the creating call writes nothing: the prefix would be lost
    _, mut = mha.apply({"params": params}, x[:, :p], decode=True, cache_length=slots,
                       mutable=["cache"])
    assert int(mut["cache"]["cache_index"][0]) == 0
    with pytest.raises(ValueError, match="cache_length >= prefix"):
        mha.apply({"params": params}, x[:, :p], mask=pre_mask, decode=True, prefill=True,
                  cache_length=p - 1, mutable=["cache"])
