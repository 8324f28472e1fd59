"""Typos in gin names (docs/gin.md "Typos"): a macro that a --gin flag or a user's gin file
sets and nothing uses is one error line, exit status 2, before anything is written; so is
a parameter or configurable that does not exist."""
import glob
import os
import subprocess
import sys
import textwrap

import pytest

from plug_jax import gin_utils as gu
from plug_jax import main
from plug_jax.gin_utils import GinConfigError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROOT = os.path.join(REPO, "gin_configs")
EXP = "experiments/gpt3/shop_tiny.gin"
EXPERIMENTS = sorted(os.path.relpath(p, ROOT)
                     for p in glob.glob(f"{ROOT}/experiments/**/*.gin", recursive=True))
HEADER = """\
from __gin__ import dynamic_registration
import plug_jax.trainer.loop as loop
"""


def write(tmp_path, name, text, header=False):
    path = tmp_path / name
    path.write_text((HEADER if header else "") + textwrap.dedent(text))
    return str(path)


def line_of(path, needle):
    with open(path) as f:
        return next(i for i, line in enumerate(f, 1) if needle in line)


def one_line(excinfo):
    msg = str(excinfo.value)
    assert "\n" not in msg
    return msg


def cli(capsys, *argv):
    """plug-train in this process (what `python -m plug_jax.main` runs): (code, out, errors)."""
    code = main.run(list(argv), mode="train", prog="plug-train")
    out, err = capsys.readouterr()
    return code, out, [x for x in err.splitlines() if x.strip()]


# --- through the command line --------------------------------------------------------------

def test_train_step_typo_is_one_line_exit_2_and_writes_nothing(tmp_path):
    model_dir = tmp_path / "run"
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = os.environ["PLUG_JAX_TEST_XLA_FLAGS"]
    proc = subprocess.run(
        [sys.executable, "-m", "plug_jax.main", "--mode=train", f"--gin_file={EXP}",
         f"--gin.MODEL_DIR={model_dir}", "--gin.TRAIN_STEP=3"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [x for x in proc.stderr.splitlines() if "error" in x.lower() or "TRAIN_STEP" in x]
    assert errors == ["plug_jax: error: --gin.TRAIN_STEP=3 sets macro TRAIN_STEP, which no "
                      "binding uses; did you mean TRAIN_STEPS?"], proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert not model_dir.exists()


def test_unused_macro_in_a_user_file_names_file_and_line(tmp_path, capsys):
    lib = write(tmp_path, "lib.gin", """\
        include 'experiments/gpt3/shop_tiny.gin'
        BATCH_SIZE = 4
        LERNING_RATE = 1e-2
    """)
    exp = write(tmp_path, "exp.gin", f"include '{lib}'\nSEED = 1\n")
    model_dir = tmp_path / "run"
    code, out, errors = cli(capsys, f"--gin_file={exp}", f"--gin.MODEL_DIR={model_dir}")
    assert code == 2 and len(errors) == 1, errors
    assert errors[0] == (f"plug-train: error: {lib}:{line_of(lib, 'LERNING')} sets macro "
                         "LERNING_RATE, which no binding uses; did you mean LEARNING_RATE?")
    assert not model_dir.exists()


def test_several_unused_macros_are_one_line(tmp_path, capsys):
    code, _, errors = cli(capsys, f"--gin_file={EXP}", f"--gin.MODEL_DIR={tmp_path}",
                          "--gin.TRAIN_STEP=3", "--gin.QQQ_ZZZ=1")
    assert code == 2 and len(errors) == 1, errors
    assert "did you mean TRAIN_STEPS?" in errors[0]
    assert "also unused: QQQ_ZZZ at --gin.QQQ_ZZZ=1" in errors[0]
    assert not os.listdir(tmp_path)


def test_no_close_match_still_refused(tmp_path, capsys):
    code, _, errors = cli(capsys, f"--gin_file={EXP}", f"--gin.MODEL_DIR={tmp_path}",
                          "--gin.QQQ_ZZZ=1")
    assert code == 2 and len(errors) == 1, errors
    assert "--gin.QQQ_ZZZ=1 sets macro QQQ_ZZZ, which no binding uses; fix:" in errors[0]


@pytest.mark.parametrize("flag, words", [
    ("--gin.loop.train.no_such_param=1", ["unknown gin parameter 'no_such_param'",
                                          "--gin.loop.train.no_such_param flag"]),
    ("--gin.loop.trian.seed=1", ["unknown gin configurable", "loop.trian"]),
    ("--gin.nothing_like_this_zz.param=1", ["unknown gin configurable",
                                            "nothing_like_this_zz"]),
])
def test_unknown_parameter_or_configurable_is_one_line_exit_2(tmp_path, capsys, flag, words):
    model_dir = tmp_path / "run"
    code, _, errors = cli(capsys, f"--gin_file={EXP}", f"--gin.MODEL_DIR={model_dir}", flag)
    assert code == 2 and len(errors) == 1, errors
    assert errors[0].startswith("plug-train: error: ")
    assert all(w in errors[0] for w in words), errors[0]
    assert not model_dir.exists()


def test_print_config_of_a_correct_run_is_not_refused(tmp_path, capsys):
    code, out, errors = cli(capsys, f"--gin_file={EXP}", f"--gin.MODEL_DIR={tmp_path}",
                            "--gin.TRAIN_STEPS=3", "--gin.EVAL_BASELINE=False",
                            "--gin.PROMPTS=['x']", "--print_config")
    assert code == 0 and not errors, errors
    assert "TRAIN_STEPS = 3" in out and not os.listdir(tmp_path)


def test_print_config_prints_then_refuses_the_typo(tmp_path, capsys):
    code, out, errors = cli(capsys, f"--gin_file={EXP}", f"--gin.MODEL_DIR={tmp_path}",
                            "--gin.TRAIN_STEP=3", "--print_config")
    assert code == 2 and len(errors) == 1 and "did you mean TRAIN_STEPS?" in errors[0]
    assert "TRAIN_STEP = 3" in out and "# set in --gin.TRAIN_STEP flag" in out
    assert not os.listdir(tmp_path)


# --- the rule (parse_gin(..., check_unused=True)) ---------------------------------------------

def test_off_by_default_in_the_python_api():
    gu.parse_gin([EXP], ["MODEL_DIR='/tmp/unused'", "TRAIN_STEP=3"], [ROOT])
    with pytest.raises(GinConfigError):
        gu.parse_gin([EXP], ["MODEL_DIR='/tmp/unused'", "TRAIN_STEP=3"], [ROOT],
                     check_unused=True)


def test_macro_in_macro_scoped_reference_and_containers_count_as_used(tmp_path):
    path = write(tmp_path, "ok.gin", """
        A = %B
        B = %C
        C = 3
        LENGTHS = {'targets': %LEN}
        LEN = 8
        BS = 2
        loop.train.seed = %A
        loop.train.train_dataset_cfg = @train/loop.DatasetConfig()
        train/loop.DatasetConfig.batch_size = %BS
        train/loop.DatasetConfig.task_feature_lengths = %LENGTHS
    """, header=True)
    gu.parse_gin([path], [], [ROOT], check_unused=True)
    assert {"A", "B", "C", "LEN", "LENGTHS", "BS"} <= gu.used_macros()


def test_a_macro_used_only_by_an_unused_macro_counts_as_used(tmp_path):
    path = write(tmp_path, "m.gin", """
        DEAD = %B
        B = 1
    """, header=True)
    with pytest.raises(GinConfigError) as e:
        gu.parse_gin([path], [], [ROOT], check_unused=True)
    msg = one_line(e)
    assert msg.startswith(f"{path}:{line_of(path, 'DEAD')} sets macro DEAD,")
    assert "also unused" not in msg


def test_required_contract_counts_as_used(tmp_path):
    """A macro declared REQUIRED (a run file's contract), then set by a file and a flag and
    used by no binding, is allowed."""
    write(tmp_path, "contract.gin", "OFFERED = %gin.REQUIRED\n")
    path = write(tmp_path, "exp.gin", "include 'contract.gin'\nOFFERED = 5\n")
    gu.parse_gin([path], ["OFFERED=6"], [str(tmp_path)], check_unused=True)
    assert "OFFERED" in gu.used_macros()


def test_unused_macro_in_an_included_user_file_names_the_include(tmp_path):
    write(tmp_path, "inner.gin", "X = 1\nUNUSED_IN_INNER = 2\n")
    path = write(tmp_path, "outer.gin", "include 'inner.gin'\nloop.train.seed = %X\n",
                 header=True)
    with pytest.raises(GinConfigError) as e:
        gu.parse_gin([path], [], [str(tmp_path), ROOT], check_unused=True)
    assert one_line(e).startswith("inner.gin:2 sets macro UNUSED_IN_INNER,")


def test_project_files_are_not_checked_but_flags_overriding_them_are():
    files = ["runs/infer.gin", "models/gpt3/tiny-moe.gin"]  # AUX_LOSS_FACTORS: train only
    flags = ["MODEL_DIR='/tmp/unused'", "PROMPTS=['x']"]
    gu.parse_gin(files, flags, [ROOT], check_unused=True)
    assert "AUX_LOSS_FACTORS" not in gu.used_macros()
    with pytest.raises(GinConfigError) as e:
        gu.parse_gin(files, flags + ["AUX_LOSS_FACTORS={}"], [ROOT], check_unused=True)
    assert one_line(e).startswith("--gin.AUX_LOSS_FACTORS={} sets macro AUX_LOSS_FACTORS,")


def test_macros_read_by_code():
    from plug_jax.trainer import generation_eval
    assert generation_eval.GIN_SWITCH in gu.MACROS_READ_BY_CODE
    gu.parse_gin(["experiments/palm/shop_title_tiny.gin"],
                 ["MODEL_DIR='/tmp/unused'", "EVAL_GENERATION=False"], [ROOT], check_unused=True)


@pytest.mark.parametrize("path", EXPERIMENTS)
def test_every_experiment_uses_every_macro_it_sets(path, monkeypatch):
    """Stricter than the command line: the project's own files are checked too."""
    gu.parse_gin([path], ["MODEL_DIR='/tmp/unused'"], [ROOT], check_unused=True)
    monkeypatch.setattr(gu, "_project_config_dirs", lambda: [])
    gu.check_unused_macros(gu.last_sources())
