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
* ``ep_fsdp_tp`` -- ``fsdp_tp`` plus expert parallelism: MoE expert weights and
                 the expert dimension of dispatched activations over ``expert``.
* ``ep_dp``   -- ``dp`` plus expert parallelism over ``expert``.

MoE names (see docs/moe.md): expert weights are ``(expert, expert_embed,
expert_mlp)``; ``expert_embed`` follows ``embed`` (``fsdp`` in the FSDP presets)
and ``expert_mlp`` follows ``mlp`` (``model`` in the TP presets). ``expert`` and
``act_expert`` are replicated except in the ``ep_*`` presets. ``act_expert_group``
(routing groups) follows the batch, ``(data, fsdp, expert)``, and falls back to
``(data, fsdp)`` when ``expert`` already holds the expert dimension of the same
array; ``act_capacity`` is replicated.

In every preset the batch is split over ``(data, fsdp, expert)``.
"""
from __future__ import annotations

from typing import Sequence

from plug_jax.partitioning import axes as A

Rules = tuple[tuple[str, object], ...]

_BATCH = ("data", "fsdp", "expert")

# Routing groups of MoE dispatch follow the batch; when 'expert' already holds
# the expert dimension of the same array (EP presets) they fall back to the rest.
_EXPERT_GROUP: Rules = (
    (A.ACT_EXPERT_GROUP, _BATCH),
    (A.ACT_EXPERT_GROUP, ("data", "fsdp")),
)

# Axes that are never sharded by the presets in this module.
_REPLICATED = (
    A.LAYERS, A.NORM, A.KV, A.RELPOS_BUCKETS, A.PATCH, A.CHANNELS, A.FRAMES,
    A.ACT_LENGTH, A.ACT_KV_LENGTH, A.ACT_EMBED, A.ACT_KV, A.ACT_IMAGE_TOKENS,
    A.ACT_FRAMES, A.ACT_CAPACITY,
)


def _replicated(*extra: str) -> Rules:
    return tuple((name, None) for name in _REPLICATED + extra)


DP: Rules = (
    (A.ACT_BATCH, _BATCH),
) + _EXPERT_GROUP + _replicated(
    A.VOCAB, A.EMBED, A.MLP, A.HEADS, A.KV_HEADS, A.JOINED_KV,
    A.ACT_MLP, A.ACT_HEADS, A.ACT_KV_HEADS, A.ACT_VOCAB,
    A.EXPERT, A.EXPERT_EMBED, A.EXPERT_MLP, A.ACT_EXPERT,
)

FSDP: Rules = (
    (A.ACT_BATCH, _BATCH),
    (A.EMBED, "fsdp"),
    (A.EXPERT_EMBED, "fsdp"),
) + _EXPERT_GROUP + _replicated(
    A.VOCAB, A.MLP, A.HEADS, A.KV_HEADS, A.JOINED_KV,
    A.ACT_MLP, A.ACT_HEADS, A.ACT_KV_HEADS, A.ACT_VOCAB,
    A.EXPERT, A.EXPERT_MLP, A.ACT_EXPERT,
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
    (A.EXPERT_MLP, "model"),
) + _EXPERT_GROUP + _replicated(A.EMBED, A.EXPERT, A.EXPERT_EMBED, A.ACT_EXPERT)

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
    (A.EXPERT_EMBED, "fsdp"),
    (A.EXPERT_MLP, "model"),
) + _EXPERT_GROUP + _replicated(A.EXPERT, A.ACT_EXPERT)


def _with_expert_parallelism(rules: Rules) -> Rules:
    """``rules`` with ``expert``/``act_expert`` over mesh ``expert`` (first match wins)."""
    return ((A.EXPERT, "expert"), (A.ACT_EXPERT, "expert")) + tuple(
        r for r in rules if r[0] not in (A.EXPERT, A.ACT_EXPERT))


EP_FSDP_TP: Rules = _with_expert_parallelism(FSDP_TP)
EP_DP: Rules = _with_expert_parallelism(DP)

PRESETS: dict[str, Rules] = {
    "dp": DP,
    "fsdp": FSDP,
    "tp": TP,
    "fsdp_tp": FSDP_TP,
    "ep_fsdp_tp": EP_FSDP_TP,
    "ep_dp": EP_DP,
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
