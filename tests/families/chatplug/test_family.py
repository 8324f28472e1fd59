"""ChatPLUG: preset sizes without allocation, the flattened fusion-in-decoder input equal to the
T5 layer's ``[B, P, L]`` passages, cached decoding equal to the recompute path through
``EncoderDecoderLM``, the FLOP formula, the model gins, and the registered converters
(transformers MT5 and XDPX) round-tripping, the MT5 export loading in transformers."""
import functools
import json
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from plug_jax import decoding, models
from plug_jax.families import registry
from plug_jax.families.chatplug import (PUBLISHED_PARAMS, ChatPLUGConfig, ChatPLUGModel,
                                        hand_count, param_count, split_passages)
from plug_jax.families.chatplug.flops import training_flops_per_example
from plug_jax.layers.t5 import T5EncoderDecoder

# One encoder and one decoder layer, 3 passages of 6 tokens; a larger init keeps the random
# model's greedy tokens varied.
SMALL = ChatPLUGConfig.from_preset("tiny", num_layers=1, num_passages=3, passage_length=6,
                                   vocab_size=96, initializer_factor=2.0)
P, L = SMALL.num_passages, SMALL.passage_length


def test_preset_sizes_without_allocation():
    """3.7B (mT5-XL) within 2% of the published 3.7B; 240M = the mT5-base shape with the
    27,136-row vocabulary chosen in config.py (239.91M); both equal the hand count."""
    counts = {name: param_count(ChatPLUGConfig.from_preset(name))  # jax.eval_shape only
              for name in ("3.7B", "240M", "tiny")}
    print({k: f"{v:,}" for k, v in counts.items()})
    assert abs(counts["3.7B"] / PUBLISHED_PARAMS["3.7B"] - 1) < 0.02
    assert counts["3.7B"] == 3_742_619_648  # google/mt5-xl
    assert counts["240M"] == 239_910_144
    assert abs(counts["240M"] / PUBLISHED_PARAMS["240M"] - 1) < 0.001
    for name, n in counts.items():
        assert n == hand_count(ChatPLUGConfig.from_preset(name)), name
    # the contract test's committed parameter-tree snapshot is the tiny preset's tree
    snap = json.loads((pathlib.Path(__file__).parents[1] / "snapshots" / "chatplug.json")
                      .read_text())["encdec_lm"]
    assert sum(int(np.prod(v["shape"])) for v in snap.values()) == counts["tiny"]
    xl = ChatPLUGConfig.from_preset("3.7B")
    assert (xl.num_layers, xl.decoder_layers, xl.d_model, xl.num_heads, xl.d_kv, xl.d_ff,
            xl.vocab_size, xl.tie_word_embeddings, xl.gated_mlp) == (
        24, 24, 2048, 32, 64, 5120, 250112, False, True)
    assert (xl.num_passages, xl.passage_length, xl.max_decoder_length) == (20, 380, 512)
    with pytest.raises(ValueError, match="untied LM head"):
        ChatPLUGConfig(tie_word_embeddings=True)
    with pytest.raises(ValueError, match="num_passages must be >= 1"):
        ChatPLUGConfig(num_passages=0)


@functools.lru_cache(maxsize=None)
def _params(cfg=SMALL):
    ids = jnp.ones((1, 4), jnp.int32)
    return nn.unbox(jax.jit(ChatPLUGModel(cfg).init)(jax.random.PRNGKey(0), ids, ids))["params"]


def _passages(seed=1, lengths=((6, 3, 0), (2, 6, 5))):
    """``[B, P, L]`` passages (0 = padding; a 0-length passage is absent)."""
    rs = np.random.RandomState(seed)
    ids = rs.randint(1, SMALL.vocab_size, (len(lengths), P, L)).astype(np.int32)
    ids[np.arange(L)[None, None] >= np.asarray(lengths)[..., None]] = 0
    return ids


@functools.lru_cache(maxsize=None)
def _apply(module):
    return jax.jit(lambda p, e, d: module.apply({"params": p}, e, d))


def test_flattened_fid_input_equals_the_t5_layer_on_passages():
    """``[B, P * L]`` through ChatPLUGModel = ``[B, P, L]`` through T5EncoderDecoder (same
    params): logits and encoder states. A shorter row is padded to whole passages; a longer
    one is refused; ``num_passages=1`` is the plain T5 over the whole row."""
    params = _params()
    passages = _passages()
    dec = np.random.RandomState(2).randint(1, SMALL.vocab_size, (2, 5)).astype(np.int32)
    flat = passages.reshape(2, P * L)
    fid, t5 = _apply(ChatPLUGModel(SMALL)), _apply(T5EncoderDecoder(SMALL.t5_config()))
    got, want = fid(params, flat, dec), t5(params, passages, dec)
    np.testing.assert_allclose(got["logits"], want["logits"], atol=1e-6, rtol=0)
    np.testing.assert_allclose(got["encoder_hidden_states"], want["encoder_hidden_states"],
                               atol=1e-6, rtol=0)
    # A row of 1.5 passages (plug-infer prompts) = the same tokens padded to 2 passages.
    short = flat[:, :L + L // 2]
    ids, seg, _ = split_passages(short, num_passages=P, passage_length=L)
    assert ids.shape == (2, 2, L) and int(seg[:, 1, L // 2:].sum()) == 0
    np.testing.assert_allclose(fid(params, short, dec)["logits"],
                               t5(params, np.asarray(ids), dec)["logits"], atol=1e-6, rtol=0)
    # Padding inside a passage stays hidden when (packed-style) segment ids cover it.
    ids, seg, pos = split_passages(flat, np.ones_like(flat), np.arange(P * L)[None] + 0 * flat,
                                   num_passages=P, passage_length=L)
    np.testing.assert_array_equal(np.asarray(seg), passages > 0)
    assert pos.shape == (2, P, L)
    with pytest.raises(ValueError, match="more than num_passages"):
        fid(params, np.ones((2, P * L + 1), np.int32), dec)
    plain = _apply(ChatPLUGModel(SMALL.replace(num_passages=1)))(params, flat, dec)["logits"]
    np.testing.assert_allclose(plain, t5(params, flat, dec)["logits"], atol=1e-6, rtol=0)
    assert not np.allclose(plain, got["logits"], atol=1e-3)  # FiD is not the plain T5


def test_cached_greedy_decoding_equals_recompute_through_encdec_lm():
    """EncoderDecoderLM (family 'chatplug') on flattened FiD rows with absent passages: the
    cached path (passages encoded once; the unrolled twin of the scanned model) gives the
    recompute path's greedy tokens, which are the argmax of a plain forward pass."""
    model = models.EncoderDecoderLM(SMALL, family="chatplug")
    batch = {"encoder_input_tokens": np.ones((1, P * L), np.int32),
             "decoder_input_tokens": np.ones((1, 4), np.int32)}
    params = nn.unbox(jax.jit(lambda r: model.init_params(r, batch))(jax.random.PRNGKey(0)))
    flat = _passages(seed=3, lengths=((6, 3, 0), (2, 6, 5), (0, 4, 0))).reshape(3, P * L)
    inputs = {"model": params, "encoder_ids": flat}
    start, mask = np.zeros((3, 1), np.int32), np.ones((3, 1), np.int32)
    cached = model.decode_fns()
    assert cached.step_fn.unstack  # scanned params, unrolled decoder
    fast = np.asarray(decoding.generate(*cached, inputs, start, mask, 8).tokens)
    slow = np.asarray(decoding.generate(*model.decode_fns(cache=False), inputs, start, mask,
                                        8).tokens)
    np.testing.assert_array_equal(fast, slow)
    assert len(np.unique(slow)) >= 3
    # the greedy sequence is the argmax of one teacher-forced forward pass
    seq = np.concatenate([start, slow], 1)[:, :-1]
    logits = jax.jit(model.outputs)(params, {"encoder_input_tokens": flat,
                                             "decoder_input_tokens": seq})["logits"]
    np.testing.assert_array_equal(np.asarray(jnp.argmax(logits, -1)), slow)


def test_training_flops_count_passages():
    """The encoder attention costs P L^2 (passages apart), the rest is linear in P L; the
    family's FLOP hook reads the flat lengths."""
    cfg = ChatPLUGConfig.from_preset("3.7B")
    fid = training_flops_per_example(cfg, 7600, 512)
    plain = training_flops_per_example(cfg.replace(num_passages=1), 7600, 512)
    a, layers = cfg.num_heads * cfg.d_kv, cfg.num_layers
    assert plain - fid == pytest.approx(6.0 * layers * 2 * a * (7600 ** 2 - 20 * 380 ** 2))
    one = training_flops_per_example(cfg, 380, 512)
    two = training_flops_per_example(cfg, 760, 512)
    assert training_flops_per_example(cfg, 700, 512) == two  # padded to whole passages
    # about 6 x (encoder matmul weights) per encoder token: the 7600 passage tokens dominate
    enc_weights = layers * (4 * cfg.d_model * a + 3 * cfg.d_model * cfg.d_ff)
    assert 6 * enc_weights * 7600 < fid < 6 * 3.74e9 * 7600 and fid / one > 7
    spec = registry.get("chatplug")
    assert spec.flops_per_step("encdec_lm", cfg, 64, {"inputs": 7600, "targets": 512}) == \
        64 * fid


@pytest.mark.parametrize("preset", ["tiny", "240M", "3.7B"])
def test_model_gin_equals_preset(preset):
    import gin

    from plug_jax import gin_utils
    root = os.path.join(os.path.dirname(__file__), "..", "..", "..", "gin_configs")
    gin_utils.parse_gin([f"models/chatplug/{preset}.gin"], [], [root])
    try:
        model = gin.query_parameter("%MODEL").scoped_configurable_fn()
        assert model.family == "chatplug"
        assert model.config == ChatPLUGConfig.from_preset(preset)
    finally:
        gin.clear_config()


def _random_params(cfg):
    abstract = nn.unbox(jax.eval_shape(lambda r: ChatPLUGModel(cfg).init(
        r, jnp.ones((1, 4), jnp.int32), jnp.ones((1, 4), jnp.int32)), jax.random.PRNGKey(0)))
    rng = np.random.default_rng(0)
    return jax.tree_util.tree_map(
        lambda x: rng.standard_normal(x.shape).astype(np.float32), abstract["params"])


def _leaves(tree):
    return {"/".join(str(k.key) for k in path): np.asarray(x)
            for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


@pytest.mark.parametrize("fmt", ["mt5", "xdpx"])
def test_registered_converters_round_trip(fmt, tmp_path):
    """plug-convert's converters: our params exported and imported back are bit-equal, with
    the config (FiD limits included) read from the exported config.json, with or without
    --preset; an unscanned import holds the same tensors."""
    spec = registry.get("chatplug")
    cfg = ChatPLUGConfig.from_preset("tiny")
    params = _random_params(cfg)
    what = spec.converter(fmt, "export").fn(cfg, params, str(tmp_path), {})
    assert ("checkpoint.pt" if fmt == "xdpx" else "model.safetensors") in what
    imp = spec.converter(fmt, "import")
    report = []
    got_cfg, got = imp.fn(str(tmp_path), {"preset": "tiny", "scan_layers": True,
                                          "report": report})
    assert got_cfg == cfg
    assert "6 passages x 224 tokens" in report[0] and "config.json" in report[0]
    want = _leaves(params)
    have = _leaves(got)
    assert have.keys() == want.keys()
    assert all(np.array_equal(have[k], want[k]) for k in want)
    custom, _ = imp.fn(str(tmp_path), {"preset": None, "scan_layers": False})
    assert custom == cfg.replace(preset="custom", scan_layers=False)
    other = "xdpx" if fmt == "mt5" else "mt5"
    with pytest.raises(ValueError, match=f"--source {fmt}"):
        spec.converter(other, "import").fn(str(tmp_path), {"preset": None,
                                                             "scan_layers": True})


def test_mt5_export_loads_in_transformers(tmp_path):
    """The exported folder is a transformers MT5ForConditionalGeneration: on one passage
    (where ChatPLUG is the plain mT5) its logits equal ours."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    cfg = SMALL
    params = jax.tree_util.tree_map(lambda x: 0.3 * x, _random_params(cfg))
    registry.get("chatplug").converter("mt5", "export").fn(cfg, params, str(tmp_path), {})
    hf = transformers.MT5ForConditionalGeneration.from_pretrained(str(tmp_path)).eval()
    assert hf.config.max_n_passage == P and hf.config.max_encoder_length == L
    enc = np.asarray([[5, 9, 13, 2, 7, 0]], np.int64)
    dec = np.asarray([[0, 4, 8, 3]], np.int64)
    with torch.no_grad():
        want = hf(input_ids=torch.from_numpy(enc), attention_mask=torch.from_numpy(enc > 0),
                  decoder_input_ids=torch.from_numpy(dec)).logits.numpy()
    got = ChatPLUGModel(cfg).apply({"params": params}, enc.astype(np.int32),
                                   dec.astype(np.int32))["logits"]
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-4, rtol=1e-4)
