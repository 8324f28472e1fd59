"""Checkpoint conversion between plug_jax and other frameworks.

* :func:`from_transformers` / :func:`to_transformers` -- Hugging Face GPT-2
  (``GPT2LMHeadModel`` / ``GPT2Model``) <-> the ``gpt3`` family.
* :func:`from_modelscope` -- ModelScope Chinese GPT-3 (single-device
  ``backbone`` and Megatron ``distributed`` layouts) -> the ``gpt3`` family.
* Each family's own converters live in its folder (``plug_jax/families/<name>/convert*.py``)
  and are registered in its ``FamilySpec.converters``; the old module names
  (``plug_jax.convert.hf_gpt2``, ``modelscope_gpt3``, ``hf_bert``, ``plug``, ``palm``) stay
  as aliases of them. This package keeps what is not one family's: the safe file readers
  and tree helpers (:mod:`plug_jax.convert.io`), Megatron shard merging
  (:mod:`plug_jax.convert.megatron`), the shared CLIP towers' transformers layout
  (:mod:`plug_jax.convert.hf_clip`) and the ``plug-convert`` command.
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
import importlib

# name -> the module that defines it. Resolved on first use (PEP 562), so importing this
# package imports no family: the family converters import plug_jax.convert.io, and the
# families' specs import their converters lazily.
_EXPORTS = {
    "from_transformers": "plug_jax.families.gpt3.convert_hf",
    "gpt3_config_from_hf": "plug_jax.families.gpt3.convert_hf",
    "to_transformers": "plug_jax.families.gpt3.convert_hf",
    "to_transformers_config": "plug_jax.families.gpt3.convert_hf",
    "SUPPORTED_FAMILIES": "plug_jax.families.gpt3.convert_hf",
    "from_modelscope": "plug_jax.families.gpt3.convert_modelscope",
    "gpt3_config_from_modelscope": "plug_jax.families.gpt3.convert_modelscope",
    "merge_tensor_parallel": "plug_jax.families.gpt3.convert_modelscope",
    "WeightsLoadError": "plug_jax.convert.io",
    "PLUG_RULES": "plug_jax.convert.megatron",
    "MegatronMergeError": "plug_jax.convert.megatron",
    "load_megatron_shards": "plug_jax.convert.megatron",
    "merge_megatron_shards": "plug_jax.convert.megatron",
    "merge_plug_checkpoint": "plug_jax.convert.megatron",
    "split_tensor_parallel": "plug_jax.convert.megatron",
    "clip_from_hf": "plug_jax.convert.hf_clip",
    "clip_to_hf": "plug_jax.convert.hf_clip",
    "clip_config_from_hf": "plug_jax.convert.hf_clip",
    "load_clip_checkpoint": "plug_jax.convert.hf_clip",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
