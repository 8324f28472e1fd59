"""The VQGAN tokenizer (plug_jax/layers/vqgan.py) against taming-transformers itself.

The fixture (tests/reference_env/taming_vqgan.py, run in the reference env) builds taming's
``Encoder``, ``Decoder``, ``VectorQuantizer2`` and ``VQModel``'s two 1x1 convs at the
``tiny`` config with random weights, saves the state dict as a VQModel checkpoint
(``vqgan.ckpt``, with a ``loss.*`` tensor, and ``vqgan.safetensors``) and records what
taming computes for a random image batch. Here, in float32:

* imported with ``from_taming``, our encoder latents, quantised tensor, VQ loss,
  reconstruction and decode-from-codes equal taming's within 1e-4 and the code indices
  exactly; ``to_taming`` gives the file's tensors back bit for bit;
* the straight-through estimator and the quantiser's loss gradients equal a hand
  computation on a 3-code quantiser (both ``legacy`` settings), and the reconstruction's
  gradient reaches the encoder;
* the EMA codebook update equals a numpy implementation of its documented equations;
* bad checkpoints (wrong shape, missing or unexpected key, pickled objects) give one line;
* ``muge_f16_1024`` has as many parameters as taming's modules at that config (counted by
  torch in the fixture).
"""
import importlib.util
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.core import meta

from plug_jax.convert.io import WeightsLoadError
from plug_jax.layers import vqgan_convert as vc
from plug_jax.layers.vqgan import VQGAN, VectorQuantizer, VQGANConfig

ATOL = 1e-4
_BUILD = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      "reference_env", "build.py")


@pytest.fixture(scope="module")
def fixture_dir(tmp_path_factory):
    spec = importlib.util.spec_from_file_location("plug_jax_reference_env", _BUILD)
    env = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(env)
    out = tmp_path_factory.mktemp("taming_vqgan")
    env.run("taming_vqgan.py", str(out), "--seed=0")
    return str(out)


@pytest.fixture(scope="module")
def ref(fixture_dir):
    return dict(np.load(os.path.join(fixture_dir, "reference.npz")))


@pytest.fixture(scope="module")
def config(fixture_dir):
    with open(os.path.join(fixture_dir, "config.json")) as f:
        cfg = json.load(f)
    cfg.pop("dropout")
    return VQGANConfig(**cfg)


@pytest.fixture(scope="module")
def state_dict(fixture_dir):
    from safetensors.numpy import load_file
    return dict(load_file(os.path.join(fixture_dir, "vqgan.safetensors")))


def _one_line(excinfo, *parts):
    msg = str(excinfo.value)
    assert "\n" not in msg, msg
    for p in parts:
        assert str(p) in msg, (p, msg)
    return msg


def test_tiny_preset_is_the_fixture_config(config):
    assert VQGANConfig.from_preset("tiny") == config


def test_taming_checkpoint_gives_taming_outputs(fixture_dir, ref, config, state_dict):
    notes = []
    sd = vc.load_taming_checkpoint(os.path.join(fixture_dir, "vqgan.ckpt"))
    assert sorted(k for k in sd if k.startswith("loss.")) == [
        "loss.discriminator.main.0.weight"]
    for k, v in state_dict.items():  # the .ckpt (lightning layout) holds the same tensors
        np.testing.assert_array_equal(sd[k], v, err_msg=k)
    params = vc.from_taming(sd, config, log=notes.append)
    assert len(notes) == 1 and "loss.*" in notes[0]
    model, v = VQGAN(config), {"params": params}

    @jax.jit
    def run(images, codes):
        h = model.apply(v, images, method=model.encode_latents)
        quantized, indices, terms = model.apply(v, images, method=model.encode)
        rec, codes_again, aux = model.apply(v, images)
        decoded = model.apply(v, codes, method=model.decode_codes)
        return h, quantized, indices, terms, rec, codes_again, aux, decoded

    h, quantized, indices, terms, rec, codes_again, aux, decoded = run(
        jnp.asarray(ref["images"]), jnp.asarray(ref["codes"]))
    np.testing.assert_allclose(h, ref["h"], atol=ATOL)
    np.testing.assert_array_equal(indices, ref["indices"])
    np.testing.assert_array_equal(codes_again, ref["indices"])
    assert len(np.unique(ref["indices"])) > 10  # a real test of the nearest-code search
    np.testing.assert_allclose(quantized, ref["quantized"], atol=ATOL)
    np.testing.assert_allclose(terms["loss"], ref["loss"], atol=ATOL)
    np.testing.assert_allclose(aux["loss"], ref["loss"], atol=ATOL)
    np.testing.assert_allclose(rec, ref["reconstruction"], atol=ATOL)
    np.testing.assert_allclose(decoded, ref["decoded_codes"], atol=ATOL)
    # code usage statistics of this batch, from the reference indices
    p = np.bincount(ref["indices"].ravel(), minlength=config.n_embed) / ref["indices"].size
    nz = p[p > 0]
    np.testing.assert_allclose(aux["perplexity"], np.exp(-np.sum(nz * np.log(nz))), rtol=1e-5)
    np.testing.assert_allclose(aux["usage"], len(nz) / config.n_embed, rtol=1e-6)


def test_to_taming_gives_the_file_back(config, state_dict):
    back = vc.to_taming(vc.from_taming(state_dict, config, log=lambda m: None), config)
    assert set(back) == set(state_dict)
    for k, x in back.items():
        assert x.dtype == state_dict[k].dtype, k
        np.testing.assert_array_equal(x, state_dict[k], err_msg=k)


# ------------------------------------------------------------------ straight-through gradient

_E = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]], np.float32)
_Z = np.array([[[[0.9, 0.2], [0.1, 0.2]]]], np.float32)  # [1, 1, 2, 2]: codes 1 and 0
_W = np.array([[[[0.3, -1.2], [2.0, 0.7]]]], np.float32)


@pytest.mark.parametrize("legacy", [True, False])
def test_straight_through_and_loss_gradients_by_hand(legacy):
    beta = 0.25
    vq = VectorQuantizer(3, 2, beta=beta, legacy=legacy)

    def out(e, z):
        z_q, _, _ = vq.apply({"params": {"embedding": e}}, z)
        return jnp.sum(jnp.asarray(_W) * z_q)

    def loss(e, z):
        return vq.apply({"params": {"embedding": e}}, z)[2]["loss"]

    e, z = jnp.asarray(_E), jnp.asarray(_Z)
    z_q, codes, terms = vq.apply({"params": {"embedding": e}}, z)
    # by hand: (0.9, 0.2) is nearest e1 = (1, 0), (0.1, 0.2) nearest e0 = (0, 0)
    zq_hand = np.array([[[[1.0, 0.0], [0.0, 0.0]]]], np.float32)
    np.testing.assert_array_equal(codes, [[[1, 0]]])
    np.testing.assert_allclose(z_q, zq_hand, atol=1e-7)
    mse = (0.1 ** 2 + 0.2 ** 2 + 0.1 ** 2 + 0.2 ** 2) / 4
    np.testing.assert_allclose(terms["commitment"], mse, rtol=1e-6)
    np.testing.assert_allclose(terms["loss"], (1 + beta) * mse, rtol=1e-6)
    np.testing.assert_allclose(terms["perplexity"], 2.0, rtol=1e-6)  # p = (1/2, 1/2, 0)
    np.testing.assert_allclose(terms["usage"], 2 / 3, rtol=1e-6)

    # the output's gradient passes to z unchanged and never reaches the codebook
    g_e, g_z = jax.grad(out, argnums=(0, 1))(e, z)
    np.testing.assert_allclose(g_z, _W, atol=1e-7)
    np.testing.assert_array_equal(g_e, np.zeros_like(_E))
    # loss = w_c * mean((sg(z_q) - z)^2) + w_e * mean((z_q - sg(z))^2), mean over 4 numbers
    w_c, w_e = (1.0, beta) if legacy else (beta, 1.0)
    g_e, g_z = jax.grad(loss, argnums=(0, 1))(e, z)
    np.testing.assert_allclose(g_z, w_c * 2 * (_Z - zq_hand) / 4, atol=1e-7)
    ge_hand = np.zeros_like(_E)
    ge_hand[1] = w_e * 2 * (_E[1] - _Z[0, 0, 0]) / 4
    ge_hand[0] = w_e * 2 * (_E[0] - _Z[0, 0, 1]) / 4
    np.testing.assert_allclose(g_e, ge_hand, atol=1e-7)


def test_reconstruction_gradient_reaches_the_encoder():
    config = VQGANConfig.from_preset("tiny", resolution=16, attn_resolutions=(8,))
    model = VQGAN(config)
    images = jax.random.uniform(jax.random.PRNGKey(1), (1, 16, 16, 3), minval=-1, maxval=1)
    params = meta.unbox(model.init(jax.random.PRNGKey(0), images)["params"])

    @jax.jit
    def grads(p):
        return jax.grad(lambda q: jnp.sum(model.apply({"params": q}, images)[0] ** 2))(p)

    g = jax.tree_util.tree_map(lambda x: float(jnp.max(jnp.abs(x))), grads(params))
    g = jax.tree_util.tree_leaves_with_path(g)
    zero = [jax.tree_util.keystr(k) for k, x in g if x == 0.0]
    # every encoder parameter (through the straight-through estimator) gets a gradient; the
    # codebook gets none from the reconstruction (only the VQ loss trains it)
    assert [k for k in zero if "encoder" in k or "quant_conv" in k] == []
    assert any("encoder" in jax.tree_util.keystr(k) for k, _ in g)
    assert zero == ["['quantize']['embedding']"]


# ------------------------------------------------------------------ EMA codebook

def _numpy_ema(state, z, decay, eps):
    """The update equations of VectorQuantizer's docstring, in numpy (float64)."""
    flat = np.asarray(z, np.float64).reshape(-1, state["embedding"].shape[1])
    e = np.asarray(state["embedding"], np.float64)
    d = ((flat[:, None, :] - e[None]) ** 2).sum(-1)
    codes = d.argmin(1)
    k = e.shape[0]
    n_k = np.bincount(codes, minlength=k)
    s_k = np.zeros_like(e)
    np.add.at(s_k, codes, flat)
    size = decay * np.asarray(state["cluster_size"], np.float64) + (1 - decay) * n_k
    avg = decay * np.asarray(state["embed_avg"], np.float64) + (1 - decay) * s_k
    n = size.sum()
    smoothed = (size + eps) / (n + k * eps) * n
    return codes, {"cluster_size": size, "embed_avg": avg, "embedding": avg / smoothed[:, None]}


def test_ema_codebook_update_equals_numpy():
    decay, eps = 0.9, 0.1  # a large eps, so that the Laplace smoothing shows
    vq = VectorQuantizer(3, 2, codebook="ema", ema_decay=decay, ema_eps=eps, beta=0.25)
    z = np.array([[[[0.9, 0.2], [0.1, 0.2]], [[1.2, -0.1], [0.8, 0.1]]]], np.float32)
    state = {"embedding": _E, "cluster_size": np.array([2.0, 0.5, 1.0], np.float32),
             "embed_avg": np.array([[0.1, 0.0], [0.4, 0.1], [0.0, 0.9]], np.float32)}
    init = vq.init(jax.random.PRNGKey(0), jnp.asarray(z))
    assert "params" not in init and set(init["vq_ema"]) == set(state)
    v = {"vq_ema": {k: jnp.asarray(x) for k, x in state.items()}}

    (z_q, codes, terms), new = vq.apply(v, jnp.asarray(z), train=True, mutable=["vq_ema"])
    codes_np, want = _numpy_ema(state, z, decay, eps)
    np.testing.assert_array_equal(np.asarray(codes).ravel(), codes_np)
    np.testing.assert_allclose(z_q, _E[codes_np].reshape(z.shape), atol=1e-7)  # old codebook
    mse = np.mean((_E[codes_np].reshape(z.shape) - z) ** 2)
    np.testing.assert_allclose(terms["loss"], 0.25 * mse, rtol=1e-5)  # commitment only
    for k in want:
        np.testing.assert_allclose(new["vq_ema"][k], want[k], rtol=1e-5, atol=1e-6, err_msg=k)
    assert not np.allclose(new["vq_ema"]["embedding"], _E)
    # a second step from the new state
    (_, _, _), newer = vq.apply(new, jnp.asarray(z), train=True, mutable=["vq_ema"])
    _, want2 = _numpy_ema({k: np.asarray(x) for k, x in new["vq_ema"].items()}, z, decay, eps)
    for k in want2:
        np.testing.assert_allclose(newer["vq_ema"][k], want2[k], rtol=1e-5, atol=1e-6)
    # no update when not training or when the collection is not mutable
    _, same = vq.apply(v, jnp.asarray(z), train=False, mutable=["vq_ema"])
    for k in state:
        np.testing.assert_array_equal(same["vq_ema"][k], state[k])
    vq.apply(v, jnp.asarray(z), train=True)  # immutable: quantises, no error


def test_ema_model_has_no_codebook_param_and_updates_in_train():
    config = VQGANConfig.from_preset("tiny", resolution=16, attn_resolutions=(),
                                     codebook="ema")
    model = VQGAN(config)
    images = jax.random.uniform(jax.random.PRNGKey(1), (1, 16, 16, 3), minval=-1, maxval=1)
    v = model.init(jax.random.PRNGKey(0), images)
    assert "embedding" not in v["params"].get("quantize", {})
    (_, _, aux), new = model.apply(v, images, train=True, mutable=["vq_ema"])
    assert not np.allclose(new["vq_ema"]["quantize"]["cluster_size"],
                           v["vq_ema"]["quantize"]["cluster_size"])
    with pytest.raises(ValueError) as e:
        vc.from_taming({}, config)
    _one_line(e, "EMA", "straight_through")


# ------------------------------------------------------------------ bad checkpoints

def test_bad_checkpoints_give_one_line(fixture_dir, config, state_dict, tmp_path):
    key = "decoder.up.1.block.0.conv1.weight"
    wrong = dict(state_dict, **{key: state_dict[key][:, :-1]})
    with pytest.raises(ValueError) as e:
        vc.from_taming(wrong, config)
    _one_line(e, key, tuple(state_dict[key].shape), tuple(wrong[key].shape), "ddconfig")

    missing = {k: x for k, x in state_dict.items() if k != "encoder.mid.attn_1.q.bias"}
    with pytest.raises(ValueError) as e:
        vc.from_taming(missing, config)
    _one_line(e, "missing key encoder.mid.attn_1.q.bias", "(64,)", "ddconfig")

    extra = dict(state_dict, **{"encoder.down.1.attn.1.q.bias": np.zeros(64, np.float32)})
    with pytest.raises(ValueError) as e:
        vc.from_taming(extra, config)
    _one_line(e, "unexpected key encoder.down.1.attn.1.q.bias", "(64,)", "ddconfig")

    # a checkpoint at another config (more codes) names the codebook
    with pytest.raises(ValueError) as e:
        vc.from_taming(state_dict, config.replace(n_embed=128))
    _one_line(e, "quantize.embedding.weight", "(64, 16)", "(128, 16)")

    # a torch file holding a pickled object is refused, not executed
    import argparse

    import torch
    bad = tmp_path / "pickled.ckpt"
    torch.save({"state_dict": {k: torch.from_numpy(x) for k, x in state_dict.items()},
                "hparams": argparse.Namespace(lr=1.0)}, bad)
    with pytest.raises(WeightsLoadError) as e:
        vc.load_taming_checkpoint(bad)
    _one_line(e, "refusing", str(bad))
    with pytest.raises(WeightsLoadError) as e:
        vc.load_taming_checkpoint(tmp_path / "none.ckpt")
    _one_line(e, "does not exist")


def test_config_errors_are_one_line():
    cases = [(dict(ch=48), "multiple of 32"), (dict(resolution=33), "divisible"),
             (dict(codebook="gumbel"), "codebook"), (dict(double_z=True), "double_z"),
             (dict(ema_decay=1.0), "ema_decay"), (dict(ch_mult=()), "ch_mult"),
             (dict(n_embed=0), "n_embed")]
    for kw, word in cases:
        with pytest.raises(ValueError) as e:
            VQGANConfig.from_preset("tiny", **kw)
        _one_line(e, word)
    with pytest.raises(ValueError) as e:
        VQGANConfig.from_preset("huge")
    _one_line(e, "huge", "muge_f16_1024")


def test_muge_preset_parameter_count_equals_taming(ref):
    config = VQGANConfig.from_preset("muge_f16_1024")
    assert (config.code_size, config.n_embed, config.embed_dim) == (16, 1024, 256)
    model = VQGAN(config)
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                               jnp.zeros((1, 256, 256, 3))))
    count = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(shapes["params"]))
    assert count == int(ref["muge_f16_1024_params"])
    shop = VQGANConfig.from_preset("shop64")
    assert (shop.resolution, shop.code_size, shop.n_embed) == (64, 8, 512)
