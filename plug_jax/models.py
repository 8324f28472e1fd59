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
import re
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

    @property
    def module(self):
        if self.family == "plug":
            from plug_jax.families.plug import PlugModel
            return PlugModel(self.config)
        if self.family == "palm":
            from plug_jax.families.palm import PalmModel
            return PalmModel(self.config)
        raise ValueError(f"EncoderDecoderLM: unknown family {self.family!r}; fix: use 'plug' "
                         f"or 'palm'")

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
        :meth:`DecoderOnlyLM.loss_sums` for PLUG-MoE)."""
        if not getattr(self.config, "num_experts", 0):
            logits = self.outputs(params, batch, rng, deterministic)["logits"]
            return losses.cross_entropy_sums(logits, batch["decoder_target_tokens"],
                                             batch.get("decoder_loss_weights"), self.z_loss)
        out, sown = self.outputs(params, batch, rng, deterministic,
                                 mutable=list(SOWN_COLLECTIONS))
        sums = losses.cross_entropy_sums(out["logits"], batch["decoder_target_tokens"],
                                         batch.get("decoder_loss_weights"), self.z_loss)
        return add_moe_sums(sums, sown)

    # ---------------------------------------------------------------- decoding
    encoder_decoder = True  # plug-infer feeds prompts to the encoder

    def decode_fns(self):
        """``decoding.encdec_adapter``: params ``{'model': p, 'encoder_ids': ids}``, decoder
        prompt ``[[0]]`` per row."""
        return decoding.encdec_adapter(self.module)

    def flops_per_step(self, batch: int, lengths: dict) -> float:
        if self.family == "palm":
            from plug_jax.families.palm.flops import training_flops_per_example
        else:
            from plug_jax.families.plug.flops import training_flops_per_example
        return batch * training_flops_per_example(self.config, lengths["inputs"],
                                                  lengths["targets"])

    def metadata(self) -> dict:
        return DecoderOnlyLM.metadata(self)  # same fields


# Flax collections that MoE layers sow into (``MoeLayer``): auxiliary losses and routing
# statistics, one entry per MoE layer.
SOWN_COLLECTIONS = ("aux_loss", "moe_metrics")


def _natural_key(path: tuple) -> tuple:
    out = []
    for part in path:
        name = str(getattr(part, "key", getattr(part, "idx", part)))
        out.append(tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)))
    return tuple(out)


def collect_sown(tree) -> dict[str, jax.Array]:
    """``{leaf name: [num_layers, ...] array}`` from a sown collection, in layer order.

    Values sown inside a scanned layer stack already carry a leading layers axis; values of
    an unrolled stack (``layers_0``, ``layers_1``, ...) are stacked here in numeric order.
    """
    by_name: dict[str, list] = {}
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    for path, value in sorted(leaves, key=lambda pv: _natural_key(pv[0])):
        names = [str(p.key) for p in path if hasattr(p, "key")]
        value = jnp.asarray(value, jnp.float32)
        if "layers" not in names:  # unscanned: one layer's value
            value = value[None]
        by_name.setdefault(names[-1], []).append(value)
    return {n: jnp.concatenate(vs, axis=0) for n, vs in by_name.items()}


def add_moe_sums(sums: dict, sown: dict) -> dict:
    """Adds the sown MoE values to cross-entropy ``sums``, weighted by ``sums['weight']``
    so sums over microbatches and eval batches stay additive: ``aux_loss/<name>`` (summed
    over the MoE layers; the train step adds it with its factor) and per-layer ``moe/<name>``
    (``[moe_layers]``; tokens per expert become each expert's share, ``[moe_layers, E]``)."""
    w = sums["weight"]
    for name, per_layer in collect_sown(sown.get("aux_loss", {})).items():
        sums[f"aux_loss/{name}"] = jnp.sum(per_layer) * w
        sums[f"moe/{name}"] = per_layer * w
    for name, per_layer in collect_sown(sown.get("moe_metrics", {})).items():
        if per_layer.ndim == 2:  # counts per expert -> share of the layer's assignments
            per_layer = per_layer / jnp.maximum(per_layer.sum(-1, keepdims=True), 1.0)
        sums[f"moe/{name}"] = per_layer * w
    return sums


def gpt3(preset: str = "tiny", **overrides) -> DecoderOnlyLM:
    """Convenience for notebooks: ``gpt3('tiny', vocab_size=1024)``."""
    from plug_jax.families.gpt3 import GPT3Config
    return DecoderOnlyLM(GPT3Config.from_preset(preset, **overrides), family="gpt3")


def count_params(params) -> int:
    from flax import linen as nn
    return int(sum(x.size for x in jax.tree_util.tree_leaves(nn.unbox(params))))
