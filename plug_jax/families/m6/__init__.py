"""M6: the unified multimodal transformer (image patches and text in one prefix-LM stack),
with M6-T expert prototyping for the MoE presets."""
from plug_jax.families.m6.config import PRESETS, M6Config
from plug_jax.families.m6.family import FAMILY

__all__ = ["FAMILY", "M6Config", "PRESETS"]
