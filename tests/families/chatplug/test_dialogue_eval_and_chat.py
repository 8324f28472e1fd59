"""ChatPLUG's dialogue evaluation (attribute accuracy, knowledge F1, the test-time no-passage
control) on hand-built responses, and ``plug-infer --chat`` (memory as released, retrieval
per turn, passages shown, clear errors) with a random tiny model."""
import io

import jax
import numpy as np
import pytest
from flax import linen as nn

from plug_jax import models
from plug_jax.data.shop_world import world
from plug_jax.families.chatplug import ChatPLUGConfig, dialogue_eval, retrieval, templates
from plug_jax.trainer import loop


# --------------------------------------------------------------------------- scoring
def test_unigram_f1_by_hand():
    # zh: characters. "红色棉" vs "红色的": common 红, 色 -> P 2/3, R 2/3, F1 2/3
    assert dialogue_eval.unigram_f1("红色棉", "红色的", "zh") == pytest.approx(2 / 3)
    # en: lower-cased words. 3 predicted, 4 reference, 2 shared -> P 2/3, R 1/2 -> F1 4/7
    assert dialogue_eval.unigram_f1("It is Red", "the red one is", "en") == \
        pytest.approx(4 / 7)
    assert dialogue_eval.unigram_f1("", "abc", "zh") == 0.0
    assert dialogue_eval.unigram_f1("xyz", "abc", "zh") == 0.0


def test_mentions_whole_words_in_english_substrings_in_chinese():
    assert dialogue_eval.mentions("The colour is red.", "red", "en")
    assert not dialogue_eval.mentions("a reddish one", "red", "en")
    assert dialogue_eval.mentions("You pay ¥319 in the end.", "319", "en")
    assert not dialogue_eval.mentions("You pay ¥3190.", "319", "en")
    assert dialogue_eval.mentions("这款是粉色的。", "粉色", "zh")


def _product_with_other(attr):
    """A test product and a value of ``attr`` it does not have (zh surface forms)."""
    p = world.product(0, "test", 5)
    values = dialogue_eval.attribute_values(p.product_id, "zh")
    for i in range(6, 200):
        other = dialogue_eval.attribute_values(world.product(0, "test", i).product_id, "zh")
        if other[attr] != values[attr] and values[attr] not in other[attr] \
                and other[attr] not in values[attr]:
            return p, values, other[attr]
    raise AssertionError("no product with another value")


def test_attribute_accuracy_needs_every_value_the_reference_states():
    p, v, other_material = _product_with_other("material")
    ref_follow = f"主体是{v['material']}。"  # a follow-up about material: one attribute
    ref_rec = f"为您推荐{v['brand']}的这款{v['colour']}{v['material']}{v['category']}，售价{v['price']}元。"
    preds = [f"是{v['material']}材质的。",                  # right
             f"是{other_material}材质的。",                 # wrong material
             f"推荐{v['brand']}{v['colour']}{v['material']}{v['category']}，{v['price']}元",  # all
             f"推荐{v['brand']}{v['colour']}{v['category']}，{v['price']}元"]  # material missing
    refs = [ref_follow, ref_follow, ref_rec, ref_rec]
    pid = [p.product_id] * 4
    know = [dialogue_eval.gold_knowledge(p.product_id, "zh")] * 4
    res = dialogue_eval.score_responses(preds, refs, pid, know, "zh",
                                        retrieved=[True, False, True, True])
    assert res["correct"] == [True, False, True, False]
    assert res["attribute_accuracy"] == 0.5
    assert res["attribute_accuracy_retrieved"] == pytest.approx(2 / 3)
    assert res["per_attribute"]["material"] == (0.5, 4)
    assert res["per_attribute"]["brand"] == (1.0, 2)
    assert "size" not in res["per_attribute"]  # no reference states it
    # knowledge F1 is against the product's description
    assert res["knowledge_f1"] == pytest.approx(np.mean(
        [dialogue_eval.unigram_f1(x, know[0], "zh") for x in preds]))
    assert dialogue_eval.gold_knowledge(p.product_id, "zh") != \
        dialogue_eval.gold_knowledge(world.product(0, "test", 6).product_id, "zh")
    with pytest.raises(ValueError, match="differ in length"):
        dialogue_eval.score_responses(preds, refs[:2], pid, know, "zh")
    with pytest.raises(ValueError, match="not a Shop World product id"):
        dialogue_eval.attribute_values("p-12", "zh")


def test_without_knowledge_empties_exactly_the_knowledge_slots():
    from plug_jax.tasks import chatplug as tasks
    vocab = tasks.vocabulary("zh")
    rows = [retrieval.Passage(f"k{i}", "", f"这是第{i}段商品介绍。", 1.0) for i in range(3)]

    class Fixed:
        def search(self, query, k):
            return rows[:k]

    turns = ["您好", "我想买夹克", "为您推荐这款夹克。", "一二三", "有什么颜色？"]
    passages, hits, _ = tasks.fid_passages(turns, "用户画像：儿童。", ["我是导购。"], "zh",
                                           Fixed(), top_k=3, num_passages=6)
    L = 96
    ids = tasks.encode_passages(passages, vocab, 6, L)
    marker = templates.SUFFIX_TEMPLATES["zh"]["knowledge"].split("{")[0]
    blank = dialogue_eval.without_knowledge(ids, passages, L, marker).reshape(6, L)
    kinds = ["knowledge" if marker in p else "other" for p in passages]
    assert kinds.count("knowledge") == 3 and len(passages) == 6
    for i, kind in enumerate(kinds):
        if kind == "knowledge":
            assert not blank[i].any()
        else:
            np.testing.assert_array_equal(blank[i], ids.reshape(6, L)[i])
            assert blank[i].any()


# ------------------------------------------------------------------------------ chat
CFG = ChatPLUGConfig.from_preset("tiny", num_passages=6, passage_length=96,
                                 initializer_factor=2.0)


@pytest.fixture(scope="module")
def tiny_model():
    model = models.EncoderDecoderLM(CFG, family="chatplug")
    batch = {"encoder_input_tokens": np.ones((1, 6 * 96), np.int32),
             "decoder_input_tokens": np.ones((1, 4), np.int32)}
    params = nn.unbox(jax.jit(lambda r: model.init_params(r, batch))(jax.random.PRNGKey(0)))
    return model, jax.device_get(params)


class Recorder:
    """A retriever that records its queries and returns fixed passages."""

    def __init__(self):
        self.queries = []

    def search(self, query, k):
        self.queries.append(query)
        return [retrieval.Passage(f"doc{i}", "t", f"第{i}段知识。", 2.0 - i) for i in range(k)]


def _infer_chat(model, params, prompts, capsys, **kw):
    data = loop.DatasetConfig("chatplug_shop_zh_v1", {"inputs": 6 * 96, "targets": 16},
                              batch_size=1, converter="encdec")
    out = loop.infer(model=model, model_dir="/tmp/unused", dataset_cfg=data, prompts=prompts,
                     params=params, max_new_tokens=6, methods=["greedy"], chat=True, **kw)
    return out, capsys.readouterr().out


def test_chat_keeps_memory_retrieves_each_turn_and_shows_passages(tiny_model, capsys,
                                                                  monkeypatch):
    from plug_jax.tasks import chatplug as tasks
    model, params = tiny_model
    rec = Recorder()
    monkeypatch.setattr(tasks, "shop_retriever", lambda lang, split: rec)
    turns = ["我想买一件夹克", "它是什么材质的？", "适合什么季节？"]
    out, printed = _infer_chat(model, params, turns, capsys, show_passages=True)
    assert [o["user"] for o in out] == turns
    assert len(rec.queries) == 3  # one retrieval per user turn
    # memory: the third turn's query holds the first turn and the first response
    assert turns[0] in rec.queries[2] and out[0]["response"] in rec.queries[2]
    assert [o["knowledge_ids"] for o in out] == [["doc0", "doc1", "doc2"]] * 3
    # passages: 3 knowledge + user profile? (empty) + bot profile (empty) -> knowledge only
    # on turn 1; history appears once the dialogue is longer than the context (turn 3 has
    # 4 earlier turns, 2 in the context, 2 in the history)
    hist = templates.SUFFIX_TEMPLATES["zh"]["history"].split("{")[0]
    assert not any(hist in p for p in out[0]["passages"])
    assert sum(hist in p for p in out[2]["passages"]) == 1
    assert "[passage 0]" in printed and "knowledge: doc0 (2.00)" in printed
    assert printed.count("ChatPLUG：") == 3 and "我：它是什么材质的？" in printed
    # without --show_passages nothing of the passages is printed
    _, quiet = _infer_chat(model, params, turns[:1], capsys)
    assert "[passage" not in quiet and "ChatPLUG：" in quiet


def test_chat_reads_standard_input_with_reset_and_exit(tiny_model, capsys, monkeypatch):
    from plug_jax.tasks import chatplug as tasks
    model, params = tiny_model
    rec = Recorder()
    monkeypatch.setattr(tasks, "shop_retriever", lambda lang, split: rec)
    stream = io.StringIO("你好\n\n/reset\n多少钱？\n/exit\n不会读到这里\n")
    out, printed = _infer_chat(model, params, [], capsys, chat_stream=stream)
    assert [o["user"] for o in out] == ["你好", "多少钱？"]
    assert "(dialogue forgotten)" in printed
    assert "你好" not in rec.queries[1]  # forgotten by /reset


def test_chat_errors_are_one_line(tiny_model):
    model, params = tiny_model
    data = loop.DatasetConfig("chatplug_shop_zh_v1", {"inputs": 6 * 96, "targets": 16},
                              batch_size=1, converter="encdec")
    with pytest.raises(loop.TrainError, match="--show_passages applies to the chat mode"):
        loop.infer(model=model, model_dir="/tmp/unused", dataset_cfg=data, prompts=["x"],
                   params=params, show_passages=True)
    gpt = models.DecoderOnlyLM(None, family="gpt3")
    with pytest.raises(loop.TrainError, match="family 'gpt3' has no chat mode"):
        loop.infer(model=gpt, model_dir="/tmp/unused", dataset_cfg=data, prompts=["x"],
                   params={}, chat=True)


def test_chat_knobs_are_gin_bindings(tiny_model, capsys, monkeypatch):
    """loop.infer calls gin's configured chat loop: a gin file that imports the chat module
    picks the catalog split (and the profiles) the chat retrieves from."""
    import gin

    from plug_jax.tasks import chatplug as tasks
    model, params = tiny_model
    asked = []

    def fake(lang, split):
        asked.append((lang, split))
        return Recorder()
    monkeypatch.setattr(tasks, "shop_retriever", fake)
    gin.clear_config()
    gin.parse_config("\n".join([
        "from __gin__ import dynamic_registration",
        "import plug_jax.families.chatplug.chat as chat",
        "chat.run_chat.catalog_split = 'validation'",
        "chat.run_chat.user_profile = '用户画像：儿童。'"]))
    try:
        out, _ = _infer_chat(model, params, ["你好"], capsys)
    finally:
        gin.clear_config()
    assert asked == [("zh", "validation")]
    profile = templates.SUFFIX_TEMPLATES["zh"]["user_profile"].format(user_profile="用户画像：儿童。")
    assert any(p.endswith(profile) for p in out[0]["passages"])
    _infer_chat(model, params, ["你好"], capsys)  # unbound again: the test catalog
    assert asked[-1] == ("zh", "test")
