"""Title generation: the palm_title task, evaluate_generation (ROUGE-L vs. the lead
baseline) on a freshly initialised PLUG tiny checkpoint, and plug-eval selecting it from gin."""
import dataclasses
import os
import unicodedata

import numpy as np
import pytest

import plug_jax.tasks  # noqa: F401  (registers the Shop World tasks)
from plug_jax import models
from plug_jax.data import shop_world
from plug_jax.families.plug import PlugConfig
from plug_jax.trainer import generation_eval, loop
from plug_jax.trainer.metrics import read_metrics

TASK = "palm_title_zh_v1"
LENGTHS = {"inputs": 128, "targets": 32}
DATA = loop.DatasetConfig(TASK, LENGTHS, batch_size=8, converter="encdec")
ONE_DEVICE = loop.MeshConfig((1, 1, 1, 1), rules="fsdp", num_devices=1)
GIN_ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "gin_configs")


def _model():
    # The experiments' VOCAB_SIZE: the Shop World zh vocabulary padded to 1152.
    return models.EncoderDecoderLM(dataclasses.replace(PlugConfig.from_preset("tiny"),
                                                       vocab_size=1152), family="plug")


def _chars(text):
    """Chinese ROUGE tokens, written out independently of plug_jax.metrics.rouge: one per
    character, lower-cased, whitespace and punctuation (Unicode P* / Z*) dropped."""
    return [c for c in text.lower()
            if not c.isspace() and unicodedata.category(c)[0] not in "PZ"]


def _lcs(a, b):
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            table[i + 1][j + 1] = table[i][j] + 1 if x == y else max(table[i][j + 1],
                                                                      table[i + 1][j])
    return table[-1][-1]


def _rouge_l(predictions, references):
    """Means over examples of ROUGE-L precision LCS / len(pred), recall LCS / len(ref) and
    F1 = 2 LCS / (len(pred) + len(ref)) (all 0 without a common character)."""
    rows = []
    for p, r in zip(predictions, references, strict=True):
        p, r = _chars(p), _chars(r)
        lcs = _lcs(p, r)
        rows.append((lcs / len(p), lcs / len(r), 2 * lcs / (len(p) + len(r))) if lcs
                    else (0.0, 0.0, 0.0))
    return [sum(col) / len(rows) for col in zip(*rows)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A PLUG tiny checkpoint of freshly initialised parameters, saved by the loop at
    step 0 (train_steps=0: no train step is compiled, no data is read)."""
    d = str(tmp_path_factory.mktemp("title"))
    loop.train(model=_model(), model_dir=d, train_steps=0, train_dataset_cfg=DATA,
               mesh=ONE_DEVICE, learning_rate=1e-3, log_period=1, checkpoint_period=100,
               peak_flops=1e11, async_checkpoints=False)
    return d


def test_title_task_is_description_to_title_on_unseen_test_combinations():
    import seqio
    from plug_jax.tasks import palm
    task = seqio.get_mixture_or_task(TASK)
    vocab = task.output_features["targets"].vocabulary
    ds = task.get_dataset(LENGTHS, split="test", shuffle=False)
    refs = palm.references("test", 3, "zh")
    for ex, ref in zip(ds.take(3).as_numpy_iterator(), refs):
        assert ex["inputs"][-1] == vocab.eos_id and ex["targets"][-1] == vocab.eos_id
        assert vocab.decode(ex["inputs"].tolist()[:-1]) == ref["inputs"]
        assert vocab.decode(ex["targets"].tolist()[:-1]) == ref["targets"]
    for i in range(3):
        raw = shop_world.text_example(0, "test", i, "zh")
        assert refs[i] == {"inputs": raw["description"], "targets": raw["title"]}
    # The test split's attribute combinations never occur in train.
    combo = lambda p: (p["category"], p["colour"], p["material"])  # noqa: E731
    test = {combo(shop_world.text_example(0, "test", i, "zh", kinds=())) for i in range(50)}
    train = {combo(shop_world.text_example(0, "train", i, "zh", kinds=()))
             for i in range(500)}
    assert not test & train
    assert palm.description_inputs("test", 2, "zh") == [r["inputs"] for r in refs[:2]]


def test_evaluate_generation_scores_model_and_lead_baseline(trained, capsys):
    res = generation_eval.evaluate_generation(
        model=_model(), model_dir=trained, dataset_cfg=DATA, split="test", num_examples=8,
        method="beam", num_beams=5, length_penalty=0.95, max_new_tokens=8, batch_size=8,
        mesh=ONE_DEVICE)
    assert res["num_examples"] == 8 and res["step"] == 0 and len(res["predictions"]) == 8
    raw = [shop_world.text_example(0, "test", i, "zh") for i in range(8)]
    assert res["references"] == [r["title"] for r in raw]
    # The model's ROUGE-L, recomputed from its predictions without plug_jax's ROUGE code.
    precision, recall, f = _rouge_l(res["predictions"], res["references"])
    assert res["rouge_l"] == pytest.approx(f, abs=1e-12)
    assert res["rouge_l_precision"] == pytest.approx(precision, abs=1e-12)
    assert res["rouge_l_recall"] == pytest.approx(recall, abs=1e-12)
    # The lead baseline, recomputed from the raw Shop World examples: the first description
    # sentence of each of the first 8 test products against its title.
    lead = _rouge_l([r["description_sentences"][0] for r in raw], [r["title"] for r in raw])[2]
    assert res["lead_rouge_l"] == pytest.approx(lead, abs=1e-12)
    assert 0.1 < lead < 0.9  # the titles share some characters with the first sentence
    rows = [r for r in read_metrics(trained) if "gen/rouge_l" in r]
    assert rows[-1]["step"] == 0
    assert rows[-1]["gen/rouge_l"] == pytest.approx(res["rouge_l"])
    assert rows[-1]["gen/lead_rouge_l"] == pytest.approx(lead)
    out = capsys.readouterr().out
    assert (f"title generation on {TASK}/test (8 examples, beam 5, alpha 0.95, step 0): "
            f"ROUGE-L F {res['rouge_l']:.4f}  | lead-sentence baseline {lead:.4f} -> the model"
            in out)
    assert out.count("reference  ") == 3 and out.count("prediction ") == 3


def test_greedy_with_given_examples_and_params(trained):
    params, _, _ = loop.load_for_inference(_model(), trained, DATA, ONE_DEVICE)
    examples = [{"inputs": "红色的杯子。很好用。", "targets": "红色杯子"}] * 3
    res = generation_eval.evaluate_generation(
        model=_model(), model_dir=trained, dataset_cfg=DATA, method="greedy",
        max_new_tokens=4, params=params, examples=examples, num_samples=0, lang="zh")
    # lead "红色的杯子。" (红色的杯子, 5 chars) vs "红色杯子" (4): LCS 4, P 4/5, R 1,
    # F = 2 * 0.8 / 1.8 = 8/9.
    assert res["lead_rouge_l"] == pytest.approx(8 / 9)
    assert res["num_examples"] == 3 and res["step"] is None
    with pytest.raises(loop.TrainError):
        generation_eval.evaluate_generation(model=_model(), model_dir=trained,
                                            dataset_cfg=DATA, method="top_p",
                                            examples=examples, params=params)


def test_plug_eval_runs_generation_eval_when_gin_selects_it(trained):
    import subprocess
    import sys
    from plug_jax import gin_utils
    exp = "experiments/palm/shop_title_tiny.gin"
    gin_utils.parse_gin([exp], ["MODEL_DIR='/tmp/unused'"], [GIN_ROOT])
    assert generation_eval.selected_by_gin()
    gin_utils.parse_gin([exp], ["MODEL_DIR='/tmp/unused'", "EVAL_GENERATION=False"], [GIN_ROOT])
    assert not generation_eval.selected_by_gin()
    gin_utils.parse_gin(["experiments/gpt3/shop_tiny.gin"], [], [GIN_ROOT])
    assert not generation_eval.selected_by_gin()
    # The fixture's loop saves no metrics row at step 0; metrics.jsonl exists only once another
    # test of this module has run an evaluation on the same worker (xdist order varies).
    has_metrics = os.path.exists(os.path.join(trained, "metrics.jsonl"))
    before = len([r for r in read_metrics(trained) if "gen/rouge_l" in r]) if has_metrics else 0
    env = dict(os.environ)
    env["XLA_FLAGS"] = os.environ["PLUG_JAX_TEST_XLA_FLAGS"]  # gin hardware decides devices
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run(
        # The fixture's checkpoint is PLUG tiny: its model gin replaces the experiment's.
        [sys.executable, "-m", "plug_jax.main", "--mode=eval", f"--gin_file={exp}",
         "--gin_file=models/plug/tiny.gin", "--gin.VOCAB_SIZE=1152",
         f"--gin_search_paths={GIN_ROOT}", f"--gin.MODEL_DIR='{trained}'",
         "--gin.GEN_EVAL_EXAMPLES=2", "--gin.GEN_MAX_NEW_TOKENS=4", "--gin.GEN_NUM_BEAMS=2",
         "--gin.GEN_BATCH_SIZE=2"], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (f"title generation on {TASK}/test (2 examples, beam 2, alpha 0.95, step 0)"
            in proc.stdout)
    rows = [r for r in read_metrics(trained) if "gen/rouge_l" in r]
    assert len(rows) == before + 1 and rows[-1]["gen/num_examples"] == 2
    assert np.isfinite(rows[-1]["gen/lead_rouge_l"])


def test_plug_infer_feeds_the_encoder_what_training_does(trained, monkeypatch):
    """plug-infer ends an encoder-decoder prompt with EOS when the task's inputs end with
    one (palm_title's do): the encoder sees the ids of the task's own examples."""
    import seqio
    from plug_jax import decoding
    from plug_jax.data.pipeline import task_adds_eos
    assert task_adds_eos(TASK) and not task_adds_eos("structbert_sentiment_zh_v1")
    ds = seqio.get_mixture_or_task(TASK).get_dataset(LENGTHS, split="test", shuffle=False)
    want = [ex["inputs"].tolist() for ex in ds.take(3).as_numpy_iterator()]
    descs = [shop_world.text_example(0, "test", i, "zh")["description"] for i in range(3)]
    seen = {}

    def generate(step_fn, init_cache, params, ids, mask, max_new_tokens, **kw):
        seen["encoder_ids"] = np.asarray(params["encoder_ids"])
        raise StopIteration

    monkeypatch.setattr(decoding, "generate", generate)
    params, _, _ = loop.load_for_inference(_model(), trained, DATA, ONE_DEVICE)
    with pytest.raises(StopIteration):
        loop.infer(model=_model(), model_dir=trained, dataset_cfg=DATA, prompts=descs,
                   methods=("greedy",), max_new_tokens=4, params=params)
    got = [[int(t) for t in row if t > 0] for row in seen["encoder_ids"]]
    assert got == want
