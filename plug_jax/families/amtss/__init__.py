"""AMTSS (arXiv 2305.07928): adaptive multi-teacher, single-student distillation."""
from plug_jax.families.amtss.config import PRESETS, SHOP_INTENTS, SHOP_LANGUAGES, AMTSSConfig
from plug_jax.families.amtss.network import AMTSSStudent, abstract_params, param_count

from plug_jax.families.amtss.family import FAMILY  # noqa: E402  (the registry reads it)

__all__ = ["AMTSSConfig", "AMTSSStudent", "FAMILY", "PRESETS", "SHOP_INTENTS",
           "SHOP_LANGUAGES", "abstract_params", "param_count"]
