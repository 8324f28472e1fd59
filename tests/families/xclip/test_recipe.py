"""The X-CLIP Shop World recipe (CLIP -> OpenAI layout -> X-CLIP init -> X-CLIP -> controls)
runs its stages in order, keeps what finished when a stage fails, and skips finished stages
when it is run again. The stages' own command lines are tested where they live (the CLIP and
X-CLIP training, export and conversion tests); here each stage is a stand-in command that
records that it ran."""
import os
import sys

import pytest

from plug_jax.families.xclip import recipe


def _fake_commands(log, fail=None):
    def commands(workdir, bindings):
        out = {}
        for stage in recipe.STAGES:
            code = f"open({str(log)!r}, 'a').write({stage!r} + ' ' + {' '.join(bindings)!r} + '\\n')"
            if stage == "controls":
                code += "; print('X-CLIP retrieval on test: 2 videos x 2 captions'); print('  model 1.0')"
            if stage == fail:
                code += "; import sys; sys.exit(3)"
            out[stage] = [sys.executable, "-c", code]
        return out
    return commands


def test_the_recipe_runs_each_stage_once_and_resumes_after_a_failure(tmp_path, monkeypatch,
                                                                     capsys):
    log = tmp_path / "ran.txt"
    work = tmp_path / "work"
    monkeypatch.setattr(recipe, "commands", _fake_commands(log, fail="xclip"))
    with pytest.raises(SystemExit) as e:
        recipe.main(["--workdir", str(work), "--gin.TRAIN_STEPS=5"])
    msg = str(e.value)
    assert "stage 'xclip' failed (exit 3)" in msg and "finished stages are kept" in msg
    assert log.read_text().split("\n")[:4] == ["clip --gin.TRAIN_STEPS=5",
                                               "export --gin.TRAIN_STEPS=5",
                                               "init --gin.TRAIN_STEPS=5",
                                               "xclip --gin.TRAIN_STEPS=5"]
    assert sorted(p for p in os.listdir(work) if p.endswith(".done")) == [
        ".clip.done", ".export.done", ".init.done"]

    # Run again with the failure fixed: only the unfinished stages run.
    log.write_text("")
    monkeypatch.setattr(recipe, "commands", _fake_commands(log))
    assert recipe.main(["--workdir", str(work)]) == 0
    assert log.read_text().split() == ["xclip", "controls"]
    out = capsys.readouterr().out
    assert "[clip] done already" in out and "[init] done already" in out
    assert "X-CLIP retrieval on test: 2 videos x 2 captions" in out and "  model 1.0" in out
    assert (work / "controls.txt").read_text().splitlines() == [
        "X-CLIP retrieval on test: 2 videos x 2 captions", "  model 1.0"]

    # A third run runs nothing and prints the kept table.
    log.write_text("")
    assert recipe.main(["--workdir", str(work)]) == 0
    assert log.read_text() == ""
    assert "  model 1.0" in capsys.readouterr().out


def test_the_recipe_chains_the_stage_outputs(tmp_path):
    work = str(tmp_path)
    (tmp_path / "clip_openai").mkdir()
    (tmp_path / "clip_openai" / "shop_world_en.model").write_bytes(b"")
    cmds = recipe.commands(work, ["--gin.TRAIN_STEPS=7"])
    joined = {k: " ".join(v) for k, v in cmds.items()}
    assert f"--gin.MODEL_DIR='{work}/clip'" in joined["clip"]
    assert f"--gin.MODEL_DIR='{work}/clip'" in joined["export"]
    assert f"--gin.EXPORT_DIR='{work}/clip_openai'" in joined["export"]
    assert "--to openai" in joined["export"]
    assert f"--input {work}/clip_openai/model.pt" in joined["init"]
    assert f"--vocab {work}/clip_openai/shop_world_en.model" in joined["init"]
    assert f"--output {work}/xclip_init" in joined["init"]
    assert f"--gin.INIT_CHECKPOINT='{work}/xclip_init'" in joined["xclip"]
    assert joined["xclip"].endswith("--gin.TRAIN_STEPS=7")
    assert joined["controls"].endswith("--split=test --gin.TRAIN_STEPS=7")
    assert "--gin.TRAIN_STEPS=7" not in joined["clip"]
