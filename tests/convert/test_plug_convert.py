"""PLUG merged Megatron state dict <-> PlugModel, shards round trip, and plug-convert for
structbert (hf <->) and plug (megatron <->).

The PLUG decoder is checked against a numpy reference written here, not against the
modelscope package's ``modelscope.models.nlp.plug`` classes (as GPT-3 and PALM are, see
tests/reference_env/): those are built from Megatron's ``mpu`` layers throughout, and the
``megatron_util`` package on PyPI is an empty placeholder, so they cannot be run here. The
encoder side is checked against transformers' ``MegatronBertModel``
(test_hf_bert.py::test_megatron_bert_model_parity)."""
import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from plug_jax.convert import io as cio
from plug_jax.convert.cli import main
from plug_jax.convert.megatron import merge_megatron_shards
from plug_jax.convert.plug import (EMBED_NORM_KEYS, load_plug_checkpoint,
                                   plug_from_merged_state_dict, plug_to_megatron_shards,
                                   plug_to_merged_state_dict, save_megatron_shards)
from plug_jax.families.plug.config import PlugConfig
from plug_jax.families.plug.network import PlugModel, abstract_params
from plug_jax.families.structbert import StructBERTForPreTraining
from plug_jax.families.structbert.config import StructBERTConfig
from plug_jax.trainer import checkpointing

ENC_LEN, DEC_LEN = 7, 5


def _cfg(scan, **kw):
    return PlugConfig.from_preset("tiny", scan_layers=scan, **kw)


def _random_params(cfg, seed):
    """PlugModel(cfg) params with every leaf random (norm scales around 1); shapes from
    ``abstract_params`` (nothing is initialised)."""
    rng = np.random.default_rng(seed)
    flat = cio.flatten_tree(cio.unbox_params(abstract_params(cfg)))
    out = {k: (1.0 + 0.1 * rng.standard_normal(np.shape(v)) if k.endswith("scale")
               else 0.1 * rng.standard_normal(np.shape(v))).astype(np.float32)
           for k, v in flat.items()}
    return cio.unflatten_tree(out)


_OUTPUTS = {}


@pytest.fixture(scope="module", params=[True, False], ids=["scanned", "unrolled"])
def plug(request):
    cfg = _cfg(request.param)
    return cfg, _random_params(cfg, 0)


@pytest.fixture(scope="module")
def scanned():
    cfg = _cfg(True)
    return cfg, _random_params(cfg, 7)


def _outputs(cfg, params):
    """PlugModel outputs of the module's fixed params (computed once per layout)."""
    if cfg.scan_layers not in _OUTPUTS:
        _OUTPUTS[cfg.scan_layers] = _apply(cfg, params)
    return _OUTPUTS[cfg.scan_layers]


def _inputs(cfg):
    rng = np.random.default_rng(3)
    enc = jnp.asarray(rng.integers(1, cfg.vocab_size, (2, ENC_LEN)), jnp.int32)
    dec = jnp.asarray(rng.integers(1, cfg.vocab_size, (2, DEC_LEN)), jnp.int32)
    types = jnp.asarray(rng.integers(0, cfg.type_vocab_size, (2, ENC_LEN)), jnp.int32)
    return enc, dec, types


_JITTED = {}


def _apply(cfg, params):
    """PlugModel(cfg) outputs on fixed inputs (one compiled function per config)."""
    if cfg not in _JITTED:
        enc, dec, types = _inputs(cfg)
        _JITTED[cfg] = jax.jit(lambda p: PlugModel(cfg).apply({"params": p}, enc, dec,
                                                              encoder_token_type_ids=types))
    return _JITTED[cfg](params)


def _assert_params_equal(got, want):
    g, w = cio.flatten_tree(got), cio.flatten_tree(cio.unbox_params(want))
    assert sorted(g) == sorted(w)
    for k in w:
        assert np.asarray(g[k]).dtype == np.float32, k
        assert np.array_equal(np.asarray(g[k]), np.asarray(w[k])), k


def _test_megatron_module():
    """tests/convert/test_megatron.py (its hand-written published PLUG layout)."""
    path = os.path.join(os.path.dirname(__file__), "test_megatron.py")
    spec = importlib.util.spec_from_file_location("_plug_test_megatron", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# ------------------------------------------------------------------------------ library
def test_shards_round_trip_is_exact_and_logits_equal(plug, tmp_path):
    cfg, params = plug
    shards = plug_to_megatron_shards(params, cfg, num_shards=8)
    assert len(shards) == 8
    assert shards[3]["bert.embeddings.word_embeddings.weight"].shape == (1024 // 8, 64)
    assert shards[0]["bert.encoder.layer.0.attention.self.query_key_value.weight"].shape == \
        (3 * 64 // 8, 64)
    assert shards[5]["decoder.decoder.layer.0.cross_attention.key_value.weight"].shape == \
        (2 * 64 // 8, 64)
    files = save_megatron_shards(shards, tmp_path / "model")
    assert [os.path.basename(f) for f in files] == [f"mp_rank_{r:02d}_model_states.pt"
                                                    for r in range(8)]
    loaded = load_plug_checkpoint(tmp_path, cfg, num_ranks=8)
    assert ("layers" in loaded["decoder"]) is cfg.scan_layers
    assert ("layers" in loaded["structbert"]["encoder"]["stack"]) is cfg.scan_layers
    _assert_params_equal(loaded, params)
    want, got = _outputs(cfg, params), _apply(cfg, loaded)
    for k in ("logits", "mlm_logits", "sentence_logits", "encoder_hidden_states"):
        np.testing.assert_array_equal(np.asarray(got[k]), np.asarray(want[k]))
    # the other layout reads the same shards into the same values
    other = _cfg(not cfg.scan_layers)
    a = plug_to_merged_state_dict(load_plug_checkpoint(tmp_path, other), other)
    b = plug_to_merged_state_dict(params, cfg)
    assert sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a)


def test_names_are_the_published_ones(plug):
    """Same names (and shapes where the sizes agree) as test_megatron's hand-written PLUG
    layout (2 encoder + 1 decoder layers, hidden 64, FFN 256), the embedding LN included."""
    cfg, params = plug
    merged = plug_to_merged_state_dict(params, cfg)
    layout = _test_megatron_module().plug_layout()
    assert set(EMBED_NORM_KEYS) <= set(merged)
    assert set(merged) == set(layout)
    size_dependent = ("word_embeddings", "position_embeddings", "cls.predictions.bias")
    for k, v in merged.items():
        if not any(s in k for s in size_dependent):
            assert v.shape == layout[k][0], k


def _ln(x, w, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def _mha(xq, xkv, wq, bq, wk, bk, wv, bv, wo, bo, heads, causal):
    hd = xq.shape[-1] // heads

    def split(x):
        return x.reshape(x.shape[0], x.shape[1], heads, hd).transpose(0, 2, 1, 3)

    q, k, v = split(xq @ wq.T + bq), split(xkv @ wk.T + bk), split(xkv @ wv.T + bv)
    s = q @ k.transpose(0, 1, 3, 2) / np.sqrt(hd)
    if causal:
        s = np.where(np.tril(np.ones(s.shape[-2:], bool)), s, -1e30)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    ctx = (p @ v).transpose(0, 2, 1, 3).reshape(xq.shape[0], xq.shape[1], heads * hd)
    return ctx @ wo.T + bo


def test_decoder_matches_plug_decode_layer_on_merged_names(plug):
    """A numpy DecodeLayer / BertDecoder (AliceMind PLUG/model/modeling.py order: input_layernorm
    -> self-attention, post_attention_layernorm -> cross-attention, post_cross_attention_layernorm
    -> FFN, final_layernorm, logits x word_embeddings^T) read from the merged names gives
    PlugModel's logits. The decoder input goes through PLUG's BertEmbeddings: word + position
    + token type 0, then bert.embeddings.LayerNorm."""
    from scipy.special import erf

    cfg, params = plug
    sd = {k: v.astype(np.float64) for k, v in plug_to_merged_state_dict(params, cfg).items()}
    out = _outputs(cfg, params)
    enc_h = np.asarray(out["encoder_hidden_states"], np.float64)
    _, dec, _ = _inputs(cfg)
    word = sd["bert.embeddings.word_embeddings.weight"]
    x = word[np.asarray(dec)] + sd["bert.embeddings.position_embeddings.weight"][:DEC_LEN]
    x = x + sd["bert.embeddings.token_type_embeddings.weight"][0]
    eps, h = cfg.layer_norm_epsilon, cfg.num_heads
    x = _ln(x, sd["bert.embeddings.LayerNorm.weight"], sd["bert.embeddings.LayerNorm.bias"], eps)
    for j in range(cfg.num_decoder_layers):
        g = lambda n: sd[f"decoder.decoder.layer.{j}.{n}"]  # noqa: E731
        wq, wk, wv = np.split(g("attention.query_key_value.weight"), 3)
        bq, bk, bv = np.split(g("attention.query_key_value.bias"), 3)
        y = _ln(x, g("input_layernorm.weight"), g("input_layernorm.bias"), eps)
        x = x + _mha(y, y, wq, bq, wk, bk, wv, bv, g("attention.dense.weight"),
                     g("attention.dense.bias"), h, causal=True)
        y = _ln(x, g("post_attention_layernorm.weight"), g("post_attention_layernorm.bias"), eps)
        wk, wv = np.split(g("cross_attention.key_value.weight"), 2)
        bk, bv = np.split(g("cross_attention.key_value.bias"), 2)
        x = x + _mha(y, enc_h, g("cross_attention.query.weight"), g("cross_attention.query.bias"),
                     wk, bk, wv, bv, g("cross_attention.dense.weight"),
                     g("cross_attention.dense.bias"), h, causal=False)
        y = _ln(x, g("post_cross_attention_layernorm.weight"),
                g("post_cross_attention_layernorm.bias"), eps)
        a = y @ g("intermediate.weight").T + g("intermediate.bias")
        a = a * 0.5 * (1.0 + erf(a / np.sqrt(2.0)))
        x = x + a @ g("output.weight").T + g("output.bias")
    x = _ln(x, sd["decoder.decoder.final_layernorm.weight"],
            sd["decoder.decoder.final_layernorm.bias"], eps)
    logits = x @ word.T
    diff = float(np.abs(logits - np.asarray(out["logits"], np.float64)).max())
    print(f"PLUG decoder (numpy, merged names) vs PlugModel: max abs diff {diff:.2e}")
    assert diff < 1e-4


def test_encoder_matches_megatron_bert_through_merged_names(scanned):
    """transformers MegatronBertModel weights renamed to PLUG's merged names (fused QKV built
    here by concatenation) -> plug_from_merged_state_dict -> same encoder hidden states.
    MegatronBertModel has no embedding LayerNorm: the PLUG config without one."""
    cfg = _cfg(True, embedding_norm=False)
    params = _random_params(cfg, 7)
    hf_cfg = transformers.MegatronBertConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_encoder_layers, num_attention_heads=cfg.num_heads,
        intermediate_size=cfg.mlp_dim, max_position_embeddings=cfg.max_position_embeddings,
        type_vocab_size=cfg.type_vocab_size, layer_norm_eps=cfg.layer_norm_epsilon)
    torch.manual_seed(5)
    model = transformers.MegatronBertModel(hf_cfg, add_pooling_layer=False).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(1.0 + 0.1 * torch.randn_like(p) if ("ln" in name.split(".")
                                                          and name.endswith("weight"))
                    else 0.1 * torch.randn_like(p))
    hf = {k: v.numpy() for k, v in model.state_dict().items() if "position_ids" not in k}
    merged = plug_to_merged_state_dict(params, cfg)  # heads + decoder from our params
    merged.pop("bert.encoder.LayerNorm.weight"), merged.pop("bert.encoder.LayerNorm.bias")
    for k, v in hf.items():
        if ".attention.self." in k:
            continue
        name = (k.replace("attention.ln.", "attention.LayerNorm.")
                .replace(".ln.", ".LayerNorm.").replace("encoder.ln.", "encoder.LayerNorm."))
        merged["bert." + name] = v
    for i in range(cfg.num_encoder_layers):
        p = f"encoder.layer.{i}.attention.self."
        for t in ("weight", "bias"):
            merged[f"bert.{p}query_key_value.{t}"] = np.concatenate(
                [hf[f"{p}{n}.{t}"] for n in ("query", "key", "value")])
    converted = plug_from_merged_state_dict(merged, cfg)
    enc, dec, types = _inputs(cfg)
    ours = _apply(cfg, converted)["encoder_hidden_states"]
    with torch.no_grad():
        ref = model(input_ids=torch.tensor(np.asarray(enc)).long(),
                    token_type_ids=torch.tensor(np.asarray(types)).long()).last_hidden_state
    diff = float(np.abs(np.asarray(ours) - ref.numpy()).max())
    print(f"PLUG encoder vs MegatronBertModel through merged names: max abs diff {diff:.2e}")
    assert diff < 1e-4


def test_errors_are_one_line(plug):
    cfg, params = plug
    merged = plug_to_merged_state_dict(params, cfg)
    # a config without the embedding LayerNorm: the published tensor has no place
    cfg_no = _cfg(cfg.scan_layers, embedding_norm=False)
    params_no = _random_params(cfg_no, 3)
    with_ln = dict(plug_to_merged_state_dict(params_no, cfg_no),
                   **{k: np.ones(64, np.float32) for k in EMBED_NORM_KEYS})
    with pytest.raises(ValueError, match=r"^plug_from_merged_state_dict: tensor 'bert\.embeddings"
                                         r"\.LayerNorm\.weight' has no place in PlugModel.*"
                                         r"embedding_norm='drop'"):
        plug_from_merged_state_dict(with_ln, cfg_no)
    _assert_params_equal(plug_from_merged_state_dict(with_ln, cfg_no, embedding_norm="drop"),
                         params_no)
    no_ln = {k: v for k, v in merged.items() if k not in EMBED_NORM_KEYS}
    with pytest.raises(ValueError, match=r"missing tensor 'bert\.embeddings\.LayerNorm"):
        plug_from_merged_state_dict(no_ln, cfg)
    # ModelScope attn_separate=True names for the encoder read the same
    separate = dict(merged)
    for i in range(cfg.num_encoder_layers):
        p = f"bert.encoder.layer.{i}.attention.self."
        for t in ("weight", "bias"):
            for n, part in zip(("query", "key", "value"),
                               np.split(separate.pop(f"{p}query_key_value.{t}"), 3)):
                separate[f"{p}{n}.{t}"] = part
    _assert_params_equal(plug_from_merged_state_dict(separate, cfg), params)
    bad = dict(merged)
    del bad["decoder.decoder.layer.0.cross_attention.key_value.bias"]
    with pytest.raises(ValueError, match=r"missing tensor 'decoder\.decoder\.layer\.0\.cross_"
                                         r"attention\.key_value\.bias'"):
        plug_from_merged_state_dict(bad, cfg)
    with pytest.raises(ValueError, match=r"unexpected tensor 'bert\.encoder\.layer\.2\.LayerNorm"
                                         r"\.weight'.*strict=False"):
        plug_from_merged_state_dict(dict(merged, **{"bert.encoder.layer.2.LayerNorm.weight":
                                                    np.ones(64, np.float32)}), cfg)
    with pytest.raises(ValueError, match=r"'bert\.embeddings\.word_embeddings\.weight' has shape "
                                         r"\(1024, 64\).*expects \(21504, 64\); set vocab_size="
                                         r"1024"):
        plug_from_merged_state_dict(merged, PlugConfig.from_preset("tiny", vocab_size=21504))


# ------------------------------------------------------------------------------ CLI
def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("plug-convert: error: ")
    assert "Traceback" not in err
    return lines[0]


TINY_BERT = dict(vocab_size=101, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=256, max_position_embeddings=32, type_vocab_size=2)


def _bert_batch():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, TINY_BERT["vocab_size"], (3, 9), generator=g)
    mask = torch.zeros(3, 9, dtype=torch.long)
    for row, n in enumerate((9, 5, 1)):
        mask[row, :n] = 1
    types = torch.zeros(3, 9, dtype=torch.long)
    types[:, 4:] = 1
    return ids * mask, types * mask, mask


@pytest.mark.parametrize("safetensors", [True, False], ids=["safetensors", "bin"])
def test_cli_structbert_hf_to_ours_to_hf(tmp_path, capsys, safetensors):
    torch.manual_seed(0)
    model = transformers.BertForPreTraining(transformers.BertConfig(**TINY_BERT)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(1.0 + 0.1 * torch.randn_like(p) if ("LayerNorm" in name and
                                                          name.endswith("weight"))
                    else 0.1 * torch.randn_like(p))
    src, ours, back = tmp_path / "hf", tmp_path / "ours", tmp_path / "back"
    model.save_pretrained(src, safe_serialization=safetensors)
    assert main(["--family", "structbert", "--source", "hf", "--input", str(src),
                 "--output", str(ours), "--scan_layers", "false"]) == 0
    assert "structbert from hf" in capsys.readouterr().out
    # --preset replaces the input's config.json: the tiny preset's sizes do not fit
    assert main(["--family", "structbert", "--source", "hf", "--input", str(src), "--preset",
                 "tiny", "--output", str(tmp_path / "x")]) == 2
    assert "has shape (32, 64), the config expects (128, 64)" in _one_error_line(capsys)
    config_dict, params, metadata = checkpointing.load_params(ours)
    assert metadata["family"] == "structbert"
    cfg = StructBERTConfig(**config_dict)
    ids, types, mask = _bert_batch()
    out = StructBERTForPreTraining(cfg).apply({"params": params}, jnp.asarray(ids.numpy()),
                                              jnp.asarray(types.numpy()),
                                              jnp.asarray(mask.numpy()))
    real = mask.numpy().astype(bool)

    assert main(["--to", "hf", "--family", "structbert", "--input", str(ours),
                 "--output", str(back)]) == 0
    assert "model.safetensors + config.json" in capsys.readouterr().out
    assert sorted(os.listdir(back)) == ["config.json", "model.safetensors"]
    reloaded = transformers.BertForPreTraining.from_pretrained(back).eval()
    for k, v in model.state_dict().items():
        assert torch.equal(reloaded.state_dict()[k], v), k
    with torch.no_grad():
        ref = reloaded(input_ids=ids, token_type_ids=types, attention_mask=mask)
    diffs = {"mlm": float(np.abs(np.asarray(out["mlm_logits"]) -
                                 ref.prediction_logits.numpy())[real].max()),
             "nsp": float(np.abs(np.asarray(out["sentence_logits"]) -
                                 ref.seq_relationship_logits.numpy()).max())}
    print(f"structbert hf -> ours -> hf ({'safetensors' if safetensors else 'bin'}): {diffs}")
    assert max(diffs.values()) < 1e-4, diffs


def test_cli_plug_megatron_to_ours_and_back(scanned, tmp_path, capsys):
    cfg, params = scanned
    src = tmp_path / "plug_model" / "28000"  # AliceMind layout: <dir>/<tag>/mp_rank_XX
    save_megatron_shards(plug_to_megatron_shards(params, cfg), src, dtype=torch.float32)
    ours = tmp_path / "ours"
    assert main(["--family", "plug", "--source", "megatron", "--preset", "tiny",
                 "--input", str(tmp_path / "plug_model"), "--output", str(ours)]) == 0
    printed = capsys.readouterr().out
    assert "plug from megatron" in printed and "encoder_layers=2 decoder_layers=1" in printed
    config_dict, loaded, metadata = checkpointing.load_params(ours)
    assert metadata["family"] == "plug" and metadata["preset"] == "tiny"
    assert PlugConfig(**config_dict) == cfg
    _assert_params_equal(loaded, params)

    shards = tmp_path / "shards"
    assert main(["--to", "megatron", "--family", "plug", "--input", str(ours),
                 "--output", str(shards)]) == 0
    assert "8 mp_rank_XX_model_states.pt files" in capsys.readouterr().out
    assert sorted(os.listdir(shards)) == [f"mp_rank_{r:02d}_model_states.pt" for r in range(8)]
    again = load_plug_checkpoint(shards, cfg, num_ranks=8)
    _assert_params_equal(again, params)


def test_cli_errors_are_one_line(scanned, tmp_path, capsys):
    cfg, params = scanned
    shards = plug_to_megatron_shards(params, cfg)
    src = tmp_path / "src"
    save_megatron_shards(shards, src)
    base = ["--family", "plug", "--source", "megatron", "--preset", "tiny", "--input", str(src)]

    def run(argv):
        return main(argv + ["--output", str(tmp_path / "o")])

    os.remove(src / "mp_rank_07_model_states.pt")
    assert run(base) == 2
    assert "mp_rank_07 missing in" in _one_error_line(capsys)
    assert not (tmp_path / "o").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run(base[:-1] + [str(empty)]) == 2
    assert "no tensor-parallel shards in" in _one_error_line(capsys)
    assert run(["--family", "plug", "--source", "hf", "--input", str(src)]) == 2
    assert "family 'plug' cannot be converted from source 'hf'; use --source megatron" in \
        _one_error_line(capsys)
    assert run(["--family", "plug", "--to", "hf", "--input", str(src)]) == 2
    assert "cannot export family 'plug' to 'hf'" in _one_error_line(capsys)
    assert run(["--family", "gpt3", "--to", "megatron", "--input", str(src)]) == 2
    assert "cannot export family 'gpt3' to 'megatron'" in _one_error_line(capsys)
    assert run(["--family", "plug", "--input", str(src)]) == 2
    assert "--source" in _one_error_line(capsys)
    assert run(["--family", "bogus", "--source", "hf", "--input", str(src)]) == 2
    assert "unknown family 'bogus'; supported families: gpt3, structbert, plug" in \
        _one_error_line(capsys)

    # shards without the published embedding LayerNorm: one line naming the tensor
    part = tmp_path / "part"
    merged = {k: v for k, v in plug_to_merged_state_dict(params, cfg).items()
              if k not in EMBED_NORM_KEYS}
    from plug_jax.convert.megatron import split_tensor_parallel
    save_megatron_shards(split_tensor_parallel(merged, 8), part)
    assert run(base[:-1] + [str(part)]) == 2
    assert "missing tensor 'bert.embeddings.LayerNorm" in _one_error_line(capsys)
    # wrong preset size: one line naming the tensor and the fix
    argv = base[:-1] + [str(src.parent / "full")]
    save_megatron_shards(plug_to_megatron_shards(params, cfg), src.parent / "full")
    assert run(argv + ["--vocab_size", "2048", "--overwrite"]) == 2
    assert "set vocab_size=1024" in _one_error_line(capsys)
