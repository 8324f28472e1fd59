"""Task wrappers in the t5x sense: a family network plus its loss, metrics and decoding.

A model object is what the trainer and ``plug-infer`` talk to. It is a frozen
dataclass (hashable, so it can be a static argument of jitted functions)::

    model.init_params(rng, batch)                      -> boxed params (use the partitioner)
    model.loss_sums(params, batch, rng, deterministic) -> dict of float32 sums
    model.flops_per_token(seq_len)                     -> training FLOPs per token
    model.decode_fns()                                 -> (step_fn, init_cache_fn) for decoding
    model.family, model.config, model.metadata()

Batches use seqio's decoder feature names: ``decoder_input_tokens``,
``decoder_target_tokens``, ``decoder_loss_weights`` and, for packed batches,
``decoder_segment_ids`` and ``decoder_positions``.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from plug_jax import decoding, losses


@dataclasses.dataclass(frozen=True)
class DecoderOnlyLM:
    """Causal language model around a decoder-only family network (GPT-3)."""

    config: Any
    family: str = "gpt3"
    z_loss: float = 0.0

    @property
    def module(self):
        if self.family == "gpt3":
            from plug_jax.families.gpt3 import GPT3LM
            return GPT3LM(self.config)
        raise ValueError(f"DecoderOnlyLM: unknown family {self.family!r}; fix: use 'gpt3'")

    # ------------------------------------------------------------------ params
    def init_params(self, rng, batch: dict):
        ids = batch["decoder_input_tokens"]
        return self.module.init(rng, jnp.zeros(ids.shape, jnp.int32))["params"]

    # -------------------------------------------------------------------- loss
    def logits(self, params, batch: dict, rng=None, deterministic: bool = True):
        rngs = None if deterministic or rng is None else {"dropout": rng}
        return self.module.apply(
            {"params": params}, batch["decoder_input_tokens"],
            positions=batch.get("decoder_positions"),
            segment_ids=batch.get("decoder_segment_ids"),
            deterministic=deterministic, rngs=rngs)

    def loss_sums(self, params, batch: dict, rng=None, deterministic: bool = False):
        logits = self.logits(params, batch, rng, deterministic)
        return losses.cross_entropy_sums(logits, batch["decoder_target_tokens"],
                                         batch.get("decoder_loss_weights"), self.z_loss)

    # ------------------------------------------------------------------- flops
    def flops_per_token(self, seq_len: int) -> float:
        if self.family == "gpt3":
            from plug_jax.families.gpt3.flops import training_flops_per_token
            return float(training_flops_per_token(self.config, seq_len))
        raise ValueError(f"no FLOP formula for family {self.family!r}")

    # ---------------------------------------------------------------- decoding
    def decode_fns(self):
        return decoding.flax_lm_adapter(self.module)

    def metadata(self) -> dict:
        cfg = self.config
        return {
            "family": self.family,
            "preset": getattr(cfg, "preset", "custom"),
            "scanned": bool(getattr(cfg, "scan_layers", False)),
            "dtype": str(getattr(cfg, "dtype", "")),
            "param_dtype": str(getattr(cfg, "param_dtype", "")),
            "config": dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else repr(cfg),
        }


def gpt3(preset: str = "tiny", **overrides) -> DecoderOnlyLM:
    """Convenience for notebooks: ``gpt3('tiny', vocab_size=1024)``."""
    from plug_jax.families.gpt3 import GPT3Config
    return DecoderOnlyLM(GPT3Config.from_preset(preset, **overrides), family="gpt3")


def count_params(params) -> int:
    from flax import linen as nn
    return int(sum(x.size for x in jax.tree_util.tree_leaves(nn.unbox(params))))
