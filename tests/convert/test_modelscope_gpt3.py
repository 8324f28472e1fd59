"""ModelScope GPT-3 -> GPT3LM: published key names, both QKV layouts, TP shards, errors.

Outputs are checked against the modelscope package's own ``GPT3Model``
(``modelscope.models.nlp.gpt3.backbone``), run in the reference env
(tests/reference_env/modelscope_gpt3.py): it builds a random tiny model, writes
``config.json`` and ``pytorch_model.bin`` as ``GPT3Model.from_pretrained`` reads them, and
records its logits. ``from_modelscope`` reads that folder and GPT3LM must reproduce the logits
to 1e-4.

The Megatron layout (``distributed_gpt3.py``, per-head interleaved QKV, the names of the
released multi-GPU checkpoints) cannot be run here: that module needs Megatron
(``megatron_util``, an empty placeholder on PyPI). Its test re-lays the real model's tensors
in that layout with this file's own loops (written from distributed_gpt3.py's
``view(..., heads, 3 * head_dim)`` then split) and must give the same logits. The structural
tests (wrappers, nested dicts, TP shards, errors) build state dicts from a random GPT3LM with
a reverse mapping written independently of the converter (explicit loops over heads).
"""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import linen as nn

from plug_jax.convert import from_modelscope, gpt3_config_from_modelscope
from plug_jax.families.gpt3 import GPT3Config, GPT3LM

# ffn 80 != 4 * hidden: the FFN size must come from the weights / ffn_hidden_size.
CFG = GPT3Config(vocab_size=97, num_layers=2, num_heads=4, hidden_size=32, ffn_size=80,
                 max_position_embeddings=16, layer_norm_epsilon=1e-5, dropout_rate=0.0,
                 attention_dropout_rate=0.0)
MS_CONFIG = {  # a ModelScope config.json for CFG
    "model_type": "gpt3", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
    "vocab_size": 97, "max_position_embeddings": 16, "layernorm_epsilon": 1e-5,
    "ffn_hidden_size": 80, "intermediate_size": 3072, "hidden_act": "gelu",
    "hidden_dropout": 0.0, "attention_dropout": 0.0, "init_method_std": 0.02,
}
NAMES = {
    "backbone": dict(emb="language_model.", body="language_model.transformer.", attn="attention"),
    "megatron": dict(emb="language_model.embedding.", body="language_model.encoder.",
                     attn="self_attention"),
}


@pytest.fixture(scope="module")
def params():
    """Random GPT3LM params (unscanned), with non-trivial norms and biases."""
    cfg = CFG.replace(scan_layers=False)
    p = nn.unbox(GPT3LM(cfg).init(jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))["params"])
    rng = np.random.default_rng(0)
    return jax.tree_util.tree_map(
        lambda x: (np.asarray(x) + 0.1 * rng.standard_normal(x.shape)).astype(np.float32), p)


def to_modelscope(params, layout):
    """Independent reverse mapping: GPT3LM params -> ModelScope names, torch [out, in]."""
    n = NAMES[layout]
    h, hd, d = CFG.num_heads, CFG.kv_dim, CFG.hidden_size
    t = lambda a: torch.tensor(np.asarray(a))  # noqa: E731
    sd = {n["emb"] + "word_embeddings.weight": t(params["token_embed"]["embedding"]),
          n["emb"] + "position_embeddings.weight": t(params["pos_embed"]["embedding"])}
    for i in range(CFG.num_layers):
        layer = params["decoder"][f"layers_{i}"]
        a = layer["attn"]
        pre = f"{n['body']}layers.{i}."
        rows, bias = [], []
        if layout == "backbone":  # output index = part * d + head * hd + k
            order = [(part, head, k) for part in range(3) for head in range(h) for k in range(hd)]
        else:  # output index = head * 3 * hd + part * hd + k
            order = [(part, head, k) for head in range(h) for part in range(3) for k in range(hd)]
        for part, head, k in order:
            proj = a[("query", "key", "value")[part]]
            rows.append(proj["kernel"][:, head, k])
            bias.append(proj["bias"][head, k])
        sd[pre + n["attn"] + ".query_key_value.weight"] = t(np.stack(rows))
        sd[pre + n["attn"] + ".query_key_value.bias"] = t(np.array(bias))
        out = a["out"]["kernel"]  # [h, hd, d]; torch weight[j, head * hd + k]
        sd[pre + n["attn"] + ".dense.weight"] = t(
            np.stack([np.concatenate([out[head, :, j] for head in range(h)]) for j in range(d)]))
        sd[pre + n["attn"] + ".dense.bias"] = t(a["out"]["bias"])
        for ours, theirs in (("pre_attn_norm", "input_layernorm"),
                             ("pre_mlp_norm", "post_attention_layernorm")):
            sd[pre + theirs + ".weight"] = t(layer[ours]["scale"])
            sd[pre + theirs + ".bias"] = t(layer[ours]["bias"])
        for ours, theirs in (("wi", "dense_h_to_4h"), ("wo", "dense_4h_to_h")):
            sd[pre + f"mlp.{theirs}.weight"] = t(np.asarray(layer["mlp"][ours]["kernel"]).T)
            sd[pre + f"mlp.{theirs}.bias"] = t(layer["mlp"][ours]["bias"])
    sd[n["body"] + "final_layernorm.weight"] = t(params["final_norm"]["scale"])
    sd[n["body"] + "final_layernorm.bias"] = t(params["final_norm"]["bias"])
    return sd


def _flat(tree, prefix=""):
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = v
    return out


def assert_trees_equal(a, b):
    fa, fb = _flat(a), _flat(b)
    assert fa.keys() == fb.keys()
    for k in fa:
        np.testing.assert_array_equal(np.asarray(fa[k]), np.asarray(fb[k]), err_msg=k)


@pytest.fixture(scope="module")
def released(modelscope_checkpoint):
    """(folder, reference outputs, state dict) of a random modelscope GPT3Model."""
    folder = modelscope_checkpoint("modelscope_gpt3.py")
    ref = dict(np.load(folder / "reference.npz"))
    sd = torch.load(folder / "pytorch_model.bin", weights_only=True)
    return folder, ref, sd


def _assert_logits_match(cfg, params, ref):
    for ids, want in ((ref["ids"], ref["logits"]), (ref["ids_long"], ref["logits_long"])):
        got = np.asarray(GPT3LM(cfg).apply({"params": params}, jnp.asarray(ids)))
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


@pytest.mark.parametrize("scan_layers", [True, False])
def test_modelscope_gpt3model_logits(released, scan_layers):
    """The folder the modelscope package wrote, read by path, gives GPT3Model's logits."""
    folder, ref, _ = released
    cfg, params = from_modelscope(str(folder), scan_layers=scan_layers)
    assert (cfg.num_layers, cfg.num_heads, cfg.hidden_size, cfg.vocab_size) == (2, 4, 32, 97)
    assert cfg.mlp_dim == 128 and cfg.layer_norm_epsilon == 1e-5 and cfg.activation == "gelu"
    assert cfg.scan_layers == scan_layers and cfg.tie_word_embeddings
    _assert_logits_match(cfg, params, ref)


def to_megatron(sd, num_heads):
    """GPT3Model (backbone) tensors -> distributed_gpt3 names and per-head QKV order."""
    out = {}
    for k, v in sd.items():
        k = k.replace("language_model.transformer.", "language_model.encoder.")
        k = k.replace(".attention.", ".self_attention.")
        if k.startswith("language_model.") and "_embeddings." in k:
            k = k.replace("language_model.", "language_model.embedding.")
        if k.endswith(("query_key_value.weight", "query_key_value.bias")):
            hd = v.shape[0] // (3 * num_heads)
            rows = []  # backbone row part*d + head*hd + i  ->  megatron head*3hd + part*hd + i
            for head in range(num_heads):
                for part in range(3):
                    start = part * num_heads * hd + head * hd
                    rows.append(v[start:start + hd])
            v = torch.cat(rows)
        out[k] = v
    return out


def test_megatron_layout_of_the_same_model_gives_its_logits(released):
    folder, ref, sd = released
    config = json.loads((folder / "config.json").read_text())
    megatron = to_megatron(sd, config["num_attention_heads"])
    assert "language_model.encoder.layers.0.self_attention.query_key_value.weight" in megatron
    cfg, params = from_modelscope(megatron, config=config)
    _assert_logits_match(cfg, params, ref)
    # Read as blockwise q|k|v, the per-head tensors give other logits.
    cfg, wrong = from_modelscope(megatron, config=config, qkv_order="blockwise")
    got = np.asarray(GPT3LM(cfg).apply({"params": wrong}, jnp.asarray(ref["ids"])))
    assert np.abs(got - ref["logits"]).max() > 1e-2


@pytest.mark.parametrize("layout", ["backbone", "megatron"])
def test_params_round_trip_exactly(params, layout):
    sd = to_modelscope(params, layout)
    cfg, got = from_modelscope(sd, config=MS_CONFIG)
    assert cfg.scan_layers and cfg.activation == "gelu" and cfg.mlp_dim == 80
    assert cfg.num_heads == 4 and cfg.layer_norm_epsilon == 1e-5 and cfg.tie_word_embeddings
    assert got["decoder"]["layers"]["attn"]["query"]["kernel"].shape == (2, 32, 4, 8)
    cfg_u, got_u = from_modelscope(sd, config=MS_CONFIG, scan_layers=False)
    assert not cfg_u.scan_layers
    assert_trees_equal(got_u, params)


def test_layouts_are_not_interchangeable(params):
    """Reading megatron tensors as blockwise q|k|v gives different weights."""
    sd = to_modelscope(params, "megatron")
    _, right = from_modelscope(sd, config=MS_CONFIG, scan_layers=False)
    renamed = {k.replace("language_model.embedding.", "language_model.")
                .replace(".encoder.", ".transformer.").replace("self_attention", "attention"): v
               for k, v in sd.items()}
    _, wrong = from_modelscope(renamed, config=MS_CONFIG, scan_layers=False)
    q = lambda p: p["decoder"]["layers_0"]["attn"]["query"]["kernel"]  # noqa: E731
    assert not np.array_equal(q(right), q(wrong))
    _, forced = from_modelscope(renamed, config=MS_CONFIG, scan_layers=False,
                                qkv_order="per_head")
    assert_trees_equal(forced, right)


def test_wrappers_prefixes_and_config_objects(params):
    sd = to_modelscope(params, "backbone")
    variants = [
        {"state_dict": {"model." + k: v for k, v in sd.items()}},  # from_pretrained's unwrap
        {"module": {"module." + k: v for k, v in sd.items()}, "global_steps": 3},  # DeepSpeed
        {k: v.numpy() for k, v in sd.items()},
    ]
    for v in variants:
        _, got = from_modelscope(v, config=MS_CONFIG, scan_layers=False)
        assert_trees_equal(got, params)
    cfg, got = from_modelscope(sd, config=CFG, scan_layers=False)
    assert cfg == CFG.replace(scan_layers=False)
    assert_trees_equal(got, params)


def test_megatron_nested_dict_and_tensor_parallel_shards(params, tmp_path):
    sd = to_modelscope(params, "megatron")
    # Megatron's own nested checkpoint dict {'model': {'language_model': {...}}}.
    nested: dict = {}
    for k, v in sd.items():
        node = nested
        *parents, leaf = k.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = v
    _, got = from_modelscope({"model": nested, "iteration": 5}, config=MS_CONFIG,
                             scan_layers=False)
    assert_trees_equal(got, params)

    # Two tensor-parallel ranks, split like Megatron's ColumnParallel/RowParallel layers.
    def shard(k, v, r):
        if k.endswith(("query_key_value.weight", "query_key_value.bias", "dense_h_to_4h.weight",
                       "dense_h_to_4h.bias", "word_embeddings.weight")):
            return torch.chunk(v, 2, dim=0)[r].clone()
        if k.endswith(("attention.dense.weight", "dense_4h_to_h.weight")):
            return torch.chunk(v, 2, dim=1)[r].clone()
        return v.clone()

    (tmp_path / "model").mkdir()
    for r in range(2):
        torch.save({"module": {k: shard(k, v, r) for k, v in sd.items()}},
                   tmp_path / "model" / f"mp_rank_{r:02d}_model_states.pt")
    (tmp_path / "config.json").write_text(json.dumps(MS_CONFIG))
    cfg, got = from_modelscope(str(tmp_path), scan_layers=False)
    assert cfg.num_heads == 4
    assert_trees_equal(got, params)


def test_directory_with_pytorch_model_bin(params, tmp_path):
    sd = to_modelscope(params, "backbone")
    torch.save(sd, tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_text(json.dumps(MS_CONFIG))
    cfg, got = from_modelscope(tmp_path)
    assert cfg.scan_layers
    _, want = from_modelscope(sd, config=MS_CONFIG)
    assert_trees_equal(got, want)


def test_modelscope_config_dict():
    cfg = gpt3_config_from_modelscope({
        "hidden_size": 2560, "num_hidden_layers": 32, "num_attention_heads": 32,
        "vocab_size": 25600, "max_position_embeddings": 2048, "layernorm_epsilon": 1e-5,
        "intermediate_size": 3072, "hidden_dropout": 0.1, "attention_dropout": 0.1})
    assert (cfg.num_layers, cfg.num_heads, cfg.hidden_size, cfg.kv_dim) == (32, 32, 2560, 80)
    assert cfg.mlp_dim == 4 * 2560  # intermediate_size is unused by ModelScope's model code
    assert cfg.layer_norm_epsilon == 1e-5 and cfg.activation == "gelu"
    assert gpt3_config_from_modelscope({"hidden_size": 64, "num_attention_heads": 4,
                                        "ffn_hidden_size": 100}).mlp_dim == 100
    with pytest.raises(ValueError, match="apply_residual_connection_post_layernorm"):
        gpt3_config_from_modelscope({"apply_residual_connection_post_layernorm": True})


def test_key_name_mismatch_names_the_missing_key(params):
    sd = to_modelscope(params, "backbone")
    renamed = {k.replace("layers.1.input_layernorm", "layers.1.ln_1"): v for k, v in sd.items()}
    with pytest.raises(ValueError) as e:
        from_modelscope(renamed, config=MS_CONFIG)
    msg = str(e.value)
    assert "'language_model.transformer.layers.1.input_layernorm.weight'" in msg
    assert "missing tensor" in msg and "\n" not in msg
    sd2 = dict(sd)
    del sd2["language_model.transformer.final_layernorm.bias"]
    with pytest.raises(ValueError, match=r"'language_model\.transformer\.final_layernorm\.bias'"):
        from_modelscope(sd2, config=MS_CONFIG)
    with pytest.raises(ValueError, match="not a ModelScope GPT-3 state dict"):
        from_modelscope({"transformer.h.0.ln_1.weight": torch.ones(3)}, config=MS_CONFIG)


def test_config_errors(params):
    sd = to_modelscope(params, "backbone")
    with pytest.raises(ValueError, match="hidden_size=64 does not match the weights"):
        from_modelscope(sd, config={**MS_CONFIG, "hidden_size": 64})
    with pytest.raises(ValueError, match="pass config="):
        from_modelscope(sd)
    with pytest.raises(ValueError, match="check num_attention_heads"):
        from_modelscope(sd, config={**MS_CONFIG, "num_attention_heads": 8, "kv_channels": 8})
    with pytest.raises(ValueError, match="supported families: gpt3"):
        from_modelscope(sd, family="mplug", config=MS_CONFIG)


def test_to_modelscope_loads_in_gpt3model_with_the_same_logits(released, tmp_path, capsys):
    """plug-convert --source modelscope, then --to modelscope: the folder written loads with
    modelscope's own GPT3Model.from_pretrained (reference env) and gives the released model's
    logits; its tensors equal the released file's bit for bit."""
    import importlib.util
    import pathlib

    from plug_jax.convert import cli
    folder, ref, sd = released
    ours, out = tmp_path / "ours", tmp_path / "ms_out"
    assert cli.main(["--family", "gpt3", "--source", "modelscope", "--input", str(folder),
                     "--output", str(ours), "--scan_layers", "false"]) == 0
    assert cli.main(["--family", "gpt3", "--to", "modelscope", "--input", str(ours),
                     "--output", str(out)]) == 0
    said = capsys.readouterr().out
    assert "ModelScope GPT3Model config.json + configuration.json + pytorch_model.bin" in said
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "configuration.json",
                                                     "pytorch_model.bin"]
    back = torch.load(out / "pytorch_model.bin", weights_only=True)
    assert sorted(back) == sorted(k for k in sd if not k.endswith("position_ids"))
    for k, v in back.items():
        assert torch.equal(v, sd[k]), k
    build = pathlib.Path(__file__).resolve().parents[1] / "reference_env" / "build.py"
    spec = importlib.util.spec_from_file_location("plug_jax_reference_env_gpt3", build)
    env = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(env)
    np.save(tmp_path / "ids.npy", ref["ids"])
    env.run("modelscope_gpt3.py", "--check", str(out), str(tmp_path / "ids.npy"),
            str(tmp_path / "logits.npy"))
    np.testing.assert_allclose(np.load(tmp_path / "logits.npy"), ref["logits"], atol=1e-4,
                               rtol=0)
