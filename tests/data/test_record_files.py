"""Prepared record files (plug_jax/data/record_files.py): round-robin ArrayRecord shards with
a JSON index, random access, one-line errors for missing / truncated / corrupt shards, a
task over a prepared directory read by index, and plug-train refusing a truncated shard
with exit 2 and the checkpoint untouched."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from plug_jax.data import record_files as rf

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _docs(n):
    return [{"text": f"这款红色连衣裙采用真丝面料，第{i}号。" * (1 + i % 3), "label": i % 3,
             "score": i / 4} for i in range(n)]


def test_round_robin_shards_and_random_access(tmp_path):
    docs = _docs(103)
    entry = rf.write_split(str(tmp_path), "train", iter(docs), num_shards=4)
    assert [s["records"] for s in entry["shards"]] == [26, 26, 26, 25]
    assert entry["features"] == {"text": "string", "label": "int64", "score": "float32"}
    names = sorted(p for p in os.listdir(tmp_path) if p.endswith(".array_record"))
    assert names == [f"train-{i:05d}-of-00004.array_record" for i in range(4)]
    rf.write_split(str(tmp_path), "validation", iter(docs[:5]), num_shards=2)
    files = rf.RecordFiles(str(tmp_path))
    assert files.splits == ("train", "validation") and files.num_records("train") == 103
    for split in files.splits:
        files.check(split)
    order = [102, 0, 57, 3, 57]
    assert files.read("train", order) == [docs[i] for i in order]
    # The JSON index is the only metadata; a reader needs nothing else.
    with open(tmp_path / rf.INDEX_FILE) as f:
        index = json.load(f)
    assert index["format"] == rf.FORMAT and index["splits"]["validation"]["records"] == 5
    with pytest.raises(IndexError, match="record 103 of split 'train' is out of range"):
        files.read("train", [103])


def test_missing_truncated_and_corrupt_shards_are_one_line_errors(tmp_path):
    rf.write_split(str(tmp_path), "train", iter(_docs(60)), num_shards=3)
    shard = tmp_path / "train-00001-of-00003.array_record"
    data = shard.read_bytes()
    # Truncated: the size check names the shard before any record is read.
    shard.write_bytes(data[:len(data) // 2])
    with pytest.raises(rf.RecordFileError) as e:
        rf.RecordFiles(str(tmp_path)).check("train")
    msg = str(e.value)
    assert "\n" not in msg and str(shard) in msg and "truncated" in msg and "fix:" in msg
    # Same size, bytes flipped: the shard's checksums catch it when it is read.
    flipped = bytearray(data)
    for i in range(len(data) // 2, len(data) // 2 + 64):
        flipped[i] ^= 0x5A
    shard.write_bytes(bytes(flipped))
    files = rf.RecordFiles(str(tmp_path))
    files.check("train")  # the size is right
    with pytest.raises(rf.RecordFileError, match=r"prepared shard .*00001-of-00003.* is "
                                                 r"truncated or corrupt .*; fix: prepare it"):
        files.read("train", range(60))
    assert files.read("train", [0, 3]) == [_docs(60)[0], _docs(60)[3]]  # other shards read
    shard.unlink()
    with pytest.raises(rf.RecordFileError, match="00001-of-00003.array_record is missing"):
        rf.RecordFiles(str(tmp_path)).check("train")
    with pytest.raises(rf.RecordFileError, match="holds no prepared records"):
        rf.RecordFiles(str(tmp_path / "nowhere"))
    # The check command reads every chunk and exits 2 with one line.
    proc = subprocess.run([sys.executable, "-m", "plug_jax.data.record_files", "check",
                           str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.count("error:") == 1 and "is missing" in proc.stderr


def _prepare(tmp_path, n=120):
    d = tmp_path / "prepared"
    docs = [{"text": d_["text"]} for d_ in _docs(n)]
    rf.write_split(str(d), "train", iter(docs), num_shards=8)
    rf.write_split(str(d), "validation", iter(docs[:16]), num_shards=2)
    return d, docs


def test_a_local_task_over_prepared_files_reads_by_index(tmp_path):
    import seqio

    from plug_jax.data import pipeline
    from plug_jax.tasks import local
    d, docs = _prepare(tmp_path)
    name = local.local_task("local_testrecords_zh_v1", str(d), kind="lm")
    task = seqio.get_mixture_or_task(name)
    vocab = task.output_features["targets"].vocabulary
    lengths = {"targets": 32}
    it = pipeline.get_batch_iterator(name, lengths, "train", 4, shuffle=False, pack=False)
    assert it.index_based and it.examples_per_batch == 4
    b = next(it)
    want = [(list(vocab.encode(docs[i]["text"]))[:31] + [1]) for i in range(4)]
    got = [[t for t in row if t] for row in b["decoder_target_tokens"]]
    assert got == want
    # Two processes: each reads its half of the rows.
    halves = [next(pipeline.get_batch_iterator(name, lengths, "train", 4, shuffle=False,
                                               pack=False, process_index=p, process_count=2))
              for p in range(2)]
    np.testing.assert_array_equal(np.concatenate([h["decoder_target_tokens"] for h in halves]),
                                  b["decoder_target_tokens"])
    # The stream reads the same records (evaluation passes, seqio's shard_info).
    val = [list(x["targets"]) for x in task.get_dataset(lengths, split="validation",
                                                         shuffle=False).as_numpy_iterator()]
    assert len(val) == 16 and val[0] == want[0]
    shard0 = list(task.source.get_dataset("train", shuffle=False,
                                          shard_info=seqio.ShardInfo(0, 2)).as_numpy_iterator())
    assert [int(x["index"]) for x in shard0[:3]] == [0, 2, 4]


def test_plug_train_on_a_truncated_shard_exits_2_and_keeps_the_checkpoint(tmp_path):
    d, _ = _prepare(tmp_path)
    run = tmp_path / "run"
    args = [sys.executable, "-m", "plug_jax.main", "--mode=train",
            "--gin_file=experiments/gpt3/shop_tiny.gin", "--gin_file=runs/local_data.gin",
            f"--gin.MODEL_DIR='{run}'", f"--gin.LOCAL_TRAIN='{d}'",
            "--gin.LOCAL_TASK_NAME='local_truncated_zh_v1'",
            "--gin.TASK_FEATURE_LENGTHS={'targets': 32}", "--gin.BATCH_SIZE=4",
            "--gin.EVAL_PERIOD=0", "--gin.EVAL_STEPS=1", "--gin.EVAL_BASELINE=False",
            "--gin.LOG_PERIOD=1", "--gin.CHECKPOINT_PERIOD=2"]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = os.environ["PLUG_JAX_TEST_XLA_FLAGS"]
    first = subprocess.run(args + ["--gin.TRAIN_STEPS=2"], capture_output=True, text=True,
                           cwd=ROOT, timeout=300, env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "input: index-based, 4 examples per global batch" in first.stdout

    def snapshot():
        return {os.path.relpath(os.path.join(r, f), run): os.path.getmtime(os.path.join(r, f))
                for r, _, fs in os.walk(run) for f in fs if "checkpoint" in r or "/2" in r}

    before = snapshot()
    assert any(k.startswith("checkpoints") or "/" in k for k in before)
    shard = d / "train-00003-of-00008.array_record"
    shard.write_bytes(shard.read_bytes()[:1000])
    second = subprocess.run(args + ["--gin.TRAIN_STEPS=4"], capture_output=True, text=True,
                            cwd=ROOT, timeout=300, env=env)
    assert second.returncode == 2, second.stderr[-3000:]
    errors = [line for line in second.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and str(shard) in errors[0] and "fix:" in errors[0], \
        second.stderr[-2000:]
    assert snapshot() == before  # the checkpoint of step 2 is untouched
