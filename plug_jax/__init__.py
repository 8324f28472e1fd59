"""plug_jax: JAX/Flax codebase for the AliceMind / X-PLUG model families.

Importing the package is cheap and never imports TensorFlow; the data layer
(`plug_jax.data`, `tasks/`) is the only place that does.
"""

__version__ = "0.1.0"
