"""transformers ``CLIPModel`` checkpoints <-> :class:`plug_jax.layers.clip.CLIPModel` params.

Key layout of ``CLIPModel.state_dict()`` (transformers 4.x and 5.x) and where each goes::

    vision_model.embeddings.class_embedding            vision/class_embed/embedding
    vision_model.embeddings.patch_embedding.weight     vision/patch_embed/kernel  (to [p,p,C,D])
    vision_model.embeddings.position_embedding.weight  vision/pos_embed/embedding
    vision_model.pre_layrnorm.{weight,bias}            vision/pre_norm/{scale,bias}   (sic)
    vision_model.encoder.layers.N.*                    vision/stack/(layers|layers_N)/*
    vision_model.post_layernorm.{weight,bias}          vision/post_norm/{scale,bias}
    visual_projection.weight                           vision/projection/kernel   (transposed)
    text_model.embeddings.token_embedding.weight       text/token_embed/embedding
    text_model.embeddings.position_embedding.weight    text/pos_embed/embedding
    text_model.encoder.layers.N.*                      text/stack/(layers|layers_N)/*
    text_model.final_layer_norm.{weight,bias}          text/final_norm/{scale,bias}
    text_projection.weight                             text/projection/kernel     (transposed)
    logit_scale                                        logit_scale

and in every layer ``self_attn.{q,k,v}_proj`` -> ``attn/{query,key,value}`` (kernels reshaped
to ``[D, heads, head_dim]``), ``self_attn.out_proj`` -> ``attn/out`` (``[heads, head_dim, D]``),
``layer_norm1`` -> ``attn_norm``, ``mlp.fc1`` / ``mlp.fc2`` -> ``mlp/wi`` / ``mlp/wo``,
``layer_norm2`` -> ``mlp_norm``. The non-persistent ``*.embeddings.position_ids`` buffers that
older checkpoints carry are ignored.

Arrays come in as torch tensors or numpy and go out as float32 numpy (``as_torch=True`` for
tensors ``load_state_dict`` takes). Weights files are read only through
:mod:`plug_jax.convert.io`; torch and transformers are imported only where needed.
"""
from __future__ import annotations

import math
import os
from typing import Any, Callable, Mapping

import numpy as np

from plug_jax.convert import io as cio
from plug_jax.layers.clip import CLIPConfig, CLIPTextConfig, CLIPVisionConfig

# transformers hidden_act -> plug_jax activation, and back.
HF_ACTIVATIONS = {"quick_gelu": "quick_gelu", "gelu": "gelu", "gelu_new": "gelu_tanh",
                  "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh", "relu": "relu",
                  "silu": "silu", "swish": "silu"}
TO_HF_ACTIVATIONS = {"quick_gelu": "quick_gelu", "gelu": "gelu", "gelu_tanh": "gelu_new",
                     "relu": "relu", "silu": "silu"}
_BUFFERS = ("text_model.embeddings.position_ids", "vision_model.embeddings.position_ids")
# transformers' CLIPTextConfig / CLIPVisionConfig / CLIPConfig defaults (for partial dicts).
_HF_TEXT = dict(vocab_size=49408, hidden_size=512, intermediate_size=2048, num_hidden_layers=12,
                num_attention_heads=8, max_position_embeddings=77, hidden_act="quick_gelu",
                layer_norm_eps=1e-5, attention_dropout=0.0, eos_token_id=49407)
_HF_VISION = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                  num_attention_heads=12, num_channels=3, image_size=224, patch_size=32,
                  hidden_act="quick_gelu", layer_norm_eps=1e-5, attention_dropout=0.0)


# ------------------------------------------------------------------------------ config
def _as_dict(c: Any, what: str) -> dict:
    if c is None:
        return {}
    if isinstance(c, Mapping):
        return dict(c)
    if hasattr(c, "to_dict"):
        return c.to_dict()
    raise TypeError(f"expected a transformers {what} or its dict, got {type(c).__name__}")


def _activation(c: dict, api: str, tower: str) -> str:
    act = c.get("hidden_act", "quick_gelu")
    if act not in HF_ACTIVATIONS:
        raise ValueError(f"{api}: {tower} hidden_act {act!r} is not supported; supported: "
                         f"{', '.join(sorted(HF_ACTIVATIONS))}")
    return HF_ACTIVATIONS[act]


def _int_size(v: Any, api: str, field: str) -> int:
    if isinstance(v, (list, tuple)):
        if len(set(v)) != 1:
            raise ValueError(f"{api}: vision {field} {tuple(v)} is not square; only square images "
                             f"and patches are supported")
        v = v[0]
    return int(v)


def clip_config_from_hf(hf_config: Any, **tower_overrides) -> CLIPConfig:
    """Our :class:`CLIPConfig` of a transformers ``CLIPConfig`` (or its ``to_dict()`` /
    ``config.json`` dict). ``tower_overrides`` (``dtype``, ``scan_layers``, ``remat_policy``,
    ...) apply to both towers.

    ``projection_dim`` and ``logit_scale_init_value`` are read from the top level (the
    sub-configs' own ``projection_dim`` is not used by ``CLIPModel``). Text pooling follows
    transformers: ``eos_token_id == 2`` (configs from before transformers PR #24773) pools at
    the largest id (``pooling='argmax'``), any other id at its first occurrence.
    """
    api = "clip_config_from_hf"
    if isinstance(hf_config, CLIPConfig):
        return hf_config
    c = _as_dict(hf_config, "CLIPConfig")
    model_type = c.get("model_type", "clip")
    if model_type != "clip":
        raise ValueError(f"{api}: model_type {model_type!r} is not 'clip' (a CLIPModel config "
                         f"with text_config and vision_config is needed)")
    t = {**_HF_TEXT, **_as_dict(c.get("text_config"), "CLIPTextConfig")}
    v = {**_HF_VISION, **_as_dict(c.get("vision_config"), "CLIPVisionConfig")}
    proj = int(c.get("projection_dim") or 512)
    eos = t.get("eos_token_id")
    if isinstance(eos, (list, tuple)):
        if len(eos) != 1:
            raise ValueError(f"{api}: text eos_token_id {list(eos)} has several ids; CLIP pools "
                             f"at one end-of-text id")
        eos = eos[0]
    if eos is None:
        raise ValueError(f"{api}: text eos_token_id is None; set it to the end-of-text id")
    text = CLIPTextConfig(
        vocab_size=int(t["vocab_size"]), max_len=int(t["max_position_embeddings"]),
        width=int(t["hidden_size"]), layers=int(t["num_hidden_layers"]),
        heads=int(t["num_attention_heads"]), mlp_dim=int(t["intermediate_size"]),
        projection_dim=proj, layer_norm_eps=float(t["layer_norm_eps"]),
        eos_token_id=int(eos), pooling="argmax" if int(eos) == 2 else "eos",
        activation=_activation(t, api, "text"),
        attention_dropout_rate=float(t.get("attention_dropout") or 0.0), **tower_overrides)
    vision = CLIPVisionConfig(
        image_size=_int_size(v["image_size"], api, "image_size"),
        patch_size=_int_size(v["patch_size"], api, "patch_size"),
        width=int(v["hidden_size"]), layers=int(v["num_hidden_layers"]),
        heads=int(v["num_attention_heads"]), mlp_dim=int(v["intermediate_size"]),
        projection_dim=proj, layer_norm_eps=float(v["layer_norm_eps"]),
        num_channels=int(v["num_channels"]), activation=_activation(v, api, "vision"),
        attention_dropout_rate=float(v.get("attention_dropout") or 0.0), **tower_overrides)
    scale = c.get("logit_scale_init_value")
    return CLIPConfig(vision=vision, text=text,
                      logit_scale_init=float(scale) if scale is not None else math.log(1 / 0.07))


def clip_to_hf_config(config: CLIPConfig):
    """The transformers ``CLIPConfig`` of ``config``."""
    import transformers

    for tower, cfg in (("vision", config.vision), ("text", config.text)):
        if cfg.activation not in TO_HF_ACTIVATIONS:
            raise ValueError(f"clip_to_hf_config: {tower} activation {cfg.activation!r} has no "
                             f"transformers equivalent")
    t, v = config.text, config.vision
    if t.pooling != ("argmax" if t.eos_token_id == 2 else "eos"):
        raise ValueError(f"clip_to_hf_config: pooling {t.pooling!r} with eos_token_id "
                         f"{t.eos_token_id} cannot be expressed in transformers (it pools by "
                         f"argmax exactly when eos_token_id == 2)")
    text = dict(vocab_size=t.vocab_size, hidden_size=t.width, intermediate_size=t.mlp_dim,
                num_hidden_layers=t.layers, num_attention_heads=t.heads,
                max_position_embeddings=t.max_len, hidden_act=TO_HF_ACTIVATIONS[t.activation],
                layer_norm_eps=t.layer_norm_eps, attention_dropout=t.attention_dropout_rate,
                eos_token_id=t.eos_token_id, projection_dim=t.projection_dim,
                # transformers' default bos / pad ids (49406 / 1) when they fit the vocabulary.
                bos_token_id=49406 if t.vocab_size > 49406 else None,
                pad_token_id=1 if t.vocab_size > 1 else None)
    vision = dict(hidden_size=v.width, intermediate_size=v.mlp_dim, num_hidden_layers=v.layers,
                  num_attention_heads=v.heads, num_channels=v.num_channels,
                  image_size=v.image_size, patch_size=v.patch_size,
                  hidden_act=TO_HF_ACTIVATIONS[v.activation], layer_norm_eps=v.layer_norm_eps,
                  attention_dropout=v.attention_dropout_rate, projection_dim=v.projection_dim)
    return transformers.CLIPConfig(text_config=text, vision_config=vision,
                                   projection_dim=config.projection_dim,
                                   logit_scale_init_value=config.logit_scale_init)


# --------------------------------------------------------------------- key layouts
Entry = tuple[str, str, str]  # (hf key, param path, transform)


def _transforms(width: int, heads: int) -> dict[str, tuple[Callable, Callable]]:
    hd = width // heads
    return {
        "copy": (lambda x: x, lambda x: x),
        "linear": (lambda w: w.T, lambda k: k.T),
        "qkv_w": (lambda w: w.T.reshape(width, heads, hd), lambda k: k.reshape(width, -1).T),
        "qkv_b": (lambda b: b.reshape(heads, hd), lambda b: b.reshape(-1)),
        "out_w": (lambda w: w.T.reshape(heads, hd, width), lambda k: k.reshape(-1, width).T),
        # Conv2d [D, C, p, p] <-> HWIO [p, p, C, D]
        "conv": (lambda w: w.transpose(2, 3, 1, 0), lambda k: k.transpose(3, 2, 0, 1)),
    }


def _dense(hf: str, path: str, w: str = "linear", b: str = "copy") -> list[Entry]:
    return [(f"{hf}.weight", f"{path}/kernel", w), (f"{hf}.bias", f"{path}/bias", b)]


def _ln(hf: str, path: str) -> list[Entry]:
    return [(f"{hf}.weight", f"{path}/scale", "copy"), (f"{hf}.bias", f"{path}/bias", "copy")]


_LAYER: list[Entry] = (
    _dense("self_attn.q_proj", "attn/query", "qkv_w", "qkv_b")
    + _dense("self_attn.k_proj", "attn/key", "qkv_w", "qkv_b")
    + _dense("self_attn.v_proj", "attn/value", "qkv_w", "qkv_b")
    + _dense("self_attn.out_proj", "attn/out", "out_w")
    + _ln("layer_norm1", "attn_norm")
    + _dense("mlp.fc1", "mlp/wi") + _dense("mlp.fc2", "mlp/wo")
    + _ln("layer_norm2", "mlp_norm"))

_VISION: list[Entry] = (
    [("vision_model.embeddings.class_embedding", "class_embed/embedding", "copy"),
     ("vision_model.embeddings.patch_embedding.weight", "patch_embed/kernel", "conv"),
     ("vision_model.embeddings.position_embedding.weight", "pos_embed/embedding", "copy")]
    + _ln("vision_model.pre_layrnorm", "pre_norm") + _ln("vision_model.post_layernorm", "post_norm")
    + [("visual_projection.weight", "projection/kernel", "linear")])

_TEXT: list[Entry] = (
    [("text_model.embeddings.token_embedding.weight", "token_embed/embedding", "copy"),
     ("text_model.embeddings.position_embedding.weight", "pos_embed/embedding", "copy")]
    + _ln("text_model.final_layer_norm", "final_norm")
    + [("text_projection.weight", "projection/kernel", "linear")])

_TOWERS = (("vision", "vision_model", _VISION), ("text", "text_model", _TEXT))


def _check_shapes(config: CLIPConfig, params: Mapping, api: str) -> None:
    """One line if ``params`` differ in names or shapes from ``CLIPModel(config)``."""
    from flax import linen as nn

    from plug_jax.layers.clip import abstract_params, check_released_stem
    check_released_stem(config.vision, f"CLIP {api}")

    want = {k: tuple(v.shape)
            for k, v in cio.flatten_tree(nn.unbox(abstract_params(config))).items()}
    got = {k: tuple(np.shape(v)) for k, v in cio.flatten_tree(params).items()}
    for k in sorted(set(want) | set(got)):
        if k not in got:
            raise ValueError(f"{api}: converted params lack {k} that CLIPModel(config) expects")
        if k not in want:
            raise ValueError(f"{api}: converted params have {k} that CLIPModel(config) does not "
                             f"use")
        if want[k] != got[k]:
            raise ValueError(f"{api}: converted {k} has shape {got[k]}, CLIPModel(config) expects "
                             f"{want[k]}; does the config match the checkpoint?")


def _contiguous(x) -> np.ndarray:
    # np.ascontiguousarray would turn the 0-d logit_scale into shape (1,).
    return np.require(np.asarray(x, np.float32), requirements="C")


# ------------------------------------------------------------------------------ import
def clip_from_hf(state_dict: Mapping[str, Any], hf_config: Any, *, strict: bool = True,
                 **tower_overrides) -> dict:
    """Params of ``CLIPModel(config)`` (plain nested dicts of float32 numpy) from a
    transformers ``CLIPModel`` state dict (torch tensors or numpy arrays).

    ``hf_config``: the transformers ``CLIPConfig`` (or its dict), or our :class:`CLIPConfig`;
    with a transformers config, ``tower_overrides`` go to :func:`clip_config_from_hf` (e.g.
    ``scan_layers=False`` for the unscanned ``layers_N`` layout). ``strict``: raise on tensors
    that are not used.
    """
    api = "clip_from_hf"
    if isinstance(hf_config, CLIPConfig):
        config = hf_config.replace(vision=hf_config.vision.replace(**tower_overrides),
                                   text=hf_config.text.replace(**tower_overrides))
    else:
        config = clip_config_from_hf(hf_config, **tower_overrides)
    used: set[str] = set()
    cfg_now = [""]  # the tower being read, for error messages

    def take(key: str, kind: str, tf: dict) -> np.ndarray:
        if key not in state_dict:
            raise ValueError(f"{api}: missing tensor {key!r} (state dict keys look like "
                             f"{sorted(state_dict)[:3]}); is this a transformers CLIPModel "
                             f"checkpoint of this config?")
        used.add(key)
        raw = state_dict[key]
        # cio.to_numpy returns at least 1-d; keep the 0-d logit_scale a scalar.
        x = cio.to_numpy(raw).reshape(tuple(np.shape(raw)))
        try:
            return _contiguous(tf[kind][0](x))
        except ValueError:
            raise ValueError(f"{api}: tensor {key!r} has shape {x.shape}, which does not fit the "
                             f"config ({cfg_now[0]}); does the config match the checkpoint?"
                             ) from None

    params: dict[str, Any] = {}
    for tower, hf_prefix, entries in _TOWERS:
        cfg = getattr(config, tower)
        cfg_now[0] = f"{tower} width={cfg.width}, heads={cfg.heads}"
        tf = _transforms(cfg.width, cfg.heads)
        flat = {path: take(key, kind, tf) for key, path, kind in entries}
        layers = [cio.unflatten_tree({path: take(f"{hf_prefix}.encoder.layers.{i}.{key}", kind, tf)
                                      for key, path, kind in _LAYER})
                  for i in range(cfg.layers)]
        tree = cio.unflatten_tree(flat)
        tree["stack"] = cio.assemble_decoder(layers, cfg.scan_layers)
        params[tower] = tree
    params["logit_scale"] = take("logit_scale", "copy", _transforms(1, 1))
    leftover = sorted(k for k in state_dict if k not in used and k not in _BUFFERS)
    if strict and leftover:
        more = f" (and {len(leftover) - 1} more)" if len(leftover) > 1 else ""
        raise ValueError(f"{api}: unexpected tensor {leftover[0]!r}{more} is not part of a "
                         f"CLIPModel of this config (vision layers={config.vision.layers}, text "
                         f"layers={config.text.layers}); pass strict=False to ignore it")
    _check_shapes(config, params, api)
    return params


def load_clip_checkpoint(path: str | os.PathLike, *, strict: bool = True,
                         **tower_overrides) -> tuple[CLIPConfig, dict]:
    """``(config, params)`` from a ``save_pretrained`` directory of a transformers
    ``CLIPModel`` (``config.json`` + safetensors / ``pytorch_model.bin`` / shards)."""
    d = os.fspath(path)
    if not os.path.isdir(d):
        raise FileNotFoundError(f"load_clip_checkpoint: {d} is not a save_pretrained directory")
    config = clip_config_from_hf(cio.read_json(os.path.join(d, "config.json")), **tower_overrides)
    sd = cio.load_weights_files(cio.find_hf_weights(d))
    return config, clip_from_hf(sd, config, strict=strict)


# ------------------------------------------------------------------------------ export
def clip_to_hf(params: Mapping, config: CLIPConfig, *, as_torch: bool = False) -> dict:
    """A transformers ``CLIPModel`` state dict (float32 numpy, or torch tensors with
    ``as_torch``) from ``CLIPModel(config)`` params (scanned or not, boxed or not, with or
    without an outer ``{'params': ...}``)."""
    api = "clip_to_hf"
    if not isinstance(config, CLIPConfig):
        raise TypeError(f"{api}: config must be a plug_jax CLIPConfig (clip_config_from_hf "
                        f"makes one), got {type(config).__name__}")
    p = cio.unbox_params(params)
    missing = [k for k in ("vision", "text", "logit_scale") if k not in p]
    if missing:
        raise ValueError(f"{api}: params lack {missing[0]!r}; expected CLIPModel params with "
                         f"vision, text and logit_scale")
    # Names and shapes against CLIPModel(config) in the layout the params have.
    layout = {t: "layers" in p[t].get("stack", {}) for t in ("vision", "text")}
    _check_shapes(config.replace(vision=config.vision.replace(scan_layers=layout["vision"]),
                                 text=config.text.replace(scan_layers=layout["text"])),
                  p, api)
    out: dict[str, np.ndarray] = {}
    for tower, hf_prefix, entries in _TOWERS:
        cfg = getattr(config, tower)
        tf = _transforms(cfg.width, cfg.heads)
        flat = cio.flatten_tree({k: v for k, v in p[tower].items() if k != "stack"})
        for key, path, kind in entries:
            if path not in flat:
                raise ValueError(f"{api}: params lack {tower}/{path}")
            out[key] = tf[kind][1](np.asarray(flat[path], np.float32))
        if "stack" not in p[tower]:
            raise ValueError(f"{api}: params lack {tower}/stack")
        for i, layer in enumerate(cio.split_layers(p[tower]["stack"], cfg.layers, api)):
            lf = cio.flatten_tree(layer)
            for key, path, kind in _LAYER:
                if path not in lf:
                    raise ValueError(f"{api}: params lack {tower}/stack layer {i} {path}")
                out[f"{hf_prefix}.encoder.layers.{i}.{key}"] = tf[kind][1](
                    np.asarray(lf[path], np.float32))
    out["logit_scale"] = np.asarray(p["logit_scale"], np.float32)
    out = {k: _contiguous(v) for k, v in out.items()}
    if not as_torch:
        return out
    import torch
    return {k: torch.from_numpy(v) for k, v in out.items()}
