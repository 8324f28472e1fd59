"""Your own files as tasks: checked records, one file:line error, the tokens a model sees."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from plug_jax.data.local_files import LocalDataError, read_records

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_formats_and_kinds(tmp_path):
    j = _write(tmp_path / "a.jsonl", '{"text": "红色连衣裙"}\n\n{"text": "蓝色帽子", "id": 2}\n')
    assert read_records(j) == [{"text": "红色连衣裙"}, {"text": "蓝色帽子"}]
    t = _write(tmp_path / "a.txt", "line one\n\nline two\n")
    assert [r["text"] for r in read_records(t)] == ["line one", "line two"]
    tsv = _write(tmp_path / "c.tsv", "sentence\tsentiment\n好看\tpositive\n差\t0\n")
    recs = read_records(tsv, "classify", inputs_key="sentence", label_key="sentiment",
                        labels=("negative", "positive"))
    assert recs == [{"inputs": "好看", "label": 1}, {"inputs": "差", "label": 0}]
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.png").write_bytes(b"x")
    cap = _write(tmp_path / "cap.jsonl", json.dumps({"image": "img/a.png", "text": "a hat"}))
    assert read_records(cap, "image_caption") == [
        {"image": str(tmp_path / "img" / "a.png"), "text": "a hat"}]


@pytest.mark.parametrize("name,content,kind,kw,message", [
    ("b.jsonl", '{"text": "a"}\n{"text": "b"\n', "lm", {}, "b.jsonl:2: invalid JSON"),
    ("b.jsonl", '{"text": "a"}\n\n[1, 2]\n', "lm", {}, "b.jsonl:3: a JSON list"),
    ("b.jsonl", '{"txt": "a"}\n', "lm", {}, "b.jsonl:1: no 'text'"),
    ("b.jsonl", '{"text": ""}\n', "lm", {}, "b.jsonl:1: 'text' is \"\""),
    ("b.tsv", "inputs\ttargets\na\tb\nc\n", "text2text", {}, "b.tsv:3: 1 fields"),
    ("b.tsv", "inputs\tlabel\na\tgood\n", "classify", {"labels": ("bad", "fine")},
     "b.tsv:2: label \"good\" is not one of ['bad', 'fine']"),
    ("b.jsonl", '{"image": "nope.png", "text": "x"}\n', "image_caption", {},
     "b.jsonl:1: image"),
    ("b.txt", "a\n", "text2text", {}, "kind 'lm' only"),
    ("b.csv", "a\n", "lm", {}, "unknown file type '.csv'"),
])
def test_malformed_records_are_one_line_with_file_and_line(tmp_path, name, content, kind, kw,
                                                           message):
    path = _write(tmp_path / name, content)
    with pytest.raises(LocalDataError) as e:
        read_records(path, kind, **kw)
    assert message in str(e.value) and "\n" not in str(e.value) and "fix:" in str(e.value)


def test_lm_task_tokens_are_the_vocabulary_encoding(tmp_path):
    import seqio

    from plug_jax.tasks import local
    texts = [f"这款红色连衣裙采用真丝面料，第{i}号。" for i in range(40)]
    path = _write(tmp_path / "train.jsonl", "\n".join(json.dumps({"text": t}) for t in texts))
    name = local.local_task("local_testdocs_zh_v1", path)
    task = seqio.get_mixture_or_task(name)
    vocab = task.output_features["targets"].vocabulary
    val = [list(x["targets"]) for x in task.get_dataset(
        {"targets": 64}, split="validation", shuffle=False).as_numpy_iterator()]
    # every 20th record is held out: records 0 and 20
    assert val == [list(vocab.encode(texts[0])) + [1], list(vocab.encode(texts[20])) + [1]]
    train = list(task.get_dataset({"targets": 64}, split="train", shuffle=False))
    assert len(train) == 38
    # the same name with other files is refused in one line
    other = _write(tmp_path / "other.jsonl", json.dumps({"text": "x"}))
    with pytest.raises(LocalDataError, match="already registered"):
        local.local_task("local_testdocs_zh_v1", other)


def test_plug_train_on_a_malformed_file_exits_2_and_writes_nothing(tmp_path):
    bad = _write(tmp_path / "bad.jsonl", '{"text": "ok"}\n{"text": "a"\n')
    run = tmp_path / "run"
    out = subprocess.run(
        [sys.executable, "-m", "plug_jax.main", "--mode=train",
         "--gin_file=experiments/gpt3/shop_tiny.gin", "--gin_file=runs/local_data.gin",
         f"--gin.MODEL_DIR={run}", f"--gin.LOCAL_TRAIN='{bad}'"],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
        env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert out.returncode == 2
    errors = [line for line in out.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and f"{bad}:2: invalid JSON" in errors[0], out.stderr[-1500:]
    assert not run.exists()
