"""BERT / Megatron-BERT <-> structbert family: parity against transformers, round trips, errors."""
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from plug_jax.convert.hf_bert import (config_from_bert, from_bert_state_dict,
                                      from_megatron_bert_state_dict, load_bert_checkpoint,
                                      to_bert_config, to_bert_state_dict,
                                      to_megatron_bert_state_dict)
from plug_jax.families.structbert import BertEncoder, StructBERTForPreTraining

TINY = dict(vocab_size=101, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=256, max_position_embeddings=32, type_vocab_size=2)
ATOL = 1e-4


def _randomise(model, seed):
    """Every weight random (LayerNorm scales around 1), so no parameter is left at its init."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ("LayerNorm" in name or ".ln" in name) and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                p.copy_(0.1 * torch.randn_like(p))
    return model.eval()


def make(cls_name: str, seed: int = 0, **kw):
    megatron = cls_name.startswith("MegatronBert")
    cfg_cls = transformers.MegatronBertConfig if megatron else transformers.BertConfig
    cfg = cfg_cls(**{**TINY, **kw})
    return _randomise(getattr(transformers, cls_name)(cfg), seed)


@pytest.fixture(scope="module")
def bert():
    return make("BertForPreTraining", 0)


@pytest.fixture(scope="module")
def megatron():
    return make("MegatronBertForPreTraining", 1)


def batch(vocab: int = TINY["vocab_size"]):
    """Right-padded pair batch: rows of length 9, 5 and 1; segment B from position 4."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, vocab, (3, 9), generator=g)
    mask = torch.zeros(3, 9, dtype=torch.long)
    for row, n in enumerate((9, 5, 1)):
        mask[row, :n] = 1
    types = torch.zeros(3, 9, dtype=torch.long)
    types[:, 4:] = 1
    return ids * mask, types * mask, mask


def _j(t):
    return jnp.asarray(t.numpy())


def _max_diff(a, b, real=None):
    d = np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))
    return float((d[real] if real is not None else d).max())


@pytest.mark.parametrize("scan", [True, False])
def test_bert_pretraining_parity(bert, scan):
    sd = bert.state_dict()
    cfg = config_from_bert(bert.config, sd, scan_layers=scan)
    assert cfg.norm_placement == "post" and cfg.num_sentence_classes == 2
    assert (cfg.num_layers, cfg.hidden_size, cfg.mlp_dim, cfg.layer_norm_epsilon) == \
        (2, 64, 256, 1e-12)
    params = from_bert_state_dict(sd, cfg)
    assert ("layers" in params["encoder"]["stack"]) is scan
    ids, types, mask = batch()
    with torch.no_grad():
        ref = bert(input_ids=ids, token_type_ids=types, attention_mask=mask,
                   output_hidden_states=True)
    out = StructBERTForPreTraining(cfg).apply({"params": params}, _j(ids), _j(types), _j(mask))
    assert out["mlm_logits"].dtype == jnp.float32 and out["sentence_logits"].dtype == jnp.float32
    real = mask.numpy().astype(bool)
    diffs = {
        "hidden": _max_diff(out["hidden_states"], ref.hidden_states[-1].numpy(), real),
        "mlm": _max_diff(out["mlm_logits"], ref.prediction_logits.numpy(), real),
        "nsp": _max_diff(out["sentence_logits"], ref.seq_relationship_logits.numpy()),
    }
    print(f"BERT parity (scan={scan}) max abs diffs: {diffs}")
    assert max(diffs.values()) < ATOL, diffs
    # The encoder alone on params['encoder'] gives the same hidden states.
    h = BertEncoder(cfg).apply({"params": params["encoder"]}, _j(ids), _j(types), _j(mask))
    np.testing.assert_array_equal(np.asarray(h), np.asarray(out["hidden_states"]))


def test_megatron_bert_model_parity():
    """Pre-LN encoder vs MegatronBertModel (no embedding LN, final encoder.ln)."""
    model = make("MegatronBertModel", 2)
    sd = model.state_dict()
    assert "encoder.ln.weight" in sd and not any("embeddings.LayerNorm" in k for k in sd)
    cfg = config_from_bert(model.config, sd)
    assert cfg.norm_placement == "pre"
    params = from_megatron_bert_state_dict(sd, cfg)
    assert set(params) == {"encoder", "pooler"}
    assert "final_norm" in params["encoder"] and "embed_norm" not in params["encoder"]
    ids, types, mask = batch()
    with torch.no_grad():
        ref = model(input_ids=ids, token_type_ids=types, attention_mask=mask)
    h = BertEncoder(cfg).apply({"params": params["encoder"]}, _j(ids), _j(types), _j(mask))
    diff = _max_diff(h, ref.last_hidden_state.numpy(), mask.numpy().astype(bool))
    print(f"MegatronBertModel parity max abs diff (hidden): {diff:.3g}")
    assert diff < ATOL


def test_megatron_bert_pretraining_parity(megatron):
    sd = megatron.state_dict()
    cfg = config_from_bert(megatron.config, sd)
    params = from_megatron_bert_state_dict(sd, cfg)
    ids, types, mask = batch()
    with torch.no_grad():
        ref = megatron(input_ids=ids, token_type_ids=types, attention_mask=mask)
    out = StructBERTForPreTraining(cfg).apply({"params": params}, _j(ids), _j(types), _j(mask))
    real = mask.numpy().astype(bool)
    assert _max_diff(out["mlm_logits"], ref.prediction_logits.numpy(), real) < ATOL
    assert _max_diff(out["sentence_logits"], ref.seq_relationship_logits.numpy()) < ATOL


@pytest.mark.parametrize("scan", [True, False])
def test_bert_round_trip_is_exact(bert, scan):
    sd = bert.state_dict()
    cfg = config_from_bert(bert.config, sd, scan_layers=scan)
    back = to_bert_state_dict(cfg, from_bert_state_dict(sd, cfg))
    assert set(back) == set(sd)
    for k, v in sd.items():
        assert back[k].dtype == torch.float32 and torch.equal(back[k], v), k
    fresh = transformers.BertForPreTraining(to_bert_config(cfg))
    fresh.load_state_dict(back, strict=True)


def test_megatron_round_trip_is_exact(megatron):
    sd = megatron.state_dict()
    cfg = config_from_bert(megatron.config, sd)
    back = to_megatron_bert_state_dict(cfg, from_megatron_bert_state_dict(sd, cfg))
    assert set(back) == set(sd)
    assert all(torch.equal(back[k], v) for k, v in sd.items())
    assert isinstance(to_bert_config(cfg), transformers.MegatronBertConfig)


def test_bert_model_encoder_only_round_trip(bert):
    """A BertModel state dict (no 'bert.' prefix, no heads) gives encoder + pooler."""
    sd = bert.bert.state_dict()
    cfg = config_from_bert(bert.config)
    params = from_bert_state_dict(sd, cfg)
    assert set(params) == {"encoder", "pooler"}
    back = to_bert_state_dict(cfg, params, as_numpy=True)
    assert set(back) == set(sd)
    assert all(np.array_equal(back[k], v.numpy()) for k, v in sd.items())


def test_old_gamma_beta_names_and_numpy_inputs(bert):
    sd = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias",
                                                                   "LayerNorm.beta"): v.numpy()
          for k, v in bert.state_dict().items()}
    assert "bert.embeddings.LayerNorm.gamma" in sd
    cfg = config_from_bert(bert.config.to_dict())
    got = from_bert_state_dict(sd, cfg)
    want = from_bert_state_dict(bert.state_dict(), cfg)
    a, b = to_bert_state_dict(cfg, got, as_numpy=True), to_bert_state_dict(cfg, want,
                                                                           as_numpy=True)
    assert all(np.array_equal(a[k], b[k]) for k in b)


def test_three_way_sentence_head_from_checkpoint(bert):
    """StructBERT's released checkpoints have a 3-class seq_relationship."""
    sd = dict(bert.state_dict())
    sd["cls.seq_relationship.weight"] = torch.randn(3, 64)
    sd["cls.seq_relationship.bias"] = torch.randn(3)
    cfg = config_from_bert(bert.config, sd)
    assert cfg.num_sentence_classes == 3
    params = from_bert_state_dict(sd, cfg)
    ids, types, mask = batch()
    out = StructBERTForPreTraining(cfg).apply({"params": params}, _j(ids), _j(types), _j(mask))
    assert out["sentence_logits"].shape == (3, 3)
    pooled = np.asarray(out["pooled"])
    want = pooled @ sd["cls.seq_relationship.weight"].numpy().T + \
        sd["cls.seq_relationship.bias"].numpy()
    np.testing.assert_allclose(np.asarray(out["sentence_logits"]), want, atol=1e-5)
    with pytest.raises(ValueError, match="num_sentence_classes=3") as e:
        from_bert_state_dict(sd, config_from_bert(bert.config))
    assert "\n" not in str(e.value)


def test_load_checkpoint_files(bert, megatron, tmp_path):
    want = from_bert_state_dict(bert.state_dict(), config_from_bert(bert.config))
    bert.save_pretrained(tmp_path / "hf")  # config.json + model.safetensors
    cfg, got = load_bert_checkpoint(tmp_path / "hf")
    assert cfg == config_from_bert(bert.config)
    # StructBERT release style: a torch.save'd state dict with bert_config.json beside it.
    (tmp_path / "sb").mkdir()
    torch.save(bert.state_dict(), tmp_path / "sb" / "pytorch_model.bin")
    keep = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
            "intermediate_size", "max_position_embeddings", "type_vocab_size", "hidden_act",
            "hidden_dropout_prob", "attention_probs_dropout_prob", "initializer_range")
    import json
    (tmp_path / "sb" / "bert_config.json").write_text(
        json.dumps({k: bert.config.to_dict()[k] for k in keep}))
    cfg2, got2 = load_bert_checkpoint(tmp_path / "sb" / "pytorch_model.bin")
    assert cfg2 == cfg
    for tree in (got, got2):
        a, b = to_bert_state_dict(cfg, tree, as_numpy=True), to_bert_state_dict(
            cfg, want, as_numpy=True)
        assert all(np.array_equal(a[k], b[k]) for k in b)
    megatron.save_pretrained(tmp_path / "meg")
    cfg3, _ = load_bert_checkpoint(tmp_path / "meg")
    assert cfg3.norm_placement == "pre"


def test_errors_are_one_line(bert, megatron):
    cfg = config_from_bert(bert.config)
    checks = []
    sd = dict(bert.state_dict())
    with pytest.raises(ValueError, match="use from_megatron_bert_state_dict") as e:
        from_bert_state_dict(megatron.state_dict(), config_from_bert(megatron.config))
    checks.append(e)
    sd_untied = dict(sd)
    sd_untied["cls.predictions.decoder.weight"] = sd["cls.predictions.decoder.weight"] + 1.0
    with pytest.raises(ValueError, match="untied MLM decoder") as e:
        from_bert_state_dict(sd_untied, cfg)
    checks.append(e)
    sd_extra = {**sd, "classifier.weight": torch.zeros(2, 64)}
    with pytest.raises(ValueError, match="unexpected tensor 'classifier.weight'") as e:
        from_bert_state_dict(sd_extra, cfg)
    checks.append(e)
    assert "classifier" not in from_bert_state_dict(sd_extra, cfg, strict=False)
    sd_missing = {k: v for k, v in sd.items() if k != "bert.encoder.layer.1.output.dense.bias"}
    with pytest.raises(ValueError, match=r"missing tensor 'encoder\.layer\.1\.output") as e:
        from_bert_state_dict(sd_missing, cfg)
    checks.append(e)
    with pytest.raises(ValueError, match="position_embedding_type 'relative_key'") as e:
        config_from_bert({**TINY, "position_embedding_type": "relative_key"})
    checks.append(e)
    with pytest.raises(ValueError, match="model_type 'gpt2'") as e:
        config_from_bert({**TINY, "model_type": "gpt2"})
    checks.append(e)
    assert all("\n" not in str(c.value) for c in checks)
