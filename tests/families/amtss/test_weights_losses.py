"""AMTSS teacher weights and distillation loss against hand-computed numpy values."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from plug_jax.families.amtss import losses, weights


def np_softmax(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


# 1 example, 3 teachers, 3 classes, gold = 0: teacher 0 confidently right, teacher 1
# uncertain, teacher 2 confidently wrong.
Z = np.array([[[4.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 4.0, 0.0]]], np.float32)
Y = np.array([0])


def test_margins_by_hand():
    # teacher 0 at T=1: p = e^4/(e^4+2), rivals 1/(e^4+2)
    d = np.e ** 4 + 2
    want0 = (np.e ** 4 - 1) / d
    want1 = 0.0  # p(gold) == p(class 1)
    want2 = (1 - np.e ** 4) / d
    got = np.asarray(weights.teacher_margins(Z, Y, 1.0))
    np.testing.assert_allclose(got, [[want0, want1, want2]], atol=1e-6)
    # at T=2 the margins shrink
    p = np_softmax(Z / 2.0)
    want = p[..., 0] - p[..., 1:].max(-1)
    np.testing.assert_allclose(np.asarray(weights.teacher_margins(Z, Y, 2.0)), want, atol=1e-6)


def test_max_margin_weights_by_hand_and_ordering():
    tau = 0.5
    m = np.asarray(weights.teacher_margins(Z, Y, 1.0))
    want = np_softmax(m / tau)
    got = np.asarray(weights.teacher_weights(Z, Y, temperature=1.0, tau=tau))
    np.testing.assert_allclose(got, want, atol=1e-6)
    np.testing.assert_allclose(got.sum(-1), 1.0, atol=1e-6)
    assert got[0, 0] > got[0, 1] > got[0, 2]  # right > uncertain > confidently wrong


def test_tau_zero_picks_the_max_margin_teacher_and_ties_share():
    got = np.asarray(weights.teacher_weights(Z, Y, tau=0.0))
    np.testing.assert_allclose(got, [[1.0, 0.0, 0.0]])
    tie = np.concatenate([Z[:, :1], Z[:, :1]], axis=1)
    np.testing.assert_allclose(np.asarray(weights.teacher_weights(tie, Y, tau=0.0)),
                               [[0.5, 0.5]])
    # small tau approaches the hard choice
    np.testing.assert_allclose(np.asarray(weights.teacher_weights(Z, Y, tau=1e-3)),
                               [[1.0, 0.0, 0.0]], atol=1e-6)


def test_uniform_ablation_and_masks():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(4, 3, 5)).astype(np.float32)
    y = rng.integers(0, 5, size=4)
    np.testing.assert_allclose(np.asarray(weights.teacher_weights(z, y, weighting="uniform")),
                               np.full((4, 3), 1 / 3), atol=1e-7)
    mask = np.array([[1, 1, 1], [1, 0, 1], [0, 0, 1], [0, 0, 0]])
    for weighting in ("uniform", "max_margin"):
        for tau in (0.0, 0.3):
            w = np.asarray(weights.teacher_weights(z, y, weighting=weighting, tau=tau,
                                                   teacher_mask=mask))
            assert np.all(w[mask == 0] == 0)
            np.testing.assert_allclose(w.sum(-1), [1, 1, 1, 0], atol=1e-6)
    w = np.asarray(weights.teacher_weights(z, y, weighting="uniform", teacher_mask=mask))
    np.testing.assert_allclose(w[1], [0.5, 0, 0.5])
    m = np.asarray(weights.teacher_margins(z, y, 1.0))
    w = np.asarray(weights.teacher_weights(z, y, tau=0.3, teacher_mask=mask))
    np.testing.assert_allclose(w[1, [0, 2]], np_softmax(m[1, [0, 2]] / 0.3), atol=1e-6)
    with pytest.raises(ValueError, match="weighting"):
        weights.teacher_weights(z, y, weighting="best")


def np_loss(s, z, y, w, T, alpha):
    q = np_softmax(s / T)
    mix = np.einsum("bn,bnc->bc", w, np_softmax(z / T))
    kl = np.sum(np.where(mix > 0, mix * (np.log(np.where(mix > 0, mix, 1)) - np.log(q)), 0), -1)
    ce = -np.log(np_softmax(s))[np.arange(len(y)), y]
    return T * T * kl, ce


@pytest.mark.parametrize("weighting", ["max_margin", "uniform"])
def test_distillation_sums_against_numpy(weighting):
    rng = np.random.default_rng(1)
    b, n, c, T, tau, alpha = 6, 3, 5, 2.0, 0.5, 0.7
    s = rng.normal(size=(b, c)).astype(np.float32)
    z = (3 * rng.normal(size=(b, n, c))).astype(np.float32)
    y = rng.integers(0, c, size=b)
    real = np.array([1, 1, 1, 1, 1, 0], np.float32)
    mask = np.ones((b, n)); mask[2, 1] = 0; mask[3] = 0
    p = np_softmax(z / T)
    m = p[np.arange(b), :, y] - np.where(np.eye(c, dtype=bool)[y][:, None, :], -1, p).max(-1)
    if weighting == "uniform":
        w = mask / np.maximum(mask.sum(-1, keepdims=True), 1)
    else:
        e = np.where(mask > 0, np.exp(m / tau), 0)
        w = e / np.maximum(e.sum(-1, keepdims=True), 1e-30)
    distill, ce = np_loss(s.astype(np.float64), z, y, w, T, alpha)
    assert distill[3] == 0  # no teacher: gold label only
    got = jax.device_get(losses.distillation_sums(s, z, y, real, weighting=weighting,
                                                  temperature=T, tau=tau, alpha=alpha,
                                                  teacher_mask=mask))
    np.testing.assert_allclose(got["loss"], np.sum((distill + alpha * ce) * real), rtol=1e-5)
    np.testing.assert_allclose(got["distill_loss"], np.sum(distill * real), rtol=1e-5)
    np.testing.assert_allclose(got["ce_loss"], np.sum(ce * real), rtol=1e-5)
    assert got["weight"] == 5
    assert got["correct"] == np.sum((s.argmax(-1) == y) * real)
    np.testing.assert_allclose(got["teacher_importance"], (w * real[:, None]).sum(0), atol=1e-6)
    pres = mask * real[:, None]
    np.testing.assert_allclose(got["teacher_present"], pres.sum(0))
    np.testing.assert_allclose(got["teacher_correct"],
                               ((z.argmax(-1) == y[:, None]) * pres).sum(0))


def test_mixture_and_per_teacher_kl_have_the_same_student_gradient():
    rng = np.random.default_rng(2)
    s = jnp.asarray(rng.normal(size=(4, 6)), jnp.float32)
    z = jnp.asarray(2 * rng.normal(size=(4, 3, 6)), jnp.float32)
    w = jax.nn.softmax(jnp.asarray(rng.normal(size=(4, 3)), jnp.float32), -1)
    g_mix = jax.grad(lambda x: losses.mixture_kl(x, z, w, 2.0).sum())(s)
    g_sum = jax.grad(lambda x: losses.per_teacher_kl(x, z, w, 2.0).sum())(s)
    np.testing.assert_allclose(g_mix, g_sum, atol=1e-6)
    # the per-teacher form is larger by the teachers' disagreement; the mixture KL is 0 at
    # the mixture
    assert np.all(losses.per_teacher_kl(s, z, w, 2.0) >= losses.mixture_kl(s, z, w, 2.0))
    mix = jnp.einsum("bn,bnc->bc", w, jax.nn.softmax(z / 2.0, -1))
    np.testing.assert_allclose(losses.mixture_kl(2.0 * jnp.log(mix), z, w, 2.0), 0, atol=1e-6)


def test_weights_carry_no_gradient_and_loss_is_finite_with_hard_teachers():
    z = jnp.asarray([[[100.0, -100.0], [-100.0, 100.0]]])
    g = jax.grad(lambda t: weights.teacher_weights(t, jnp.array([0]), tau=0.1).sum())(z)
    assert np.all(np.asarray(g) == 0)
    out = losses.distillation_sums(jnp.zeros((1, 2)), z, jnp.array([0]), temperature=1.0)
    assert np.isfinite(float(out["loss"]))


def test_weights_by_language():
    w = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [0.2, 0.8]])
    lang = np.array([0, 0, 2, 2])
    got = np.asarray(weights.weights_by_language(w, lang, 3, real=[1, 1, 1, 0]))
    np.testing.assert_allclose(got, [[0.5, 0.5], [0, 0], [0.5, 0.5]])
