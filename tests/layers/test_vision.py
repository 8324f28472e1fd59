"""Vision front ends: patch / tubelet embedding, class token, positions, resize_positions."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from jax import lax

from plug_jax.layers.vision import (ClassToken, PatchEmbed, PositionEmbedding, TubeletEmbed,
                                    resize_positions)

RNG = jax.random.PRNGKey(0)


def _names(variables):
    leaves = jax.tree_util.tree_leaves(variables, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    return {leaf.names for leaf in leaves}


def test_patch_embed_shapes_axes_and_conv_equivalence():
    x = jax.random.normal(RNG, (2, 8, 12, 3))  # NHWC, 2 x 3 patches of 4
    layer = PatchEmbed(features=5, patch_size=4)
    v = layer.init(RNG, x)
    assert _names(v) == {("patch", "patch", "channels", "embed"), ("embed",)}
    p = nn.unbox(v)["params"]
    p = {"kernel": p["kernel"], "bias": jax.random.normal(RNG, (5,))}
    y = layer.apply({"params": p}, x)
    assert y.shape == (2, 6, 5)
    # Reference: a strided convolution (kernel = stride = patch), patches in row-major order.
    ref = lax.conv_general_dilated(x, p["kernel"], (4, 4), "VALID",
                                   dimension_numbers=("NHWC", "HWIO", "NHWC")) + p["bias"]
    np.testing.assert_allclose(y, ref.reshape(2, 6, 5), rtol=1e-5, atol=1e-5)
    grid = layer.apply({"params": p}, x, return_grid=True)
    assert grid.shape == (2, 2, 3, 5)
    no_bias = PatchEmbed(features=5, patch_size=4, use_bias=False).init(RNG, x)
    assert set(nn.unbox(no_bias)["params"]) == {"kernel"}
    with pytest.raises(ValueError, match="not divisible by the patch size"):
        layer.apply({"params": p}, jnp.ones((1, 9, 12, 3)))


def test_tubelet_t1_equals_patch_embed_per_frame():
    video = jax.random.normal(RNG, (2, 3, 8, 8, 3))  # [B, T, H, W, C]
    tube = TubeletEmbed(features=6, patch_size=4, tubelet_size=1)
    v = tube.init(RNG, video)
    assert _names(v) == {("frames", "patch", "patch", "channels", "embed"), ("embed",)}
    p = nn.unbox(v)["params"]
    p = {"kernel": p["kernel"], "bias": 0.1 * jnp.arange(6.0)}
    y = jax.jit(tube.apply)({"params": p}, video)
    assert y.shape == (2, 3, 4, 6)
    patch = jax.jit(PatchEmbed(features=6, patch_size=4).apply)
    pp = {"kernel": p["kernel"][0], "bias": p["bias"]}
    for t in range(3):
        np.testing.assert_allclose(y[:, t], patch({"params": pp}, video[:, t]),
                                   rtol=1e-5, atol=1e-5)


def test_tubelet_matches_torch_conv3d():
    torch = pytest.importorskip("torch")
    video = np.random.default_rng(0).normal(size=(2, 7, 8, 8, 3)).astype(np.float32)
    for t, stride, pad in ((2, None, 0), (3, 2, 1)):
        tube = TubeletEmbed(features=4, patch_size=4, tubelet_size=t, temporal_stride=stride,
                            temporal_padding=pad)
        p = nn.unbox(tube.init(RNG, video))["params"]
        p = {"kernel": p["kernel"], "bias": jnp.asarray([0.1, -0.2, 0.3, 0.0])}
        y = np.asarray(tube.apply({"params": p}, video))
        conv = torch.nn.Conv3d(3, 4, (t, 4, 4), stride=(stride or t, 4, 4), padding=(pad, 0, 0))
        with torch.no_grad():
            kernel = np.array(p["kernel"]).transpose(4, 3, 0, 1, 2).copy()  # -> [D, C, t, p, p]
            conv.weight.copy_(torch.from_numpy(kernel))
            conv.bias.copy_(torch.from_numpy(np.array(p["bias"])))
            ref = conv(torch.from_numpy(video).permute(0, 4, 1, 2, 3))  # [B, D, T', gh, gw]
        ref = ref.flatten(3).permute(0, 2, 3, 1).numpy()  # [B, T', N, D]
        assert y.shape == ref.shape == (2, (7 + 2 * pad - t) // (stride or t) + 1, 4, 4)
        np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)


def test_class_token_and_position_embedding():
    x = jax.random.normal(RNG, (2, 4, 6))
    cls = ClassToken()
    v = cls.init(RNG, x)
    y = cls.apply(v, x)
    assert y.shape == (2, 5, 6)
    table = nn.unbox(v)["params"]["embedding"]
    np.testing.assert_array_equal(y[:, 0], np.broadcast_to(table, (2, 6)))
    np.testing.assert_array_equal(y[:, 1:], x)
    pos = PositionEmbedding(num_positions=5)
    pv = pos.init(RNG, y)
    assert _names(pv) == {(None, "embed")}
    np.testing.assert_allclose(pos.apply(pv, y), y + nn.unbox(pv)["params"]["embedding"])
    with pytest.raises(ValueError, match="resize_positions"):
        pos.apply(pv, x)


def _grid_table(fn, gh, gw, prefix):
    """A position table whose grid rows sample ``fn(u, v)`` at the cell centres of [0, 1]^2."""
    u = (np.arange(gh) + 0.5) / gh
    w = (np.arange(gw) + 0.5) / gw
    uu, ww = np.meshgrid(u, w, indexing="ij")
    grid = np.stack(fn(uu, ww), axis=-1).reshape(gh * gw, -1)
    head = np.full((prefix, grid.shape[1]), 7.0)
    return np.concatenate([head, grid]).astype(np.float32), uu, ww


def test_resize_positions_identity_and_shapes():
    table = np.random.default_rng(0).normal(size=(1 + 16, 8)).astype(np.float32)
    assert resize_positions(table, 4) is table  # same grid: unchanged
    out = resize_positions(table, (6, 3))
    assert out.shape == (1 + 18, 8) and out.dtype == np.float32
    np.testing.assert_array_equal(out[0], table[0])
    assert resize_positions(table[None], 5).shape == (1, 26, 8)  # OpenAI / timm [1, L, D]
    assert resize_positions(table[1:], 2, num_prefix_tokens=0).shape == (4, 8)
    rect = resize_positions(np.zeros((2 + 6, 4), np.float32), 4, num_prefix_tokens=2,
                            old_grid=(2, 3))
    assert rect.shape == (2 + 16, 4)
    # jax.image.resize at the same size is the identity too (no shortcut involved).
    np.testing.assert_allclose(resize_positions(table, 4, old_grid=(4, 4), method="bicubic"),
                               table)
    for bad, msg in (((1 + 15, 8), "not a square grid"), ((2, 1, 8), "leading axis of 1")):
        with pytest.raises(ValueError, match=msg):
            resize_positions(np.zeros(bad, np.float32), 3)


def test_resize_positions_smooth_function():
    """Resizing a table sampled from a function samples the same function on the new grid."""
    def linear(u, w):
        return 1.0 + 2.0 * u - 3.0 * w, 0.5 * u + w

    def smooth(u, w):
        return np.sin(np.pi * u) * np.cos(np.pi * w), np.exp(-((u - 0.4) ** 2 + w ** 2))

    for old, new in ((8, 12), (12, 6), (8, 8 * 3)):
        # Bilinear interpolation error <= h^2 / 8 * (|f_uu| + |f_ww|) with h = 1 / old; both
        # smooth functions have second derivatives <= pi^2 (values span about 1).
        bound = (1.0 / old) ** 2 / 8 * 2 * np.pi ** 2
        for fn, tol in ((linear, 1e-5), (smooth, 1.05 * bound)):
            table, _, _ = _grid_table(fn, old, old, prefix=1)
            out = np.asarray(resize_positions(table, new))
            want, uu, ww = _grid_table(fn, new, new, prefix=1)
            # Bilinear with half-pixel centres is exact for linear functions between the old
            # cell centres; outside them it holds the edge value, so compare the interior.
            inside = ((uu >= 0.5 / old) & (uu <= 1 - 0.5 / old) & (ww >= 0.5 / old)
                      & (ww <= 1 - 0.5 / old)).reshape(-1)
            err = np.abs(out[1:] - want[1:])[inside].max()
            assert err < tol, (fn.__name__, old, new, err)
            np.testing.assert_array_equal(out[0], table[0])


def test_resize_positions_matches_torch_bilinear():
    torch = pytest.importorskip("torch")
    table = np.random.default_rng(1).normal(size=(1 + 49, 5)).astype(np.float32)
    for new in (10, 4, (9, 5)):
        out = np.asarray(resize_positions(table, new))
        gh, gw = (new, new) if isinstance(new, int) else new
        grid = torch.from_numpy(table[1:].reshape(1, 7, 7, 5)).permute(0, 3, 1, 2)
        ref = torch.nn.functional.interpolate(grid, size=(gh, gw), mode="bilinear",
                                              align_corners=False)
        ref = ref.permute(0, 2, 3, 1).reshape(gh * gw, 5).numpy()
        np.testing.assert_allclose(out[1:], ref, rtol=1e-5, atol=1e-5)


def test_conv_stem_is_three_conv_pool_blocks_then_a_projection():
    from plug_jax.layers.vision import ConvStem
    stem = ConvStem(features=64, patch_size=8)
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 32, 32, 3))
    params = stem.init(jax.random.PRNGKey(1), x)["params"]
    params = jax.tree_util.tree_map(lambda a: getattr(a, "value", a), params,
                                    is_leaf=lambda a: isinstance(a, nn.Partitioned))
    # channels 32, 64, then capped at the width (64); then a 64 -> 64 projection
    assert [params[f"conv_{i}"]["kernel"].shape for i in range(3)] == [
        (3, 3, 3, 32), (3, 3, 32, 64), (3, 3, 64, 64)]
    assert params["proj"]["kernel"].shape == (64, 64)
    got = stem.apply({"params": params}, x)
    assert got.shape == (2, 16, 64)  # a 4 x 4 grid of tokens, as 8 px patches of 32 px
    h = np.asarray(x)
    for i in range(3):  # reference: lax convolution (zero "SAME" padding), ReLU, 2x2 max
        k = params[f"conv_{i}"]
        h = lax.conv_general_dilated(h, k["kernel"], (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
        h = np.maximum(np.asarray(h) + np.asarray(k["bias"]), 0.0)
        b, hh, ww, c = h.shape
        h = h.reshape(b, hh // 2, 2, ww // 2, 2, c).max(axis=(2, 4))
    want = h.reshape(2, 16, 64) @ np.asarray(params["proj"]["kernel"]) + np.asarray(
        params["proj"]["bias"])
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_conv_stem_needs_a_power_of_two_patch():
    from plug_jax.layers.vision import ConvStem
    with pytest.raises(ValueError, match="power of two"):
        ConvStem(features=8, patch_size=6).init(jax.random.PRNGKey(0), jnp.zeros((1, 12, 12, 3)))


def test_clip_tower_with_conv_stem_and_the_converters_refuse_it():
    from plug_jax.families.mplug import convert_modelscope as ms
    from plug_jax.families.mplug.config import MPlugConfig
    from plug_jax.layers.clip import CLIPVisionConfig, CLIPVisionTower
    with pytest.raises(ValueError, match="unknown stem"):
        CLIPVisionConfig(image_size=32, patch_size=8, width=32, layers=1, heads=2, mlp_dim=64,
                         projection_dim=8, stem="cnn")
    cfg = CLIPVisionConfig(image_size=32, patch_size=8, width=32, layers=1, heads=2, mlp_dim=64,
                           projection_dim=8, stem="conv")
    out, params = CLIPVisionTower(cfg).init_with_output(jax.random.PRNGKey(0),
                                                        jnp.zeros((2, 32, 32, 3)))
    assert out["tokens"].shape == (2, 17, 32)  # class token + 16 patches, as stem='patch'
    assert "conv_stem" in params["params"] and "patch_embed" not in params["params"]
    mp = MPlugConfig.from_preset("tiny")
    mp = mp.replace(vision=mp.vision.replace(stem="conv"))
    with pytest.raises(ValueError, match="stem='conv'"):
        ms.to_modelscope(mp, {})
