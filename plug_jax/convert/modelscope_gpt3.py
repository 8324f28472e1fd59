"""Moved to :mod:`plug_jax.families.gpt3.convert_modelscope` (the family's own folder); this name stays an alias of it."""
import sys

from plug_jax.families.gpt3 import convert_modelscope as _module

sys.modules[__name__] = _module
