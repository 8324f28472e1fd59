"""Test setup: 8 fake CPU devices, forced before jax is imported."""
import os
import re

_DEVICES = 8
_flags = re.sub(r"--xla_force_host_platform_device_count=\S+", "",
                os.environ.get("XLA_FLAGS", "")).split()
os.environ["XLA_FLAGS"] = " ".join(_flags + [f"--xla_force_host_platform_device_count={_DEVICES}"])
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402  (must come after the environment is set)
import pytest  # noqa: E402


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
