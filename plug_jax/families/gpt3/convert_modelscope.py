"""ModelScope Chinese GPT-3 (``damo/nlp_gpt3_text-generation_*``) -> plug_jax ``GPT3LM``.

ModelScope publishes the model in two PyTorch layouts; both are read here (the
layout is detected from the key names, or forced with ``layout=``). Facts below
come from reading ``modelscope/models/nlp/gpt3/`` in the ModelScope repository.

``backbone`` -- ``backbone.py`` (``GPT3Model`` / ``GPT3TransformerLanguageModel``;
``modeling_gpt3.py`` in older releases), the single-device model::

    language_model.word_embeddings.weight                  [vocab, d]
    language_model.position_embeddings.weight              [max_pos, d]
    language_model.transformer.layers.{i}.input_layernorm.{weight,bias}
    language_model.transformer.layers.{i}.attention.query_key_value.{weight,bias}  [3d, d]
    language_model.transformer.layers.{i}.attention.dense.{weight,bias}            [d, d]
    language_model.transformer.layers.{i}.post_attention_layernorm.{weight,bias}
    language_model.transformer.layers.{i}.mlp.dense_h_to_4h.{weight,bias}          [4d, d]
    language_model.transformer.layers.{i}.mlp.dense_4h_to_h.{weight,bias}          [d, 4d]
    language_model.transformer.final_layernorm.{weight,bias}

  ``GPT3SelfAttention.forward`` splits the fused output with
  ``_split_tensor_along_last_dim(mixed_x_layer, 3)`` into three contiguous
  blocks ``q | k | v`` and then views each block as ``[heads, head_dim]``
  (``_transpose_for_scores``): **blockwise** q|k|v, head-major inside a block.
  ``GPT3Model.from_pretrained`` unwraps a ``state_dict`` entry and renames
  ``model.language_model`` to ``language_model``.

``megatron`` -- ``distributed_gpt3.py`` (Megatron ``GPT3Model`` used by
``DistributedGPT3`` for the large sizes)::

    language_model.embedding.word_embeddings.weight        [vocab, d]
    language_model.embedding.position_embeddings.weight    [max_pos, d]
    language_model.encoder.layers.{i}.input_layernorm.{weight,bias}
    language_model.encoder.layers.{i}.self_attention.query_key_value.{weight,bias}  [3*h*hd, d]
    language_model.encoder.layers.{i}.self_attention.dense.{weight,bias}            [d, h*hd]
    language_model.encoder.layers.{i}.post_attention_layernorm.{weight,bias}
    language_model.encoder.layers.{i}.mlp.dense_h_to_4h.{weight,bias}               [ffn, d]
    language_model.encoder.layers.{i}.mlp.dense_4h_to_h.{weight,bias}               [d, ffn]
    language_model.encoder.final_layernorm.{weight,bias}

  ``GPT3ParallelAttention.forward`` views the fused output as
  ``[heads, 3 * head_dim]`` and then splits the last axis in three
  (``mpu.split_tensor_along_last_dim``): **per-head interleaved**
  ``[q_h | k_h | v_h]`` for each head h. Checkpoints are
  ``model/mp_rank_XX_model_states.pt`` whose ``module`` entry is the state dict
  (``modelscope/utils/nlp/load_checkpoint.py: pre_load``); tensor-parallel
  shards are split by ``split_into_partitions`` with stride 1 along
  ``partition_dim`` (0 for ColumnParallelLinear / VocabParallelEmbedding, 1
  for RowParallelLinear weights), which :func:`merge_tensor_parallel` undoes.

Both layouts: torch ``nn.Linear`` weights are ``[out, in]``; LayerNorm eps is
``layernorm_epsilon``; the MLP uses exact ``F.gelu`` (``hidden_act`` is
ignored by ModelScope's code and here); attention scales by
``1/sqrt(head_dim)`` (Megatron's query-key layer scaling cancels out); the
output projection is the transposed word embedding (tied).

Export (``plug-convert --family gpt3 --to modelscope``, :func:`save_modelscope`) writes the
backbone layout back: ``config.json`` (``layernorm_epsilon`` only, as released),
``configuration.json`` and ``pytorch_model.bin``; modelscope's own ``GPT3Model.from_pretrained``
loads it with our logits (tests/convert/test_modelscope_gpt3.py).
"""
from __future__ import annotations

import glob
import json
import os
import re
from typing import Any, Mapping, Sequence

import numpy as np

from plug_jax.convert import io as cio
from plug_jax.families.gpt3.config import GPT3Config
from plug_jax.families.gpt3.convert_hf import check_family, check_params_match

LAYOUTS = ("backbone", "megatron")
QKV_ORDERS = ("blockwise", "per_head")
_DEFAULT_QKV = {"backbone": "blockwise", "megatron": "per_head"}
_PREFIXES = ("module.", "model.")
_LAYER = re.compile(r"^language_model\.(?:transformer|encoder)\.layers\.(\d+)\.")

# name suffix -> concatenation axis of tensor-parallel shards (others are replicated)
_TP_AXES = {
    "word_embeddings.weight": 0,
    "query_key_value.weight": 0, "query_key_value.bias": 0,
    "mlp.dense_h_to_4h.weight": 0, "mlp.dense_h_to_4h.bias": 0,
    "attention.dense.weight": 1,  # also matches self_attention.dense.weight
    "mlp.dense_4h_to_h.weight": 1,
}


# ------------------------------------------------------------------------------ config
def _first(c: Mapping, *names: str, default: Any = None) -> Any:
    for n in names:
        if c.get(n) is not None:
            return c[n]
    return default


def gpt3_config_from_modelscope(ms_config: Mapping, *, scan_layers: bool = True,
                                **overrides) -> GPT3Config:
    """``GPT3Config`` from a ModelScope GPT-3 ``config.json`` dict.

    FFN size: ``ffn_hidden_size``, else ``4 * hidden_size`` (ModelScope's
    ``configuration.py`` default; its ``intermediate_size`` is unused by the
    model code and ignored here). ``kv_channels`` sets the head dim when given.
    """
    api = "from_modelscope"
    c = dict(ms_config)
    if c.get("apply_residual_connection_post_layernorm", False):
        raise ValueError(f"{api}: apply_residual_connection_post_layernorm=True (post-LN "
                         f"residual) is not supported; GPT3LM is pre-LN")
    d = int(_first(c, "hidden_size", "n_embd", default=768))
    heads = int(_first(c, "num_attention_heads", "n_head", default=12))
    kv_channels = _first(c, "kv_channels")
    head_dim = int(kv_channels) if kv_channels and int(kv_channels) * heads != d else None
    kw = dict(
        vocab_size=int(_first(c, "vocab_size", default=25600)),
        num_layers=int(_first(c, "num_hidden_layers", "num_layers", default=12)),
        num_heads=heads,
        hidden_size=d,
        ffn_size=int(_first(c, "ffn_hidden_size", default=4 * d)),
        head_dim=head_dim,
        max_position_embeddings=int(_first(c, "max_position_embeddings", default=2048)),
        layer_norm_epsilon=float(_first(c, "layernorm_epsilon", "layer_norm_eps",
                                        "layer_norm_epsilon", default=1e-12)),
        activation="gelu",  # F.gelu is hard-coded in both ModelScope layouts
        dropout_rate=float(_first(c, "hidden_dropout", "hidden_dropout_prob", default=0.1)),
        attention_dropout_rate=float(_first(c, "attention_dropout",
                                            "attention_probs_dropout_prob", default=0.1)),
        tie_word_embeddings=True,
        initializer_range=float(_first(c, "init_method_std", "initializer_range", default=0.02)),
        scan_layers=scan_layers,
    )
    kw.update(overrides)
    return GPT3Config(**kw)


# ------------------------------------------------------------------------------ loading
def normalize_state_dict(obj: Mapping) -> dict[str, Any]:
    """Flat ``{language_model...: tensor}`` from a ModelScope / Megatron / DeepSpeed dict.

    Unwraps a ``module`` / ``state_dict`` / ``model`` entry (DeepSpeed,
    Lightning, Megatron), flattens nested dicts with ``.`` and strips leading
    ``module.`` / ``model.`` prefixes from the names.
    """
    if not any(str(k).startswith(("language_model", "module.", "model.")) for k in obj):
        for wrapper in ("module", "state_dict", "model"):
            if isinstance(obj.get(wrapper), Mapping):
                return normalize_state_dict(obj[wrapper])
    flat: dict[str, Any] = {}

    def walk(node: Mapping, prefix: str) -> None:
        for k, v in node.items():
            if isinstance(v, Mapping):
                walk(v, f"{prefix}{k}.")
            else:
                flat[f"{prefix}{k}"] = v

    walk(obj, "")
    out: dict[str, Any] = {}
    for k, v in flat.items():
        while k.startswith(_PREFIXES):
            k = k.split(".", 1)[1]
        out[k] = v
    return out


def merge_tensor_parallel(shards: Sequence[Mapping]) -> dict[str, np.ndarray]:
    """Joins Megatron tensor-parallel shards (rank order) into one state dict.

    Column-parallel tensors (QKV and ``dense_h_to_4h`` weights and biases, the
    vocab-parallel word embedding) concatenate on axis 0, row-parallel weights
    (attention ``dense``, ``dense_4h_to_h``) on axis 1; everything else is
    replicated and taken from rank 0. This inverts ModelScope's
    ``split_into_partitions`` with stride 1, the stride of every parallel layer
    in ``distributed_gpt3.py``.
    """
    shards = [normalize_state_dict(s) for s in shards]
    if len(shards) == 1:
        return {k: cio.to_numpy(v) for k, v in shards[0].items()}
    keys = set(shards[0])
    for r, s in enumerate(shards[1:], 1):
        if set(s) != keys:
            diff = sorted(keys ^ set(s))[0]
            raise ValueError(f"from_modelscope: tensor-parallel shard {r} and shard 0 differ in "
                             f"tensor {diff!r}; pass all mp_rank files of one checkpoint")
    out = {}
    for k in sorted(keys):
        axis = next((a for suffix, a in _TP_AXES.items() if k.endswith(suffix)), None)
        if axis is None:
            out[k] = cio.to_numpy(shards[0][k])
        else:
            out[k] = np.concatenate([cio.to_numpy(s[k]) for s in shards], axis=axis)
    return out


def _find_weights(directory: str) -> list[str]:
    for pattern in ("model.safetensors", "*.safetensors", "pytorch_model.bin",
                    os.path.join("model", "mp_rank_*_model_states.pt"),
                    "mp_rank_*_model_states.pt", "*.bin", "*.pt"):
        files = sorted(glob.glob(os.path.join(directory, pattern)))
        if files:
            return files
    raise ValueError(f"from_modelscope: no weights in {directory}: expected pytorch_model.bin, "
                     f"*.safetensors or model/mp_rank_XX_model_states.pt")


def _load_source(source: Any, config: Any) -> tuple[Any, dict[str, np.ndarray]]:
    api = "from_modelscope"
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if os.path.isdir(path):
            files, cfg_dir = _find_weights(path), path
        elif os.path.isfile(path):
            files, cfg_dir = [path], os.path.dirname(path) or "."
        else:
            raise FileNotFoundError(f"{api}: {path} does not exist")
        if config is None:
            cfg_path = os.path.join(cfg_dir, "config.json")
            if os.path.isfile(cfg_path):
                config = cio.read_json(cfg_path)
        ranks = [f for f in files if re.search(r"mp_rank_\d+", os.path.basename(f))]
        if ranks and len(ranks) == len(files):
            return config, merge_tensor_parallel([cio.load_weights_file(f) for f in files])
        if len(files) > 1 and all(f.endswith(".safetensors") for f in files):
            return config, merge_tensor_parallel([cio.load_weights_files(files)])
        if len(files) > 1:
            names = ", ".join(os.path.basename(f) for f in files[:3])
            raise ValueError(f"{api}: several weight files in {path} ({names}); pass the one "
                             f"to convert")
        return config, merge_tensor_parallel([cio.load_weights_file(files[0])])
    if isinstance(source, Mapping):
        return config, merge_tensor_parallel([source])
    if isinstance(source, Sequence) and source and all(isinstance(s, Mapping) for s in source):
        return config, merge_tensor_parallel(list(source))
    raise TypeError(f"{api}: expected a state dict, a list of tensor-parallel shards, a "
                    f"directory or a weights file, got {type(source).__name__}")


def detect_layout(keys) -> str:
    keys = list(keys)
    if any(k.startswith(("language_model.encoder.", "language_model.embedding.")) for k in keys):
        return "megatron"
    if any(k.startswith("language_model.transformer.") for k in keys):
        return "backbone"
    raise ValueError(f"from_modelscope: not a ModelScope GPT-3 state dict: no key starts with "
                     f"language_model.transformer. or language_model.encoder. (keys look like "
                     f"{sorted(keys)[:3]})")


# ------------------------------------------------------------------------------ convert
def from_modelscope(state_dict_or_dir: Any, family: str = "gpt3", config: Any = None, *,
                    scan_layers: bool = True, layout: str = "auto", qkv_order: str = "auto",
                    strict: bool = True) -> tuple[GPT3Config, dict]:
    """Converts a ModelScope GPT-3 checkpoint into ``(GPT3Config, params)``.

    Args:
      state_dict_or_dir: a state dict (torch tensors or numpy arrays; wrapped in
        ``module`` / ``state_dict`` / ``model`` or prefixed with ``module.`` /
        ``model.`` is fine), a list of tensor-parallel shard dicts in rank
        order, a weights file, or a ModelScope model directory (``config.json``
        plus ``pytorch_model.bin``, ``*.safetensors`` or
        ``model/mp_rank_XX_model_states.pt``).
      family: target family; only ``"gpt3"``.
      config: a ``GPT3Config`` or a ModelScope ``config.json`` dict; read from
        the directory when omitted. Sizes are checked against the tensors.
      scan_layers: scanned (default) or unscanned (``layers_0..``) layout.
      layout: key names, ``"backbone"`` (``language_model.transformer...``),
        ``"megatron"`` (``language_model.encoder...``) or ``"auto"`` (detected).
      qkv_order: order of the fused ``query_key_value`` outputs:
        ``"blockwise"`` (q | k | v blocks, backbone.py), ``"per_head"``
        (``[heads, 3, head_dim]``, distributed_gpt3.py) or ``"auto"`` (the one
        that goes with ``layout``).
      strict: raise on tensors that are not used.
    """
    api = "from_modelscope"
    check_family(family, api)
    if layout not in LAYOUTS + ("auto",):
        raise ValueError(f"{api}: unknown layout {layout!r}; choose one of auto, "
                         f"{', '.join(LAYOUTS)}")
    if qkv_order not in QKV_ORDERS + ("auto",):
        raise ValueError(f"{api}: unknown qkv_order {qkv_order!r}; choose one of auto, "
                         f"{', '.join(QKV_ORDERS)}")
    config, sd = _load_source(state_dict_or_dir, config)
    if layout == "auto":
        layout = detect_layout(sd)
    if qkv_order == "auto":
        qkv_order = _DEFAULT_QKV[layout]
    if layout == "megatron":
        emb = "language_model.embedding."
        body = "language_model.encoder."
        attn_name = "self_attention" if any(".self_attention." in k for k in sd) else "attention"
    else:
        emb, body, attn_name = "language_model.", "language_model.transformer.", "attention"

    used: set[str] = set()

    def take(name: str) -> np.ndarray:
        if name not in sd:
            raise ValueError(f"{api}: missing tensor {name!r} in the {layout} layout; check "
                             f"that the checkpoint is a complete ModelScope GPT-3 model")
        used.add(name)
        return sd[name]

    word = take(emb + "word_embeddings.weight")
    vocab, d = word.shape
    layer_ids = sorted({int(m.group(1)) for k in sd if (m := _LAYER.match(k))})
    num_layers = len(layer_ids)
    if layer_ids != list(range(num_layers)):
        raise ValueError(f"{api}: layer indices {layer_ids} are not 0..{num_layers - 1}")
    qkv0 = take(f"{body}layers.0.{attn_name}.query_key_value.weight") if num_layers else None
    ffn = take(f"{body}layers.0.mlp.dense_h_to_4h.weight").shape[0] if num_layers else 4 * d

    found = dict(vocab_size=vocab, hidden_size=d, num_layers=num_layers, ffn_size=ffn,
                 max_position_embeddings=take(emb + "position_embeddings.weight").shape[0])
    if config is None:
        raise ValueError(f"{api}: the number of attention heads is not stored in the weights; "
                         f"pass config= (a GPT3Config or ModelScope config.json dict) or put "
                         f"config.json next to the weights")
    if isinstance(config, GPT3Config):
        cfg = config.replace(scan_layers=scan_layers)
        have = dict(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size,
                    num_layers=cfg.num_layers, ffn_size=cfg.mlp_dim,
                    max_position_embeddings=cfg.max_position_embeddings)
    else:
        # Sizes the config.json leaves out come from the tensors.
        names = dict(vocab_size="vocab_size", hidden_size="hidden_size",
                     num_layers="num_hidden_layers", ffn_size="ffn_hidden_size",
                     max_position_embeddings="max_position_embeddings")
        c = {names[k]: v for k, v in found.items()}
        c.update({k: v for k, v in dict(config).items() if v is not None})
        cfg = gpt3_config_from_modelscope(c, scan_layers=scan_layers)
        have = {k: getattr(cfg, k) for k in found}
        have["ffn_size"] = cfg.mlp_dim
    for k, v in found.items():
        if have[k] != v:
            raise ValueError(f"{api}: config {k}={have[k]} does not match the weights ({v}); "
                             f"use the config.json that belongs to this checkpoint")
    if not cfg.tie_word_embeddings:
        raise ValueError(f"{api}: ModelScope GPT-3 ties the output to the word embeddings; "
                         f"use tie_word_embeddings=True")
    heads, hd = cfg.num_heads, cfg.kv_dim
    if qkv0 is not None and qkv0.shape[0] != 3 * heads * hd:
        raise ValueError(f"{api}: query_key_value has {qkv0.shape[0]} outputs, expected 3 * "
                         f"{heads} heads * {hd} = {3 * heads * hd}; check num_attention_heads")

    def split_qkv(w: np.ndarray, b: np.ndarray) -> dict:
        if qkv_order == "per_head":  # [heads, 3, head_dim] along the output axis
            w4, b3 = w.reshape(heads, 3, hd, d), b.reshape(heads, 3, hd)
            parts = [(w4[:, j], b3[:, j]) for j in range(3)]
        else:  # [3, heads, head_dim]: q | k | v blocks
            w4, b3 = w.reshape(3, heads, hd, d), b.reshape(3, heads, hd)
            parts = [(w4[j], b3[j]) for j in range(3)]
        return {name: {"kernel": np.ascontiguousarray(pw.transpose(2, 0, 1)),
                       "bias": np.ascontiguousarray(pb)}
                for name, (pw, pb) in zip(("query", "key", "value"), parts)}

    def ln(prefix: str) -> dict:
        return {"scale": take(prefix + ".weight"), "bias": take(prefix + ".bias")}

    def linear_t(prefix: str) -> dict:  # torch Linear [out, in] -> kernel [in, out]
        return {"kernel": np.ascontiguousarray(take(prefix + ".weight").T),
                "bias": take(prefix + ".bias")}

    layers = []
    for i in range(num_layers):
        p = f"{body}layers.{i}."
        a = p + attn_name + "."
        attn = split_qkv(take(a + "query_key_value.weight"), take(a + "query_key_value.bias"))
        attn["out"] = {"kernel": np.ascontiguousarray(
            take(a + "dense.weight").T.reshape(heads, hd, d)), "bias": take(a + "dense.bias")}
        layers.append({
            "pre_attn_norm": ln(p + "input_layernorm"),
            "attn": attn,
            "pre_mlp_norm": ln(p + "post_attention_layernorm"),
            "mlp": {"wi": linear_t(p + "mlp.dense_h_to_4h"),
                    "wo": linear_t(p + "mlp.dense_4h_to_h")},
        })
    params = {
        "token_embed": {"embedding": word},
        "pos_embed": {"embedding": take(emb + "position_embeddings.weight")},
        "decoder": cio.assemble_decoder(layers, scan_layers),
        "final_norm": ln(body + "final_layernorm"),
    }
    leftover = sorted(set(sd) - used)
    if strict and leftover:
        more = f" (and {len(leftover) - 1} more)" if len(leftover) > 1 else ""
        raise ValueError(f"{api}: unexpected tensor {leftover[0]!r}{more} in the {layout} layout; "
                         f"pass strict=False to ignore it")
    check_params_match(cfg, params, api)
    return cfg, params


# ------------------------------------------------------------------------------ export
def modelscope_config(config: GPT3Config) -> dict:
    """The ModelScope ``config.json`` of ``config`` (what ``from_modelscope`` and modelscope's
    ``GPT3Config`` read back; ``layernorm_epsilon`` only, as the released files have it)."""
    api = "gpt3 --to modelscope"
    if config.activation != "gelu" or not config.tie_word_embeddings:
        raise ValueError(f"{api}: ModelScope GPT-3 has exact GELU and tied embeddings; got "
                         f"activation={config.activation!r}, "
                         f"tie_word_embeddings={config.tie_word_embeddings}")
    if config.kv_heads != config.num_heads or config.num_experts:
        raise ValueError(f"{api}: no grouped KV heads or experts in the backbone layout")
    out = {"model_type": "gpt3", "hidden_size": config.hidden_size,
           "num_hidden_layers": config.num_layers, "num_attention_heads": config.num_heads,
           "vocab_size": config.vocab_size,
           "max_position_embeddings": config.max_position_embeddings,
           "layernorm_epsilon": config.layer_norm_epsilon, "ffn_hidden_size": config.mlp_dim,
           "hidden_act": "gelu", "hidden_dropout": config.dropout_rate,
           "attention_dropout": config.attention_dropout_rate,
           "init_method_std": config.initializer_range}
    if config.kv_dim * config.num_heads != config.hidden_size:
        out["kv_channels"] = config.kv_dim
    return out


def to_modelscope_state_dict(config: GPT3Config, params: Mapping) -> dict[str, Any]:
    """``{name: torch.Tensor}`` in the ``GPT3Model`` backbone layout."""
    import torch

    p = cio.unbox_params(params)
    d, heads, hd = config.hidden_size, config.num_heads, config.kv_dim

    def t(x) -> "torch.Tensor":
        return torch.from_numpy(np.ascontiguousarray(np.asarray(x, dtype=np.float32)))

    body = "language_model.transformer."
    sd = {"language_model.word_embeddings.weight": t(p["token_embed"]["embedding"]),
          "language_model.position_embeddings.weight": t(p["pos_embed"]["embedding"])}
    layers = cio.split_layers(p["decoder"], config.num_layers, "gpt3 --to modelscope")
    for i, layer in enumerate(layers):
        pre, a, m = f"{body}layers.{i}.", layer["attn"], layer["mlp"]
        # kernel [d, heads, hd] -> rows (part, head, k) of a torch [3 * heads * hd, d] weight
        sd[pre + "attention.query_key_value.weight"] = t(np.concatenate(
            [np.asarray(a[n]["kernel"]).reshape(d, heads * hd).T
             for n in ("query", "key", "value")], axis=0))
        sd[pre + "attention.query_key_value.bias"] = t(np.concatenate(
            [np.asarray(a[n]["bias"]).reshape(heads * hd) for n in ("query", "key", "value")]))
        sd[pre + "attention.dense.weight"] = t(
            np.asarray(a["out"]["kernel"]).reshape(heads * hd, d).T)
        sd[pre + "attention.dense.bias"] = t(a["out"]["bias"])
        for ours, theirs in (("pre_attn_norm", "input_layernorm"),
                             ("pre_mlp_norm", "post_attention_layernorm")):
            sd[pre + theirs + ".weight"] = t(layer[ours]["scale"])
            sd[pre + theirs + ".bias"] = t(layer[ours]["bias"])
        for ours, theirs in (("wi", "dense_h_to_4h"), ("wo", "dense_4h_to_h")):
            sd[pre + f"mlp.{theirs}.weight"] = t(np.asarray(m[ours]["kernel"]).T)
            sd[pre + f"mlp.{theirs}.bias"] = t(m[ours]["bias"])
    sd[body + "final_layernorm.weight"] = t(p["final_norm"]["scale"])
    sd[body + "final_layernorm.bias"] = t(p["final_norm"]["bias"])
    return sd


# configuration.json: what modelscope's Model.from_pretrained dispatches on
# (metainfo Models.gpt3 'gpt3', Pipelines.gpt3_generation 'gpt3-generation').
MS_CONFIGURATION = {"framework": "pytorch", "task": "text-generation",
                    "model": {"type": "gpt3"}, "pipeline": {"type": "gpt3-generation"}}


def save_modelscope(config: GPT3Config, params: Mapping, out_dir: str) -> str:
    """Writes a ModelScope GPT-3 folder of ``params``: ``config.json``, ``configuration.json``
    and ``pytorch_model.bin`` (``torch.save`` of the ``GPT3Model`` state dict), what
    ``GPT3Model.from_pretrained`` / ``GPT3ForTextGeneration`` read (plug-convert copies the
    carried ``vocab.txt`` beside them, where its ``BertTokenizer`` looks).
    ``plug-convert --family gpt3 --to modelscope``; checked against modelscope's own
    ``GPT3Model`` in tests/convert/test_modelscope_gpt3.py. Returns a short description."""
    import torch

    ms_config = modelscope_config(config)  # refuses what the layout cannot hold, first
    sd = to_modelscope_state_dict(config, params)
    torch.save(sd, os.path.join(out_dir, "pytorch_model.bin"))
    for name, obj in (("config.json", ms_config), ("configuration.json", MS_CONFIGURATION)):
        with open(os.path.join(out_dir, name), "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2)
    return (f"ModelScope GPT3Model config.json + configuration.json + pytorch_model.bin "
            f"({len(sd)} tensors, {config.num_layers} layers)")
