"""Hugging Face GPT-2 <-> GPT3LM: logit parity against transformers, exact round trips, errors."""
import json
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from plug_jax.convert import (from_transformers, gpt3_config_from_hf, to_transformers,
                              to_transformers_config)
from plug_jax.families.gpt3 import GPT3LM

TINY = dict(n_embd=64, n_head=4, n_layer=2, vocab_size=101, n_positions=32)
# n_head=6 is not a power of two; exact-erf GELU; the eager upcast/reorder attention path.
ODD = dict(n_embd=96, n_head=6, n_layer=3, vocab_size=101, n_positions=32,
           activation_function="gelu", reorder_and_upcast_attn=True, layer_norm_epsilon=1e-6)
UNTIED = dict(n_embd=32, n_head=2, n_layer=1, vocab_size=53, n_positions=16,
              tie_word_embeddings=False, n_inner=48)


def make_gpt2(seed: int, **kw):
    """A GPT2LMHeadModel with every weight random (biases and LayerNorms included)."""
    torch.manual_seed(seed)
    # reorder_and_upcast_attn only takes effect in the eager attention implementation.
    impl = "eager" if kw.get("reorder_and_upcast_attn") else None
    cfg = transformers.GPT2Config(bos_token_id=0, eos_token_id=0, attn_implementation=impl, **kw)
    model = transformers.GPT2LMHeadModel(cfg)
    assert model.config._attn_implementation == (impl or model.config._attn_implementation)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".ln_" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                p.copy_(0.1 * torch.randn_like(p))
    return model.eval()


def batch(vocab: int):
    """Right-padded batch: rows of length 9, 5 and 1."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, (3, 9), generator=g)
    mask = torch.zeros(3, 9, dtype=torch.long)
    for row, n in enumerate((9, 5, 1)):
        mask[row, :n] = 1
    ids = ids * mask  # pad id 0
    return ids, mask


def assert_logits_match(model, cfg, params, atol=1e-4):
    ids, mask = batch(cfg.vocab_size)
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask).logits.numpy()
    got = np.asarray(GPT3LM(cfg).apply({"params": params}, jnp.asarray(ids.numpy()),
                                       attention_mask=jnp.asarray(mask.numpy())))
    assert got.dtype == np.float32 and got.shape == ref.shape
    real = mask.numpy().astype(bool)
    np.testing.assert_allclose(got[real], ref[real], atol=atol, rtol=0)


@pytest.fixture(scope="module")
def tiny():
    return make_gpt2(0, **TINY)


@pytest.fixture(scope="module")
def odd():
    return make_gpt2(1, **ODD)


def _flat(tree, prefix=""):
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = v
    return out


def test_tiny_logits_match_transformers(tiny):
    cfg, params = from_transformers(tiny)
    assert (cfg.num_layers, cfg.num_heads, cfg.hidden_size, cfg.mlp_dim) == (2, 4, 64, 256)
    assert cfg.activation == "gelu_tanh" and cfg.layer_norm_epsilon == 1e-5
    assert cfg.max_position_embeddings == 32 and cfg.vocab_size == 101
    assert cfg.tie_word_embeddings and cfg.scan_layers
    flat = _flat(params)
    assert flat["decoder/layers/attn/query/kernel"].shape == (2, 64, 4, 16)
    assert flat["decoder/layers/attn/out/kernel"].shape == (2, 4, 16, 64)
    assert flat["decoder/layers/mlp/wi/bias"].shape == (2, 256)
    assert "lm_head/kernel" not in flat
    assert all(isinstance(v, np.ndarray) and v.dtype == np.float32 for v in flat.values())
    assert_logits_match(tiny, cfg, params)


def test_odd_heads_exact_gelu_logits_match_transformers(odd):
    cfg, params = from_transformers(odd)
    assert cfg.num_heads == 6 and cfg.kv_dim == 16 and cfg.num_layers == 3
    assert cfg.activation == "gelu" and cfg.layer_norm_epsilon == 1e-6
    assert_logits_match(odd, cfg, params)


def test_save_pretrained_directory_matches_instance(tiny, tmp_path):
    tiny.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    cfg_dir, params_dir = from_transformers(str(tmp_path))
    cfg, params = from_transformers(tiny)
    assert cfg_dir == cfg
    a, b = _flat(params_dir), _flat(params)
    assert a.keys() == b.keys()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert_logits_match(tiny, cfg_dir, params_dir)


def test_pytorch_bin_state_dict_and_gpt2model_inputs(tiny, tmp_path):
    _, want = from_transformers(tiny)
    torch.save(tiny.state_dict(), tmp_path / "pytorch_model.bin")
    tiny.config.to_json_file(str(tmp_path / "config.json"))
    sources = {
        "bin dir": from_transformers(tmp_path)[1],
        "bare state dict": from_transformers(dict(tiny.state_dict()), config=tiny.config)[1],
        "numpy state dict": from_transformers(
            {k: v.numpy() for k, v in tiny.state_dict().items()},
            config=tiny.config.to_dict())[1],
        "GPT2Model": from_transformers(tiny.transformer)[1],
    }
    w = _flat(want)
    for name, got in sources.items():
        g = _flat(got)
        assert g.keys() == w.keys(), name
        assert all(np.array_equal(g[k], w[k]) for k in w), name


@pytest.mark.parametrize("scan", [True, False])
def test_round_trip_reproduces_state_dict_exactly(tiny, scan):
    cfg, params = from_transformers(tiny, scan_layers=scan)
    assert cfg.scan_layers is scan
    assert ("layers" in params["decoder"]) is scan
    assert ("layers_1" in params["decoder"]) is not scan
    sd = to_transformers(cfg, params)
    orig = {k: v for k, v in tiny.state_dict().items()
            if not k.endswith(("attn.bias", "attn.masked_bias")) or "c_attn" in k}
    assert set(sd) == set(orig)
    for k, v in orig.items():
        assert sd[k].dtype == torch.float32
        assert torch.equal(sd[k], v), k
    fresh = transformers.GPT2LMHeadModel(to_transformers_config(cfg))
    fresh.load_state_dict(sd, strict=True)


def test_untied_lm_head_round_trip_and_logits():
    model = make_gpt2(2, **UNTIED)
    cfg, params = from_transformers(model)
    assert not cfg.tie_word_embeddings and cfg.mlp_dim == 48
    assert params["lm_head"]["kernel"].shape == (32, 53)
    assert_logits_match(model, cfg, params)
    sd = to_transformers(cfg, params)
    assert set(sd) == set(model.state_dict())
    assert all(torch.equal(sd[k], v) for k, v in model.state_dict().items())
    hf_cfg = to_transformers_config(cfg)
    assert hf_cfg.tie_word_embeddings is False and hf_cfg.n_inner == 48


def test_to_transformers_config_round_trips_fields(odd):
    cfg, _ = from_transformers(odd)
    hf = to_transformers_config(cfg)
    assert (hf.n_embd, hf.n_head, hf.n_layer, hf.n_inner, hf.n_positions, hf.vocab_size) == \
        (96, 6, 3, 384, 32, 101)
    assert hf.activation_function == "gelu" and hf.layer_norm_epsilon == 1e-6
    assert gpt3_config_from_hf(hf) == cfg.replace(
        dropout_rate=hf.resid_pdrop, attention_dropout_rate=hf.attn_pdrop)


@pytest.mark.parametrize("option, match", [
    ({"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx"),
    ({"add_cross_attention": True}, "add_cross_attention"),
    ({"scale_attn_weights": False}, "scale_attn_weights"),
    ({"activation_function": "tanh"}, "activation_function 'tanh'"),
    ({"model_type": "llama"}, "model_type 'llama'"),
])
def test_unsupported_hf_features_raise_one_line(option, match):
    cfg = {**TINY, "model_type": "gpt2", **option}
    with pytest.raises(ValueError, match=match) as e:
        gpt3_config_from_hf(cfg)
    assert "\n" not in str(e.value)


def test_reorder_and_upcast_attn_is_accepted():
    cfg = gpt3_config_from_hf({**TINY, "reorder_and_upcast_attn": True})
    assert cfg.num_heads == 4  # same function in float32; parity is covered by the ODD model


def test_unknown_family_lists_supported(tiny):
    with pytest.raises(ValueError, match=r"unknown family 'plug'.*supported families: gpt3"):
        from_transformers(tiny, family="plug")
    cfg, params = from_transformers(tiny)
    with pytest.raises(ValueError, match="supported families: gpt3"):
        to_transformers(cfg, params, family="palm")


def test_missing_and_unexpected_tensors_are_named(tiny):
    sd = dict(tiny.state_dict())
    del sd["transformer.h.1.mlp.c_fc.bias"]
    with pytest.raises(ValueError, match=r"missing tensor 'h\.1\.mlp\.c_fc\.bias'"):
        from_transformers(sd, config=tiny.config)
    sd = dict(tiny.state_dict())
    sd["score.weight"] = torch.zeros(2, 64)
    with pytest.raises(ValueError, match=r"unexpected tensor 'score\.weight'"):
        from_transformers(sd, config=tiny.config)
    _, params = from_transformers(sd, config=tiny.config, strict=False)
    assert "score" not in params
    with pytest.raises(ValueError, match="needs config="):
        from_transformers(dict(tiny.state_dict()))


def test_import_convert_does_not_import_torch_or_transformers():
    code = ("import sys, plug_jax.convert; "
            "print(sorted(m for m in ('torch', 'transformers', 'orbax') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"})
    assert json.loads(out.stdout.strip().replace("'", '"')) == []
