"""The teacher scoring job and the Shop World experiment driver.

* the parallel-translation indexing: teacher t's logits for example i are its outputs on
  example i's translation in language t (fake teachers that echo their input ids);
* the driver end to end at tiny sizes (two languages, a few steps): the teacher checkpoints,
  the teacher-logits file, both students' evals and the printed table;
* (slow) the acceptance run: six teachers, the student within 2 points of the mean teacher
  accuracy on every language, the uniform ablation and the size / speed report.
"""
import dataclasses
import json
import os
import re

import numpy as np
import pytest

from plug_jax.data import shop_world

LANGS = ("zh", "en", "de", "fr", "es", "ja")


@dataclasses.dataclass(frozen=True)
class EchoTeacher:
    """Logits = the first 5 input ids + the teacher's offset (its params)."""

    def outputs(self, params, batch, deterministic=True):
        import jax.numpy as jnp
        return jnp.asarray(batch["encoder_input_tokens"][:, :5], jnp.float32) + params


def _ids(vocab, text, length=32):
    row = [vocab.vocab_size - 1, *vocab.encode(text)][:length]
    return np.array(row + [0] * (length - len(row)), np.float32)


def test_each_teacher_scores_the_translation_in_its_language(tmp_path):
    import plug_jax.tasks.amtss as amtss_tasks
    from plug_jax.families.amtss import logits_file, score
    vocab = amtss_tasks.vocabulary()
    teachers = {lang: (EchoTeacher(), np.float32(10_000 * (k + 1)))
                for k, lang in enumerate(LANGS) if lang != "fr"}
    lines = []
    path = score.score(teachers, str(tmp_path / "l.npz"), splits=("validation",), limit=20,
                       batch_size=4, log=lines.append)
    d = logits_file.read(path)["splits"]["validation"]
    assert d["logits"].shape == (20, 6, 5)
    for i in range(20):
        product = i // 6
        assert d["lang"][i] == i % 6
        assert d["label"][i] == shop_world.query_example(0, "validation", product,
                                                         LANGS[i % 6])["intent_label"]
        for k, lang in enumerate(LANGS):
            if lang == "fr":  # no teacher: masked out
                assert d["mask"][i, k] == 0 and not d["logits"][i, k].any()
                continue
            text = shop_world.query_example(0, "validation", product, lang)["query"]
            np.testing.assert_array_equal(d["logits"][i, k],
                                          _ids(vocab, text)[:5] + 10_000 * (k + 1),
                                          err_msg=f"example {i} teacher {lang}")
            assert d["mask"][i, k] == 1
    assert len([x for x in lines if x.startswith("scored validation")]) == 5
    assert any(x.startswith("wrote ") for x in lines)


def test_unknown_teacher_language_is_refused(tmp_path):
    from plug_jax.families.amtss import score
    with pytest.raises(ValueError, match="'ko'"):
        score.score({"ko": (EchoTeacher(), 0.0)}, str(tmp_path / "x.npz"), limit=6)


TINY = ("structbert_config.StructBERTConfig.num_layers=1",
        "structbert_config.StructBERTConfig.hidden_size=32",
        "structbert_config.StructBERTConfig.ffn_size=64", "BATCH_SIZE=8", "EVAL_STEPS=2",
        "LOG_PERIOD=1", "WARMUP_STEPS=1")


def test_driver_end_to_end_tiny(tmp_path, capsys):
    from plug_jax.families.amtss import shop_experiment
    out = tmp_path / "exp"
    argv = ["--out", str(out), "--langs", "zh,en", "--teacher_steps", "3", "--student_steps",
            "3", "--limit", "60"] + [x for b in TINY for x in ("--gin", b)]
    assert shop_experiment.main(argv) == 0
    printed = capsys.readouterr().out
    for lang in ("zh", "en"):
        assert (out / "teachers" / lang / "checkpoints" / "3").is_dir()
    for run in ("student", "student_uniform"):
        assert (out / run / "checkpoints" / "3").is_dir()
    res = json.loads((out / "results.json").read_text())
    table = (out / "table.txt").read_text()
    assert res["table"] + "\n" == table and res["table"] in printed
    assert sorted(res["teacher_accuracy"]) == ["en", "zh"]
    assert res["mean_teacher_accuracy"] == pytest.approx(np.mean(list(
        res["teacher_accuracy"].values())))
    for run in ("student", "student_uniform"):
        assert {"all", *LANGS} <= set(res[run]) and 0 <= res[run]["all"] <= 1
    assert set(res["cpu_seconds"]) == {"teachers", "scoring", "student", "student_uniform",
                                       "report"}
    assert all(v > 0 for v in res["cpu_seconds"].values())
    for lang in ("zh", "en"):
        assert re.search(rf"^{lang}\s+[0-9.]+\s+[0-9.]+\s+[0-9.]+\s+[+-][0-9.]+p$", table,
                         re.M), table
    assert "teachers/student:" in table and "CPU seconds per stage" in table
    # the scored file: 60 examples per split, two of six teachers present
    from plug_jax.families.amtss import logits_file
    d = logits_file.read(res["logits"])["splits"]
    assert {k: v["logits"].shape for k, v in d.items()} == {
        s: (60, 6, 5) for s in ("train", "validation", "test")}
    np.testing.assert_array_equal(d["test"]["mask"][0], [1, 1, 0, 0, 0, 0])
    # the report: two tiny teachers against one tiny student
    assert res["sizes"]["teachers_params"] > res["sizes"]["student_params"]


@pytest.mark.slow
def test_shop_experiment_acceptance(tmp_path, capsys):
    """The acceptance run (about 6-8 CPU minutes; slow): six small teachers, the max-margin
    student within 2 points of the mean teacher accuracy on every language, and the uniform
    ablation and the size / speed ratio reported."""
    from plug_jax.families.amtss import shop_experiment
    assert shop_experiment.main(["--out", str(tmp_path / "exp")]) == 0
    res = json.loads((tmp_path / "exp" / "results.json").read_text())
    mean = res["mean_teacher_accuracy"]
    for lang in LANGS:
        assert res["student"][lang] >= mean - 0.02, (lang, res["student"], mean)
    assert set(res["student_uniform"]) >= set(LANGS)
    assert res["sizes"]["params_ratio"] > 1
    assert sum(res["cpu_seconds"].values()) < 15 * 60
    assert "teachers/student:" in capsys.readouterr().out
    assert os.path.isfile(res["logits"])
