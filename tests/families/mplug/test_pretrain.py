"""mPLUG pre-training / retrieval objectives (models.ImageTextPretrain): ITC with
multi-positive targets, ITM hard negatives, MLM masking, the prefix-LM split, ITM re-ranking
and the whole-set recall."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from plug_jax.families.mplug.config import MPlugConfig
from plug_jax.models import ImageTextPretrain


@pytest.fixture(scope="module")
def setup():
    cfg = MPlugConfig.from_preset("tiny")
    model = ImageTextPretrain(cfg)
    rng = np.random.default_rng(0)
    tok = rng.integers(2, 100, (6, 10)).astype(np.int32)
    tok[:, 7:] = 0
    tok[:, 6] = 1
    tok[3] = tok[1]  # pairs 1 and 3 have one caption: each other's positives
    batch = {"image": rng.normal(size=(6, 64, 64, 3)).astype(np.float32),
             "decoder_target_tokens": tok}
    params = nn.unbox(jax.jit(model.init_params)(jax.random.PRNGKey(0), batch))
    return model, params, batch


def _log_softmax(x, axis):
    x = x - x.max(axis=axis, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=axis, keepdims=True))


def test_itc_is_the_multi_positive_symmetric_cross_entropy(setup):
    model, params, batch = setup
    m = dataclasses.replace(model, itm_weight=0.0, mlm_weight=0.0, lm_weight=0.0)
    emb = jax.device_get(jax.jit(m.embed)(params, batch, None))
    sums = jax.device_get(jax.jit(m.global_loss_sums)(params, emb, batch))
    sim = (np.asarray(emb["image_feat"], np.float64) @ np.asarray(emb["text_feat"]).T
           / float(params["temp"]))
    pos = np.eye(6)
    pos[1, 3] = pos[3, 1] = 1
    tgt = pos / pos.sum(1, keepdims=True)
    i2t = -(tgt * _log_softmax(sim, 1)).sum(1)
    t2i = -(tgt.T * _log_softmax(sim, 0).T).sum(1)
    expect = float(np.sum(0.5 * (i2t + t2i)))
    assert sums["itc_loss"] == pytest.approx(expect, rel=1e-5)
    assert sums["loss"] == pytest.approx(expect, rel=1e-5)  # the only term, times B / B
    assert sums["weight"] == 6


def test_hard_negatives_are_never_positives_and_follow_the_similarities(setup):
    model, params, batch = setup
    # Similarities chosen so image 0 is most similar to text 5, then 2; text 0 (its own)
    # and text 4 (an identical caption, a positive) must never be drawn.
    tok = batch["decoder_target_tokens"].copy()
    tok[4] = tok[0]
    sim = np.full((6, 6), -5.0)
    sim[0] = [9.0, -5.0, 1.0, -5.0, 9.0, 2.0]
    valid = np.ones(6, np.float32)
    pos = np.asarray(model._positives(tok, valid))
    keep = np.ones((6, 6), bool)
    u = np.linspace(0.0005, 0.9995, 2000)
    draws = np.asarray([model._draw_negatives(jnp.asarray(sim), jnp.asarray(pos),
                                              jnp.asarray(keep), jnp.full((6, 2), x))[0][0]
                        for x in u[::50]])
    assert not np.isin(draws, [0, 4]).any()
    w = np.exp([1.0, 2.0]) / np.exp([1.0, 2.0]).sum()  # text 2 vs text 5; others ~ e^-5
    many = np.asarray(jax.vmap(lambda x: model._draw_negatives(
        jnp.asarray(sim), jnp.asarray(pos), jnp.asarray(keep), jnp.full((6, 2), x))[0][0])(
        jnp.asarray(u)))
    frac5 = np.mean(many == 5)
    assert frac5 == pytest.approx(w[1], abs=0.02)
    assert np.mean(many == 2) == pytest.approx(w[0], abs=0.02)


def test_mlm_masks_only_caption_tokens_at_the_rate(setup):
    model, _, _ = setup
    rng = np.random.default_rng(1)
    tok = rng.integers(2, 100, (256, 64)).astype(np.int32)
    tok[:, 50] = 1
    tok[:, 51:] = 0
    ids, mask = model._text(tok)
    sel = model._mlm_select(ids, jax.random.PRNGKey(3))
    sel = np.asarray(sel)
    ids = np.asarray(ids)
    assert not sel[:, 0].any()  # never [CLS]
    assert not sel[ids <= 1].any()  # never padding or EOS
    rate = sel.sum() / (ids > 1)[:, 1:].sum()
    assert rate == pytest.approx(0.15, abs=0.01)
    new = np.asarray(model._mlm_ids(jnp.asarray(ids), jnp.asarray(sel), jax.random.PRNGKey(4)))
    assert (new[~sel] == ids[~sel]).all()
    frac_mask = np.mean(new[sel] == model._id("mask_id"))
    assert frac_mask == pytest.approx(0.8, abs=0.03)  # ~2000 masked: sd 0.009


def test_prefix_split_cuts_the_caption():
    cfg = MPlugConfig.from_preset("tiny")
    model = ImageTextPretrain(cfg)
    tok = np.array([[5, 6, 7, 8, 1, 0, 0], [9, 10, 1, 0, 0, 0, 0]], np.int32)
    ids, mask = model._text(tok)
    cls = model._id("cls_id")
    assert np.asarray(ids).tolist()[0] == [cls, 5, 6, 7, 8, 1, 0]
    pmask, dec_in, dec_tgt, w = (np.asarray(x) for x in model._prefix(
        ids, mask, jnp.asarray([2.0, 1.0])))
    assert pmask.astype(int).tolist() == [[1, 1, 1, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0, 0]]
    assert dec_tgt.tolist() == [[7, 8, 1, 0, 0, 0, 0], [10, 1, 0, 0, 0, 0, 0]]
    assert dec_in.tolist() == [[0, 7, 8, 1, 0, 0, 0], [0, 10, 1, 0, 0, 0, 0]]
    assert w.tolist() == [[1, 1, 1, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0, 0]]


def _grads_and_sums(model, params, batch):
    def f(p):
        sums = model.loss_sums(p, batch, jax.random.PRNGKey(1))
        return sums["loss"], sums
    return jax.device_get(jax.jit(jax.grad(f, has_aux=True))(params))


def test_every_objective_reports_and_has_gradients(setup):
    model, params, batch = setup
    grads, sums = _grads_and_sums(model, params, batch)
    for g in ("itc", "itm", "mlm", "lm"):
        assert sums[f"{g}_weight"] > 0 and np.isfinite(sums[f"{g}_loss"])
    assert sums["itm_weight"] == 18  # 1 positive + 2 hard negatives per pair
    for part in ("vision", "text_encoder", "fusion", "decoder", "itm_head", "mlm_head",
                 "vision_proj", "text_proj", "temp"):
        norm = float(sum(np.sum(g ** 2) for g in jax.tree_util.tree_leaves(grads[part])))
        assert norm > 0, part
    # retrieval fine-tune: no MLM / prefix LM, and no gradient reaches the decoder
    g2, s2 = _grads_and_sums(dataclasses.replace(model, mlm_weight=0.0, lm_weight=0.0),
                             params, batch)
    assert float(sum(np.sum(g ** 2) for g in jax.tree_util.tree_leaves(g2["decoder"]))) == 0
    assert "mlm_loss" not in s2 and "lm_loss" not in s2


def test_rerank_scores_only_the_itc_top_k(setup):
    model, params, batch = setup
    out = jax.device_get(jax.jit(model.eval_outputs)(params, batch))
    itc = np.asarray(out["image_feat"], np.float64) @ np.asarray(out["text_feat"]).T
    i2t, t2i = model.rerank(params, itc, out["vision"], out["text"], out["text_mask"], k=2)
    assert (np.isfinite(i2t).sum(1) == 2).all() and (np.isfinite(t2i).sum(0) == 2).all()
    top = np.argsort(-itc, 1)[:, :2]
    for i in range(6):
        assert set(np.flatnonzero(np.isfinite(i2t[i]))) == set(top[i])
    # the re-ranked score of a candidate is its ITM score (logit 1 - logit 0) + ITC cosine
    i, j = 0, int(top[0, 0])
    fused = model.module.apply({"params": params}, out["vision"][i:i + 1],
                               jnp.ones((1, out["vision"].shape[1]), jnp.int32),
                               out["text"][j:j + 1], out["text_mask"][j:j + 1],
                               method="fuse")[1]
    logit = np.asarray(model.module.apply({"params": params}, fused, method="itm_logits"))[0]
    assert i2t[i, j] == pytest.approx(logit[1] - logit[0] + itc[i, j], abs=1e-4)


def test_whole_set_recall_on_known_features(setup):
    model, params, batch = setup
    out = jax.device_get(jax.jit(model.eval_outputs)(params, batch))
    # features that put every caption's image first under ITC: R@1 = 1 both ways
    eye = np.eye(6, 32, dtype=np.float32)
    eye[3] = eye[1]  # pairs 1 and 3 share a caption: identical features
    res = model.whole_set_metrics(params, {**out, "image_feat": eye, "text_feat": eye})
    assert res["itc_i2t_r@1"] == 1.0 and res["itc_t2i_r@1"] == 1.0
    assert res["retrieval_candidates"] == 6
    # blank features: all ITC scores tie; pessimistic ties give 0, random tie-breaks chance
    same = np.ones((6, 32), np.float32) / np.sqrt(32)
    blank = {**out, "image_feat": same, "text_feat": same}
    assert model.whole_set_metrics(params, blank)["itc_i2t_r@1"] == 0.0
    chance = model.whole_set_metrics(params, blank, tie_break_seed=0)
    assert 0.0 < chance["itc_mean_recall"] < 1.0


def test_ids_outside_the_vocabulary_are_refused():
    cfg = MPlugConfig.from_preset("tiny")
    with pytest.raises(ValueError, match="mask_id=200 is outside the vocabulary"):
        ImageTextPretrain(cfg, mask_id=200)


# ------------------------------------------------------------- momentum distillation
def _mod(model, **kw):
    return dataclasses.replace(model, momentum_distillation=True, itm_weight=0.0,
                               mlm_weight=0.0, lm_weight=0.0, **kw)


def test_momentum_state_starts_as_a_copy_and_moves_by_ema(setup):
    model, params, batch = setup
    m = _mod(model, queue_size=12, momentum=0.9)
    state = jax.jit(m.init_state)(params, jax.random.PRNGKey(1))
    assert sorted(state["params_m"]) == ["text_encoder", "text_proj", "vision", "vision_proj"]
    for k, sub in state["params_m"].items():
        jax.tree_util.tree_map(np.testing.assert_array_equal, sub, params[k])
    assert state["image_queue"].shape == (12, m.config.embed_dim)
    np.testing.assert_allclose(np.linalg.norm(state["image_queue"], axis=1), 1.0, rtol=1e-5)
    assert (np.asarray(state["idx_queue"]) == -1).all() and int(state["queue_ptr"]) == 0
    # parameters moved by +1 everywhere: the copies move by (1 - momentum) = 0.1
    moved = jax.tree_util.tree_map(lambda x: x + 1.0, params)
    new, ctx = jax.jit(m.begin_step)(state, moved, batch)
    got = np.asarray(new["params_m"]["vision_proj"]["kernel"])
    np.testing.assert_allclose(got, np.asarray(params["vision_proj"]["kernel"]) + 0.1,
                               atol=1e-6)
    # the momentum features are the ITC features of the momentum copies
    merged = {**moved, **new["params_m"]}
    emb = m.embed(merged, batch, None)
    np.testing.assert_allclose(ctx["image_feat_m"], emb["image_feat"], atol=1e-5)
    np.testing.assert_allclose(ctx["text_feat_m"], emb["text_feat"], atol=1e-5)
    ids = np.asarray(ctx["idx"])
    assert ids[1] == ids[3] and len(set(ids.tolist())) == 5  # rows 1 and 3: one caption


def test_enqueue_writes_at_the_pointer_and_wraps(setup):
    model, params, batch = setup
    m = _mod(model, queue_size=12)
    state = m.init_state(params, jax.random.PRNGKey(1))
    _, ctx = m.begin_step(state, params, batch)
    s1 = m.end_step(state, ctx)
    assert int(s1["queue_ptr"]) == 6
    np.testing.assert_array_equal(s1["image_queue"][:6], ctx["image_feat_m"])
    np.testing.assert_array_equal(s1["image_queue"][6:], state["image_queue"][6:])
    np.testing.assert_array_equal(s1["idx_queue"][:6], ctx["idx"])
    s2 = m.end_step(s1, ctx)
    s3 = m.end_step(s2, ctx)  # 18 rows into 12: the pointer wraps to 6, rows 0..5 rewritten
    assert int(s2["queue_ptr"]) == 0 and int(s3["queue_ptr"]) == 6
    np.testing.assert_array_equal(s3["text_queue"][6:], ctx["text_feat_m"])
    with pytest.raises(ValueError, match="multiple of the global batch size 6"):
        _mod(model, queue_size=16).begin_step(state, params, batch)


def test_distilled_itc_is_albef_soft_targets_over_batch_and_queue(setup):
    model, params, batch = setup
    alpha = 0.4
    m = _mod(model, queue_size=6, alpha=alpha)
    state = m.init_state(params, jax.random.PRNGKey(1))
    _, ctx = m.begin_step(state, params, batch)
    state = m.end_step(state, ctx)  # the queue now holds this batch: 6 more positives
    # new momentum features: another momentum (the parameters moved) for a visible gap
    moved = jax.tree_util.tree_map(lambda x: x * 1.05, params)
    state, ctx = m.begin_step(state, moved, batch)
    emb = jax.device_get(m.embed(params, batch, None))
    sums = jax.device_get(m.global_loss_sums(params, emb, batch, context=ctx))
    temp = float(params["temp"])
    f = lambda x: np.asarray(x, np.float64)  # noqa: E731
    img_all = np.concatenate([f(ctx["image_feat_m"]), f(state["image_queue"])])
    txt_all = np.concatenate([f(ctx["text_feat_m"]), f(state["text_queue"])])
    same = np.eye(6)
    same[1, 3] = same[3, 1] = 1
    pos = np.concatenate([same, same], 1)  # the queued copy of each caption is positive too
    pos /= pos.sum(1, keepdims=True)

    def side(q, q_m, keys):
        target = alpha * np.exp(_log_softmax(q_m @ keys.T / temp, 1)) + (1 - alpha) * pos
        return -(target * _log_softmax(q @ keys.T / temp, 1)).sum(1)

    i2t = side(f(emb["image_feat"]), f(ctx["image_feat_m"]), txt_all)
    t2i = side(f(emb["text_feat"]), f(ctx["text_feat_m"]), img_all)
    expect = float(np.sum(0.5 * (i2t + t2i)))
    assert sums["itc_loss"] == pytest.approx(expect, rel=1e-5)
    # and it is not the in-batch loss
    plain = jax.device_get(m.global_loss_sums(params, emb, batch))
    assert abs(float(plain["itc_loss"]) - expect) > 1e-3


def test_train_steps_update_the_state_and_resume_exactly(setup, tmp_path):
    from plug_jax.optim import adamw
    from plug_jax.trainer import checkpointing, loop
    from plug_jax.trainer.step import make_train_step
    model, _, batch = setup
    m = _mod(model, queue_size=12, momentum=0.5)
    part = loop.MeshConfig(rules="dp").partitioner()
    builder = loop.StateBuilder(m, part, adamw(1e-2), batch)
    assert "model_state" in builder.abstract
    step = jax.jit(make_train_step(m))
    rng = jax.random.PRNGKey(3)
    s0 = builder.state(builder.init(jax.random.PRNGKey(0)))
    s1, _ = step(s0, batch, rng)
    s2, _ = step(s1, batch, rng)
    assert int(s1.model_state["queue_ptr"]) == 6 and int(s2.model_state["queue_ptr"]) == 0
    # m1 = 0.5 m0 + 0.5 p0 = p0 (the copies start equal); m2 = 0.5 p0 + 0.5 p1
    k = lambda s, t: np.asarray(t(s)["vision_proj"]["kernel"])  # noqa: E731
    np.testing.assert_allclose(k(s2, lambda s: s.model_state["params_m"]),
                               0.5 * k(s0, lambda s: s.params) + 0.5 * k(s1, lambda s: s.params),
                               atol=1e-6)
    ckpt = checkpointing.TrainCheckpointer(str(tmp_path), async_save=False)
    ckpt.save(1, s1.arrays(), {"step": 1}, "", {})
    ckpt.manager.wait_until_finished()
    back = ckpt.restore(1, builder.abstract, items=("state",))["state"]
    r2, _ = step(builder.state(back), batch, rng)
    for a, b in zip(jax.tree_util.tree_leaves(r2.arrays()), jax.tree_util.tree_leaves(s2.arrays())):
        np.testing.assert_array_equal(a, b)


def test_params_only_restore_keeps_a_saved_momentum_state_or_derives_one(setup, tmp_path):
    from plug_jax.optim import adamw
    from plug_jax.trainer import checkpointing, loop
    model, params, batch = setup
    m = _mod(model, queue_size=12)
    builder = loop.StateBuilder(m, loop.MeshConfig(rules="dp").partitioner(), adamw(1e-3),
                                batch)
    fresh = builder.init(jax.random.PRNGKey(5))
    saved = dict(fresh)
    saved["params"] = jax.tree_util.tree_map(lambda x: x * 2, fresh["params"])
    saved["model_state"] = jax.tree_util.tree_map(lambda x: x + 1, fresh["model_state"])
    with_state = checkpointing.TrainCheckpointer(str(tmp_path / "a"), async_save=False)
    with_state.save(1, saved, {"step": 1}, "", {})
    without = checkpointing.TrainCheckpointer(str(tmp_path / "b"), async_save=False)
    without.save(1, {k: v for k, v in saved.items() if k != "model_state"}, {"step": 1}, "", {})
    for c in (with_state, without):
        c.manager.wait_until_finished()
    got, _ = loop._restore(with_state, 1, builder, "params_only", fresh, {})
    for a, b in zip(jax.tree_util.tree_leaves(got["model_state"]),
                    jax.tree_util.tree_leaves(saved["model_state"])):
        np.testing.assert_array_equal(a, b)
    got, _ = loop._restore(without, 1, builder, "params_only", fresh, {})
    for k, sub in got["model_state"]["params_m"].items():  # copies of the restored params
        jax.tree_util.tree_map(np.testing.assert_array_equal, sub, saved["params"][k])


def test_alpha_ramps_up_over_the_warmup_steps(setup):
    model, params, batch = setup
    m = _mod(model, queue_size=6, alpha=0.4, alpha_warmup_steps=4)
    state = m.init_state(params, jax.random.PRNGKey(1))
    seen = []
    for _ in range(6):
        state, ctx = m.begin_step(state, params, batch)
        seen.append(float(ctx["alpha"]))
        state = m.end_step(state, ctx)
    np.testing.assert_allclose(seen, [0.0, 0.1, 0.2, 0.3, 0.4, 0.4], atol=1e-7)
    assert int(state["steps"]) == 6
    # alpha 0: the targets are the positives alone
    fresh = m.init_state(params, jax.random.PRNGKey(1))
    _, ctx = m.begin_step(fresh, params, batch)
    emb = m.embed(params, batch, None)
    hard = m.global_loss_sums(params, emb, batch, context=ctx)["itc_loss"]
    m0 = _mod(model, queue_size=6, alpha=0.0)
    _, ctx0 = m0.begin_step(m0.init_state(params, jax.random.PRNGKey(1)), params, batch)
    np.testing.assert_allclose(hard, m0.global_loss_sums(params, emb, batch,
                                                         context=ctx0)["itc_loss"], rtol=1e-6)
