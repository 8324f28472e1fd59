"""Test setup: 8 fake CPU devices, forced before jax is imported."""
import os
import re
import shutil
import tempfile

_DEVICES = 8
# XLA flags for every test process, the CLI subprocesses included: they set
# XLA_FLAGS=$PLUG_JAX_TEST_XLA_FLAGS (no device count; their gin hardware file decides it).
# The tests' programs are tiny, so XLA's CPU compiler dominates their time: LLVM
# optimisation level 0 compiles them about 40% faster; XLA's own HLO passes are unchanged
# (docs/decisions.md, "Test compile flags"). `make test TEST_XLA_FLAGS=` runs the
# suite at the default level.
os.environ.setdefault("PLUG_JAX_TEST_XLA_FLAGS", "--xla_backend_optimization_level=0")
_flags = re.sub(r"--xla_force_host_platform_device_count=\S+", "",
                os.environ.get("XLA_FLAGS", "")).split()
_flags += [f for f in os.environ["PLUG_JAX_TEST_XLA_FLAGS"].split() if f not in _flags]
os.environ["XLA_FLAGS"] = " ".join(_flags + [f"--xla_force_host_platform_device_count={_DEVICES}"])
os.environ["JAX_PLATFORMS"] = "cpu"
# One persistent XLA compilation cache per test run, shared by the xdist workers and the CLI
# subprocesses (they inherit the environment): the same tiny experiment compiled by several
# tests (contract checks, CLI tests, resumed runs) is compiled once. Made by the first
# process that imports this file (pytest's controller under xdist), removed by it at the end.
if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _OWN_CACHE = tempfile.mkdtemp(
        prefix="plug_jax_test_xla_cache_")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
else:
    _OWN_CACHE = None

import jax  # noqa: E402  (must come after the environment is set)
import pytest  # noqa: E402


def pytest_unconfigure(config):
    if _OWN_CACHE and not os.environ.get("PYTEST_XDIST_WORKER"):
        shutil.rmtree(_OWN_CACHE, ignore_errors=True)


def pytest_sessionstart(session):
    n = len(jax.devices())
    if n != _DEVICES:
        raise pytest.UsageError(
            f"tests need {_DEVICES} fake CPU devices but jax sees {n}; jax was imported "
            "before tests/conftest.py could set XLA_FLAGS/JAX_PLATFORMS")

# The Shop World SentencePiece vocabulary is trained once and cached; tests share one
# cache outside the user's home (atomic writes make concurrent workers safe).
os.environ.setdefault("PLUG_JAX_CACHE", os.path.join(
    os.environ.get("TMPDIR", "/tmp"), "plug_jax_test_cache"))


# ---------------------------------------------------------------- learning results
# Learning-with-control tests report "result next to control" lines through the
# `report_result` fixture. They travel in the test report (so they survive pytest-xdist
# workers, which swallow stdout) and are printed in a block at the end of every run.
_RESULT_KEY = "learning_result"


@pytest.fixture
def report_result(record_property):
    """``report_result("shop_tiny held-out loss", 1.23, control="unigram 5.50")``."""
    def report(what, value, control, **extra):
        fields = " ".join(f"{k}={v}" for k, v in extra.items())
        value = f"{value:.4f}" if isinstance(value, float) else value
        record_property(_RESULT_KEY, f"{what}: {value} | control: {control} {fields}".rstrip())
    return report


def pytest_terminal_summary(terminalreporter):
    lines = []
    for reports in terminalreporter.stats.values():
        for rep in reports:
            if getattr(rep, "when", None) == "call":
                lines += [f"{rep.nodeid.split('::')[-1]}: {v}"
                          for k, v in getattr(rep, "user_properties", ()) if k == _RESULT_KEY]
    if lines:
        terminalreporter.section("learning results (model | control)")
        for line in sorted(lines):
            terminalreporter.write_line(line)
