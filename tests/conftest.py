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
