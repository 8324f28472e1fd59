"""StructBERT (arXiv 1908.04577) family; its pre-LN variant is PLUG's encoder."""
from plug_jax.families.structbert.config import PRESETS, PUBLISHED_PARAMS, StructBERTConfig
from plug_jax.families.structbert.network import (BertEncoder, BertLayer, MLMHead,
                                                  StructBERTForPreTraining,
                                                  StructBERTForSequenceClassification,
                                                  abstract_params,
                                                  param_count)

from plug_jax.families.structbert.family import FAMILY  # noqa: E402  (the registry reads it)
