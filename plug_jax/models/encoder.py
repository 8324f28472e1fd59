"""Bidirectional encoder: StructBERT-style objectives, or a sequence classifier."""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from plug_jax.models.base import encoder_families, family_spec, model_metadata, token_ce


ENCODER_OBJECTIVES = ("mlm", "structural", "sentence")


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
        spec = family_spec(self.family)
        if self.kind not in spec.networks:
            raise ValueError(f"EncoderModel: family {self.family!r} has no encoder network; "
                             f"fix: use one of {encoder_families()}")
        if self.label_names and len(self.label_names) != self.num_labels:
            raise ValueError(f"EncoderModel: {len(self.label_names)} label_names for "
                             f"num_labels={self.num_labels}; give one name per label")

    @property
    def classify(self) -> bool:
        return self.objectives == ("classify",)

    @property
    def accuracy_name(self) -> str:
        return "classification accuracy" if self.classify else "sentence-order accuracy"

    kind = "encoder"

    @property
    def encoder_config(self):
        """The encoder's own config (for a composite family, e.g. PLUG stage 1, the config of
        its encoder: ``FamilySpec.encoder_config``)."""
        spec = family_spec(self.family)
        return spec.encoder_config(self.config) if spec.encoder_config else self.config

    @property
    def module(self):
        cfg = self.encoder_config
        if not self.classify and "sentence" in self.objectives and \
                cfg.num_sentence_classes != self.num_labels:
            raise ValueError(f"EncoderModel: the sentence head has "
                             f"{cfg.num_sentence_classes} classes but num_labels="
                             f"{self.num_labels}; make them equal")
        return family_spec(self.family).network(self.kind, self.config, classify=self.classify,
                                                num_labels=self.num_labels)

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
                nll, correct = token_ce(out["mlm_logits"], batch["mlm_targets"], w)
                total = total + jnp.sum(nll, -1) / jnp.maximum(jnp.sum(w, -1), 1.0)
                # token-level metrics (step.extra_metrics divides by <name>_weight)
                sums[f"{name}_loss"] = jnp.sum(nll)
                sums[f"{name}_correct"] = jnp.sum(correct)
                sums[f"{name}_weight"] = jnp.sum(w)
        sums["loss"] = jnp.sum(total * real)
        return sums

    def flops_per_step(self, batch: int, lengths: dict) -> float:
        return family_spec(self.family).flops_per_step(self.kind, self.config, batch, lengths)

    # ---------------------------------------------------------------- inference
    def prompt_batch(self, vocabulary, prompts, max_length: int = 128) -> tuple[dict, list]:
        """``(batch, masked positions per row)`` for ``prompts`` (see ``infer_texts``), built
        by the family's own prompt builder (``FamilySpec.extras['prompt_batch']``, StructBERT's
        for PLUG stage 1 too): the ids and token types its converter gives the same text in
        training."""
        build = family_spec(self.family).extras.get("prompt_batch")
        if build is None:
            raise ValueError(f"family {self.family!r} has no prompt builder for plug-infer; "
                             f"add FamilySpec.extras['prompt_batch']")
        return build(self, vocabulary, prompts, max_length)

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
        meta = model_metadata(self)
        meta["objectives"] = list(self.objectives)
        meta["num_labels"] = self.num_labels
        return meta
