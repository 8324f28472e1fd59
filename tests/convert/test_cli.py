"""plug-convert CLI, params checkpoints (save/load) and the no-pickle weights loader."""
import builtins
import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from plug_jax.convert import io as cio
from plug_jax.convert.cli import main
from plug_jax.families.gpt3 import GPT3Config, GPT3LM
from plug_jax.trainer import checkpointing


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_embd=32, n_head=4, n_layer=2, vocab_size=61, n_positions=16,
                                  bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.add_(0.05 * torch.randn_like(p))
    path = tmp_path_factory.mktemp("gpt2")
    model.save_pretrained(path)
    ids = torch.randint(1, 61, (2, 6))
    mask = torch.tensor([[1] * 6, [1] * 3 + [0] * 3])
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask).logits.numpy()
    return path, ids.numpy(), mask.numpy(), ref


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("plug-convert: error: ")
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize("scan", ["true", "false"])
def test_convert_hf_then_load_params_gives_same_logits(hf_dir, tmp_path, capsys, scan):
    src, ids, mask, ref = hf_dir
    out = tmp_path / "out"
    rc = main(["--family", "gpt3", "--source", "hf", "--input", str(src), "--output", str(out),
               "--scan_layers", scan])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "parameters" in printed and "layers=2 heads=4 hidden=32" in printed
    assert sorted(os.listdir(out)) == ["config.json", "metadata.json", "params"]

    config_dict, params, metadata = checkpointing.load_params(out)
    cfg = GPT3Config(**config_dict)
    assert cfg.scan_layers is (scan == "true")
    assert ("layers" in params["decoder"]) is (scan == "true")
    assert metadata["family"] == "gpt3" and metadata["scanned"] is (scan == "true")
    assert metadata["source"] == {"format": "hf", "path": str(src)}
    assert metadata["dtypes"] == ["float32"] and metadata["preset"] == "custom"
    assert f"{metadata['param_count']:,} parameters" in printed
    got = np.asarray(GPT3LM(cfg).apply({"params": params}, jnp.asarray(ids),
                                       attention_mask=jnp.asarray(mask)))
    real = mask.astype(bool)
    np.testing.assert_allclose(got[real], ref[real], atol=1e-4, rtol=0)


def test_existing_output_needs_overwrite(hf_dir, tmp_path, capsys):
    src = hf_dir[0]
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    argv = ["--family", "gpt3", "--source", "hf", "--input", str(src), "--output", str(out)]
    assert main(argv) == 2
    line = _one_error_line(capsys)
    assert "exists and is not empty" in line and "--overwrite" in line
    assert (out / "keep.txt").read_text() == "precious"  # nothing lost

    assert main(argv + ["--overwrite"]) == 0
    assert sorted(os.listdir(out)) == ["config.json", "metadata.json", "params"]
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".out")]  # no temp dirs left


@pytest.mark.parametrize("change, expect", [
    ({"--family": "bogus"}, "unknown family 'bogus'; supported families: gpt3, structbert, plug"),
    ({"--source": "tf"}, "unknown source 'tf'; choose one of hf, modelscope"),
    ({"--input": "/nonexistent/gpt2"}, "input /nonexistent/gpt2 does not exist"),
    ({"--scan_layers": "maybe"}, "expected true or false"),
    ({"--output": None}, "required: --output"),
])
def test_bad_arguments_exit_2_with_one_line(hf_dir, tmp_path, capsys, change, expect):
    args = {"--family": "gpt3", "--source": "hf", "--input": str(hf_dir[0]),
            "--output": str(tmp_path / "o")}
    args.update(change)
    argv = [x for k, v in args.items() if v is not None for x in (k, v)]
    assert main(argv) == 2
    assert expect in _one_error_line(capsys)
    assert not (tmp_path / "o").exists()


class _Trap:
    """Unpickling this would create a file; a weights-only loader must refuse it."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (builtins.open, (self.path, "w"))


def test_pickle_payload_in_bin_is_refused(hf_dir, tmp_path, capsys):
    marker = tmp_path / "pwned"
    d = tmp_path / "evil"
    d.mkdir()
    (d / "config.json").write_text((hf_dir[0] / "config.json").read_text())
    torch.save({"transformer.wte.weight": torch.zeros(2), "payload": _Trap(str(marker))},
               d / "pytorch_model.bin")
    with pytest.raises(cio.WeightsLoadError) as e:
        cio.load_weights_file(d / "pytorch_model.bin")
    msg = str(e.value)
    assert "\n" not in msg and str(d / "pytorch_model.bin") in msg
    assert "weights_only=True" in msg and "safetensors" in msg
    assert main(["--family", "gpt3", "--source", "hf", "--input", str(d),
                 "--output", str(tmp_path / "o")]) == 2
    assert "refusing to load" in _one_error_line(capsys)
    assert not marker.exists()


def test_corrupt_and_unsupported_files_fail_clearly(tmp_path):
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(b"\x00\x01 not a safetensors file")
    with pytest.raises(cio.WeightsLoadError, match="corrupt") as e:
        cio.load_weights_file(bad)
    assert str(bad) in str(e.value) and "\n" not in str(e.value)
    trunc = tmp_path / "pytorch_model.bin"
    trunc.write_bytes(b"PK\x03\x04 truncated zip")
    with pytest.raises(cio.WeightsLoadError, match="corrupt") as e:
        cio.load_weights_file(trunc)
    assert str(trunc) in str(e.value) and "\n" not in str(e.value)
    pkl = tmp_path / "weights.pkl"
    pkl.write_bytes(b"")
    with pytest.raises(cio.WeightsLoadError, match="unsupported weights file format '.pkl'"):
        cio.load_weights_file(pkl)


def test_save_params_round_trip_and_refusals(tmp_path):
    params = {"a": {"kernel": np.arange(6, dtype=np.float32).reshape(2, 3)},
              "decoder": {"layers": {"b": np.ones((2, 4), np.float32)}}}
    out = tmp_path / "ckpt"
    path = checkpointing.save_params(out, params, config_dict={"hidden_size": 3},
                                     metadata={"family": "gpt3", "preset": "tiny",
                                               "source": {"format": "test"}})
    assert path == str(out)
    cfg, got, meta = checkpointing.load_params(out)
    assert cfg == {"hidden_size": 3}
    assert meta["family"] == "gpt3" and meta["scanned"] is True and meta["param_count"] == 14
    np.testing.assert_array_equal(got["a"]["kernel"], params["a"]["kernel"])
    np.testing.assert_array_equal(got["decoder"]["layers"]["b"], params["decoder"]["layers"]["b"])
    with pytest.raises(checkpointing.CheckpointError, match="overwrite=True"):
        checkpointing.save_params(out, params, config_dict={}, metadata={"family": "gpt3"})
    with pytest.raises(checkpointing.CheckpointError, match="does not exist"):
        checkpointing.load_params(tmp_path / "missing")
    (tmp_path / "half").mkdir()
    with pytest.raises(checkpointing.CheckpointError, match="config.json is missing"):
        checkpointing.load_params(tmp_path / "half")
    assert json.loads((out / "metadata.json").read_text())["preset"] == "tiny"
