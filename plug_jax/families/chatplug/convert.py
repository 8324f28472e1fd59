"""ChatPLUG checkpoints <-> the ``chatplug`` family: transformers MT5 and the released XDPX layout.

The tensors are mapped by ``plug_jax.convert.hf_t5`` (the shared T5 converters):

* ``mt5``: a transformers ``MT5ForConditionalGeneration`` folder, ``config.json`` +
  ``model.safetensors`` (or ``pytorch_model.bin`` / shards), what ``save_pretrained`` writes.
  The tied copies ``{encoder,decoder}.embed_tokens.weight`` are read when present (they must
  equal ``shared.weight``) and not written, as ``save_pretrained`` does.
* ``xdpx``: ChatPLUG's XDPX (``FIDT5Chat``) state dict, a ``torch.save`` file (``.pt`` /
  ``.bin``, or safetensors) with an optional DDP ``module.`` prefix: the encoder under
  ``backbone.encoder.encoder.`` with ``block.N.module.layer`` (the FiD encoder wrapper and
  its checkpoint wrapper), the rest under ``backbone.``; the transformers ``config.json``
  beside it (the released checkpoints ship the mT5 one). The export writes
  ``checkpoint.pt`` (every tensor ``model.state_dict()`` lists, tied copies included) and
  ``config.json``.

Sizes come from the ``config.json`` beside the weights; without one, from ``--preset``. The
fusion-in-decoder limits are not in transformers' config: our exports write them into
``config.json`` under XDPX's argument names (``max_n_passage``, ``max_encoder_length``,
``max_decoder_length``; transformers keeps unknown keys as attributes), an import reads them
from there, else from ``--preset``, else takes the released 20 x 380 / 512. The config is
named after ``--preset`` when it equals that preset; otherwise ``custom``.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping

import numpy as np

from plug_jax.convert import io as cio
from plug_jax.convert.io import WeightsLoadError
from plug_jax.families.chatplug.config import ChatPLUGConfig

FORMATS = ("mt5", "xdpx")
# ChatPLUGConfig field -> XDPX argument name (XDPX/xdpx/processors/chat.py), in config.json.
FID_KEYS = {"num_passages": "max_n_passage", "passage_length": "max_encoder_length",
            "max_decoder_length": "max_decoder_length"}
XDPX_FILES = ("checkpoint.pt", "pytorch_model.bin", "model.pt", "checkpoint.bin")
# Ignored when a config is compared with a preset (layout and precision, not the model).
_NOT_THE_MODEL = ("preset", "scan_layers", "dtype", "param_dtype", "remat_policy")


def _weight_files(path: str, fmt: str) -> tuple[list[str], str]:
    """``(weight files, folder of config.json)`` of an input path: a file, or a folder with a
    ``save_pretrained`` layout or one XDPX checkpoint file (the other format's files are
    found too, so that the key check can name the right ``--source``)."""
    if os.path.isfile(path):
        return [path], os.path.dirname(path) or "."
    if not os.path.isdir(path):
        raise WeightsLoadError(f"{path} does not exist")

    def xdpx_file():
        for name in XDPX_FILES:
            if os.path.isfile(os.path.join(path, name)):
                return [os.path.join(path, name)]
        found = sorted(n for n in os.listdir(path) if n.endswith((".pt", ".safetensors")))
        if len(found) > 1:
            raise WeightsLoadError(f"{path} holds several weight files ({', '.join(found)}); "
                                   f"fix: pass the checkpoint file itself as --input")
        return [os.path.join(path, found[0])] if found else None

    def hf_files():
        try:
            return cio.find_hf_weights(path)
        except WeightsLoadError:
            return None

    order = (xdpx_file, hf_files) if fmt == "xdpx" else (hf_files, xdpx_file)
    for find in order:
        files = find()
        if files:
            return files, path
    raise WeightsLoadError(f"no weights in {path}: expected model.safetensors / "
                           f"pytorch_model.bin (transformers) or {XDPX_FILES[0]} (XDPX)")


def _state_dict(files: list[str]) -> dict:
    sd = cio.load_weights_files(files)
    for key in ("model", "state_dict", "module"):  # {'model': sd} trainer wrappers
        if len(sd) <= 3 and isinstance(sd.get(key), Mapping):
            return dict(sd[key])
    return sd


def chatplug_config(hf_config: Mapping | None, preset: str | None, *,
                    scan_layers: bool = True) -> ChatPLUGConfig:
    """The config of a checkpoint: sizes from ``hf_config`` (a transformers ``config.json``
    dict) or, without one, from ``preset``; the FiD limits from ``hf_config``'s XDPX keys,
    else ``preset``, else the released values. Named ``preset`` only if it equals it."""
    from plug_jax.convert.hf_t5 import config_from_hf
    base = ChatPLUGConfig.from_preset(preset) if preset else ChatPLUGConfig()
    if hf_config is None:
        if not preset:
            raise WeightsLoadError("family 'chatplug' needs the sizes: a config.json beside "
                                   "the weights, or --preset (3.7B, 240M or tiny)")
        return base.replace(scan_layers=scan_layers)
    t5 = config_from_hf(hf_config, scan_layers=scan_layers)
    if t5.num_decoder_layers == t5.num_layers:  # the presets' spelling of "as many"
        t5 = t5.replace(num_decoder_layers=None)
    fid = {field: int(hf_config[key]) if hf_config.get(key) is not None
           else getattr(base, field) for field, key in FID_KEYS.items()}
    config = ChatPLUGConfig(**dataclasses.asdict(t5), **fid)
    if preset and _same_model(config, base):
        return config.replace(preset=preset)
    return config


def _same_model(a: ChatPLUGConfig, b: ChatPLUGConfig) -> bool:
    def fields(c):
        return {k: v for k, v in dataclasses.asdict(c).items() if k not in _NOT_THE_MODEL}
    return fields(a) == fields(b)


def load_chatplug_checkpoint(path: str | os.PathLike, fmt: str, *, preset: str | None = None,
                             scan_layers: bool = True, strict: bool = True,
                             report: list | None = None) -> tuple[ChatPLUGConfig, dict]:
    """``(config, params)`` of a transformers MT5 folder (``fmt='mt5'``) or an XDPX
    checkpoint (``fmt='xdpx'``; a file or the folder holding it)."""
    from plug_jax.convert.hf_t5 import from_hf_state_dict, from_xdpx_state_dict, looks_like_xdpx
    if fmt not in FORMATS:
        raise ValueError(f"unknown ChatPLUG checkpoint format {fmt!r}; choose one of {FORMATS}")
    files, cfg_dir = _weight_files(os.fspath(path), fmt)
    cfg_path = os.path.join(cfg_dir, "config.json")
    hf_config = cio.read_json(cfg_path) if os.path.isfile(cfg_path) else None
    config = chatplug_config(hf_config, preset, scan_layers=scan_layers)
    sd = _state_dict(files)
    xdpx = looks_like_xdpx(sd)
    if xdpx != (fmt == "xdpx"):
        found = "xdpx" if xdpx else "mt5"
        what = "an XDPX (backbone.*)" if xdpx else "a transformers MT5"
        raise WeightsLoadError(f"{path} holds {what} checkpoint (keys like "
                               f"{next(iter(sd), '?')!r}); fix: --source {found}")
    fn = from_xdpx_state_dict if xdpx else from_hf_state_dict
    params = fn(sd, config, strict=strict)
    if report is not None:
        where = ("config.json" if hf_config is not None and FID_KEYS["num_passages"] in hf_config
                 else f"preset {preset}" if preset else "the released defaults")
        report.append(f"fusion-in-decoder: {config.num_passages} passages x "
                      f"{config.passage_length} tokens, decoder {config.max_decoder_length} "
                      f"(from {where})")
    return config, params


def _hf_config(config: ChatPLUGConfig):
    from plug_jax.convert.hf_t5 import to_hf_config
    hf = to_hf_config(config, "mt5")
    hf.architectures = ["MT5ForConditionalGeneration"]
    for field, key in FID_KEYS.items():
        setattr(hf, key, int(getattr(config, field)))
    return hf


def save_mt5(config: ChatPLUGConfig, params: Any, out_dir: str) -> str:
    """A transformers ``MT5ForConditionalGeneration`` folder: ``config.json`` (with the FiD
    limits) + ``model.safetensors``. Returns a short description."""
    from safetensors.numpy import save_file

    from plug_jax.convert.hf_t5 import TIED, to_hf_state_dict
    sd = {k: v for k, v in to_hf_state_dict(config, params, as_numpy=True).items()
          if k not in TIED}
    _hf_config(config).save_pretrained(out_dir)
    save_file({k: np.ascontiguousarray(v) for k, v in sd.items()},
              os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
    return (f"MT5ForConditionalGeneration config.json + model.safetensors ({len(sd)} tensors, "
            f"{config.num_layers} + {config.decoder_layers} layers)")


def save_xdpx(config: ChatPLUGConfig, params: Any, out_dir: str) -> str:
    """An XDPX ``FIDT5Chat`` state dict, ``checkpoint.pt`` (torch tensors), and the mT5
    ``config.json`` beside it. Returns a short description."""
    import torch

    from plug_jax.convert.hf_t5 import to_xdpx_state_dict
    sd = to_xdpx_state_dict(config, params)
    torch.save(sd, os.path.join(out_dir, "checkpoint.pt"))
    with open(os.path.join(out_dir, "config.json"), "w", encoding="utf-8") as f:
        json.dump(_hf_config(config).to_dict(), f, indent=2, sort_keys=True)
    return f"XDPX FIDT5Chat checkpoint.pt ({len(sd)} tensors) + config.json"
