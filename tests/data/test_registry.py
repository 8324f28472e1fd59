"""Task naming convention, idempotent registration and ``plug-tasks list``."""
import subprocess
import sys

import pytest


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("PLUG_JAX_CACHE", str(tmp_path_factory.mktemp("plug_jax_cache")))
    import plug_jax.tasks  # noqa: F401
    from plug_jax.data import registry
    yield registry
    mp.undo()


@pytest.mark.parametrize("name", ["gpt3_shoplm_zh_v1", "plug_moe_stage2_zh_v3",
                                  "structbert_mlm_sop_en_v1", "test_anything"])
def test_good_names(registry, name):
    registry.check_name(name)


@pytest.mark.parametrize("name,why", [
    ("GPT3_shoplm_zh_v1", "lower-case"), ("gpt3_shoplm_zh", "_v<N>"),
    ("gpt3_shoplm_klingon_v1", "known language"), ("bert_mlm_zh_v1", "known family"),
    ("gpt3_zh_v1", "_<objective>_")])
def test_bad_names_give_one_line_errors(registry, name, why):
    with pytest.raises(ValueError, match="fix: use <family>") as e:
        registry.check_name(name)
    assert why in str(e.value) and "\n" not in str(e.value)


def test_registration_is_idempotent_and_checks_the_name(registry):
    import seqio

    from plug_jax.tasks import gpt3
    t = gpt3.register_shoplm_task("gpt3_shoplmtest_zh_v1", "zh", split_sizes={"train": 8})
    assert gpt3.register_shoplm_task("gpt3_shoplmtest_zh_v1", "zh",
                                     split_sizes={"train": 8}) is t
    with pytest.raises(ValueError, match="already registered"):
        gpt3.register_shoplm_task("gpt3_shoplmtest_zh_v1", "zh", split_sizes={"train": 9})
    with pytest.raises(ValueError, match="known family"):
        gpt3.register_shoplm_task("shoplm_zh_v1", "zh")
    assert "shoplm_zh_v1" not in seqio.TaskRegistry.names()
    mix = registry.register_mixture("gpt3_shoplm_bilingual_multi_v1",
                                    [("gpt3_shoplm_zh_v1", 3), ("gpt3_shoplm_en_v1", 1)])
    assert registry.register_mixture("gpt3_shoplm_bilingual_multi_v1",
                                     [("gpt3_shoplm_zh_v1", 3), ("gpt3_shoplm_en_v1", 1)]) is mix
    with pytest.raises(ValueError, match="already registered"):
        registry.register_mixture("gpt3_shoplm_bilingual_multi_v1",
                                  [("gpt3_shoplm_zh_v1", 1), ("gpt3_shoplm_en_v1", 1)])


def test_plug_tasks_list_prints_tasks_with_features(registry, tmp_path):
    out = subprocess.run([sys.executable, "-m", "plug_jax.data.registry", "list"],
                         capture_output=True, text=True, timeout=300,
                         env={**__import__("os").environ, "PLUG_JAX_CACHE": str(tmp_path)})
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    zh = [x for x in lines if x.startswith("task") and "gpt3_shoplm_zh_v1:" in x]
    assert len(zh) == 1 and "targets[ShopWorldVocabulary 1024, eos]" in zh[0]
    assert "'train'" in zh[0]
