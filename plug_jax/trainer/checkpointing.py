"""Checkpoints: the only module of plug_jax that imports orbax.

For now this holds the *params checkpoint* that converters and exports write::

    DIR/params/         orbax StandardCheckpointer tree of the parameters (host numpy)
    DIR/config.json     the family config (``dataclasses.asdict`` of e.g. GPT3Config)
    DIR/metadata.json   family, preset, scanned, dtypes, param_count, source, format

:func:`save_params` never writes over an existing non-empty directory unless
``overwrite=True``; even then the new checkpoint is written beside the old one
and swapped in only once complete, so a failed save loses nothing.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp

PARAMS_ITEM = "params"
CONFIG_FILE = "config.json"
METADATA_FILE = "metadata.json"
FORMAT = "plug_jax.params/1"


class CheckpointError(ValueError):
    """A checkpoint cannot be written or read (one-line message)."""


def _to_host(params: Any) -> Any:
    from flax.core import meta

    return jax.tree_util.tree_map(np.asarray, jax.device_get(meta.unbox(params)))


def _dtypes(params: Any) -> list[str]:
    return sorted({str(np.dtype(x.dtype)) for x in jax.tree_util.tree_leaves(params)})


def _is_scanned(params: Any) -> bool:
    paths = jax.tree_util.tree_flatten_with_path(params)[0]
    return any(getattr(k, "key", None) == "layers" for path, _ in paths for k in path)


def _write_json(path: str, data: Mapping) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, sort_keys=True, default=str)
        f.write("\n")


def _read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing: {os.path.dirname(path)} is not a complete "
                              f"plug_jax params checkpoint") from None
    except ValueError as e:
        raise CheckpointError(f"{path} is not valid JSON ({e}); the checkpoint is "
                              f"damaged") from None


def check_output_dir(directory: str | os.PathLike, overwrite: bool = False) -> str:
    """Absolute path of ``directory``; raises if it exists, is non-empty and not overwritable."""
    path = os.path.abspath(os.fspath(directory))
    if os.path.exists(path) and not os.path.isdir(path):
        raise CheckpointError(f"output {path} exists and is not a directory; choose another "
                              f"output directory")
    if os.path.isdir(path) and os.listdir(path) and not overwrite:
        raise CheckpointError(f"output directory {path} exists and is not empty; pass "
                              f"overwrite=True (--overwrite) or choose another directory")
    return path


def save_params(directory: str | os.PathLike, params: Any, *, config_dict: Mapping,
                metadata: Mapping, overwrite: bool = False) -> str:
    """Writes ``params`` (an orbax checkpoint), ``config.json`` and ``metadata.json``.

    Args:
      directory: output directory; must be absent or empty unless ``overwrite``.
      params: the ``params`` pytree (boxed or not; jax or numpy arrays); it is
        saved as host numpy arrays, so it restores on any device layout.
      config_dict: JSON-serialisable family config.
      metadata: at least ``family``; ``preset``, ``source`` and the like are
        recorded as given. ``scanned``, ``dtypes`` and ``param_count`` are
        derived from ``params`` when absent.

    Returns:
      The absolute path of the checkpoint directory.
    """
    path = check_output_dir(directory, overwrite)
    if "family" not in metadata:
        raise CheckpointError("save_params: metadata needs a 'family' entry")
    host = _to_host(params)
    meta = {"format": FORMAT, "scanned": _is_scanned(host), "dtypes": _dtypes(host),
            "param_count": int(sum(x.size for x in jax.tree_util.tree_leaves(host)))}
    meta.update(dict(metadata))
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.tmp-", dir=parent)
    os.chmod(tmp, 0o755)  # mkdtemp makes it owner-only
    try:
        checkpointer = ocp.StandardCheckpointer()
        checkpointer.save(os.path.join(tmp, PARAMS_ITEM), host)
        checkpointer.wait_until_finished()
        checkpointer.close()
        _write_json(os.path.join(tmp, CONFIG_FILE), dict(config_dict))
        _write_json(os.path.join(tmp, METADATA_FILE), meta)
        if os.path.isdir(path):
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.old-", dir=parent)
            os.rmdir(old)
            os.rename(path, old)
            os.rename(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def load_params(directory: str | os.PathLike) -> tuple[dict, Any, dict]:
    """Reads a checkpoint written by :func:`save_params`: ``(config_dict, params, metadata)``.

    ``params`` comes back as numpy arrays (place them with the partitioner).
    """
    path = os.path.abspath(os.fspath(directory))
    if not os.path.isdir(path):
        raise CheckpointError(f"checkpoint directory {path} does not exist")
    config_dict = _read_json(os.path.join(path, CONFIG_FILE))
    metadata = _read_json(os.path.join(path, METADATA_FILE))
    item = os.path.join(path, PARAMS_ITEM)
    if not os.path.isdir(item):
        raise CheckpointError(f"{item} is missing: {path} is not a complete plug_jax params "
                              f"checkpoint")
    checkpointer = ocp.StandardCheckpointer()
    try:
        params = checkpointer.restore(item)
    except Exception as e:  # noqa: BLE001 - orbax raises many types; report one line
        first = (str(e).strip().splitlines() or [""])[0]
        raise CheckpointError(f"cannot restore {item} ({type(e).__name__}: {first}); the "
                              f"checkpoint is damaged or was written by another tool") from None
    finally:
        checkpointer.close()
    return config_dict, params, metadata
