"""``plug-export`` (issue 18, point 2): serving export and ``--to`` from a trained MODEL_DIR.

GPT-3 tiny (scanned layers) and PALM tiny (unrolled layers, released AliceMind copy head) are
trained 2 steps through the command line, exported with ``python -m plug_jax.export``, and
the SavedModels are loaded in fresh processes that cannot import jax, flax, orbax or plug_jax.
Their logits (two batch sizes: the batch is polymorphic) equal plug_jax's forward pass on the
same checkpoint within 1e-5, and their greedy ``generate`` gives ``plug-infer``'s greedy
continuations (``loop.infer``) and ``decoding.generate``'s ids. PALM ``--to alicemind``
writes files that the PALM import converter reads back equal. Bad input is one line, exit 2.

The work overlaps (both trainings at once, references computed while exports and loaders
run) to keep the file near two minutes on a shared 2-core CPU.
"""
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
ENV["XLA_FLAGS"] = os.environ["PLUG_JAX_TEST_XLA_FLAGS"]  # the subprocesses use one CPU device
NEW_TOKENS = 10
ONE_DEVICE = dict(ici=(1, 1, 1, 1), rules="dp", num_devices=1)

GPT = {
    "gin": "experiments/gpt3/shop_tiny.gin", "model": "DecoderOnlyLM",
    "task": "gpt3_shoplm_zh_v1", "lengths": {"targets": 128}, "converter": "decoder",
    "flags": [],
    "prompts": ["红色羊毛帽子", "这款蓝色的棉质T恤穿着舒适"],
}
PALM = {
    "gin": "experiments/palm/shop_title_tiny.gin", "model": "EncoderDecoderLM",
    "task": "palm_title_zh_v1", "lengths": {"inputs": 128, "targets": 32},
    "converter": "encdec",
    # Unrolled layers (the GPT-3 run covers scanned ones) and the released CopyGenerator
    # (gate on [context; state], softmax copy), so that --to alicemind can express the model.
    "flags": ["SCAN_LAYERS=False", "palm_config.PalmConfig.copy_gate_uses_input=False",
              "palm_config.PalmConfig.copy_softmax=True"],
    "prompts": ["这款红色羊毛帽子保暖舒适，适合冬天佩戴。", "蓝色棉质T恤"],
}
TRAIN_FLAGS = ["TRAIN_STEPS=2", "BATCH_SIZE=8", "loop.train.eval_dataset_cfg=None"]

# Runs in a fresh interpreter: jax, flax, orbax and plug_jax cannot be imported there.
LOADER = r"""
import json, sys
for name in ("jax", "jaxlib", "flax", "orbax", "plug_jax"):
    sys.modules[name] = None
import numpy as np
import tensorflow as tf
jobs = json.load(open(sys.argv[1]))
loaded, out = {}, {}
for key, job in jobs.items():
    if job["saved_model"] not in loaded:
        loaded[job["saved_model"]] = tf.saved_model.load(job["saved_model"])
    fn = loaded[job["saved_model"]].signatures[job["signature"]]
    res = fn(**{k: tf.constant(np.asarray(v, np.int32)) for k, v in job["inputs"].items()})
    (value,) = res.values()
    out[key] = value.numpy()
np.savez(sys.argv[2], **out)
print("imported:", sorted(m for m, v in sys.modules.items() if v is not None
                          and m.split(".")[0] in ("jax", "flax", "orbax", "plug_jax")))
"""


class _Proc:
    """A command in the background, its output in files (no pipe to fill up)."""

    def __init__(self, cmd, log):
        self.cmd, self.log = cmd, str(log)
        self.out = open(self.log + ".out", "w")
        self.err = open(self.log + ".err", "w")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=self.out, stderr=self.err,
                                     text=True)

    def wait(self, timeout=600):
        rc = self.proc.wait(timeout=timeout)
        self.out.close()
        self.err.close()
        stdout = open(self.log + ".out").read()
        stderr = open(self.log + ".err").read()
        assert rc == 0, f"{' '.join(self.cmd)} -> {rc}\n{stdout[-1500:]}\n{stderr[-3000:]}"
        return stdout


def _gin_flags(flags):
    return [f"--gin.{f}" for f in flags]


def _train(spec, model_dir):
    return _Proc([sys.executable, "-m", "plug_jax.main", "--mode=train",
                  f"--gin_file={spec['gin']}", f"--gin.MODEL_DIR='{model_dir}'",
                  *_gin_flags(TRAIN_FLAGS + spec["flags"])], f"{model_dir}.train")


def _export_argv(spec, model_dir, export_dir, *extra):
    return [f"--gin_file={spec['gin']}", "--gin_file=runs/export.gin",
            f"--gin.MODEL_DIR='{model_dir}'", f"--gin.EXPORT_DIR='{export_dir}'",
            f"--gin.EXPORT_MAX_NEW_TOKENS={NEW_TOKENS}", *_gin_flags(spec["flags"]), *extra]


def _export(spec, model_dir, export_dir):
    return _Proc([sys.executable, "-m", "plug_jax.export",
                  *_export_argv(spec, model_dir, export_dir)], f"{export_dir}.export")


def _loader(jobs, folder, name):
    path = os.path.join(folder, f"{name}_jobs.json")
    with open(path, "w") as f:
        json.dump(jobs, f)
    return _Proc([sys.executable, "-c", LOADER, path, os.path.join(folder, f"{name}_out.npz")],
                 os.path.join(folder, f"{name}_loader"))


def _model_and_params(spec, model_dir):
    """The experiment's task model (from its gin) and the params of MODEL_DIR's latest step."""
    import gin
    import jax

    from plug_jax import gin_utils, models
    from plug_jax.trainer import loop
    gin_utils.parse_gin([spec["gin"]], [f"MODEL_DIR='{model_dir}'", *spec["flags"]])
    model = gin.get_configurable(getattr(models, spec["model"]))()
    cfg = loop.DatasetConfig(spec["task"], spec["lengths"], split="validation", batch_size=1,
                             converter=spec["converter"])
    params, step, _ = loop.load_for_inference(model, str(model_dir), cfg,
                                              loop.MeshConfig(**ONE_DEVICE))
    return model, jax.device_get(params), cfg, step


def _prompt_ids(spec, vocabulary):
    """The prompts as plug-infer builds them: GPT-3 left-padded, PALM's encoder ids
    right-padded and ending with EOS (the task's inputs do)."""
    encoded = [list(vocabulary.encode(p)) for p in spec["prompts"]]
    if spec["converter"] == "encdec":
        encoded = [e + [vocabulary.eos_id] for e in encoded]
    width = max(len(e) for e in encoded)
    ids = np.zeros((len(encoded), width), np.int32)
    for r, e in enumerate(encoded):
        if spec["converter"] == "encdec":
            ids[r, :len(e)] = e
        else:
            ids[r, width - len(e):] = e
    return ids


def _jobs(spec, saved_model, vocabulary):
    """Inputs for the exported signatures: random ids at batch 1 and 3, the prompts."""
    rng = np.random.default_rng(0)
    jobs = {}
    for b in (1, 3):
        if spec["converter"] == "encdec":
            enc = rng.integers(3, 1100, (b, 11)).astype(np.int32)
            enc[-1, 7:] = 0  # a right-padded row
            dec = rng.integers(3, 1100, (b, 6)).astype(np.int32)
            dec[:, 0] = 0  # decoding starts from token 0
            inputs = {"encoder_ids": enc.tolist(), "decoder_ids": dec.tolist()}
        else:
            inputs = {"ids": rng.integers(3, 1000, (b, 9)).astype(np.int32).tolist()}
        jobs[f"logits{b}"] = {"saved_model": saved_model, "signature": "serving_default",
                              "inputs": inputs}
    name = "encoder_ids" if spec["converter"] == "encdec" else "ids"
    jobs["generate"] = {"saved_model": saved_model, "signature": "generate",
                        "inputs": {name: _prompt_ids(spec, vocabulary).tolist()}}
    return jobs


def _references(spec, model, params, cfg, jobs, model_dir, vocabulary):
    """plug_jax's own outputs for the loader's inputs: the forward pass, decoding.generate
    (greedy, the vocabulary's EOS) and plug-infer's greedy texts (loop.infer)."""
    from plug_jax import decoding
    from plug_jax.trainer import loop
    out = {}
    for b in (1, 3):
        inputs = {k: np.asarray(v, np.int32) for k, v in jobs[f"logits{b}"]["inputs"].items()}
        if spec["converter"] == "encdec":
            out[f"logits{b}"] = np.asarray(model.outputs(params, {
                "encoder_input_tokens": inputs["encoder_ids"],
                "decoder_input_tokens": inputs["decoder_ids"]})["logits"])
        else:
            out[f"logits{b}"] = np.asarray(model.logits(params, {
                "decoder_input_tokens": inputs["ids"]}))
    ids = np.asarray(next(iter(jobs["generate"]["inputs"].values())), np.int32)
    step_fn, init_cache = model.decode_fns()
    eos = vocabulary.eos_id
    if spec["converter"] == "encdec":
        start = np.zeros((len(ids), 1), np.int32)
        out["generate"] = np.asarray(decoding.generate(
            step_fn, init_cache, {"model": params, "encoder_ids": ids}, start,
            np.ones_like(start), NEW_TOKENS, eos_id=eos).tokens)
    else:
        out["generate"] = np.asarray(decoding.generate(
            step_fn, init_cache, params, ids, ids != 0, NEW_TOKENS, eos_id=eos).tokens)
    res = loop.infer(model=model, model_dir=str(model_dir), dataset_cfg=cfg,
                     prompts=spec["prompts"], max_new_tokens=NEW_TOKENS, methods=("greedy",),
                     params=params, vocabulary=vocabulary)
    out["infer_texts"] = [r["continuation"] for r in res]
    return out


def _texts(tokens, vocabulary):
    """Generated ids -> text as plug-infer prints them (cut at EOS, padding dropped)."""
    texts = []
    for row in np.asarray(tokens):
        toks = [int(t) for t in row]
        if vocabulary.eos_id in toks:
            toks = toks[:toks.index(vocabulary.eos_id)]
        texts.append(vocabulary.decode([t for t in toks if t > 0]))
    return texts


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    t0 = time.time()
    base = tmp_path_factory.mktemp("plug_export")
    dirs = {n: {"model": base / n, "export": base / f"{n}_export"} for n in ("gpt3", "palm")}
    trains = {n: _train(s, dirs[n]["model"]) for n, s in (("gpt3", GPT), ("palm", PALM))}
    from plug_jax.data.pipeline import task_vocabulary  # meanwhile: TensorFlow, seqio
    vocabs = {"gpt3": task_vocabulary(GPT["task"]), "palm": task_vocabulary(PALM["task"])}
    jobs = {n: _jobs(s, str(dirs[n]["export"] / "saved_model"), vocabs[n])
            for n, s in (("gpt3", GPT), ("palm", PALM))}
    out = {"dirs": dirs, "vocabs": vocabs, "jobs": jobs, "ref": {}, "step": {}}

    trains["gpt3"].wait()
    gpt_export = _export(GPT, dirs["gpt3"]["model"], dirs["gpt3"]["export"])
    model, params, cfg, out["step"]["gpt3"] = _model_and_params(GPT, dirs["gpt3"]["model"])
    out["ref"]["gpt3"] = _references(GPT, model, params, cfg, jobs["gpt3"],
                                     dirs["gpt3"]["model"], vocabs["gpt3"])
    trains["palm"].wait()
    palm_export = _export(PALM, dirs["palm"]["model"], dirs["palm"]["export"])
    out["export_stdout"] = {"gpt3": gpt_export.wait()}
    gpt_loader = _loader(jobs["gpt3"], base, "gpt3")
    model, params, cfg, out["step"]["palm"] = _model_and_params(PALM, dirs["palm"]["model"])
    out["palm"] = (model, params)
    out["ref"]["palm"] = _references(PALM, model, params, cfg, jobs["palm"],
                                     dirs["palm"]["model"], vocabs["palm"])
    out["export_stdout"]["palm"] = palm_export.wait()
    palm_loader = _loader(jobs["palm"], base, "palm")
    out["loader_stdout"] = {"gpt3": gpt_loader.wait()}
    out["loader_stdout"]["palm"] = palm_loader.wait()
    out["served"] = {n: dict(np.load(base / f"{n}_out.npz")) for n in ("gpt3", "palm")}
    out["base"] = base
    print(f"trained, exported and loaded in {time.time() - t0:.0f}s")
    return out


@pytest.mark.parametrize("name", ["gpt3", "palm"])
def test_serving_export_loads_without_plug_jax_and_matches(built, name):
    manifest = json.load(open(built["dirs"][name]["export"] / "export.json"))
    assert manifest["family"] == name and manifest["step"] == built["step"][name] == 2
    assert set(manifest["signatures"]) == {"serving_default", "generate"}
    assert manifest["max_new_tokens"] == NEW_TOKENS
    assert manifest["eos_id"] == built["vocabs"][name].eos_id
    assert os.path.isfile(built["dirs"][name]["export"] / manifest["vocabulary"])
    assert "imported: []" in built["loader_stdout"][name]  # no jax / flax / orbax / plug_jax
    served, ref = built["served"][name], built["ref"][name]
    for b in (1, 3):  # one SavedModel, two batch sizes
        assert served[f"logits{b}"].shape == ref[f"logits{b}"].shape
        assert served[f"logits{b}"].shape[0] == b
        np.testing.assert_allclose(served[f"logits{b}"], ref[f"logits{b}"], atol=1e-5, rtol=0)
    assert served["generate"].shape == (2, NEW_TOKENS)
    np.testing.assert_array_equal(served["generate"], ref["generate"])
    assert _texts(served["generate"], built["vocabs"][name]) == ref["infer_texts"]


def test_palm_to_alicemind_reads_back_equal(built, capsys):
    from plug_jax import export
    from plug_jax.convert.io import flatten_tree
    from plug_jax.families import registry
    out_dir = built["base"] / "palm_alicemind"
    rc = export.main(_export_argv(PALM, built["dirs"]["palm"]["model"], out_dir,
                                  "--to", "alicemind"))
    said = capsys.readouterr()
    assert rc == 0, said.err
    assert said.out.startswith("plug-export: palm ") and "alicemind" in said.out
    # the weights, and the run's task vocabulary beside them (plug_jax.convert.vocabulary)
    vocab_file = built["vocabs"]["palm"].sentencepiece_model_file
    assert sorted(os.listdir(out_dir)) == sorted(["pytorch_model.bin",
                                                  os.path.basename(vocab_file)])
    with open(vocab_file, "rb") as a, open(out_dir / os.path.basename(vocab_file), "rb") as b:
        assert a.read() == b.read()
    assert not [p for p in os.listdir(built["base"]) if ".params-" in p]  # temp folder gone
    model, params = built["palm"]
    config, back = registry.get("palm").converter("alicemind", "import").fn(
        str(out_dir), {"preset": "tiny", "vocab_size": model.config.vocab_size,
                       "scan_layers": False, "report": []})
    assert config.copy and config.copy_softmax and not config.copy_gate_uses_input
    ours, theirs = flatten_tree(params), flatten_tree(back)
    assert sorted(ours) == sorted(theirs)
    for key in ours:
        np.testing.assert_array_equal(np.asarray(theirs[key]), np.asarray(ours[key]),
                                      err_msg=key)


def test_int8_serving_export_matches_plug_jax_int8(built, capsys):
    """``--weights_dtype int8``: the SavedModel holds int8 weights (with float32 scales)
    converted from the float checkpoint, and its logits and generated tokens equal
    plug_jax's own with the same int8 weights."""
    from plug_jax import decoding, export
    from plug_jax.layers import quant
    from plug_jax.trainer import loop
    out_dir = built["base"] / "gpt3_int8_export"
    rc = export.main(_export_argv(GPT, built["dirs"]["gpt3"]["model"], out_dir,
                                  "--weights_dtype", "int8"))
    said = capsys.readouterr()
    assert rc == 0, said.err
    assert "weights: int8" in said.out
    manifest = json.load(open(out_dir / "export.json"))
    assert manifest["weights_dtype"] == "int8"
    jobs = {k: dict(v, saved_model=str(out_dir / "saved_model"))
            for k, v in built["jobs"]["gpt3"].items()}
    _loader(jobs, built["base"], "gpt3_int8").wait()
    served = dict(np.load(built["base"] / "gpt3_int8_out.npz"))
    model, params, cfg, _ = _model_and_params(GPT, built["dirs"]["gpt3"]["model"])
    q = loop.load_weights_dtype(model, params, cfg, "int8", log=False)
    assert quant.weights_dtype_of(q) == "int8"
    assert quant.param_bytes(q) < 0.5 * quant.param_bytes(params)
    for b in (1, 3):
        ids = np.asarray(jobs[f"logits{b}"]["inputs"]["ids"], np.int32)
        want = np.asarray(model.logits(q, {"decoder_input_tokens": ids}))
        np.testing.assert_allclose(served[f"logits{b}"], want, atol=1e-4, rtol=0)
        assert not np.allclose(served[f"logits{b}"], built["served"]["gpt3"][f"logits{b}"],
                               atol=1e-6, rtol=0)  # the int8 weights, not the float ones
    ids = np.asarray(jobs["generate"]["inputs"]["ids"], np.int32)
    want = decoding.generate(*model.decode_fns(), q, ids, ids != 0, NEW_TOKENS,
                             eos_id=built["vocabs"]["gpt3"].eos_id).tokens
    np.testing.assert_array_equal(served["generate"], np.asarray(want))
    # a foreign format stores float weights: refused before anything is written
    rc = export.main(_export_argv(GPT, built["dirs"]["gpt3"]["model"],
                                  built["base"] / "gpt3_int8_hf", "--to", "hf",
                                  "--weights_dtype", "int8"))
    assert "applies to serving exports only" in _one_error_line(capsys, rc)
    assert not (built["base"] / "gpt3_int8_hf").exists()


def _one_error_line(capsys, rc):
    said = capsys.readouterr()
    lines = said.err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("plug-export: error: "), said
    return lines[0]


def test_bad_input_is_one_line_and_writes_nothing(built, tmp_path, capsys):
    from plug_jax import export
    model_dir = built["dirs"]["gpt3"]["model"]
    # MODEL_DIR without a checkpoint
    empty = tmp_path / "untrained"
    empty.mkdir()
    rc = export.main(_export_argv(GPT, empty, tmp_path / "out1"))
    assert "holds no checkpoint" in _one_error_line(capsys, rc)
    assert not (tmp_path / "out1").exists()
    # EXPORT_DIR not empty: nothing in it is touched
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    rc = export.main(_export_argv(GPT, model_dir, busy))
    assert "not an empty folder" in _one_error_line(capsys, rc)
    assert os.listdir(busy) == ["keep.txt"] and (busy / "keep.txt").read_text() == "mine"
    # a format the family has no exporter for
    rc = export.main(_export_argv(GPT, model_dir, tmp_path / "out2", "--to", "onnx"))
    assert "has no export converter 'onnx'" in _one_error_line(capsys, rc)
    assert not (tmp_path / "out2").exists()
    # a platform jax cannot lower for
    rc = export.main(_export_argv(GPT, model_dir, tmp_path / "out4",
                                  "--gin.EXPORT_PLATFORMS=['gpu']"))
    assert "choose one or more of ['cpu', 'cuda'" in _one_error_line(capsys, rc)
    # a MODEL_DIR of another family
    rc = export.main(_export_argv(PALM, model_dir, tmp_path / "out5"))
    assert "family='gpt3'" in _one_error_line(capsys, rc)
    # the export.gin contract: EXPORT_DIR is REQUIRED
    argv = [a for a in _export_argv(GPT, model_dir, tmp_path / "out3")
            if not a.startswith("--gin.EXPORT_DIR")]
    assert "EXPORT_DIR" in _one_error_line(capsys, export.main(argv))
    assert sorted(os.listdir(tmp_path)) == ["busy", "untrained"]


def test_console_script_is_declared():
    setup = open(os.path.join(ROOT, "setup.py")).read()
    assert '"plug-export=plug_jax.export:main"' in setup
    assert '"orbax-export==0.0.8"' in setup
