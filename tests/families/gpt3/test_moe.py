"""GPT-3 with a mixture of experts (ModelScope GPT-MoE layout): structure, sizes, aux losses
in the train step, routing metrics in metrics.jsonl, decoding, and the CLI experiment."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn

import plug_jax.tasks  # noqa: F401  (registers the Shop World tasks)
from plug_jax import decoding as D
from plug_jax import models
from plug_jax.families.gpt3 import GPT3Config, param_count
from plug_jax.families.gpt3.flops import matmul_params
from plug_jax.trainer.state import TrainState
from plug_jax.trainer.step import aux_objective, make_train_step

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(__file__))))


def _batch(b=4, length=32, seed=0):
    rs = np.random.RandomState(seed)
    ids = rs.randint(1, 1000, (b, length + 1)).astype(np.int32)
    return {"decoder_input_tokens": ids[:, :-1], "decoder_target_tokens": ids[:, 1:],
            "decoder_loss_weights": np.ones((b, length), np.int32)}


def _init(model, batch, seed=0):
    return nn.unbox(model.init_params(jax.random.PRNGKey(seed), batch))


def test_moe_ffn_in_every_second_layer_and_parameter_counts():
    cfg = GPT3Config.from_preset("tiny-moe", num_layers=4)
    params = _init(models.DecoderOnlyLM(cfg), _batch())
    layers = params["decoder"]["layers"]  # scanned over groups of moe_every_n = 2 blocks
    assert set(layers) == {"block_0", "block_1"}
    assert "mlp" in layers["block_0"] and "moe" not in layers["block_0"]
    assert "moe" in layers["block_1"] and "mlp" not in layers["block_1"]
    assert layers["block_1"]["moe"]["wi"]["kernel"].shape == (2, 4, 64, 256)  # [groups, E, d, f]
    # Counted from abstract shapes = counted from the real arrays; hand count of the extra
    # parameters: per MoE layer, (E - 1) more FFNs plus the router kernel.
    dense = GPT3Config.from_preset("tiny", num_layers=4)
    n = sum(x.size for x in jax.tree_util.tree_leaves(params))
    assert param_count(cfg) == n
    ffn = 64 * 256 + 256 + 256 * 64 + 64
    assert n - param_count(dense) == 2 * (3 * ffn + 64 * 4)
    # MFU counts only what a token meets: the router and top_k experts.
    assert matmul_params(cfg) - matmul_params(dense) == 2 * 64 * 4


@pytest.mark.parametrize("preset,dense,experts", [("0.35B-MoE-64", "large", 64),
                                                  ("1.3B-MoE-32", "1.3B", 32)])
def test_gpt_moe_presets_match_modelscope_layout(preset, dense, experts):
    cfg, base = GPT3Config.from_preset(preset), GPT3Config.from_preset(dense)
    assert (cfg.num_experts, cfg.moe_every_n, cfg.moe_top_k) == (experts, 2, 1)
    assert cfg.moe_train_capacity_factor == cfg.moe_eval_capacity_factor == 1.0
    assert cfg.num_moe_layers == 12
    # The name is the dense (active) size: active matmul weights equal the dense model's
    # plus the routers; the total grows by (E - 1) FFNs in each of the 12 MoE layers.
    d, f = base.hidden_size, base.mlp_dim
    assert matmul_params(cfg) == matmul_params(base) + 12 * d * experts
    extra = 12 * ((experts - 1) * (2 * d * f + f + d) + d * experts)
    assert param_count(cfg) == param_count(base) + extra
    published = {"large": 0.35e9, "1.3B": 1.3e9}[dense]
    assert abs(param_count(base) - published) / published < 0.06


def test_bad_moe_configs_give_clear_errors():
    with pytest.raises(ValueError, match="not a multiple of moe_every_n"):
        GPT3Config.from_preset("tiny-moe", num_layers=3)
    with pytest.raises(ValueError, match="moe_impl"):
        GPT3Config.from_preset("tiny-moe", moe_impl="sparse")
    with pytest.raises(ValueError, match="aux_loss_factors"):
        aux_objective({"aux_loss/load_balance_loss": jnp.ones(())}, {"router_z_loss": 0.1})


@pytest.mark.parametrize("scan", [True, False])
def test_loss_sums_carry_per_layer_aux_losses_and_routing_stats(scan):
    model = models.gpt3("tiny-moe", num_layers=4, scan_layers=scan)
    batch = _batch()
    sums = model.loss_sums(_init(model, batch), batch, None, deterministic=True)
    w = float(sums["weight"])
    lb = np.asarray(sums["moe/load_balance_loss"]) / w
    assert lb.shape == (2,) and np.all(np.abs(lb - 1.0) < 0.2)  # ~1 for a fresh router
    np.testing.assert_allclose(float(sums["aux_loss/load_balance_loss"]) / w, lb.sum(), rtol=1e-6)
    share = np.asarray(sums["moe/tokens_per_expert"]) / w
    assert share.shape == (2, 4)
    np.testing.assert_allclose(share.sum(-1), 1.0, rtol=1e-6)
    drop = np.asarray(sums["moe/drop_fraction"]) / w
    assert drop.shape == (2,) and np.all((0 <= drop) & (drop <= 1))


def test_train_step_adds_the_weighted_aux_losses():
    """The update is minus the gradient of (CE + sum(factor * aux)) / tokens: checked
    against jax.grad of that objective written out here, for two factor settings (tiny
    presets have no dropout and no router jitter, so routing is deterministic)."""
    model = models.gpt3("tiny-moe")
    batch = _batch()
    params = _init(model, batch)

    def objective(p, f_lb, f_z):
        s = model.loss_sums(p, batch, None, deterministic=False)  # train capacity factor
        return (s["loss"] + f_lb * s["aux_loss/load_balance_loss"]
                + f_z * s["aux_loss/router_z_loss"]) / s["weight"]

    gate = lambda g: g["decoder"]["layers"]["block_1"]["moe"]["gate"]["kernel"]  # noqa: E731
    results = []
    for f_lb, f_z in ((0.0, 0.0), (1.0, 0.5)):
        want = jax.grad(objective)(params, f_lb, f_z)
        state = TrainState.create(params, optax.sgd(1.0))
        step = make_train_step(model, 1, aux_loss_factors={"load_balance_loss": f_lb,
                                                           "router_z_loss": f_z})
        new, metrics = jax.jit(step)(state, batch, jax.random.PRNGKey(0))
        got = jax.tree_util.tree_map(lambda a, b: a - b, params, new.params)  # lr 1 sgd
        np.testing.assert_allclose(gate(got), gate(want), atol=1e-6)
        results.append(gate(got))
        assert float(metrics["loss"]) == pytest.approx(
            float(model.loss_sums(params, batch, None, False)["loss"]) / 128, rel=1e-5)
        assert "aux_loss/load_balance_loss" in metrics and metrics["moe/drop_fraction"].shape == (1,)
    assert not np.allclose(results[0], results[1])  # the factors change the update


def test_dropless_decoding_with_cache_equals_full_recompute():
    model = models.gpt3("tiny-moe", moe_impl="dropless")
    prompt = np.array([[5, 6, 7, 8], [0, 0, 9, 10]], np.int32)
    mask = prompt > 0
    params = _init(model, _batch())
    step_fn, init_cache_fn = D.flax_lm_adapter(model.module)
    out = D.generate(step_fn, init_cache_fn, params, prompt, mask, 5)
    # Greedy by full recompute: feed prompt + generated tokens, take the argmax each time.
    tokens = np.asarray(out.tokens)
    for row in range(2):
        seq = [int(t) for t in prompt[row] if t]
        for t in range(5):
            logits = model.module.apply({"params": params}, jnp.asarray([seq]))
            nxt = int(jnp.argmax(logits[0, -1]))
            assert nxt == tokens[row, t]
            seq.append(nxt)


def test_shop_world_moe_experiment_trains_and_logs_routing(tmp_path):
    """The gin experiment through plug-train: per-layer routing metrics in metrics.jsonl,
    loss going down, and plug-infer answering from the checkpoint."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    flags = ["--gin_file=experiments/gpt3/shop_tiny_moe.gin", f"--gin.MODEL_DIR={tmp_path}",
             "--gin.TRAIN_STEPS=30", "--gin.LOG_PERIOD=10", "--gin.EVAL_PERIOD=0",
             "--gin.EVAL_BASELINE=False", "--gin.CHECKPOINT_PERIOD=30",
             "--gin.TASK_FEATURE_LENGTHS={'targets': 64}", "--gin.BATCH_SIZE=8"]
    run = subprocess.run([sys.executable, "-m", "plug_jax.main", "--mode=train", *flags],
                         capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    rows = [r for r in rows if "loss" in r]
    assert [r["step"] for r in rows] == [10, 20, 30]
    for r in rows:
        assert len(r["moe/tokens_per_expert"]) == 1 and len(r["moe/tokens_per_expert"][0]) == 4
        assert abs(sum(r["moe/tokens_per_expert"][0]) - 1) < 1e-5
        assert 0 <= r["moe/drop_fraction"][0] <= 1
        assert 0.5 < r["aux_loss/load_balance_loss"] < 4 and r["aux_loss/router_z_loss"] > 0
    assert rows[-1]["loss"] < rows[0]["loss"]
    infer = subprocess.run([sys.executable, "-m", "plug_jax.main", "--mode=infer", *flags,
                            "--gin.MAX_NEW_TOKENS=8"], capture_output=True, text=True,
                           env=env, cwd=ROOT, timeout=600)
    assert infer.returncode == 0, infer.stderr[-2000:]
    assert infer.stdout.count("▸") >= 4  # one continuation per prompt and method


@pytest.mark.parametrize("impl", ["capacity", "dropless"])
def test_expert_parallel_training_gives_single_device_losses(tmp_path, impl):
    """tiny-moe trained 4 steps on one device and on 8 devices with ep_fsdp_tp (expert 4 x
    fsdp 2): same losses, and the expert weights really are split over 'expert'."""
    from plug_jax.trainer import loop
    from plug_jax.trainer.metrics import read_metrics
    data = loop.DatasetConfig("gpt3_shoplm_zh_v1", {"targets": 32}, batch_size=8)
    model = models.gpt3("tiny-moe", moe_impl=impl)

    def train(d, mesh):
        out = loop.train(model=model, model_dir=str(tmp_path / d), train_steps=4,
                         train_dataset_cfg=data, mesh=mesh, learning_rate=3e-3, log_period=1,
                         checkpoint_period=100, peak_flops=1e11, async_checkpoints=False)
        rows = [r for r in read_metrics(str(tmp_path / d)) if "loss" in r]
        return out, rows

    _, one = train("one", loop.MeshConfig((1, 1, 1, 1), rules="fsdp", num_devices=1))
    out, ep = train("ep", loop.MeshConfig((1, -1, 4, 1), rules="ep_fsdp_tp"))
    wi = out["state"].params["decoder"]["layers"]["block_1"]["moe"]["wi"]["kernel"]
    assert wi.sharding.spec[1] == "expert" and wi.sharding.spec[2] == "fsdp"
    assert [r["step"] for r in one] == [r["step"] for r in ep] == [1, 2, 3, 4]
    for a, b in zip(one, ep):
        np.testing.assert_allclose(b["loss"], a["loss"], rtol=1e-5)
        np.testing.assert_allclose(b["moe/drop_fraction"], a["moe/drop_fraction"], atol=1e-6)
