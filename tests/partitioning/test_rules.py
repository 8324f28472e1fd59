"""Rule presets map logical names to the documented mesh axes."""
import pytest

from plug_jax.partitioning import PRESETS, axes, get_rules, logical_to_mesh_axes

BATCH = ("data", "fsdp", "expert")

# What each preset does with the main weight axes (None = replicated).
EXPECTED_WEIGHTS = {
    "dp": {"vocab": None, "embed": None, "mlp": None, "heads": None, "kv_heads": None,
           "kv": None, "layers": None, "norm": None},
    "fsdp": {"vocab": None, "embed": "fsdp", "mlp": None, "heads": None, "kv_heads": None,
             "kv": None, "layers": None, "norm": None},
    "tp": {"vocab": "model", "embed": None, "mlp": "model", "heads": "model",
           "kv_heads": "model", "kv": None, "layers": None, "norm": None},
    "fsdp_tp": {"vocab": "model", "embed": "fsdp", "mlp": "model", "heads": "model",
                "kv_heads": "model", "kv": None, "layers": None, "norm": None},
}


def one(name, rules):
    return logical_to_mesh_axes((name,), rules)[0]


def test_presets_listed():
    assert set(EXPECTED_WEIGHTS) <= set(PRESETS)


@pytest.mark.parametrize("preset", sorted(EXPECTED_WEIGHTS))
def test_weight_axes(preset):
    rules = get_rules(preset)
    for name, expected in EXPECTED_WEIGHTS[preset].items():
        assert one(name, rules) == expected, (preset, name)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_batch_over_three_axes_and_act_embed_never_sharded(preset):
    rules = get_rules(preset)
    assert tuple(one(axes.ACT_BATCH, rules)) == BATCH
    assert one(axes.ACT_EMBED, rules) is None
    assert one(axes.ACT_LENGTH, rules) is None
    # The activation embed stays replicated even next to a sharded weight embed.
    spec = logical_to_mesh_axes(("act_batch", "act_length", "act_embed"), rules)
    assert spec[1:] == (None, None)


@pytest.mark.parametrize("preset", ["tp", "fsdp_tp"])
def test_tp_activation_axes(preset):
    rules = get_rules(preset)
    assert one("act_mlp", rules) == "model"
    assert one("act_heads", rules) == "model"
    assert one("act_vocab", rules) == "model"


@pytest.mark.parametrize("preset", ["dp", "fsdp"])
def test_no_model_axis_without_tp(preset):
    rules = get_rules(preset)
    for name in axes.ALL_AXES:
        entry = one(name, rules)
        group = () if entry is None else ((entry,) if isinstance(entry, str) else entry)
        assert "model" not in group, name


def test_fsdp_tp_weight_tensors():
    rules = get_rules("fsdp_tp")
    assert logical_to_mesh_axes(("vocab", "embed"), rules) == ("model", "fsdp")
    assert logical_to_mesh_axes(("embed", "mlp"), rules) == ("fsdp", "model")
    assert logical_to_mesh_axes(("layers", "embed", "heads", "kv"), rules) == (
        None, "fsdp", "model", None)
    assert logical_to_mesh_axes((None, "embed"), rules) == (None, "fsdp")


def test_unknown_names_replicated_and_first_free_match():
    rules = (("a", "model"), ("b", "model"), ("b", "fsdp"), ("c", None), ("c", "data"))
    assert logical_to_mesh_axes(("zzz",), rules) == (None,)
    # 'model' is taken by 'a', so 'b' falls through to its next rule.
    assert logical_to_mesh_axes(("a", "b"), rules) == ("model", "fsdp")
    assert logical_to_mesh_axes(("b", "b"), rules) == ("model", "fsdp")
    # An explicit None rule replicates and stops the search.
    assert logical_to_mesh_axes(("c",), rules) == (None,)


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown partitioning rule preset 'nope'"):
        get_rules("nope")


# ------------------------------------------------------------------- MoE names

MOE_WEIGHT = ("expert", "expert_embed", "expert_mlp")
MOE_ACT = ("act_expert", "act_expert_group", "act_capacity", "act_embed")
EXPECTED_MOE = {
    # preset: (expert weight [E, d, h], dispatched activation [E, G, C, d])
    "dp": ((None, None, None), (None, BATCH, None, None)),
    "fsdp": ((None, "fsdp", None), (None, BATCH, None, None)),
    "tp": ((None, None, "model"), (None, BATCH, None, None)),
    "fsdp_tp": ((None, "fsdp", "model"), (None, BATCH, None, None)),
    "ep_fsdp_tp": (("expert", "fsdp", "model"), ("expert", ("data", "fsdp"), None, None)),
    "ep_dp": (("expert", None, None), ("expert", ("data", "fsdp"), None, None)),
}


def test_ep_presets_registered():
    assert {"ep_fsdp_tp", "ep_dp"} <= set(PRESETS)
    assert set(EXPECTED_MOE) == set(PRESETS)


@pytest.mark.parametrize("preset", sorted(EXPECTED_MOE))
def test_moe_axes(preset):
    rules = get_rules(preset)
    weight, act = EXPECTED_MOE[preset]
    assert logical_to_mesh_axes(MOE_WEIGHT, rules) == weight
    assert logical_to_mesh_axes(("expert", "expert_mlp", "expert_embed"), rules) == (
        weight[0], weight[2], weight[1])
    assert logical_to_mesh_axes(MOE_ACT, rules) == act
    # Routing groups before dispatch follow the batch; expert_embed follows embed.
    assert tuple(one("act_expert_group", rules)) == BATCH
    assert one("expert_embed", rules) == one("embed", rules)
    assert one("expert_mlp", rules) == one("mlp", rules)


@pytest.mark.parametrize("base, ep", [("fsdp_tp", "ep_fsdp_tp"), ("dp", "ep_dp")])
def test_ep_presets_only_add_expert_parallelism(base, ep):
    base_rules, ep_rules = get_rules(base), get_rules(ep)
    for name in axes.ALL_AXES:
        if name in ("expert", "act_expert"):
            assert one(name, base_rules) is None
            assert one(name, ep_rules) == "expert"
        else:
            assert one(name, ep_rules) == one(name, base_rules), name


def test_every_axis_has_a_rule_in_every_preset():
    for preset, rules in PRESETS.items():
        named = {r[0] for r in rules}
        missing = [a for a in axes.ALL_AXES if a not in named]
        assert not missing, (preset, missing)
