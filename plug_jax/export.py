"""``plug-export``: export the latest checkpoint of a trained ``MODEL_DIR``, on one device.

    plug-export --gin_file=experiments/gpt3/shop_tiny.gin --gin_file=runs/export.gin \\
                --gin.MODEL_DIR=/tmp/run --gin.EXPORT_DIR=/tmp/run_export [--to FORMAT]

``--to serving`` (default): a TensorFlow SavedModel written with ``orbax-export`` whose
signatures are the jitted plug_jax functions (StableHLO inside, via jax2tf native
serialization) with a polymorphic batch and sequence length, the parameters as variables:

* ``serving_default``: token ids -> logits. Decoder-only (GPT-3): ``ids`` int32 ``[B, L]``
  -> ``logits`` float32 ``[B, L, V]``. Encoder-decoder (PALM, PLUG): ``encoder_ids``
  ``[B, Le]`` and ``decoder_ids`` ``[B, Ld]`` -> ``logits`` ``[B, Ld, V]``.
* ``generate`` (models that decode): greedy decoding of ``EXPORT_MAX_NEW_TOKENS`` tokens,
  exactly ``plug_jax.decoding.generate(..., method='greedy', eos_id=<vocabulary EOS>)`` as
  ``plug-infer`` runs it. Decoder-only: ``ids`` ``[B, P]``, **left-padded with 0** ->
  ``tokens`` int32 ``[B, N]`` (0 after EOS). Encoder-decoder: ``encoder_ids`` ``[B, Le]``
  (right-padded with 0, ending with EOS where the task's inputs do) -> ``tokens``.

The export folder holds ``saved_model/``, the task's vocabulary file (``vocab/``) and
``export.json`` (family, step, signatures, EOS id, vocabulary). Loading it needs
TensorFlow only (no jax, no plug_jax)::

    import tensorflow as tf
    m = tf.saved_model.load(f"{EXPORT_DIR}/saved_model")
    logits = m.signatures["serving_default"](ids=tf.constant(ids))["logits"]
    tokens = m.signatures["generate"](ids=tf.constant(left_padded_ids))["tokens"]

``--to hf`` / ``--to modelscope`` / ``--to alicemind`` / ``--to megatron``: the family's
export converter (``FamilySpec.converters``), through ``plug-convert --to``: the restored
parameters are written as a plug_jax params checkpoint in a temporary folder and handed to
:func:`plug_jax.convert.cli.main`, so both commands write the same files.

Bad input (no checkpoint in ``MODEL_DIR``, a non-empty ``EXPORT_DIR``, a format the family
has no converter for) prints one ``plug-export: error: ...`` line and exits 2 before
anything is written; a serving export is built in a temporary sibling folder and moved into
place only when complete. See docs/export.md.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import tempfile
from typing import Sequence

PROG = "plug-export"
SERVING = "serving"
SAVED_MODEL_DIR = "saved_model"
VOCAB_DIR = "vocab"
MANIFEST = "export.json"
# StableHLO is lowered for each of these platforms; the SavedModel runs on any of them.
DEFAULT_PLATFORMS = ("cpu", "cuda")
PLATFORMS = ("cpu", "cuda", "rocm", "tpu")  # what jax.export lowers for


class ExportError(ValueError):
    """A one-line, user-facing failure of ``plug-export`` (exit status 2)."""


# ----------------------------------------------------------------------- functions
def serving_functions(model, *, max_new_tokens: int, eos_id: int | None) -> dict[str, dict]:
    """``{method: {'fn': fn(params, inputs), 'inputs': {name: symbolic shape},
    'output': name}}`` for the task model ``model``: ``logits`` for every token model,
    ``generate`` for those with ``decode_fns``. ``inputs`` is a dict of int32 arrays."""
    import jax.numpy as jnp

    from plug_jax import decoding

    _check_servable(model)
    encdec = bool(getattr(model, "encoder_decoder", False))
    out: dict[str, dict] = {}
    if encdec:
        def logits_fn(params, inputs):
            res = model.outputs(params, {"encoder_input_tokens": inputs["encoder_ids"],
                                         "decoder_input_tokens": inputs["decoder_ids"]})
            return jnp.asarray(res["logits"], jnp.float32)

        def generate_fn(params, inputs):
            step_fn, init_cache = model.decode_fns()
            enc = inputs["encoder_ids"]
            start = jnp.zeros((enc.shape[0], 1), jnp.int32)
            return decoding.generate(step_fn, init_cache, {"model": params, "encoder_ids": enc},
                                     start, jnp.ones_like(start), max_new_tokens,
                                     eos_id=eos_id).tokens

        out["logits"] = {"fn": logits_fn, "inputs": {"encoder_ids": "(b, le)",
                                                     "decoder_ids": "(b, ld)"},
                         "output": "logits"}
        out["generate"] = {"fn": generate_fn, "inputs": {"encoder_ids": "(b, le)"},
                           "output": "tokens"}
    else:
        def logits_fn(params, inputs):
            return jnp.asarray(model.logits(params, {"decoder_input_tokens": inputs["ids"]}),
                               jnp.float32)

        def generate_fn(params, inputs):
            step_fn, init_cache = model.decode_fns()
            ids = inputs["ids"]
            return decoding.generate(step_fn, init_cache, params, ids, ids != 0,
                                     max_new_tokens, eos_id=eos_id).tokens

        out["logits"] = {"fn": logits_fn, "inputs": {"ids": "(b, l)"}, "output": "logits"}
        out["generate"] = {"fn": generate_fn, "inputs": {"ids": "(b, p)"}, "output": "tokens"}
    return out


SIGNATURES = {"logits": "serving_default", "generate": "generate"}


def write_saved_model(model, params, out_dir: str, *, max_new_tokens: int,
                      eos_id: int | None, platforms: Sequence[str] = DEFAULT_PLATFORMS) -> dict:
    """Writes the orbax-export SavedModel of ``model`` with ``params`` to ``out_dir``;
    returns ``{signature: {'inputs': {name: shape}, 'output': name}}``."""
    import jax
    import numpy as np
    import tensorflow as tf
    from orbax.export import ExportManager, JaxModule, ServingConfig

    fns = serving_functions(model, max_new_tokens=max_new_tokens, eos_id=eos_id)
    params = jax.tree_util.tree_map(np.asarray, jax.device_get(params))
    module = JaxModule(
        params, {k: v["fn"] for k, v in fns.items()},
        trainable=False,
        input_polymorphic_shape={k: dict(v["inputs"]) for k, v in fns.items()},
        jax2tf_kwargs={k: {"native_serialization_platforms": tuple(platforms),
                           "with_gradient": False} for k in fns})

    def config(method: str, spec: dict) -> ServingConfig:
        names = list(spec["inputs"])
        signature = [{n: tf.TensorSpec([None, None], tf.int32, name=n) for n in names}]
        output = spec["output"]
        return ServingConfig(SIGNATURES[method], input_signature=signature, method_key=method,
                             tf_postprocessor=lambda x: {output: x})

    ExportManager(module, [config(k, v) for k, v in fns.items()]).save(out_dir)
    return {SIGNATURES[k]: {"inputs": {n: f"int32 {s}" for n, s in v["inputs"].items()},
                            "output": v["output"]} for k, v in fns.items()}


# ------------------------------------------------------------------------ the command
def _vocabulary_file(vocabulary) -> str | None:
    for attr in ("sentencepiece_model_file", "vocab_file", "path"):
        path = getattr(vocabulary, attr, None)
        if isinstance(path, str) and os.path.isfile(path):
            return path
    return None


def _check_export_dir(export_dir: str) -> str:
    from plug_jax.trainer import checkpointing
    if not export_dir:
        raise ExportError("EXPORT_DIR is empty; fix: --gin.EXPORT_DIR=/path/to/new/folder")
    try:
        return checkpointing.check_output_dir(export_dir, overwrite=False)
    except checkpointing.CheckpointError:
        raise ExportError(f"EXPORT_DIR {os.path.abspath(export_dir)} exists and is not an "
                          f"empty folder; nothing was written: choose a new or empty "
                          f"folder") from None


def _check_servable(model) -> None:
    if not hasattr(model, "decode_fns") or hasattr(model, "rank") or hasattr(
            model, "infer_texts"):
        from plug_jax.families import registry
        formats = registry.get(model.family).formats("export")
        fix = (f"use --to {' or '.join(formats)}" if formats else
               "the family has no export converter either")
        raise ExportError(f"the serving export covers token language models (decoder-only "
                          f"and encoder-decoder); {type(model).__name__} (family "
                          f"{model.family!r}) is not one; {fix}")


def _check_format(model, to: str) -> None:
    from plug_jax.families import registry
    if to == SERVING:
        _check_servable(model)
        return
    spec = registry.get(model.family)
    formats = spec.formats("export")
    if to not in formats:
        raise ExportError(f"family {model.family!r} has no export converter {to!r}; "
                          f"use --to {' or '.join([SERVING] + formats)}")


def _check_restored(params, model_dir: str, step: int) -> None:
    """A partial restore leaves the model's params that the checkpoint lacks as abstract
    ``ShapeDtypeStruct`` s (a checkpoint of another experiment of the same family and
    preset, e.g. pre-training vs. a classifier): refuse them in one line."""
    import jax
    missing = [jax.tree_util.keystr(path) for path, leaf in
               jax.tree_util.tree_flatten_with_path(params)[0]
               if isinstance(leaf, jax.ShapeDtypeStruct)]
    if missing:
        raise ExportError(f"the checkpoint of {model_dir} @ step {step} lacks {len(missing)} "
                          f"params of this model (e.g. {', '.join(missing[:3])}): it was "
                          f"trained with another experiment; fix: pass the gin file "
                          f"MODEL_DIR was trained with")


def export_model(*, model, model_dir: str, export_dir: str, dataset_cfg,
                 to: str = SERVING, max_new_tokens: int = 32,
                 platforms: Sequence[str] = DEFAULT_PLATFORMS, step: int | None = None,
                 weights_dtype: str = "float32") -> dict:
    """Exports the latest (or ``step``) checkpoint of ``model_dir`` to ``export_dir``.

    ``to``: ``'serving'`` (orbax-export SavedModel, see the module docstring) or a format of
    the family's export converters (``plug-convert --to``). ``dataset_cfg``: the task whose
    vocabulary gives the EOS id and the vocabulary file. Returns the manifest
    (``export.json`` for the serving export). ``weights_dtype`` (``bfloat16`` / ``int8``,
    serving exports only): the SavedModel stores the matmul weights in that precision,
    converted from the float checkpoint (docs/export.md)."""
    from plug_jax.layers import quant
    from plug_jax.trainer import loop

    out = _check_export_dir(export_dir)
    _check_format(model, to)
    if int(max_new_tokens) < 1:
        raise ExportError(f"EXPORT_MAX_NEW_TOKENS must be >= 1, got {max_new_tokens}")
    try:
        weights_dtype = quant.check_weights_dtype(weights_dtype)
    except ValueError as e:
        raise ExportError(str(e)) from None
    if weights_dtype != "float32" and to != SERVING:
        raise ExportError(f"--weights_dtype {weights_dtype} applies to serving exports only; "
                          f"--to {to} writes the float weights the format defines; fix: drop "
                          f"--weights_dtype, or export --to {SERVING}")
    platforms = [platforms] if isinstance(platforms, str) else list(platforms)
    bad = [p for p in platforms if p not in PLATFORMS]
    if bad or not platforms:
        raise ExportError(f"EXPORT_PLATFORMS {platforms!r}: choose one or more of "
                          f"{list(PLATFORMS)}")
    one_device = loop.MeshConfig(ici=(1, 1, 1, 1), rules="dp", num_devices=1)
    params, step, _ = loop.load_for_inference(model, model_dir, dataset_cfg, one_device,
                                              step=step)
    _check_restored(params, model_dir, step)
    if to != SERVING:
        return _export_converted(model, params, step, model_dir, out, to,
                                 _vocabulary_entry(model_dir, dataset_cfg))
    import jax
    params = jax.device_get(params)
    params = loop.load_weights_dtype(model, params, dataset_cfg, weights_dtype)
    vocabulary, _ = loop.inference_vocabulary(model_dir, dataset_cfg)
    eos = getattr(vocabulary, "eos_id", None)
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.partial-", dir=parent)
    try:
        signatures = write_saved_model(model, params, os.path.join(tmp, SAVED_MODEL_DIR),
                                       max_new_tokens=int(max_new_tokens), eos_id=eos,
                                       platforms=platforms)
        vocab_file = _vocabulary_file(vocabulary)
        if vocab_file:
            os.makedirs(os.path.join(tmp, VOCAB_DIR))
            shutil.copy(vocab_file, os.path.join(tmp, VOCAB_DIR))
        encdec = bool(getattr(model, "encoder_decoder", False))
        manifest = {
            "format": "orbax-export TF SavedModel (jax2tf native serialization)",
            "family": model.family, "kind": model.kind, "step": int(step),
            "model_dir": os.path.abspath(model_dir),
            "saved_model": SAVED_MODEL_DIR, "signatures": signatures,
            "platforms": list(platforms), "max_new_tokens": int(max_new_tokens),
            "eos_id": eos, "pad_id": 0, "weights_dtype": weights_dtype,
            "vocabulary": (os.path.join(VOCAB_DIR, os.path.basename(vocab_file))
                           if vocab_file else None),
            "vocab_size": int(getattr(vocabulary, "vocab_size", 0) or 0),
            "prompts": ("encoder_ids right-padded with 0 (end them with eos_id as the task "
                        "does); decoding starts from token 0" if encdec else
                        "ids left-padded with 0 for generate; logits: no padding mask "
                        "(pad on the right)"),
            "task": dataset_cfg.mixture_or_task_name,
            "config": model.metadata().get("config"),
            "versions": _versions(),
        }
        with open(os.path.join(tmp, MANIFEST), "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=2, default=str)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's folder is private
        if os.path.isdir(out):
            os.rmdir(out)  # empty (checked above)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(f"{PROG}: {model.family} {model_dir} @ step {step} -> {out} "
          f"(signatures: {', '.join(signatures)}; platforms: {', '.join(platforms)})",
          flush=True)
    return manifest


def _versions() -> dict:
    from importlib import metadata
    out = {}
    for name in ("jax", "jaxlib", "orbax-export", "tensorflow"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def _vocabulary_entry(model_dir: str, dataset_cfg) -> tuple[str, dict] | None:
    """``(file, metadata entry)`` of the vocabulary ``model_dir``'s model reads: the one a
    converted checkpoint carries, else the task's (WordPiece or SentencePiece file)."""
    from plug_jax.convert import vocabulary as carried
    found = carried.carried(model_dir)
    if found is not None:
        return found
    from plug_jax.data.pipeline import task_vocabulary
    vocab = task_vocabulary(dataset_cfg.mixture_or_task_name)
    path = _vocabulary_file(vocab)
    if not path:
        return None
    return path, carried.describe(path, do_lower_case=getattr(vocab, "do_lower_case", True))


def _export_converted(model, params, step: int, model_dir: str, out: str, to: str,
                      vocab: tuple[str, dict] | None = None) -> dict:
    """``plug-convert --to TO`` on the restored params (written as a params checkpoint in a
    temporary folder first: one code path for both commands), carrying ``vocab`` (see
    :func:`_vocabulary_entry`). plug-convert's lines are printed with this command's name."""
    import contextlib
    import io

    import jax

    from plug_jax.convert import cli as convert_cli
    from plug_jax.trainer import checkpointing
    meta = model.metadata()
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.params-", dir=parent)
    params_dir = os.path.join(tmp, "params")
    said_out, said_err = io.StringIO(), io.StringIO()
    existed = os.path.isdir(out)
    try:
        metadata = {"family": model.family, "preset": meta.get("preset"),
                    "scanned": meta.get("scanned"),
                    "source": {"format": "plug_jax", "path": os.path.abspath(model_dir),
                               "step": int(step)}}
        extra = {}
        if vocab is not None:
            metadata["vocabulary"] = vocab[1]
            extra[vocab[1]["file"]] = vocab[0]
        checkpointing.save_params(
            params_dir, jax.device_get(params), config_dict=dataclasses.asdict(model.config),
            metadata=metadata, extra_files=extra)
        with contextlib.redirect_stdout(said_out), contextlib.redirect_stderr(said_err):
            rc = convert_cli.main(["--family", model.family, "--to", to, "--input",
                                   params_dir, "--output", out])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    where = f"{model_dir} @ step {step}"
    for text, stream in ((said_out.getvalue(), sys.stdout), (said_err.getvalue(), sys.stderr)):
        text = text.replace(convert_cli.PROG + ":", PROG + ":").replace(params_dir, where)
        if text:
            print(text, end="", file=stream, flush=True)
    if rc:
        if not existed and os.path.isdir(out) and not os.listdir(out):
            os.rmdir(out)  # plug-convert created it before failing
        raise SystemExit(rc)  # the one error line is printed above
    return {"family": model.family, "step": int(step), "to": to, "output": out}


# ---------------------------------------------------------------------------- CLI
def _check_task_bound() -> None:
    """runs/export.gin reads plug-infer's task (``infer/loop.DatasetConfig``); an experiment
    without runs/infer.gin gets one line instead of gin's traceback."""
    import gin
    try:
        ref = gin.query_parameter("plug_jax.export.export_model.dataset_cfg")
    except ValueError:
        return
    scoped = getattr(ref, "scoped_selector", "")
    if not (isinstance(scoped, str) and scoped.endswith("loop.DatasetConfig")):
        return
    scope = scoped.rpartition("/")[0]
    key = "plug_jax.trainer.loop.DatasetConfig.mixture_or_task_name"
    try:
        gin.query_parameter(f"{scope}/{key}" if scope else key)
    except ValueError:
        raise ExportError(f"no task is bound to {scoped} (runs/export.gin reads plug-infer's "
                          f"task from runs/infer.gin, which this experiment does not "
                          f"include); fix: add --gin_file=runs/infer.gin before the "
                          f"experiment's gin file") from None


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog=PROG, description="Export the latest checkpoint of a trained MODEL_DIR: a "
                               "serving SavedModel (orbax-export) or, with --to, the "
                               "family's foreign checkpoint format.")
    from plug_jax.cli import add_gin_flags
    add_gin_flags(ap)
    ap.add_argument("--to", default=None,
                    help=f"'{SERVING}' (default: orbax-export SavedModel) or an export format "
                         f"of the family's converters (hf, modelscope, alicemind, megatron)")
    from plug_jax.cli import add_weights_dtype_flag
    add_weights_dtype_flag(ap, "(serving exports) ")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    from plug_jax import gin_utils
    from plug_jax.cli import configurable, user_errors
    argv = list(sys.argv[1:] if argv is None else argv)
    bindings, rest = gin_utils.split_gin_flags(argv)
    args = _parser().parse_args(rest)
    search = ([p for p in args.gin_search_paths.split(",") if p]
              if args.gin_search_paths else gin_utils.default_search_paths())
    try:
        sources = gin_utils.parse_gin(args.gin_file, bindings, search,
                                      check_unused=not args.print_config)
        if args.print_config:
            print(sources.format(), flush=True)
            gin_utils.check_unused_macros(sources)
            return 0
        _check_task_bound()
        from plug_jax.trainer import hardware
        # The gin's platform, but no fake CPU devices: the export runs on one device.
        gin_utils.call_with_gin_errors(configurable(hardware.hardware), num_cpu_devices=None)
        kw = {"to": args.to} if args.to else {}
        if args.weights_dtype:
            kw["weights_dtype"] = args.weights_dtype
        gin_utils.call_with_gin_errors(configurable(export_model), **kw)
    except (ExportError, *user_errors()) as e:
        print(f"{PROG}: error: {' '.join(str(e).split())}", file=sys.stderr, flush=True)
        return 2
    except SystemExit as e:  # plug-convert's own one-line error
        return int(e.code or 0)
    return 0


if __name__ == "__main__":  # python -m plug_jax.export: gin binds plug_jax.export's names
    from plug_jax import export as _module
    sys.exit(_module.main())
