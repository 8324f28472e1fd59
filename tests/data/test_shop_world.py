"""Shop World text generator: determinism, compositional splits, consistency of the text."""
import subprocess
import sys

import pytest

from plug_jax.data import shop_world as sw
from plug_jax.data.shop_world import world


def test_world_tables_meet_minimum_sizes():
    assert len(sw.CATEGORIES) >= 12 and len(sw.COLOURS) >= 8 and len(sw.MATERIALS) >= 6
    assert len(sw.BRANDS) >= 20
    keys = {c.key for c in sw.CATEGORIES}
    assert {"dress", "tshirt", "sneakers", "backpack", "mug", "lamp", "phone_case", "hat",
            "watch", "sofa", "kettle", "umbrella"} <= keys
    for table in (sw.CATEGORIES, sw.COLOURS, sw.MATERIALS, sw.STYLES, sw.AUDIENCES,
                  sw.SEASONS, sw.BRANDS):
        assert len({t.key for t in table}) == len(table)
        for t in table:
            assert t.name.zh and t.name.en
    for c in sw.CATEGORIES:
        assert set(c.materials) <= set(world.MATERIAL_BY_KEY)


def test_same_arguments_same_example_different_index_different():
    for split in sw.SPLITS:
        for lang in sw.LANGS:
            a = [sw.text_example(3, split, i, lang) for i in range(50)]
            b = [sw.text_example(3, split, i, lang) for i in range(50)]
            assert a == b
            docs = [sw.lm_document(3, split, i, lang) for i in range(200)]
            assert len(set(docs)) == len(docs)
    assert sw.product(0, "train", 7) == sw.product(0, "train", 7)
    assert sw.lm_document(0, "train", 7) != sw.lm_document(1, "train", 7)
    assert sw.lm_document(0, "train", 7) != sw.lm_document(0, "validation", 7)


def test_examples_are_identical_in_a_fresh_process():
    code = ("from plug_jax.data import shop_world as sw;"
            "print(repr([sw.lm_document(5, s, i, l) for s in sw.SPLITS for i in (0, 9, 12345)"
            " for l in sw.LANGS]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={"PYTHONHASHSEED": "123", "PATH": ""}).stdout
    here = [sw.lm_document(5, s, i, l) for s in sw.SPLITS for i in (0, 9, 12345)
            for l in sw.LANGS]
    assert out.strip() == repr(here)


def test_importing_shop_world_does_not_import_tensorflow():
    code = ("import sys, plug_jax.data, plug_jax.data.shop_world as sw; sw.lm_document(0, "
            "'train', 0); bad = [m for m in ('tensorflow', 'seqio') if m in sys.modules];"
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_heldout_combinations_cover_every_attribute_in_train():
    held = sw.heldout_combinations()
    train = set(sw.TRAIN_COMBINATIONS)
    assert held and not held & train
    assert held | train == set(sw.ALL_COMBINATIONS)
    # Every colour, material, category, (category, colour) and (category, material) pair
    # of a held-out combination is seen in training: only the triple is new.
    for cat, col, mat in held:
        assert any(c == cat and k == col for c, k, _ in train)
        assert any(c == cat and m == mat for c, _, m in train)
        assert any(k == col and m == mat for _, k, m in train) or sum(
            mat in c.materials for c in sw.CATEGORIES) == 1


def test_train_and_test_combinations_are_disjoint():
    held = sw.heldout_combinations()
    train = {sw.product(0, "train", i).combination for i in range(3000)}
    valid = {sw.product(0, "validation", i).combination for i in range(1000)}
    test = {sw.product(0, "test", i).combination for i in range(1000)}
    assert not train & held and not valid & held
    assert test <= held and not test & train
    assert len(test) > len(held) // 2  # the test split spreads over the held-out set


@pytest.mark.parametrize("lang", sw.LANGS)
def test_title_and_description_state_the_products_attributes(lang):
    for split in sw.SPLITS:
        for i in range(150):
            ex = sw.text_example(1, split, i, lang)
            p = sw.product(1, split, i)
            names = {k: v.lower() for k, v in p.names(lang).items()}
            title, desc = ex["title"].lower(), ex["description"].lower()
            for key in ("brand", "colour", "material", "category"):
                assert names[key] in title, (key, title)
            for key in ("brand", "colour", "material", "category", "style", "audience"):
                assert names[key] in desc, (key, desc)
            season = world.SEASON_BY_KEY[p.season]
            assert (season.name.zh if lang == "zh" else season.long.en) in desc
            assert p.size_info.clause.get(lang) in ex["description"]
            assert str(p.price) in desc


def test_descriptions_follow_the_discourse_order_and_are_parallel():
    slots = set()
    for i in range(300):
        zh = sw.text_example(0, "train", i, "zh")
        en = sw.text_example(0, "train", i, "en")
        order = [sw.DESCRIPTION_SLOTS.index(s) for s in zh["description_slots"]]
        assert order == sorted(order) and len(order) >= 5
        assert zh["description_slots"] == en["description_slots"]
        assert len(zh["description_sentences"]) == len(zh["description_slots"])
        assert "".join(zh["description_sentences"]) == zh["description"]
        assert " ".join(en["description_sentences"]) == en["description"]
        assert zh["sentiment"] == en["sentiment"]
        slots.add(zh["description_slots"])
    assert len(slots) == 2  # with and without the optional detail sentence


@pytest.mark.parametrize("lang", sw.LANGS)
def test_review_text_matches_its_sentiment_label(lang):
    labels = []
    for i in range(600):
        ex = sw.text_example(2, "train", i, lang)
        text = ex["review"].lower()
        own = sw.REVIEW_CUES[lang][ex["sentiment"]]
        other = sw.REVIEW_CUES[lang]["negative" if ex["label"] else "positive"]
        assert any(c in text for c in own), text
        assert not any(c in text for c in other), text
        assert ex["sentiment"] == sw.SENTIMENTS[ex["label"]]
        assert (ex["rating"] >= 4) == bool(ex["label"])
        labels.append(ex["label"])
    assert 0.4 < sum(labels) / len(labels) < 0.6


def test_lm_document_format_and_prompts():
    ex = sw.text_example(0, "train", 4, "zh")
    doc = sw.lm_document(0, "train", 4, "zh")
    assert doc.split("\n") == [ex["title"], ex["description"], "买家评价：" + ex["review"]]
    prompts = sw.description_prompts(lang="zh")
    assert prompts == sw.description_prompts(lang="zh") and len(set(prompts)) == len(prompts)
    for i, prompt in enumerate(prompts):
        prompt_again, reference = sw.description_prompt(0, "test", i, "zh")
        assert prompt == prompt_again and reference.startswith(prompt)
        assert prompt.count("\n") == 1
    assert all(p.count(" ") >= 3 for p in sw.description_prompts(lang="en", num=2))


def test_kinds_have_independent_streams():
    # Rendering a subset of kinds gives the same text as rendering all of them.
    full = sw.text_example(0, "train", 11, "zh")
    only_review = sw.text_example(0, "train", 11, "zh", kinds=("review",))
    assert only_review["review"] == full["review"]


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="split"):
        sw.product(0, "dev", 0)
    with pytest.raises(ValueError, match="language"):
        sw.lm_document(0, "train", 0, lang="fr")
    with pytest.raises(ValueError, match="index"):
        sw.product(0, "train", -1)
    with pytest.raises(ValueError, match="kind"):
        sw.text_example(0, "train", 0, kinds=("poem",))
