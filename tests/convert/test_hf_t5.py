"""transformers T5 / mT5 (and ChatPLUG's XDPX layout) <-> plug_jax.layers.t5: parity on random
weights (encoder states and logits with padded inputs, fusion-in-decoder against a FiD built
from transformers' own encoder and decoder), bit-exact round trips, one-line errors."""
import re

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from plug_jax.convert.hf_t5 import (config_from_hf, from_hf_state_dict, from_xdpx_state_dict,
                                    load_t5_checkpoint, to_hf_config, to_hf_state_dict,
                                    to_xdpx_state_dict)
from plug_jax.convert.io import WeightsLoadError, flatten_tree
from plug_jax.layers.t5 import T5EncoderDecoder

TINY = dict(vocab_size=128, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2,
            num_heads=4, feed_forward_proj="gated-gelu", dropout_rate=0.0)
ATOL = 1e-4


def _randomise(model, seed):
    """Every weight random (RMSNorm scales around 1); the LM head untied from ``shared``
    when the config asks for an untied head (transformers 5.x ties it in a fresh model)."""
    torch.manual_seed(seed)
    if not getattr(model.config, "scale_decoder_outputs", False):  # mT5 / T5.1.1
        model.lm_head.weight = torch.nn.Parameter(torch.empty_like(model.lm_head.weight))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layer_norm" in name:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif "relative_attention_bias" in name:
                p.copy_(torch.randn_like(p))
            else:
                p.copy_(0.2 * torch.randn_like(p))
    return model.eval()


@pytest.fixture(scope="module")
def mt5():
    return _randomise(transformers.MT5ForConditionalGeneration(transformers.MT5Config(**TINY)), 0)


def _batch(vocab=TINY["vocab_size"]):
    """Encoder rows of length 9, 5, 2 (right-padded, mask), decoder rows of length 6, 4, 6."""
    g = torch.Generator().manual_seed(1)
    enc = torch.randint(2, vocab, (3, 9), generator=g)
    enc_mask = torch.zeros(3, 9, dtype=torch.long)
    for r, n in enumerate((9, 5, 2)):
        enc_mask[r, :n] = 1
    dec = torch.randint(2, vocab, (3, 6), generator=g)
    dec[:, 0] = 0  # the decoder start token
    dec_mask = torch.ones(3, 6, dtype=torch.long)
    dec_mask[1, 4:] = 0
    return enc * enc_mask, enc_mask, dec * dec_mask, dec_mask


def _j(t):
    return jnp.asarray(t.numpy())


def _max_diff(a, b, real):
    d = np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))
    return float(d[real].max())


def _check_parity(hf, cfg, params):
    enc, enc_mask, dec, dec_mask = _batch(cfg.vocab_size)
    with torch.no_grad():
        ref = hf(input_ids=enc, attention_mask=enc_mask, decoder_input_ids=dec,
                 decoder_attention_mask=dec_mask)
    out = T5EncoderDecoder(cfg).apply({"params": params}, _j(enc), _j(dec))
    assert out["logits"].dtype == jnp.float32
    diffs = {"encoder": _max_diff(out["encoder_hidden_states"],
                                  ref.encoder_last_hidden_state.numpy(),
                                  enc_mask.numpy().astype(bool)),
             "logits": _max_diff(out["logits"], ref.logits.numpy(),
                                 dec_mask.numpy().astype(bool))}
    print(f"T5 parity ({type(hf).__name__}) max abs diffs: {diffs}")
    assert max(diffs.values()) < ATOL, diffs


@pytest.mark.parametrize("scan", [True, False])
def test_mt5_parity(mt5, scan):
    cfg = config_from_hf(mt5.config, scan_layers=scan)
    assert (cfg.gated_mlp, cfg.activation, cfg.tie_word_embeddings) == (True, "gelu_tanh", False)
    params = from_hf_state_dict(mt5.state_dict(), cfg)
    assert ("layers" in params["encoder"]["stack"]) is scan
    _check_parity(mt5, cfg, params)


def test_t5_tied_rescaled_head_and_relu_ffn_parity():
    """Original T5: tied head on x * d_model**-0.5, ``wo(relu(wi x))``; more buckets."""
    hf_cfg = transformers.T5Config(**{**TINY, "feed_forward_proj": "relu",
                                      "relative_attention_num_buckets": 16,
                                      "relative_attention_max_distance": 20})
    hf = _randomise(transformers.T5ForConditionalGeneration(hf_cfg), 3)
    cfg = config_from_hf(hf.config)
    assert cfg.tie_word_embeddings and not cfg.gated_mlp and cfg.activation == "relu"
    params = from_hf_state_dict(hf.state_dict(), cfg)
    assert "lm_head" not in params
    _check_parity(hf, cfg, params)
    back = to_hf_state_dict(cfg, params)
    assert set(back) == set(hf.state_dict())
    assert all(torch.equal(back[k], v) for k, v in hf.state_dict().items())
    assert to_hf_config(cfg).scale_decoder_outputs


def test_fid_parity(mt5):
    """Fusion-in-decoder: transformers' encoder on each passage alone, states and masks
    concatenated, its decoder on them; against ``T5EncoderDecoder`` on ``[B, P, L]``."""
    cfg = config_from_hf(mt5.config)
    params = from_hf_state_dict(mt5.state_dict(), cfg)
    g = torch.Generator().manual_seed(5)
    b, p, length = 2, 3, 6
    ids = torch.randint(2, cfg.vocab_size, (b, p, length), generator=g)
    lengths = torch.tensor([[6, 3, 1], [4, 6, 2]])
    mask = (torch.arange(length)[None, None] < lengths[..., None]).long()
    ids = ids * mask
    _, _, dec, dec_mask = _batch()
    dec, dec_mask = dec[:b], dec_mask[:b]
    with torch.no_grad():
        states = mt5.encoder(input_ids=ids.view(b * p, length),
                             attention_mask=mask.view(b * p, length)).last_hidden_state
        states = states.view(b, p * length, -1)
        flat_mask = mask.view(b, p * length)
        h = mt5.decoder(input_ids=dec, attention_mask=dec_mask, encoder_hidden_states=states,
                        encoder_attention_mask=flat_mask).last_hidden_state
        ref = mt5.lm_head(h).numpy()
    model = T5EncoderDecoder(cfg)
    out = model.apply({"params": params}, _j(ids), _j(dec))
    real = flat_mask.numpy().astype(bool)
    enc_diff = _max_diff(out["encoder_hidden_states"], states.numpy(), real)
    logit_diff = _max_diff(out["logits"], ref, dec_mask.numpy().astype(bool))
    print(f"FiD parity max abs diffs: encoder {enc_diff:.3g}, logits {logit_diff:.3g}")
    assert max(enc_diff, logit_diff) < ATOL
    encoded = model.apply({"params": params}, _j(ids), method="encode_passages")
    np.testing.assert_array_equal(np.asarray(encoded["mask"]), real)
    np.testing.assert_array_equal(np.asarray(encoded["hidden_states"]),
                                  np.asarray(out["encoder_hidden_states"]))


@pytest.mark.parametrize("scan", [True, False])
def test_hf_round_trip_is_exact(mt5, scan):
    sd = mt5.state_dict()
    cfg = config_from_hf(mt5.config, scan_layers=scan)
    params = from_hf_state_dict(sd, cfg)
    back = to_hf_state_dict(cfg, params)
    assert set(back) == set(sd)
    for k, v in sd.items():
        assert back[k].dtype == torch.float32 and torch.equal(back[k], v), k
    again = from_hf_state_dict(to_hf_state_dict(cfg, params, as_numpy=True), cfg)
    a, b = flatten_tree(again), flatten_tree(params)
    assert set(a) == set(b) and all(np.array_equal(a[k], b[k]) for k in b)
    hf_cfg = to_hf_config(cfg)
    assert isinstance(hf_cfg, transformers.MT5Config)
    assert config_from_hf(hf_cfg, scan_layers=scan) == cfg


def _xdpx(sd, ddp=True):
    """ChatPLUG's FIDT5Chat.state_dict() layout (optionally saved from DDP: ``module.``)."""
    out = {}
    for k, v in sd.items():
        if k.startswith("encoder."):  # the FiD wrapper, and block N's checkpoint wrapper
            k = "backbone.encoder." + re.sub(r"^encoder\.block\.(\d+)\.",
                                             r"encoder.block.\1.module.", k)
        else:
            k = "backbone." + k
        out[("module." if ddp else "") + k] = v
    return out


def test_xdpx_round_trip(mt5):
    sd = mt5.state_dict()
    cfg = config_from_hf(mt5.config)
    want = flatten_tree(from_hf_state_dict(sd, cfg))
    xdpx = _xdpx(sd)
    assert "module.backbone.encoder.encoder.block.1.module.layer.0.SelfAttention.q.weight" in xdpx
    got = flatten_tree(from_xdpx_state_dict(xdpx, cfg))
    assert set(got) == set(want) and all(np.array_equal(got[k], want[k]) for k in want)
    back = to_xdpx_state_dict(cfg, from_xdpx_state_dict(xdpx, cfg))
    plain = _xdpx(sd, ddp=False)
    assert set(back) == set(plain)
    assert all(torch.equal(back[k], v) for k, v in plain.items())


def test_load_checkpoint_files(mt5, tmp_path):
    cfg = config_from_hf(mt5.config)
    want = flatten_tree(from_hf_state_dict(mt5.state_dict(), cfg))
    mt5.save_pretrained(tmp_path / "hf")  # config.json + model.safetensors (no tied copies)
    cfg1, got1 = load_t5_checkpoint(tmp_path / "hf")
    # XDPX release style: a torch.save'd state dict with the HF config.json beside it.
    (tmp_path / "xdpx").mkdir()
    torch.save(_xdpx(mt5.state_dict()), tmp_path / "xdpx" / "checkpoint.pt")
    (tmp_path / "xdpx" / "config.json").write_text((tmp_path / "hf" / "config.json").read_text())
    cfg2, got2 = load_t5_checkpoint(tmp_path / "xdpx" / "checkpoint.pt")
    for c, tree in ((cfg1, got1), (cfg2, got2)):
        assert c == cfg
        flat = flatten_tree(tree)
        assert set(flat) == set(want) and all(np.array_equal(flat[k], want[k]) for k in want)


def test_errors_are_one_line(mt5):
    cfg = config_from_hf(mt5.config)
    sd = dict(mt5.state_dict())
    checks = []
    extra = {**sd, "classifier.weight": torch.zeros(2, 32)}
    with pytest.raises(WeightsLoadError, match="unexpected tensor 'classifier.weight'.*fix") as e:
        from_hf_state_dict(extra, cfg)
    checks.append(e)
    assert "classifier" not in from_hf_state_dict(extra, cfg, strict=False)
    key = "decoder.block.1.layer.1.EncDecAttention.k.weight"
    with pytest.raises(WeightsLoadError, match=f"missing tensor '{key}'.*fix") as e:
        from_hf_state_dict({k: v for k, v in sd.items() if k != key}, cfg)
    checks.append(e)
    bad = {**sd, "encoder.block.0.layer.1.DenseReluDense.wi_1.weight": torch.zeros(48, 32)}
    with pytest.raises(WeightsLoadError, match=r"'encoder.block.0.layer.1.DenseReluDense.wi_1"
                       r".weight' has shape \(48, 32\), the config expects \(64, 32\).*fix"
                       ) as e:
        from_hf_state_dict(bad, cfg)
    checks.append(e)
    xkey = "module.backbone.encoder.encoder.block.0.module.layer.0.layer_norm.weight"
    xbad = {**_xdpx(sd), xkey: torch.ones(31)}
    with pytest.raises(WeightsLoadError, match=f"'{xkey}' has shape") as e:
        from_xdpx_state_dict(xbad, cfg)
    checks.append(e)
    with pytest.raises(WeightsLoadError, match="'lm_head.weight' differs.*tie_word_embeddings"
                       "=False") as e:
        from_hf_state_dict(sd, cfg.replace(tie_word_embeddings=True))
    checks.append(e)
    with pytest.raises(WeightsLoadError, match="model_type 'bert'") as e:
        config_from_hf({**TINY, "model_type": "bert"})
    checks.append(e)
    assert all("\n" not in str(c.value) for c in checks)
