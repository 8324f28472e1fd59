"""CLIP (Radford et al. 2021) as a family: the contrastive image-text dual encoder on the
shared towers of :mod:`plug_jax.layers.clip`."""
from plug_jax.families.clip.config import PRESETS, ClipConfig

from plug_jax.families.clip.family import FAMILY  # noqa: E402  (the registry reads it)

__all__ = ["ClipConfig", "FAMILY", "PRESETS"]
