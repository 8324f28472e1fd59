"""Logical-to-mesh rule presets, as data.

A rule table is a tuple of ``(logical_name, mesh_axes)`` pairs, where
``mesh_axes`` is ``None`` (replicated), a mesh axis name, or a tuple of mesh axis
names sharded jointly. The same logical name may appear more than once: the
first entry whose mesh axes are still free for that array wins (flax semantics),
so one table serves many mesh shapes.

Presets (chosen in gin by name):

* ``dp``      -- pure data parallelism; every weight replicated.
* ``fsdp``    -- weights sharded over ``fsdp`` along their ``embed`` dimension
                 (ZeRO-3 style); activations' ``embed`` is never FSDP-sharded.
* ``tp``      -- Megatron-style tensor parallelism over ``model``: heads, MLP
                 hidden and vocab sharded; ``embed`` replicated.
* ``fsdp_tp`` -- both of the above.

In every preset the batch is split over ``(data, fsdp, expert)``.
"""
from __future__ import annotations

from typing import Sequence

from plug_jax.partitioning import axes as A

Rules = tuple[tuple[str, object], ...]

_BATCH = ("data", "fsdp", "expert")

# Axes that are never sharded by the presets in this module.
_REPLICATED = (
    A.LAYERS, A.NORM, A.KV, A.RELPOS_BUCKETS, A.PATCH, A.CHANNELS, A.FRAMES,
    A.ACT_LENGTH, A.ACT_KV_LENGTH, A.ACT_EMBED, A.ACT_KV, A.ACT_IMAGE_TOKENS,
    A.ACT_FRAMES,
)


def _replicated(*extra: str) -> Rules:
    return tuple((name, None) for name in _REPLICATED + extra)


DP: Rules = (
    (A.ACT_BATCH, _BATCH),
) + _replicated(
    A.VOCAB, A.EMBED, A.MLP, A.HEADS, A.KV_HEADS, A.JOINED_KV,
    A.ACT_MLP, A.ACT_HEADS, A.ACT_KV_HEADS, A.ACT_VOCAB,
)

FSDP: Rules = (
    (A.ACT_BATCH, _BATCH),
    (A.EMBED, "fsdp"),
) + _replicated(
    A.VOCAB, A.MLP, A.HEADS, A.KV_HEADS, A.JOINED_KV,
    A.ACT_MLP, A.ACT_HEADS, A.ACT_KV_HEADS, A.ACT_VOCAB,
)

TP: Rules = (
    (A.ACT_BATCH, _BATCH),
    (A.VOCAB, "model"),
    (A.MLP, "model"),
    (A.HEADS, "model"),
    (A.KV_HEADS, "model"),
    (A.JOINED_KV, "model"),
    (A.ACT_MLP, "model"),
    (A.ACT_HEADS, "model"),
    (A.ACT_KV_HEADS, "model"),
    (A.ACT_VOCAB, "model"),
) + _replicated(A.EMBED)

FSDP_TP: Rules = (
    (A.ACT_BATCH, _BATCH),
    (A.EMBED, "fsdp"),
    (A.VOCAB, "model"),
    (A.MLP, "model"),
    (A.HEADS, "model"),
    (A.KV_HEADS, "model"),
    (A.JOINED_KV, "model"),
    (A.ACT_MLP, "model"),
    (A.ACT_HEADS, "model"),
    (A.ACT_KV_HEADS, "model"),
    (A.ACT_VOCAB, "model"),
) + _replicated()

PRESETS: dict[str, Rules] = {
    "dp": DP,
    "fsdp": FSDP,
    "tp": TP,
    "fsdp_tp": FSDP_TP,
}


def get_rules(name: str) -> Rules:
    """Returns the rule table of a preset by name."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(
            f"unknown partitioning rule preset {name!r}; choose one of "
            f"{sorted(PRESETS)}") from None


def logical_to_mesh_axes(names: Sequence[str | None], rules: Rules) -> tuple:
    """Maps logical names to mesh axes with first-free-match semantics.

    Returns one entry per dimension: ``None``, a mesh axis name, or a tuple of
    mesh axis names. A logical name with no rule is replicated.
    """
    used: set[str] = set()
    out = []
    for name in names:
        chosen = None
        if name is not None:
            for rule_name, mesh_axes in rules:
                if rule_name != name:
                    continue
                if mesh_axes is None:
                    chosen = None
                    break
                group = (mesh_axes,) if isinstance(mesh_axes, str) else tuple(mesh_axes)
                if used.isdisjoint(group):
                    chosen = mesh_axes
                    used.update(group)
                    break
        out.append(chosen)
    return tuple(out)
