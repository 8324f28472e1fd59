"""Unit tests for the shared layers (dense, embeddings, norms, MLP, stack)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from plug_jax.layers import MLP, DenseGeneral, Embed, LayerNorm, LayerStack, RMSNorm
from plug_jax.layers import stack_layers, unstack_layers

RNG = jax.random.PRNGKey(0)


def _boxed_names(variables):
    leaves = jax.tree_util.tree_leaves(variables, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    return [(leaf.value.shape, leaf.names) for leaf in leaves]


def test_dense_general_matches_einsum_and_names_axes():
    x = jax.random.normal(RNG, (2, 5, 8))
    layer = DenseGeneral(features=(3, 4), kernel_axes=("embed", "heads", "kv"))
    v = layer.init(RNG, x)
    for shape, names in _boxed_names(v):
        assert len(names) == len(shape)
    p = nn.unbox(v)["params"]
    assert p["kernel"].shape == (8, 3, 4) and p["bias"].shape == (3, 4)
    y = layer.apply(v, x)
    ref = np.einsum("bld,dhk->blhk", x, p["kernel"]) + p["bias"]
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)


def test_dense_general_contracts_two_axes():
    x = jax.random.normal(RNG, (2, 5, 3, 4))
    layer = DenseGeneral(features=6, axis=(-2, -1), kernel_axes=("heads", "kv", "embed"))
    v = layer.init(RNG, x)
    p = nn.unbox(v)["params"]
    np.testing.assert_allclose(layer.apply(v, x),
                               np.einsum("blhk,hkd->bld", x, p["kernel"]) + p["bias"],
                               rtol=1e-5, atol=1e-5)


def test_dense_general_rejects_wrong_axis_names():
    with pytest.raises(ValueError, match="kernel_axes"):
        DenseGeneral(features=4, kernel_axes=("embed",)).init(RNG, jnp.ones((2, 3)))


def test_embed_lookup_and_tied_attend():
    emb = Embed(num_embeddings=11, features=6)
    ids = jnp.array([[1, 2, 10]])
    v = emb.init(RNG, ids)
    table = nn.unbox(v)["params"]["embedding"]
    np.testing.assert_array_equal(emb.apply(v, ids), table[ids])
    x = jax.random.normal(RNG, (1, 3, 6))
    np.testing.assert_allclose(emb.apply(v, x, method=Embed.attend), x @ table.T, rtol=1e-5,
                               atol=1e-6)
    assert _boxed_names(v)[0][1] == ("vocab", "embed")


def test_embed_rejects_float_ids():
    with pytest.raises(ValueError, match="integer ids"):
        Embed(4, 3).init(RNG, jnp.ones((1, 2)))


def test_layer_norm_matches_formula_and_computes_in_f32():
    x = jax.random.normal(RNG, (3, 7)) * 5 + 2
    ln = LayerNorm(epsilon=1e-5)
    v = ln.init(RNG, x)
    v = jax.tree_util.tree_map(lambda a: a, nn.unbox(v))
    v["params"]["scale"] = jnp.arange(7.0) / 7 + 0.5
    v["params"]["bias"] = jnp.arange(7.0) / 10
    xn = np.asarray(x, np.float64)
    ref = (xn - xn.mean(-1, keepdims=True)) / np.sqrt(xn.var(-1, keepdims=True) + 1e-5)
    ref = ref * np.asarray(v["params"]["scale"]) + np.asarray(v["params"]["bias"])
    np.testing.assert_allclose(ln.apply(v, x), ref, rtol=1e-5, atol=1e-5)
    y16 = LayerNorm(dtype=jnp.bfloat16).apply(v, x.astype(jnp.bfloat16))
    assert y16.dtype == jnp.bfloat16


def test_rms_norm_matches_formula():
    x = jax.random.normal(RNG, (3, 7))
    v = RMSNorm(epsilon=1e-6).init(RNG, x)
    assert set(nn.unbox(v)["params"]) == {"scale"}
    xn = np.asarray(x, np.float64)
    ref = xn / np.sqrt((xn ** 2).mean(-1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(RMSNorm(epsilon=1e-6).apply(v, x), ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("activation,gated", [("gelu", False), ("gelu_tanh", False),
                                               ("silu", True)])
def test_mlp_matches_manual(activation, gated):
    x = jax.random.normal(RNG, (2, 4, 8))
    mlp = MLP(hidden_dim=16, activation=activation, gated=gated)
    v = mlp.init(RNG, x)
    p = nn.unbox(v)["params"]
    acts = {"gelu": lambda a: jax.nn.gelu(a, approximate=False),
            "gelu_tanh": lambda a: jax.nn.gelu(a, approximate=True), "silu": jax.nn.silu}
    act = acts[activation]
    if gated:
        h = act(x @ p["wi_0"]["kernel"] + p["wi_0"]["bias"]) * (x @ p["wi_1"]["kernel"] + p["wi_1"]["bias"])
    else:
        h = act(x @ p["wi"]["kernel"] + p["wi"]["bias"])
    ref = h @ p["wo"]["kernel"] + p["wo"]["bias"]
    np.testing.assert_allclose(mlp.apply(v, x), ref, rtol=1e-5, atol=1e-5)


def test_mlp_unknown_activation_is_clear():
    with pytest.raises(ValueError, match="unknown activation 'swish2'"):
        MLP(hidden_dim=4, activation="swish2").init(RNG, jnp.ones((1, 2, 3)))


class _Block(nn.Module):
    scale: float = 1.0

    @nn.compact
    def __call__(self, x, bias):
        h = DenseGeneral(x.shape[-1], ("embed", "mlp"), name="dense")(x)
        return x + self.scale * jnp.tanh(h) + bias, None


@pytest.mark.parametrize("remat", ["none", "full", "dots", "dots_no_batch"])
def test_layer_stack_scanned_equals_unrolled_including_grads(remat):
    x = jax.random.normal(RNG, (2, 3, 8))
    bias = jnp.full((8,), 0.1)
    kw = (("scale", 0.5),)
    scanned = LayerStack(_Block, num_layers=3, layer_kwargs=kw, scan=True, remat_policy=remat)
    unrolled = LayerStack(_Block, num_layers=3, layer_kwargs=kw, scan=False, remat_policy=remat)
    v = scanned.init(RNG, x, bias)
    names = _boxed_names(v)
    assert all(n[0] == "layers" for _, n in names)  # the scan axis carries its logical name
    ps = nn.unbox(v)["params"]
    pu = unstack_layers(ps, 3)
    assert set(pu) == {"layers_0", "layers_1", "layers_2"}

    def loss(fn, p):
        return jnp.sum(fn({"params": p}, x, bias) ** 2)

    ls, gs = jax.value_and_grad(lambda p: loss(scanned.apply, p))(ps)
    lu, gu = jax.value_and_grad(lambda p: loss(unrolled.apply, p))(pu)
    np.testing.assert_allclose(ls, lu, rtol=1e-6)
    gs_unstacked = unstack_layers(gs, 3)
    for i in range(3):
        np.testing.assert_allclose(gs_unstacked[f"layers_{i}"]["dense"]["kernel"],
                                   gu[f"layers_{i}"]["dense"]["kernel"], rtol=1e-5, atol=1e-6)
    restacked = stack_layers(pu, 3)
    np.testing.assert_array_equal(restacked["layers"]["dense"]["kernel"],
                                  ps["layers"]["dense"]["kernel"])


def test_layer_stack_unknown_remat_policy():
    with pytest.raises(ValueError, match="unknown remat_policy"):
        LayerStack(_Block, num_layers=2, remat_policy="fast").init(RNG, jnp.ones((1, 8)),
                                                                   jnp.zeros(8))
