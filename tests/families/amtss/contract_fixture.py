"""Writes tests/families/amtss/testdata/contract_teacher_logits.npz: the teacher-logits file
the contract test's student run reads (FamilySpec experiments' TEACHER_LOGITS). 48 train,
12 validation and 12 test queries; teacher t gives the gold intent a logit of 1 + t / 2 and
every other class 0 (so the teachers differ in margin), computed from the Shop World
queries themselves. ``python tests/families/amtss/contract_fixture.py`` rewrites it."""
import pathlib
import sys

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[3]
PATH = REPO / "tests/families/amtss/testdata/contract_teacher_logits.npz"
SIZES = {"train": 48, "validation": 12, "test": 12}


def fixture_splits():
    from plug_jax.data import shop_world
    langs = shop_world.QUERY_LANGS
    out = {}
    for split, n in SIZES.items():
        label = np.array([shop_world.query_example(0, split, i // 6, langs[i % 6])
                          ["intent_label"] for i in range(n)], np.int32)
        logits = np.zeros((n, len(langs), len(shop_world.INTENTS)), np.float32)
        for t in range(len(langs)):
            logits[np.arange(n), t, label] = 1.0 + t / 2
        out[split] = {"logits": logits, "mask": np.ones((n, len(langs)), np.float32),
                      "label": label, "lang": np.arange(n, dtype=np.int32) % 6}
    return out


def write(path=PATH):
    from plug_jax.families.amtss import logits_file
    return logits_file.write(path, fixture_splits(), ("zh", "en", "de", "fr", "es", "ja"), 5,
                             source="tests/families/amtss/contract_fixture.py")


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    print(write())
