"""Encoder-decoder language model (PALM, PLUG): encode once, cached decoding."""
from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

from plug_jax import decoding, losses
from plug_jax.models.base import (SOWN_COLLECTIONS, add_moe_sums, family_spec,
                                  model_metadata, token_ce)


@dataclasses.dataclass(frozen=True)
class EncoderDecoderLM:
    """Sequence-to-sequence model around an encoder-decoder family network (PLUG).

    Batches use seqio's ``EncDecFeatureConverter`` names: ``encoder_input_tokens``,
    ``decoder_input_tokens``, ``decoder_target_tokens``, ``decoder_loss_weights`` and, when
    packed, ``{encoder,decoder}_segment_ids`` and ``{encoder,decoder}_positions``. Unpacked
    encoder inputs mask their padding (id 0).
    """

    config: Any
    family: str = "plug"
    z_loss: float = 0.0

    kind = "encdec_lm"

    @property
    def module(self):
        return family_spec(self.family).network(self.kind, self.config)

    def init_params(self, rng, batch: dict):
        enc, dec = batch["encoder_input_tokens"], batch["decoder_input_tokens"]
        return self.module.init(rng, jnp.zeros(enc.shape, jnp.int32),
                                jnp.zeros(dec.shape, jnp.int32))["params"]

    def outputs(self, params, batch: dict, rng=None, deterministic: bool = True, **apply_kw):
        rngs = None if deterministic or rng is None else {"dropout": rng}
        enc = batch["encoder_input_tokens"]
        enc_seg = batch.get("encoder_segment_ids")
        if enc_seg is None:
            enc_seg = (jnp.asarray(enc) > 0).astype(jnp.int32)
        return self.module.apply(
            {"params": params}, enc, batch["decoder_input_tokens"],
            encoder_segment_ids=enc_seg,
            decoder_segment_ids=batch.get("decoder_segment_ids"),
            encoder_positions=batch.get("encoder_positions"),
            decoder_positions=batch.get("decoder_positions"),
            deterministic=deterministic, rngs=rngs, **apply_kw)

    def loss_sums(self, params, batch: dict, rng=None, deterministic: bool = False):
        """Cross-entropy sums of the decoder targets (plus the MoE sums of
        :meth:`DecoderOnlyLM.loss_sums` for PLUG-MoE).

        With ``encoder_mlm_weights`` in the batch (converter ``encdec_mlm``, PLUG stage 2)
        the encoder's MLM cross-entropy, summed over the masked tokens, is added to
        ``loss``: the objective is (decoder token CE sum + encoder masked-token CE sum) /
        decoder tokens. ``mlm_loss`` / ``mlm_accuracy`` / ``mlm_tokens`` report the MLM
        part per masked token. (PLUG's code averages the two losses separately and adds
        the means; the token-weighted sum keeps microbatches and eval batches additive.)
        """
        mlm = "encoder_mlm_weights" in batch
        kw = {}
        if mlm:
            b, n = batch["encoder_input_tokens"].shape
            kw["mlm_positions"] = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (b, n))
        moe = bool(getattr(self.config, "num_experts", 0))
        if moe:
            out, sown = self.outputs(params, batch, rng, deterministic,
                                     mutable=list(SOWN_COLLECTIONS), **kw)
        else:
            out = self.outputs(params, batch, rng, deterministic, **kw)
        sums = losses.cross_entropy_sums(out["logits"], batch["decoder_target_tokens"],
                                         batch.get("decoder_loss_weights"), self.z_loss)
        if mlm:
            w = jnp.asarray(batch["encoder_mlm_weights"], jnp.float32)
            nll, correct = token_ce(out["mlm_logits"], batch["encoder_mlm_targets"], w)
            sums["mlm_loss"] = jnp.sum(nll)
            sums["mlm_correct"] = jnp.sum(correct)
            sums["mlm_weight"] = jnp.sum(w)
            sums["loss"] = sums["loss"] + sums["mlm_loss"]
        return add_moe_sums(sums, sown) if moe else sums

    # ---------------------------------------------------------------- decoding
    encoder_decoder = True  # plug-infer feeds prompts to the encoder

    def decode_fns(self, cache: bool = True):
        """``decoding.encdec_adapter``: params ``{'model': p, 'encoder_ids': ids}`` (or
        ``{'model': p, 'encoder_features': {...}}``), decoder prompt ``[[0]]`` per row.
        ``cache=True``: encode once and decode over a KV cache (cross-attention keys and
        values computed once); ``cache=False``: the recompute reference."""
        return decoding.encdec_adapter(self.module, cache=cache)

    def encode(self, params, encoder_features: dict):
        """The encoder side of generation (``module.encode``): ``encoder_features``
        (``encoder_input_tokens`` and optional ``encoder_segment_ids`` /
        ``encoder_positions`` / ``encoder_token_types``) -> the pytree the cached decoder
        starts from."""
        return self.module.apply({"params": params}, encoder_features, method="encode")

    def flops_per_step(self, batch: int, lengths: dict) -> float:
        return family_spec(self.family).flops_per_step(self.kind, self.config, batch, lengths)

    def metadata(self) -> dict:
        return model_metadata(self)
