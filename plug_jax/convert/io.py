"""Safe loading of foreign weight files (no pickle, ever).

Policy: weights are read from ``.safetensors`` (``safetensors.numpy``, or
``safetensors.torch`` for dtypes numpy lacks) or, for PyTorch files
(``.bin`` / ``.pt`` / ``.pth``), only through
``torch.load(path, weights_only=True, map_location="cpu")``, which refuses
any object that is not a tensor or a plain container. Plain ``pickle`` and
``torch.load(weights_only=False)`` are never used: a weights file must not be
able to run code. A file that cannot be read this way raises one
:class:`WeightsLoadError` line naming the file and the fix.

torch and safetensors are imported lazily, inside the functions.
"""
from __future__ import annotations

import json
import os
from typing import Any, Iterable, Mapping

import numpy as np

SAFETENSORS_EXTS = (".safetensors",)
TORCH_EXTS = (".bin", ".pt", ".pth")
SUPPORTED_EXTS = SAFETENSORS_EXTS + TORCH_EXTS

_FIX_TORCH = ("re-save only the tensors (torch.save(model.state_dict(), path)) or convert the "
              "file to .safetensors in an environment you trust")


class WeightsLoadError(ValueError):
    """A weights or config file could not be read safely (one-line message)."""


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = text[0].strip() if text else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def load_safetensors(path: str | os.PathLike) -> dict[str, Any]:
    """``{name: array}`` from a ``.safetensors`` file (numpy; torch tensors for bf16)."""
    path = os.fspath(path)
    try:
        from safetensors.numpy import load_file
    except ImportError as e:  # pragma: no cover - safetensors is a convert extra
        raise WeightsLoadError(f"reading {path} needs the 'safetensors' package; install "
                               f"plug_jax[convert]") from e
    try:
        return dict(load_file(path))
    except Exception as np_exc:  # noqa: BLE001 - classified below
        # numpy has no bfloat16; torch reads those files losslessly.
        try:
            from safetensors.torch import load_file as load_torch
        except ImportError:
            load_torch = None
        if load_torch is not None:
            try:
                return dict(load_torch(path, device="cpu"))
            except Exception:  # noqa: BLE001
                pass
        raise WeightsLoadError(
            f"cannot read safetensors file {path} ({_one_line(np_exc)}); the file is corrupt or "
            f"truncated: download or export it again") from None


def load_torch_weights(path: str | os.PathLike) -> dict[str, Any]:
    """``{name: tensor}`` from a PyTorch file, via ``torch.load(weights_only=True)`` only."""
    path = os.fspath(path)
    try:
        import torch
    except ImportError as e:  # pragma: no cover - torch is a convert extra
        raise WeightsLoadError(f"reading {path} needs PyTorch (install plug_jax[convert]) or "
                               f"a .safetensors copy of the weights") from e
    try:
        obj = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as e:  # noqa: BLE001 - classified below
        name = type(e).__name__
        if "Unpickl" in name or "weights_only" in str(e).lower():
            raise WeightsLoadError(
                f"refusing to load {path}: it contains objects other than tensors, which "
                f"torch.load(weights_only=True) does not execute; {_FIX_TORCH}") from None
        raise WeightsLoadError(
            f"cannot read PyTorch file {path} ({_one_line(e)}); the file is corrupt or not a "
            f"torch.save file: download or export it again") from None
    if not isinstance(obj, Mapping):
        raise WeightsLoadError(f"{path} holds a {type(obj).__name__}, not a state dict of "
                               f"tensors; {_FIX_TORCH}")
    return dict(obj)


def load_weights_file(path: str | os.PathLike) -> dict[str, Any]:
    """Loads one weights file, choosing the safe reader from the extension."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise WeightsLoadError(f"weights file {path} does not exist")
    ext = os.path.splitext(path)[1].lower()
    if ext in SAFETENSORS_EXTS:
        return load_safetensors(path)
    if ext in TORCH_EXTS:
        return load_torch_weights(path)
    raise WeightsLoadError(
        f"unsupported weights file format {ext or '(no extension)'!r} for {path}; supported: "
        f"{', '.join(SUPPORTED_EXTS)} (pickles and other formats are never loaded)")


def load_weights_files(paths: Iterable[str | os.PathLike]) -> dict[str, Any]:
    """Merges several shard files into one dict (duplicate names are an error)."""
    out: dict[str, Any] = {}
    for p in paths:
        part = load_weights_file(p)
        dup = sorted(set(part) & set(out))
        if dup:
            raise WeightsLoadError(f"shard {os.fspath(p)} repeats tensor {dup[0]!r} already read "
                                   f"from another shard")
        out.update(part)
    return out


def find_hf_weights(directory: str | os.PathLike) -> list[str]:
    """The weight files of a ``save_pretrained`` directory, preferring safetensors.

    Order: ``model.safetensors``, ``model.safetensors.index.json`` shards,
    ``pytorch_model.bin``, ``pytorch_model.bin.index.json`` shards.
    """
    d = os.fspath(directory)
    for name in ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json"):
        path = os.path.join(d, name)
        if not os.path.isfile(path):
            continue
        if not name.endswith(".index.json"):
            return [path]
        files = sorted(set(read_json(path).get("weight_map", {}).values()))
        if not files:
            raise WeightsLoadError(f"{path} has an empty weight_map; export the model again")
        return [os.path.join(d, f) for f in files]
    raise WeightsLoadError(
        f"no weights in {d}: expected model.safetensors, pytorch_model.bin or a sharded "
        f"*.index.json (save the model with save_pretrained)")


def read_checkpoint(path: str | os.PathLike, config: Any = None, *, api: str,
                    config_names: tuple[str, ...] = ("config.json",),
                    fix: str = "pass config= (a config object, a dict or a JSON path)",
                    missing_error: type[Exception] = FileNotFoundError,
                    config_error: type[Exception] = ValueError) -> tuple[Any, dict]:
    """``(config, state_dict)`` of a ``save_pretrained`` directory (:func:`find_hf_weights`)
    or one weights file. ``config``: as given (a path is read as JSON), else the first of
    ``config_names`` beside the weights, read as a dict; none there raises ``config_error``
    ending in ``fix``. A path that does not exist raises ``missing_error``. The converters'
    shared loader (BERT / XLM-R / ModelScope StructBERT, GPT-2, T5 / MT5 / XDPX)."""
    p = os.fspath(path)
    if os.path.isdir(p):
        files, cfg_dir = find_hf_weights(p), p
    elif os.path.isfile(p):
        files, cfg_dir = [p], os.path.dirname(p) or "."
    else:
        raise missing_error(f"{api}: {p} does not exist")
    if config is None:
        config = next((os.path.join(cfg_dir, n) for n in config_names
                       if os.path.isfile(os.path.join(cfg_dir, n))), None)
        if config is None:
            raise config_error(f"{api}: no {' or '.join(config_names)} next to {p}; {fix}")
    if isinstance(config, (str, os.PathLike)):
        config = read_json(config)
    return config, load_weights_files(files)


def read_json(path: str | os.PathLike) -> dict:
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise WeightsLoadError(f"{path} does not exist") from None
    except (OSError, ValueError) as e:
        raise WeightsLoadError(f"cannot parse {path} as JSON ({_one_line(e)}); fix or "
                               f"re-export the file") from None
    if not isinstance(data, dict):
        raise WeightsLoadError(f"{path} must hold a JSON object, found {type(data).__name__}")
    return data


def to_numpy(x: Any, dtype: Any = np.float32) -> np.ndarray:
    """A torch tensor / numpy / jax array as a numpy array of ``dtype`` (a copy for torch)."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor, without importing torch
        import torch
        t = x.detach().cpu()
        if t.is_floating_point():  # bfloat16 / float16 have no exact numpy twin
            t = t.to(torch.float32)
        arr = t.numpy()
    else:
        arr = np.asarray(x)
    return np.ascontiguousarray(arr.astype(dtype, copy=False)) if dtype is not None else arr


# ------------------------------------------------------------------------------------------
# Parameter-tree helpers shared by the converters (numpy only; no torch).

def unbox_params(params: Any) -> dict:
    """Drops ``nn.Partitioned`` boxes and an outer ``{'params': ...}`` wrapper."""
    from flax.core import meta

    params = meta.unbox(params)
    if isinstance(params, Mapping) and set(params) == {"params"}:
        params = params["params"]
    return dict(params)


def split_layers(decoder: Mapping, num_layers: int, api: str) -> list[dict]:
    """Per-layer subtrees of a decoder, scanned (``layers`` with a leading axis) or not."""
    if "layers" in decoder:
        stacked = decoder["layers"]
        leaves = flatten_tree(stacked)
        bad = {k: np.shape(v) for k, v in leaves.items() if np.shape(v)[:1] != (num_layers,)}
        if bad:
            k = sorted(bad)[0]
            raise ValueError(f"{api}: scanned parameter decoder/layers/{k} has shape {bad[k]}, "
                             f"expected a leading layers axis of {num_layers}")
        return [unflatten_tree({k: np.asarray(v)[i] for k, v in leaves.items()})
                for i in range(num_layers)]
    missing = [f"layers_{i}" for i in range(num_layers) if f"layers_{i}" not in decoder]
    if missing:
        raise ValueError(f"{api}: params have neither decoder/layers (scanned) nor "
                         f"decoder/{missing[0]} (unscanned) for {num_layers} layers")
    return [decoder[f"layers_{i}"] for i in range(num_layers)]


def assemble_decoder(layers: list[dict], scan_layers: bool) -> dict:
    """``{'layers': stacked}`` (scanned) or ``{'layers_0': ..., ...}``."""
    if not scan_layers:
        return {f"layers_{i}": layer for i, layer in enumerate(layers)}
    flat = [flatten_tree(layer) for layer in layers]
    stacked = {k: np.stack([f[k] for f in flat]) for k in flat[0]}
    return {"layers": unflatten_tree(stacked)}


def flatten_tree(tree: Mapping, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten_tree(v, key + "/"))
        else:
            out[key] = v
    return out


def unflatten_tree(flat: Mapping[str, Any]) -> dict:
    out: dict = {}
    for key, v in flat.items():
        node = out
        *parents, leaf = key.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = v
    return out

