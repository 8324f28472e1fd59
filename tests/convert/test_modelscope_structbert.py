"""ModelScope StructBERT dirs -> plug-convert -> the structbert family, and back.

The fixtures are written by the modelscope package's own classes in the reference env
(tests/reference_env/modelscope_structbert.py; layouts from
``modelscope.models.nlp.structbert.{configuration,fill_mask,text_classification}`` and the
weights file from ``TorchModel.save_pretrained`` / ``modelscope.utils.checkpoint``):

* a fill-mask dir (``SbertForMaskedLM``: ``cls.predictions.{transform.*, decoder.*}``, no
  ``cls.seq_relationship``, no ``cls.predictions.bias``),
* a classification dir (``SbertForSequenceClassification``: ``classifier.*``, 3 labels in
  ``config.json``'s ``id2label``),

each with the PyTorch model's logits for fixed inputs. ``plug-convert`` (its ``main``, in
process) converts them and our networks must give those logits to 1e-4 (float32); the report
names every tensor skipped or initialised fresh. One reference-env run builds both dirs
(module-scoped), one more checks the ``--to modelscope`` export with the same classes.
"""
import contextlib
import importlib.util
import io
import json
import os
import shutil

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from plug_jax.convert.cli import main
from plug_jax.families.structbert import (StructBERTConfig, StructBERTForPreTraining,
                                          StructBERTForSequenceClassification)
from plug_jax.trainer import checkpointing

ATOL = 1e-4
INPUTS = ("input_ids", "token_type_ids", "attention_mask")


def _run(argv):
    """``plug-convert`` in process: (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([str(a) for a in argv])
    return rc, out.getvalue(), err.getvalue()


def _convert(src, out, *extra):
    return _run(["--family", "structbert", "--source", "modelscope", "--input", src,
                 "--output", out, *extra])


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("plug-convert: error: ") and "Traceback" not in err
    return lines[0]


def _load(out):
    config_dict, params, metadata = checkpointing.load_params(out)
    return StructBERTConfig(**config_dict), params, metadata


def _file_tensors(folder):
    return torch.load(os.path.join(folder, "pytorch_model.bin"), weights_only=True)


@pytest.fixture(scope="module")
def ms_dirs(modelscope_checkpoint):
    """The folder the reference script wrote: fill_mask/ and classification/."""
    return modelscope_checkpoint("modelscope_structbert.py")


@pytest.fixture(scope="module")
def converted(ms_dirs, tmp_path_factory):
    """{kind: (output dir, stdout)} of plug-convert on the two dirs (fill-mask with
    --allow_missing=cls.seq_relationship)."""
    base = tmp_path_factory.mktemp("ms_structbert_out")
    result = {}
    for kind, extra in (("fill_mask", ["--allow_missing=cls.seq_relationship"]),
                        ("classification", [])):
        out = base / kind
        rc, stdout, stderr = _convert(ms_dirs / kind, out, *extra)
        assert rc == 0, stderr
        result[kind] = (out, stdout)
    return result


def _mlm_logits(cfg, params, ref):
    out = StructBERTForPreTraining(cfg).apply({"params": params},
                                              *(jnp.asarray(ref[k]) for k in INPUTS))
    return np.asarray(out["mlm_logits"]), out


def _cls_logits(cfg, params, ref, num_labels=3):
    return np.asarray(StructBERTForSequenceClassification(cfg, num_labels=num_labels).apply(
        {"params": params}, *(jnp.asarray(ref[k]) for k in INPUTS)))


def test_fill_mask_without_allow_missing_is_one_error_line(ms_dirs, tmp_path):
    rc, stdout, stderr = _convert(ms_dirs / "fill_mask", tmp_path / "out")
    assert rc == 2
    line = _one_error_line(stderr)
    assert "cls.seq_relationship.weight" in line
    assert "--allow_missing=cls.seq_relationship" in line
    assert not (tmp_path / "out").exists() or not os.listdir(tmp_path / "out")


def test_fill_mask_dir_gives_the_pytorch_logits(ms_dirs, converted):
    out, stdout = converted["fill_mask"]
    cfg, params, metadata = _load(out)
    assert metadata["source"]["format"] == "modelscope"
    assert (cfg.num_layers, cfg.hidden_size, cfg.mlp_dim, cfg.vocab_size, cfg.norm_placement) \
        == (2, 64, 128, 96, "post")
    ref = np.load(ms_dirs / "fill_mask" / "reference.npz")
    got, out_all = _mlm_logits(cfg, params, ref)
    diff = float(np.abs(got - ref["logits"]).max())  # padded positions too
    print(f"ModelScope SbertForMaskedLM parity: max abs diff {diff:.3g}")
    assert diff < ATOL
    # The missing sentence head is fresh: StructBERT's 3 classes, zero bias.
    assert params["sentence_head"]["kernel"].shape == (64, 3)
    assert np.all(params["sentence_head"]["bias"] == 0)
    assert out_all["sentence_logits"].shape == (3, 3)


def test_fill_mask_report_names_every_skipped_and_fresh_tensor(ms_dirs, converted):
    out, stdout = converted["fill_mask"]
    sd = _file_tensors(ms_dirs / "fill_mask")
    skipped = {"bert.embeddings.position_ids", "cls.predictions.decoder.weight"}
    assert skipped <= set(sd) and "cls.seq_relationship.weight" not in sd
    assert "cls.predictions.bias" not in sd
    lines = [x for x in stdout.splitlines() if "skipped" in x or "fresh" in x]
    for name in skipped:
        assert any(f"skipped {name}:" in x for x in lines), stdout
    fresh = [x for x in lines if "initialised fresh (--allow_missing=cls.seq_relationship)" in x]
    assert len(fresh) == 1 and "cls.seq_relationship.weight [3, 64]" in fresh[0] \
        and "cls.seq_relationship.bias [3]" in fresh[0], stdout
    # Nothing else is dropped: every other tensor of the file is in the params.
    _, params, _ = _load(out)
    count = sum(np.size(x) for x in _leaves(params))
    kept = sum(v.numel() for k, v in sd.items() if k not in skipped)
    assert count == kept + 64 * 3 + 3


def test_classification_dir_gives_the_pytorch_logits(ms_dirs, converted):
    out, stdout = converted["classification"]
    cfg, params, _ = _load(out)
    assert set(params) == {"encoder", "pooler", "classifier"}
    assert params["classifier"]["kernel"].shape == (64, 3)
    ref = np.load(ms_dirs / "classification" / "reference.npz")
    diff = float(np.abs(_cls_logits(cfg, params, ref) - ref["logits"]).max())
    print(f"ModelScope SbertForSequenceClassification parity: max abs diff {diff:.3g}")
    assert diff < ATOL
    assert "classifier: 3 labels (negative, neutral, positive) from config.json id2label" \
        in stdout
    assert "skipped bert.embeddings.position_ids:" in stdout
    sd = _file_tensors(ms_dirs / "classification")
    count = sum(np.size(x) for x in _leaves(params))
    assert count == sum(v.numel() for k, v in sd.items() if k != "bert.embeddings.position_ids")


def test_unscanned_layout_gives_the_same_logits(ms_dirs, tmp_path):
    rc, _, stderr = _convert(ms_dirs / "classification", tmp_path / "o", "--scan_layers",
                             "false")
    assert rc == 0, stderr
    cfg, params, _ = _load(tmp_path / "o")
    assert "layers_1" in params["encoder"]["stack"]
    ref = np.load(ms_dirs / "classification" / "reference.npz")
    np.testing.assert_allclose(_cls_logits(cfg, params, ref), ref["logits"], atol=ATOL, rtol=0)


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_labels_follow_modelscopes_order_and_must_fit_the_classifier(ms_dirs, tmp_path):
    # configuration.json's model.label2id comes before config.json (parse_label_mapping).
    d = _copy(ms_dirs / "classification", tmp_path / "a")
    ms = json.loads((d / "configuration.json").read_text())
    ms["model"]["label2id"] = {"bad": 0, "so-so": 1, "good": 2}
    (d / "configuration.json").write_text(json.dumps(ms))
    rc, stdout, stderr = _convert(d, tmp_path / "oa")
    assert rc == 0, stderr
    assert "3 labels (bad, so-so, good) from configuration.json model.label2id" in stdout
    # A label count that does not fit classifier.weight: one line naming both.
    d = _copy(ms_dirs / "classification", tmp_path / "b")
    c = json.loads((d / "config.json").read_text())
    c["id2label"] = {"0": "no", "1": "yes"}
    c.pop("label2id")
    (d / "config.json").write_text(json.dumps(c))
    rc, _, stderr = _convert(d, tmp_path / "ob")
    line = _one_error_line(stderr)
    assert rc == 2 and "classifier.weight has 3 rows" in line and "2 labels" in line


def test_unknown_tensors_and_wrong_sources_are_one_error_line(ms_dirs, tmp_path):
    d = _copy(ms_dirs / "fill_mask", tmp_path / "x")
    sd = _file_tensors(d)
    sd["cls.extra.weight"] = torch.zeros(2, 64)
    torch.save(sd, d / "pytorch_model.bin")
    rc, _, stderr = _convert(d, tmp_path / "o1", "--allow_missing=cls.seq_relationship")
    assert rc == 2 and "cls.extra.weight" in _one_error_line(stderr)
    # An untied MLM decoder is refused (modelscope would tie it on load).
    sd = _file_tensors(ms_dirs / "fill_mask")
    sd["cls.predictions.decoder.weight"] = sd["cls.predictions.decoder.weight"] + 1.0
    torch.save(sd, d / "pytorch_model.bin")
    rc, _, stderr = _convert(d, tmp_path / "o2", "--allow_missing=cls.seq_relationship")
    assert rc == 2 and "untied MLM decoder" in _one_error_line(stderr)
    # The transformers reader names the modelscope source; --allow_missing is modelscope's.
    rc, _, stderr = _run(["--family", "structbert", "--source", "hf", "--input",
                          ms_dirs / "fill_mask", "--output", tmp_path / "o3"])
    assert rc == 2 and "--source modelscope" in _one_error_line(stderr)
    rc, _, stderr = _run(["--family", "structbert", "--source", "hf", "--input",
                          ms_dirs / "fill_mask", "--output", tmp_path / "o4",
                          "--allow_missing=cls.seq_relationship"])
    assert rc == 2 and "--allow_missing is not used" in _one_error_line(stderr)


def _reference_env():
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "reference_env", "build.py")
    spec = importlib.util.spec_from_file_location("plug_jax_reference_env_sb", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_export_to_modelscope_round_trips_and_loads_in_the_modelscope_classes(
        ms_dirs, converted, tmp_path):
    """--to modelscope writes SbertForMaskedLM / SbertForSequenceClassification dirs: importing
    them back is exact, and modelscope's classes load them (reference env) with our logits."""
    exported = {}
    for kind in ("fill_mask", "classification"):
        src, _ = converted[kind]
        out = tmp_path / f"ms_{kind}"
        rc, stdout, stderr = _run(["--family", "structbert", "--to", "modelscope", "--input",
                                   src, "--output", out])
        assert rc == 0, stderr
        # the vocab.txt of the modelscope dir the checkpoint was imported from travels along
        assert sorted(os.listdir(out)) == ["config.json", "configuration.json",
                                           "pytorch_model.bin", "vocab.txt"]
        config = json.loads((out / "config.json").read_text())
        assert config["model_type"] == "structbert"
        rc, _, stderr = _convert(out, tmp_path / f"back_{kind}")
        assert rc == 0, stderr
        _, want, _ = _load(src)
        _, got, _ = _load(tmp_path / f"back_{kind}")
        flat_w, flat_g = dict(_flat(want)), dict(_flat(got))
        assert set(flat_w) == set(flat_g)
        for k in flat_w:
            np.testing.assert_array_equal(flat_g[k], flat_w[k], err_msg=k)
        ref = np.load(ms_dirs / kind / "reference.npz")
        np.savez(out / "inputs.npz", **{k: ref[k] for k in INPUTS})
        exported[kind] = out
    _reference_env().run("modelscope_structbert.py", "--check",
                         *(str(p) for p in exported.values()))
    for kind, out in exported.items():
        ours = np.load(ms_dirs / kind / "reference.npz")["logits"]
        theirs = np.load(out / "reference.npz")["logits"]
        np.testing.assert_allclose(theirs, ours, atol=ATOL, rtol=0, err_msg=kind)


def _flat(tree, prefix=""):
    for k, v in tree.items():
        if isinstance(v, dict):
            yield from _flat(v, f"{prefix}{k}/")
        else:
            yield f"{prefix}{k}", np.asarray(v)


def _leaves(tree):
    return [v for _, v in _flat(tree)]
