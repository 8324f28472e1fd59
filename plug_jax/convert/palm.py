"""Moved to :mod:`plug_jax.families.palm.convert` (the family's own folder); this name stays an alias of it."""
import sys

from plug_jax.families.palm import convert as _module

sys.modules[__name__] = _module
