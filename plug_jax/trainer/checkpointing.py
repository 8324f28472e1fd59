"""Checkpoints: the only module of plug_jax that imports orbax.

Two kinds: training-run checkpoints (:class:`TrainCheckpointer`, at the end: an orbax
``CheckpointManager`` over ``MODEL_DIR/checkpoints``) and the *params checkpoint* that
converters and exports write::

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


# An optional file of a converted checkpoint: the model state the source checkpoint held
# (flat 'a/b/c' keys, numpy .npz, read without pickle), e.g. ALBEF momentum copies and queues.
MODEL_STATE_FILE = "model_state.npz"


def save_params(directory: str | os.PathLike, params: Any, *, config_dict: Mapping,
                metadata: Mapping, overwrite: bool = False,
                extra_files: Mapping[str, str] | None = None) -> str:
    """Writes ``params`` (an orbax checkpoint), ``config.json`` and ``metadata.json``.

    Args:
      directory: output directory; must be absent or empty unless ``overwrite``.
      params: the ``params`` pytree (boxed or not; jax or numpy arrays); it is
        saved as host numpy arrays, so it restores on any device layout.
      config_dict: JSON-serialisable family config.
      metadata: at least ``family``; ``preset``, ``source`` and the like are
        recorded as given. ``scanned``, ``dtypes`` and ``param_count`` are
        derived from ``params`` when absent.
      extra_files: ``{relative path in the checkpoint: source file}`` copied in with the
        rest (e.g. the vocabulary a conversion carries, ``vocab/vocab.txt``), before the
        checkpoint appears under its name.

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
        for rel, src in (extra_files or {}).items():
            dest = os.path.join(tmp, rel)
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            shutil.copyfile(src, dest)
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


def is_params_checkpoint(directory: str | os.PathLike) -> bool:
    """Whether ``directory`` is a :func:`save_params` checkpoint (plug-convert's output)."""
    path = os.fspath(directory)
    return (os.path.isfile(os.path.join(path, METADATA_FILE))
            and os.path.isdir(os.path.join(path, PARAMS_ITEM)))


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


# ===================================================================== train runs
# MODEL_DIR/checkpoints/<step>/{state,data,config,metadata}: an orbax CheckpointManager
# directory. ``state`` holds {'step', 'params', 'opt_state'} (sharded arrays, restored
# onto whatever mesh the target shardings name), ``data`` the data iterator position,
# ``config`` the operative gin config, ``metadata`` family / preset / vocabulary / mesh.
CHECKPOINT_SUBDIR = "checkpoints"
ITEMS = ("state", "data", "config", "metadata")
# Metadata keys that must match for a run to resume from a checkpoint.
IDENTITY_KEYS = ("family", "preset", "scanned", "vocab_fingerprint")


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:300]


def _flat_keys(tree: Any) -> dict[str, tuple]:
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        key = "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))
                       for k in path)
        out[key] = tuple(getattr(leaf, "shape", ()))
    return out


class TrainCheckpointer:
    """Async, ``max_to_keep``-bounded checkpoints of a training run (orbax CheckpointManager)."""

    def __init__(self, model_dir: str, max_to_keep: int | None = 3, async_save: bool = True,
                 create: bool = True):
        self.directory = os.path.join(os.path.abspath(model_dir), CHECKPOINT_SUBDIR)
        if create:
            os.makedirs(self.directory, exist_ok=True)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, enable_async_checkpointing=async_save, create=create)
        handlers = {"state": ocp.PyTreeCheckpointHandler(),
                    "data": ocp.JsonCheckpointHandler(),
                    "config": ocp.JsonCheckpointHandler(),
                    "metadata": ocp.JsonCheckpointHandler()}
        self.manager = ocp.CheckpointManager(self.directory, options=options,
                                             item_handlers=handlers)

    # ------------------------------------------------------------------ query
    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def step_dir(self, step: int) -> str:
        return os.path.join(self.directory, str(step))

    def read_json_item(self, step: int, item: str) -> Any:
        """A JSON item of a saved step, read directly (no arrays restored)."""
        path = os.path.join(self.step_dir(step), item, "metadata")
        if not os.path.exists(path):
            # Orbax's JsonCheckpointHandler writes ``<item>/metadata``; be lenient.
            cands = [os.path.join(self.step_dir(step), item, f)
                     for f in (os.listdir(os.path.join(self.step_dir(step), item))
                               if os.path.isdir(os.path.join(self.step_dir(step), item)) else [])]
            cands = [c for c in cands if os.path.isfile(c) and not c.endswith("_METADATA")]
            if not cands:
                raise CheckpointError(
                    f"checkpoint {self.step_dir(step)} has no readable '{item}' item; it is "
                    f"incomplete or damaged; fix: move that step directory away (the run "
                    f"then resumes from the previous step) or use another MODEL_DIR")
            path = cands[0]
        try:
            with open(path, encoding="utf-8") as f:
                return json.load(f)
        except (OSError, ValueError) as e:
            raise CheckpointError(
                f"checkpoint file {path} is unreadable ({_first_line(e)}); fix: move "
                f"{self.step_dir(step)} away (the run then resumes from the previous step) "
                f"or use another MODEL_DIR") from None

    # ------------------------------------------------------------------- save
    def save(self, step: int, state_arrays: Any, data_state: Mapping, config_text: str,
             metadata: Mapping, force: bool = False) -> bool:
        """Starts an async save (arrays are copied off the devices before it returns)."""
        args = ocp.args.Composite(
            state=ocp.args.PyTreeSave(state_arrays),
            data=ocp.args.JsonSave(dict(data_state)),
            config=ocp.args.JsonSave({"gin": config_text}),
            metadata=ocp.args.JsonSave(dict(metadata)))
        return self.manager.save(int(step), args=args, force=force)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()

    # ---------------------------------------------------------------- restore
    def check_identity(self, step: int, expected: Mapping) -> dict:
        """Raises a one-line CheckpointError when the saved run is another model."""
        saved = self.read_json_item(step, "metadata")
        for key in IDENTITY_KEYS:
            if key in expected and key in saved and saved[key] != expected[key]:
                raise CheckpointError(
                    f"MODEL_DIR checkpoint {self.step_dir(step)} holds {key}={saved[key]!r} but "
                    f"this run has {key}={expected[key]!r}; fix: use a new MODEL_DIR for a "
                    f"different model (nothing was changed in {self.directory})")
        return saved

    def saved_param_shapes(self, step: int) -> dict[str, tuple]:
        try:
            meta = self.manager.item_metadata(step)["state"]
        except Exception as e:  # noqa: BLE001
            raise CheckpointError(
                f"cannot read the state metadata of {self.step_dir(step)} "
                f"({type(e).__name__}: {_first_line(e)}); the checkpoint is damaged; fix: move "
                f"that step directory away or use another MODEL_DIR") from None
        tree = getattr(meta, "tree", meta)
        return _flat_keys(tree["params"])

    def saved_model_state_shapes(self, step: int) -> dict[str, tuple]:
        """``{flat key: shape}`` of the saved model state (``{}`` when the run kept none)."""
        meta = self.manager.item_metadata(step)["state"]
        tree = getattr(meta, "tree", meta)
        return _flat_keys(tree["model_state"]) if "model_state" in tree else {}

    def restore(self, step: int, abstract_state: Any, items: tuple[str, ...] = ("state", "data"),
                partial: bool = False) -> dict:
        """Restores ``items`` of ``step``; arrays land with ``abstract_state``'s shardings.

        ``abstract_state`` is a tree of ``jax.ShapeDtypeStruct`` with ``sharding`` set (the
        *target* layout, so a checkpoint written on another mesh is resharded). With
        ``partial=True`` only the leaves present in ``abstract_state`` are read.
        """
        kw = {}
        if "state" in items:
            restore_args = ocp.checkpoint_utils.construct_restore_args(abstract_state)
            kw["state"] = ocp.args.PyTreeRestore(item=abstract_state, restore_args=restore_args,
                                                 partial_restore=partial)
        for name in items:
            if name != "state":
                kw[name] = ocp.args.JsonRestore()
        try:
            out = self.manager.restore(int(step), args=ocp.args.Composite(**kw))
        except CheckpointError:
            raise
        except Exception as e:  # noqa: BLE001 - orbax/tensorstore raise many types
            raise CheckpointError(
                f"cannot restore checkpoint {self.step_dir(step)} ({type(e).__name__}: "
                f"{_first_line(e)}); the checkpoint is damaged or incompatible; fix: move that "
                f"step directory away (the run then resumes from the previous step) or use "
                f"another MODEL_DIR") from None
        return {name: out[name] for name in items}


def key_match_report(model_keys: Mapping[str, tuple], ckpt_keys: Mapping[str, tuple]) -> tuple[
        list[str], list[str], list[str], list[str]]:
    """``(matched, missing_in_checkpoint, unexpected_in_checkpoint, shape_mismatch)``."""
    matched, mismatch = [], []
    for k, shape in model_keys.items():
        if k in ckpt_keys:
            (matched if tuple(ckpt_keys[k]) == tuple(shape) else mismatch).append(k)
    missing = sorted(k for k in model_keys if k not in ckpt_keys)
    unexpected = sorted(k for k in ckpt_keys if k not in model_keys)
    return sorted(matched), missing, unexpected, sorted(mismatch)
