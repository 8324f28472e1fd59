"""Shop World text kinds beyond title/description/review: attribute QA, dialogues, glossary,
knowledge triples and multilingual shopping-intent queries."""
import collections
import hashlib
import subprocess
import sys

import pytest

from plug_jax.data import shop_world as sw
from plug_jax.data.shop_world import dialogue, glossary_terms, queries, triples, world

NEW_KINDS = ("attribute_qa", "dialogue", "glossary", "triples")


def _ex(split, i, lang, kind, seed=0):
    return sw.text_example(seed, split, i, lang, kinds=(kind,))


def test_new_kinds_are_registered_and_deterministic():
    for kind in NEW_KINDS + ("query",):
        assert kind in sw.KINDS
    for kind in NEW_KINDS:
        for lang in sw.LANGS:
            a = [_ex(s, i, lang, kind, seed=4) for s in sw.SPLITS for i in range(15)]
            b = [_ex(s, i, lang, kind, seed=4) for s in sw.SPLITS for i in range(15)]
            assert a == b, kind
    for lang in sw.QUERY_LANGS:
        assert ([sw.query_example(4, "train", i, lang) for i in range(30)]
                == [sw.query_example(4, "train", i, lang) for i in range(30)])
    dialogues = {_ex("train", i, "zh", "dialogue")["dialogue_text"] for i in range(60)}
    assert len(dialogues) == 60
    assert _ex("train", 3, "en", "attribute_qa", seed=0) != _ex("train", 3, "en",
                                                                  "attribute_qa", seed=1)


def test_new_kinds_are_identical_in_a_fresh_process():
    code = ("from plug_jax.data import shop_world as sw;"
            "print(repr([sw.text_example(5, s, i, l, kinds=('dialogue', 'triples'))"
            " for s in sw.SPLITS for i in (0, 77) for l in sw.LANGS]"
            " + [sw.query_example(5, 'test', i, l) for i in (0, 3) for l in sw.QUERY_LANGS]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={"PYTHONHASHSEED": "321", "PATH": ""}).stdout
    here = ([sw.text_example(5, s, i, l, kinds=("dialogue", "triples"))
             for s in sw.SPLITS for i in (0, 77) for l in sw.LANGS]
            + [sw.query_example(5, "test", i, l) for i in (0, 3) for l in sw.QUERY_LANGS])
    assert out.strip() == repr(here)


def test_existing_kinds_are_unchanged():
    # Golden hash of title/description/review examples, computed before the new kinds existed.
    docs = [sw.text_example(7, s, i, l) for s in sw.SPLITS for i in (0, 1, 2, 99, 4321)
            for l in sw.LANGS]
    digest = hashlib.sha256(repr(docs).encode()).hexdigest()
    assert digest == "f1efe2f76725a3d41508528df4899f4863bda16e2612b7cd14d7bc74e16fc207"
    assert sw.DEFAULT_KINDS == ("title", "description", "review")
    assert not {"qa_pairs", "dialogue_turns", "triples", "query"} & set(docs[0])


def test_attribute_qa_is_parallel_and_copies_answers_from_the_product():
    seen = set()
    for split in sw.SPLITS:
        for i in range(80):
            zh = _ex(split, i, "zh", "attribute_qa")
            en = _ex(split, i, "en", "attribute_qa")
            p = sw.product(0, split, i)
            assert zh["qa_attributes"] == en["qa_attributes"]
            assert 4 <= len(zh["qa_pairs"]) <= 6
            assert len(set(zh["qa_attributes"])) == len(zh["qa_attributes"])
            for ex, lang in ((zh, "zh"), (en, "en")):
                for qa in ex["qa_pairs"]:
                    attr = qa["attribute"]
                    assert qa["question"] and qa["question"].endswith(("？", "?"))
                    if attr == "price":
                        assert str(p.price) in qa["answer"]
                    else:
                        assert qa["answer"] == p.names(lang)[attr]
                    assert qa["answer"] == sw.qa_answer(p, attr, lang)
            seen.update(zh["qa_attributes"])
    assert seen == set(sw.QA_ATTRIBUTES)


def test_dialogue_structure_is_parallel_and_uses_retrieved_passages():
    turn_counts, gold_positions, passage_counts = set(), set(), set()
    for split in sw.SPLITS:
        for i in range(60):
            zh = _ex(split, i, "zh", "dialogue")
            en = _ex(split, i, "en", "dialogue")
            own_desc = {l: sw.text_example(0, split, i, l, kinds=("description",))["description"]
                        for l in sw.LANGS}
            for ex, lang in ((zh, "zh"), (en, "en")):
                turns = ex["dialogue_turns"]
                assert 3 <= len(turns) <= 6
                speakers = [t["speaker"] for t in turns]
                assert speakers[-1] == "assistant"
                assert all(a != b for a, b in zip(speakers, speakers[1:]))  # alternate
                passages = ex["dialogue_passages"]
                assert 2 <= len(passages) <= 4
                ids = [q["product_id"] for q in passages]
                assert len(set(ids)) == len(ids)
                assert all(x.startswith(f"sw0-{split}-") for x in ids)
                gold = passages[ex["dialogue_gold_passage"]]
                assert gold["product_id"] == f"sw0-{split}-{i}"
                assert gold["text"] == own_desc[lang]
                for q in passages:
                    if q is not gold:
                        j = int(q["product_id"].rsplit("-", 1)[1])
                        other = sw.text_example(0, split, j, lang, kinds=("description",))
                        assert q["text"] == other["description"]
                assert len(ex["dialogue_persona"]) == dialogue.PERSONA_SIZE
                assert ex["dialogue_text"] == sw.format_dialogue(turns, lang)
            assert [t["speaker"] for t in zh["dialogue_turns"]] == [
                t["speaker"] for t in en["dialogue_turns"]]
            assert [t["attributes"] for t in zh["dialogue_turns"]] == [
                t["attributes"] for t in en["dialogue_turns"]]
            assert zh["dialogue_gold_passage"] == en["dialogue_gold_passage"]
            assert zh["dialogue_profile"]["budget"] == en["dialogue_profile"]["budget"]
            assert zh["dialogue_profile"]["budget"] > sw.product(0, split, i).price
            turn_counts.add(len(zh["dialogue_turns"]))
            gold_positions.add(zh["dialogue_gold_passage"])
            passage_counts.add(len(zh["dialogue_passages"]))
    assert turn_counts == {3, 4, 5, 6}
    assert gold_positions == {0, 1, 2, 3} and passage_counts == {2, 3, 4}


@pytest.mark.parametrize("lang", sw.LANGS)
def test_dialogue_assistant_replies_mention_the_products_attributes(lang):
    for i in range(120):
        ex = _ex("validation", i, lang, "dialogue")
        p = sw.product(0, "validation", i)
        names = {k: v.lower() for k, v in p.names(lang).items()}
        names["price"] = str(p.price)
        names["season"] = world.SEASON_BY_KEY[p.season].long.get(lang).lower()
        gold = ex["dialogue_passages"][ex["dialogue_gold_passage"]]["text"]
        replies = [t for t in ex["dialogue_turns"]
                   if t["speaker"] == "assistant" and t["passage"] is not None]
        assert replies
        for t in replies:
            assert t["passage"] == ex["dialogue_gold_passage"]
            reply = t["text"].lower()
            for attr in t["attributes"]:
                if attr == "season" and lang == "zh":
                    assert world.SEASON_BY_KEY[p.season].name.zh in t["text"]
                else:
                    assert names[attr] in reply, (attr, t["text"])
            quoted = t["text"].split("“", 1)[1].rstrip("”")
            assert quoted in gold  # the quoted sentence comes from the product's own passage
        assert names["category"] in ex["dialogue_turns"][
            1 if ex["dialogue_turns"][0]["speaker"] == "assistant" else 0]["text"].lower()


def test_glossary_has_150_unique_parallel_entries():
    zh, en = sw.glossary("zh"), sw.glossary("en")
    assert len(zh) == len(en) >= 150
    for entries in (zh, en):
        terms = [e["term"].lower() for e in entries]
        assert len(set(terms)) == len(terms)
        assert all(e["term"] and e["definition"] for e in entries)
    assert [(e["type"], e["key"]) for e in zh] == [(e["type"], e["key"]) for e in en]
    assert {e["type"] for e in zh} == set(glossary_terms.ENTRY_TYPES)
    with pytest.raises(ValueError, match="language"):
        sw.glossary("fr")


@pytest.mark.parametrize("lang", sw.LANGS)
def test_glossary_kind_returns_entries_with_their_description_spans(lang):
    definitions = {e["term"]: e["definition"] for e in sw.glossary(lang)}
    for split in sw.SPLITS:
        for i in range(40):
            ex = sw.text_example(0, split, i, lang, kinds=("description", "glossary"))
            p = sw.product(0, split, i)
            text = ex["glossary_text"]
            assert text == ex["description"]
            entries = ex["glossary_entries"]
            for e in entries:
                assert text[e["start"]:e["end"]].lower() == e["term"].lower()
                assert definitions[e["term"]] == e["definition"]
            assert [e["start"] for e in entries] == sorted(e["start"] for e in entries)
            keys = {(e["type"], e["key"]) for e in entries}
            for type_, key in (("category", p.category), ("colour", p.colour),
                               ("material", p.material), ("style", p.style),
                               ("audience", p.audience)):
                assert (type_, key) in keys, (type_, key, text)


@pytest.mark.parametrize("lang", sw.LANGS)
def test_triples_are_aligned_to_spans_and_match_the_product(lang):
    for split in sw.SPLITS:
        for i in range(100):
            ex = sw.text_example(0, split, i, lang, kinds=("title", "description", "triples"))
            p = sw.product(0, split, i)
            assert ex["triples_text"] == ex["description"] and ex["triples_title"] == ex["title"]
            got = ex["triples"]
            assert tuple(t["relation"] for t in got) == sw.RELATIONS
            spans = []
            for t in got:
                src = ex["triples_text"] if t["source"] == "description" else ex["title"]
                assert src[t["start"]:t["end"]] == t["object"]
                assert t["subject"] == p.product_id
                field = triples.RELATION_SPECS[t["relation"]][0]
                assert t["object_key"] == getattr(p, field)
                surfaces = {s.lower() for s in triples.object_surfaces(p, t["relation"], lang)}
                assert t["object"].lower() in surfaces
                if field in ("category", "colour", "material", "brand", "style", "audience"):
                    assert t["object"].lower() == p.names(lang)[field].lower()
                if t["source"] == "description":
                    spans.append((t["start"], t["end"]))
            assert len(spans) == len(got)  # every triple is stated by the description
            spans.sort()
            assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))  # no overlaps


def test_queries_cover_every_language_and_balance_intents():
    assert len(sw.QUERY_LANGS) >= 5 and {"zh", "en"} <= set(sw.QUERY_LANGS)
    assert len(sw.INTENTS) >= 5
    for table in (queries.CATEGORY_NAMES, queries.COLOUR_NAMES, queries.MATERIAL_NAMES):
        assert len(table) >= 3
    for lang in ("de", "fr", "es", "ja"):
        assert set(queries.CATEGORY_NAMES[lang]) == set(world.CATEGORY_BY_KEY)
        assert set(queries.COLOUR_NAMES[lang]) == set(world.COLOUR_BY_KEY)
        assert set(queries.MATERIAL_NAMES[lang]) == set(world.MATERIAL_BY_KEY)
    counts = collections.Counter()
    for i in range(2000):
        ex = sw.query_example(0, "train", i, "en")
        counts[ex["intent"]] += 1
        assert sw.INTENTS[ex["intent_label"]] == ex["intent"]
        assert ex["category_label"] == [c.key for c in sw.CATEGORIES].index(ex["category"])
    assert set(counts) == set(sw.INTENTS)
    for n in counts.values():
        assert 0.7 * 2000 / len(sw.INTENTS) < n < 1.3 * 2000 / len(sw.INTENTS), counts
    for i in range(60):
        per_lang = [sw.query_example(0, "test", i, lang) for lang in sw.QUERY_LANGS]
        assert len({q["query"] for q in per_lang}) == len(sw.QUERY_LANGS)
        assert len({(q["intent"], q["category_label"]) for q in per_lang}) == 1  # parallel
        for q in per_lang:
            assert q["query"] and q["lang"] in sw.QUERY_LANGS
            assert sw.query_names(q["lang"], "category", q["category"]) in q["query"]
            assert q["query_slots"]["cat"] == sw.query_names(q["lang"], "category",
                                                             q["category"])
            for value in q["query_slots"].values():
                assert value in q["query"]


def test_query_language_check_and_kind_entry_points():
    with pytest.raises(ValueError, match="language"):
        sw.query_example(0, "train", 0, "it")
    with pytest.raises(ValueError, match="language"):
        sw.text_example(0, "train", 0, "de", kinds=("query",))  # text_example stays zh/en
    ex = sw.text_example(0, "train", 0, "en", kinds=("query",))
    assert ex["query"] == sw.query_example(0, "train", 0, "en")["query"]
    p = sw.product(0, "train", 0)
    out = sw.KINDS["query"](p, sw.kind_rng(0, "train", 0, "query"), "de")
    assert out == {k: v for k, v in sw.query_example(0, "train", 0, "de").items() if k in out}
