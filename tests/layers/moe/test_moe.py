"""MoeLayer: parity with transformers, expert parallelism on 8 fake devices, routing stats."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from plug_jax.layers.moe import MoeLayer, route
from plug_jax.partitioning import Partitioner, create_mesh

D, H = 8, 16  # embed, expert hidden
COLLECTIONS = ["aux_loss", "moe_metrics"]


def init_params(layer, x, seed=1, scale=0.3):
    """Random (not default-init) float32 params so every weight matters."""
    shapes = nn.unbox(jax.eval_shape(layer.init, jax.random.PRNGKey(seed), x))["params"]
    leaves, tree = jax.tree_util.tree_flatten(shapes)
    keys = jax.random.split(jax.random.PRNGKey(seed + 100), len(leaves))
    leaves = [scale * np.asarray(jax.random.normal(k, l.shape, jnp.float32))
              for k, l in zip(keys, leaves)]
    return jax.tree_util.tree_unflatten(tree, leaves)


def apply_raw(layer, params, x, **kw):
    """Output and sown values ``{name: value}`` (traceable)."""
    y, state = layer.apply({"params": params}, x, mutable=COLLECTIONS, **kw)
    return y, {k: v[0] for col in state.values() for k, v in col.items()}


def apply(layer, params, x, token_mask=None, rngs=None, **kw):
    """Jitted :func:`apply_raw` with numpy results."""
    fn = jax.jit(lambda p, x, m, r: apply_raw(layer, p, x, token_mask=m, rngs=r, **kw))
    return jax.device_get(fn(params, x, token_mask, rngs))


def inputs(shape, seed=0):
    return np.random.RandomState(seed).normal(size=shape).astype(np.float32)


# ------------------------------------------------------------ parity with transformers


def test_switch_transformers_parity():
    import torch
    from transformers import SwitchTransformersConfig
    from transformers.models.switch_transformers.modeling_switch_transformers import (
        SwitchTransformersSparseMLP)

    E, B, L = 4, 2, 16
    cfg = SwitchTransformersConfig(d_model=D, d_ff=H, num_experts=E, expert_capacity=4,
                                   router_jitter_noise=0.0, dense_act_fn="relu",
                                   router_bias=False)
    torch.manual_seed(0)
    ref = SwitchTransformersSparseMLP(cfg).eval()
    with torch.no_grad():
        ref.router.classifier.weight.normal_(0.0, 1.0)
    x = inputs((B, L, D))
    with torch.no_grad():
        want = ref(torch.from_numpy(x)).numpy()
        kept_mask, _, _ = ref.router(torch.from_numpy(x))
    kept = kept_mask.sum(-1).numpy().astype(bool)  # [B, L]
    assert 0 < kept.sum() < B * L, "the capacity must drop some tokens for this test"

    t = lambda w: w.detach().numpy().T  # noqa: E731  torch Linear weight [out, in] -> [in, out]
    params = {
        "gate": {"kernel": t(ref.router.classifier.weight)},
        "wi": {"kernel": np.stack([t(ref.experts[f"expert_{e}"].wi.weight) for e in range(E)])},
        "wo": {"kernel": np.stack([t(ref.experts[f"expert_{e}"].wo.weight) for e in range(E)])},
    }
    # C = max(min_capacity, ceil(16 * 1 * 1.0 / 4)) = 4 = HF expert_capacity, per batch row.
    layer = MoeLayer(num_experts=E, hidden_dim=H, top_k=1, impl="capacity", activation="relu",
                     use_bias=False, group_size=L, eval_capacity_factor=1.0, min_capacity=4)
    got, sown = apply(layer, params, x)
    # transformers 5.x gives dropped tokens a zero output, as we do (older versions
    # returned router_prob * hidden_state for them); check both parts explicitly.
    np.testing.assert_allclose(got[kept], want[kept], atol=1e-5, rtol=0)
    np.testing.assert_array_equal(got[~kept], 0.0)
    np.testing.assert_array_equal(want[~kept], 0.0)
    np.testing.assert_allclose(sown["drop_fraction"], 1.0 - kept.mean(), atol=1e-7)


def test_mixtral_parity():
    import torch
    from transformers import MixtralConfig
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

    E, B, L = 4, 2, 8
    cfg = MixtralConfig(hidden_size=D, intermediate_size=H, num_local_experts=E,
                        num_experts_per_tok=2, router_jitter_noise=0.0, hidden_act="silu")
    torch.manual_seed(0)
    ref = MixtralSparseMoeBlock(cfg).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_(0.0, 0.5)
    x = inputs((B, L, D), seed=1)
    with torch.no_grad():
        want = ref(torch.from_numpy(x).clone()).numpy()
    gate_up = ref.experts.gate_up_proj.detach().numpy()  # [E, 2H, D]: gate rows, then up rows
    params = {
        "gate": {"kernel": ref.gate.weight.detach().numpy().T},
        "wi_0": {"kernel": np.transpose(gate_up[:, :H], (0, 2, 1))},
        "wi_1": {"kernel": np.transpose(gate_up[:, H:], (0, 2, 1))},
        "wo": {"kernel": np.transpose(ref.experts.down_proj.detach().numpy(), (0, 2, 1))},
    }
    layer = MoeLayer(num_experts=E, hidden_dim=H, top_k=2, impl="dropless", gated=True,
                     activation="silu", use_bias=False, normalize_top_k=True)
    got, sown = apply(layer, params, x)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    assert sown["drop_fraction"] == 0.0


# ------------------------------------------------------------------ expert parallelism


@functools.lru_cache(maxsize=None)
def mesh_of(shape):
    return create_mesh(shape)


EP_CASES = [
    # (mesh (data, fsdp, expert, model), preset, impl, top_k, gated, check gradients)
    ((2, 1, 4, 1), "ep_dp", "dropless", 2, True, True),
    ((1, 1, 8, 1), "ep_fsdp_tp", "dropless", 1, False, True),
    ((1, 2, 2, 2), "ep_fsdp_tp", "dropless", 2, False, True),  # fsdp + model psum
    ((2, 1, 4, 1), "ep_dp", "capacity", 2, False, False),
    ((1, 1, 8, 1), "ep_fsdp_tp", "capacity", 1, True, True),
]


@pytest.mark.parametrize("shape, preset, impl, top_k, gated, grads", EP_CASES)
def test_expert_parallel_matches_single_device(shape, preset, impl, top_k, gated, grads):
    x = inputs((8, 8, D), seed=2)
    layer = MoeLayer(num_experts=8, hidden_dim=H, top_k=top_k, impl=impl, gated=gated,
                     eval_capacity_factor=1.0, min_capacity=1)  # capacity drops some tokens
    params = init_params(layer, x)
    want, want_sown = apply(layer, params, x)

    part = Partitioner(mesh_of(shape), preset)
    shardings = part.param_shardings(part.abstract_init(layer.init, jax.random.PRNGKey(1), x))
    params_s = jax.device_put(params, shardings["params"])
    wi = params_s["wi_0" if gated else "wi"]["kernel"]
    assert wi.sharding.spec[0] == "expert"  # experts really split over the expert axis
    assert wi.addressable_shards[0].data.shape[0] == 8 // shape[2]
    xs = part.shard_batch(x)
    got, got_sown = part.jit(functools.partial(apply_raw, layer))(params_s, xs)
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-5, rtol=0)
    for k in want_sown:
        np.testing.assert_allclose(got_sown[k], want_sown[k], atol=1e-5, rtol=1e-6)
    if impl == "capacity":
        assert want_sown["drop_fraction"] > 0
    if not grads:
        return
    loss = lambda p, x: jnp.sum(layer.apply({"params": p}, x) ** 2)  # noqa: E731
    want_grad = jax.jit(jax.grad(loss))(params, x)
    grad = part.jit(jax.grad(loss))(params_s, xs)
    for a, b in zip(jax.tree_util.tree_leaves(grad), jax.tree_util.tree_leaves(want_grad)):
        np.testing.assert_allclose(np.asarray(a), b, atol=1e-5, rtol=1e-5)


def test_dropless_uses_all_to_all_over_expert():
    x = inputs((8, 4, D))
    layer = MoeLayer(num_experts=8, hidden_dim=H, top_k=2, impl="dropless")
    params = init_params(layer, x)
    part = Partitioner(mesh_of((2, 1, 4, 1)), "ep_dp")
    jaxpr = str(jax.make_jaxpr(part.jit(layer.apply))({"params": params}, x))
    assert "shard_map" in jaxpr and "all_to_all" in jaxpr and "ragged_dot" in jaxpr
    # Without an expert axis: the plain single-device path.
    plain = str(jax.make_jaxpr(Partitioner(mesh_of((2, 4, 1, 1)), "fsdp").jit(layer.apply))(
        {"params": params}, x))
    assert "all_to_all" not in plain and "ragged_dot" in plain


# ------------------------------------------------------------ dropless == capacity


@pytest.mark.parametrize("top_k, router", [(1, "topk"), (2, "topk"), (2, "prototype")])
def test_dropless_equals_capacity_without_drops(top_k, router):
    x = inputs((2, 16, D), seed=3)
    kw = dict(num_experts=4, hidden_dim=H, top_k=top_k, router=router, gated=top_k == 2)
    cap = MoeLayer(impl="capacity", eval_capacity_factor=4.0, **kw)  # C = S: nothing drops
    params = init_params(cap, x)
    y_cap, s_cap = apply(cap, params, x)
    y_dl, s_dl = apply(MoeLayer(impl="dropless", **kw), params, x)
    assert s_cap["drop_fraction"] == 0.0
    np.testing.assert_allclose(y_dl, y_cap, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(s_dl["tokens_per_expert"], s_cap["tokens_per_expert"])


# ------------------------------------------------------------ drops and load counts


def numpy_drops(logits, top_k, capacity):
    """Hand count per group [G, S, E] logits: first choices in token order, then second."""
    groups, size, num_experts = logits.shape
    choices = np.argsort(-logits, axis=-1)[..., :top_k]  # [G, S, k]
    counts = np.zeros(num_experts)
    dropped = 0
    for g in range(groups):
        load = np.zeros(num_experts, int)
        for k in range(top_k):
            for s in range(size):
                e = choices[g, s, k]
                counts[e] += 1
                load[e] += 1
                dropped += load[e] > capacity
    return counts, dropped / (groups * size * top_k)


@pytest.mark.parametrize("top_k", [1, 2])
def test_drop_fraction_and_tokens_per_expert_skewed(top_k):
    E, B, L = 4, 2, 16
    x = inputs((B, L, D), seed=4)
    x[..., 0] = np.abs(x[..., 0]) + 1.0
    layer = MoeLayer(num_experts=E, hidden_dim=H, top_k=top_k, impl="capacity",
                     train_capacity_factor=1.0, min_capacity=1)
    params = init_params(layer, x)
    kernel = 0.3 * np.random.RandomState(5).normal(size=(D, E)).astype(np.float32)
    kernel[0, 0] = 4.0  # most tokens prefer expert 0
    params["gate"]["kernel"] = kernel
    _, sown = apply(layer, params, x, deterministic=False)  # train factor 1.0
    capacity = int(np.ceil(L * top_k * 1.0 / E))
    counts, frac = numpy_drops(x @ kernel, top_k, capacity)
    assert counts[0] > L * B / 2 and frac > 0.2
    np.testing.assert_array_equal(sown["tokens_per_expert"], counts)
    np.testing.assert_allclose(sown["drop_fraction"], frac, atol=1e-7)


def test_group_size_splits_capacity_groups():
    E, B, L = 4, 2, 16
    x = inputs((B, L, D), seed=4)
    x[..., 0] = np.abs(x[..., 0]) + 1.0
    layer = MoeLayer(num_experts=E, hidden_dim=H, impl="capacity", group_size=8,
                     eval_capacity_factor=1.0, min_capacity=1)
    params = init_params(layer, x)
    kernel = np.zeros((D, E), np.float32)
    kernel[0, 0] = 4.0
    params["gate"]["kernel"] = kernel
    _, sown = apply(layer, params, x)
    _, frac = numpy_drops((x @ kernel).reshape(4, 8, E), 1, 2)
    np.testing.assert_allclose(sown["drop_fraction"], frac, atol=1e-7)


# ------------------------------------------------------------------------ losses

LOGITS = np.array([[2.0, 0.0, 0.0, -1.0],
                   [0.0, 1.0, 3.0, 0.0],
                   [1.0, 1.5, 0.0, 0.0],
                   [0.0, 0.0, 0.5, 2.5],
                   [3.0, 0.0, 1.0, 0.0],
                   [0.0, 2.0, 0.0, 1.0]], np.float32)


def hand_losses(logits, top_k, keep=None):
    keep = np.ones(len(logits), bool) if keep is None else keep
    logits = logits[keep]
    n, E = logits.shape
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    chosen = np.argsort(-probs, axis=-1)[:, :top_k]
    f = np.array([(chosen == e).sum() for e in range(E)]) / (n * top_k)
    P = probs.mean(0)
    lse = np.log(np.exp(logits).sum(-1))
    return E * np.sum(f * P), np.mean(lse ** 2)


def loss_layer(top_k):
    """Tokens are one-hot rows so the gate kernel's rows are the logits."""
    layer = MoeLayer(num_experts=4, hidden_dim=H, top_k=top_k, impl="dropless")
    x = np.zeros((1, 6, 6), np.float32)
    x[0] = np.eye(6)
    params = init_params(layer, x)
    params["gate"]["kernel"] = LOGITS
    return layer, params, x


@pytest.mark.parametrize("top_k", [1, 2])
def test_load_balance_and_z_loss_by_hand(top_k):
    layer, params, x = loss_layer(top_k)
    _, sown = apply(layer, params, x)
    lb, z = hand_losses(LOGITS, top_k)
    np.testing.assert_allclose(sown["load_balance_loss"], lb, rtol=1e-6)
    np.testing.assert_allclose(sown["router_z_loss"], z, rtol=1e-6)


def test_token_mask_excludes_tokens_from_stats():
    layer, params, x = loss_layer(2)
    keep = np.array([True, True, False, True, False, True])
    y, sown = apply(layer, params, x, token_mask=keep[None])
    lb, z = hand_losses(LOGITS, 2, keep)
    np.testing.assert_allclose(sown["load_balance_loss"], lb, rtol=1e-6)
    np.testing.assert_allclose(sown["router_z_loss"], z, rtol=1e-6)
    chosen = np.argsort(-LOGITS[keep], axis=-1)[:, :2]
    np.testing.assert_array_equal(sown["tokens_per_expert"],
                                  [(chosen == e).sum() for e in range(4)])
    np.testing.assert_array_equal(y[0, ~keep], 0.0)  # masked tokens are not routed
    layer_c = MoeLayer(num_experts=4, hidden_dim=H, top_k=2, impl="capacity",
                       eval_capacity_factor=1.0, min_capacity=1)
    y_c, sown_c = apply(layer_c, params, x, token_mask=keep[None])
    np.testing.assert_array_equal(y_c[0, ~keep], 0.0)
    np.testing.assert_allclose(sown_c["load_balance_loss"], lb, rtol=1e-6)


# ---------------------------------------------------------------- prototyping router


def test_prototype_router_one_expert_per_group():
    logits = jnp.asarray(inputs((64, 8), seed=6) * 3)
    r = route(logits, 2, "prototype")
    idx = np.asarray(r.expert_index)
    assert ((idx[:, 0] >= 0) & (idx[:, 0] < 4)).all() and ((idx[:, 1] >= 4) & (idx[:, 1] < 8)).all()
    grouped = np.asarray(jax.nn.softmax(logits.reshape(64, 2, 4), axis=-1))
    np.testing.assert_array_equal(idx, grouped.argmax(-1) + np.array([0, 4]))
    np.testing.assert_allclose(np.asarray(r.gates), grouped.max(-1), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(r.probs).sum(-1), 1.0, rtol=1e-6)

    B, L = 2, 16
    layer = MoeLayer(num_experts=8, hidden_dim=H, top_k=2, router="prototype", impl="dropless")
    x = inputs((B, L, D), seed=7)
    _, sown = apply(layer, init_params(layer, x), x)
    counts = sown["tokens_per_expert"]
    assert counts[:4].sum() == B * L and counts[4:].sum() == B * L


@pytest.mark.parametrize("impl", ["capacity", "dropless"])
def test_prototype_router_with_four_groups_combines_four_top1_experts(impl):
    """M6-T's k top-1 with k = 4 prototypes of 3 experts: every token meets exactly one expert
    per group, and the output is the gate-weighted sum of those four experts' FFNs (a numpy
    reference over the layer's own weights). top_k = 4 is refused for the 'topk' router and a
    group count that does not divide the experts is refused for 'prototype'."""
    B, L, E, k = 2, 8, 12, 4
    layer = MoeLayer(num_experts=E, hidden_dim=H, top_k=k, router="prototype", impl=impl,
                     train_capacity_factor=float(E), eval_capacity_factor=float(E),
                     activation="relu")
    x = inputs((B, L, D), seed=11)
    params = init_params(layer, x)
    y, sown = apply(layer, params, x)
    counts = np.asarray(sown["tokens_per_expert"])
    for g in range(k):
        assert counts[3 * g:3 * g + 3].sum() == B * L
    p = jax.tree_util.tree_map(np.asarray, nn.unbox(params))
    flat = np.asarray(x, np.float64).reshape(-1, D)
    gate_logits = flat @ p["gate"]["kernel"]
    want = np.zeros_like(flat)
    for g in range(k):
        z = gate_logits[:, 3 * g:3 * g + 3]
        pr = np.exp(z - z.max(-1, keepdims=True))
        pr /= pr.sum(-1, keepdims=True)
        e = 3 * g + pr.argmax(-1)
        for t in range(flat.shape[0]):
            h = np.maximum(flat[t] @ p["wi"]["kernel"][e[t]] + p["wi"]["bias"][e[t]], 0.0)
            want[t] += pr[t].max() * (h @ p["wo"]["kernel"][e[t]] + p["wo"]["bias"][e[t]])
    np.testing.assert_allclose(np.asarray(y).reshape(-1, D), want, rtol=2e-4, atol=2e-5)
    with pytest.raises(ValueError, match="must be 1 or 2"):
        init_params(MoeLayer(num_experts=E, hidden_dim=H, top_k=4, router="topk"), x)
    with pytest.raises(ValueError, match="dividing num_experts"):
        init_params(MoeLayer(num_experts=E, hidden_dim=H, top_k=5, router="prototype"), x)


# --------------------------------------------------------------------- gradients


@pytest.mark.parametrize("impl", ["capacity", "dropless"])
def test_gradients_flow(impl):
    x = inputs((2, 8, D), seed=8)
    layer = MoeLayer(num_experts=4, hidden_dim=H, top_k=2, impl=impl, jitter_noise=0.1)
    params = init_params(layer, x)

    def loss(p):
        y = layer.apply({"params": p}, x, deterministic=False,
                        rngs={"dropout": jax.random.PRNGKey(0)})
        return jnp.sum(y)

    grads = jax.jit(jax.grad(loss))(params)
    for path in (("gate", "kernel"), ("wi", "kernel"), ("wi", "bias"), ("wo", "kernel"),
                 ("wo", "bias")):
        g = np.asarray(functools.reduce(lambda t, k: t[k], path, grads))
        assert np.isfinite(g).all() and np.abs(g).max() > 0, path


def test_jitter_only_in_training():
    x = inputs((2, 8, D), seed=9)
    layer = MoeLayer(num_experts=4, hidden_dim=H, impl="dropless", jitter_noise=0.5)
    params = init_params(layer, x)
    clean = MoeLayer(num_experts=4, hidden_dim=H, impl="dropless")
    clean_y, _ = apply(clean, params, x)
    np.testing.assert_array_equal(apply(layer, params, x)[0], clean_y)
    noisy, _ = apply(layer, params, x, deterministic=False,
                     rngs={"dropout": jax.random.PRNGKey(0)})
    assert not np.allclose(noisy, clean_y)
