"""The family contract (issue #17): every registered family gets these checks by registering.

The tests are parametrized over :func:`plug_jax.families.registry.specs` at collection, so a
family folder, a module named in ``$PLUG_JAX_FAMILIES`` or a spec registered before collection
is checked without editing this file:

1. ``test_cli_run_and_exact_resume``: the family's first ``Experiment`` (with its shrinking
   ``flags``) trains 2 steps through the command line (``plug_jax.main.run``, what ``plug-train``
   / ``python -m plug_jax.main`` call) with a checkpoint every step; ``--mode=eval`` on that
   MODEL_DIR reports step 2 and ``--mode=infer`` (if ``infers``) prints something. Then a copy
   of MODEL_DIR without ``checkpoints/2`` resumes from step 1 to step 2 and its whole train
   state (params, optimizer state, step) equals the uninterrupted run's bit for bit.
2. ``test_param_tree_snapshot``: the ``(path -> shape, dtype, logical axes)`` tree of the tiny
   preset of every network kind the family offers (each kind's task model and batch from the
   first experiment that trains it) equals ``tests/families/snapshots/<family>.json``;
   ``PLUG_UPDATE_SNAPSHOTS=1`` writes it, a missing file fails.
3. ``test_converter_round_trip``: per format: our random tiny params written by the family's
   exporter (or the import converter's ``fixture``) and imported back give the same config and
   every leaf bit for bit; a format with neither names the test that covers it (``checked_by``).
4. ``test_plan_compiles``: ``plug-plan`` of the first experiment on ``data:2,fsdp:4`` (the 8
   fake CPU devices of tests/conftest.py) compiles and reports XLA's memory figures.
5. ``test_family_registered_through_the_environment_gets_every_check``: a toy family (the
   module of tests/families/test_dummy_family.py plus an Experiment) registered only through
   ``$PLUG_JAX_FAMILIES`` runs all of the above in a pytest subprocess (``-k toyfam``).

Also: a missing snapshot fails with one line saying how to create it, and the committed
snapshots agree with the families' own (GPT-3's testdata, the others' ``param_count``).

Cost: the CLI runs of one family share one subprocess (every run clears the gin config), and
the subprocesses share a persistent XLA compilation cache (the resumed run and the toy family
load programs compiled before). See docs/adding_a_family.md ("What the contract test checks").
"""
import dataclasses
import functools
import importlib.util
import json
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

from plug_jax.families import registry

REPO = pathlib.Path(__file__).resolve().parents[2]
# Where the snapshots live; the environment-family test points a subprocess at a tmp copy.
SNAPSHOT_ENV = "PLUG_CONTRACT_SNAPSHOTS"
SNAPSHOTS = pathlib.Path(os.environ.get(SNAPSHOT_ENV) or pathlib.Path(__file__).parent
                         / "snapshots")
SPECS = registry.specs()
FAMILIES = [s.name for s in SPECS]
# Run-file macros kept small where the experiment uses them (runs/infer.gin,
# runs/eval_generation.gin, runs/pretrain.gin; decoding methods, beams and the unigram
# baseline are tested elsewhere). An experiment's own flags come after them and win.
FAST = ("MAX_NEW_TOKENS=4", "DECODE_METHODS=['greedy']", "GEN_EVAL_EXAMPLES=4",
        "GEN_MAX_NEW_TOKENS=4", "GEN_METHOD='greedy'", "EVAL_BASELINE=False")
# What the contract needs: 2 steps, a checkpoint after each, one eval batch. Last: they win.
CONTRACT = ("TRAIN_STEPS=2", "CHECKPOINT_PERIOD=1", "EVAL_STEPS=1")
MESH = "data:2,fsdp:4"  # 8 devices: tests/conftest.py's fake CPU devices


def _first_experiment(spec):
    if not spec.experiments:
        pytest.fail(f"family {spec.name!r} has no Experiment; every family registers a tiny "
                    f"gin experiment (FamilySpec.experiments)", pytrace=False)
    return spec.experiments[0]


def _used_macros(gin_file):
    """The macros the experiment's config uses (the CLI refuses a flag setting another)."""
    import gin

    from plug_jax import gin_utils
    try:
        sources = gin_utils.parse_gin([gin_file], ["MODEL_DIR='/tmp/unused'"])
        used = getattr(gin_utils, "used_macros", None)
        return used(sources) if used is not None else None
    finally:
        gin.clear_config()


def _flags(experiment):
    used = _used_macros(experiment.gin_file)
    fast = [f for f in FAST if used is None or f.split("=", 1)[0] in used]
    return [f"--gin.{f}" for f in (*fast, *experiment.flags, *CONTRACT)]


# --------------------------------------------------------------- 1. CLI run and resume
# One interpreter per family runs the CLI modes one after another, each through
# plug_jax.main.run (the function `python -m plug_jax.main` calls), stdout captured per run.
DRIVER = r'''
import contextlib, io, json, os, shutil, sys, time, traceback
from plug_jax import main
job = json.loads(sys.argv[1])
results = {}

def run(name, mode, model_dir):
    argv = [f"--mode={mode}", f"--gin_file={job['gin_file']}", f"--gin.MODEL_DIR='{model_dir}'",
            *job["flags"]]
    out, t0 = io.StringIO(), time.time()
    try:
        with contextlib.redirect_stdout(out):
            rc = main.run(argv)
    except SystemExit as e:
        rc = e.code
    except BaseException:
        rc = "exception"
        traceback.print_exc()
        out.write(traceback.format_exc())
    results[name] = {"rc": rc, "stdout": out.getvalue(), "argv": argv,
                     "seconds": round(time.time() - t0, 1)}
    with open(job["results"], "w") as f:
        json.dump(results, f)
    return rc == 0

full, cut = job["full"], job["cut"]
if run("train", "train", full):
    shutil.copytree(full, cut)
    shutil.rmtree(os.path.join(cut, "checkpoints", "2"))
    run("eval", "eval", full)
    if job["infers"]:
        run("infer", "infer", full)
    run("resume", "train", cut)
'''


def _env(**extra):
    env = dict(os.environ, XLA_FLAGS=os.environ["PLUG_JAX_TEST_XLA_FLAGS"])  # gin: devices
    env.update(JAX_PLATFORMS="cpu", **extra)
    return env


CACHE_ENV = "JAX_COMPILATION_CACHE_DIR"


@pytest.fixture(scope="session")
def jax_cache(tmp_path_factory):
    """A persistent XLA compilation cache for the CLI subprocesses: the resumed run, plug-eval
    and a family with another's network (the toy family) load the programs compiled before
    instead of compiling them again. Shared by the xdist workers (and by the subprocess of
    the environment-family test, which inherits it); a cache never changes a program."""
    if os.environ.get(CACHE_ENV):
        return os.environ[CACHE_ENV]
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the directory the workers' base temps share
    path = root / "contract_jax_cache"
    path.mkdir(exist_ok=True)
    return str(path)


def _cache_env(cache):
    return {CACHE_ENV: cache, "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}


_spec = importlib.util.spec_from_file_location(
    "plug_jax_tests_cli_helpers", pathlib.Path(__file__).resolve().parents[1] / "cli_helpers.py")
cli_helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cli_helpers)
_train_state, _flat_arrays = cli_helpers.train_state, cli_helpers.flat_arrays


def _assert_same_leaves(got, want, what):
    a, b = _flat_arrays(got), _flat_arrays(want)
    assert a.keys() == b.keys(), (f"{what}: leaves differ: only in the first "
                                  f"{sorted(a.keys() - b.keys())[:5]}, only in the second "
                                  f"{sorted(b.keys() - a.keys())[:5]}")
    bad = [k for k in a if a[k].dtype != b[k].dtype or a[k].shape != b[k].shape
           or not np.array_equal(a[k], b[k])]
    assert not bad, f"{what}: {len(bad)} of {len(a)} leaves differ, e.g. {bad[:5]}"


@pytest.mark.parametrize("family", FAMILIES)
def test_cli_run_and_exact_resume(family, tmp_path, jax_cache):
    spec = registry.get(family)
    exp = _first_experiment(spec)
    assert exp.needs is None, f"{family}: the first Experiment must not need another one"
    results = tmp_path / "results.json"
    job = {"gin_file": exp.gin_file, "flags": _flags(exp), "infers": exp.infers,
           "full": str(tmp_path / "full"), "cut": str(tmp_path / "cut"),
           "results": str(results)}
    proc = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(job)], cwd=REPO,
                          env=_env(**_cache_env(jax_cache)), capture_output=True, text=True,
                          timeout=900)
    runs = json.loads(results.read_text()) if results.exists() else {}
    want = ["train", "eval"] + (["infer"] if exp.infers else []) + ["resume"]
    for name in want:
        assert name in runs, (f"{family}: the {name} run did not happen (driver exit "
                              f"{proc.returncode}): {proc.stderr[-3000:]}")
        r = runs[name]
        assert r["rc"] == 0, (f"{family}: `python -m plug_jax.main {' '.join(r['argv'])}` "
                              f"exited {r['rc']}: {proc.stderr[-3000:]}")
    assert proc.returncode == 0, proc.stderr[-3000:]

    steps = sorted(int(s) for s in os.listdir(tmp_path / "full" / "checkpoints") if s.isdigit())
    assert steps == [1, 2], f"{family}: CHECKPOINT_PERIOD=1 over 2 steps saved {steps}"
    assert re.search(r"\bstep 2\b", runs["eval"]["stdout"]), (
        f"{family}: plug-eval did not report step 2:\n{runs['eval']['stdout'][-2000:]}")
    if exp.infers:
        assert runs["infer"]["stdout"].strip(), f"{family}: plug-infer printed nothing"

    # exact resume: the copy restarted from checkpoint 1 ends where the full run did
    assert "restored step 1" in runs["resume"]["stdout"], runs["resume"]["stdout"][-2000:]
    _assert_same_leaves(_train_state(tmp_path / "cut", 2), _train_state(tmp_path / "full", 2),
                        f"{family}: train state at step 2, resumed from step 1 vs uninterrupted")


# ------------------------------------------------------------- 2. parameter-tree snapshot
@functools.lru_cache(maxsize=None)
def _kind_models(family):
    """``{kind: (tiny task model, abstract batch)}``: for every network kind of the family, the
    task model of the first experiment that trains that kind, with the family's ``tiny``
    preset as its config, and the batch shapes of that experiment's feature converter."""
    import gin
    import jax

    from plug_jax import gin_utils
    from plug_jax.trainer import loop
    spec = registry.get(family)
    tiny = spec.config_cls.from_preset("tiny")
    found = {}
    try:
        for exp in spec.experiments:
            gin_utils.parse_gin([exp.gin_file], ["MODEL_DIR='/tmp/unused'"])
            model = gin.query_parameter("%MODEL").scoped_configurable_fn()
            if model.kind in found:
                continue
            data = loop.DatasetConfig(
                "unused", gin.query_parameter("%TASK_FEATURE_LENGTHS"), batch_size=1,
                converter=gin.query_parameter("%FEATURE_CONVERTER"))
            batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype)
                     for k, v in loop._dummy_batch(data).items()}
            # a model whose other fields depend on the config adapts them (with_config)
            found[model.kind] = (model.with_config(tiny) if hasattr(model, "with_config")
                                 else dataclasses.replace(model, config=tiny), batch)
    finally:
        gin.clear_config()
    missing = [k for k in spec.networks if k not in found]
    if missing:
        pytest.fail(f"family {family!r} offers network kinds {missing} that none of its "
                    f"experiments trains; add an Experiment for each kind", pytrace=False)
    return {k: found[k] for k in spec.networks}


def tree_summary(boxed):
    """``{path: {shape, dtype, axes}}`` of an (abstract) boxed param tree, sorted."""
    import jax
    from flax import linen as nn
    flat = jax.tree_util.tree_flatten_with_path(
        boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))[0]
    out = {}
    for path, leaf in flat:
        key = "/".join(str(getattr(p, "key", getattr(p, "idx", p))) for p in path)
        value = leaf.value if isinstance(leaf, nn.Partitioned) else leaf
        out[key] = {"shape": list(value.shape), "dtype": str(value.dtype),
                    "axes": list(leaf.names) if isinstance(leaf, nn.Partitioned) else None}
    return dict(sorted(out.items()))


def param_trees(family):
    """``{kind: tree_summary}`` of the family's tiny preset (abstract: nothing allocated)."""
    import jax
    return {kind: tree_summary(jax.eval_shape(model.init_params, jax.random.PRNGKey(0), batch))
            for kind, (model, batch) in _kind_models(family).items()}


def check_snapshot(family, got, directory=None):
    directory = pathlib.Path(directory or SNAPSHOTS)
    path = directory / f"{family}.json"
    if os.environ.get("PLUG_UPDATE_SNAPSHOTS") == "1":
        directory.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(got, indent=1) + "\n")
    if not path.exists():
        pytest.fail(f"no parameter-tree snapshot {path}; create it with PLUG_UPDATE_SNAPSHOTS=1 "
                    f"python -m pytest tests/families/test_contract.py -k "
                    f"'snapshot and {family}' and commit it", pytrace=False)
    want = json.loads(path.read_text())
    for kind in sorted(set(got) | set(want)):
        assert kind in got and kind in want, (
            f"{family}: network kinds {sorted(got)} != snapshot {sorted(want)} ({path}); "
            f"if intended, rerun with PLUG_UPDATE_SNAPSHOTS=1")
        g, w = got[kind], want[kind]
        diff = sorted(k for k in set(g) | set(w) if g.get(k) != w.get(k))
        assert not diff, (f"{family} {kind}: {len(diff)} leaves differ from {path}, e.g. "
                          f"{[(k, w.get(k), g.get(k)) for k in diff[:3]]} (snapshot, now); if "
                          f"intended, rerun with PLUG_UPDATE_SNAPSHOTS=1")


@pytest.mark.parametrize("family", FAMILIES)
def test_param_tree_snapshot(family):
    check_snapshot(family, param_trees(family))


def test_missing_snapshot_fails_with_how_to_create_it(tmp_path, monkeypatch):
    monkeypatch.delenv("PLUG_UPDATE_SNAPSHOTS", raising=False)
    with pytest.raises(pytest.fail.Exception) as e:
        check_snapshot("gpt3", {"decoder_lm": {}}, tmp_path)
    msg = str(e.value)
    assert "\n" not in msg and "PLUG_UPDATE_SNAPSHOTS=1" in msg and "gpt3.json" in msg
    assert not list(tmp_path.iterdir())  # nothing was created


def test_snapshots_agree_with_the_families_own_tests():
    """The committed snapshots are not just what this file computes: GPT-3's equals
    tests/families/gpt3/testdata/tiny_params.json, and every family's parameter count equals
    the family's own ``param_count`` (which its tests check against published sizes and
    hand counts)."""
    from plug_jax.families.gpt3 import GPT3Config
    from plug_jax.families.palm import PalmConfig, param_count as palm_count
    from plug_jax.families.plug import PlugConfig, param_count as plug_count
    from plug_jax.families.structbert import StructBERTConfig, param_count as sb_count
    snap = {f: json.loads((SNAPSHOTS / f"{f}.json").read_text())
            for f in ("gpt3", "structbert", "plug", "palm")}
    gpt3 = json.loads((REPO / "tests/families/gpt3/testdata/tiny_params.json").read_text())
    assert snap["gpt3"] == {"decoder_lm": gpt3}
    assert GPT3Config.from_preset("tiny").vocab_size == 1024

    def count(tree, prefix=""):
        return sum(int(np.prod(v["shape"])) for k, v in tree.items() if k.startswith(prefix))
    assert count(snap["palm"]["encdec_lm"]) == palm_count(PalmConfig.from_preset("tiny"))
    assert count(snap["plug"]["encdec_lm"]) == plug_count(PlugConfig.from_preset("tiny"))
    # PLUG stage 1 trains the encoder alone, as the stage-2 model's structbert/ subtree
    enc, encdec = snap["plug"]["encoder"], snap["plug"]["encdec_lm"]
    assert enc and all(encdec.get(k) == v for k, v in enc.items())
    assert count(snap["structbert"]["encoder"]) == sb_count(
        StructBERTConfig.from_preset("tiny"))


# ------------------------------------------------------------- 3. converter round trips
def _converter_cases():
    cases = []
    for spec in SPECS:
        for fmt in dict.fromkeys(c.format for c in spec.converters):
            cases.append(pytest.param(spec.name, fmt, id=f"{spec.name}-{fmt}"))
    return cases


def _random_params(family, kind, config_fn=None):
    """``(config, params of kind)``: the tiny preset (through ``config_fn`` if given) and random
    normal values in its abstract tree's shapes and dtypes (no scale is 1 and no bias 0, so a
    swapped tensor shows)."""
    import jax
    from flax import linen as nn
    model, batch = _kind_models(family)[kind]
    if config_fn is not None:
        model = dataclasses.replace(model, config=config_fn(model.config))
    abstract = nn.unbox(jax.eval_shape(model.init_params, jax.random.PRNGKey(0), batch))
    rng = np.random.default_rng(0)

    def fill(x):
        if not np.issubdtype(x.dtype, np.floating):
            return np.zeros(x.shape, x.dtype)
        return rng.standard_normal(x.shape).astype(x.dtype)
    return model.config, jax.tree_util.tree_map(fill, abstract)


@pytest.mark.parametrize("family, fmt", _converter_cases())
def test_converter_round_trip(family, fmt, tmp_path, record_property):
    spec = registry.get(family)
    by_dir = {c.direction: c for c in spec.converters if c.format == fmt}
    imp, exp = by_dir.get("import"), by_dir.get("export")
    writer = exp.fn if exp is not None else None
    if writer is None and imp is not None and imp.fixture is not None:
        writer = lambda config, params, out, options: imp.fixture(config, params, out)  # noqa
    if writer is None or imp is None:
        checked_by = next((c.checked_by for c in (imp, exp) if c is not None and c.checked_by),
                          None)
        assert checked_by, (
            f"family {family!r} format {fmt!r} cannot be round-tripped here: give it "
            + ("an export converter or Converter(fixture=...)" if imp is not None else
               "an import converter") + ", or Converter(checked_by='tests/...') naming the "
            "test that covers it")
        assert (REPO / checked_by).is_file(), f"{family} {fmt}: checked_by {checked_by} is missing"
        record_property("contract", f"{family} {fmt}: checked elsewhere: {checked_by}")
        print(f"{family} {fmt}: checked elsewhere: {checked_by}")
        return
    kind = next(iter(spec.networks))  # the converters read the family's first network kind
    config_fn = next((c.round_trip_config for c in (exp, imp) if c is not None
                      and c.round_trip_config is not None), None)
    config, params = _random_params(family, kind, config_fn)
    select = next((c.round_trip_params for c in (exp, imp) if c is not None
                   and c.round_trip_params is not None), None)
    if select is not None:  # the part of the params the format holds
        params = select(params)
    # what a user passes to get this model back: the options the converter says it uses
    options = {"preset": None, "vocab_size": None, "num_ranks": 1, "drop_embedding_norm": False,
               "scan_layers": bool(getattr(config, "scan_layers", True))}
    if "preset" in imp.uses:
        options["preset"] = config.preset
    if "vocab_size" in imp.uses:
        options["vocab_size"] = config.vocab_size
    out = tmp_path / fmt
    out.mkdir()
    writer(config, params, str(out), dict(options))
    got_config, got = imp.fn(str(out), dict(options))
    # formats do not store our preset names; every other field must come back
    want_fields = {k: v for k, v in dataclasses.asdict(config).items() if k != "preset"}
    got_fields = {k: v for k, v in dataclasses.asdict(got_config).items() if k != "preset"}
    diff = {k: (want_fields.get(k), got_fields.get(k))
            for k in set(want_fields) | set(got_fields) if want_fields.get(k) != got_fields.get(k)}
    assert not diff, f"{family} {fmt}: config fields changed (ours, round trip): {diff}"
    _assert_same_leaves(got, params, f"{family} {fmt}: params after the round trip")


# ---------------------------------------------------------- 4. the plan compiles (8 devices)
def _concrete_batch(batch, vocab_size, rng):
    """Random values in an abstract batch's shapes: token ids in [1, vocab), pixels in
    [0, 1), masks / weights / labels 1 (the last column of each row valid)."""
    out = {}
    for name, x in batch.items():
        if np.issubdtype(x.dtype, np.floating):
            out[name] = rng.random(x.shape).astype(x.dtype)
        elif "token" in name or name.endswith("ids"):
            out[name] = rng.integers(1, max(2, vocab_size), x.shape).astype(x.dtype)
        else:
            out[name] = np.ones(x.shape, x.dtype)
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_int8_weights_compute_what_the_dequantized_float_weights_do(family):
    """Weight-only int8 (plug-infer --weights_dtype, layers/quant.py): for every network kind,
    the loss with int8 weights equals the loss with float weights holding ``q * scale``
    (computed here with numpy), so no part of the family reads a converted weight without
    its scale (docs/adding_a_family.md, "Weight-only low precision")."""
    import jax

    from plug_jax.layers import quant
    for kind, (model, batch) in _kind_models(family).items():
        _, params = _random_params(family, kind)
        params = jax.tree_util.tree_map(lambda x: np.asarray(x) * 0.05
                                        if np.issubdtype(x.dtype, np.floating) else x, params)
        targets = quant.quantization_targets(
            lambda: model.init_params(jax.random.PRNGKey(0), batch))
        assert targets, f"{family}/{kind}: no DenseGeneral / Embed weights found"
        q = quant.quantize_params(params, "int8", targets)
        deq = jax.tree_util.tree_map(np.asarray, q)
        for path, spec in targets.items():
            node = deq
            for k in path:
                node = node[k]
            key = "kernel" if spec[0] == "dense" else "embedding"
            if key not in node:
                continue
            w, s = node[key].astype(np.float32), node.pop(f"{key}_scale")
            if spec[0] == "dense":
                lead = w.ndim - spec[1] - spec[2]
                s = s.reshape(s.shape[:lead] + (1,) * spec[1] + s.shape[lead:])
            else:
                s = s[..., None]
            node[key] = w * s
        data = _concrete_batch(batch, getattr(model.config, "vocab_size", 2),
                               np.random.default_rng(0))
        # jitted: op-by-op dispatch of a whole network is slower than compiling it
        loss = jax.jit(lambda p, d: model.loss_sums(p, d, jax.random.PRNGKey(0), True)["loss"])
        got, want = (loss(p, data) for p in (q, deq))
        np.testing.assert_allclose(float(got), float(want), rtol=1e-4, atol=1e-4,
                                   err_msg=f"{family}/{kind}")


@pytest.mark.parametrize("family", FAMILIES)
def test_plan_compiles(family, capsys):
    from plug_jax import plan
    exp = _first_experiment(registry.get(family))
    argv = ["--gin_file=runs/plan.gin", f"--gin_file={exp.gin_file}",
            *[f"--gin.{f}" for f in exp.flags], "--gin.BATCH_SIZE=8", f"--mesh={MESH}",
            "--json"]
    rc = plan.main(argv)
    out = capsys.readouterr().out
    assert rc == 0, f"plug-plan {' '.join(argv)} exited {rc}:\n{out[-2000:]}"
    r = json.loads(out[out.index("{"):])
    assert r["model"]["family"] == family and r["num_devices"] == 8
    assert r["mesh"] == {"data": 2, "fsdp": 4, "expert": 1, "model": 1}
    c = r["compiled"]
    assert c and c["argument"] > 0 and r["peak_bytes_per_device"] > 0, r["compiled"]
    assert r["bytes_per_device"]["params"] > 0


# -------------------------------------------- 5. a family registered through the environment
_DUMMY = REPO / "tests" / "families" / "test_dummy_family.py"
# Appended to test_dummy_family.FAMILY_MODULE: an Experiment (GPT-3's shop_tiny run under the
# toy name), and the size its npz reader assumes (vocabulary 64) for the round trip.
TOY_ADDITIONS = '''

# ---- added by tests/families/test_contract.py
import dataclasses as _dataclasses
from plug_jax.families.spec import Experiment as _Experiment

FAMILY = _dataclasses.replace(
    FAMILY,
    converters=tuple(_dataclasses.replace(c, round_trip_config=lambda c: c.replace(vocab_size=64))
                     if c.direction == "import" else c for c in FAMILY.converters),
    experiments=(_Experiment(os.path.join(HERE, "toyfam_shop_tiny.gin"),
                             ("TRAIN_STEPS=2", "BATCH_SIZE=8", "EVAL_STEPS=1", "LOG_PERIOD=1",
                              "EVAL_PERIOD=0", "MAX_NEW_TOKENS=4")),))
'''
TOY_GIN = """from __gin__ import dynamic_registration
import plug_jax.models as models

include 'experiments/gpt3/shop_tiny.gin'
models.DecoderOnlyLM.family = 'toyfam'
"""
CHECKS = ("test_cli_run_and_exact_resume", "test_param_tree_snapshot",
          "test_converter_round_trip", "test_plan_compiles")


def _dummy_family_module():
    spec = importlib.util.spec_from_file_location("plug_jax_tests_dummy_family", _DUMMY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif("toyfam" in FAMILIES, reason="this process already checks toyfam")
def test_family_registered_through_the_environment_gets_every_check(tmp_path, jax_cache):
    """The acceptance point of #17: a family registered only through $PLUG_JAX_FAMILIES (no
    central file edited) appears in every check of this file and passes them."""
    (tmp_path / "toyfam_family.py").write_text(_dummy_family_module().FAMILY_MODULE
                                               + TOY_ADDITIONS)
    (tmp_path / "toyfam_shop_tiny.gin").write_text(TOY_GIN)
    snapshots = tmp_path / "snapshots"
    snapshots.mkdir()
    # The toy family is GPT-3's network under another name: its tree is GPT-3's.
    gpt3 = SNAPSHOTS / "gpt3.json"
    assert gpt3.exists(), "create tests/families/snapshots/gpt3.json first"
    (snapshots / "toyfam.json").write_text(gpt3.read_text())
    env = {k: v for k, v in os.environ.items() if k != "PLUG_UPDATE_SNAPSHOTS"}
    env.update(_cache_env(jax_cache))
    env.update({registry.ENV: "toyfam_family", SNAPSHOT_ENV: str(snapshots),
                "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path),
                                                            env.get("PYTHONPATH")]))})
    proc = subprocess.run([sys.executable, "-m", "pytest", str(pathlib.Path(__file__)), "-v",
                           "-n", "0", "-k", "toyfam"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    out = proc.stdout
    assert proc.returncode == 0, out[-4000:] + proc.stderr[-2000:]
    for check in CHECKS:
        assert re.search(rf"::{check}\[toyfam[^\]]*\] PASSED", out), (check, out[-4000:])
    assert not re.search(r"\b(failed|skipped|error)\b", out.splitlines()[-1]), out[-2000:]
