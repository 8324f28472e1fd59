"""ChatPLUG's local BM25 retriever over the Shop World catalog: it finds held-out dialogues'
gold descriptions, saves and loads without pickle, and a bad index directory gives one line
naming the fix."""
import json

import numpy as np
import pytest

from plug_jax.families.chatplug import retrieval, templates
from plug_jax.families.chatplug.retrieval import BM25Retriever, Passage, Retriever


def test_tokenize_is_cjk_characters_and_bigrams_plus_words():
    assert retrieval.tokenize("灰色夹克 239元, Grey JACKET!") == [
        "灰", "色", "夹", "克", "灰色", "色夹", "夹克", "239", "元", "grey", "jacket"]
    assert retrieval.tokenize("ＸＬ码，¥59") == ["xl", "码", "59"]  # NFKC, symbols dropped
    assert retrieval.tokenize("“。”") == []


def test_catalog_holds_every_dialogues_gold_passage():
    from plug_jax.data import shop_world
    rows = retrieval.shop_world_catalog("en", "test", size=5)
    for i, (pid, title, text) in enumerate(rows):
        d = shop_world.text_example(0, "test", i, "en", kinds=("dialogue",))
        gold = d["dialogue_passages"][d["dialogue_gold_passage"]]
        assert (pid, title, text) == (gold["product_id"], gold["title"], gold["text"])


def _recall(lang, split="test", n=300, k=3):
    """Gold-description recall@k of held-out dialogues: the memory query (history + context)
    and the last user turn alone, overall and for follow-up answers (4+ turns)."""
    from plug_jax.data import shop_world
    r = BM25Retriever.shop_world(lang, split)
    hits = {"memory": [], "last": [], "followup": []}
    for i in range(n):
        d = shop_world.text_example(0, split, i, lang, kinds=("dialogue",))
        turns = [t["text"] for t in d["dialogue_turns"]][:-1]  # up to the user's utterance
        context, history = templates.memory(turns)
        found = d["product_id"] in [p.id for p in r.search(" ".join(history + context), k)]
        hits["memory"].append(found)
        hits["last"].append(d["product_id"] in [p.id for p in r.search(turns[-1], k)])
        if len(turns) > 2:
            hits["followup"].append(found)
    return {key: float(np.mean(v)) for key, v in hits.items()}


@pytest.mark.parametrize("lang", ["zh", "en"])
def test_bm25_finds_the_gold_passage_of_held_out_dialogues(lang, report_result):
    got = _recall(lang)
    print(f"\nBM25 gold recall@3, shop_world dialogue_{lang} test (300 dialogues, 1000-product "
          f"catalog): memory query {got['memory']:.3f} (follow-up answers "
          f"{got['followup']:.3f}), last user turn alone {got['last']:.3f}")
    report_result(f"chatplug BM25 gold recall@3 {lang} test", got["memory"],
                  control=f"last user turn alone {got['last']:.3f}",
                  followups=f"{got['followup']:.3f}")
    # Measured zh 0.893 / en 0.937 (follow-ups 1.000; last turn alone 0.15 / 0.18): the
    # misses are 3-turn dialogues whose only query is the user's request.
    assert got["memory"] >= 0.85
    assert got["followup"] >= 0.98
    assert got["memory"] > got["last"] + 0.5


def test_search_is_ranked_deterministic_and_empty_without_a_match():
    r = BM25Retriever.from_passages([("a", "灰色夹克", "涤纶材质。"), ("b", "紫色帽子", "纯棉。"),
                                     ("c", "灰色帽子", "纯棉材质。")])
    assert isinstance(r, Retriever) and len(r) == 3
    hits = r.search("灰色的帽子", 3)
    assert [h.id for h in hits] == ["c", "b", "a"]  # both words, then one of them
    assert all(isinstance(h, Passage) for h in hits)
    assert hits[0].score > hits[1].score > 0 and hits[0].text == "纯棉材质。"
    assert [h.id for h in r.search("灰色的帽子", 1)] == ["c"]
    assert r.search("laptop", 3) == [] and r.search("", 3) == [] and r.search("帽子", 0) == []
    # Equal scores keep index order.
    twins = BM25Retriever.from_passages([("x", "", "同款"), ("y", "", "同款")])
    assert [h.id for h in twins.search("同款", 2)] == ["x", "y"]


def test_save_load_round_trip_without_pickle(tmp_path):
    from plug_jax.data import shop_world
    r = BM25Retriever.shop_world("zh", "validation", size=200)
    path = r.save(tmp_path / "index")
    files = sorted(p.name for p in (tmp_path / "index").iterdir())
    assert set(retrieval.BM25_FILES) | {retrieval.META_FILE, retrieval.PASSAGES_FILE} \
        <= set(files)
    for name in files:  # every file is JSON(L) or a numeric .npy that loads without pickle
        f = tmp_path / "index" / name
        if name.endswith(".npy"):
            assert np.load(f, allow_pickle=False).dtype.kind in "iuf"
        else:
            lines = f.read_text(encoding="utf-8").splitlines()
            if name.endswith(".jsonl"):
                assert all(json.loads(line) for line in lines)
            else:
                json.loads("\n".join(lines))
    loaded = BM25Retriever.load(path)
    assert loaded.meta == r.meta and len(loaded) == 200
    assert loaded.meta["catalog"] == {"lang": "zh", "split": "validation", "size": 200,
                                      "seed": 0}
    for i in range(0, 200, 20):
        d = shop_world.text_example(0, "validation", i, "zh", kinds=("dialogue",))
        q = " ".join(t["text"] for t in d["dialogue_turns"][:-1])
        assert loaded.search(q, 5) == r.search(q, 5)
        np.testing.assert_array_equal(loaded.scores(q), r.scores(q))


def test_cli_writes_an_index(tmp_path, capsys):
    assert retrieval.main(["--lang", "en", "--split", "test", "--size", "30", "--out",
                           str(tmp_path / "ix"), "--query", "grey jacket", "-k", "2"]) == 0
    out = capsys.readouterr().out
    assert "wrote the BM25 index of shop_world/text_en test" in out
    assert len(BM25Retriever.load(tmp_path / "ix")) == 30


def test_bad_index_dir_is_one_line_naming_the_fix(tmp_path):
    def error(d):
        with pytest.raises(retrieval.RetrieverIndexError) as e:
            BM25Retriever.load(d)
        msg = str(e.value)
        assert "\n" not in msg and "fix: write it with BM25Retriever.from_passages" in msg
        return msg

    assert "does not exist" in error(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    assert "missing retriever.json, passages.jsonl, params.index.json" in \
        error(tmp_path / "empty")
    good = BM25Retriever.from_passages([("a", "t", "灰色夹克"), ("b", "t", "紫色帽子")])
    d = tmp_path / "ix"
    good.save(d)
    (d / "passages.jsonl").write_text('{"id": "a", "title": "t", "text": "x"}\n')
    assert "1 passages, 2 indexed documents" in error(d)
    good.save(d)
    (d / "data.csc.index.npy").write_bytes(b"not numpy")
    assert "cannot read the BM25 index" in error(d)
    good.save(d)
    meta = json.loads((d / "retriever.json").read_text())
    (d / "retriever.json").write_text(json.dumps({**meta, "tokenizer": "other"}))
    assert "tokenizer 'other'" in error(d)
