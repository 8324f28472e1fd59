"""Moved to :mod:`plug_jax.families.clip.convert_hf` (the family's own folder); this name stays an alias of it."""
import sys

from plug_jax.families.clip import convert_hf as _module

sys.modules[__name__] = _module
