"""XLM-R <-> structbert family: parity against transformers, round trips, files, errors."""
import importlib.util
import os

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from plug_jax.convert.cli import main
from plug_jax.families import registry
from plug_jax.families.structbert import BertEncoder
from plug_jax.families.structbert.convert_hf import config_from_bert
from plug_jax.families.structbert.convert_xlmr import (config_from_xlmr, from_xlmr_state_dict,
                                                       load_xlmr_checkpoint, to_xlmr_config,
                                                       to_xlmr_state_dict, xlmr_ids_to_plug)
from plug_jax.families.structbert.network import StructBERTForSequenceClassification
from plug_jax.models import EncoderModel
from plug_jax.trainer import checkpointing


def _bert_tests():
    """The helpers of test_hf_bert.py (random weights, diffs, the tiny BERT), not copied."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "test_hf_bert.py")
    spec = importlib.util.spec_from_file_location("plug_jax_test_hf_bert_helpers", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


hb = _bert_tests()
ATOL = hb.ATOL
# XLM-R's shape conventions: 2 reserved position rows (34 -> 32 usable), one token type, 1e-5.
TINY = dict(vocab_size=101, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=256, max_position_embeddings=34, type_vocab_size=1,
            layer_norm_eps=1e-5, num_labels=3)
POS = "embeddings.position_embeddings.weight"


def make(cls_name: str, seed: int = 0, **kw):
    cfg = transformers.XLMRobertaConfig(**{**TINY, **kw})
    return hb._randomise(getattr(transformers, cls_name)(cfg), seed)


@pytest.fixture(scope="module")
def classifier():
    return make("XLMRobertaForSequenceClassification", 0)


@pytest.fixture(scope="module")
def base():
    return make("XLMRobertaModel", 1)  # with its pooling layer (the default)


def xlmr_batch():
    """XLM-R ids, right-padded: rows of 9, 5 and 2 tokens, ``<s>``=0 ... ``</s>``=2, then
    ``<pad>``=1 (from which transformers derives positions 2.. and pads' position 1)."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, TINY["vocab_size"], (3, 9), generator=g)
    mask = torch.zeros(3, 9, dtype=torch.long)
    for row, n in enumerate((9, 5, 2)):
        mask[row, :n] = 1
        ids[row, 0], ids[row, n - 1] = 0, 2
        ids[row, n:] = 1
    return ids, mask


def _logits(cfg, params, ids, mask):
    net = StructBERTForSequenceClassification(cfg, num_labels=TINY["num_labels"])
    return net.apply({"params": params}, hb._j(ids), None, hb._j(mask))


@pytest.mark.parametrize("scan", [True, False])
def test_sequence_classification_parity(classifier, scan):
    sd = classifier.state_dict()
    assert not any(k.startswith("roberta.pooler") for k in sd)  # no pooler in this model
    cfg = config_from_xlmr(classifier.config, scan_layers=scan)
    assert (cfg.max_position_embeddings, cfg.type_vocab_size, cfg.layer_norm_epsilon,
            cfg.norm_placement) == (32, 1, 1e-5, "post")
    params = from_xlmr_state_dict(sd, cfg)
    assert set(params) == {"encoder", "pooler", "classifier"}
    assert ("layers" in params["encoder"]["stack"]) is scan
    np.testing.assert_array_equal(params["encoder"]["pos_embed"]["embedding"],
                                  sd["roberta." + POS].numpy()[2:])
    ids, mask = xlmr_batch()
    with torch.no_grad():
        ref = classifier(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    logits = _logits(cfg, params, ids, mask)
    hidden = BertEncoder(cfg).apply({"params": params["encoder"]}, hb._j(ids), None,
                                    hb._j(mask))
    real = mask.numpy().astype(bool)
    diffs = {"logits": hb._max_diff(logits, ref.logits.numpy()),
             "hidden": hb._max_diff(hidden, ref.hidden_states[-1].numpy(), real)}
    print(f"XLMRobertaForSequenceClassification parity (scan={scan}) max abs diffs: {diffs}")
    assert logits.dtype == jnp.float32 and max(diffs.values()) < ATOL, diffs


def test_model_hidden_states_and_pooler_parity(base):
    sd = base.state_dict()
    assert "pooler.dense.weight" in sd and not any(k.startswith("roberta.") for k in sd)
    cfg = config_from_xlmr(base.config.to_dict())
    params = from_xlmr_state_dict(sd, cfg)
    assert set(params) == {"encoder", "pooler"}
    ids, mask = xlmr_batch()
    with torch.no_grad():
        ref = base(input_ids=ids, attention_mask=mask)
    h = np.asarray(BertEncoder(cfg).apply({"params": params["encoder"]}, hb._j(ids), None,
                                          hb._j(mask)))
    pooled = np.tanh(h[:, 0] @ params["pooler"]["kernel"] + params["pooler"]["bias"])
    diffs = {"hidden": hb._max_diff(h, ref.last_hidden_state.numpy(), mask.numpy() > 0),
             "pooler": hb._max_diff(pooled, ref.pooler_output.numpy())}
    print(f"XLMRobertaModel parity max abs diffs: {diffs}")
    assert max(diffs.values()) < ATOL, diffs


def test_pad_to_zero_gives_xlmr_logits_through_encoder_model(classifier):
    """EncoderModel masks ids > 0: raw XLM-R ids (<s> = 0) go wrong; swapped rows + swapped
    ids give XLM-R's logits."""
    sd = classifier.state_dict()
    cfg = config_from_xlmr(classifier.config)
    ids, mask = xlmr_batch()
    with torch.no_grad():
        want = classifier(input_ids=ids, attention_mask=mask).logits.numpy()
    model = EncoderModel(cfg, objectives=("classify",), num_labels=TINY["num_labels"])
    raw = model.outputs(from_xlmr_state_dict(sd, cfg), {"encoder_input_tokens": ids.numpy()})
    assert hb._max_diff(raw, want) > 10 * ATOL  # the hazard the docstring names
    swapped = from_xlmr_state_dict(sd, cfg, pad_to_zero=True)
    plug_ids = np.where(mask.numpy() > 0, xlmr_ids_to_plug(ids.numpy()), 0)
    assert (plug_ids[:, 0] == 1).all() and ((plug_ids > 0) == (mask.numpy() > 0)).all()
    diff = hb._max_diff(model.outputs(swapped, {"encoder_input_tokens": plug_ids}), want)
    print(f"EncoderModel (pad_to_zero) logits max abs diff: {diff:.3g}")
    assert diff < ATOL
    np.testing.assert_array_equal(xlmr_ids_to_plug(xlmr_ids_to_plug(ids.numpy())), ids.numpy())
    back = to_xlmr_state_dict(cfg, swapped, pad_to_zero=True)
    k = "roberta.embeddings.word_embeddings.weight"
    assert torch.equal(back[k], sd[k]) and not torch.equal(
        to_xlmr_state_dict(cfg, swapped)[k], sd[k])


@pytest.mark.parametrize("which", ["classifier", "base"])
@pytest.mark.parametrize("scan", [True, False])
def test_round_trip_is_exact(which, scan, request):
    hf = request.getfixturevalue(which)
    sd = hf.state_dict()
    cfg = config_from_xlmr(hf.config, scan_layers=scan)
    params = from_xlmr_state_dict(sd, cfg)
    back = to_xlmr_state_dict(cfg, params)
    assert set(back) == set(sd)
    pos = ("roberta." if which == "classifier" else "") + POS
    for k, v in sd.items():
        assert back[k].dtype == torch.float32, k
        if k == pos:  # the 2 reserved rows come back as zeros, the rest exactly
            assert torch.equal(back[k][2:], v[2:]) and not back[k][:2].any()
        else:
            assert torch.equal(back[k], v), k
    labels = TINY["num_labels"] if which == "classifier" else None
    fresh = type(hf)(to_xlmr_config(cfg, labels))
    fresh.load_state_dict(back, strict=True)
    # plug_jax -> XLM-R -> plug_jax: every leaf equal
    again, want = _flat(from_xlmr_state_dict(back, cfg)), _flat(params)
    assert again.keys() == want.keys()
    assert all(np.array_equal(again[k], want[k]) for k in want)


def _flat(tree, prefix=""):
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}/"))
        else:
            out[prefix + k] = v
    return out


def test_save_pretrained_folder_through_plug_convert(classifier, tmp_path, capsys):
    src, out, back = tmp_path / "hf", tmp_path / "plug", tmp_path / "back"
    classifier.save_pretrained(src)
    assert sorted(os.listdir(src)) == ["config.json", "model.safetensors"]
    cfg0 = config_from_xlmr(classifier.config)
    want = from_xlmr_state_dict(classifier.state_dict(), cfg0)
    cfg, got = load_xlmr_checkpoint(src)
    assert cfg == cfg0
    assert all(np.array_equal(v, _flat(want)[k]) for k, v in _flat(got).items())
    assert main(["--family", "structbert", "--source", "xlmr", "--input", str(src),
                 "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "classifier: 3 labels" in printed and "<s>=0, <pad>=1" in printed, printed
    config_dict, params, _ = checkpointing.load_params(out)
    cfg2 = registry.config_from_dict("structbert", config_dict)
    assert cfg2 == cfg0
    flat = _flat(params)
    assert flat.keys() == _flat(want).keys()
    assert all(np.array_equal(np.asarray(flat[k]), _flat(want)[k]) for k in flat)
    # --to xlmr writes a folder XLMRobertaForSequenceClassification loads as the original
    assert main(["--family", "structbert", "--to", "xlmr", "--input", str(out),
                 "--output", str(back)]) == 0
    assert "XLMRobertaForSequenceClassification" in capsys.readouterr().out
    reloaded = transformers.XLMRobertaForSequenceClassification.from_pretrained(back).eval()
    ids, mask = xlmr_batch()
    with torch.no_grad():
        a = reloaded(input_ids=ids, attention_mask=mask).logits.numpy()
        b = classifier(input_ids=ids, attention_mask=mask).logits.numpy()
    diff = hb._max_diff(a, b)
    print(f"save_pretrained -> plug-convert -> --to xlmr -> from_pretrained logits diff: {diff}")
    assert diff < ATOL


def test_masked_lm_folder_converts_its_encoder(tmp_path, capsys):
    """The hub's pre-trained xlm-roberta-* are XLMRobertaForMaskedLM: plug-convert drops
    lm_head.* (reported); the Python API needs drop_lm_head=True for that."""
    mlm = make("XLMRobertaForMaskedLM", 2)
    mlm.save_pretrained(tmp_path / "mlm")
    cfg = config_from_xlmr(mlm.config)
    with pytest.raises(ValueError, match="unexpected tensor 'lm_head.*drop_lm_head=True") as e:
        from_xlmr_state_dict(mlm.state_dict(), cfg)
    assert "\n" not in str(e.value)
    report = []
    params = from_xlmr_state_dict(mlm.state_dict(), cfg, drop_lm_head=True, report=report)
    assert set(params) == {"encoder"} and "lm_head.* tensors" in report[0], report
    capsys.readouterr()
    assert main(["--family", "structbert", "--source", "xlmr", "--input",
                 str(tmp_path / "mlm"), "--output", str(tmp_path / "out")]) == 0
    assert "not converted: " in capsys.readouterr().out
    ids, mask = xlmr_batch()
    with torch.no_grad():
        ref = mlm(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    _, got, _ = checkpointing.load_params(tmp_path / "out")
    h = BertEncoder(cfg).apply({"params": got["encoder"]}, hb._j(ids), None, hb._j(mask))
    assert hb._max_diff(h, ref.hidden_states[-1].numpy(), mask.numpy() > 0) < ATOL


def test_wrong_layouts_are_one_line_errors(classifier, tmp_path, capsys):
    bert = hb.make("BertForPreTraining", 0)
    cfg = config_from_xlmr(classifier.config)
    sd = dict(classifier.state_dict())
    checks = []
    bert.save_pretrained(tmp_path / "bert")
    with pytest.raises(ValueError, match="model_type 'bert' is not XLM-R.*--source hf") as e:
        load_xlmr_checkpoint(tmp_path / "bert")
    checks.append(str(e.value))
    capsys.readouterr()  # save_pretrained's progress bar
    assert main(["--family", "structbert", "--source", "xlmr", "--input",
                 str(tmp_path / "bert"), "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "model_type 'bert' is not XLM-R" in err, err
    with pytest.raises(ValueError, match="'bert.embeddings.* is a BERT tensor") as e:
        from_xlmr_state_dict(bert.state_dict(), cfg)
    checks.append(str(e.value))
    with pytest.raises(ValueError, match=r"has 32 rows; XLM-R reserves the first 2") as e:
        from_xlmr_state_dict(bert.bert.state_dict(), cfg)  # BertModel keys = XLMRobertaModel's
    checks.append(str(e.value))
    with pytest.raises(ValueError, match="model_type 'xlm-roberta'.*--source xlmr") as e:
        config_from_bert(classifier.config)
    checks.append(str(e.value))
    extra = {**sd, "lm_head.dense.weight": torch.zeros(64, 64)}
    with pytest.raises(ValueError, match="unexpected tensor 'lm_head.dense.weight'") as e:
        from_xlmr_state_dict(extra, cfg)
    checks.append(str(e.value))
    assert set(from_xlmr_state_dict(extra, cfg, strict=False)) == {"encoder", "pooler",
                                                                   "classifier"}
    missing = {k: v for k, v in sd.items() if k != "roberta.encoder.layer.1.output.dense.bias"}
    with pytest.raises(ValueError, match=r"missing tensor 'encoder\.layer\.1\.output") as e:
        from_xlmr_state_dict(missing, cfg)
    checks.append(str(e.value))
    with pytest.raises(ValueError, match="XLM-R is post-LN") as e:
        from_xlmr_state_dict(sd, cfg.replace(norm_placement="pre"))
    checks.append(str(e.value))
    with pytest.raises(ValueError, match="classifier.out_proj|shape") as e:
        from_xlmr_state_dict({**sd, "classifier.out_proj.weight": torch.zeros(3, 32)}, cfg)
    checks.append(str(e.value))
    pretraining = {"encoder": from_xlmr_state_dict(sd, cfg)["encoder"],
                   "mlm_head": {"output_bias": np.zeros(101, np.float32)}}
    with pytest.raises(ValueError, match="params have 'mlm_head'") as e:
        to_xlmr_state_dict(cfg, pretraining)
    checks.append(str(e.value))
    assert set(to_xlmr_state_dict(cfg, pretraining, strict=False, as_numpy=True)) == \
        set(transformers.XLMRobertaModel(classifier.config, add_pooling_layer=False).state_dict())
    assert all("\n" not in c for c in checks), checks
