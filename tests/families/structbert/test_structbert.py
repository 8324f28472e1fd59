"""StructBERT family: published sizes, scan/unrolled, heads, masks, norm placement, gin, mesh."""
import functools
import pathlib

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from plug_jax import gin_utils
from plug_jax.families.structbert import (PRESETS, PUBLISHED_PARAMS, BertEncoder,
                                          StructBERTConfig, StructBERTForPreTraining,
                                          abstract_params, param_count)
from plug_jax.layers.scan import unstack_layers
from plug_jax.partitioning import axes as A

GIN_ROOT = str(pathlib.Path(__file__).resolve().parents[3] / "gin_configs")
TINY = StructBERTConfig.from_preset("tiny")


def _analytic_count(c: StructBERTConfig) -> int:
    d, f, v = c.hidden_size, c.mlp_dim, c.vocab_size
    per_layer = (4 * d * d + 4 * d) + (2 * d * f + f + d) + 4 * d
    emb = (v + c.max_position_embeddings + c.type_vocab_size) * d + 2 * d  # + embed or final LN
    heads = (d * d + d + 2 * d + v) + (d * d + d) + (d * c.num_sentence_classes
                                                     + c.num_sentence_classes)
    return c.num_layers * per_layer + emb + heads


@pytest.mark.parametrize("name", ["large-en", "large-zh"])
def test_presets_reproduce_published_sizes(name):
    c = StructBERTConfig.from_preset(name)
    assert (c.num_layers, c.hidden_size, c.num_heads, c.mlp_dim, c.max_position_embeddings,
            c.type_vocab_size, c.norm_placement, c.num_sentence_classes) == \
        (24, 1024, 16, 4096, 512, 2, "post", 3)
    assert c.vocab_size == {"large-en": 30522, "large-zh": 21128}[name]
    n = param_count(c)  # from abstract shapes: nothing is allocated
    assert n == _analytic_count(c)
    nominal = PUBLISHED_PARAMS[name]
    print(f"StructBERT {name}: {n:,} parameters ({100 * (n / nominal - 1):+.2f}% vs "
          f"{nominal / 1e6:.0f}M published)")
    assert abs(n / nominal - 1) < 0.03


def test_every_param_is_named_with_logical_axes():
    for placement in ("post", "pre"):
        boxed = abstract_params(TINY.replace(norm_placement=placement))
        leaves = jax.tree_util.tree_leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
        assert leaves and all(isinstance(x, nn.Partitioned) for x in leaves)
        for x in leaves:
            assert len(x.names) == x.value.ndim
            assert all(n is None or n in A.WEIGHT_AXES for n in x.names), x.names


def test_norm_placement_changes_the_tree():
    post = nn.unbox(abstract_params(TINY))["encoder"]
    pre = nn.unbox(abstract_params(TINY.replace(norm_placement="pre")))["encoder"]
    assert "embed_norm" in post and "final_norm" not in post
    assert "final_norm" in pre and "embed_norm" not in pre
    assert set(post["stack"]["layers"]) == set(pre["stack"]["layers"]) == \
        {"attn", "attn_norm", "mlp", "mlp_norm"}


@functools.lru_cache(maxsize=None)
def _jitted(module_cls, cfg, method_kw=()):
    kw = dict(method_kw)
    return jax.jit(lambda p, *args, rngs=None: module_cls(cfg).apply(
        {"params": p}, *args, rngs=rngs, **kw))


def _run(cfg, params, *args, module_cls=StructBERTForPreTraining, rngs=None, **kw):
    """Jitted apply (eager Linen applies re-trace the scan on every call, which is slow)."""
    return _jitted(module_cls, cfg, tuple(sorted(kw.items())))(params, *args, rngs=rngs)


def _init(cfg, ids):
    return _init_cached(cfg.replace(dropout_rate=0.0, attention_dropout_rate=0.0, dtype="float32"),
                        (1, 8))


@functools.lru_cache(maxsize=None)
def _init_cached(cfg, shape):
    """Params do not depend on the input shape; the tests share one initialisation per tree."""
    init = jax.jit(lambda r: StructBERTForPreTraining(cfg).init(r, jnp.zeros(shape, jnp.int32)))
    return nn.unbox(init(jax.random.PRNGKey(0))["params"])


def _inputs():
    rng = np.random.default_rng(0)
    ids = jnp.asarray(rng.integers(1, TINY.vocab_size, (3, 10)), jnp.int32)
    mask = jnp.asarray(np.arange(10)[None] < np.array([[10], [6], [2]]), jnp.int32)
    types = jnp.asarray(np.arange(10)[None] >= 5, jnp.int32) * mask
    return ids * mask, types, mask


@pytest.mark.parametrize("placement", ["post", "pre"])
def test_scan_and_unrolled_give_equal_outputs(placement):
    cfg = TINY.replace(norm_placement=placement)
    ids, types, mask = _inputs()
    params = _init(cfg, ids)
    unrolled = jax.tree_util.tree_map(lambda x: x, params)
    unrolled["encoder"]["stack"] = unstack_layers(params["encoder"]["stack"], cfg.num_layers)
    a = _run(cfg, params, ids, types, mask)
    b = _run(cfg.replace(scan_layers=False), unrolled, ids, types, mask)
    for k in a:
        np.testing.assert_allclose(np.asarray(a[k]), np.asarray(b[k]), atol=1e-6, rtol=1e-6)
    # remat changes nothing numerically either.
    c = _run(cfg.replace(remat_policy="full"), params, ids, types, mask)
    np.testing.assert_allclose(np.asarray(a["mlm_logits"]), np.asarray(c["mlm_logits"]),
                               atol=1e-6)


def test_heads_shapes_and_three_way_sentence_head():
    ids, types, mask = _inputs()
    params = _init(TINY, ids)
    out = _run(TINY, params, ids, types, mask)
    assert TINY.num_sentence_classes == 3
    assert out["sentence_logits"].shape == (3, 3) and out["sentence_logits"].dtype == jnp.float32
    assert out["mlm_logits"].shape == (3, 10, TINY.vocab_size)
    assert out["mlm_logits"].dtype == jnp.float32
    assert out["hidden_states"].shape == (3, 10, 64) and out["pooled"].shape == (3, 64)
    assert np.all(np.abs(np.asarray(out["pooled"])) <= 1.0)  # tanh
    # BERT NSP head: 2 classes.
    cfg2 = TINY.replace(num_sentence_classes=2)
    p2 = _init(cfg2, ids)
    assert p2["sentence_head"]["kernel"].shape == (64, 2)
    # mlm_positions gathers the rows to predict.
    pos = jnp.array([[1, 3], [0, 5], [1, 1]])
    sel = _run(TINY, params, ids, types, mask, None, None, pos)
    want = np.take_along_axis(np.asarray(out["mlm_logits"]), np.asarray(pos)[..., None], axis=1)
    np.testing.assert_allclose(np.asarray(sel["mlm_logits"]), want, atol=1e-5)
    # Tied output: the logits use the word embedding (plus the output bias).
    enc = params["encoder"]["word_embed"]["embedding"]
    assert "kernel" not in params["mlm_head"] and params["mlm_head"]["output_bias"].shape == \
        (TINY.vocab_size,) and enc.shape == (TINY.vocab_size, 64)
    # BertEncoder.attend (for a decoder tied to the encoder's embeddings, as in PLUG).
    h = np.asarray(out["hidden_states"])
    got = BertEncoder(TINY).apply({"params": params["encoder"]}, h, method=BertEncoder.attend)
    np.testing.assert_allclose(np.asarray(got), h @ np.asarray(enc).T, atol=1e-4)


@pytest.mark.parametrize("placement", ["post", "pre"])
def test_padding_content_does_not_leak(placement):
    cfg = TINY.replace(norm_placement=placement)
    ids, types, mask = _inputs()
    params = _init(cfg, ids)
    a = _run(cfg, params["encoder"], ids, types, mask, module_cls=BertEncoder)
    junk = jnp.where(mask == 1, ids, 7)
    b = _run(cfg, params["encoder"], junk, types, mask, module_cls=BertEncoder)
    real = np.asarray(mask, bool)
    np.testing.assert_allclose(np.asarray(a)[real], np.asarray(b)[real], atol=1e-6)


def test_packed_segments_equal_separate_rows():
    params = _init(TINY, jnp.zeros((1, 4), jnp.int32))["encoder"]
    a, b = jnp.arange(1, 6)[None], jnp.arange(20, 27)[None]
    packed = jnp.concatenate([a, b, jnp.zeros((1, 2), jnp.int32)], 1)
    seg = jnp.array([[1] * 5 + [2] * 7 + [0] * 2])
    pos = jnp.array([list(range(5)) + list(range(7)) + [0, 0]])
    out = _run(TINY, params, packed, None, None, pos, seg, module_cls=BertEncoder)
    np.testing.assert_allclose(out[:, :5], _run(TINY, params, a, module_cls=BertEncoder),
                               atol=1e-5)
    np.testing.assert_allclose(out[:, 5:12], _run(TINY, params, b, module_cls=BertEncoder),
                               atol=1e-5)


def test_dropout_only_when_not_deterministic():
    cfg = TINY.replace(dropout_rate=0.5, attention_dropout_rate=0.5)
    ids, types, mask = _inputs()
    params = _init(cfg, ids)
    a = _run(cfg, params, ids, types, mask)["mlm_logits"]
    np.testing.assert_array_equal(a, _run(cfg, params, ids, types, mask)["mlm_logits"])
    d = _run(cfg, params, ids, types, mask, deterministic=False,
             rngs={"dropout": jax.random.PRNGKey(1)})["mlm_logits"]
    assert not np.allclose(a, d)


def test_bf16_compute_keeps_f32_params_and_logits():
    ids, types, mask = _inputs()
    params = _init(TINY, ids)
    out = _run(TINY.replace(dtype="bfloat16"), params, ids, types, mask)
    ref = _run(TINY, params, ids, types, mask)
    assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(params))
    assert out["mlm_logits"].dtype == jnp.float32
    # Measured: max |bf16 - f32| = 0.0050 (logits up to 0.66). The floor shows bf16 ran:
    # computing in float32 anyway gives a difference of 0 (at most float32 rounding).
    diff = float(np.max(np.abs(np.asarray(out["mlm_logits"]) - np.asarray(ref["mlm_logits"]))))
    assert 5e-4 < diff < 1e-2, diff


def test_config_errors_are_clear():
    with pytest.raises(ValueError, match="unknown StructBERT preset 'huge'"):
        StructBERTConfig.from_preset("huge")
    with pytest.raises(ValueError, match="norm_placement 'middle'"):
        StructBERTConfig(norm_placement="middle")
    with pytest.raises(ValueError, match="not divisible by num_heads"):
        StructBERTConfig(hidden_size=100, num_heads=3)
    with pytest.raises(ValueError, match="unknown remat_policy"):
        StructBERTConfig(remat_policy="some")


@pytest.mark.parametrize("preset", ["tiny", "small", "large-zh", "large-en"])
def test_model_gin_builds_the_preset(preset):
    gin_utils.parse_gin([f"models/structbert/{preset}.gin"], [], [GIN_ROOT])
    try:
        cfg = gin.query_parameter("%STRUCTBERT_CONFIG").scoped_configurable_fn()
    finally:
        gin.clear_config()
    assert cfg == PRESETS[preset]


def test_fsdp_tp_mesh_gives_the_single_device_outputs():
    from plug_jax.partitioning.mesh import create_mesh
    from plug_jax.partitioning.partitioner import Partitioner

    cfg = TINY.replace(norm_placement="pre")
    model = StructBERTForPreTraining(cfg)
    rng = np.random.default_rng(0)
    ids = jnp.asarray(rng.integers(1, cfg.vocab_size, (8, 12)), jnp.int32)
    mask = jnp.asarray(np.arange(12)[None] < rng.integers(4, 13, (8, 1)), jnp.int32)
    params = _init(cfg, ids)
    want = _run(cfg, params, ids, None, mask)
    part = Partitioner(create_mesh(ici=(1, 2, 1, 4)), "fsdp_tp")
    sharded = part.init(model.init, jax.random.PRNGKey(0), ids)["params"]
    batch = part.shard_batch({"ids": ids, "mask": mask})
    got = part.jit(lambda p, b: model.apply({"params": p}, b["ids"],
                                            attention_mask=b["mask"]))(sharded, batch)
    for k in want:
        np.testing.assert_allclose(np.asarray(got[k]), np.asarray(want[k]), atol=2e-5)
