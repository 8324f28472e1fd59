"""PALM converter: the released key names (AliceMind PALM, ModelScope palm_v2) <-> PalmModel.

ModelScope layout: the modelscope package's own ``PalmForTextGeneration`` (palm_v2), run in the
reference env (tests/reference_env/modelscope_palm.py), writes a random tiny checkpoint as
``AbsSummarizer`` loads it and records its generator's log-probabilities; the converted params
must reproduce them to 1e-4. Export: ``plug-convert --to modelscope`` writes a palm_v2 dir
(config.json, bert/config.json, configuration.json, pytorch_model.bin) that reads back to an
equal config and params, and that the same script's ``--check`` loads with modelscope's
classes: their log-probabilities must equal PalmModel's to 1e-4.

AliceMind layouts (``bert.model.*``, with or without the ``-p_gen`` copy head): AliceMind's PALM
code is not an installable package, so the synthetic checkpoints are built here from the key
names of the released code, and a numpy forward pass of the released architecture written
here (BERT post-LN encoder, PreSumm pre-LN decoder, tied generator, ``CopyGenerator``
including its second softmax over the scattered copy weights) checks the outputs."""
import argparse
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from plug_jax.convert import io as cio
from plug_jax.convert.palm import load_palm_checkpoint, palm_from_state_dict, palm_to_state_dict
from plug_jax.families.palm import PalmConfig, PalmModel

CFG = PalmConfig.from_preset("tiny", vocab_size=96, num_decoder_layers=3)
H, FE, FD, V = 64, 256, 256, 96


def _released_state_dict(layout="alicemind", copy=False, seed=0, cfg=CFG):
    """A random state dict with the released names (PALM/models/*.py, palm_v2)."""
    rng = np.random.RandomState(seed)

    def w(*shape, scale=0.08):
        return (rng.randn(*shape) * scale).astype(np.float32)

    def lin(name, n_out, n_in):
        return {f"{name}.weight": w(n_out, n_in), f"{name}.bias": w(n_out, scale=0.02)}

    def ln(name):
        return {f"{name}.weight": 1 + w(H, scale=0.05), f"{name}.bias": w(H, scale=0.05)}

    enc = "bert.model." if layout == "alicemind" else "bert."
    sd = {f"{enc}embeddings.word_embeddings.weight": w(V, H),
          f"{enc}embeddings.position_embeddings.weight": w(cfg.max_position_embeddings, H),
          f"{enc}embeddings.token_type_embeddings.weight": w(cfg.type_vocab_size, H),
          f"{enc}embeddings.position_ids": np.arange(cfg.max_position_embeddings)[None]}
    sd.update(ln(f"{enc}embeddings.LayerNorm"))
    for i in range(cfg.num_encoder_layers):
        p = f"{enc}encoder.layer.{i}."
        for n in ("query", "key", "value"):
            sd.update(lin(p + f"attention.self.{n}", H, H))
        sd.update(lin(p + "attention.output.dense", H, H))
        sd.update(ln(p + "attention.output.LayerNorm"))
        sd.update(lin(p + "intermediate.dense", FE, H))
        sd.update(lin(p + "output.dense", H, FE))
        sd.update(ln(p + "output.LayerNorm"))
    sd.update(lin(f"{enc}pooler.dense", H, H))
    table = w(V, H)
    sd["decoder.embeddings.weight"] = table
    sd["decoder.pos_emb.pe"] = np.zeros((1, 5000, H), np.float32)  # buffer
    for i in range(cfg.num_decoder_layers):
        p = f"decoder.transformer_layers.{i}."
        for a in ("self_attn", "context_attn"):
            for n in ("linear_keys", "linear_values", "linear_query", "final_linear"):
                sd.update(lin(p + f"{a}.{n}", H, H))
        sd.update(lin(p + "feed_forward.w_1", FD, H))
        sd.update(lin(p + "feed_forward.w_2", H, FD))
        sd.update(ln(p + "feed_forward.layer_norm"))
        sd.update(ln(p + "layer_norm_1"))
        sd.update(ln(p + "layer_norm_2"))
        sd[p + "mask"] = np.triu(np.ones((1, 8, 8), np.uint8), 1)  # buffer
    sd.update(ln("decoder.layer_norm"))
    if layout == "modelscope":
        gen = "generator.dense"
    else:
        gen = "generator.gen_proj" if copy else "generator.0"
    sd[f"{gen}.weight"] = table  # tied
    sd[f"{gen}.bias"] = w(V, scale=0.02)
    if copy:
        sd.update(lin("generator.prob_proj", 1, 2 * H))
    return sd


# ----------------------------------------------------------- numpy reference of the release
def _ln(x, sd, name, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * sd[name + ".weight"] + sd[name + ".bias"]


def _lin(x, sd, name):
    return x @ sd[name + ".weight"].T.astype(np.float64) + sd[name + ".bias"]


def _mha(q_in, kv_in, sd, names, heads, visible):
    """Returns (output [t, H], per-head probabilities [heads, t, s])."""
    q, k, v = (_lin(x, sd, n) for x, n in zip((q_in, kv_in, kv_in), names[:3]))
    hd = H // heads

    def split(x):
        return x.reshape(x.shape[0], heads, hd).transpose(1, 0, 2)

    scores = split(q) @ split(k).transpose(0, 2, 1) / math.sqrt(hd)
    scores = np.where(visible[None], scores, -1e18)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    ctx = (probs @ split(v)).transpose(1, 0, 2).reshape(q.shape[0], H)
    return _lin(ctx, sd, names[3]), probs


def _reference_logprobs(sd, cfg, enc_ids, dec_ids, enc_valid, layout, copy,
                        released_copy_softmax=True):
    erf = np.vectorize(math.erf)
    enc = "bert.model." if layout == "alicemind" else "bert."
    sd = {k: np.asarray(v, np.float64) for k, v in sd.items()}
    out = []
    for b in range(enc_ids.shape[0]):
        ids, tgt, valid = enc_ids[b], dec_ids[b], enc_valid[b].astype(bool)
        s, t = len(ids), len(tgt)
        x = (sd[enc + "embeddings.word_embeddings.weight"][ids]
             + sd[enc + "embeddings.position_embeddings.weight"][np.arange(s)]
             + sd[enc + "embeddings.token_type_embeddings.weight"][0])
        x = _ln(x, sd, enc + "embeddings.LayerNorm", cfg.layer_norm_epsilon)
        see = np.broadcast_to(valid[None], (s, s))
        for i in range(cfg.num_encoder_layers):
            p = f"{enc}encoder.layer.{i}."
            a, _ = _mha(x, x, sd, [p + f"attention.self.{n}" for n in ("query", "key", "value")]
                        + [p + "attention.output.dense"], cfg.num_heads, see)
            x = _ln(x + a, sd, p + "attention.output.LayerNorm", cfg.layer_norm_epsilon)
            h = _lin(x, sd, p + "intermediate.dense")
            h = 0.5 * h * (1 + erf(h / math.sqrt(2)))
            x = _ln(x + _lin(h, sd, p + "output.dense"), sd, p + "output.LayerNorm",
                    cfg.layer_norm_epsilon)
        memory = x
        table = sd["decoder.embeddings.weight"]
        pos = np.arange(t)[:, None]
        div = np.exp(np.arange(0, H, 2) * -(math.log(10000.0) / H))
        pe = np.zeros((t, H))
        pe[:, 0::2], pe[:, 1::2] = np.sin(pos * div), np.cos(pos * div)
        y = table[tgt] * math.sqrt(H) + pe
        causal = np.tril(np.ones((t, t), bool))
        cross = np.broadcast_to(valid[None], (t, s))
        eps = cfg.decoder_layer_norm_epsilon
        for i in range(cfg.num_decoder_layers):
            p = f"decoder.transformer_layers.{i}."
            names = ("linear_query", "linear_keys", "linear_values", "final_linear")
            yn = _ln(y, sd, p + "layer_norm_1", eps)
            a, _ = _mha(yn, yn, sd, [p + "self_attn." + n for n in names],
                        cfg.num_decoder_heads, causal)
            y = y + a
            yn = _ln(y, sd, p + "layer_norm_2", eps)
            a, attn = _mha(yn, memory, sd, [p + "context_attn." + n for n in names],
                           cfg.num_decoder_heads, cross)
            y = y + a
            h = _lin(_ln(y, sd, p + "feed_forward.layer_norm", eps), sd, p + "feed_forward.w_1")
            h = 0.5 * h * (1 + np.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h ** 3)))
            y = y + _lin(h, sd, p + "feed_forward.w_2")
        y = _ln(y, sd, "decoder.layer_norm", eps)
        gen = {"modelscope": "generator.dense"}.get(
            layout, "generator.gen_proj" if copy else "generator.0")
        logits = _lin(y, sd, gen)
        probs = np.exp(logits - logits.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        if copy:  # CopyGenerator (PALM/models/model_builder.py)
            a = attn.mean(0)
            context = a @ memory
            gate = 1 / (1 + np.exp(-_lin(np.concatenate([context, y], -1), sd,
                                         "generator.prob_proj")))
            copy_dist = np.zeros_like(probs)
            for j in range(s):
                copy_dist[:, ids[j]] += a[:, j]
            if released_copy_softmax:  # the release's copy_softmax over the vocabulary
                copy_dist = np.exp(copy_dist - copy_dist.max(-1, keepdims=True))
                copy_dist /= copy_dist.sum(-1, keepdims=True)
            probs = gate * probs + (1 - gate) * copy_dist
        out.append(np.log(probs))
    return np.stack(out)


def _ours(cfg, params, enc_ids, dec_ids, valid):
    return PalmModel(cfg).apply({"params": params}, jnp.asarray(enc_ids), jnp.asarray(dec_ids),
                                encoder_segment_ids=jnp.asarray(valid))["logits"]


def _inputs():
    rng = np.random.RandomState(3)
    enc = rng.randint(1, V, (2, 9)).astype(np.int32)
    enc[0, 6:] = 0
    dec = rng.randint(1, V, (2, 5)).astype(np.int32)
    return enc, dec, (enc > 0).astype(np.int32)


@pytest.mark.parametrize("copy,copy_softmax", [(False, False), (True, True), (True, False)])
def test_alicemind_layout_round_trips_and_matches_a_reference_forward(copy, copy_softmax):
    """copy_softmax=True is the released CopyGenerator; False the published pointer-generator
    (See et al.), which PalmModel uses by default."""
    layout = "alicemind"
    cfg = CFG.replace(copy=False)
    if copy:
        cfg = CFG.replace(copy=True, copy_gate_uses_input=False, copy_softmax=copy_softmax)
    sd = _released_state_dict(layout, copy)
    wrapped = {"model": {f"palm.{k}": v for k, v in sd.items()}}  # unwrapped on import
    params = palm_from_state_dict(wrapped, cfg)
    back = palm_to_state_dict(params, cfg, layout=layout)
    params_only = {k: v for k, v in sd.items() if not k.endswith(("pe", "mask", "position_ids"))}
    assert set(back) == set(params_only)
    for k, v in params_only.items():
        np.testing.assert_array_equal(back[k], v, err_msg=k)
    enc, dec, valid = _inputs()
    want = _reference_logprobs(sd, cfg, enc, dec, valid, layout, copy, copy_softmax)
    got = np.asarray(_ours(cfg, params, enc, dec, valid))
    if not copy:
        got = np.asarray(jax.nn.log_softmax(got))
    np.testing.assert_allclose(got, want, atol=2e-4)
    if copy:  # the two copy forms are really different distributions
        other = _reference_logprobs(sd, cfg, enc, dec, valid, layout, copy, not copy_softmax)
        assert np.abs(other - want).max() > 1e-2


@pytest.fixture(scope="module")
def modelscope_palm(modelscope_checkpoint):
    """(folder, reference outputs, PalmConfig) of a random modelscope PalmForTextGeneration."""
    import json

    folder = modelscope_checkpoint("modelscope_palm.py")
    ms = json.loads((folder / "config.json").read_text())
    bert = json.loads((folder / "bert" / "config.json").read_text())
    cfg = PalmConfig(  # from the two config.json files ModelScope's PalmConfig reads
        vocab_size=bert["vocab_size"], num_encoder_layers=bert["num_hidden_layers"],
        num_heads=bert["num_attention_heads"], hidden_size=bert["hidden_size"],
        ffn_size=bert["intermediate_size"],
        max_position_embeddings=bert["max_position_embeddings"], position_offset=0,
        type_vocab_size=bert["type_vocab_size"], layer_norm_epsilon=bert["layer_norm_eps"],
        num_decoder_layers=ms["dec_layers"], num_decoder_heads=ms["dec_heads"],
        decoder_ffn_size=ms["dec_ff_size"], dropout_rate=0.0, attention_dropout_rate=0.0,
        decoder_dropout_rate=0.0, copy=False)
    assert ms["dec_hidden_size"] == cfg.hidden_size and ms["encoder"] == "bert"
    return folder, dict(np.load(folder / "reference.npz")), cfg


@pytest.mark.parametrize("scan_layers", [True, False])
def test_modelscope_palm_checkpoint_gives_its_log_probs(modelscope_palm, scan_layers):
    folder, ref, cfg = modelscope_palm
    cfg = cfg.replace(scan_layers=scan_layers)
    params = load_palm_checkpoint(folder / "pytorch_model.bin", cfg)
    logits = _ours(cfg, params, ref["src"], ref["dec_in"], ref["mask_src"])
    got = np.asarray(jax.nn.log_softmax(logits))
    np.testing.assert_allclose(got, ref["log_probs"], atol=1e-4, rtol=0)


def test_modelscope_palm_checkpoint_round_trips(modelscope_palm):
    import torch

    folder, _, cfg = modelscope_palm
    sd = torch.load(folder / "pytorch_model.bin", weights_only=True)
    back = palm_to_state_dict(load_palm_checkpoint(folder / "pytorch_model.bin", cfg), cfg,
                              layout="modelscope")
    released = {k: v.numpy() for k, v in sd.items()
                if not k.endswith(("pe", "mask", "position_ids"))}
    assert set(back) == set(released)
    for k, v in released.items():
        np.testing.assert_array_equal(back[k], v, err_msg=k)


def test_ours_to_released_to_ours_is_exact_for_both_layouts_and_layer_layouts():
    cfg = CFG  # copy=True with the input-embedding gate
    e, d = jnp.ones((1, 4), jnp.int32), jnp.ones((1, 3), jnp.int32)
    from flax import linen as nn
    init = jax.jit(lambda r: PalmModel(cfg).init(r, e, d)["params"])
    params = jax.tree_util.tree_map(np.array, nn.unbox(init(jax.random.PRNGKey(1))))
    with pytest.raises(ValueError, match="input embedding"):  # nonzero input rows
        palm_to_state_dict(params, cfg)
    params["copy_gate"]["kernel"][2 * H:] = 0.0
    for c, layout in ((cfg, "alicemind"), (cfg.replace(scan_layers=False), "alicemind")):
        p = params
        if not c.scan_layers:
            p = palm_from_state_dict(palm_to_state_dict(params, cfg), c)
        sd = palm_to_state_dict(p, c, layout=layout)
        again = palm_from_state_dict(sd, cfg)
        same = jax.tree_util.tree_map(np.array_equal, again, params)
        assert all(jax.tree_util.tree_leaves(same))
    plain = cfg.replace(copy=False)
    p = {k: v for k, v in params.items() if k != "copy_gate"}
    again = palm_from_state_dict(palm_to_state_dict(p, plain, layout="modelscope"), plain)
    assert all(jax.tree_util.tree_leaves(jax.tree_util.tree_map(np.array_equal, again, p)))
    with pytest.raises(ValueError, match="no copy head"):
        palm_to_state_dict(params, cfg, layout="modelscope")


def test_checkpoint_without_copy_head_gets_a_fresh_gate():
    sd = _released_state_dict("alicemind", copy=False)
    params = palm_from_state_dict(sd, CFG, copy_gate_bias=2.0)
    assert np.all(params["copy_gate"]["kernel"] == 0) and params["copy_gate"]["bias"][0] == 2.0
    assert params["copy_gate"]["kernel"].shape == (3 * H, 1)


def test_missing_unexpected_and_untied_keys_give_one_line_errors():
    sd = _released_state_dict("modelscope")
    cfg = CFG.replace(copy=False)
    cases = []
    missing = dict(sd)
    del missing["decoder.transformer_layers.1.context_attn.linear_keys.weight"]
    del missing["bert.encoder.layer.0.output.dense.bias"]
    cases.append((missing, "missing 2 tensor"))
    cases.append((dict(sd, **{"cls.predictions.bias": np.zeros(V, np.float32)}), "unexpected"))
    untied = dict(sd, **{"generator.dense.weight": sd["generator.dense.weight"] + 1})
    cases.append((untied, "untied"))
    cases.append((_released_state_dict("alicemind", copy=True), "copy=True"))
    for bad, match in cases:
        with pytest.raises(ValueError, match=match) as err:
            palm_from_state_dict(bad, cfg)
        assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="expects") as err:  # wrong size for this config
        palm_from_state_dict(sd, cfg.replace(decoder_ffn_size=128))
    assert "\n" not in str(err.value)
    palm_from_state_dict(dict(sd, **{"cls.x": np.zeros(1)}), cfg, strict=False)


def test_files_load_only_through_safe_readers(tmp_path):
    import torch
    from safetensors.numpy import save_file

    cfg = CFG.replace(copy=False)
    sd = _released_state_dict("modelscope")
    sd = {k: np.ascontiguousarray(v) for k, v in sd.items()}
    save_file(sd, str(tmp_path / "model.safetensors"))
    a = load_palm_checkpoint(tmp_path / "model.safetensors", cfg)
    torch.save({k: torch.from_numpy(np.array(v)) for k, v in sd.items()}, tmp_path / "w.bin")
    b = load_palm_checkpoint(tmp_path / "w.bin", cfg)
    assert all(jax.tree_util.tree_leaves(jax.tree_util.tree_map(np.array_equal, a, b)))
    # An AliceMind training checkpoint pickles its options: refused, in one line.
    torch.save({"model": {k: torch.from_numpy(np.array(v)) for k, v in sd.items()},
                "opt": argparse.Namespace(dec_layers=3)}, tmp_path / "train.pt")
    with pytest.raises(cio.WeightsLoadError, match="refusing") as err:
        load_palm_checkpoint(tmp_path / "train.pt", cfg)
    assert "\n" not in str(err.value)
    (tmp_path / "x.pkl").write_bytes(b"\x80\x04N.")
    with pytest.raises(cio.WeightsLoadError, match="unsupported"):
        load_palm_checkpoint(tmp_path / "x.pkl", cfg)


# ------------------------------------------- ModelScope: the trainer-saved dir, config.json
# OUT_DIR/trainer of tests/reference_env/modelscope_palm.py (the same reference run as the
# modelscope_palm fixture): torch.save(PalmForTextGeneration.state_dict()) as the trainer's
# CheckpointProcessor.save_model_state writes it (modelscope.models.nlp.palm_v2.text_generation
# for the keys, modelscope.utils.checkpoint.save_checkpoint for the file), config.json with a
# relative encoder_pth, bert/, configuration.json.
TRAINER_SKIPPED = ("loss.criterion.one_hot", "loss.generator.dense.weight",
                   "loss.generator.dense.bias", "palm.decoder.pos_emb.pe",
                   "palm.decoder.transformer_layers.0.mask",
                   "palm.decoder.transformer_layers.1.mask",
                   "palm.decoder.transformer_layers.2.mask")


def _plug_convert(argv):
    import contextlib
    import io

    from plug_jax.convert.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([str(a) for a in argv])
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def palm_trainer_dir(modelscope_checkpoint):
    return modelscope_checkpoint("modelscope_palm.py") / "trainer"


def test_modelscope_trainer_saved_dir_converts_with_plug_convert(palm_trainer_dir, tmp_path):
    import torch

    from plug_jax.trainer import checkpointing

    folder = palm_trainer_dir
    sd = torch.load(folder / "pytorch_model.bin", weights_only=True)
    assert set(TRAINER_SKIPPED) <= set(sd) and "palm.generator.dense.weight" in sd
    out = tmp_path / "out"
    rc, stdout, stderr = _plug_convert(["--family", "palm", "--source", "modelscope",
                                        "--input", folder, "--output", out])  # no --preset
    assert rc == 0, stderr
    skipped = [line for line in stdout.splitlines() if line.startswith("plug-convert: skipped")]
    for name in TRAINER_SKIPPED:  # each skipped tensor is named in the report
        assert any(name in line for line in skipped), (name, stdout)
    config_dict, params, metadata = checkpointing.load_params(out)
    cfg = PalmConfig.from_dict(config_dict)
    assert metadata["source"]["format"] == "modelscope" and not cfg.copy
    assert (cfg.num_encoder_layers, cfg.num_decoder_layers, cfg.hidden_size,
            cfg.num_decoder_heads, cfg.decoder_ffn_size, cfg.vocab_size) == (2, 3, 64, 4, 256, 96)
    ref = dict(np.load(folder / "reference.npz"))
    got = np.asarray(jax.nn.log_softmax(_ours(cfg, params, ref["src"], ref["dec_in"],
                                               ref["mask_src"])))
    diff = float(np.abs(got - ref["log_probs"]).max())
    print(f"ModelScope trainer-saved PalmForTextGeneration parity: max abs diff {diff:.3g}")
    assert diff < 1e-4
    # Nothing else is dropped: every other tensor of the file is in the params (the tied
    # generator weight is the decoder table).
    count = sum(np.size(x) for x in jax.tree_util.tree_leaves(params))
    kept = sum(v.numel() for k, v in sd.items()
               if k not in TRAINER_SKIPPED and k != "palm.generator.dense.weight")
    assert count == kept


def test_modelscope_config_json_reader_matches_the_released_mapping(modelscope_palm,
                                                                    palm_trainer_dir):
    from plug_jax.families.palm.convert import config_from_modelscope

    folder, _, cfg = modelscope_palm  # config.json with an absolute encoder_pth
    assert config_from_modelscope(folder) == cfg
    # the trainer dir: relative encoder_pth, label_smoothing 0.1 (a loss-only field)
    assert config_from_modelscope(palm_trainer_dir) == cfg


def test_trainer_saved_loss_tensors_are_skipped_by_name_only():
    cfg = CFG.replace(copy=False)
    sd = {f"palm.{k}": v for k, v in _released_state_dict("modelscope").items()}
    sd["loss.generator.dense.weight"] = sd["palm.generator.dense.weight"]
    sd["loss.generator.dense.bias"] = sd["palm.generator.dense.bias"]
    sd["loss.criterion.one_hot"] = np.full((1, V), 0.1 / (V - 2), np.float32)
    report = []
    want = palm_from_state_dict(_released_state_dict("modelscope"), cfg)
    got = palm_from_state_dict(sd, cfg, report=report)
    assert all(jax.tree_util.tree_leaves(jax.tree_util.tree_map(np.array_equal, got, want)))
    text = "\n".join(report)
    for name in ("loss.criterion.one_hot", "loss.generator.dense.weight",
                 "loss.generator.dense.bias", "palm.decoder.pos_emb.pe"):
        assert name in text, text
    cases = [(dict(sd, **{"loss.other.weight": np.zeros(2, np.float32)}), "loss.other.weight"),
             (dict(sd, **{"loss.generator.dense.bias": sd["palm.generator.dense.bias"] + 1}),
              "differs from palm.generator.dense.bias")]
    for bad, match in cases:
        with pytest.raises(ValueError, match=match) as err:
            palm_from_state_dict(bad, cfg)
        assert "\n" not in str(err.value)


# ------------------------------------- ModelScope: plug-convert --to modelscope writes a dir
# config.json (ModelScope's PalmConfig), <encoder_pth>/config.json (the encoder's BertConfig /
# RobertaConfig), configuration.json and pytorch_model.bin; --source modelscope reads it back
# without --preset, and modelscope's own PalmForTextGeneration loads it (reference env).
def _random_palm_params(cfg, seed=0):
    """``PalmModel(cfg)`` params with Gaussian noise on every leaf (biases and LayerNorms are
    not 0 / 1), as float32 numpy."""
    from flax import linen as nn

    e, d = jnp.ones((1, 4), jnp.int32), jnp.ones((1, 3), jnp.int32)
    init = jax.jit(lambda r: PalmModel(cfg).init(r, e, d)["params"])
    params = nn.unbox(init(jax.random.PRNGKey(seed)))
    rng = np.random.RandomState(seed)
    return jax.tree_util.tree_map(
        lambda x: (np.asarray(x) + 0.05 * rng.randn(*np.shape(x))).astype(np.float32), params)


def _assert_same_params(got, want):
    got, want = cio.flatten_tree(got), cio.flatten_tree(want)
    assert set(got) == set(want)
    for k in want:
        np.testing.assert_array_equal(np.asarray(got[k]), np.asarray(want[k]), err_msg=k)


def _export_modelscope(cfg, params, out):
    from plug_jax.families import registry

    return registry.get("palm").converter("modelscope", "export").fn(cfg, params, str(out), {})


ROBERTA_TINY = dict(position_offset=2, type_vocab_size=1, layer_norm_epsilon=1e-5,
                    max_position_embeddings=130)


@pytest.mark.parametrize("shape", ["bert", "roberta"])
def test_modelscope_export_writes_a_dir_that_reads_back_equal(shape, tmp_path):
    from plug_jax.families.palm.convert import config_from_modelscope

    cfg = PalmConfig.from_preset("tiny", copy=False, vocab_size=V)
    if shape == "roberta":  # RoBERTa-shaped encoder (positions from pad_token_id + 1)
        cfg = cfg.replace(scan_layers=False, decoder_dropout_rate=0.1, **ROBERTA_TINY)
    params = _random_palm_params(cfg)
    out = tmp_path / "ms"
    out.mkdir()
    what = _export_modelscope(cfg, params, out)
    assert "config.json" in what and "note" not in what, what
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == \
        sorted(["config.json", "configuration.json", "pytorch_model.bin",
                f"{shape}/config.json"])
    ms = cio.read_json(out / "config.json")
    enc = cio.read_json(out / shape / "config.json")
    assert (ms["model_type"], ms["encoder"], ms["encoder_pth"]) == ("palm", shape, shape)
    assert "architectures" not in ms  # PalmConfig.save_pretrained writes none
    assert (ms["dec_layers"], ms["dec_hidden_size"], ms["dec_heads"], ms["dec_ff_size"],
            ms["dec_dropout"], ms["max_pos"]) == (2, 64, 4, 256, cfg.decoder_dropout_rate,
                                                  128)
    assert enc["model_type"] == shape and enc["pad_token_id"] == (1 if shape == "roberta" else 0)
    assert cio.read_json(out / "configuration.json")["model"]["type"] == "palm-v2"
    got_cfg = config_from_modelscope(out, scan_layers=cfg.scan_layers)
    assert got_cfg == cfg.replace(preset="custom")
    _assert_same_params(load_palm_checkpoint(out, got_cfg), params)


def test_modelscope_export_refuses_what_palm_v2_cannot_hold_in_one_line(tmp_path):
    cfg = PalmConfig.from_preset("tiny", copy=False, vocab_size=V)
    params = _random_palm_params(cfg)
    with_copy = PalmConfig.from_preset("tiny", vocab_size=V)  # the preset's copy head
    cases = [(with_copy, _random_palm_params(with_copy), "no copy head"),
             (cfg.replace(decoder_layer_norm_epsilon=1e-5), params, "not palm_v2's fixed one"),
             (cfg.replace(use_pooler=False), {k: v for k, v in params.items()
                                              if k != "pooler"}, "has a pooler")]
    for i, (bad, p, match) in enumerate(cases):
        out = tmp_path / f"o{i}"
        out.mkdir()
        with pytest.raises(ValueError, match=match) as err:
            _export_modelscope(bad, p, out)
        assert "\n" not in str(err.value)
        assert not list(out.iterdir())  # nothing written


def _reference_run(script, *args):
    """``tests/reference_env/build.py``'s ``run`` (the script in the reference env)."""
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[1] / "reference_env" / "build.py"
    spec = importlib.util.spec_from_file_location("plug_jax_reference_env_palm", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.run(script, *args)


def test_plug_convert_to_modelscope_loads_in_modelscope_with_our_log_probs(tmp_path):
    """plug-convert --to modelscope on a random tiny PALM: modelscope's PalmForTextGeneration,
    loaded from the dir as Model.from_pretrained does (reference env), gives PalmModel's
    log-probabilities within 1e-4; --source modelscope (no --preset) gives the config and the
    params back exactly."""
    import dataclasses

    from plug_jax.trainer import checkpointing

    cfg = PalmConfig.from_preset("tiny", copy=False)
    params = _random_palm_params(cfg, seed=1)
    ours = tmp_path / "ours"
    checkpointing.save_params(ours, params, config_dict=dataclasses.asdict(cfg),
                              metadata={"family": "palm", "preset": cfg.preset})
    out = tmp_path / "ms"
    rc, stdout, stderr = _plug_convert(["--family", "palm", "--to", "modelscope", "--input",
                                        ours, "--output", out])
    assert rc == 0, stderr
    assert "ModelScope palm_v2" in stdout
    for name in ("config.json", "configuration.json", "pytorch_model.bin", "bert/config.json"):
        assert (out / name).is_file(), name

    back = tmp_path / "back"
    rc, _, stderr = _plug_convert(["--family", "palm", "--source", "modelscope", "--input", out,
                                   "--output", back])  # sizes from the dir's config.json
    assert rc == 0, stderr
    config_dict, got, metadata = checkpointing.load_params(back)
    assert PalmConfig.from_dict(config_dict) == cfg.replace(preset="custom")
    _assert_same_params(got, params)

    # PalmForTextGeneration reads its BertTokenizer from encoder_pth: a small vocab.txt
    specials = ["[PAD]", "[unused1]", "[unused2]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokens = specials + [f"w{i}" for i in range(cfg.vocab_size - len(specials))]
    (out / "bert" / "vocab.txt").write_text("\n".join(tokens) + "\n")
    enc, dec, valid = _inputs()
    np.savez(tmp_path / "inputs.npz", src=enc, mask_src=valid, dec_in=dec)
    _reference_run("modelscope_palm.py", "--check", str(out), str(tmp_path / "inputs.npz"),
                   str(tmp_path / "theirs.npy"))
    theirs = np.load(tmp_path / "theirs.npy")
    got = np.asarray(jax.nn.log_softmax(_ours(cfg, params, enc, dec, valid)))
    assert theirs.shape == got.shape == (2, 5, cfg.vocab_size)
    diff = float(np.abs(got - theirs).max())
    print(f"plug_jax PALM -> ModelScope PalmForTextGeneration parity: max abs diff {diff:.3g}")
    np.testing.assert_allclose(got, theirs, atol=1e-4, rtol=0)
