"""mPLUG: vision-language model with cross-modal skip connections (README.md)."""
from plug_jax.families.mplug.config import PRESETS, MPlugConfig
from plug_jax.families.mplug.family import FAMILY

__all__ = ["FAMILY", "MPlugConfig", "PRESETS"]
