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
