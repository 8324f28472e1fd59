"""models.EncoderModel (StructBERT objectives / classifier, PLUG stage 1) and the encoder MLM
loss of PLUG stage 2, each checked against the objective written out in numpy."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from plug_jax import models
from plug_jax.families.plug import PlugConfig, PlugModel
from plug_jax.families.structbert import StructBERTConfig
from plug_jax.trainer.step import extra_metrics, finalize_eval

V, L, B = 97, 12, 4


def _cfg():
    return StructBERTConfig.from_preset("tiny", vocab_size=V, max_position_embeddings=32)


def _batch(seed=0):
    rs = np.random.RandomState(seed)
    x = rs.randint(3, V, (B, L)).astype(np.int32)
    x[:, 0] = V - 2  # [CLS]
    x[3, 7:] = 0  # a shorter row
    x[2] = 0  # a padding row (end of a finite eval epoch)
    t = x.copy()
    mlm = (rs.rand(B, L) < 0.3).astype(np.int32) * (x > 0)
    mlm[:, 0] = 0
    x[mlm > 0] = V - 1
    struct = np.zeros((B, L), np.int32)
    struct[0, 3:6] = 1
    struct[1, 3:6] = mlm[1, 3:6] == 0
    return {"encoder_input_tokens": x, "encoder_token_types": (np.arange(L) > 5).astype(
        np.int32)[None].repeat(B, 0) * (x > 0), "mlm_targets": t, "mlm_weights": mlm,
            "structural_weights": struct, "label": rs.randint(0, 3, (B, 1)).astype(np.int32)}


def _log_softmax(z):
    z = np.asarray(z, np.float64)
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def test_pretraining_sums_equal_the_objective_by_hand():
    model = models.EncoderModel(_cfg())
    batch = _batch()
    params = nn.unbox(model.init_params(jax.random.PRNGKey(0), batch))
    sums = jax.device_get(model.loss_sums(params, batch, deterministic=True))
    out = jax.device_get(model.outputs(params, batch))
    real = batch["encoder_input_tokens"][:, 0] > 0
    assert list(real) == [True, True, False, True]
    lp_s = _log_softmax(out["sentence_logits"])
    lp_m = _log_softmax(out["mlm_logits"])
    total, sent, mlm_tok = 0.0, 0.0, []
    for r in np.flatnonzero(real):
        s_nll = -lp_s[r, batch["label"][r, 0]]
        sent += s_nll
        per = [s_nll]
        for key in ("mlm_weights", "structural_weights"):
            pos = np.flatnonzero(batch[key][r])
            nll = [-lp_m[r, p, batch["mlm_targets"][r, p]] for p in pos]
            per.append(np.mean(nll) if nll else 0.0)
            if key == "mlm_weights":
                mlm_tok += nll
        total += sum(per)
    np.testing.assert_allclose(sums["loss"], total, rtol=1e-5)
    np.testing.assert_allclose(sums["sentence_loss"], sent, rtol=1e-5)
    assert sums["weight"] == 3
    assert sums["correct"] == sum(np.argmax(lp_s[r]) == batch["label"][r, 0]
                                  for r in np.flatnonzero(real))
    np.testing.assert_allclose(sums["mlm_loss"], np.sum(mlm_tok), rtol=1e-5)
    assert sums["mlm_weight"] == len(mlm_tok)
    res = finalize_eval(sums)  # token-level MLM numbers, sentence accuracy per example
    np.testing.assert_allclose(res["mlm_loss"], np.mean(mlm_tok), rtol=1e-5)
    assert res["mlm_tokens"] == len(mlm_tok)
    np.testing.assert_allclose(res["accuracy"], sums["correct"] / 3)


def test_classifier_restores_the_pretrained_encoder_and_pooler():
    pre = models.EncoderModel(_cfg())
    clf = models.EncoderModel(_cfg(), objectives=("classify",), num_labels=2)
    batch = _batch()
    p_pre = nn.unbox(pre.init_params(jax.random.PRNGKey(0), batch))
    p_clf = nn.unbox(clf.init_params(jax.random.PRNGKey(1), batch))
    assert set(p_clf) == {"encoder", "pooler", "classifier"}
    assert jax.tree_util.tree_structure(p_pre["encoder"]) == \
        jax.tree_util.tree_structure(p_clf["encoder"])
    p_clf = {**p_clf, "encoder": p_pre["encoder"], "pooler": p_pre["pooler"]}
    logits = clf.outputs(p_clf, batch)
    pooled = pre.outputs(p_pre, batch)["pooled"]
    k = p_clf["classifier"]
    np.testing.assert_allclose(logits, pooled @ k["kernel"] + k["bias"], rtol=1e-5, atol=1e-6)
    sums = clf.loss_sums(p_clf, batch, deterministic=True)
    lp = _log_softmax(logits)
    lab = batch["label"][:, 0] % 2
    batch["label"] = lab[:, None]
    sums = jax.device_get(clf.loss_sums(p_clf, batch, deterministic=True))
    want = -sum(lp[r, lab[r]] for r in (0, 1, 3))
    np.testing.assert_allclose(sums["loss"], want, rtol=1e-5)


def test_bad_objectives_and_label_names_are_one_line_errors():
    with pytest.raises(ValueError, match="objectives"):
        models.EncoderModel(_cfg(), objectives=("mlm", "classify"))
    with pytest.raises(ValueError, match="label_names"):
        models.EncoderModel(_cfg(), objectives=("classify",), num_labels=2,
                            label_names=("a", "b", "c"))


def test_plug_stage_one_params_are_plug_models_structbert_subtree():
    cfg = PlugConfig.from_preset("tiny", vocab_size=V)
    stage1 = models.EncoderModel(cfg, family="plug")
    batch = _batch()
    p1 = nn.unbox(stage1.init_params(jax.random.PRNGKey(0), batch))
    e = jnp.ones((2, L), jnp.int32)
    p2 = nn.unbox(PlugModel(cfg).init(jax.random.PRNGKey(0), e, e[:, :5])["params"])
    assert set(p1) == {"structbert"}
    shapes = lambda t: jax.tree_util.tree_map(lambda a: a.shape, t)  # noqa: E731
    assert shapes(p1["structbert"]) == shapes(p2["structbert"])
    # The same encoder weights give the same MLM logits in stage 1 and stage 2.
    p2 = {**p2, "structbert": p1["structbert"]}
    out1 = stage1.outputs(p1, batch)
    ids = jnp.asarray(batch["encoder_input_tokens"])
    pos = jnp.broadcast_to(jnp.arange(L), ids.shape)
    out2 = PlugModel(cfg).apply({"params": p2}, ids, ids[:, :5],
                                encoder_token_type_ids=jnp.asarray(batch["encoder_token_types"]),
                                encoder_segment_ids=(ids > 0).astype(jnp.int32),
                                mlm_positions=pos)
    real = np.asarray(ids > 0)
    np.testing.assert_allclose(np.asarray(out1["mlm_logits"])[real],
                               np.asarray(out2["mlm_logits"])[real], rtol=1e-4, atol=1e-5)


def test_stage_two_adds_the_encoder_mlm_loss():
    cfg = PlugConfig.from_preset("tiny", vocab_size=V)
    model = models.EncoderDecoderLM(cfg, family="plug")
    rs = np.random.RandomState(1)
    enc = rs.randint(3, V, (2, L)).astype(np.int32)
    dec_t = rs.randint(3, V, (2, 6)).astype(np.int32)
    w = (rs.rand(2, L) < 0.3).astype(np.int32)
    batch = {"encoder_input_tokens": np.where(w > 0, V - 1, enc).astype(np.int32),
             "decoder_input_tokens": np.pad(dec_t[:, :-1], ((0, 0), (1, 0))),
             "decoder_target_tokens": dec_t, "decoder_loss_weights": np.ones_like(dec_t),
             "encoder_mlm_targets": enc, "encoder_mlm_weights": w}
    params = nn.unbox(model.init_params(jax.random.PRNGKey(0), batch))
    with_mlm = jax.device_get(model.loss_sums(params, batch, deterministic=True))
    plain = {k: v for k, v in batch.items() if not k.startswith("encoder_mlm")}
    without = jax.device_get(model.loss_sums(params, plain, deterministic=True))
    out = model.outputs(params, batch, mlm_positions=jnp.broadcast_to(jnp.arange(L), (2, L)))
    lp = _log_softmax(out["mlm_logits"])
    mlm = -sum(lp[r, p, enc[r, p]] for r, p in zip(*np.nonzero(w)))
    np.testing.assert_allclose(with_mlm["mlm_loss"], mlm, rtol=1e-5)
    np.testing.assert_allclose(with_mlm["loss"], without["loss"] + mlm, rtol=1e-5)
    assert with_mlm["mlm_weight"] == w.sum() and with_mlm["weight"] == without["weight"] == 12


def test_extra_metrics_groups_have_their_own_denominator():
    sums = {"loss": 10.0, "weight": 4.0, "z_loss": 0.0, "correct": 2.0, "mlm_loss": 9.0,
            "mlm_correct": 1.0, "mlm_weight": 3.0, "aux_loss/x": 8.0}
    m = extra_metrics(sums, 4.0)
    assert m == {"mlm_loss": 3.0, "mlm_accuracy": 1.0 / 3.0, "mlm_tokens": 3.0,
                 "aux_loss/x": 2.0}
