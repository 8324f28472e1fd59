"""Local-file corpus readers (CLUE TNEWS/AFQMC, LCSTS, XNLI) and their seqio tasks."""
import json

import pytest
import seqio

from plug_jax.data import corpora
from tasks import corpora as corpus_tasks


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                    encoding="utf-8")


TNEWS_TRAIN = [
    {"label": "108", "label_desc": "news_edu", "sentence": "上课时学生手机响个不停",
     "keywords": "老师,手机"},
    {"label": "116", "label_desc": "news_game", "sentence": "如何评价这款游戏？", "keywords": ""},
    {"label": "100", "label_desc": "news_story", "sentence": "一个故事", "keywords": "故事"},
]


def test_tnews_labels():
    assert len(corpora.TNEWS_LABELS) == 15
    assert corpora.TNEWS_LABELS[0] == "100" and corpora.TNEWS_LABELS[-1] == "116"
    assert {"105", "111"}.isdisjoint(corpora.TNEWS_LABELS)


def test_tnews(tmp_path):
    _jsonl(tmp_path / "train.json", TNEWS_TRAIN)
    _jsonl(tmp_path / "test.json", [{"id": 7, "sentence": "无标签", "keywords": ""}])
    rows = list(corpora.read_tnews(tmp_path, "train"))
    assert [r["label"] for r in rows] == [7, 14, 0]
    assert [r["label_desc"] for r in rows] == ["news_edu", "news_game", "news_story"]
    assert rows[0]["sentence"] == "上课时学生手机响个不停" and rows[0]["keywords"] == "老师,手机"
    assert list(corpora.read_tnews(tmp_path, "test")) == [
        {"idx": 7, "sentence": "无标签", "keywords": "", "label": -1, "label_desc": ""}]
    _jsonl(tmp_path / "dev.json", [{"label": "105", "sentence": "x"}])
    with pytest.raises(ValueError, match="TNEWS label '105'"):
        list(corpora.read_tnews(tmp_path, "validation"))


def test_afqmc(tmp_path):
    _jsonl(tmp_path / "dev.json", [
        {"sentence1": "花呗如何还款", "sentence2": "花呗怎么还钱", "label": "1"},
        {"sentence1": "借呗额度", "sentence2": "蚂蚁森林", "label": "0"}])
    rows = list(corpora.read_afqmc(tmp_path, "validation"))
    assert rows == [
        {"idx": 0, "sentence1": "花呗如何还款", "sentence2": "花呗怎么还钱", "label": 1},
        {"idx": 1, "sentence1": "借呗额度", "sentence2": "蚂蚁森林", "label": 0}]


LCSTS_PART_I = """<doc id=0>
    <summary>
        修改后的立法法全文公布
    </summary>
    <short_text>
        新华社受权于18日全文播发修改后的《中华人民共和国立法法》，
        修改后的立法法分为“总则”“法律”等六章。
    </short_text>
</doc>
<doc id=1>
    <summary>
        深圳机场9死24伤续
    </summary>
    <short_text>
        记者从深圳市政府获悉。
    </short_text>
</doc>
"""
LCSTS_PART_II = """<doc id=0>
    <human_label>5</human_label>
    <summary>
        可穿戴技术十大设计原则
    </summary>
    <short_text>
        本文总结了十个可穿戴产品的设计原则。
    </short_text>
</doc>
"""


def test_lcsts(tmp_path):
    (tmp_path / "PART_I.txt").write_text(LCSTS_PART_I, encoding="utf-8")
    (tmp_path / "PART_II.txt").write_text(LCSTS_PART_II, encoding="utf-8")
    rows = list(corpora.read_lcsts(tmp_path, "train"))
    assert len(rows) == 2
    assert rows[0] == {"id": 0, "summary": "修改后的立法法全文公布", "human_label": -1,
                       "text": "新华社受权于18日全文播发修改后的《中华人民共和国立法法》，"
                               "修改后的立法法分为“总则”“法律”等六章。"}
    assert rows[1]["id"] == 1 and rows[1]["summary"] == "深圳机场9死24伤续"
    assert list(corpora.read_lcsts(tmp_path, "validation")) == [
        {"id": 0, "human_label": 5, "summary": "可穿戴技术十大设计原则",
         "text": "本文总结了十个可穿戴产品的设计原则。"}]


XNLI_HEADER = ["language", "gold_label", "sentence1_binary_parse", "sentence2_binary_parse",
               "sentence1_parse", "sentence2_parse", "sentence1", "sentence2", "promptID",
               "pairID", "genre"]


def _xnli_row(lang, label, s1, s2):
    return [lang, label, "", "", "", "", s1, s2, "1", "2", "facetoface"]


def test_xnli(tmp_path):
    rows = [_xnli_row("en", "neutral", 'He said "hi".', "He spoke."),
            _xnli_row("zh", "entailment", "他说：“你好”。", "他说话了。"),
            _xnli_row("zh", "contradiction", "天很冷", "天很热"),
            _xnli_row("fr", "neutral", "Il fait froid.", "Il neige.")]
    (tmp_path / "xnli.dev.tsv").write_text(
        "\n".join("\t".join(r) for r in [XNLI_HEADER] + rows) + "\n", encoding="utf-8")
    (tmp_path / "multinli.train.zh.tsv").write_text(
        "premise\thypo\tlabel\n我们 走 吧\t我们 留下\tcontradictory\n"
        "他 很 高\t他 不 矮\tentailment\n天 下雨\t路 湿 了\tneutral\n", encoding="utf-8")
    zh = list(corpora.read_xnli(tmp_path, "validation", language="zh"))
    assert zh == [
        {"language": "zh", "premise": "他说：“你好”。", "hypothesis": "他说话了。", "label": 0},
        {"language": "zh", "premise": "天很冷", "hypothesis": "天很热", "label": 2}]
    everything = list(corpora.read_xnli(tmp_path, "validation", language=None))
    assert [r["language"] for r in everything] == ["en", "zh", "zh", "fr"]
    assert everything[0]["premise"] == 'He said "hi".' and everything[0]["label"] == 1
    train = list(corpora.read_xnli(tmp_path, "train", language="zh"))
    assert [r["label"] for r in train] == [2, 0, 1]
    assert train[0] == {"language": "zh", "premise": "我们 走 吧", "hypothesis": "我们 留下",
                        "label": 2}
    with pytest.raises(ValueError, match=r"multinli\.train\.en\.tsv"):
        list(corpora.read_xnli(tmp_path, "train", language="en"))


@pytest.mark.parametrize("reader, files", [
    (corpora.read_tnews, "train.json"), (corpora.read_afqmc, "dev.json"),
    (corpora.read_lcsts, "PART_I.txt"), (corpora.read_xnli, "xnli.dev.tsv")])
def test_missing_files_one_line_error(tmp_path, reader, files):
    with pytest.raises(ValueError, match="not found; put the published files") as info:
        list(reader(tmp_path / "nowhere", "train"))
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="not found"):
        list(reader(tmp_path / "nowhere", "validation"))


def test_registered_tasks(tmp_path, monkeypatch):
    names = [corpus_tasks.TNEWS_ZH, corpus_tasks.AFQMC_ZH, corpus_tasks.LCSTS_ZH,
             corpus_tasks.XNLI_ZH, corpus_tasks.XNLI_EN]
    assert names == ["plug_tnews_zh_v1", "plug_afqmc_zh_v1", "plug_lcsts_zh_v1",
                     "plug_xnli_zh_v1", "plug_xnli_en_v1"]
    assert set(names) <= set(seqio.TaskRegistry.names())
    assert corpus_tasks.register_corpus_task(names[0], "tnews") is seqio.get_mixture_or_task(
        names[0])
    with pytest.raises(ValueError, match="already registered"):
        corpus_tasks.register_corpus_task(names[0], "afqmc")
    monkeypatch.setenv("PLUG_JAX_DATA_DIR", str(tmp_path))
    lcsts = seqio.get_mixture_or_task(corpus_tasks.LCSTS_ZH)
    with pytest.raises(ValueError, match="LCSTS train file .*PART_I.txt.* not found"):
        lcsts.get_dataset(sequence_length=None, split="train", shuffle=False)
    (tmp_path / "lcsts").mkdir()
    (tmp_path / "lcsts" / "PART_I.txt").write_text(LCSTS_PART_I, encoding="utf-8")
    got = list(lcsts.get_dataset(sequence_length=None, split="train",
                                 shuffle=False).as_numpy_iterator())
    assert [g["summary"].decode() for g in got] == ["修改后的立法法全文公布", "深圳机场9死24伤续"]
    assert [int(g["human_label"]) for g in got] == [-1, -1]


def test_task_with_explicit_data_dir(tmp_path):
    _jsonl(tmp_path / "train.json", TNEWS_TRAIN)
    task = corpus_tasks.register_corpus_task("test_plug_tnews_zh_v1", "tnews",
                                             data_dir=str(tmp_path))
    try:
        got = list(task.get_dataset(sequence_length=None, split="train",
                                    shuffle=False).as_numpy_iterator())
    finally:
        seqio.TaskRegistry.remove("test_plug_tnews_zh_v1")
    assert [int(g["label"]) for g in got] == [7, 14, 0]
    assert got[1]["sentence"].decode() == "如何评价这款游戏？"
