"""ChatPLUG (X-PLUG): fusion-in-decoder dialogue on an mT5 (T5.1.1) encoder-decoder."""
from plug_jax.families.chatplug.config import PRESETS, PUBLISHED_PARAMS, ChatPLUGConfig
from plug_jax.families.chatplug.network import (ChatPLUGModel, abstract_params, hand_count,
                                                param_count, split_passages)

__all__ = ["PRESETS", "PUBLISHED_PARAMS", "ChatPLUGConfig", "ChatPLUGModel", "abstract_params",
           "hand_count", "param_count", "split_passages"]

from plug_jax.families.chatplug.family import FAMILY  # noqa: E402  (the registry reads it)
