"""What every task model shares: the family lookup, metadata, loss helpers, MoE sums.

A task model (t5x's "model") is a frozen dataclass (hashable: a static argument of jitted
functions) around a family network. The trainer, plug-plan and plug-infer use::

    model.init_params(rng, batch)                      -> boxed params (use the partitioner)
    model.loss_sums(params, batch, rng, deterministic) -> dict of float32 sums: ``loss``,
        ``weight`` (its denominator), ``correct``, ``z_loss``, and metric groups
        ``<name>_{loss,correct,weight}`` that the step reports with their own denominators
    model.flops_per_step(batch, lengths) (or flops_per_token(seq_len)) -> training FLOPs
    model.metadata()                                   -> what a checkpoint records
    model.family, model.config, model.kind             (kind: the FamilySpec.networks entry)

and, by kind, ``decode_fns()`` (generation), ``encode(params, features)`` (encoder-decoders),
``infer_texts(...)`` (encoders). ``model.module`` is the family's network for ``kind``, built
through the family registry (:func:`family_spec`), never by a family name written here.
"""
from __future__ import annotations

import dataclasses
import re

import jax
import jax.numpy as jnp


def family_spec(name: str):
    """The registered family ``name`` (:mod:`plug_jax.families.registry`)."""
    from plug_jax.families import registry
    return registry.get(name)


def encoder_families() -> list[str]:
    from plug_jax.families import registry
    return [s.name for s in registry.specs() if "encoder" in s.networks]


def model_metadata(model) -> dict:
    """What a checkpoint records about the model that wrote it (every task model)."""
    cfg = model.config
    return {
        "family": model.family,
        "preset": getattr(cfg, "preset", "custom"),
        "scanned": bool(getattr(cfg, "scan_layers", False)),
        "dtype": str(getattr(cfg, "dtype", "")),
        "param_dtype": str(getattr(cfg, "param_dtype", "")),
        "config": dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else repr(cfg),
    }


def token_ce(logits, targets, weights):
    """Per-token cross-entropy and correctness, both multiplied by ``weights`` (float32)."""
    logp = jax.nn.log_softmax(jnp.asarray(logits, jnp.float32), axis=-1)
    targets = jnp.asarray(targets, jnp.int32)
    nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    correct = (jnp.argmax(logp, axis=-1) == targets).astype(jnp.float32)
    w = jnp.asarray(weights, jnp.float32)
    return nll * w, correct * w


# Flax collections that MoE layers sow into (``MoeLayer``): auxiliary losses and routing
# statistics, one entry per MoE layer.
SOWN_COLLECTIONS = ("aux_loss", "moe_metrics")


def _natural_key(path: tuple) -> tuple:
    out = []
    for part in path:
        name = str(getattr(part, "key", getattr(part, "idx", part)))
        out.append(tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)))
    return tuple(out)


def collect_sown(tree) -> dict[str, jax.Array]:
    """``{leaf name: [num_layers, ...] array}`` from a sown collection, in layer order.

    Values sown inside a scanned layer stack already carry a leading layers axis; values of
    an unrolled stack (``layers_0``, ``layers_1``, ...) are stacked here in numeric order.
    """
    by_name: dict[str, list] = {}
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    for path, value in sorted(leaves, key=lambda pv: _natural_key(pv[0])):
        names = [str(p.key) for p in path if hasattr(p, "key")]
        value = jnp.asarray(value, jnp.float32)
        if "layers" not in names:  # unscanned: one layer's value
            value = value[None]
        by_name.setdefault(names[-1], []).append(value)
    return {n: jnp.concatenate(vs, axis=0) for n, vs in by_name.items()}


def add_moe_sums(sums: dict, sown: dict) -> dict:
    """Adds the sown MoE values to cross-entropy ``sums``, weighted by ``sums['weight']``
    so sums over microbatches and eval batches stay additive: ``aux_loss/<name>`` (summed
    over the MoE layers; the train step adds it with its factor) and per-layer ``moe/<name>``
    (``[moe_layers]``; tokens per expert become each expert's share, ``[moe_layers, E]``)."""
    w = sums["weight"]
    for name, per_layer in collect_sown(sown.get("aux_loss", {})).items():
        sums[f"aux_loss/{name}"] = jnp.sum(per_layer) * w
        sums[f"moe/{name}"] = per_layer * w
    for name, per_layer in collect_sown(sown.get("moe_metrics", {})).items():
        if per_layer.ndim == 2:  # counts per expert -> share of the layer's assignments
            per_layer = per_layer / jnp.maximum(per_layer.sum(-1, keepdims=True), 1.0)
        sums[f"moe/{name}"] = per_layer * w
    return sums


def count_params(params) -> int:
    from flax import linen as nn
    return int(sum(x.size for x in jax.tree_util.tree_leaves(nn.unbox(params))))
