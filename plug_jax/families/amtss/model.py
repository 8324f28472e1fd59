"""``AMTSSStudentModel``: the task model (t5x "model") that trains the AMTSS student.

Batches (one row per query; the ``'encoder'`` feature converter's names plus three)::

    encoder_input_tokens  int [B, L]   row starts with [CLS]; a row whose first token is 0 is
                                       padding
    encoder_token_types   int [B, L]   optional
    label                 int [B] or [B, 1]   gold class
    lang                  int [B] or [B, 1]   index into config.languages
    teacher_logits        float [B, N, C]     the N teachers' logits, precomputed (README)
    teacher_mask          [B, N]       optional: 1 where teacher t's logits are present

The interface the trainer uses (``plug_jax/models/base.py``): ``init_params``, ``loss_sums``
(sums + weights, additive over microbatches: the AMTSS loss is per example, so it is not a
whole-batch objective), ``flops_per_step``, ``metadata``, ``kind``, ``family``, ``config``;
and ``predict`` for the classes. Sums: those of
:func:`plug_jax.families.amtss.losses.distillation_sums` plus a group per language,
``<lang>_{loss,correct,weight}`` (the student's gold-label cross-entropy, right answers and
examples of that language), which ``trainer.step.extra_metrics`` reports as ``<lang>_loss``,
``<lang>_accuracy`` and ``<lang>_tokens``.

The network comes from the family registry (``FamilySpec.network('amtss_student', config)``).
Gin files build it as ``@amtss_model.AMTSSStudentModel()`` after
``import plug_jax.families.amtss.model as amtss_model`` (``gin_configs/models/amtss/``).
``plug-infer`` prompts are ``"<lang>\\t<query>"`` (:meth:`AMTSSStudentModel.infer_texts`).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from plug_jax.families.amtss import losses
from plug_jax.families.amtss.config import AMTSSConfig
from plug_jax.families.amtss.network import param_count
from plug_jax.families.amtss.weights import check_weighting
from plug_jax.models.base import family_spec, model_metadata


@dataclasses.dataclass(frozen=True)
class AMTSSStudentModel:
    """The student with the AMTSS objective. ``weighting='uniform'`` is the ablation;
    ``temperature`` (``T``), ``tau`` and ``alpha`` as in :mod:`~plug_jax.families.amtss.losses`."""

    config: AMTSSConfig
    weighting: str = "max_margin"
    temperature: float = 2.0
    tau: float = 1.0
    alpha: float = 1.0
    label_names: tuple = ()

    family = "amtss"
    kind = "amtss_student"
    accuracy_name = "classification accuracy"
    token_loss = False  # a classifier: no perplexity in the eval line

    def __post_init__(self):
        check_weighting(self.weighting)
        if self.temperature <= 0 or self.tau < 0 or self.alpha < 0:
            raise ValueError(f"AMTSSStudentModel: need temperature > 0, tau >= 0, alpha >= 0; "
                             f"got {self.temperature}, {self.tau}, {self.alpha}")
        object.__setattr__(self, "label_names", tuple(self.label_names))
        if self.label_names and len(self.label_names) != self.config.num_labels:
            raise ValueError(f"AMTSSStudentModel: {len(self.label_names)} label_names for "
                             f"num_labels={self.config.num_labels}; give one name per label")

    @property
    def module(self):
        return family_spec(self.family).network(self.kind, self.config)

    @property
    def eval_groups(self) -> tuple[str, ...]:
        """What the eval line prints after the accuracy: the loss terms and each
        language's accuracy."""
        return ("distill_loss", "ce_loss",
                *(f"{name}_accuracy" for name in self.config.languages))

    def init_params(self, rng, batch: dict):
        ids = jnp.zeros(batch["encoder_input_tokens"].shape, jnp.int32)
        lang = jnp.zeros(ids.shape[:1], jnp.int32)
        return self.module.init(rng, ids, lang)["params"]

    def outputs(self, params, batch: dict, rng=None, deterministic: bool = True):
        """``[B, num_labels]`` student logits."""
        rngs = None if deterministic or rng is None else {"dropout": rng}
        ids = jnp.asarray(batch["encoder_input_tokens"], jnp.int32)
        lang = jnp.asarray(batch["lang"], jnp.int32).reshape(-1)
        return self.module.apply({"params": params}, ids, lang, batch.get("encoder_token_types"),
                                 (ids > 0).astype(jnp.int32), deterministic=deterministic,
                                 rngs=rngs)

    def predict(self, params, batch: dict):
        return jnp.argmax(self.outputs(params, batch), axis=-1)

    def loss_sums(self, params, batch: dict, rng=None, deterministic: bool = False):
        logits = self.outputs(params, batch, rng, deterministic)
        real = (jnp.asarray(batch["encoder_input_tokens"])[:, 0] > 0).astype(jnp.float32)
        label = jnp.asarray(batch["label"], jnp.int32).reshape(-1)
        teachers = jnp.asarray(batch["teacher_logits"], jnp.float32)
        if teachers.ndim != 3 or teachers.shape[-1] != self.config.num_labels:
            raise ValueError(f"AMTSSStudentModel: teacher_logits {teachers.shape} must be "
                             f"[batch, teachers, {self.config.num_labels}]")
        sums = losses.distillation_sums(
            logits, teachers, label, real, weighting=self.weighting,
            temperature=self.temperature, tau=self.tau, alpha=self.alpha,
            teacher_mask=batch.get("teacher_mask"))
        lang = jnp.asarray(batch["lang"], jnp.int32).reshape(-1)
        logp = jax.nn.log_softmax(logits, axis=-1)
        nll = -jnp.take_along_axis(logp, label[:, None], axis=-1)[:, 0]
        right = (jnp.argmax(logits, -1) == label).astype(jnp.float32)
        for i, name in enumerate(self.config.languages):
            here = real * (lang == i)
            sums[f"{name}_loss"] = jnp.sum(nll * here)
            sums[f"{name}_correct"] = jnp.sum(right * here)
            sums[f"{name}_weight"] = jnp.sum(here)
        return sums

    def flops_per_step(self, batch: int, lengths: dict) -> float:
        """6 N per token for the weights (embeddings excluded; the head and projections per
        example counted as one token) + BERT's attention term."""
        enc = self.config.encoder
        from plug_jax.families.structbert.network import param_count as encoder_count
        n = lengths["inputs"]
        body = encoder_count(enc, encoder_only=True)
        emb = (enc.vocab_size + enc.max_position_embeddings + enc.type_vocab_size) \
            * enc.hidden_size
        head = param_count(self.config) - body
        att = 12 * enc.num_layers * enc.hidden_size * n
        return float(batch * (n * (6.0 * (body - emb) + att) + 6.0 * head))

    # ---------------------------------------------------------------- inference
    def prompt_batch(self, vocabulary, prompts, max_length: int = 32) -> dict:
        """The batch of ``"<lang>\\t<query>"`` prompts: ``[CLS] query`` ids as the student's
        tasks give them (``tasks/amtss.py``: the last extra id is ``[CLS]``), and ``lang``."""
        import numpy as np
        ids = np.zeros((len(prompts), max_length), np.int32)
        lang = np.zeros((len(prompts),), np.int32)
        cls = vocabulary.vocab_size - 1
        for r, prompt in enumerate(prompts):
            name, sep, text = prompt.partition("\t")
            if not sep or name not in self.config.languages:
                raise ValueError(f"plug-infer prompt {prompt!r}: write '<lang>\\t<query>' "
                                 f"with <lang> one of {list(self.config.languages)}")
            row = [cls, *vocabulary.encode(text)][:max_length]
            ids[r, :len(row)] = row
            lang[r] = self.config.languages.index(name)
        return {"encoder_input_tokens": ids, "lang": lang}

    def infer_texts(self, params, vocabulary, prompts, max_length: int = 32) -> list[dict]:
        """The predicted class of each ``"<lang>\\t<query>"`` prompt, with its probability."""
        import numpy as np
        batch = self.prompt_batch(vocabulary, prompts, max_length)
        probs = np.asarray(jax.nn.softmax(self.outputs(params, batch), -1))
        names = self.label_names or tuple(str(i) for i in range(self.config.num_labels))
        out = []
        for r, prompt in enumerate(prompts):
            k = int(np.argmax(probs[r]))
            out.append({"prompt": prompt, "label": k, "label_name": names[k],
                        "probability": float(probs[r, k])})
        return out

    def metadata(self) -> dict:
        meta = model_metadata(self)
        meta.update(weighting=self.weighting, temperature=self.temperature, tau=self.tau,
                    alpha=self.alpha, languages=list(self.config.languages),
                    num_labels=self.config.num_labels)
        return meta
