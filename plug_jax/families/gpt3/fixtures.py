"""GPT-3 checkpoints in its import-only format, written from plug_jax params, for tests.

This is the ``Converter.fixture`` writer of the ``modelscope`` import: the family contract test
(tests/families/test_contract.py) writes a checkpoint with it and imports it back with the
converter. It is not a user-facing exporter (``plug-convert --to`` offers GPT-3 only as ``hf``,
:func:`plug_jax.families.gpt3.convert_hf.save_transformers`), and nothing here is checked
against modelscope (the importer is, in tests/convert/test_modelscope_gpt3.py).

* ``modelscope``: ``config.json`` + ``pytorch_model.bin`` in the ``GPT3Model`` backbone layout
  (``language_model.transformer.*``, fused ``query_key_value`` as q | k | v blocks, torch
  ``Linear`` ``[out, in]``): the inverse of ``from_modelscope``'s backbone branch, as
  tests/convert/test_modelscope_gpt3.py's ``to_modelscope`` lays it out.
"""
from __future__ import annotations

import json
import os
from typing import Any, Mapping

import numpy as np

from plug_jax.convert import io as cio
from plug_jax.families.gpt3.config import GPT3Config


def modelscope_config(config: GPT3Config) -> dict:
    """The ModelScope ``config.json`` of ``config`` (what ``from_modelscope`` reads back)."""
    api = "gpt3 modelscope fixture"
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
    layers = cio.split_layers(p["decoder"], config.num_layers, "gpt3 modelscope fixture")
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


def write_modelscope(config: GPT3Config, params: Mapping, out_dir: str) -> None:
    """ModelScope GPT-3 folder (``config.json`` + ``pytorch_model.bin``) of ``params``."""
    import torch

    ms_config = modelscope_config(config)
    torch.save(to_modelscope_state_dict(config, params),
               os.path.join(out_dir, "pytorch_model.bin"))
    with open(os.path.join(out_dir, "config.json"), "w", encoding="utf-8") as f:
        json.dump(ms_config, f, indent=1)
