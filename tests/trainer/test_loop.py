"""The training loop on the Shop World LM task: meshes, checkpoints, restore modes, guards."""
import os

import jax
import numpy as np
import pytest

import plug_jax.tasks  # noqa: F401  (registers the Shop World tasks)
from plug_jax import models
from plug_jax.trainer import loop
from plug_jax.trainer.checkpointing import CheckpointError
from plug_jax.trainer.metrics import read_metrics

TASK = "gpt3_shoplm_zh_v1"
DATA = loop.DatasetConfig(TASK, {"targets": 64}, batch_size=8)
EVAL = loop.DatasetConfig(TASK, {"targets": 64}, split="validation", batch_size=8,
                          shuffle=False)
ONE_DEVICE = loop.MeshConfig((1, 1, 1, 1), rules="fsdp", num_devices=1)


def _model(**kw):
    return models.gpt3("tiny", **kw)


def _train(model_dir, steps, mesh=ONE_DEVICE, **kw):
    args = dict(model=_model(), model_dir=str(model_dir), train_steps=steps,
                train_dataset_cfg=DATA, mesh=mesh, learning_rate=3e-3, log_period=1,
                checkpoint_period=100, peak_flops=1e11, async_checkpoints=False)
    args.update(kw)
    return loop.train(**args)


def _losses(model_dir):
    rows = {}
    for r in read_metrics(model_dir):
        if "loss" in r:
            rows[r["step"]] = r
    return rows


def _tree_equal(a, b):
    eq = jax.tree_util.tree_map(lambda x, y: np.array_equal(np.asarray(x), np.asarray(y)),
                                jax.device_get(a), jax.device_get(b))
    return all(jax.tree_util.tree_leaves(eq))


def test_fsdp_tp_on_8_devices_gives_single_device_losses(tmp_path):
    _train(tmp_path / "one", 5)
    _train(tmp_path / "eight", 5, mesh=loop.MeshConfig((1, -1, 1, 2), rules="fsdp_tp"))
    one, eight = _losses(tmp_path / "one"), _losses(tmp_path / "eight")
    assert sorted(one) == sorted(eight) == [1, 2, 3, 4, 5]
    for s in one:
        np.testing.assert_allclose(eight[s]["loss"], one[s]["loss"], rtol=1e-5)
    assert one[5]["loss"] < one[1]["loss"]
    for key in ("step", "loss", "learning_rate", "grad_norm", "tokens_per_sec", "mfu"):
        assert key in one[5]


def test_checkpoint_from_fsdp_restores_on_tp_and_one_device(tmp_path):
    out = _train(tmp_path, 2, mesh=loop.MeshConfig((1, -1, 1, 1), rules="fsdp"))
    want = jax.device_get(out["state"].params)
    kernel = out["state"].params["decoder"]["layers"]["mlp"]["wi"]["kernel"]
    assert kernel.sharding.spec[1] == "fsdp"  # it really was sharded over 8 devices
    for mesh in (loop.MeshConfig((-1, 1, 1, 4), rules="tp"), ONE_DEVICE):
        params, step, part = loop.load_for_inference(_model(), str(tmp_path), DATA, mesh)
        assert step == 2 and len(part.mesh.devices.flat) == (8 if mesh.rules == "tp" else 1)
        assert _tree_equal(params, want)
    # A full resume (optimizer state too) onto the tp mesh: nothing left to train.
    again = _train(tmp_path, 2, mesh=loop.MeshConfig((-1, 1, 1, 4), rules="tp"))
    assert int(again["state"].step) == 2
    assert _tree_equal(again["state"].opt_state, out["state"].opt_state)


def test_nonfinite_step_is_skipped(tmp_path, capsys):
    out = _train(tmp_path, 5, nan_at_steps=(3,), nonfinite="skip")
    rows = _losses(tmp_path)
    assert rows[3]["skipped_steps"] == 1 and rows[3]["loss"] == "nan"
    assert all(rows[s]["skipped_steps"] == 0 for s in (1, 2, 4, 5))
    assert all(np.isfinite(x).all() for x in jax.tree_util.tree_leaves(
        jax.device_get(out["state"].params)))
    assert "skipped 1 non-finite step(s)" in capsys.readouterr().out


def test_nonfinite_stop_keeps_the_last_good_checkpoint(tmp_path):
    with pytest.raises(loop.TrainError, match=r"non-finite loss or gradient norm at step 5.*"
                       r"last good checkpoint is step 4"):
        _train(tmp_path, 8, nan_at_steps=(5,), nonfinite="stop", checkpoint_period=2)
    params, step, _ = loop.load_for_inference(_model(), str(tmp_path), DATA, ONE_DEVICE)
    assert step == 4
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree_util.tree_leaves(params))


def test_restore_modes_from_init_checkpoint(tmp_path, capsys):
    first = _train(tmp_path / "a", 3)
    want = jax.device_get(first["state"].params)
    only = _train(tmp_path / "b", 0, init_checkpoint=str(tmp_path / "a"),
                  restore_mode="params_only")
    assert int(only["state"].step) == 0 and _tree_equal(only["state"].params, want)
    report = capsys.readouterr().out
    assert "(mode params_only):" in report and "0 missing in the checkpoint" in report
    fresh = _train(tmp_path / "c", 3, init_checkpoint=str(tmp_path / "a" / "checkpoints" / "3"),
                   restore_mode="params_fresh_opt")
    assert int(fresh["state"].step) == 3 and _tree_equal(fresh["state"].params, want)
    mu = fresh["state"].opt_state[1][0].mu  # adamw's first moment starts again at zero
    assert all(not np.asarray(x).any() for x in jax.tree_util.tree_leaves(mu))


def test_checkpoint_of_another_preset_is_refused_and_nothing_changes(tmp_path):
    _train(tmp_path, 1)
    before = sorted((p, os.path.getmtime(os.path.join(d, p)))
                    for d, _, fs in os.walk(tmp_path) for p in fs)
    from plug_jax.families.gpt3 import GPT3Config
    other = models.DecoderOnlyLM(GPT3Config.from_preset("tiny").replace(num_layers=3,
                                                                         preset="tiny3"))
    with pytest.raises(CheckpointError, match="preset='tiny'.*preset='tiny3'.*new MODEL_DIR"):
        _train(tmp_path, 2, model=other)
    after = sorted((p, os.path.getmtime(os.path.join(d, p)))
                   for d, _, fs in os.walk(tmp_path) for p in fs)
    assert before == after


def test_corrupt_checkpoint_gives_one_line_and_deletes_nothing(tmp_path):
    _train(tmp_path, 1)
    state_dir = tmp_path / "checkpoints" / "1" / "state"
    victims = [os.path.join(d, f) for d, _, fs in os.walk(state_dir) for f in fs
               if os.path.getsize(os.path.join(d, f)) > 0]
    for v in victims:
        with open(v, "wb") as f:
            f.write(b"\x00garbage")
    files = sorted(os.path.join(d, f) for d, _, fs in os.walk(tmp_path) for f in fs)
    with pytest.raises(CheckpointError) as e:
        _train(tmp_path, 2)
    assert "\n" not in str(e.value) and "checkpoints/1" in str(e.value)
    assert "fix:" in str(e.value)
    assert sorted(os.path.join(d, f) for d, _, fs in os.walk(tmp_path) for f in fs) == files


def test_batch_that_the_mesh_does_not_divide(tmp_path):
    bad = loop.DatasetConfig(TASK, {"targets": 64}, batch_size=12)
    with pytest.raises(loop.TrainError, match="global batch size 12 .* multiple of 8"):
        _train(tmp_path, 1, train_dataset_cfg=bad,
               mesh=loop.MeshConfig((1, -1, 1, 1), rules="fsdp"))
    assert not os.path.exists(tmp_path / "checkpoints")


def test_eval_and_infer(tmp_path, capsys):
    out = _train(tmp_path, 4, eval_dataset_cfg=EVAL, eval_steps=2, eval_period=2)
    ev = out["final_eval"]
    assert ev["tokens"] > 0 and np.isfinite(ev["loss"])
    assert ev["perplexity"] == pytest.approx(np.exp(ev["loss"]), rel=1e-6)
    rows = [r for r in read_metrics(tmp_path) if "eval/loss" in r]
    assert [r["step"] for r in rows] == [2, 4]
    res = loop.infer(model=_model(), model_dir=str(tmp_path), dataset_cfg=DATA,
                     prompts=["南风 夏季新款", "来自谷雨的"], max_new_tokens=6,
                     methods=("greedy", "top_p", "beam"), mesh=ONE_DEVICE)
    assert [r["method"] for r in res] == ["greedy"] * 2 + ["top_p"] * 2 + ["beam"] * 2
    assert all(isinstance(r["continuation"], str) for r in res)
    assert "[beam] 来自谷雨的 ▸" in capsys.readouterr().out
