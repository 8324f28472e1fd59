"""The StructBERT Shop World experiments through plug-train and plug-infer.

The default suite runs each for a few steps (the wiring: tasks, converter, objectives,
restore of the pre-trained encoder, predictions). The full runs that reach the accuracy
targets on held-out data take ~15-25 minutes on 2 CPU cores and are marked ``slow``
(``make test-slow``).
"""
import importlib.util
import pathlib
import re

import pytest

_spec = importlib.util.spec_from_file_location(
    "plug_jax_tests_cli_helpers", pathlib.Path(__file__).resolve().parents[2] / "cli_helpers.py")
cli_helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cli_helpers)
_cli, _rows = cli_helpers.cli, cli_helpers.rows

PRETRAIN = "experiments/structbert/shop_pretrain_tiny.gin"
SENTIMENT = "experiments/structbert/shop_sentiment_tiny.gin"


def test_pretrain_then_sentiment_fine_tune_through_the_cli(tmp_path):
    pre, sent = tmp_path / "pre", tmp_path / "sent"
    run = _cli("train", PRETRAIN, pre, "--gin.TRAIN_STEPS=4", "--gin.BATCH_SIZE=8",
               "--gin.EVAL_STEPS=2", "--gin.LOG_PERIOD=2")
    rows = _rows(pre)
    assert {"mlm_loss", "mlm_accuracy", "mlm_tokens", "structural_loss", "sentence_loss"} \
        <= set(rows[0])
    assert re.search(r"sentence-order accuracy [0-9.]+ +\(16 examples\)", run.stdout)
    infer = _cli("infer", PRETRAIN, pre, "--gin.PROMPTS=['纯棉[MASK]柔软透气。\\n现价29元。']")
    assert "[MASK] -> " in infer.stdout and "p=" in infer.stdout

    run = _cli("train", SENTIMENT, sent, f"--gin.INIT_CHECKPOINT='{pre}'", "--gin.TRAIN_STEPS=4",
               "--gin.BATCH_SIZE=8", "--gin.EVAL_STEPS=2", "--gin.LOG_PERIOD=2")
    # encoder + pooler restored; the pre-training heads ignored; the classifier fresh
    assert "missing: classifier" in run.stdout and "unexpected: sentence_head" in run.stdout
    assert "classification accuracy" in run.stdout
    infer = _cli("infer", SENTIMENT, sent, f"--gin.INIT_CHECKPOINT='{pre}'")
    assert len(re.findall(r"^\[(negative|positive) p=", infer.stdout, re.M)) == 4


@pytest.mark.slow
def test_shop_world_accuracy_targets(tmp_path, report_result):
    """Held-out (test split) sentence-order accuracy >= 0.9 after the pre-training
    experiment and review-sentiment accuracy >= 0.95 after the fine-tune from it, each
    reported next to its control: the fresh encoder's sentence-order accuracy (TRAIN_STEPS=0)
    and the same sentiment fine-tune from fresh initialisation. The latter is reported, not
    asserted below: review sentiment is trivial from scratch too (every review carries a cue
    phrase; docs/data.md), the pre-training control is tests/families/structbert/
    test_learning.py."""
    pre, sent = tmp_path / "pre", tmp_path / "sent"
    _cli("train", PRETRAIN, pre, timeout=3600)
    order = _rows(pre)[-1]
    _cli("train", PRETRAIN, tmp_path / "fresh", "--gin.TRAIN_STEPS=0",
         "--gin.optim.warmup_cosine.total_steps=1")
    fresh_order = _rows(tmp_path / "fresh")[-1]
    report_result("structbert sentence-order accuracy, full pre-training", order["eval/accuracy"],
                  control=f"fresh encoder {fresh_order['eval/accuracy']:.4f}, chance 0.3333")
    assert order["eval/tokens"] == fresh_order["eval/tokens"] == 1000  # every test pair
    assert order["eval/accuracy"] >= 0.9, order
    assert order["eval/accuracy"] > fresh_order["eval/accuracy"] + 0.3, (order, fresh_order)

    _cli("train", SENTIMENT, sent, f"--gin.INIT_CHECKPOINT='{pre}'", timeout=1800)
    senti = _rows(sent)[-1]
    _cli("train", SENTIMENT, tmp_path / "sent_fresh", "--gin.INIT_CHECKPOINT=None", timeout=1800)
    senti_fresh = _rows(tmp_path / "sent_fresh")[-1]
    report_result("structbert sentiment accuracy, fine-tuned from the pre-trained encoder",
                  senti["eval/accuracy"],
                  control=f"same fine-tune from fresh initialisation "
                          f"{senti_fresh['eval/accuracy']:.4f} (not a pre-training control: "
                          f"cue phrases)")
    assert senti["eval/tokens"] == 1000
    assert senti["eval/accuracy"] >= 0.95, senti
