"""The partitioner on 8 fake CPU devices with a toy logically-partitioned module."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from plug_jax.partitioning import (Partitioner, PartitioningError, activate, constraints,
                                   create_mesh, get_rules, with_logical_constraint)

V, E, M, H, D = 32, 16, 32, 8, 4  # vocab, embed, mlp, heads, kv
B, L = 8, 4

MESHES = [(8, 1, 1, 1), (1, 8, 1, 1), (1, 1, 1, 8), (1, 2, 1, 4), (2, 2, 1, 2)]
PRESETS = ["dp", "fsdp", "tp", "fsdp_tp"]

# Independent statement of what each preset does with the toy's weight axes.
EXPECTED_AXIS = {
    "dp": {},
    "fsdp": {"embed": "fsdp"},
    "tp": {"vocab": "model", "mlp": "model", "heads": "model"},
    "fsdp_tp": {"embed": "fsdp", "vocab": "model", "mlp": "model", "heads": "model"},
}

TOY_NAMES = {
    "params/embedding": ("vocab", "embed"),
    "params/attn/query/kernel": ("embed", "heads", "kv"),
    "params/attn/wo/kernel": ("heads", "kv", "embed"),
    "params/wi/kernel": ("embed", "mlp"),
    "params/wi/bias": ("mlp",),
    "params/wo/kernel": ("mlp", "embed"),
    "params/scale": ("norm",),
    "params/plain_bias": (None,),  # created without logical names -> replicated
}


def part(init, names):
    return nn.with_logical_partitioning(init, names)


class Attn(nn.Module):
    heads: int

    @nn.compact
    def __call__(self, x):
        q = nn.DenseGeneral((self.heads, D), use_bias=False, name="query",
                            kernel_init=part(nn.initializers.normal(0.3), ("embed", "heads", "kv")))(x)
        q = with_logical_constraint(jnp.tanh(q), ("act_batch", "act_length", "act_heads", "act_kv"))
        return nn.DenseGeneral(E, axis=(-2, -1), use_bias=False, name="wo",
                               kernel_init=part(nn.initializers.normal(0.3), ("heads", "kv", "embed")))(q)


class Toy(nn.Module):
    heads: int = H

    @nn.compact
    def __call__(self, ids):
        emb = self.param("embedding", part(nn.initializers.normal(0.5), ("vocab", "embed")), (V, E))
        x = jnp.take(emb, ids, axis=0)
        x = with_logical_constraint(x, ("act_batch", "act_length", "act_embed"))
        x = x + Attn(self.heads, name="attn")(x)
        h = nn.Dense(M, name="wi", kernel_init=part(nn.initializers.normal(0.3), ("embed", "mlp")),
                     bias_init=part(nn.initializers.normal(0.1), ("mlp",)))(x)
        h = with_logical_constraint(nn.relu(h), ("act_batch", "act_length", "act_mlp"))
        x = x + nn.Dense(E, use_bias=False, name="wo",
                         kernel_init=part(nn.initializers.normal(0.3), ("mlp", "embed")))(h)
        scale = self.param("scale", part(nn.initializers.ones, ("norm",)), (E,))
        x = with_logical_constraint(x * scale, ("act_batch", "act_length", "act_embed"))
        x = x + self.param("plain_bias", nn.initializers.normal(0.1), (E,))
        logits = jnp.einsum("ble,ve->blv", x, emb)
        return with_logical_constraint(logits, ("act_batch", "act_length", "act_vocab"))


def path_str(path):
    return "/".join(str(getattr(k, "key", k)) for k in path)


def flat(tree):
    return {path_str(p): x for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


@functools.lru_cache(maxsize=None)
def mesh_of(shape):
    return create_mesh(shape)


def ids_batch(batch=B):
    return np.random.RandomState(0).randint(0, V, size=(batch, L)).astype(np.int32)


def expected_spec(preset, names):
    return PartitionSpec(*(EXPECTED_AXIS[preset].get(n) for n in names))


@functools.lru_cache(maxsize=None)
def reference():
    """Single-device params and logits (no mesh, no constraints)."""
    model = Toy()
    variables = model.init(jax.random.PRNGKey(0), ids_batch())
    variables = jax.device_get(nn.unbox(variables))
    logits = np.asarray(jax.jit(model.apply)(variables, ids_batch()))
    return variables, logits


# ---------------------------------------------------------------------------- init


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("shape", MESHES)
def test_init_shardings(shape, preset):
    mesh = mesh_of(shape)
    p = Partitioner(mesh, preset)
    variables = p.init(Toy().init, jax.random.PRNGKey(0), ids_batch())
    leaves = flat(variables)
    assert set(leaves) == set(TOY_NAMES)
    for path, names in TOY_NAMES.items():
        x = leaves[path]
        assert not isinstance(x, nn.Partitioned), path
        spec = expected_spec(preset, names)
        want = NamedSharding(mesh, spec)
        assert x.sharding.is_equivalent_to(want, x.ndim), (path, x.sharding, spec)
        # The array really is split that way across the 8 devices.
        local = tuple(s // (mesh.shape[a] if a else 1) for s, a in zip(x.shape, spec))
        assert len(x.addressable_shards) == 8
        assert all(sh.data.shape == local for sh in x.addressable_shards), (path, local)
    # Values equal an unsharded init with the same key.
    ref, _ = reference()
    for path, x in flat(ref).items():
        np.testing.assert_allclose(np.asarray(leaves[path]), x, rtol=1e-6, atol=1e-6)


def test_param_shardings_match_unboxed_structure():
    p = Partitioner(mesh_of((1, 2, 1, 4)), "fsdp_tp")
    abstract = jax.eval_shape(Toy().init, jax.random.PRNGKey(0), ids_batch())
    shardings = p.param_shardings(abstract)
    unboxed = nn.unbox(abstract)
    assert jax.tree_util.tree_structure(shardings) == jax.tree_util.tree_structure(unboxed)
    specs = {k: v.spec for k, v in flat(shardings).items()}
    assert specs["params/embedding"] == PartitionSpec("model", "fsdp")
    assert specs["params/attn/query/kernel"] == PartitionSpec("fsdp", "model", None)
    assert specs["params/plain_bias"] == PartitionSpec(None)


def test_logical_axes():
    p = Partitioner(mesh_of((1, 8, 1, 1)), "fsdp")
    abstract = jax.eval_shape(Toy().init, jax.random.PRNGKey(0), ids_batch())
    logical = p.logical_axes(abstract)
    got = {path_str(pth): x for pth, x in jax.tree_util.tree_flatten_with_path(
        logical, is_leaf=lambda x: isinstance(x, tuple))[0]}
    assert got == TOY_NAMES


def test_init_runs_under_active_rules():
    mesh = mesh_of((1, 1, 1, 8))
    p = Partitioner(mesh, "tp")
    seen = []

    def init_fn(rng, ids):
        seen.append(constraints.active())
        return Toy().init(rng, ids)

    p.init(init_fn, jax.random.PRNGKey(0), ids_batch())
    assert seen and all(s is not None and s[0] is mesh and s[1] == get_rules("tp") for s in seen)
    assert constraints.active() is None


# ------------------------------------------------------------------------- forward


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("shape", [(1, 2, 1, 4), (2, 2, 1, 2)])
def test_forward_matches_single_device(shape, preset):
    ref_vars, ref_logits = reference()
    p = Partitioner(mesh_of(shape), preset)
    model = Toy()
    variables = p.init(model.init, jax.random.PRNGKey(0), ids_batch())
    fwd = p.jit(model.apply)
    out = fwd(variables, p.shard_batch(ids_batch()))
    np.testing.assert_allclose(np.asarray(out), ref_logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("preset, shape, local", [
    ("tp", (1, 1, 1, 8), (B, L, V // 8)),      # act_vocab over 'model'
    ("dp", (8, 1, 1, 1), (1, L, V)),           # act_batch over 'data'
    ("fsdp_tp", (1, 2, 1, 4), (B // 2, L, V // 4)),
])
def test_activation_constraints_applied_in_jit(preset, shape, local):
    p = Partitioner(mesh_of(shape), preset)
    ref_vars, ref_logits = reference()
    out = p.jit(Toy().apply)(ref_vars, ids_batch())
    assert out.addressable_shards[0].data.shape == local
    np.testing.assert_allclose(np.asarray(out), ref_logits, rtol=1e-5, atol=1e-5)


def test_jit_shardings_static_and_donation():
    p = Partitioner(mesh_of((2, 2, 1, 2)), "fsdp_tp")
    x = p.shard_batch(np.ones((B, 6), np.float32))
    f = p.jit(lambda x, k: x * k, in_shardings=(p.data_sharding(2),),
              out_shardings=p.data_sharding(2), static_argnums=(1,), donate_argnums=(0,))
    y = f(x, 3)
    assert y.sharding.is_equivalent_to(p.data_sharding(2), 2)
    np.testing.assert_array_equal(np.asarray(y), 3 * np.ones((B, 6)))


# -------------------------------------------------------------------------- errors


def test_indivisible_param_dim():
    p = Partitioner(mesh_of((1, 1, 1, 8)), "tp")
    with pytest.raises(PartitioningError) as info:
        p.init(Toy(heads=12).init, jax.random.PRNGKey(0), ids_batch())
    msg = str(info.value)
    assert "\n" not in msg
    assert "params/attn/query/kernel" in msg
    assert "(16, 12, 4)" in msg
    assert "dim 1" in msg and "'heads'" in msg
    assert "'model'" in msg and "size 8" in msg
    assert "fix: choose a 'model' degree that divides 12" in msg
    assert isinstance(info.value, ValueError)


def test_indivisible_param_dim_joint_axes():
    rules = (("vocab", ("fsdp", "model")),)
    p = Partitioner(mesh_of((1, 2, 1, 4)), rules)
    abstract = {"params": {"emb": nn.Partitioned(
        jax.ShapeDtypeStruct((12, 16), jnp.float32), names=("vocab", "embed"))}}
    with pytest.raises(PartitioningError) as info:
        p.param_shardings(abstract)
    msg = str(info.value)
    assert "\n" not in msg
    assert "params/emb" in msg and "(12, 16)" in msg and "dim 0" in msg
    assert "('fsdp','model') of total size 8" in msg


def test_names_rank_mismatch():
    p = Partitioner(mesh_of((1, 8, 1, 1)), "fsdp")
    abstract = {"w": nn.Partitioned(jax.ShapeDtypeStruct((4, 4), jnp.float32), names=("embed",))}
    with pytest.raises(PartitioningError, match="w has shape"):
        p.param_shardings(abstract)


def test_indivisible_batch():
    p = Partitioner(mesh_of((2, 2, 1, 2)), "fsdp_tp")
    batch = {"input_ids": np.zeros((6, 16), np.int32)}
    with pytest.raises(PartitioningError) as info:
        p.shard_batch(batch)
    assert str(info.value) == (
        "batch input 'input_ids' has shape (6, 16); its batch dim 6 is not divisible by the "
        "batch mesh axes ('data','fsdp','expert') of total size 4; fix: use a global batch "
        "size that is a multiple of 4")
    p8 = Partitioner(mesh_of((1, 8, 1, 1)), "fsdp")
    with pytest.raises(PartitioningError, match="of total size 8; fix: use a global batch size "
                                                "that is a multiple of 8"):
        p8.shard_batch(batch)


def test_shard_batch():
    p = Partitioner(mesh_of((2, 2, 1, 2)), "fsdp_tp")
    batch = {"input_ids": np.arange(8 * 3).reshape(8, 3), "weights": np.ones((8,), np.float32)}
    out = p.shard_batch(batch)
    assert out["input_ids"].addressable_shards[0].data.shape == (2, 3)
    assert out["weights"].addressable_shards[0].data.shape == (2,)
    np.testing.assert_array_equal(np.asarray(out["input_ids"]), batch["input_ids"])
    assert p.data_sharding(3).spec == PartitionSpec(("data", "fsdp", "expert"), None, None)


def test_unknown_preset_name():
    with pytest.raises(ValueError, match="unknown partitioning rule preset"):
        Partitioner(mesh_of((1, 8, 1, 1)), "zero3")


# ------------------------------------------------------------------ constraints


def test_constraints_noop_outside_activate():
    x = jnp.ones((B, L, E))
    names = ("act_batch", "act_length", "act_embed")
    assert constraints.active() is None
    assert with_logical_constraint(x, names) is x
    jaxpr = str(jax.make_jaxpr(lambda y: with_logical_constraint(y, names))(x))
    assert "sharding_constraint" not in jaxpr
    with activate(mesh_of((8, 1, 1, 1)), get_rules("dp")):
        jaxpr = str(jax.make_jaxpr(lambda y: with_logical_constraint(y, names))(x))
    assert "sharding_constraint" in jaxpr
    assert constraints.active() is None
    # The toy module runs on a single device with no mesh at all.
    ref_vars, ref_logits = reference()
    np.testing.assert_allclose(np.asarray(Toy().apply(ref_vars, ids_batch())), ref_logits,
                               rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------- describe


def test_describe():
    p = Partitioner(mesh_of((1, 2, 1, 4)), "fsdp_tp")
    abstract = jax.eval_shape(Toy().init, jax.random.PRNGKey(0), ids_batch())
    text = p.describe(abstract)
    lines = text.splitlines()
    emb = next(line for line in lines if line.startswith("params/embedding"))
    assert "(32, 16)" in emb and "(vocab, embed)" in emb and "('model', 'fsdp')" in emb
    assert "256 B" in emb  # 32*16*4 bytes / (4*2)
    for path in TOY_NAMES:
        assert any(line.startswith(path + " ") for line in lines), path
    n_params = V * E + E * H * D * 2 + E * M + M + M * E + E + E
    assert lines[-1].startswith(f"total: {len(TOY_NAMES)} tensors, {n_params:,} parameters")
    assert "per device" in lines[-1]
