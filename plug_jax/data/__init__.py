"""plug_jax data layer: Shop World, vocabularies, seqio pipelines.

Importing ``plug_jax.data`` or ``plug_jax.data.shop_world`` is light (no TensorFlow);
``plug_jax.data.vocab``, ``plug_jax.data.pipeline`` and ``tasks/`` import seqio and
TensorFlow through ``configure_tensorflow``, which keeps TensorFlow quiet and off the GPUs.
"""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile


@contextlib.contextmanager
def _stderr_captured(enabled: bool):
    """Send file descriptor 2 to a temporary file; replay it if the block raises.

    TensorFlow's C++ start-up messages (oneDNN, CUDA probing) are written before its log
    level can be set, so they can only be silenced at the file-descriptor level.
    """
    if not enabled:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            tmp.seek(0)
            sys.stderr.write(tmp.read().decode("utf-8", "replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def configure_tensorflow():
    """Import TensorFlow (and seqio) for the input pipeline only; returns ``tensorflow``.

    Quiet C++ and Python logging, no GPUs: the accelerators belong to JAX. Start-up messages
    are hidden unless ``PLUG_JAX_TF_VERBOSE=1``; they are shown if the import fails.
    """
    quiet = "tensorflow" not in sys.modules and os.environ.get("PLUG_JAX_TF_VERBOSE") != "1"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with _stderr_captured(quiet):
        import tensorflow as tf  # noqa: PLC0415  (deliberately lazy)

        tf.get_logger().setLevel("ERROR")
        try:
            tf.config.set_visible_devices([], "GPU")
        except (RuntimeError, ValueError):  # devices already initialised: leave them
            pass
        import seqio  # noqa: F401,PLC0415  (pulls in tensorflow_text under the same guard)
    return tf
