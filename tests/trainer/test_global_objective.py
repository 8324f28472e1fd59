"""Whole-batch (contrastive) objectives: the negatives span the global batch across devices
and microbatches, and the GradCache step gives the one-batch loss and gradient."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from plug_jax import losses
from plug_jax.families.clip.config import ClipConfig
from plug_jax.models import DualEncoder
from plug_jax.trainer import step as step_lib
from plug_jax.trainer.loop import MeshConfig, StateBuilder

B = 16


def _model():
    cfg = ClipConfig.from_preset("tiny", vision_image_size=16, vision_patch_size=8,
                                 text_vocab_size=64, text_max_len=12, layers=1)
    return DualEncoder(cfg, family="clip")


def _batch(seed=0, pad_rows=(5,)):
    rs = np.random.RandomState(seed)
    ids = rs.randint(2, 64, size=(B, 12)).astype(np.int32)
    for r in range(B):  # EOS (1) then padding
        end = rs.randint(3, 11)
        ids[r, end] = 1
        ids[r, end + 1:] = 0
    for r in pad_rows:  # a padding row: no text, so not a pair and not a negative
        ids[r] = 0
    return {"image": rs.randn(B, 16, 16, 3).astype(np.float32), "decoder_target_tokens": ids}


def _sums_and_grads(mesh_cfg, k, batch):
    model = _model()
    part = mesh_cfg.partitioner()
    import optax
    builder = StateBuilder(model, part, optax.sgd(0.1), batch)
    arrays = builder.init(jax.random.PRNGKey(0))
    fn = step_lib._global_sums_and_grads(model, k)
    jitted = part.jit(fn, in_shardings=(builder.shardings["params"],
                                        part.batch_shardings(batch), None))
    sums, grads = jitted(arrays["params"], part.shard_batch(batch), jax.random.PRNGKey(1))
    return jax.device_get(sums), jax.device_get(grads), jax.device_get(arrays["params"])


def test_contrastive_sums_match_numpy_and_ignore_padding_rows():
    rs = np.random.RandomState(0)
    logits = rs.randn(6, 6).astype(np.float32) * 3
    valid = np.array([1, 1, 0, 1, 1, 1], np.float32)
    got = jax.device_get(losses.contrastive_sums(jnp.asarray(logits), jnp.asarray(valid)))
    keep = np.flatnonzero(valid)
    sub = logits[np.ix_(keep, keep)].astype(np.float64)

    def ce(m):  # row-wise cross-entropy with the diagonal as the target
        m = m - m.max(1, keepdims=True)
        return -(np.diag(m) - np.log(np.exp(m).sum(1)))
    want = 0.5 * (ce(sub) + ce(sub.T))
    np.testing.assert_allclose(got["loss"], want.sum(), rtol=1e-5)
    assert got["weight"] == 5
    hits = 0.5 * ((sub.argmax(1) == np.arange(5)) + (sub.argmax(0) == np.arange(5)))
    np.testing.assert_allclose(got["correct"], hits.sum())
    # a padding row's logits do not matter at all
    logits2 = logits.copy()
    logits2[2, :] = 100.0
    logits2[:, 2] = 100.0
    got2 = jax.device_get(losses.contrastive_sums(jnp.asarray(logits2), jnp.asarray(valid)))
    np.testing.assert_allclose(got2["loss"], got["loss"], rtol=1e-6)


@pytest.fixture(scope="module")
def eight_devices_two_microbatches():
    return _sums_and_grads(MeshConfig(ici=(2, 4, 1, 1)), 2, _batch())


def test_eight_devices_two_microbatches_equal_one_device_one_batch(
        eight_devices_two_microbatches):
    """data 2 x fsdp 4 with GradCache over 2 microbatches vs 1 device, 1 batch (float32)."""
    batch = _batch()
    one_sums, one_grads, p1 = _sums_and_grads(MeshConfig(ici=(1, 1, 1, 1), num_devices=1), 1,
                                              batch)
    eight_sums, eight_grads, p8 = eight_devices_two_microbatches
    assert len(jax.devices()) == 8
    # same initial parameters on both meshes
    jax.tree_util.tree_map(np.testing.assert_array_equal, p1, p8)
    assert one_sums["weight"] == B - 1  # the padding row is out
    for name in ("loss", "correct", "weight"):
        np.testing.assert_allclose(eight_sums[name], one_sums[name], rtol=1e-5, atol=1e-5)
    flat1 = jax.tree_util.tree_leaves_with_path(one_grads)
    flat8 = dict(jax.tree_util.tree_leaves_with_path(eight_grads))
    assert len(flat1) == len(flat8) > 10
    for path, g1 in flat1:
        g8 = flat8[path]
        # Floor 1e-2: the attention key biases' gradients are zero in exact arithmetic (a
        # softmax does not see a shift shared by a query's logits), so theirs are rounding
        # noise of ~1e-8, whose digits differ between CPUs (AMD EPYC vs Intel Xeon).
        scale = max(float(np.abs(g1).max()), 1e-2)
        np.testing.assert_allclose(g8, g1, rtol=0, atol=1e-5 * scale,
                                   err_msg=jax.tree_util.keystr(path))
    # the temperature gets its gradient from the loss directly (not through embeddings)
    assert abs(float(one_grads["logit_scale"])) > 0


def test_microbatch_local_negatives_would_differ(eight_devices_two_microbatches):
    """Control: a loss whose negatives were only the microbatch's own rows (summed over 2
    microbatches) is a different objective; the global step must not compute it."""
    batch = _batch()
    model = _model()
    part = MeshConfig(ici=(1, 1, 1, 1), num_devices=1).partitioner()
    import optax
    arrays = StateBuilder(model, part, optax.sgd(0.1), batch).init(jax.random.PRNGKey(0))
    loss = jax.jit(lambda p, b: model.loss_sums(p, b, None, True)["loss"])
    local = sum(float(loss(arrays["params"], {k: v[i * 8:(i + 1) * 8]
                                              for k, v in batch.items()}))
                for i in range(2))
    glob = eight_devices_two_microbatches[0]
    assert abs(local - float(glob["loss"])) > 1e-2


def test_a_model_declaring_a_global_objective_needs_embed_and_loss():
    class Bad:
        objective = "global"
    with pytest.raises(ValueError, match="embed"):
        step_lib.objective_kind(Bad())
