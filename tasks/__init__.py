"""seqio Task and Mixture registrations, one module per family.

Installed as ``plug_jax.tasks`` (setup.py maps this folder there), so the name cannot
collide with another installed ``tasks`` package. Importing it registers every task;
registration is idempotent.
"""
from . import corpora, corpora_vision, curricula, gpt3, palm, shop_world, structbert  # noqa: F401

__all__ = ["corpora", "corpora_vision", "curricula", "gpt3", "palm", "shop_world", "structbert"]
