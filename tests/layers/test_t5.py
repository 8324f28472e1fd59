"""plug_jax.layers.t5: relative-position buckets, parameter axes, and cached decoding (single
source and fusion-in-decoder) equal to the recompute path through ``decoding.encdec_adapter``.
Parity with transformers is in tests/convert/test_hf_t5.py."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from plug_jax import decoding
from plug_jax.layers.t5 import (T5Config, T5EncoderDecoder, abstract_params, param_count,
                                relative_position_bucket)

CFG = T5Config(vocab_size=96, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=3,
               num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=12,
               dropout_rate=0.0)


@pytest.mark.parametrize("buckets,distance", [(32, 128), (8, 12), (64, 300)])
def test_relative_position_bucket_matches_transformers(buckets, distance):
    torch = pytest.importorskip("torch")
    from transformers.models.t5.modeling_t5 import T5Attention

    rel = np.arange(-700, 700)
    for bidirectional in (True, False):
        want = T5Attention._relative_position_bucket(
            torch.from_numpy(rel), bidirectional=bidirectional, num_buckets=buckets,
            max_distance=distance).numpy()
        got = relative_position_bucket(jnp.asarray(rel), bidirectional, buckets, distance)
        np.testing.assert_array_equal(np.asarray(got), want)


def test_parameters_have_logical_axes_and_published_sizes():
    boxed = abstract_params(CFG)
    leaves = jax.tree_util.tree_leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    assert all(isinstance(x, nn.Partitioned) and len(x.names) == len(x.value.shape)
               for x in leaves)
    p = nn.unbox(boxed)
    assert p["encoder"]["relpos_bias"].shape == (8, 4)
    assert p["decoder"]["stack"]["layers"]["cross_attn"]["query"]["kernel"].shape == (3, 32, 4, 8)
    assert p["lm_head"]["kernel"].shape == (32, 96)
    assert "lm_head" not in nn.unbox(abstract_params(CFG.replace(tie_word_embeddings=True)))
    # mT5-small (300M) and mT5-XL (3.7B, ChatPLUG-3.7B's size).
    assert param_count(T5Config()) == 300_176_768
    xl = param_count(T5Config(d_model=2048, d_ff=5120, num_layers=24, num_heads=32))
    assert abs(xl / 3.7e9 - 1) < 0.02


@functools.lru_cache(maxsize=None)
def _setup(tied: bool = False):
    cfg = CFG.replace(tie_word_embeddings=tied)
    model = T5EncoderDecoder(cfg)
    ids = jnp.ones((1, 4), jnp.int32)
    params = nn.unbox(jax.jit(model.init)(jax.random.PRNGKey(0), ids, ids))["params"]
    rs = np.random.RandomState(1)
    single = rs.randint(1, cfg.vocab_size, (3, 10)).astype(np.int32)
    for r, n in enumerate((10, 6, 2)):
        single[r, n:] = 0
    passages = rs.randint(1, cfg.vocab_size, (3, 4, 5)).astype(np.int32)
    lengths = np.array([[5, 3, 1, 0], [5, 5, 2, 4], [1, 0, 0, 3]])
    passages[np.arange(5)[None, None] >= lengths[..., None]] = 0
    return model, params, {"single": single, "fid": passages}


def _teacher_forced(fns, inputs, tokens, after_prefill=None):
    """Per-step log-probs ``[B, T, V]`` of ``tokens`` through decoding's prepare / init / step."""
    step = jax.jit(fns.step_fn)
    params = decoding._prepare(fns.step_fn, inputs)
    rows, n = tokens.shape
    cache = decoding._init_cache(fns.init_cache_fn, params, rows, n)
    if after_prefill is not None:
        params = after_prefill(params)
    out = []
    for t in range(n):
        logits, cache = step(params, cache, jnp.asarray(tokens[:, t:t + 1]),
                             jnp.full((rows, 1), t, jnp.int32), jnp.ones((rows, 1), bool))
        out.append(np.asarray(jax.nn.log_softmax(logits[:, -1])))
    return np.stack(out, 1)


def _poison(prepared):
    """Every encoder weight and cross-attention key / value projection set to NaN."""
    def walk(tree, path=()):
        if isinstance(tree, dict):
            return {k: walk(v, path + (k,)) for k, v in tree.items()}
        bad = path[0] == "encoder" or ("cross_attn" in path and path[
            path.index("cross_attn") + 1] in ("key", "value"))
        return jnp.full_like(tree, jnp.nan) if bad else tree
    return {**prepared, "model": walk(prepared["model"])}


@pytest.mark.parametrize("source", ["single", "fid"])
def test_cached_decoding_equals_recompute(source):
    """Step log-probs through the cache (unrolled twin, and scanned) equal the recompute
    path's; the steps read the encoder side from the cache only (encode once); greedy
    tokens agree."""
    model, params, sources = _setup()
    enc = sources[source]
    inputs = {"model": params, "encoder_ids": enc}
    tokens = np.random.RandomState(2).randint(1, CFG.vocab_size, (3, 7)).astype(np.int32)
    tokens[:, 0] = 0
    want = _teacher_forced(decoding.encdec_adapter(model, cache=False), inputs, tokens)
    cached = decoding.encdec_adapter(model)
    assert cached.step_fn.unstack
    got = _teacher_forced(cached, inputs, tokens, after_prefill=_poison)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    got = _teacher_forced(decoding.encdec_adapter(model, unroll_layers=False), inputs, tokens)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    start, mask = np.zeros((3, 1), np.int32), np.ones((3, 1), np.int32)
    slow = decoding.generate(*decoding.encdec_adapter(model, cache=False), inputs, start, mask, 6)
    fast = decoding.generate(*cached, inputs, start, mask, 6)
    np.testing.assert_array_equal(np.asarray(fast.tokens), np.asarray(slow.tokens))
    assert len(np.unique(np.asarray(slow.tokens))) >= 3


def test_cached_decoding_tied_head_and_cache_layout():
    model, params, sources = _setup(tied=True)
    inputs = {"model": params, "encoder_ids": sources["fid"]}
    tokens = np.asarray([[0, 5, 9, 17, 3]] * 3, np.int32)
    want = _teacher_forced(decoding.encdec_adapter(model, cache=False), inputs, tokens)
    fns = decoding.encdec_adapter(model)
    np.testing.assert_allclose(_teacher_forced(fns, inputs, tokens), want, atol=1e-5, rtol=0)
    cache = fns.init_cache_fn(3, 5, params=fns.step_fn.prepare_params(inputs))
    flat = {"/".join(str(p.key) for p in path): x
            for path, x in jax.tree_util.tree_flatten_with_path(cache)[0]}
    cross = [k for k in flat if "cross_attn/cached_key" in k]
    assert len(cross) == 3 and all(flat[k].shape == (3, 20, 4, 8) for k in cross)  # P * L
    assert all(x.shape[0] == 3 for x in flat.values())  # batch on axis 0 (beam search)
