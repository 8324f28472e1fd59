"""OpenAI CLIP checkpoints <-> :class:`plug_jax.layers.clip.CLIPModel` params.

The OpenAI layout (``model.state_dict()`` of OpenAI's ``CLIP`` class; also what open_clip and
CLIP4Clip / X-CLIP's ``module_clip.CLIP`` write, and the start of every X-CLIP run)::

    visual.conv1.weight [D, C, p, p]          visual.class_embedding [D]
    visual.positional_embedding [1 + N, D]    visual.ln_pre.*   visual.ln_post.*
    visual.proj [D, P]   (x @ proj)           visual.transformer.resblocks.N.*
    token_embedding.weight    positional_embedding [context, D]    ln_final.*
    text_projection [D, P]    transformer.resblocks.N.*            logit_scale

and per block ``attn.in_proj_{weight,bias}`` (q, k and v stacked on the output axis),
``attn.out_proj.*``, ``ln_1``, ``mlp.c_fc``, ``mlp.c_proj``, ``ln_2``. The layout stores no
head count: as the released readers do, heads = width // 64, MLP width = 4 x width, image
size = patch x grid. Keys a TorchScript archive's state dict adds (``input_resolution``,
``context_length``, ``vocab_size``) and ``attn_mask`` buffers are ignored. The text tower
pools at the largest id (OpenAI's end-of-text token is the last of the vocabulary).

Both directions go through the transformers layout (:mod:`plug_jax.families.clip.convert_hf`):
the OpenAI keys are renamed and ``in_proj`` split into ``q/k/v_proj``, so one mapping to our
params exists and the two CLIP layouts cannot drift apart. Files are read by
:func:`read_state_dict` (the safe readers of :mod:`plug_jax.convert.io`; a TorchScript
archive, as OpenAI distributes, is refused: re-save its ``state_dict()``).
"""
from __future__ import annotations

import os
import re
from typing import Any, Mapping

import numpy as np

from plug_jax.convert import io as cio
from plug_jax.families.clip import convert_hf as hf_clip
from plug_jax.layers.clip import (CLIPConfig, CLIPTextConfig, CLIPVisionConfig,
                                  check_released_stem)

IGNORED = ("input_resolution", "context_length", "vocab_size")
# OpenAI block key -> transformers layer key (in_proj is split separately).
_BLOCK = {"attn.out_proj.weight": "self_attn.out_proj.weight",
          "attn.out_proj.bias": "self_attn.out_proj.bias",
          "ln_1.weight": "layer_norm1.weight", "ln_1.bias": "layer_norm1.bias",
          "mlp.c_fc.weight": "mlp.fc1.weight", "mlp.c_fc.bias": "mlp.fc1.bias",
          "mlp.c_proj.weight": "mlp.fc2.weight", "mlp.c_proj.bias": "mlp.fc2.bias",
          "ln_2.weight": "layer_norm2.weight", "ln_2.bias": "layer_norm2.bias"}
_TOP = {"visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
        "visual.class_embedding": "vision_model.embeddings.class_embedding",
        "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
        "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",
        "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
        "visual.ln_post.weight": "vision_model.post_layernorm.weight",
        "visual.ln_post.bias": "vision_model.post_layernorm.bias",
        "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
        "positional_embedding": "text_model.embeddings.position_embedding.weight",
        "ln_final.weight": "text_model.final_layer_norm.weight",
        "ln_final.bias": "text_model.final_layer_norm.bias",
        "logit_scale": "logit_scale"}
_TRANSPOSED = {"visual.proj": "visual_projection.weight",
               "text_projection": "text_projection.weight"}
_TOWER_PREFIX = {"visual.transformer.resblocks.": "vision_model.encoder.layers.",
                 "transformer.resblocks.": "text_model.encoder.layers."}
_BLOCK_RE = re.compile(r"^(visual\.transformer\.resblocks\.|transformer\.resblocks\.)(\d+)\.(.+)$")


def _np(x) -> np.ndarray:
    return np.asarray(cio.to_numpy(x)).reshape(tuple(np.shape(x)))


def _ignored(key: str) -> bool:
    return key in IGNORED or key.endswith("attn_mask")


def _count_blocks(keys, prefix: str) -> int:
    found = {int(m.group(2)) for k in keys if (m := _BLOCK_RE.match(k)) and m.group(1) == prefix}
    return (max(found) + 1) if found else 0


# ------------------------------------------------------------------------ config
def openai_clip_config(state_dict: Mapping[str, Any], **tower_overrides) -> CLIPConfig:
    """The :class:`CLIPConfig` an OpenAI-layout state dict implies (the released rules)."""
    api = "openai_clip_config"
    need = ("visual.conv1.weight", "visual.positional_embedding", "text_projection",
            "positional_embedding", "token_embedding.weight", "ln_final.weight")
    missing = [k for k in need if k not in state_dict]
    if missing:
        raise ValueError(f"{api}: {missing[0]!r} is missing (keys look like "
                         f"{sorted(state_dict)[:3]}); is this an OpenAI CLIP state dict "
                         f"(visual.conv1.weight, transformer.resblocks.N.*)?")
    shape = lambda k: tuple(np.shape(state_dict[k]))  # noqa: E731
    vw, _, _, patch = shape("visual.conv1.weight")
    grid = int(round((shape("visual.positional_embedding")[0] - 1) ** 0.5))
    tw = shape("ln_final.weight")[0]
    proj = shape("text_projection")[1]
    keys = list(state_dict)
    vision = CLIPVisionConfig(
        image_size=patch * grid, patch_size=patch, width=vw,
        layers=_count_blocks(keys, "visual.transformer.resblocks."), heads=max(vw // 64, 1),
        mlp_dim=4 * vw, projection_dim=proj, num_channels=shape("visual.conv1.weight")[1],
        **tower_overrides)
    vocab = shape("token_embedding.weight")[0]
    text = CLIPTextConfig(
        vocab_size=vocab, max_len=shape("positional_embedding")[0], width=tw,
        layers=_count_blocks(keys, "transformer.resblocks."), heads=max(tw // 64, 1),
        mlp_dim=4 * tw, projection_dim=proj, eos_token_id=vocab - 1, pooling="argmax",
        **tower_overrides)
    return CLIPConfig(vision=vision, text=text)


# ------------------------------------------------------------------ key layouts
def block_to_hf(block: Mapping[str, Any], width: int, api: str, where: str) -> dict:
    """One OpenAI residual block (keys after ``resblocks.N.``) -> transformers layer keys."""
    out = {}
    for key, value in block.items():
        if key == "attn.in_proj_weight" or key == "attn.in_proj_bias":
            x = _np(value)
            if x.shape[0] != 3 * width:
                raise ValueError(f"{api}: {where}{key} has shape {x.shape}, expected "
                                 f"{3 * width} rows (q, k, v of width {width})")
            kind = "weight" if key.endswith("weight") else "bias"
            for name, part in zip("qkv", np.split(x, 3, axis=0)):
                out[f"self_attn.{name}_proj.{kind}"] = part
        elif key in _BLOCK:
            out[_BLOCK[key]] = _np(value)
        elif not _ignored(key):
            raise ValueError(f"{api}: unexpected tensor {where}{key} in an OpenAI CLIP block")
    return out


def block_from_hf(layer: Mapping[str, Any]) -> dict:
    """transformers layer keys -> one OpenAI residual block (keys after ``resblocks.N.``)."""
    out = {old: np.asarray(layer[new]) for old, new in _BLOCK.items()}
    for kind in ("weight", "bias"):
        out[f"attn.in_proj_{kind}"] = np.concatenate(
            [np.asarray(layer[f"self_attn.{n}_proj.{kind}"]) for n in "qkv"], axis=0)
    return out


def openai_to_hf(state_dict: Mapping[str, Any], config: CLIPConfig, *,
                 strict: bool = True) -> dict:
    """An OpenAI-layout CLIP state dict renamed to transformers ``CLIPModel`` keys."""
    api = "openai_to_hf"
    out: dict[str, np.ndarray] = {}
    blocks: dict[tuple[str, int], dict] = {}
    for key, value in state_dict.items():
        m = _BLOCK_RE.match(key)
        if m:
            blocks.setdefault((m.group(1), int(m.group(2))), {})[m.group(3)] = value
        elif key in _TOP:
            out[_TOP[key]] = _np(value)
        elif key in _TRANSPOSED:
            out[_TRANSPOSED[key]] = _np(value).T
        elif not _ignored(key) and strict:
            raise ValueError(f"{api}: unexpected tensor {key!r} is not part of an OpenAI CLIP "
                             f"model; pass strict=False to ignore it")
    for (prefix, i), block in sorted(blocks.items()):
        width = (config.vision if prefix.startswith("visual") else config.text).width
        for k, v in block_to_hf(block, width, api, f"{prefix}{i}.").items():
            out[f"{_TOWER_PREFIX[prefix]}{i}.{k}"] = v
    return out


def hf_to_openai(hf: Mapping[str, Any]) -> dict:
    """transformers ``CLIPModel`` keys -> the OpenAI layout (inverse of :func:`openai_to_hf`)."""
    out = {old: np.asarray(hf[new]) for old, new in _TOP.items()}
    out.update({old: np.ascontiguousarray(np.asarray(hf[new]).T)
                for old, new in _TRANSPOSED.items()})
    for old_prefix, new_prefix in _TOWER_PREFIX.items():
        n = len({k[len(new_prefix):].split(".")[0] for k in hf if k.startswith(new_prefix)})
        for i in range(n):
            layer = {k[len(f"{new_prefix}{i}."):]: v for k, v in hf.items()
                     if k.startswith(f"{new_prefix}{i}.")}
            out.update({f"{old_prefix}{i}.{k}": v for k, v in block_from_hf(layer).items()})
    return {k: np.require(np.asarray(v, np.float32), requirements="C") for k, v in out.items()}


# ----------------------------------------------------------------------- CLIP
def clip_from_openai(state_dict: Mapping[str, Any], config: CLIPConfig | None = None, *,
                     strict: bool = True, **tower_overrides) -> tuple[CLIPConfig, dict]:
    """``(config, CLIPModel params)`` from an OpenAI-layout state dict."""
    if config is None:
        config = openai_clip_config(state_dict, **tower_overrides)
    params = hf_clip.clip_from_hf(openai_to_hf(state_dict, config, strict=strict), config,
                                  strict=strict)
    return config, params


def clip_to_openai(params: Mapping, config: CLIPConfig) -> dict:
    """The OpenAI-layout state dict (float32 numpy) of ``CLIPModel(config)`` params."""
    check_released_stem(config.vision, "clip_to_openai")
    return hf_to_openai(hf_clip.clip_to_hf(params, config))


# ------------------------------------------------------------------------ files
def find_state_dict_file(path: str) -> str:
    """``path`` itself, or in a folder the one checkpoint file it holds: ``model.pt`` (what
    ``plug-convert --to openai`` / ``--to xclip`` write), the release's
    ``pytorch_model.bin.<epoch>`` (the latest epoch), ``pytorch_model.bin`` or one
    ``.safetensors`` / ``.pt`` file."""
    if not os.path.isdir(path):
        return path
    names = sorted(os.listdir(path))
    epochs = sorted((int(m.group(1)), n) for n in names
                    if (m := re.fullmatch(r"pytorch_model\.bin\.(\d+)", n)))
    for pick in (["model.pt"] if "model.pt" in names else [],
                 [epochs[-1][1]] if epochs else [],
                 ["pytorch_model.bin"] if "pytorch_model.bin" in names else [],
                 [n for n in names if n.endswith((".safetensors", ".pt"))]):
        if len(pick) == 1:
            return os.path.join(path, pick[0])
        if len(pick) > 1:
            break
    raise ValueError(f"{path} holds no single checkpoint file (model.pt, "
                     f"pytorch_model.bin.<epoch>, pytorch_model.bin, one .pt or .safetensors); "
                     f"pass the file itself")


def read_state_dict(path: str | os.PathLike) -> dict:
    """A state dict from a file (``.pt`` / ``.bin`` / ``.safetensors``, or the release's
    ``pytorch_model.bin.<epoch>``) or a folder holding one (:func:`find_state_dict_file`),
    through the safe readers of :mod:`plug_jax.convert.io` (no pickle is executed)."""
    path = find_state_dict_file(os.fspath(path))
    if re.search(r"\.bin\.\d+$", path):
        if not os.path.isfile(path):
            raise cio.WeightsLoadError(f"weights file {path} does not exist")
        return cio.load_torch_weights(path)
    return cio.load_weights_file(path)
