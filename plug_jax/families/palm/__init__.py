"""PALM / PALM 2.0 (AliceMind): BERT-shaped encoder + Transformer decoder + copy head."""
from plug_jax.families.palm.config import PRESETS, PUBLISHED_PARAMS, PalmConfig
from plug_jax.families.palm.network import PalmModel, abstract_params, param_count

__all__ = ["PRESETS", "PUBLISHED_PARAMS", "PalmConfig", "PalmModel", "abstract_params",
           "param_count"]

from plug_jax.families.palm.family import FAMILY  # noqa: E402  (the registry reads it)
