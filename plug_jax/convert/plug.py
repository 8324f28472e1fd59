"""Moved to :mod:`plug_jax.families.plug.convert_megatron` (the family's own folder); this name stays an alias of it."""
import sys

from plug_jax.families.plug import convert_megatron as _module

sys.modules[__name__] = _module
