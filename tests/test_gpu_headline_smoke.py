"""``benchmarks/gpu_headline.py --smoke``: the GPU headline benchmark at tiny shapes on CPU.

The script is meant to run once on an H100 / H200 and must work the first time there; this
runs every section (bandwidth, GPT-3 train step, GPT-3 bf16 and int8 decoding, PLUG
encoder-decoder decoding) on the tiny configs and checks that the report has every line
and every figure is a finite number. Nothing about time is asserted.
"""
import importlib.util
import math
import pathlib
import re

import pytest

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_headline.py"

FIGURES = (
    "bandwidth.gb_per_s",
    "train.step_s", "train.tokens_per_s", "train.model_tflops", "train.mfu_percent",
    "train.compile_s",
) + tuple(
    f"{section}.{figure}"
    for section in ("decode_bf16", "decode_int8", "encdec")
    for figure in ("seconds", "tokens_per_s", "compile_s", "weight_gb_per_token", "limit_s",
                   "fraction_of_limit")
)

# Lines of the running report (section, a fragment each must contain).
LINES = (
    ("bandwidth", "GB/s"),
    ("train", "GPT-3 tiny"),
    ("train", "remat_policy dots_no_batch: compile"),
    ("train", "model TFLOP/s, MFU"),
    ("train", "goal >= 50%"),
    ("decode_bf16", "bf16 weights"),
    ("decode_bf16", "goal <= 1.15 s"),
    ("decode_bf16", "bandwidth limit"),
    ("decode_int8", "int8 layout check"),
    ("decode_int8", "int8 targets + float32 scales"),
    ("decode_int8", "goal <= 0.6 s"),
    ("decode_int8", "bandwidth limit"),
    ("encdec", "PLUG tiny"),
    ("encdec", "decoder weight bytes read per step"),
    ("encdec", "bandwidth limit"),
)


def _load():
    spec = importlib.util.spec_from_file_location("gpu_headline", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def smoke_report():
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = _load().main(["--smoke"])
    return rc, out.getvalue()


def test_smoke_runs_every_section(smoke_report):
    rc, text = smoke_report
    assert "FAILED" not in text, text
    assert rc == 0, text
    head = text.splitlines()[:5]
    assert any(line.startswith("versions: jax ") and "jaxlib" in line and "flax" in line
               for line in head), head
    assert any(line.startswith("device: platform cpu, device_kind") for line in head), head
    for section, fragment in LINES:
        assert any(line.startswith(f"[{section}] ") and fragment in line
                   for line in text.splitlines()), (section, fragment, text)


def test_smoke_summary_has_finite_figures(smoke_report):
    _, text = smoke_report
    start = text.index("== summary")
    end = text.index("== end", start)
    rows = {}
    for line in text[start:end].splitlines()[1:]:
        m = re.match(r"^(\S+)\s+(\S+)", line)
        assert m, line
        rows[m.group(1)] = float(m.group(2))
    assert set(FIGURES) <= set(rows), sorted(set(FIGURES) - set(rows))
    for name in FIGURES:
        assert math.isfinite(rows[name]) and rows[name] > 0, (name, rows[name])


def test_sections_flag():
    gh = _load()
    args = gh.parse_args(["--smoke", "--sections", "encdec,decode"])
    assert args.sections == ["decode_bf16", "decode_int8", "encdec"]
    assert args.new_tokens == 8 and args.src_len == 32
    full = gh.parse_args([])
    assert full.sections == ["train", "decode_bf16", "decode_int8", "encdec"]
    assert full.new_tokens == 128 and full.src_len == 512
    with pytest.raises(SystemExit):
        gh.parse_args(["--sections", "nope"])
