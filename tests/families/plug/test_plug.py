"""PLUG: published size without allocation, stage-1 encoder reuse, masks, scan layout."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from plug_jax.families.plug import PUBLISHED_PARAMS, PlugConfig, PlugModel, param_count
from plug_jax.families.structbert.network import StructBERTForPreTraining


def _init(cfg, enc_len=10, dec_len=6, seed=0):
    e = jnp.ones((2, enc_len), jnp.int32)
    d = jnp.ones((2, dec_len), jnp.int32)
    return nn.unbox(PlugModel(cfg).init(jax.random.PRNGKey(seed), e, d)["params"])


def _ids(shape, seed):
    return jnp.asarray(np.random.RandomState(seed).randint(1, 1000, shape), jnp.int32)


def test_27b_preset_is_27b_without_allocation():
    cfg = PlugConfig.from_preset("27B")
    assert (cfg.num_encoder_layers, cfg.num_decoder_layers, cfg.hidden_size, cfg.num_heads,
            cfg.mlp_dim, cfg.vocab_size, cfg.max_position_embeddings) == (
        24, 6, 8192, 128, 32768, 21504, 2048)
    assert cfg.vocab_size % (128 * 8) == 0 and cfg.original_vocab_size == 21128
    n = param_count(cfg)  # jax.eval_shape: shapes only
    assert abs(n - PUBLISHED_PARAMS["27B"]) / PUBLISHED_PARAMS["27B"] < 0.05
    # Hand count: encoder layer 12h^2 + 13h (QKV/out 4h^2 + 4h, FFN 8h^2 + 5h, 2 LNs 4h);
    # decoder layer adds cross-attention (4h^2 + 4h) and a third LN (2h).
    h, f = 8192, 32768
    enc_layer = 4 * h * h + 4 * h + 2 * h * f + f + h + 4 * h
    dec_layer = 2 * (4 * h * h + 4 * h) + 2 * h * f + f + h + 6 * h
    emb = (21504 + 2048 + 3) * h + 2 * h  # tables + the embedding LayerNorm
    heads = (h * h + h + 2 * h + 21504) + (h * h + h) + (3 * h + 3)  # MLM, pooler, sentence
    want = 24 * enc_layer + 6 * dec_layer + emb + 2 * h + 2 * h + heads  # + 2 final LNs
    assert n == want


def test_stage_one_structbert_checkpoint_is_the_encoder_subtree():
    cfg = PlugConfig.from_preset("tiny")
    params = _init(cfg)
    stage1 = StructBERTForPreTraining(cfg.encoder_config)
    ids = _ids((2, 10), 1)
    s1 = nn.unbox(stage1.init(jax.random.PRNGKey(3), ids)["params"])
    same_shapes = jax.tree_util.tree_map(lambda a, b: a.shape == b.shape, s1,
                                         params["structbert"])
    assert all(jax.tree_util.tree_leaves(same_shapes))
    params = dict(params, structbert=s1)  # plug the stage-1 encoder in
    out = PlugModel(cfg).apply({"params": params}, ids, _ids((2, 6), 2))
    want = stage1.apply({"params": s1}, ids)["hidden_states"]
    np.testing.assert_allclose(out["encoder_hidden_states"], want, atol=1e-6)
    assert out["logits"].shape == (2, 6, cfg.vocab_size) and out["sentence_logits"].shape == (2, 3)


def test_decoder_is_causal_and_ignores_encoder_padding():
    cfg = PlugConfig.from_preset("tiny")
    params = _init(cfg)
    model = PlugModel(cfg)
    enc, dec = _ids((2, 10), 3), _ids((2, 6), 4)
    seg_e = jnp.asarray([[1] * 7 + [0] * 3] * 2)
    seg_d = jnp.ones((2, 6), jnp.int32)
    base = model.apply({"params": params}, enc, dec, encoder_segment_ids=seg_e,
                       decoder_segment_ids=seg_d)["logits"]
    later = dec.at[:, 4].set(7)  # change a later decoder token
    out = model.apply({"params": params}, enc, later, encoder_segment_ids=seg_e,
                      decoder_segment_ids=seg_d)["logits"]
    np.testing.assert_allclose(out[:, :4], base[:, :4], atol=1e-6)
    assert not np.allclose(out[:, 4:], base[:, 4:])
    padded = enc.at[:, 8].set(11)  # change an encoder padding token
    out = model.apply({"params": params}, padded, dec, encoder_segment_ids=seg_e,
                      decoder_segment_ids=seg_d)["logits"]
    np.testing.assert_allclose(out, base, atol=1e-6)


@pytest.mark.parametrize("placement", ["pre", "post"])
def test_scanned_and_unrolled_layouts_agree(placement):
    from plug_jax.layers.scan import unstack_layers
    cfg = PlugConfig.from_preset("tiny", norm_placement=placement)
    params = _init(cfg)
    flat = dict(params, decoder=unstack_layers(params["decoder"], 1))
    sb = params["structbert"]
    flat["structbert"] = dict(sb, encoder=dict(sb["encoder"], stack=unstack_layers(
        sb["encoder"]["stack"], 2)))
    enc, dec = _ids((2, 10), 5), _ids((2, 6), 6)
    a = PlugModel(cfg).apply({"params": params}, enc, dec)["logits"]
    b = PlugModel(cfg.replace(scan_layers=False)).apply({"params": flat}, enc, dec)["logits"]
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_stage_one_then_stage_two_through_the_cli(tmp_path):
    """experiments/plug/shop_stage1_tiny.gin (encoder alone, StructBERT objectives) through
    plug-train and plug-infer, then experiments/plug/shop_stage2_tiny.gin started from it:
    the encoder is restored and the decoder fresh; stage 2 trains the encoder's MLM loss
    on the first 90% of the examples and drops it for the last 10%; metrics.jsonl shows
    the switch and the loss goes down; plug-infer writes continuations."""
    import json
    import os
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    one, two = tmp_path / "stage1", tmp_path / "stage2"

    def cli(mode, gin_file, model_dir, *flags):
        out = subprocess.run(
            [sys.executable, "-m", "plug_jax.main", f"--mode={mode}", f"--gin_file={gin_file}",
             f"--gin.MODEL_DIR={model_dir}", *flags],
            capture_output=True, text=True, env=env, cwd=root, timeout=600)
        assert out.returncode == 0, out.stderr[-2000:]
        return out

    cli("train", "experiments/plug/shop_stage1_tiny.gin", one, "--gin.TRAIN_STEPS=4",
        "--gin.BATCH_SIZE=8", "--gin.EVAL_STEPS=1", "--gin.LOG_PERIOD=2")
    rows1 = [json.loads(line) for line in open(one / "metrics.jsonl")]
    assert {"mlm_loss", "structural_loss", "sentence_loss"} <= set(rows1[0])
    assert "eval/accuracy" in rows1[-1]
    infer1 = cli("infer", "experiments/plug/shop_stage1_tiny.gin", one)
    assert infer1.stdout.count("[S2 ") == 4  # one sentence-order prediction per prompt

    lengths = "--gin.TASK_FEATURE_LENGTHS={'inputs': 64, 'targets': 32}"
    run = cli("train", "experiments/plug/shop_stage2_tiny.gin", two, "--gin.TRAIN_STEPS=20",
              "--gin.LOG_PERIOD=2", "--gin.CHECKPOINT_PERIOD=20", "--gin.BATCH_SIZE=8",
              lengths, f"--gin.INIT_CHECKPOINT='{one}'", "--gin.RESTORE_MODE='params_only'")
    restore = [line for line in run.stdout.splitlines() if "parameter arrays matched" in line]
    assert restore and " 0 in the checkpoint but not in the model" in restore[0]
    assert "missing in the checkpoint" in restore[0] and "missing: decoder" in run.stdout
    rows = [json.loads(line) for line in open(two / "metrics.jsonl")]
    train = [r for r in rows if "data_stage" in r]
    assert [r["step"] for r in train] == list(range(2, 21, 2))
    assert [r["data_stage"] for r in train] == [0] * 9 + [1]  # stage 1 = the last 10%
    assert all(r["mlm_tokens"] > 0 for r in train[:9]) and train[-1]["mlm_tokens"] == 0
    assert train[-1]["loss"] < train[0]["loss"]
    assert "curriculum: step 19 starts stage 1" in run.stdout
    assert any("eval/loss" in r for r in rows)  # final evaluation on the last stage's task
    infer = cli("infer", "experiments/plug/shop_stage2_tiny.gin", two, "--gin.MAX_NEW_TOKENS=6",
                lengths)
    assert infer.stdout.count("▸") == 12  # 4 prompts x (greedy, top_k, beam)


def test_plug_moe_20b_definition():
    """PLUG-MoE 20B (defined here, see the family README): total within 5% of 20B, experts
    in every second encoder and decoder layer, and the stage-1 encoder is still a
    StructBERT (with the same experts)."""
    from plug_jax.families.plug.flops import training_flops_per_example
    cfg = PlugConfig.from_preset("20B-MoE")
    n = param_count(cfg)
    assert abs(n - PUBLISHED_PARAMS["20B-MoE"]) / PUBLISHED_PARAMS["20B-MoE"] < 0.05
    dense = PlugConfig.from_preset("20B-MoE", num_experts=0)
    h, f = 4096, 16384
    per_expert = 2 * h * f + f + h
    moe_layers = 24 // 2 + 6 // 2
    assert n - param_count(dense) == moe_layers * (7 * per_expert + h * 8)  # 7 more + router
    assert cfg.encoder_config.num_experts == 8 and cfg.encoder_config.moe_router == "prototype"
    # MFU counts the 2 experts a token meets, not all 8.
    flops = training_flops_per_example(cfg, 512, 512) - training_flops_per_example(dense, 512,
                                                                                   512)
    assert flops == 6 * 512 * moe_layers * (h * 8 + 2 * h * f)  # router + one more expert


def test_tiny_moe_layers_and_stage_one_subtree():
    cfg = PlugConfig.from_preset("tiny-moe")
    params = _init(cfg)
    enc = params["structbert"]["encoder"]["stack"]["layers"]
    dec = params["decoder"]["layers"]
    for stack in (enc, dec):
        assert "mlp" in stack["block_0"] and "moe" in stack["block_1"]
        assert stack["block_1"]["moe"]["wi"]["kernel"].shape[1] == 4  # [groups, E, d, f]
    s1 = nn.unbox(StructBERTForPreTraining(cfg.encoder_config).init(
        jax.random.PRNGKey(1), _ids((2, 10), 1))["params"])
    same = jax.tree_util.tree_map(lambda a, b: a.shape == b.shape, s1, params["structbert"])
    assert all(jax.tree_util.tree_leaves(same))


def test_encoder_decoder_greedy_decoding_equals_full_recompute():
    """decoding.generate through the encoder-decoder adapter = argmax of a plain forward
    pass over the tokens so far, step by step; beam search runs on the same adapter."""
    from plug_jax import decoding, models
    cfg = PlugConfig.from_preset("tiny")
    model = models.EncoderDecoderLM(cfg)
    params = _init(cfg)
    enc = np.asarray([[5, 6, 7, 8, 9, 0, 0], [11, 12, 13, 14, 15, 16, 17]], np.int32)
    step_fn, init_cache = model.decode_fns()
    start = np.zeros((2, 1), np.int32)
    out = decoding.generate(step_fn, init_cache, {"model": params, "encoder_ids": enc},
                            start, np.ones((2, 1), np.int32), 5)
    tokens = np.asarray(out.tokens)
    for row in range(2):
        seq = [0]
        e = jnp.asarray(enc[row:row + 1])
        for t in range(5):
            logits = PlugModel(cfg).apply({"params": params}, e, jnp.asarray([seq]),
                                          encoder_segment_ids=(e > 0).astype(jnp.int32))
            nxt = int(jnp.argmax(logits["logits"][0, -1]))
            assert nxt == tokens[row, t]
            seq.append(nxt)
    beams = decoding.beam_search(step_fn, init_cache, {"model": params, "encoder_ids": enc},
                                 start, np.ones((2, 1), np.int32), 5, num_beams=3)
    assert np.asarray(beams.sequences).shape[0] == 2
