"""Build (once) and locate the reference environment for the modelscope parity tests.

    python tests/reference_env/build.py          # build if needed, print the interpreter
    make reference-env                           # the same (``make test`` depends on it)

The modelscope package (1.40.2) imports under transformers 4.x, while plug_jax pins
transformers 5.x, so its model classes run in a venv of their own: ``.venv-reference`` at
the repository root, or ``$PLUG_JAX_REFERENCE_ENV``. It is rebuilt only when
``requirements.txt`` changes (its hash is the stamp), and concurrent builders (pytest-xdist
workers) wait on a lock instead of building twice. The scripts that run in it
(``modelscope_*.py`` here) import only torch, numpy and modelscope; they never import
plug_jax, so what they write is independent of the code under test.

Standard library only: this file runs under plug_jax's own interpreter.
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import subprocess
import sys
import time
import venv

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
REQUIREMENTS = os.path.join(HERE, "requirements.txt")
# Installed after REQUIREMENTS with ``--no-deps``: packages whose declared dependencies are
# heavy and unused by the modules the scripts import (taming-transformers-rom1504 declares
# pytorch-lightning, torchvision and omegaconf; its Encoder / Decoder / VectorQuantizer2 need
# torch, numpy and einops only).
REQUIREMENTS_NO_DEPS = os.path.join(HERE, "requirements-nodeps.txt")


def env_dir() -> str:
    return os.environ.get("PLUG_JAX_REFERENCE_ENV") or os.path.join(ROOT, ".venv-reference")


def _python(path: str) -> str:
    return os.path.join(path, "bin", "python")


def _digest() -> str:
    h = hashlib.sha256()
    for path in (REQUIREMENTS, REQUIREMENTS_NO_DEPS):
        with open(path, "rb") as f:
            h.update(f.read())
    return h.hexdigest()


def ensure(log=print) -> str:
    """Returns the reference interpreter, building the venv first if it is missing or stale."""
    path = env_dir()
    stamp = os.path.join(path, ".requirements-sha256")
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path.rstrip("/") + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        want = _digest()
        if os.path.exists(stamp) and open(stamp).read().strip() == want:
            return _python(path)
        start = time.time()
        log(f"reference env: building {path} from {os.path.relpath(REQUIREMENTS, ROOT)} "
            "(once; about a minute)")
        venv.EnvBuilder(clear=True, with_pip=True).create(path)
        cmd = [_python(path), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
               "--no-input", "-r", REQUIREMENTS]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode == 0:
            out = subprocess.run(cmd[:-2] + ["--no-deps", "-r", REQUIREMENTS_NO_DEPS],
                                 capture_output=True, text=True)
        if out.returncode != 0:
            tail = " | ".join(out.stderr.strip().splitlines()[-3:])
            raise RuntimeError(
                f"reference env: pip could not install {REQUIREMENTS} into {path} ({tail}); "
                "these tests need the package registry once, then run offline from the cache")
        with open(stamp, "w") as f:
            f.write(want + "\n")
        log(f"reference env: ready in {time.time() - start:.0f} s")
        return _python(path)


def run(script: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """Runs ``tests/reference_env/<script>`` with the reference interpreter; raises on failure."""
    python = ensure(log=lambda msg: print(msg, file=sys.stderr))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "XLA_", "JAX_"))}
    env.update(MODELSCOPE_CACHE=os.path.join(env_dir(), "modelscope_cache"),
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", CUDA_VISIBLE_DEVICES="")
    out = subprocess.run([python, os.path.join(HERE, script), *args], capture_output=True,
                         text=True, env=env, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"{script} failed in the reference env:\n{out.stderr[-3000:]}")
    return out


if __name__ == "__main__":
    print(ensure(log=lambda msg: print(msg, file=sys.stderr)))
