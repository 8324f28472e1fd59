"""Chinese GPT-3 (ModelScope ``damo/nlp_gpt3_text-generation_*``) family."""
from plug_jax.families.gpt3.config import PRESETS, GPT3Config
from plug_jax.families.gpt3.flops import matmul_params, training_flops, training_flops_per_token
from plug_jax.families.gpt3.network import (GPT3Block, GPT3LM, abstract_params,
                                            active_param_count, param_count)

from plug_jax.families.gpt3.family import FAMILY  # noqa: E402  (the registry reads it)
