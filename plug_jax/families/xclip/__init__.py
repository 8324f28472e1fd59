"""X-CLIP (Ma et al. 2022, arXiv 2207.07285) as a family: video-text retrieval by
multi-grained contrast (video-sentence, video-word, sentence-frame and frame-word through
AOSM) on the shared CLIP towers of :mod:`plug_jax.layers.clip`."""
from plug_jax.families.xclip.config import PRESETS, XClipConfig

from plug_jax.families.xclip.family import FAMILY  # noqa: E402  (the registry reads it)

__all__ = ["FAMILY", "PRESETS", "XClipConfig"]
