"""A family defined outside plug_jax, registered only through the registry, reaches
plug-convert (--help and a round trip), plug-plan (--list and a planned --table row) and the
task-model wrappers, without any central file being edited."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ROW = "toyfam-tiny / 8 fake devices"

FAMILY_MODULE = textwrap.dedent('''
    """A toy family: GPT-3's network under another name, with an .npz checkpoint format."""
    import json
    import os

    import numpy as np

    from plug_jax.families.gpt3.config import GPT3Config
    from plug_jax.families.spec import Converter, FamilySpec, PlanRow

    HERE = os.path.dirname(os.path.abspath(__file__))


    def _network(config, **kw):
        from plug_jax.families.gpt3.network import GPT3LM
        return GPT3LM(config, **kw)


    def _flops(config, batch, lengths):
        return 6.0 * batch * lengths["targets"]


    def _flat(tree, prefix=""):
        out = {}
        for k, v in tree.items():
            if isinstance(v, dict):
                out.update(_flat(v, prefix + k + "/"))
            else:
                out[prefix + k] = np.asarray(v)
        return out


    def _import(path, options):
        from plug_jax.convert import io as cio
        config = GPT3Config.from_preset("tiny", vocab_size=64, scan_layers=True)
        with np.load(os.path.join(path, "toy.npz")) as z:
            return config, cio.unflatten_tree({k: z[k] for k in z.files})


    def _export(config, params, out, options):
        np.savez(os.path.join(out, "toy.npz"), **_flat(params))
        return "toy.npz"


    FAMILY = FamilySpec(
        name="toyfam", config_cls=GPT3Config, listing_order=90,
        networks={"decoder_lm": _network}, flops={"decoder_lm": _flops},
        converters=(Converter("npz", "import", _import, "a toy .npz folder"),
                    Converter("npz", "export", _export, "toy.npz")),
        plan_rows=lambda: (PlanRow(
            "%s", "models/gpt3/tiny.gin", "fsdp:8", "h100_80gb", "tiny [test]",
            "8 fake CPU devices", ("TASK_FEATURE_LENGTHS={'targets': 32}", "BATCH_SIZE=8"),
            extra_gin=(os.path.join(HERE, "toyfam.gin"),)),),
    )
''' % ROW)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    d = tmp_path_factory.mktemp("toyfam")
    (d / "toyfam_family.py").write_text(FAMILY_MODULE)
    (d / "toyfam.gin").write_text("import plug_jax.models as models\n"
                                  "models.DecoderOnlyLM.family = 'toyfam'\n"
                                  "VOCAB_SIZE = 64\n")
    env = dict(os.environ, XLA_FLAGS=os.environ["PLUG_JAX_TEST_XLA_FLAGS"])
    env.update(PYTHONPATH=f"{d}{os.pathsep}{env.get('PYTHONPATH', '')}",
               PLUG_JAX_FAMILIES="toyfam_family", JAX_PLATFORMS="cpu")
    return d, env


def _run(env, *cmd, timeout=600):
    out = subprocess.run([sys.executable, *cmd], capture_output=True, text=True, env=env,
                         cwd=REPO, timeout=timeout)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_registered_family_is_listed_by_plug_convert_and_plug_plan(toy):
    d, env = toy
    assert "--family toyfam --source npz: a toy .npz folder" in _run(
        env, "-m", "plug_jax.convert.cli", "--help")
    listing = _run(env, "-m", "plug_jax.main", "--mode=plan", "--list")
    assert f"{ROW}: plug-plan --gin_file=runs/plan.gin" in listing
    assert listing.index("gpt3-13B") < listing.index(ROW)  # after the project's families


def test_registered_family_row_is_planned_by_plug_plan_table(toy):
    d, env = toy
    table = _run(env, "-m", "plug_jax.main", "--mode=plan", "--table", f"--rows={ROW}")
    line = [x for x in table.splitlines() if x.startswith(f"| {ROW} | ")]
    assert len(line) == 1 and " | toyfam/tiny | " in line[0], table[-2000:]
    assert "| fsdp:8 = 8 | 8 x 32 (1) |" in line[0]


def test_registered_family_converts_both_ways(toy, tmp_path):
    d, env = toy
    rng = np.random.default_rng(0)
    src = tmp_path / "src"
    src.mkdir()
    arrays = {"token_embed/embedding": rng.random((64, 64), np.float32)}
    np.savez(src / "toy.npz", **arrays)
    # the converter's tree is not a full GPT3LM: plug-convert saves whatever it returns
    out = _run(env, "-m", "plug_jax.convert.cli", "--family", "toyfam", "--source", "npz",
               "--input", str(src), "--output", str(tmp_path / "ours"))
    assert "toyfam from npz" in out
    meta = json.loads((tmp_path / "ours" / "metadata.json").read_text())
    assert meta["family"] == "toyfam"
    out = _run(env, "-m", "plug_jax.convert.cli", "--family", "toyfam", "--to", "npz",
               "--input", str(tmp_path / "ours"), "--output", str(tmp_path / "back"))
    with np.load(tmp_path / "back" / "toy.npz") as z:
        np.testing.assert_array_equal(z["token_embed/embedding"],
                                      arrays["token_embed/embedding"])


def test_in_process_registration_reaches_models_and_plan_rows(toy, monkeypatch):
    d, _ = toy
    monkeypatch.syspath_prepend(str(d))
    import toyfam_family

    from plug_jax import models, plan
    from plug_jax.families import registry
    registry.register(toyfam_family.FAMILY)
    try:
        assert ROW in [r.name for r in plan.ROWS]
        cfg = toyfam_family.GPT3Config.from_preset("tiny", vocab_size=64)
        m = models.DecoderOnlyLM(cfg, family="toyfam")
        assert type(m.module).__name__ == "GPT3LM"
        assert m.flops_per_token(32) == 6.0
        assert m.metadata()["family"] == "toyfam"
    finally:
        registry.unregister("toyfam")
    assert ROW not in [r.name for r in plan.ROWS]
