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
import numpy as np

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
            nll, correct = _token_ce(out["mlm_logits"], batch["encoder_mlm_targets"], w)
            sums["mlm_loss"] = jnp.sum(nll)
            sums["mlm_correct"] = jnp.sum(correct)
            sums["mlm_weight"] = jnp.sum(w)
            sums["loss"] = sums["loss"] + sums["mlm_loss"]
        return add_moe_sums(sums, sown) if moe else sums

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


def _token_ce(logits, targets, weights):
    """Per-token cross-entropy and correctness, both multiplied by ``weights`` (float32)."""
    logp = jax.nn.log_softmax(jnp.asarray(logits, jnp.float32), axis=-1)
    targets = jnp.asarray(targets, jnp.int32)
    nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    correct = (jnp.argmax(logp, axis=-1) == targets).astype(jnp.float32)
    w = jnp.asarray(weights, jnp.float32)
    return nll * w, correct * w


ENCODER_OBJECTIVES = ("mlm", "structural", "sentence")


def encode_in_document(vocabulary, text: str) -> list[int]:
    """``text``'s ids as they read inside a document, after a newline. SentencePiece marks
    the start of a text (``encode("The bag")`` begins with ``"▁The"``, the same words after
    a newline with ``"The"``); the StructBERT pre-training pairs are tokenized this way
    (tasks/structbert.py ``newline_first`` / ``drop_through_first_sep``), so prompts must be
    too."""
    ids = list(vocabulary.encode("\n" + text))
    return ids[ids.index(vocabulary.tokenizer.piece_to_id("\n")) + 1:]


@dataclasses.dataclass(frozen=True)
class EncoderModel:
    """A bidirectional encoder with StructBERT's objectives, or a sequence classifier.

    Batches come from the ``'encoder'`` feature converter
    (``plug_jax.data.pipeline.EncoderFeatureConverter``): ``encoder_input_tokens`` (row
    starts with ``[CLS]``), ``encoder_token_types``, ``mlm_targets``, ``mlm_weights``,
    ``structural_weights``, ``label`` ``[batch, 1]``.

    * ``objectives`` a subset of ``("mlm", "structural", "sentence")`` — pre-training
      (``StructBERTForPreTraining``): per example, the mean cross-entropy over the masked
      tokens, the mean over the shuffled-trigram tokens (same tied output layer, they
      predict the original tokens) and the sentence-order cross-entropy, summed;
    * ``objectives=("classify",)`` — fine-tuning (``StructBERTForSequenceClassification``
      with ``num_labels``): the cross-entropy of ``label``.

    ``family='plug'`` takes a ``PlugConfig`` and trains PLUG's encoder alone (stage 1); its
    parameters sit under ``structbert/`` exactly as in ``PlugModel``, so the stage-2 run
    restores them with ``INIT_CHECKPOINT`` and ``RESTORE_MODE='params_only'``.

    The trainer's sums: ``loss`` (the objective summed over examples), ``weight`` (number of
    examples), ``correct`` (right sentence / class predictions: ``accuracy`` is the
    sentence-order or classification accuracy), ``sentence_loss``, and token-level groups
    ``mlm_{loss,correct,weight}`` / ``structural_{loss,correct,weight}`` that the trainer
    reports as ``mlm_loss``, ``mlm_accuracy``, ``mlm_tokens``, ... (the objective itself
    averages each example's masked / shuffled tokens, as per-example sums keep
    microbatches and eval batches additive).
    """

    config: Any
    family: str = "structbert"
    objectives: tuple = ENCODER_OBJECTIVES
    num_labels: int = 3
    label_names: tuple = ()

    def __post_init__(self):
        objs = tuple(self.objectives)
        object.__setattr__(self, "objectives", objs)
        object.__setattr__(self, "label_names", tuple(self.label_names))
        if objs != ("classify",) and (not objs or not set(objs) <= set(ENCODER_OBJECTIVES)):
            raise ValueError(f"EncoderModel: objectives {objs} must be ('classify',) or a "
                             f"non-empty subset of {ENCODER_OBJECTIVES}")
        if self.family not in ("structbert", "plug"):
            raise ValueError(f"EncoderModel: unknown family {self.family!r}; fix: use "
                             f"'structbert' or 'plug'")
        if self.label_names and len(self.label_names) != self.num_labels:
            raise ValueError(f"EncoderModel: {len(self.label_names)} label_names for "
                             f"num_labels={self.num_labels}; give one name per label")

    @property
    def classify(self) -> bool:
        return self.objectives == ("classify",)

    @property
    def accuracy_name(self) -> str:
        return "classification accuracy" if self.classify else "sentence-order accuracy"

    @property
    def encoder_config(self):
        return self.config.encoder_config if self.family == "plug" else self.config

    @property
    def module(self):
        from flax import linen as nn

        from plug_jax.families.structbert import (StructBERTForPreTraining,
                                                  StructBERTForSequenceClassification)
        cfg = self.encoder_config
        if self.classify:
            inner = StructBERTForSequenceClassification(cfg, num_labels=self.num_labels)
        else:
            if "sentence" in self.objectives and cfg.num_sentence_classes != self.num_labels:
                raise ValueError(f"EncoderModel: the sentence head has "
                                 f"{cfg.num_sentence_classes} classes but num_labels="
                                 f"{self.num_labels}; make them equal")
            inner = StructBERTForPreTraining(cfg)
        if self.family != "plug":
            return inner
        return _Named(inner, "structbert")

    def init_params(self, rng, batch: dict):
        ids = jnp.zeros(batch["encoder_input_tokens"].shape, jnp.int32)
        return self.module.init(rng, ids)["params"]

    def outputs(self, params, batch: dict, rng=None, deterministic: bool = True):
        rngs = None if deterministic or rng is None else {"dropout": rng}
        ids = jnp.asarray(batch["encoder_input_tokens"], jnp.int32)
        types = batch.get("encoder_token_types")
        return self.module.apply({"params": params}, ids, types, (ids > 0).astype(jnp.int32),
                                 deterministic=deterministic, rngs=rngs)

    def loss_sums(self, params, batch: dict, rng=None, deterministic: bool = False):
        out = self.outputs(params, batch, rng, deterministic)
        real = (jnp.asarray(batch["encoder_input_tokens"])[:, 0] > 0).astype(jnp.float32)
        label = jnp.asarray(batch["label"], jnp.int32).reshape(-1)
        logits = out if self.classify else out["sentence_logits"]
        sums = {"weight": jnp.sum(real), "z_loss": jnp.zeros((), jnp.float32)}
        total = jnp.zeros_like(real)
        if self.classify or "sentence" in self.objectives:
            logp = jax.nn.log_softmax(logits, axis=-1)
            nll = -jnp.take_along_axis(logp, label[:, None], axis=-1)[:, 0]
            total = total + nll
            sums["correct"] = jnp.sum((jnp.argmax(logits, -1) == label) * real)
            if not self.classify:
                sums["sentence_loss"] = jnp.sum(nll * real)
        else:
            sums["correct"] = jnp.zeros((), jnp.float32)
        for name, key in (("mlm", "mlm_weights"), ("structural", "structural_weights")):
            if name in self.objectives:
                w = jnp.asarray(batch[key], jnp.float32) * real[:, None]
                nll, correct = _token_ce(out["mlm_logits"], batch["mlm_targets"], w)
                total = total + jnp.sum(nll, -1) / jnp.maximum(jnp.sum(w, -1), 1.0)
                # token-level metrics (step.extra_metrics divides by <name>_weight)
                sums[f"{name}_loss"] = jnp.sum(nll)
                sums[f"{name}_correct"] = jnp.sum(correct)
                sums[f"{name}_weight"] = jnp.sum(w)
        sums["loss"] = jnp.sum(total * real)
        return sums

    def flops_per_step(self, batch: int, lengths: dict) -> float:
        cfg = self.encoder_config  # 6 N per token for the weights + attention
        from plug_jax.families.structbert import param_count
        n = lengths["inputs"]
        att = 12 * cfg.num_layers * cfg.hidden_size * n
        return batch * n * (6.0 * param_count(cfg, encoder_only=True) + att)

    # ---------------------------------------------------------------- inference
    def prompt_batch(self, vocabulary, prompts, max_length: int = 128) -> tuple[dict, list]:
        """``(batch, masked positions per row)`` for ``prompts`` (see ``infer_texts``): the
        ids and token types the ``'encoder'`` converter gives the same text in training."""
        size = vocabulary.vocab_size
        cls, mask = size - 2, size - 1
        sep = vocabulary.tokenizer.piece_to_id("\n")
        rows, types, masked = [], [], []
        for prompt in prompts:
            first, _, second = prompt.partition("\t" if "\t" in prompt else "\n")
            ids, tt = [cls], [0]
            for part, (text, t) in enumerate(((first, 0), (second, 1))):
                if part == 1:
                    if self.classify or not second:
                        break
                    ids.append(sep)
                    tt.append(0)
                pieces = text.split("[MASK]")
                for k, piece in enumerate(pieces):
                    # a classifier's text starts a document (as its reviews did in training);
                    # pre-training segments and the text after a [MASK] read inside one
                    in_doc = k > 0 or not self.classify
                    enc = ([] if not piece else encode_in_document(vocabulary, piece) if in_doc
                           else list(vocabulary.encode(piece)))
                    ids += enc + ([mask] if k < len(pieces) - 1 else [])
                    tt += [t] * (len(enc) + (k < len(pieces) - 1))
            rows.append(ids[:max_length])
            types.append(tt[:max_length])
            masked.append([i for i, x in enumerate(ids[:max_length]) if x == mask])
        width = max(len(r) for r in rows)
        batch = {"encoder_input_tokens": np.zeros((len(rows), width), np.int32),
                 "encoder_token_types": np.zeros((len(rows), width), np.int32)}
        for r, (ids, tt) in enumerate(zip(rows, types)):
            batch["encoder_input_tokens"][r, :len(ids)] = ids
            batch["encoder_token_types"][r, :len(tt)] = tt
        return batch, masked

    def infer_texts(self, params, vocabulary, prompts, max_length: int = 128) -> list[dict]:
        """Predictions for ``prompts``: a classifier's label; for the pre-trained encoder,
        the sentence-order relation of a pair and the tokens it puts at each ``[MASK]``
        written in the prompt. A pair is ``"S1\\tS2"`` (segments of one or more sentences,
        separated by newlines inside a segment, as the pre-training segments are) or,
        without a tab, ``"S1\\nS2"`` (split at the first newline)."""
        batch, masked = self.prompt_batch(vocabulary, prompts, max_length)
        out = jax.device_get(self.outputs(params, batch))
        logits = out if self.classify else out["sentence_logits"]
        probs = np.asarray(jax.nn.softmax(jnp.asarray(logits), -1))
        names = self.label_names or tuple(str(i) for i in range(self.num_labels))
        results = []
        for r, prompt in enumerate(prompts):
            k = int(np.argmax(probs[r]))
            res = {"prompt": prompt, "label": k, "label_name": names[k],
                   "probability": float(probs[r, k])}
            if not self.classify and masked[r]:
                fill = np.argmax(np.asarray(out["mlm_logits"])[r, masked[r]], -1)
                res["mask_fill"] = [vocabulary.decode([int(t)]) for t in fill]
            results.append(res)
        return results

    def metadata(self) -> dict:
        meta = DecoderOnlyLM.metadata(self)
        meta["objectives"] = list(self.objectives)
        meta["num_labels"] = self.num_labels
        return meta


def _Named(inner, name: str):
    """``inner`` as the submodule ``name`` of a wrapper (PLUG stage 1 keeps PlugModel's
    ``structbert/`` prefix)."""
    from flax import linen as nn

    class _Wrap(nn.Module):
        @nn.compact
        def __call__(self, *args, **kwargs):
            return inner.clone(name=name, parent=self)(*args, **kwargs)

    return _Wrap()


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
