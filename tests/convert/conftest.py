"""Fixtures for converter tests: checkpoints written by the modelscope package itself."""
import importlib.util
import os

import pytest

_BUILD = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      "reference_env", "build.py")


def _reference_env():
    spec = importlib.util.spec_from_file_location("plug_jax_reference_env", _BUILD)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def modelscope_checkpoint(tmp_path_factory):
    """``modelscope_checkpoint("modelscope_gpt3.py")`` -> a folder that the script, run with
    the modelscope package in the reference env (tests/reference_env/), wrote: the released
    checkpoint files of a random tiny model and ``reference.npz`` with its outputs."""
    env = _reference_env()
    made = {}

    def make(script, seed=0):
        if (script, seed) not in made:
            out = tmp_path_factory.mktemp(script.replace(".py", ""))
            env.run(script, str(out), f"--seed={seed}")
            made[script, seed] = out
        return made[script, seed]
    return make
