"""Hugging Face ``transformers`` GPT-2 <-> plug_jax GPT-3 (``GPT3LM``) conversion.

GPT-2 and the Chinese GPT-3 share one architecture (pre-LN decoder, learned
absolute positions, tied output embedding, biases everywhere), so a GPT-2
checkpoint maps onto ``GPT3LM`` exactly. GPT-2 specifics handled here:

* ``Conv1D`` stores weights ``[in, out]`` (the transpose of ``nn.Linear``), so
  kernels are reshaped, never transposed;
* ``attn.c_attn`` is one fused ``[d, 3d]`` projection whose output columns are
  the three blocks ``q | k | v``; inside each block, columns are head-major
  (``head * head_dim + i``);
* old checkpoints carry ``attn.bias`` / ``attn.masked_bias`` causal-mask
  buffers, which are ignored.

torch and transformers are imported lazily (only ``to_transformers`` /
``to_transformers_config`` and reading ``.bin`` files need them).
"""
from __future__ import annotations

import os
import re
from typing import Any, Mapping

import numpy as np

from plug_jax.convert import io as cio
from plug_jax.families.gpt3.config import GPT3Config

# These converters produce the gpt3 family only (the ``family`` arguments are for callers
# that pass it explicitly).
SUPPORTED_FAMILIES = ("gpt3",)


def check_family(family: str, api: str) -> None:
    if family not in SUPPORTED_FAMILIES:
        raise ValueError(f"{api}: unknown family {family!r}; supported families: "
                         f"{', '.join(SUPPORTED_FAMILIES)}")

# HF activation_function -> GPT3Config.activation
HF_ACTIVATIONS = {
    "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh",
    "gelu": "gelu", "relu": "relu", "silu": "silu", "swish": "silu", "quick_gelu": "quick_gelu",
}
# GPT3Config.activation -> HF activation_function
TO_HF_ACTIVATIONS = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu", "silu": "silu",
                     "quick_gelu": "quick_gelu"}
SUPPORTED_MODEL_TYPES = ("gpt2",)
_BUFFER = re.compile(r"^h\.\d+\.attn\.(bias|masked_bias)$")


# ------------------------------------------------------------------------------ config
def _hf_config_dict(hf_config: Any) -> dict:
    if isinstance(hf_config, Mapping):
        return dict(hf_config)
    if hasattr(hf_config, "to_dict"):
        return hf_config.to_dict()
    raise TypeError(f"expected a GPT2Config or a config.json dict, got {type(hf_config).__name__}")


def gpt3_config_from_hf(hf_config: Any, *, scan_layers: bool = True, **overrides) -> GPT3Config:
    """``GPT3Config`` from a ``transformers.GPT2Config`` (or its ``config.json`` dict).

    Raises ``ValueError`` (one line) for GPT-2 options plug_jax does not reproduce.
    """
    api = "from_transformers"
    c = _hf_config_dict(hf_config)
    model_type = c.get("model_type", "gpt2")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"{api}: model_type {model_type!r} cannot be converted to family 'gpt3' "
                         f"(supported: {', '.join(SUPPORTED_MODEL_TYPES)})")
    if c.get("add_cross_attention", False):
        raise ValueError(f"{api}: add_cross_attention=True (GPT-2 with cross-attention) is not "
                         f"supported; GPT3LM is decoder-only")
    if c.get("scale_attn_by_inverse_layer_idx", False):
        raise ValueError(f"{api}: scale_attn_by_inverse_layer_idx=True changes the attention "
                         f"numerics and is not supported by GPT3LM")
    if not c.get("scale_attn_weights", True):
        raise ValueError(f"{api}: scale_attn_weights=False (unscaled attention) is not supported; "
                         f"GPT3LM always scales by 1/sqrt(head_dim)")
    # reorder_and_upcast_attn only reorders the scaling and upcasts to float32 for mixed
    # precision; in float32 it computes the same function, so it is accepted.
    act = c.get("activation_function", "gelu_new")
    if act not in HF_ACTIVATIONS:
        raise ValueError(f"{api}: activation_function {act!r} is not supported; supported: "
                         f"{', '.join(sorted(HF_ACTIVATIONS))}")
    d, heads = int(c.get("n_embd", 768)), int(c.get("n_head", 12))
    if d % heads:
        raise ValueError(f"{api}: n_embd {d} is not divisible by n_head {heads}")
    kw = dict(
        vocab_size=int(c.get("vocab_size", 50257)),
        num_layers=int(c.get("n_layer", 12)),
        num_heads=heads,
        hidden_size=d,
        ffn_size=int(c.get("n_inner") or 4 * d),
        max_position_embeddings=int(c.get("n_positions", 1024)),
        layer_norm_epsilon=float(c.get("layer_norm_epsilon", 1e-5)),
        activation=HF_ACTIVATIONS[act],
        dropout_rate=float(c.get("resid_pdrop", 0.1)),
        attention_dropout_rate=float(c.get("attn_pdrop", 0.1)),
        tie_word_embeddings=bool(c.get("tie_word_embeddings", True)),
        initializer_range=float(c.get("initializer_range", 0.02)),
        scan_layers=scan_layers,
    )
    kw.update(overrides)
    return GPT3Config(**kw)


def to_transformers_config(config: GPT3Config):
    """The ``transformers.GPT2Config`` of a plug_jax ``GPT3Config``."""
    from transformers import GPT2Config

    api = "to_transformers_config"
    if config.kv_heads != config.num_heads:
        raise ValueError(f"{api}: GPT-2 has no grouped KV heads (num_kv_heads={config.kv_heads}, "
                         f"num_heads={config.num_heads})")
    if config.kv_dim * config.num_heads != config.hidden_size:
        raise ValueError(f"{api}: GPT-2 needs head_dim * num_heads == hidden_size "
                         f"({config.kv_dim} * {config.num_heads} != {config.hidden_size})")
    if config.activation not in TO_HF_ACTIVATIONS:
        raise ValueError(f"{api}: activation {config.activation!r} has no GPT-2 equivalent")
    return GPT2Config(
        vocab_size=config.vocab_size, n_positions=config.max_position_embeddings,
        n_embd=config.hidden_size, n_layer=config.num_layers, n_head=config.num_heads,
        n_inner=config.mlp_dim, activation_function=TO_HF_ACTIVATIONS[config.activation],
        resid_pdrop=config.dropout_rate, embd_pdrop=config.dropout_rate,
        attn_pdrop=config.attention_dropout_rate, layer_norm_epsilon=config.layer_norm_epsilon,
        initializer_range=config.initializer_range,
        tie_word_embeddings=config.tie_word_embeddings,
        # GPT-2's 50256 only exists in its own table; a carried vocabulary sets its ids
        **({} if config.vocab_size > 50256 else {"bos_token_id": None, "eos_token_id": None}))


# ------------------------------------------------------------------------------ import
def _load_source(model_or_dir: Any, config: Any) -> tuple[dict, Mapping[str, Any]]:
    """(hf config dict, state dict) from a model, a state dict, a directory or a file."""
    api = "from_transformers"
    if isinstance(model_or_dir, (str, os.PathLike)):
        config, sd = cio.read_checkpoint(model_or_dir, config, api=api,
                                         fix="pass config= (a GPT2Config or its dict)")
        return _hf_config_dict(config), sd
    if hasattr(model_or_dir, "state_dict") and hasattr(model_or_dir, "config"):
        return _hf_config_dict(config if config is not None else model_or_dir.config), \
            model_or_dir.state_dict()
    if isinstance(model_or_dir, Mapping):
        if config is None:
            raise ValueError(f"{api}: a bare state dict needs config= (a GPT2Config or its dict)")
        return _hf_config_dict(config), model_or_dir
    raise TypeError(f"{api}: expected a GPT2LMHeadModel/GPT2Model, a state dict or a "
                    f"save_pretrained directory, got {type(model_or_dir).__name__}")


def from_transformers(model_or_dir: Any, family: str = "gpt3", *, config: Any = None,
                      scan_layers: bool = True, strict: bool = True) -> tuple[GPT3Config, dict]:
    """Converts a Hugging Face GPT-2 checkpoint into ``(GPT3Config, params)``.

    Args:
      model_or_dir: a ``GPT2LMHeadModel`` / ``GPT2Model`` instance, a state dict
        (torch tensors or numpy arrays, with or without the ``transformer.``
        prefix), a ``save_pretrained`` directory (``config.json`` plus
        ``model.safetensors`` / ``pytorch_model.bin`` / sharded index) or one
        weights file with ``config.json`` beside it.
      family: target family; only ``"gpt3"``.
      config: the HF config (``GPT2Config`` or dict) when it cannot be found
        from ``model_or_dir``; overrides the model's own config otherwise.
      scan_layers: return the scanned layout (leading ``layers`` axis) or the
        unscanned ``layers_0..`` layout; the returned config matches.
      strict: raise on tensors the converter does not use (e.g. a
        classification head) instead of ignoring them.

    Returns:
      ``(config, params)``: params is a plain dict of float32 numpy arrays, the
      ``params`` collection of ``GPT3LM(config)``.
    """
    api = "from_transformers"
    check_family(family, api)
    hf_cfg, sd = _load_source(model_or_dir, config)
    cfg = gpt3_config_from_hf(hf_cfg, scan_layers=scan_layers)
    sd = {(k[len("transformer."):] if k.startswith("transformer.") else k): v
          for k, v in sd.items()}
    used: set[str] = set()

    def take(name: str) -> np.ndarray:
        if name not in sd:
            raise ValueError(f"{api}: missing tensor {name!r} (state dict keys look like "
                             f"{sorted(sd)[:3]}); is this a GPT-2 checkpoint of this config?")
        used.add(name)
        return cio.to_numpy(sd[name])

    d, heads, hd = cfg.hidden_size, cfg.num_heads, cfg.kv_dim
    params: dict[str, Any] = {
        "token_embed": {"embedding": take("wte.weight")},
        "pos_embed": {"embedding": take("wpe.weight")},
    }
    layers = []
    for i in range(cfg.num_layers):
        p = f"h.{i}."
        w_qkv = take(p + "attn.c_attn.weight").reshape(d, 3, heads, hd)  # Conv1D [in, out]
        b_qkv = take(p + "attn.c_attn.bias").reshape(3, heads, hd)
        attn = {name: {"kernel": np.ascontiguousarray(w_qkv[:, j]), "bias": b_qkv[j].copy()}
                for j, name in enumerate(("query", "key", "value"))}
        attn["out"] = {"kernel": take(p + "attn.c_proj.weight").reshape(heads, hd, d),
                       "bias": take(p + "attn.c_proj.bias")}
        layers.append({
            "pre_attn_norm": {"scale": take(p + "ln_1.weight"), "bias": take(p + "ln_1.bias")},
            "attn": attn,
            "pre_mlp_norm": {"scale": take(p + "ln_2.weight"), "bias": take(p + "ln_2.bias")},
            "mlp": {"wi": {"kernel": take(p + "mlp.c_fc.weight"),
                           "bias": take(p + "mlp.c_fc.bias")},
                    "wo": {"kernel": take(p + "mlp.c_proj.weight"),
                           "bias": take(p + "mlp.c_proj.bias")}},
        })
    params["decoder"] = cio.assemble_decoder(layers, scan_layers)
    params["final_norm"] = {"scale": take("ln_f.weight"), "bias": take("ln_f.bias")}
    if cfg.tie_word_embeddings:
        used.add("lm_head.weight")  # tied: the same tensor as wte
    else:
        params["lm_head"] = {"kernel": take("lm_head.weight").T.copy()}  # Linear [out, in]

    leftover = sorted(k for k in sd if k not in used and not _BUFFER.match(k))
    if strict and leftover:
        more = f" (and {len(leftover) - 1} more)" if len(leftover) > 1 else ""
        raise ValueError(f"{api}: unexpected tensor {leftover[0]!r}{more} is not part of a GPT-2 "
                         f"LM; pass strict=False to ignore it")
    check_params_match(cfg, params, api)
    return cfg, params


def check_params_match(config: Any, params: Mapping, api: str) -> None:
    """Raises one line if ``params`` differ in keys or shapes from ``GPT3LM(config)``."""
    from flax import linen as nn

    from plug_jax.families.gpt3.network import abstract_params

    want = {k: tuple(v.shape) for k, v in cio.flatten_tree(nn.unbox(abstract_params(config))).items()}
    got = {k: tuple(np.shape(v)) for k, v in cio.flatten_tree(params).items()}
    for k in sorted(set(want) | set(got)):
        if k not in got:
            raise ValueError(f"{api}: converted params lack {k} that GPT3LM(config) expects")
        if k not in want:
            raise ValueError(f"{api}: converted params have {k} that GPT3LM(config) does not use")
        if want[k] != got[k]:
            raise ValueError(f"{api}: converted {k} has shape {got[k]}, GPT3LM(config) expects "
                             f"{want[k]}")


# ------------------------------------------------------------------------------ export
def to_transformers(config: GPT3Config, params: Mapping, family: str = "gpt3") -> dict:
    """A ``GPT2LMHeadModel`` state dict (``dict[str, torch.Tensor]``, float32) from plug_jax.

    ``params`` may be scanned or unscanned, boxed or not. The result loads with
    ``GPT2LMHeadModel(to_transformers_config(config)).load_state_dict(sd)``
    (strict); ``lm_head.weight`` is a copy of ``transformer.wte.weight`` when
    the embeddings are tied, as in ``GPT2LMHeadModel.state_dict()``.
    """
    import torch

    api = "to_transformers"
    check_family(family, api)
    to_transformers_config(config)  # validates that GPT-2 can express the config
    p = cio.unbox_params(params)
    d, heads, hd = config.hidden_size, config.num_heads, config.kv_dim

    def t(x) -> "torch.Tensor":
        return torch.from_numpy(np.ascontiguousarray(np.asarray(x, dtype=np.float32)))

    sd: dict[str, torch.Tensor] = {
        "transformer.wte.weight": t(p["token_embed"]["embedding"]),
        "transformer.wpe.weight": t(p["pos_embed"]["embedding"]),
    }
    for i, layer in enumerate(cio.split_layers(p["decoder"], config.num_layers, api)):
        pre, a, m = f"transformer.h.{i}.", layer["attn"], layer["mlp"]
        sd[pre + "ln_1.weight"] = t(layer["pre_attn_norm"]["scale"])
        sd[pre + "ln_1.bias"] = t(layer["pre_attn_norm"]["bias"])
        sd[pre + "attn.c_attn.weight"] = t(np.concatenate(
            [np.asarray(a[n]["kernel"]).reshape(d, heads * hd) for n in ("query", "key", "value")],
            axis=1))
        sd[pre + "attn.c_attn.bias"] = t(np.concatenate(
            [np.asarray(a[n]["bias"]).reshape(heads * hd) for n in ("query", "key", "value")]))
        sd[pre + "attn.c_proj.weight"] = t(np.asarray(a["out"]["kernel"]).reshape(heads * hd, d))
        sd[pre + "attn.c_proj.bias"] = t(a["out"]["bias"])
        sd[pre + "ln_2.weight"] = t(layer["pre_mlp_norm"]["scale"])
        sd[pre + "ln_2.bias"] = t(layer["pre_mlp_norm"]["bias"])
        sd[pre + "mlp.c_fc.weight"] = t(m["wi"]["kernel"])
        sd[pre + "mlp.c_fc.bias"] = t(m["wi"]["bias"])
        sd[pre + "mlp.c_proj.weight"] = t(m["wo"]["kernel"])
        sd[pre + "mlp.c_proj.bias"] = t(m["wo"]["bias"])
    sd["transformer.ln_f.weight"] = t(p["final_norm"]["scale"])
    sd["transformer.ln_f.bias"] = t(p["final_norm"]["bias"])
    if config.tie_word_embeddings:
        sd["lm_head.weight"] = sd["transformer.wte.weight"].clone()
    else:
        sd["lm_head.weight"] = t(np.asarray(p["lm_head"]["kernel"]).T)
    return sd


def save_transformers(config: GPT3Config, params: Mapping, out_dir: str) -> str:
    """Writes a ``GPT2LMHeadModel`` folder (``config.json`` + ``model.safetensors``, what
    ``save_pretrained`` writes) of ``params`` into ``out_dir``: ``plug-convert --family gpt3
    --to hf`` and ``plug-export --to hf``. ``GPT2LMHeadModel.from_pretrained(out_dir)`` gives
    GPT3LM's logits (tests/convert/test_hf_gpt2.py). Returns a short description."""
    from safetensors.torch import save_file

    if getattr(config, "num_experts", 0):
        raise ValueError(f"GPT-2 has no mixture-of-experts layers; a GPT-MoE checkpoint "
                         f"(num_experts={config.num_experts}) cannot be written --to hf")
    sd = to_transformers(config, params)
    to_transformers_config(config).save_pretrained(out_dir)
    if config.tie_word_embeddings:  # save_pretrained drops the tied copy too
        sd = {k: v for k, v in sd.items() if k != "lm_head.weight"}
    save_file({k: v.contiguous() for k, v in sd.items()},
              os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
    return (f"GPT2LMHeadModel config.json + model.safetensors ({len(sd)} tensors, "
            f"{config.num_layers} layers)")

