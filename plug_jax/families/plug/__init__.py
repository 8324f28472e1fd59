"""PLUG (27B): StructBERT encoder + PALM decoder (MODEL_SPECS.md section 3)."""
from plug_jax.families.plug.config import PRESETS, PUBLISHED_PARAMS, PlugConfig
from plug_jax.families.plug.network import PlugDecoderLayer, PlugModel, abstract_params, param_count

__all__ = ["PRESETS", "PUBLISHED_PARAMS", "PlugConfig", "PlugDecoderLayer", "PlugModel",
           "abstract_params", "param_count"]

from plug_jax.families.plug.family import FAMILY  # noqa: E402  (the registry reads it)
