"""Weight-only low precision (plug_jax/layers/quant.py): bf16 and int8 (per-output-channel
scales) weights for decoding, converted from float checkpoints at load time.

The int8 layers are checked against float layers holding the dequantized weights
``q * scale`` computed here with numpy (so the scale must be applied to the right output
channels), and the quantized models' logits are bounded against float32 on a decoder-only
model (GPT-3 tiny, scanned layers, cached greedy decoding) and on encoder-decoders (PALM and
PLUG tiny, encode-once cached decoding). Greedy agreement with float32 over 128 tokens is
printed (``-s``)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from plug_jax import decoding, models
from plug_jax.families.gpt3.config import GPT3Config
from plug_jax.families.gpt3.network import GPT3LM
from plug_jax.families.palm import PalmConfig
from plug_jax.families.plug import PlugConfig
from plug_jax.layers import quant
from plug_jax.layers.dense import DenseGeneral
from plug_jax.layers.embeddings import Embed


def _dequantized(params, targets):
    """Float params whose targets hold ``q * scale`` (numpy, independent of the layers)."""
    out = jax.tree_util.tree_map(np.asarray, params)
    for path, spec in targets.items():
        node = out
        for k in path:
            node = node[k]
        if spec[0] == "dense":
            q, s = node.pop("kernel"), node.pop(quant.KERNEL_SCALE)
            _, n_in, n_out = spec
            lead = q.ndim - n_in - n_out
            shape = s.shape[:lead] + (1,) * n_in + s.shape[lead:]
            node["kernel"] = q.astype(np.float32) * s.reshape(shape)
        elif quant.EMBEDDING_SCALE in node:
            q, s = node.pop("embedding"), node.pop(quant.EMBEDDING_SCALE)
            node["embedding"] = q.astype(np.float32) * s[:, None]
    return out


def _unboxed_init(module, *args, **kw):
    return nn.unbox(module.init(jax.random.PRNGKey(0), *args, **kw))["params"]


def test_int8_dense_and_embed_equal_the_dequantized_float_layers():
    x = np.random.RandomState(0).randn(2, 3, 8).astype(np.float32)
    dense = DenseGeneral(features=(4, 5), kernel_axes=("embed", "heads", "kv"),
                         kernel_init=nn.initializers.normal(1.0))
    params = {"params": _unboxed_init(dense, x)}
    targets = quant.quantization_targets(lambda: dense.init(jax.random.PRNGKey(0), x))
    assert targets == {(): ("dense", 1, 2)}
    q = quant.quantize_params(params["params"], "int8", targets)
    assert q["kernel"].dtype == np.int8 and q[quant.KERNEL_SCALE].shape == (4, 5)
    w = np.asarray(params["params"]["kernel"])
    # Symmetric per-output-channel: |q| <= 127, each weight within half a step.
    assert np.abs(q["kernel"].astype(int)).max() == 127
    deq = _dequantized({"": q}, {("",): targets[()]})[""]
    assert np.all(np.abs(deq["kernel"] - w) <= q[quant.KERNEL_SCALE] / 2 + 1e-7)
    got = dense.apply({"params": q}, x)
    want = dense.apply({"params": deq}, x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    bf = quant.quantize_params(params["params"], "bfloat16", targets)
    assert bf["kernel"].dtype == jnp.bfloat16 and quant.KERNEL_SCALE not in bf
    np.testing.assert_allclose(dense.apply({"params": bf}, x), dense.apply(params, x),
                               rtol=2e-2, atol=2e-2)

    embed = Embed(num_embeddings=11, features=8, embedding_init=nn.initializers.normal(1.0))
    ids = np.array([[1, 4, 10]])
    e_params = _unboxed_init(embed, ids)
    e_targets = quant.quantization_targets(lambda: embed.init(jax.random.PRNGKey(0), ids))
    eq = quant.quantize_params(e_params, "int8", e_targets)
    assert eq[quant.EMBEDDING_SCALE].shape == (11,)
    e_deq = _dequantized({"e": eq}, {("e",): ("embed",)})["e"]
    np.testing.assert_allclose(embed.apply({"params": eq}, ids),
                               embed.apply({"params": e_deq}, ids), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(embed.apply({"params": eq}, x, method="attend"),
                               embed.apply({"params": e_deq}, x, method="attend"),
                               rtol=1e-5, atol=1e-5)


def test_only_dense_and_embed_weights_are_converted_and_bad_requests_are_refused():
    class Mixed(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.Dense(6, name="flax_dense")(x)  # reads its kernel itself: left alone
            return DenseGeneral(4, kernel_axes=("embed", "mlp"), name="ours")(x)

    x = np.ones((1, 8), np.float32)
    m = Mixed()
    params = _unboxed_init(m, x)
    targets = quant.quantization_targets(lambda: m.init(jax.random.PRNGKey(0), x))
    assert set(targets) == {("ours",)}
    q = quant.quantize_params(params, "int8", targets)
    assert q["flax_dense"]["kernel"].dtype == np.float32
    assert q["ours"]["kernel"].dtype == np.int8
    assert quant.weights_dtype_of(q) == "int8"
    assert quant.param_bytes(q) < quant.param_bytes(params)
    np.testing.assert_allclose(m.apply({"params": q}, x), m.apply({"params": params}, x),
                               rtol=0.05, atol=0.05)
    with pytest.raises(ValueError, match="unknown weights dtype 'int4'.*fix: choose one of"):
        quant.check_weights_dtype("int4")
    with pytest.raises(ValueError, match="holds int8 weights; fix: load a float checkpoint"):
        quant.quantize_params(q, "bfloat16", targets)
    assert quant.quantize_params(q, "int8", targets)["ours"]["kernel"].dtype == np.int8


GPT = GPT3Config.from_preset("tiny", vocab_size=256, scan_layers=True, initializer_range=0.05)


def _gpt():
    model = GPT3LM(GPT)
    ids = jnp.ones((1, 8), jnp.int32)
    params = nn.unbox(model.init(jax.random.PRNGKey(0), ids, positions=ids))["params"]
    params = jax.tree_util.tree_map(np.asarray, params)
    targets = quant.quantization_targets(
        lambda: model.init(jax.random.PRNGKey(0), ids, positions=ids))
    return model, params, targets


def _agreement(name, ref, got, ref_logits, got_logits):
    tf = float(np.mean(np.argmax(got_logits, -1) == np.argmax(ref_logits, -1)))
    free = float(np.mean(ref == got))
    prefix = int(np.argmin(np.concatenate([(ref == got).ravel(), [False]])))
    print(f"{name}: teacher-forced argmax agreement {tf:.3f}, free-running {free:.3f} "
          f"(common prefix {prefix}/{ref.size})")
    return tf


@pytest.mark.parametrize("weights_dtype,bound", [("bfloat16", 0.02), ("int8", 0.1)])
def test_decoder_only_quantized_logits_are_bounded_and_decode(weights_dtype, bound):
    """GPT-3 tiny with scanned layers: the targets are the stacked layer kernels (one scale
    row per layer) and the embedding; logits within ``bound`` x the float32 logits' spread;
    the quantized params decode 128 greedy tokens through the unrolled cached adapter, and
    the int8 decode equals the decode of the dequantized float weights."""
    model, params, targets = _gpt()
    stacked = [p for p in targets if "layers" in p]
    assert stacked and ("token_embed",) in targets
    q = quant.quantize_params(params, weights_dtype, targets)
    for path in stacked:
        node = q
        for k in path:
            node = node[k]
        if weights_dtype == "int8":
            assert node[quant.KERNEL_SCALE].shape[0] == GPT.num_layers
    fns = decoding.flax_lm_adapter(model)
    prompt = np.random.RandomState(0).randint(1, GPT.vocab_size, (1, 16)).astype(np.int32)
    ref = np.asarray(decoding.generate(*fns, params, prompt, None, 128).tokens)
    got = np.asarray(decoding.generate(*fns, q, prompt, None, 128).tokens)
    seq = jnp.asarray(np.concatenate([prompt, ref], 1))
    pos = jnp.arange(seq.shape[1])[None]
    ref_logits = np.asarray(model.apply({"params": params}, seq, positions=pos))[0, 15:-1]
    got_logits = np.asarray(model.apply({"params": q}, seq, positions=pos))[0, 15:-1]
    err = np.max(np.abs(got_logits - ref_logits)) / np.std(ref_logits)
    print(f"{weights_dtype}: max |logit error| = {err:.4f} x std of the float32 logits")
    assert err < bound
    _agreement(f"GPT-3 tiny {weights_dtype}", ref, got, ref_logits, got_logits)
    if weights_dtype == "int8":
        deq = _dequantized(q, targets)
        want = np.asarray(decoding.generate(*fns, deq, prompt, None, 128).tokens)
        np.testing.assert_array_equal(got, want)


ENCDEC = {
    "palm": ("palm", PalmConfig.from_preset("tiny")),
    "plug": ("plug", PlugConfig.from_preset("tiny", initializer_range=0.2)),
}


@pytest.mark.parametrize("case", list(ENCDEC))
def test_encoder_decoder_quantized_cached_decoding(case):
    """PALM / PLUG tiny through the encode-once cached adapter: int8 greedy tokens equal
    those of the dequantized float weights; int8 and bf16 log-probs stay near float32."""
    family, cfg = ENCDEC[case]
    model = models.EncoderDecoderLM(cfg, family=family)
    batch = {"encoder_input_tokens": np.ones((1, 12), np.int32),
             "decoder_input_tokens": np.ones((1, 4), np.int32)}
    params = jax.tree_util.tree_map(np.asarray, nn.unbox(
        jax.jit(lambda r: model.init_params(r, batch))(jax.random.PRNGKey(0))))
    targets = quant.quantization_targets(
        lambda: model.init_params(jax.random.PRNGKey(0), batch))
    enc = np.random.RandomState(1).randint(1, cfg.vocab_size, (2, 12)).astype(np.int32)
    fns = model.decode_fns()
    start = np.zeros((2, 1), np.int32)

    def run(p):
        out = decoding.generate(*fns, {"model": p, "encoder_ids": enc}, start, None, 24)
        return np.asarray(out.tokens)

    ref = run(params)
    q8 = quant.quantize_model_params(model, params, batch, "int8")
    assert quant.weights_dtype_of(q8) == "int8"
    got8 = run(q8)
    np.testing.assert_array_equal(got8, run(_dequantized(q8, targets)))
    print(f"{case} int8: greedy tokens equal to float32: {np.mean(got8 == ref):.3f}")
    for name, p in (("int8", q8), ("bfloat16", quant.quantize_model_params(
            model, params, batch, "bfloat16"))):
        # teacher-forced log-probs of the float32 tokens, via the model's own forward
        dec_in = np.concatenate([start, ref[:, :-1]], 1)
        lp = [np.asarray(jax.nn.log_softmax(model.module.apply(
            {"params": pp}, enc, dec_in, encoder_segment_ids=(enc > 0).astype(np.int32))
            ["logits"], -1)) for pp in (params, p)]
        err = np.max(np.abs(lp[1] - lp[0])) / np.std(lp[0])
        print(f"{case} {name}: max |log-prob error| = {err:.4f} x std")
        assert err < (0.03 if name == "bfloat16" else 0.15)
