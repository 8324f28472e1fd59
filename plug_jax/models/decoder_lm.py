"""Decoder-only language model (GPT-3): causal LM loss, KV-cache decoding."""
from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

from plug_jax import decoding, losses
from plug_jax.models.base import (SOWN_COLLECTIONS, add_moe_sums, family_spec,
                                  model_metadata)


@dataclasses.dataclass(frozen=True)
class DecoderOnlyLM:
    """Causal language model around a decoder-only family network (GPT-3)."""

    config: Any
    family: str = "gpt3"
    z_loss: float = 0.0

    kind = "decoder_lm"  # the FamilySpec.networks / flops entry this wrapper uses

    @property
    def module(self):
        return family_spec(self.family).network(self.kind, self.config)

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
        """Summed cross-entropy terms (``loss``, ``z_loss``, ``correct``, ``weight``).

        A mixture-of-experts network also gives, weighted by ``weight`` so that sums over
        microbatches and eval batches stay additive: ``aux_loss/<name>`` (the sown auxiliary
        loss summed over MoE layers; the train step adds it to the objective with its gin
        factor) and per-layer ``moe/<name>`` arrays (``[moe_layers]`` losses and drop
        fraction, ``[moe_layers, experts]`` share of token assignments per expert).
        """
        if not getattr(self.config, "num_experts", 0):
            logits = self.logits(params, batch, rng, deterministic)
            return losses.cross_entropy_sums(logits, batch["decoder_target_tokens"],
                                             batch.get("decoder_loss_weights"), self.z_loss)
        rngs = None if deterministic or rng is None else {"dropout": rng}
        logits, sown = self.module.apply(
            {"params": params}, batch["decoder_input_tokens"],
            positions=batch.get("decoder_positions"),
            segment_ids=batch.get("decoder_segment_ids"),
            deterministic=deterministic, rngs=rngs, mutable=list(SOWN_COLLECTIONS))
        sums = losses.cross_entropy_sums(logits, batch["decoder_target_tokens"],
                                         batch.get("decoder_loss_weights"), self.z_loss)
        return add_moe_sums(sums, sown)

    # ------------------------------------------------------------------- flops
    def flops_per_token(self, seq_len: int) -> float:
        return family_spec(self.family).flops_per_step(
            self.kind, self.config, 1, {"targets": int(seq_len)}) / int(seq_len)

    # ---------------------------------------------------------------- decoding
    def decode_fns(self):
        return decoding.flax_lm_adapter(self.module)

    def metadata(self) -> dict:
        return model_metadata(self)


def gpt3(preset: str = "tiny", **overrides) -> DecoderOnlyLM:
    """Convenience for notebooks: ``gpt3('tiny', vocab_size=1024)``."""
    spec = family_spec("gpt3")
    return DecoderOnlyLM(spec.config_cls.from_preset(preset, **overrides), family=spec.name)
