"""Checkpoint conversion between plug_jax and other frameworks.

* :func:`from_transformers` / :func:`to_transformers` -- Hugging Face GPT-2
  (``GPT2LMHeadModel`` / ``GPT2Model``) <-> the ``gpt3`` family.
* :func:`from_modelscope` -- ModelScope Chinese GPT-3 (single-device
  ``backbone`` and Megatron ``distributed`` layouts) -> the ``gpt3`` family.
* :func:`merge_plug_checkpoint` -- PLUG 27B's 8 Megatron tensor-parallel files
  (``mp_rank_0X_model_states.pt``) -> one unsplit state dict
  (:mod:`plug_jax.convert.megatron`: :func:`load_megatron_shards`,
  :func:`merge_megatron_shards` with :data:`PLUG_RULES`, :func:`split_tensor_parallel`).
* ``plug-convert`` (:mod:`plug_jax.convert.cli`) writes a converted checkpoint
  with :func:`plug_jax.trainer.checkpointing.save_params`.

Weights are only read through safetensors or ``torch.load(weights_only=True)``
(:mod:`plug_jax.convert.io`). Importing this package imports neither torch nor
transformers; the functions that need them import them when called.
"""
from plug_jax.convert.hf_gpt2 import (from_transformers, gpt3_config_from_hf, to_transformers,
                                      to_transformers_config)
from plug_jax.convert.io import SUPPORTED_FAMILIES, WeightsLoadError
from plug_jax.convert.megatron import (PLUG_RULES, MegatronMergeError, load_megatron_shards,
                                       merge_megatron_shards, merge_plug_checkpoint,
                                       split_tensor_parallel)
from plug_jax.convert.modelscope_gpt3 import (from_modelscope, gpt3_config_from_modelscope,
                                              merge_tensor_parallel)

__all__ = [
    "MegatronMergeError", "PLUG_RULES", "SUPPORTED_FAMILIES", "WeightsLoadError",
    "load_megatron_shards", "merge_megatron_shards", "merge_plug_checkpoint",
    "split_tensor_parallel", "from_modelscope", "from_transformers",
    "gpt3_config_from_hf", "gpt3_config_from_modelscope", "merge_tensor_parallel",
    "to_transformers", "to_transformers_config",
]
