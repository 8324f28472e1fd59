"""ChatPLUG's instruction templates and memory (exact strings written by hand), its dialogue
vocabulary, and the FiD Shop World tasks: passages laid out as [P, L], the retrieved gold
description among them, none in the no-passage control, the response as the target."""
import numpy as np
import pytest

from plug_jax.families.chatplug import templates

ZH_BASE = "设想我们正在聊天，请给我一个恰当、有信息量又生动的回答。我们的对话如下："
EN_BASE = "Imagine we are chatting. Give me a fitting, informative and lively reply. " \
          "Our conversation: "


# ------------------------------------------------------------------------- templates
def test_rewrite_history_alternates_speakers_and_adds_end_punctuation():
    turns = ["您好，欢迎光临", "我想买一件夹克", "这款灰色夹克239元！"]
    assert templates.rewrite_history(turns) == \
        "我：您好，欢迎光临。你：我想买一件夹克。我：这款灰色夹克239元！"
    assert templates.rewrite_history(turns[:2], last="you") == \
        "我：您好，欢迎光临。你：我想买一件夹克。"
    assert templates.rewrite_history([" 好的 ", "多少钱？"]) == "你：好的。我：多少钱？"
    assert templates.rewrite_history(["Hello", "I want a jacket?"], "en") == \
        "You: Hello. Me: I want a jacket?"
    assert templates.rewrite_history(["It is grey.", "Great"], "en", last="you") == \
        "Me: It is grey. You: Great."
    assert templates.rewrite_history([]) == ""
    with pytest.raises(ValueError, match="last speaker"):
        templates.rewrite_history(["x"], last="him")
    with pytest.raises(ValueError, match="no ChatPLUG templates"):
        templates.rewrite_history(["x"], "fr")


def test_memory_keeps_two_context_turns_and_history_up_to_ten_back():
    turns = [f"t{i}" for i in range(14)]  # t13 is the user's utterance
    context, history = templates.memory(turns)
    assert context == ["t11", "t12", "t13"]
    assert history == ["t3", "t4", "t5", "t6", "t7", "t8", "t9", "t10"]  # t0-t2 forgotten
    assert templates.memory(["a"]) == (["a"], [])
    assert templates.memory(["a", "b", "c"]) == (["a", "b", "c"], [])
    assert templates.memory(["a", "b", "c", "d"]) == (["b", "c", "d"], ["a"])
    assert templates.memory(["a", "b", "c"], max_context_turns=0) == (["c"], ["a", "b"])
    assert templates.memory(turns, 4, 6) == (["t9", "t10", "t11", "t12", "t13"],
                                             ["t7", "t8"])
    with pytest.raises(ValueError, match="at least the user's utterance"):
        templates.memory([])
    with pytest.raises(ValueError, match="max_context_turns <= max_history_turns"):
        templates.memory(["a"], 3, 2)


def test_build_passages_zh_one_passage_per_history_knowledge_and_profile():
    got = templates.build_passages(
        ["我想买夹克", "为您推荐这款灰色夹克。", "有什么颜色？"], ["您好"],
        ["这款夹克是灰色的。", "这款帽子是紫色的。"], "用户画像：儿童。",
        ["我是导购助手。", ""])
    head = ("设想我们正在聊天，请给我一个恰当、有信息量又生动的回答。我们的对话如下："
            "我：我想买夹克。你：为您推荐这款灰色夹克。我：有什么颜色？")
    assert got == [
        head + "#在这之前我们还聊过：你：您好。",
        head + "#你还知道以下知识：这款夹克是灰色的。",
        head + "#你还知道以下知识：这款帽子是紫色的。",
        head + "#你还了解我的这些信息：用户画像：儿童。",
        head + "#你还有这样的人物设定：我是导购助手。",
    ]
    # Nothing but the context: the base template alone.
    assert templates.build_passages(["多少钱"]) == [
        "设想我们正在聊天，请给我一个恰当、有信息量又生动的回答。我们的对话如下：我：多少钱。"]
    # At most max_passages, the tail dropped; an even context flips the history's tags.
    got = templates.build_passages(["好的", "多少钱"], ["你好", "您好"], ["k1", "k2"],
                                   max_passages=2)
    assert got == [ZH_BASE + "你：好的。我：多少钱。#在这之前我们还聊过：你：你好。我：您好。",
                   ZH_BASE + "你：好的。我：多少钱。#你还知道以下知识：k1"]


def test_build_passages_en():
    got = templates.build_passages(
        ["Which colour is it?"], ["Hi!", "A jacket for kids, please."],
        ["This jacket is grey."], "User profile: kids.",
        "I am the shop's assistant.", lang="en")
    head = ("Imagine we are chatting. Give me a fitting, informative and lively reply. "
            "Our conversation: Me: Which colour is it?")
    assert got == [
        head + "#Before this we also said: Me: Hi! You: A jacket for kids, please.",
        head + "#You also know this: This jacket is grey.",
        head + "#You also know this about me: User profile: kids.",
        head + "#You also have this persona: I am the shop's assistant.",
    ]


def test_released_passage_field_round_trips():
    tagged = templates.tagged_passages(["您好", "我想买夹克"], ["灰色夹克"], "儿童",
                                       ["导购", "简洁"])
    field = templates.passage_field(tagged)
    assert field == ("history:我：您好。你：我想买夹克。;;;knowledge:灰色夹克;;;"
                     "user_profile:儿童;;;bot_profile:导购;;;bot_profile:简洁")
    assert templates.parse_passage_field(field) == tagged
    # As released: an entry without a known prefix is knowledge; empty ones are skipped.
    assert templates.parse_passage_field("灰色夹克;;; ;;;history:我：嗯。") == [
        ("knowledge", "灰色夹克"), ("history", "我：嗯。")]
    with pytest.raises(ValueError, match="separator"):
        templates.passage_field([("knowledge", "a;;;b")])


# ------------------------------------------------------------------------ vocabulary
def test_dialogue_vocabulary_round_trips_dialogues_and_templates():
    from plug_jax.data import shop_world
    from plug_jax.data.vocab import ShopWorldVocabulary
    from tasks import chatplug
    for lang in ("zh", "en"):
        vocab = chatplug.vocabulary(lang)
        texts = templates.template_texts(lang)
        for i in range(20):
            ex = shop_world.text_example(0, "test", i, lang, kinds=("dialogue",))
            texts.append(chatplug.dialogue_document(ex))
        for t in texts:
            assert 2 not in vocab.encode(t), t  # no <unk>
            assert vocab.decode(vocab.encode(t)) == t
        assert vocab.vocab_size == {"zh": 1024, "en": 512}[lang] + 100
        assert vocab != ShopWorldVocabulary(None, 0, lang, extra_ids=100)
    # Why it exists: the plain Shop World vocabulary has no piece for the speaker tags.
    assert 2 in ShopWorldVocabulary(None, 0, "zh").encode("我：")


# ------------------------------------------------------------------------------ tasks
def _examples(name, n, split="validation"):
    import seqio

    import plug_jax.tasks  # noqa: F401,PLC0415  (registers every task)
    ds = seqio.get_mixture_or_task(name).get_dataset(None, split=split, shuffle=False, seed=0)
    return [dict(ex) for ex in ds.take(n).as_numpy_iterator()]


def _dialogue(product_id, lang):
    from plug_jax.data import shop_world
    seed, split, index = product_id.decode().split("-")
    return shop_world.text_example(int(seed[2:]), split, int(index), lang,
                                   kinds=("dialogue",))


def _decoded_passages(vocab, inputs, length):
    """The passage strings of one ``inputs`` row; None for an all-zero slot."""
    from tasks import chatplug
    out = []
    for row in chatplug.split_inputs(inputs, length):
        if not row.any():
            out.append(None)
            continue
        n = int(np.flatnonzero(row == 1)[0])  # each passage ends in EOS, then zeros
        assert not row[n + 1:].any()
        out.append(vocab.decode(row[:n].tolist()))
    return out


@pytest.mark.parametrize("lang", ["zh", "en"])
def test_fid_task_lays_out_template_passages_with_the_retrieved_gold_description(lang):
    from tasks import chatplug
    length, p = chatplug.SHOP_PASSAGE_LENGTH[lang], chatplug.SHOP_NUM_PASSAGES
    vocab = chatplug.vocabulary(lang)
    exs = _examples(chatplug.TASKS[(True, lang)], 4)
    controls = {ex["product_id"]: ex for ex in
                _examples(chatplug.TASKS[(False, lang)], 4)}
    suffixes = templates.SUFFIX_TEMPLATES[lang]
    knowledge_suffix = suffixes["knowledge"].format(knowledge="")
    base = {"zh": ZH_BASE, "en": EN_BASE}[lang]
    for ex in exs:
        d = _dialogue(ex["product_id"], lang)
        turns = [t["text"] for t in d["dialogue_turns"]]
        # The target is the dialogue's final (assistant) turn.
        assert ex["targets"][-1] == 1
        assert vocab.decode(ex["targets"].tolist()) == turns[-1]
        assert ex["targets_pretokenized"].decode() == turns[-1]
        # inputs: P passages of L ids; the decoded slots are the template strings.
        assert ex["inputs"].shape == (p * length,) and ex["inputs"].dtype == np.int32
        decoded = _decoded_passages(vocab, ex["inputs"], length)
        context, history = templates.memory(turns[:-1])
        hits = chatplug.shop_retriever(lang, "validation").search(
            chatplug.memory_query(turns[:-1]), chatplug.SHOP_TOP_K)
        want = templates.build_passages(context, history, [h.text for h in hits],
                                        d["dialogue_profile"]["text"],
                                        templates.TURN_JOIN[lang].join(d["dialogue_persona"]),
                                        lang)
        assert decoded == want + [None] * (p - len(want))
        assert [s.decode() for s in ex["passages"]] == want + [""] * (p - len(want))
        head = base + templates.rewrite_history(context, lang)
        assert all(s.startswith(head + "#") for s in want)
        assert sum(s == head + suffixes["bot_profile"].format(
            bot_profile=templates.TURN_JOIN[lang].join(d["dialogue_persona"]))
            for s in want) == 1
        assert sum(s == head + suffixes["user_profile"].format(
            user_profile=d["dialogue_profile"]["text"]) for s in want) == 1
        assert sum(knowledge_suffix in s for s in want) == chatplug.SHOP_TOP_K
        if history:
            assert want[0] == head + suffixes["history"].format(
                history=templates.rewrite_history(history, lang, last="you"))
        # The gold description, when retrieved, is one knowledge passage.
        gold = d["dialogue_passages"][d["dialogue_gold_passage"]]
        ids = [i.decode() for i in ex["knowledge_ids"]]
        assert ids == [h.id for h in hits]
        if ex["gold_rank"] >= 0:
            assert ids[ex["gold_rank"]] == d["product_id"]
            assert sum((knowledge_suffix + gold["text"]) in s for s in want) == 1
        # Follow-up answers (4+ turns): memory names the product, BM25 ranks it first.
        if len(turns) > 3:
            assert ex["gold_rank"] == 0
        # The control: the same passages without the knowledge ones.
        c = controls[ex["product_id"]]
        got = [s for s in _decoded_passages(vocab, c["inputs"], length) if s is not None]
        assert got == [s for s in want if knowledge_suffix not in s]
        assert not any(knowledge_suffix in s for s in got)
        assert c["gold_rank"] == -1 and not any(c["knowledge_ids"])
        np.testing.assert_array_equal(c["targets"], ex["targets"])
    assert any(ex["gold_rank"] >= 0 for ex in exs)


def test_train_split_injects_the_gold_description_when_retrieval_misses_it():
    from plug_jax.families.chatplug.retrieval import Passage, Retriever
    from tasks import chatplug

    class Fixed:  # any object with search() is a Retriever
        def search(self, query, k):
            return [Passage(f"p{i}", "", f"text {i}", 1.0 / (i + 1)) for i in range(k)]

    assert isinstance(Fixed(), Retriever)
    gold = Passage("gold", "", "gold text", 0.0)
    turns = ["我想买夹克", "为您推荐这款灰色夹克。", "它是什么材质的？"]
    passages, hits, rank = chatplug.fid_passages(turns, "画像", ["人设"], "zh", Fixed(),
                                                 gold=gold, inject_gold=True)
    assert [h.id for h in hits] == ["p0", "p1", "gold"] and rank == -1
    assert sum("#你还知道以下知识：gold text" in s for s in passages) == 1
    _, hits, rank = chatplug.fid_passages(turns, "画像", ["人设"], "zh", Fixed(), gold=gold)
    assert [h.id for h in hits] == ["p0", "p1", "p2"] and rank == -1
    _, hits, rank = chatplug.fid_passages(turns, "画像", ["人设"], "zh", Fixed(),
                                          gold=Passage("p1", "", "", 0.0), inject_gold=True)
    assert [h.id for h in hits] == ["p0", "p1", "p2"] and rank == 1


def test_encode_passages_layout_and_sizes():
    from plug_jax.data import shop_world_tfds
    from plug_jax.families.chatplug import retrieval
    from tasks import chatplug
    vocab = chatplug.vocabulary("en")
    ids = chatplug.encode_passages(["Me: hi.", "", "x " * 50], vocab, 4, 8)
    rows = chatplug.split_inputs(ids, 8)
    assert rows.shape == (4, 8)
    assert rows[0].tolist() == vocab.encode("Me: hi.") + [1] + [0] * (7 - len(
        vocab.encode("Me: hi.")))
    assert not rows[1].any() and not rows[3].any()
    assert rows[2].tolist() == vocab.encode("x " * 50)[:7] + [1]  # cut to L - 1, then EOS
    with pytest.raises(ValueError, match="do not fit"):
        chatplug.encode_passages(["a"] * 5, vocab, 4, 8)
    with pytest.raises(ValueError, match="set the 'inputs' feature length to 1344"):
        chatplug._check_input_length(None, {"inputs": 512}, length=1344)
    assert retrieval.CATALOG_SIZES == shop_world_tfds.TEXT_SPLIT_SIZES
    assert chatplug.SHOP_NUM_PASSAGES == chatplug.SHOP_TOP_K + 3 == 6
    assert (chatplug.RELEASED_NUM_PASSAGES, chatplug.RELEASED_PASSAGE_LENGTH,
            chatplug.RELEASED_MAX_DECODER_LENGTH) == (20, 380, 512)


def test_vocabulary_size_needs_no_training(tmp_path):
    from tasks import chatplug
    vocab = chatplug.ShopDialogueVocabulary("en", cache_dir=str(tmp_path))
    assert vocab.vocab_size == 612 and vocab.spec["corpus"] == chatplug.DIALOGUE_CORPUS
    assert not (tmp_path / "vocab").exists()  # not trained by asking the size
