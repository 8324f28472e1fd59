"""taming-transformers VQGAN checkpoints <-> :class:`plug_jax.layers.vqgan.VQGAN` params.

taming's ``VQModel`` state dict holds ``encoder.*``, ``decoder.*``, ``quant_conv.*``,
``post_quant_conv.*``, ``quantize.embedding.weight`` and, in a training checkpoint,
``loss.*`` (the LPIPS network and the discriminator), which the importer drops with a note.
A parameter's taming key is its module path here with ``down_{i}_block_{j}`` read as
``down.{i}.block.{j}`` (likewise ``attn``, ``up``, ``downsample``, ``upsample``) and
``mid_block_1`` as ``mid.block_1``; conv ``kernel`` (HWIO) is taming's ``weight`` (OIHW),
GroupNorm ``scale`` is ``weight``, the codebook ``embedding`` is ``embedding.weight``.

* :func:`from_taming` ``(state_dict, config) -> params`` (numpy, unboxed);
* :func:`to_taming` ``(params, config) -> state_dict`` (numpy); ``to_taming(from_taming(sd))``
  gives ``sd`` back bit for bit (less ``loss.*``);
* :func:`load_taming_checkpoint` ``(path)`` reads a ``.ckpt`` / ``.pt`` / ``.pth`` /
  ``.bin`` file through ``torch.load(weights_only=True)`` (never running pickle code) or a
  ``.safetensors`` file, and returns its ``state_dict`` entry when there is one (a
  pytorch-lightning checkpoint), else the file's tensors.

taming's ``VQModel`` has no EMA codebook: import with ``codebook='straight_through'`` and
start EMA training with :func:`plug_jax.layers.vqgan.ema_state_from_codebook`.
"""
from __future__ import annotations

import os
import re
import sys
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from plug_jax.convert import io
from plug_jax.layers.vqgan import VQGAN, VQGANConfig

IGNORED_PREFIXES = ("loss.",)
_FIX = ("build the VQGANConfig from the checkpoint's ddconfig (ch, ch_mult, num_res_blocks, "
        "attn_resolutions, z_channels) and its n_embed / embed_dim")


def _module_to_taming(name: str) -> str:
    m = re.fullmatch(r"(down|up)_(\d+)_(block|attn)_(\d+)", name)
    if m:
        return ".".join(m.groups())
    m = re.fullmatch(r"(down|up)_(\d+)_(downsample|upsample)", name)
    if m:
        return ".".join(m.groups())
    m = re.fullmatch(r"mid_((?:block|attn)_\d+)", name)
    if m:
        return f"mid.{m.group(1)}"
    return name


def _taming_key(path: str) -> str:
    *modules, leaf = path.split("/")
    leaf = {"kernel": "weight", "scale": "weight", "bias": "bias",
            "embedding": "embedding.weight"}[leaf]
    return ".".join([_module_to_taming(m) for m in modules] + [leaf])


def _is_conv_kernel(path: str) -> bool:
    return path.endswith("/kernel")


def _expected_shapes(config: VQGANConfig) -> dict[str, tuple]:
    """Our parameter paths -> shapes, from the model's abstract init (no compute)."""
    if config.codebook != "straight_through":
        raise ValueError(f"vqgan_convert: taming's VQModel has no EMA codebook; convert with "
                         f"codebook='straight_through' (config has {config.codebook!r}), then "
                         f"start EMA with vqgan.ema_state_from_codebook")
    model = VQGAN(config)
    x = jax.ShapeDtypeStruct((1, config.resolution, config.resolution, config.in_channels),
                             jnp.float32)
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros(x.shape)))
    params = io.unbox_params(shapes)
    return {k: tuple(v.shape) for k, v in io.flatten_tree(params).items()}


def _taming_shape(path: str, shape: tuple) -> tuple:
    if _is_conv_kernel(path):  # HWIO -> OIHW
        h, w, i, o = shape
        return (o, i, h, w)
    return shape


def from_taming(state_dict: Mapping[str, Any], config: VQGANConfig, *,
                log=None) -> dict:
    """taming ``VQModel`` state dict (``{key: array or tensor}``) -> VQGAN ``params``."""
    log = log if log is not None else (lambda msg: print(msg, file=sys.stderr))
    expected = _expected_shapes(config)
    keys = {_taming_key(p): p for p in expected}
    ignored = sorted(k for k in state_dict if k.startswith(IGNORED_PREFIXES))
    if ignored:
        log(f"from_taming: ignoring {len(ignored)} loss.* tensors (taming's training loss: "
            f"LPIPS and discriminator), not part of the tokenizer")
    unexpected = sorted(k for k in state_dict if k not in keys and k not in ignored)
    if unexpected:
        k = unexpected[0]
        raise ValueError(f"from_taming: unexpected key {k} (shape "
                         f"{tuple(np.shape(state_dict[k]))}, shape expected: none, the config "
                         f"has no such parameter; {len(unexpected)} unexpected in all); {_FIX}")
    flat = {}
    for key, path in sorted(keys.items()):
        want = _taming_shape(path, expected[path])
        if key not in state_dict:
            missing = sorted(set(keys) - set(state_dict))
            raise ValueError(f"from_taming: missing key {key} (shape expected {want}, found "
                             f"none; {len(missing)} missing in all); {_FIX}")
        value = io.to_numpy(state_dict[key], dtype=None)
        if value.shape != want:
            raise ValueError(f"from_taming: {key} has shape {value.shape} in the checkpoint, "
                             f"shape expected {want}; {_FIX}")
        flat[path] = np.transpose(value, (2, 3, 1, 0)) if _is_conv_kernel(path) else value
    return io.unflatten_tree(flat)


def to_taming(params: Mapping, config: VQGANConfig) -> dict[str, np.ndarray]:
    """VQGAN ``params`` -> taming ``VQModel`` state dict (numpy; no ``loss.*``)."""
    expected = _expected_shapes(config)
    flat = io.flatten_tree(io.unbox_params(params))
    missing = sorted(set(expected) - set(flat))
    extra = sorted(set(flat) - set(expected))
    if missing or extra:
        what = f"missing {missing[0]}" if missing else f"unexpected {extra[0]}"
        raise ValueError(f"to_taming: params do not fit the config ({what}); pass the config "
                         f"the params were made with")
    out = {}
    for path, shape in expected.items():
        value = np.asarray(flat[path])
        if value.shape != shape:
            raise ValueError(f"to_taming: params/{path} has shape {value.shape}, shape expected "
                             f"{shape}; pass the config the params were made with")
        key = _taming_key(path)
        out[key] = np.ascontiguousarray(
            np.transpose(value, (3, 2, 0, 1)) if _is_conv_kernel(path) else value)
    return out


def load_taming_checkpoint(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """A taming checkpoint's ``state_dict`` as ``{key: numpy array}``, read without pickle
    code (``torch.load(weights_only=True)`` for ``.ckpt`` / ``.pt`` / ``.pth`` / ``.bin``;
    ``.safetensors``)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise io.WeightsLoadError(f"taming checkpoint {path} does not exist")
    ext = os.path.splitext(path)[1].lower()
    if ext in io.SAFETENSORS_EXTS:
        obj = io.load_safetensors(path)
    elif ext in io.TORCH_EXTS + (".ckpt",):
        obj = io.load_torch_weights(path)
    else:
        raise io.WeightsLoadError(f"unsupported taming checkpoint format {ext or '(none)'!r} "
                                  f"for {path}; supported: .ckpt, .pt, .pth, .bin, .safetensors")
    if isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    out = {}
    for k, v in obj.items():
        if not (hasattr(v, "shape") and hasattr(v, "dtype")):
            raise io.WeightsLoadError(f"{path}: entry {k!r} is a {type(v).__name__}, not a "
                                      f"tensor; expected a VQModel state dict (or a "
                                      f"checkpoint with a 'state_dict' entry)")
        out[k] = io.to_numpy(v, dtype=None)
    return out
