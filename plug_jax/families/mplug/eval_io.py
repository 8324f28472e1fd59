"""Reading a trained mPLUG back for the control scripts: the eval batches of a split, and the
model and parameters of an experiment's ``MODEL_DIR``. Shared by
:mod:`plug_jax.families.mplug.controls` and :mod:`plug_jax.families.mplug.grounding_eval`
(its own module so that neither of those imports the other)."""
from __future__ import annotations

import dataclasses

import jax
import numpy as np


def batches(dataset_cfg, split: str, max_examples: int | None):
    """The eval batches of ``dataset_cfg`` on ``split`` as numpy dicts, in order, through
    the pipeline the trainer uses (no shuffle, no repeat); stops once ``max_examples``
    rows were yielded (``None``: the whole split)."""
    from plug_jax.trainer import loop
    cfg = dataclasses.replace(dataset_cfg, split=split)
    seen = 0
    for b in loop._batch_iterator(cfg, repeat=False, shuffle=False):
        b = {k: np.asarray(v) for k, v in b.items()}
        yield b
        seen += len(b["decoder_target_tokens"])
        if max_examples is not None and seen >= max_examples:
            return


def load_checkpoint(argv, description: str):
    """``(model, params, dataset_cfg, split)`` from gin flags (``--gin_file``,
    ``--gin.NAME=VALUE``) and ``--split``: the experiment's model restored from its
    ``MODEL_DIR`` (the command lines of ``controls`` and ``grounding_eval``)."""
    import argparse
    import sys

    import gin

    from plug_jax import gin_utils
    from plug_jax.cli import add_gin_flags
    from plug_jax.trainer import loop
    bindings, rest = gin_utils.split_gin_flags(sys.argv[1:] if argv is None else argv)
    ap = add_gin_flags(argparse.ArgumentParser(description=description))
    ap.add_argument("--split", default="validation")
    a = ap.parse_args(rest)
    search = a.gin_search_paths.split(",") if a.gin_search_paths else None
    gin_utils.parse_gin(a.gin_file, bindings, search)
    model = gin.query_parameter("%MODEL").scoped_configurable_fn()
    model_dir = gin.query_parameter("%MODEL_DIR")
    data = loop.DatasetConfig(gin.query_parameter("%MIXTURE_OR_TASK_NAME"),
                              gin.query_parameter("%TASK_FEATURE_LENGTHS"), batch_size=64,
                              converter=gin.query_parameter("%FEATURE_CONVERTER"))
    params, step, _ = loop.load_for_inference(model, model_dir, data,
                                              loop.MeshConfig(rules="dp"))
    print(f"{model_dir} @ step {step}")
    return model, jax.device_get(params), data, a.split
