"""The attribute check of the caption controls (plug_jax/metrics/controls.py)."""
import math

from plug_jax.metrics.controls import attribute_accuracy


def test_attribute_accuracy_counts_references_naming_exactly_one_value():
    names = ["hat", "T-shirt", "shirt", "phone case", "red"]
    refs = ["Wool Hat (Pink) for Kids",        # hat
            "Cotton T-shirt in Blue",           # T-shirt (not also "shirt")
            "A phone case and a hat",           # two values: not counted
            "Silk Scarf",                       # none: not counted
            "Leather phone case, black"]        # phone case
    preds = ["cotton hat, pink",                # right
             "linen shirt in blue",             # wrong: shirt, not T-shirt
             "anything",
             "anything",
             "Phone Case (Black)"]              # right, case-insensitive
    acc, n = attribute_accuracy(preds, refs, names)
    assert n == 3 and math.isclose(acc, 2 / 3)
    # whole words: "hatbox" does not name a hat; Chinese has no word boundaries
    assert attribute_accuracy(["a hatbox"], ["a hat"], names) == (0.0, 1)
    assert attribute_accuracy(["红色的帽子"], ["帽子，粉色"], ["帽子", "红色"],
                              whole_words=False) == (1.0, 1)
    acc, n = attribute_accuracy(["x"], ["nothing here"], names)
    assert n == 0 and math.isnan(acc)
