"""The AMTSS student: shared encoder, per-language projections, the task model's sums."""
import jax
import numpy as np
import optax
import pytest
from flax import linen as nn

from plug_jax.families.amtss.config import PRESETS, AMTSSConfig
from plug_jax.families.amtss.model import AMTSSStudentModel
from plug_jax.families.amtss.network import param_count
from plug_jax.families.structbert.network import param_count as structbert_count

CFG = AMTSSConfig.from_preset("tiny", vocab_size=64, num_layers=1, max_position_embeddings=16)
B, L, N, C = 12, 8, 6, 5


def batch(seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, 64, size=(B, L)).astype(np.int32)
    ids[:, 0] = 2  # [CLS]
    ids[-1] = 0  # a padding row
    return {"encoder_input_tokens": ids, "lang": (np.arange(B) % 6)[:, None],
            "label": rng.integers(0, C, size=(B, 1)),
            "teacher_logits": rng.normal(size=(B, N, C)).astype(np.float32)}


def test_presets_and_param_tree():
    assert set(PRESETS) == {"tiny", "small", "base"}
    assert CFG.encoder.num_layers == 1 and CFG.languages == ("zh", "en", "de", "fr", "es", "ja")
    with pytest.raises(ValueError, match="preset"):
        AMTSSConfig.from_preset("huge")
    params = nn.unbox(jax.eval_shape(AMTSSStudentModel(CFG).init_params,
                                     jax.random.PRNGKey(0), batch()))
    h = CFG.hidden_size
    assert params["lang_proj"]["kernel"].shape == (h, 6, h)
    assert params["lang_proj"]["bias"].shape == (6, h)
    assert params["classifier"]["kernel"].shape == (h, C)
    assert set(params) == {"encoder", "pooler", "lang_proj", "classifier"}
    # the student = the StructBERT encoder + pooler + L projections + the classifier
    enc = structbert_count(CFG.encoder, encoder_only=True)
    assert param_count(CFG) == enc + (h * h + h) + 6 * (h * h + h) + (h * C + C)
    base = param_count(PRESETS["base"])
    assert 270e6 < base < 290e6  # XLM-R-base shaped encoder (278M) + head


def test_language_projection_selects_by_lang():
    model = AMTSSStudentModel(CFG)
    b = {**batch(), "lang": np.arange(B) % 6}
    params = nn.unbox(jax.jit(model.init_params)(jax.random.PRNGKey(0), b))
    outputs = jax.jit(model.outputs)
    same = np.asarray(outputs(params, {**b, "lang": np.zeros(B, np.int64)}))
    # zero-initialised residual projections: at init every language gives the same logits
    np.testing.assert_allclose(np.asarray(outputs(params, b)), same, atol=1e-6)
    p = dict(params, lang_proj=dict(params["lang_proj"]))
    p["lang_proj"]["bias"] = p["lang_proj"]["bias"].at[3].set(1.0)  # only 'fr' changes
    out = np.asarray(outputs(p, b))
    fr = np.asarray(b["lang"]).reshape(-1) == 3
    assert np.all(np.abs(out[fr] - same[fr]).max(-1) > 1e-4)
    np.testing.assert_allclose(out[~fr], same[~fr], atol=1e-6)
    # the gradient reaches a language's projection only from its own examples
    only_de = {**b, "lang": np.full(B, 2)}
    g = jax.jit(jax.grad(lambda q: model.loss_sums(q, only_de, deterministic=True)["loss"]))(
        params)
    gk = np.asarray(g["lang_proj"]["kernel"])
    assert np.abs(gk[:, 2]).max() > 0 and np.abs(np.delete(gk, 2, axis=1)).max() == 0


def test_loss_sums_keys_and_language_groups():
    model = AMTSSStudentModel(CFG, temperature=2.0, tau=0.5, alpha=0.5)
    b = batch()
    params = nn.unbox(jax.jit(model.init_params)(jax.random.PRNGKey(0), b))
    sums = jax.device_get(jax.jit(model.loss_sums, static_argnums=3)(params, b, None, True))
    assert sums["weight"] == B - 1
    np.testing.assert_allclose(sums["loss"], sums["distill_loss"] + 0.5 * sums["ce_loss"],
                               rtol=1e-5)
    assert sum(sums[f"{g}_weight"] for g in CFG.languages) == B - 1
    np.testing.assert_allclose(sum(sums[f"{g}_loss"] for g in CFG.languages), sums["ce_loss"],
                               rtol=1e-5)
    assert sums["teacher_importance"].shape == (N,)
    np.testing.assert_allclose(sums["teacher_importance"].sum(), B - 1, rtol=1e-5)
    uni = AMTSSStudentModel(CFG, weighting="uniform")
    uni = jax.device_get(jax.jit(uni.loss_sums, static_argnums=3)(params, b, None, True))
    np.testing.assert_allclose(uni["teacher_importance"], (B - 1) / N, rtol=1e-5)
    with pytest.raises(ValueError, match="teacher_logits"):
        model.loss_sums(params, {**b, "teacher_logits": b["teacher_logits"][..., :3]})
    with pytest.raises(ValueError, match="weighting"):
        AMTSSStudentModel(CFG, weighting="max")
    meta = model.metadata()
    assert meta["family"] == "amtss" and meta["weighting"] == "max_margin"
    assert model.flops_per_step(8, {"inputs": L}) > 0


def test_student_learns_from_teachers_on_a_toy_task():
    """Label = the language-dependent class of token 1; three teachers: one right and sure,
    one noisy, one wrong. A few steps of Adam bring the student's accuracy up."""
    rng = np.random.default_rng(0)
    n = 96
    ids = rng.integers(10, 64, size=(n, L)).astype(np.int32)
    ids[:, 0] = 2
    lang = np.arange(n) % 6
    label = (ids[:, 1] + lang) % C
    good = 4.0 * np.eye(C)[label]
    noisy = good + rng.normal(scale=3.0, size=(n, C))
    wrong = 4.0 * np.eye(C)[(label + 1) % C]
    data = {"encoder_input_tokens": ids, "lang": lang, "label": label,
            "teacher_logits": np.stack([good, noisy, wrong], 1).astype(np.float32)}
    model = AMTSSStudentModel(CFG, temperature=2.0, tau=0.2, alpha=0.5)
    params = jax.jit(model.init_params)(jax.random.PRNGKey(1), data)
    opt = optax.adam(3e-3)
    state = opt.init(params)

    @jax.jit
    def step(p, s):
        def f(q):
            sums = model.loss_sums(q, data, deterministic=True)
            return sums["loss"] / sums["weight"], sums
        (loss, sums), g = jax.value_and_grad(f, has_aux=True)(p)
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s, sums

    first = None
    for _ in range(60):
        params, state, sums = step(params, state)
        first = first or float(sums["loss"] / sums["weight"])
    sums = jax.device_get(sums)
    assert float(sums["loss"] / sums["weight"]) < 0.5 * first
    assert sums["correct"] / sums["weight"] > 0.9
    imp = sums["teacher_importance"] / sums["weight"]
    assert imp[0] > imp[1] > imp[2]  # the max-margin teacher dominates
