"""The PatchGAN discriminator (plug_jax/layers/patch_gan.py) against taming-transformers, its
losses by hand, and the adversarial option of models.ImageTokenizer (``disc_weight``).

The fixture (tests/reference_env/taming_discriminator.py, run in the reference env) builds
taming's ``NLayerDiscriminator`` (ndf 16, n_layers 2 and 3) with noise on the BatchNorm
affine parameters and conv biases, saves its state dict under the ``loss.discriminator.``
keys of a VQGAN training checkpoint and records its train-mode logits and input gradient for
a random ``[2, 32, 32, 3]`` batch. Here, in float32:

* imported with ``from_taming_discriminator``, our tree has the shapes of our init and our
  logits and input gradient equal taming's within 1e-4;
* ``hinge_d_loss`` and ``generator_loss`` equal numpy by hand;
* with ``disc_weight > 0`` the gradient of the whole loss reaches the discriminator as the
  hinge term's gradient alone and the tokenizer as (pixels + VQ + weighted generator term)'s
  alone; the adaptive weight equals taming's formula computed with ``jax.grad`` in the
  decoder's last kernel;
* ``disc_weight = 0`` keeps today's params tree and loss;
* tiny compact and VQGAN tokenizers with a discriminator take optax steps that change both.
"""
import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax.core import meta

from plug_jax.layers.patch_gan import (PatchDiscriminator, from_taming_discriminator,
                                       generator_loss, hinge_d_loss)
from plug_jax.layers.vq_compact import CompactVQConfig
from plug_jax.layers.vqgan import VQGANConfig
from plug_jax.models import ImageTokenizer
from plug_jax.models.image_tokenizer import CLIP_MEAN, CLIP_STD, DISC_KEY
from plug_jax.trainer.step import extra_metrics

ATOL = 1e-4
_BUILD = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      "reference_env", "build.py")
COMPACT = CompactVQConfig.from_preset("tiny")  # 32x32 -> 8x8 codes
VQGAN_TINY = VQGANConfig.from_preset("tiny")  # 32x32 -> 16x16 codes
SG = jax.lax.stop_gradient


@pytest.fixture(scope="module")
def fixture_dir(tmp_path_factory):
    spec = importlib.util.spec_from_file_location("plug_jax_reference_env", _BUILD)
    env = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(env)
    out = tmp_path_factory.mktemp("taming_discriminator")
    env.run("taming_discriminator.py", str(out), "--seed=0")
    return str(out)


@pytest.mark.parametrize("n_layers", [2, 3])
def test_taming_discriminator_gives_taming_logits_and_gradients(fixture_dir, n_layers):
    from safetensors.numpy import load_file
    ref = dict(np.load(os.path.join(fixture_dir, "reference.npz")))
    sd = load_file(os.path.join(fixture_dir, f"discriminator_l{n_layers}.safetensors"))
    assert any(k.endswith("running_mean") for k in sd)  # dropped: batch statistics only
    params = from_taming_discriminator(sd)
    model = PatchDiscriminator(ndf=16, n_layers=n_layers)
    x = jnp.asarray(ref["images"])
    init = meta.unbox(model.init(jax.random.PRNGKey(0), x)["params"])
    shapes = lambda t: jax.tree_util.tree_map(np.shape, t)  # noqa: E731
    assert shapes(params) == shapes(init)
    logits = model.apply({"params": params}, x)
    np.testing.assert_allclose(logits, ref[f"logits_l{n_layers}"], atol=ATOL)
    probe = jnp.asarray(ref[f"probe_l{n_layers}"])
    grad = jax.grad(lambda im: jnp.sum(model.apply({"params": params}, im) * probe))(x)
    np.testing.assert_allclose(grad, ref[f"grad_l{n_layers}"], atol=ATOL)
    with pytest.raises(ValueError, match="no main.N.weight"):
        from_taming_discriminator({"encoder.conv_in.weight": np.zeros((1,))})


def test_hinge_and_generator_losses_by_hand():
    real = np.array([[1.5, 0.2], [-0.3, 0.9]], np.float32)
    fake = np.array([[-2.0, -0.4], [0.7, 1.1]], np.float32)
    # relu(1 - real) = [0, 0.8, 1.3, 0.1] (mean 0.55); relu(1 + fake) = [0, 0.6, 1.7, 2.1]
    # (mean 1.1); 0.5 * (0.55 + 1.1) = 0.825
    np.testing.assert_allclose(float(hinge_d_loss(real, fake)), 0.825, rtol=1e-6)
    np.testing.assert_allclose(float(generator_loss(fake)), -(-2.0 - 0.4 + 0.7 + 1.1) / 4,
                               rtol=1e-6)


def _batch(seed=0, b=2, size=32):
    pixels01 = np.random.default_rng(seed).random((b, size, size, 3)).astype(np.float32)
    image = (pixels01 - np.array(CLIP_MEAN, np.float32)) / np.array(CLIP_STD, np.float32)
    return {"image": image}, jnp.asarray(pixels01 * 2 - 1)


@pytest.mark.parametrize("adaptive", [True, False])
def test_gradients_reach_each_part_from_its_own_term(adaptive):
    model = ImageTokenizer(COMPACT, disc_weight=0.5, disc_ndf=8, disc_layers=2,
                           disc_adaptive=adaptive)
    batch, x = _batch(1)
    params = meta.unbox(model.init_params(jax.random.PRNGKey(0), batch))
    tok, dp = model.tokenizer_params(params), params[DISC_KEY]
    mod, disc = model.module, model.discriminator
    n = x.size

    sums = model.loss_sums(params, batch)
    grads = jax.grad(lambda p: model.loss_sums(p, batch)["loss"])(params)
    w = float(sums["g_scale"]) / n

    def recon_of(tp):
        return mod.apply({"params": tp}, x, train=True)

    if adaptive:  # taming: |grad_K mean sq| / (|grad_K g| + 1e-4), K = decoder.conv_out.weight
        def with_k(k):
            return {**tok, "conv_out": {**tok["conv_out"], "kernel": k}}
        k0 = tok["conv_out"]["kernel"]
        mse_k = jax.grad(lambda k: jnp.mean((recon_of(with_k(k))[0] - x) ** 2))(k0)
        g_k = jax.grad(lambda k: generator_loss(disc.apply({"params": dp},
                                                           recon_of(with_k(k))[0])))(k0)
        want = 0.5 * min(float(jnp.linalg.norm(mse_k) / (jnp.linalg.norm(g_k) + 1e-4)), 1e4)
        np.testing.assert_allclose(w, want, rtol=1e-4)
        assert w != 0.5
    else:
        np.testing.assert_allclose(w, 0.5, rtol=1e-6)

    def tokenizer_terms(tp):
        recon, _, aux = recon_of(tp)
        g = generator_loss(disc.apply({"params": dp}, recon))
        return jnp.sum((recon - x) ** 2) + n * aux["loss"] + n * w * g

    def hinge_term(d):
        recon = SG(recon_of(tok)[0])
        return n * hinge_d_loss(disc.apply({"params": d}, x), disc.apply({"params": d}, recon))

    want_tok, want_d = jax.grad(tokenizer_terms)(tok), jax.grad(hinge_term)(dp)
    for got, want in ((model.tokenizer_params(grads), want_tok), (grads[DISC_KEY], want_d)):
        jax.tree_util.tree_map(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4,
                                                    atol=1e-4 * float(np.abs(b).max())),
            got, want)
    np.testing.assert_allclose(float(sums["loss"]),
                               float(tokenizer_terms(tok) + hinge_term(dp)), rtol=1e-5)
    # reported as means (vq_loss's pattern: <g>_loss / <g>_weight)
    m = extra_metrics(sums, sums["weight"])
    assert {"g_loss", "g_scale", "d_loss", "vq_loss"} <= set(m)
    np.testing.assert_allclose(float(m["g_scale"]), w, rtol=1e-6)


@pytest.mark.parametrize("config", [COMPACT, VQGAN_TINY], ids=["compact", "vqgan"])
def test_disc_weight_zero_is_todays_tokenizer(config):
    batch, x = _batch(2)
    off, on = ImageTokenizer(config), ImageTokenizer(config, disc_weight=0.1)
    assert ImageTokenizer(config, disc_weight=0.0) == off
    rng = jax.random.PRNGKey(3)
    p_off = meta.unbox(off.init_params(rng, batch))
    p_on = meta.unbox(on.init_params(rng, batch))
    today = meta.unbox(off.module.init(rng, x)["params"])  # what init_params gave before
    assert jax.tree_util.tree_structure(p_off) == jax.tree_util.tree_structure(today)
    assert set(p_on) == set(p_off) | {DISC_KEY}
    jax.tree_util.tree_map(np.testing.assert_array_equal, on.tokenizer_params(p_on), p_off)
    sums = off.loss_sums(p_off, batch, deterministic=True)
    assert set(sums) == {"loss", "weight", "vq_loss", "vq_weight"}
    recon, _, aux = off.module.apply({"params": p_off}, x)
    want = float(jnp.sum((recon - x) ** 2)) + float(aux["loss"]) * x.size
    np.testing.assert_allclose(float(sums["loss"]), want, rtol=1e-5)
    # the tokenizer's outputs ignore the discriminator's key
    np.testing.assert_array_equal(on.reconstruct(p_on, x)[1], off.reconstruct(p_off, x)[1])
    np.testing.assert_allclose(on.eval_outputs(p_on, batch)["psnr"],
                               off.eval_outputs(p_off, batch)["psnr"], rtol=1e-6)
    with pytest.raises(ValueError, match="disc_weight must be >= 0"):
        ImageTokenizer(config, disc_weight=-1.0)


@pytest.mark.parametrize("config", [COMPACT, VQGAN_TINY], ids=["compact", "vqgan"])
def test_optax_steps_train_tokenizer_and_discriminator(config):
    model = ImageTokenizer(config, disc_weight=0.8, disc_ndf=8, disc_layers=2)
    batch, _ = _batch(4)
    params = meta.unbox(model.init_params(jax.random.PRNGKey(0), batch))
    tx = optax.adam(1e-3)
    opt = tx.init(params)

    def objective(q):  # the trainer's: loss / weight
        sums = model.loss_sums(q, batch)
        return sums["loss"] / sums["weight"], sums

    @jax.jit
    def step(p, o):
        (_, sums), g = jax.value_and_grad(objective, has_aux=True)(p)
        updates, o = tx.update(g, o, p)
        return optax.apply_updates(p, updates), o, sums

    p = params
    for _ in range(2):
        p, opt, sums = step(p, opt)
        assert all(np.isfinite(float(v)) for v in sums.values())
    # every kernel of both parts moved (not every bias: while all logits lie in (-1, 1) the
    # hinge's gradients in the last bias, -1/2 from the real and +1/2 from the fake, cancel)
    for part in (model.tokenizer_params, lambda t: t[DISC_KEY]):
        moved = jax.tree_util.tree_flatten_with_path(jax.tree_util.tree_map(
            lambda a, b: float(jnp.max(jnp.abs(a - b))), part(p), part(params)))[0]
        kernels = [v for path, v in moved if path[-1].key == "kernel"]
        assert len(kernels) > 3 and min(kernels) > 0.0
    assert model.flops_per_step(2, {}) > ImageTokenizer(config).flops_per_step(2, {})
