"""T5.1.1 / mT5 checkpoints (transformers, ChatPLUG's XDPX) <-> ``plug_jax.layers.t5``.

transformers layout (``T5ForConditionalGeneration`` / ``MT5ForConditionalGeneration``), per
stack ``S`` in ``encoder`` / ``decoder`` and block ``N``:

* ``shared.weight``; the tied copies ``{encoder,decoder}.embed_tokens.weight`` (optional;
  must equal ``shared.weight``); ``lm_head.weight`` (the untied head; with
  ``tie_word_embeddings`` optional and equal to ``shared.weight``).
* ``S.block.0.layer.0.SelfAttention.relative_attention_bias.weight`` -> ``S/relpos_bias``.
* ``S.block.N.layer.0.SelfAttention.{q,k,v,o}.weight``, ``S.block.N.layer.0.layer_norm.weight``;
  decoder ``layer.1.EncDecAttention.*`` / ``layer.1.layer_norm``; the FFN
  ``layer.{1|2}.DenseReluDense.{wi_0,wi_1,wo}.weight`` (``wi`` when not gated) and its
  ``layer_norm``; ``S.final_layer_norm.weight``.
* ``decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight``, which old
  transformers versions wrote and never used, is ignored.

``nn.Linear`` weights ``[out, in]`` become ``[in, out]`` kernels (attention ones reshaped to
``[embed, heads, kv]`` / ``[heads, kv, embed]``): a permutation, so both directions are
bit-exact on float32.

ChatPLUG's XDPX checkpoints (``FIDT5Chat``) are the same tensors under ``backbone.``, with
the FiD encoder wrapper's ``backbone.encoder.encoder.`` and the checkpoint wrapper's
``block.N.module.layer`` (and an optional leading DDP ``module.``):
:func:`from_xdpx_state_dict` / :func:`to_xdpx_state_dict`.

Files are read through :mod:`plug_jax.convert.io` only (safetensors, or
``torch.load(weights_only=True)``). torch and transformers are imported lazily. A bad input
raises one :class:`~plug_jax.convert.io.WeightsLoadError` line naming the tensor and the fix.

Note on transformers 5.x: ``T5Config`` / ``MT5Config`` always set ``tie_word_embeddings=True``
and tie ``lm_head`` to ``shared`` in a freshly built model (``from_pretrained`` keeps an
untied ``lm_head`` that differs); whether the head output is rescaled is
``T5Config.scale_decoder_outputs`` (MT5 never rescales). :func:`config_from_hf` reads that,
not the forced flag.
"""
from __future__ import annotations

import os
import re
from typing import Any, Mapping

import numpy as np

from plug_jax.convert import io as cio
from plug_jax.convert.io import WeightsLoadError
from plug_jax.layers.t5 import T5Config

MODEL_TYPES = ("t5", "mt5")
# transformers' dense_act_fn -> T5Config.activation
HF_ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
                  "gelu_fast": "gelu_tanh", "gelu": "gelu", "relu": "relu", "silu": "silu",
                  "swish": "silu"}
TO_HF_ACTIVATIONS = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu", "silu": "silu"}
TIED = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")
IGNORED = ("decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight",)
_FIX_CONFIG = "build the config from the checkpoint's config.json (config_from_hf)"


# ------------------------------------------------------------------------------ config
def config_from_hf(hf_config: Any, *, scan_layers: bool = True, **overrides) -> T5Config:
    """``T5Config`` of a transformers ``T5Config`` / ``MT5Config`` or a ``config.json`` dict.
    ``tie_word_embeddings`` (tied head on ``x * d_model**-0.5``) is ``scale_decoder_outputs``
    when present (transformers 5.x objects), else the dict's ``tie_word_embeddings``
    (default True, as T5); mT5 never ties. ``overrides`` replace any field."""
    api = "config_from_hf"
    c = hf_config.to_dict() if hasattr(hf_config, "to_dict") else dict(hf_config)
    model_type = c.get("model_type") or "t5"
    if model_type not in MODEL_TYPES:
        raise WeightsLoadError(f"{api}: model_type {model_type!r} is not a T5 / mT5 "
                               f"encoder-decoder (supported: {', '.join(MODEL_TYPES)})")
    proj = c.get("feed_forward_proj", "relu")
    parts = proj.split("-")
    act = "gelu_new" if proj == "gated-gelu" else parts[-1]
    if len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated") or act not in HF_ACTIVATIONS:
        raise WeightsLoadError(f"{api}: feed_forward_proj {proj!r} is not supported; use "
                               f"'gated-gelu' (T5.1.1 / mT5) or one of "
                               f"{sorted(HF_ACTIVATIONS)} with an optional 'gated-'")
    if model_type == "mt5":
        tie = False
    elif "scale_decoder_outputs" in c:
        tie = bool(c["scale_decoder_outputs"])
    else:
        tie = bool(c.get("tie_word_embeddings", True))
    missing = [k for k in ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads")
               if c.get(k) is None]
    if missing:
        raise WeightsLoadError(f"{api}: the config has no {missing[0]!r}; fix: pass the "
                               f"checkpoint's config.json")
    kw = dict(
        vocab_size=int(c["vocab_size"]), d_model=int(c["d_model"]), d_kv=int(c["d_kv"]),
        d_ff=int(c["d_ff"]), num_layers=int(c["num_layers"]),
        num_decoder_layers=int(c.get("num_decoder_layers") or c["num_layers"]),
        num_heads=int(c["num_heads"]),
        relative_attention_num_buckets=int(c.get("relative_attention_num_buckets", 32)),
        relative_attention_max_distance=int(c.get("relative_attention_max_distance", 128)),
        dropout_rate=float(c.get("dropout_rate", 0.1)),
        layer_norm_epsilon=float(c.get("layer_norm_epsilon", 1e-6)),
        activation=HF_ACTIVATIONS[act], gated_mlp=parts[0] == "gated",
        tie_word_embeddings=tie, initializer_factor=float(c.get("initializer_factor", 1.0)),
        scan_layers=scan_layers)
    kw.update(overrides)
    return T5Config(**kw)


def to_hf_config(config: T5Config, model_type: str | None = None):
    """The transformers config: ``MT5Config`` for an untied head, ``T5Config`` for a tied
    one (default), or the ``model_type`` asked for (mT5 cannot hold a tied, rescaled head)."""
    import transformers

    model_type = model_type or ("t5" if config.tie_word_embeddings else "mt5")
    if model_type not in MODEL_TYPES:
        raise WeightsLoadError(f"to_hf_config: model_type must be 't5' or 'mt5', got "
                               f"{model_type!r}")
    if model_type == "mt5" and config.tie_word_embeddings:
        raise WeightsLoadError("to_hf_config: mT5 has no tied, rescaled LM head; fix: "
                               "model_type='t5'")
    if config.activation not in TO_HF_ACTIVATIONS:
        raise WeightsLoadError(f"to_hf_config: activation {config.activation!r} has no "
                               f"transformers equivalent")
    act = TO_HF_ACTIVATIONS[config.activation]
    if config.gated_mlp and act == "gelu":
        raise WeightsLoadError("to_hf_config: a gated exact-GELU FFN has no transformers "
                               "spelling ('gated-gelu' means the tanh GELU); fix: "
                               "activation='gelu_tanh'")
    proj = act if not config.gated_mlp else (
        "gated-gelu" if act == "gelu_new" else f"gated-{act}")
    cls = transformers.MT5Config if model_type == "mt5" else transformers.T5Config
    return cls(vocab_size=config.vocab_size, d_model=config.d_model, d_kv=config.d_kv,
               d_ff=config.d_ff, num_layers=config.num_layers,
               num_decoder_layers=config.decoder_layers, num_heads=config.num_heads,
               relative_attention_num_buckets=config.relative_attention_num_buckets,
               relative_attention_max_distance=config.relative_attention_max_distance,
               dropout_rate=config.dropout_rate, layer_norm_epsilon=config.layer_norm_epsilon,
               feed_forward_proj=proj, tie_word_embeddings=config.tie_word_embeddings,
               initializer_factor=config.initializer_factor)


# --------------------------------------------------------------------- key layout
# (hf key, param path, transform, hf shape); transforms map numpy arrays both ways.
def _transforms(cfg: T5Config):
    d, h, k = cfg.d_model, cfg.num_heads, cfg.d_kv

    def t(x):
        return np.ascontiguousarray(x.T)
    return {
        "copy": (lambda x: x, lambda x: x),
        "linear": (t, t),
        "qkv": (lambda w: t(w).reshape(d, h, k), lambda p: t(p.reshape(d, h * k))),
        "out": (lambda w: t(w).reshape(h, k, d), lambda p: t(p.reshape(h * k, d))),
    }


def _attention(hf: str, path: str, cfg: T5Config) -> list:
    inner = (cfg.num_heads * cfg.d_kv, cfg.d_model)
    e = [(f"{hf}.{a}.weight", f"{path}/{b}/kernel", "qkv", inner)
         for a, b in (("q", "query"), ("k", "key"), ("v", "value"))]
    return e + [(f"{hf}.o.weight", f"{path}/out/kernel", "out", inner[::-1])]


def _layer_entries(cfg: T5Config, decoder: bool) -> list:
    """Entries of one block, keys relative to ``S.block.N.``, paths to the layer."""
    d = cfg.d_model
    e = _attention("layer.0.SelfAttention", "self_attn", cfg)
    e.append(("layer.0.layer_norm.weight", "self_attn_norm/scale", "copy", (d,)))
    if decoder:
        e += _attention("layer.1.EncDecAttention", "cross_attn", cfg)
        e.append(("layer.1.layer_norm.weight", "cross_attn_norm/scale", "copy", (d,)))
    ff = f"layer.{2 if decoder else 1}"
    wis = ("wi_0", "wi_1") if cfg.gated_mlp else ("wi",)
    e += [(f"{ff}.DenseReluDense.{w}.weight", f"mlp/{w}/kernel", "linear", (cfg.d_ff, d))
          for w in wis]
    e.append((f"{ff}.DenseReluDense.wo.weight", "mlp/wo/kernel", "linear", (d, cfg.d_ff)))
    e.append((f"{ff}.layer_norm.weight", "mlp_norm/scale", "copy", (d,)))
    return e


def _top_entries(cfg: T5Config) -> list:
    e = [("shared.weight", "shared/embedding", "copy", (cfg.vocab_size, cfg.d_model))]
    for s in ("encoder", "decoder"):
        e.append((f"{s}.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
                  f"{s}/relpos_bias", "copy",
                  (cfg.relative_attention_num_buckets, cfg.num_heads)))
        e.append((f"{s}.final_layer_norm.weight", f"{s}/final_norm/scale", "copy",
                  (cfg.d_model,)))
    if not cfg.tie_word_embeddings:
        e.append(("lm_head.weight", "lm_head/kernel", "linear", (cfg.vocab_size, cfg.d_model)))
    return e


def _num_layers(cfg: T5Config, stack: str) -> int:
    return cfg.decoder_layers if stack == "decoder" else cfg.num_layers


# ------------------------------------------------------------------------------ import
def from_hf_state_dict(state_dict: Mapping, config: T5Config, *, strict: bool = True,
                       _api: str = "from_hf_state_dict", _names=None) -> dict:
    """Params of ``T5EncoderDecoder(config)`` from a transformers ``T5ForConditionalGeneration``
    / ``MT5ForConditionalGeneration`` state dict (torch tensors or numpy arrays, any float
    dtype). Plain nested dicts of float32 numpy arrays, scanned or not as
    ``config.scan_layers``. ``strict``: raise on tensors the model does not use."""
    api = _api
    names = _names or (lambda k: k)  # how a key is spelled in the caller's layout
    tf = _transforms(config)
    sd = dict(state_dict)
    used: set[str] = set()

    def take(key: str, kind: str, shape: tuple) -> np.ndarray:
        if key not in sd:
            raise WeightsLoadError(
                f"{api}: missing tensor {names(key)!r}; fix: pass a complete checkpoint of "
                f"this config (num_layers={config.num_layers}, num_decoder_layers="
                f"{config.decoder_layers}, gated_mlp={config.gated_mlp}) or {_FIX_CONFIG}")
        got = tuple(np.shape(sd[key]))
        if got != tuple(shape):
            raise WeightsLoadError(f"{api}: tensor {names(key)!r} has shape {got}, the config "
                                   f"expects {tuple(shape)}; fix: {_FIX_CONFIG}")
        used.add(key)
        return np.ascontiguousarray(tf[kind][0](cio.to_numpy(sd[key])), dtype=np.float32)

    flat = {path: take(key, kind, shape) for key, path, kind, shape in _top_entries(config)}
    shared = flat["shared/embedding"]
    tied = list(TIED) + (["lm_head.weight"] if config.tie_word_embeddings else [])
    for key in tied:
        if key in sd:
            used.add(key)
            if not np.array_equal(cio.to_numpy(sd[key]), shared):
                fix = ("tie_word_embeddings=False" if key == "lm_head.weight"
                       else "a model whose embeddings are tied")
                raise WeightsLoadError(f"{api}: tensor {names(key)!r} differs from "
                                       f"{names('shared.weight')!r}; fix: {fix}")
    params = cio.unflatten_tree(flat)
    for stack in ("encoder", "decoder"):
        layers = []
        for i in range(_num_layers(config, stack)):
            layer = {path: take(f"{stack}.block.{i}.{key}", kind, shape)
                     for key, path, kind, shape in _layer_entries(config, stack == "decoder")}
            layers.append(cio.unflatten_tree(layer))
        params[stack]["stack"] = cio.assemble_decoder(layers, config.scan_layers)
    leftover = sorted(k for k in sd if k not in used and k not in IGNORED)
    if strict and leftover:
        more = f" (and {len(leftover) - 1} more)" if len(leftover) > 1 else ""
        raise WeightsLoadError(
            f"{api}: unexpected tensor {names(leftover[0])!r}{more} is not part of a T5 "
            f"encoder-decoder of this config (num_layers={config.num_layers}, "
            f"num_decoder_layers={config.decoder_layers}, tie_word_embeddings="
            f"{config.tie_word_embeddings}); fix: {_FIX_CONFIG}, or pass strict=False to "
            f"ignore it")
    return params


def _xdpx_to_hf_key(key: str) -> str:
    if key.startswith("module."):
        key = key[len("module."):]
    if key.startswith("backbone.encoder.encoder."):
        key = "encoder." + key[len("backbone.encoder.encoder."):]
        return re.sub(r"^encoder\.block\.(\d+)\.module\.", r"encoder.block.\1.", key)
    return key[len("backbone."):] if key.startswith("backbone.") else key


def _hf_to_xdpx_key(key: str) -> str:
    if key.startswith("encoder."):
        key = re.sub(r"^encoder\.block\.(\d+)\.", r"encoder.block.\1.module.", key)
        return "backbone.encoder." + key
    return "backbone." + key


def from_xdpx_state_dict(state_dict: Mapping, config: T5Config, *,
                         strict: bool = True) -> dict:
    """Params from a ChatPLUG XDPX (``FIDT5Chat``) state dict: a leading ``module.`` is
    stripped, ``backbone.encoder.encoder.`` (with ``block.N.module.layer``) is the encoder,
    ``backbone.`` the rest; then as :func:`from_hf_state_dict`. Errors name the XDPX keys."""
    api = "from_xdpx_state_dict"
    sd, original = {}, {}
    for key, value in state_dict.items():
        hf = _xdpx_to_hf_key(key)
        if hf in sd:
            raise WeightsLoadError(f"{api}: tensors {original[hf]!r} and {key!r} are the same "
                                   f"T5 tensor {hf!r}; fix: keep one of them")
        sd[hf], original[hf] = value, key
    return from_hf_state_dict(sd, config, strict=strict, _api=api,
                              _names=lambda k: original.get(k, _hf_to_xdpx_key(k)))


def looks_like_xdpx(keys) -> bool:
    """Whether state-dict keys are in the XDPX layout (``backbone.`` / ``module.backbone.``)."""
    return any(k.startswith(("backbone.", "module.backbone.")) for k in keys)


def load_t5_checkpoint(path: str | os.PathLike, config: Any = None, *,
                       scan_layers: bool = True, strict: bool = True,
                       **overrides) -> tuple[T5Config, dict]:
    """``(config, params)`` from a ``save_pretrained`` directory or one weights file
    (``.safetensors`` / ``.bin`` / ``.pt``, transformers or XDPX layout, found from the keys)
    with ``config.json`` beside it, or ``config=`` (an HF config, a dict or a JSON path)."""
    api = "load_t5_checkpoint"
    config, sd = cio.read_checkpoint(
        path, config, api=api, missing_error=WeightsLoadError, config_error=WeightsLoadError,
        fix="fix: pass config= (a T5Config / MT5Config, a dict or a JSON path)")
    cfg = config_from_hf(config, scan_layers=scan_layers, **overrides)
    fn = from_xdpx_state_dict if looks_like_xdpx(sd) else from_hf_state_dict
    return cfg, fn(sd, cfg, strict=strict)


# ------------------------------------------------------------------------------ export
def to_hf_state_dict(config: T5Config, params: Mapping, *, as_numpy: bool = False) -> dict:
    """The transformers state dict (the keys ``model.state_dict()`` lists, tied copies
    included: ``{encoder,decoder}.embed_tokens.weight`` and, for a tied head,
    ``lm_head.weight``) of ``T5EncoderDecoder`` params (scanned or not, boxed or not);
    float32 torch tensors, or numpy with ``as_numpy``."""
    api = "to_hf_state_dict"
    p = cio.unbox_params(params)
    flat = cio.flatten_tree(p)
    tf = _transforms(config)
    out = {}
    for key, path, kind, _ in _top_entries(config):
        if path not in flat:
            raise WeightsLoadError(f"{api}: params lack {path}; fix: export params of "
                                   f"T5EncoderDecoder(config) for this config")
        out[key] = tf[kind][1](np.asarray(flat[path], np.float32))
    for key in TIED + (("lm_head.weight",) if config.tie_word_embeddings else ()):
        out[key] = out["shared.weight"].copy()
    for stack in ("encoder", "decoder"):
        layers = cio.split_layers(p[stack]["stack"], _num_layers(config, stack), api)
        for i, layer in enumerate(layers):
            lf = cio.flatten_tree(layer)
            for key, path, kind, _ in _layer_entries(config, stack == "decoder"):
                out[f"{stack}.block.{i}.{key}"] = tf[kind][1](np.asarray(lf[path], np.float32))
    out = {k: np.ascontiguousarray(v, np.float32) for k, v in out.items()}
    if as_numpy:
        return out
    import torch
    return {k: torch.from_numpy(v) for k, v in out.items()}


def to_xdpx_state_dict(config: T5Config, params: Mapping, *, as_numpy: bool = False) -> dict:
    """The ChatPLUG XDPX (``FIDT5Chat``) state dict of the params: :func:`to_hf_state_dict`
    under ``backbone.``, the encoder as ``backbone.encoder.encoder.block.N.module.layer...``."""
    return {_hf_to_xdpx_key(k): v
            for k, v in to_hf_state_dict(config, params, as_numpy=as_numpy).items()}


from_xdpx = from_xdpx_state_dict
to_xdpx = to_xdpx_state_dict
