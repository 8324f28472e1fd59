"""Text generation from an encoded image (mPLUG captioning and VQA; later M6, mPLUG-Owl,
mPLUG-2): encode the image (and the question) once, decode the text over a KV cache.

The family network of kind ``'image_to_text'`` is a flax module with

* ``encode(features) -> encoded``: the decoder memory of ``image`` ``[B, H, W, C]`` (and,
  when the network reads them, ``encoder_input_tokens`` ``[B, L]``: a question or prompt);
  any pytree with the batch on axis 0 (mPLUG: ``{'hidden_states', 'mask'}``);
* ``lm_logits(features, decoder_ids, deterministic)`` -> teacher-forced logits
  ``[B, T, vocab]`` (float32);
* ``decode(token_ids, positions, token_mask, encoded=None, cache_length=None)``: the
  cached decoding interface of :func:`plug_jax.decoding.encdec_adapter`;
* ``__call__(images, input_ids, ...)`` building every parameter (``init``).

Batches come from the ``image_text`` feature converter (:mod:`plug_jax.data.multimodal`):
``image``, ``decoder_input_tokens`` (targets shifted right, 0 first: the decoder's start
token), ``decoder_target_tokens``, ``decoder_loss_weights`` and, when the task has
``inputs``, ``encoder_input_tokens``.

Metrics: token cross-entropy, perplexity and token accuracy, and ``answer_accuracy``: the
share of examples whose every target token (EOS included) is the argmax under teacher
forcing. That is exactly the share that greedy decoding reproduces token for token, so for
VQA it is the exact-match accuracy of greedy answers, computed without decoding.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from plug_jax import decoding, losses
from plug_jax.models.base import (SOWN_COLLECTIONS, add_moe_sums, family_spec,
                                  model_metadata)


def _media_features(batch: dict) -> dict:
    out = {"image": batch["image"]}
    if "encoder_input_tokens" in batch:
        out["encoder_input_tokens"] = batch["encoder_input_tokens"]
    return out


@dataclasses.dataclass(frozen=True)
class ImageTextLM:
    """Image-to-text generation around a family's ``'image_to_text'`` network.

    ``encoder_text``: the question / prompt (``encoder_input_tokens``) goes through the
    encoder with the image (VQA, ``True``) or the decoder reads the image alone
    (captioning, ``False``); passed to the network builder."""

    config: Any
    family: str = "mplug"
    encoder_text: bool = True
    z_loss: float = 0.0
    # Names of the batch's ``question_type`` ids (the VQA experiment binds the Shop World
    # types); evaluation reports ``answer_accuracy/<name>`` per type over the whole eval set.
    question_types: tuple[str, ...] = ()

    kind = "image_to_text"
    encoder_decoder = True  # plug-infer: the prompt goes to the encoder, decoding from 0
    reads_media = True  # plug-infer: image:PATH|text prompts
    media_key = "image"
    summary_metrics = ("answer_accuracy",)  # printed on the eval line

    @property
    def module(self):
        return family_spec(self.family).network(self.kind, self.config,
                                                encoder_text=self.encoder_text)

    def init_params(self, rng, batch: dict):
        image = jnp.zeros(batch["image"].shape, jnp.float32)
        b = image.shape[0]
        enc = batch.get("encoder_input_tokens")
        enc = jnp.zeros((b, 1) if enc is None else enc.shape, jnp.int32)
        dec = jnp.zeros(batch["decoder_input_tokens"].shape, jnp.int32)
        return self.module.init(rng, image, enc, None, dec)["params"]

    def logits(self, params, batch: dict, rng=None, deterministic: bool = True, **apply_kw):
        rngs = None if deterministic or rng is None else {"dropout": rng}
        return self.module.apply({"params": params}, _media_features(batch),
                                 batch["decoder_input_tokens"], deterministic=deterministic,
                                 rngs=rngs, method="lm_logits", **apply_kw)

    @staticmethod
    def _per_example(logits, batch: dict):
        """``(weights [B, T], nll [B, T], exact [B], has_answer [B])``: ``exact`` is 1 where
        every weighted target token is the argmax."""
        targets = jnp.asarray(batch["decoder_target_tokens"], jnp.int32)
        w = batch.get("decoder_loss_weights")
        w = jnp.asarray((targets > 0) if w is None else w, jnp.float32)
        logp = jnp.take_along_axis(jax.nn.log_softmax(jnp.asarray(logits, jnp.float32)),
                                   targets[..., None], axis=-1)[..., 0]
        right = (jnp.argmax(logits, axis=-1) == targets) | (w == 0)
        has = jnp.any(w > 0, axis=-1).astype(jnp.float32)
        return w, -logp * w, jnp.all(right, axis=-1).astype(jnp.float32) * has, has

    def loss_sums(self, params, batch: dict, rng=None, deterministic: bool = False) -> dict:
        """Decoder token cross-entropy sums, plus the ``answer`` group (per example: the
        sequence NLL, and 1 when every target token is the argmax)."""
        moe = bool(getattr(self.config, "num_experts", 0))  # M6-T: the router's aux losses
        if moe:
            logits, sown = self.logits(params, batch, rng, deterministic,
                                       mutable=list(SOWN_COLLECTIONS))
        else:
            logits = self.logits(params, batch, rng, deterministic)
        targets = jnp.asarray(batch["decoder_target_tokens"], jnp.int32)
        w, nll, exact, has = self._per_example(logits, batch)
        sums = losses.cross_entropy_sums(logits, targets, w, self.z_loss)
        sums["answer_loss"] = jnp.sum(nll)
        sums["answer_correct"] = jnp.sum(exact)
        sums["answer_weight"] = jnp.sum(has)
        return add_moe_sums(sums, sown) if moe else sums

    # ---------------------------------------------------------------- whole-set eval
    def eval_outputs(self, params, batch: dict) -> dict:
        """Per example: ``exact`` (greedy exact match), ``valid`` (has an answer) and
        ``question_type`` (-1 when the batch has none)."""
        _, _, exact, has = self._per_example(self.logits(params, batch), batch)
        qt = batch.get("question_type")
        qt = (jnp.full(exact.shape, -1, jnp.int32) if qt is None
              else jnp.asarray(qt, jnp.int32).reshape(exact.shape))
        return {"exact": exact, "valid": has, "question_type": qt}

    def whole_set_metrics(self, params, outputs: dict) -> dict:
        """``answer_accuracy/<type>`` and ``answer_count/<type>`` per question type over
        the whole eval set (types named by ``question_types``, else ``type_<id>``)."""
        import numpy as np
        valid = np.asarray(outputs["valid"]) > 0
        exact = np.asarray(outputs["exact"])[valid]
        types = np.asarray(outputs["question_type"])[valid]
        out = {}
        for t in sorted(set(types.tolist()) - {-1}):
            name = (self.question_types[t] if 0 <= t < len(self.question_types)
                    else f"type_{t}")
            pick = types == t
            out[f"answer_accuracy/{name}"] = float(exact[pick].mean())
            out[f"answer_count/{name}"] = float(pick.sum())
        return out

    def text_scores(self, params, images, target_ids):
        """``[N_images, N_texts]``: the mean log-probability per token (EOS included) of
        each text given each image (``target_ids`` ``[N_texts, T]``, 0-padded, ending in
        EOS), teacher-forced. Ranks captions (``plug-infer`` with a captioning model and
        texts) or an answer list; length-normalised so short texts are not favoured."""
        images = jnp.asarray(images, jnp.float32)
        tgt = jnp.asarray(target_ids, jnp.int32)
        n_i, n_t = images.shape[0], tgt.shape[0]
        batch = {"image": jnp.repeat(images, n_t, axis=0),
                 "decoder_target_tokens": jnp.tile(tgt, (n_i, 1)),
                 "decoder_input_tokens": jnp.tile(jnp.pad(tgt[:, :-1], ((0, 0), (1, 0))),
                                                  (n_i, 1))}
        if self.encoder_text:
            batch["encoder_input_tokens"] = jnp.zeros((n_i * n_t, 1), jnp.int32)
        logits = self.logits(params, batch)
        w, nll, _, _ = self._per_example(logits, batch)
        score = -jnp.sum(nll, -1) / jnp.maximum(jnp.sum(w, -1), 1.0)
        return score.reshape(n_i, n_t)

    def answer_scores(self, params, features: dict, answer_ids):
        """``[B, N]``: the summed log-probability of each candidate answer (``answer_ids``
        ``[N, T]``, 0-padded, ending in EOS) given each example's image and question
        (``features``: ``image``, ``encoder_input_tokens``), teacher-forced. VQA by ranking
        a closed answer list, as the released ``rank_answer`` scores its candidates (a sum,
        not a mean: answers are short and a mean would favour long ones). The image and
        question are encoded once per example; the network needs ``logits_from_encoded``."""
        enc = self.encode(params, features)
        ans = jnp.asarray(answer_ids, jnp.int32)
        b, n = jax.tree_util.tree_leaves(enc)[0].shape[0], ans.shape[0]
        rep = jax.tree_util.tree_map(lambda x: jnp.repeat(x, n, axis=0), enc)
        dec_in = jnp.tile(jnp.pad(ans[:, :-1], ((0, 0), (1, 0))), (b, 1))
        logits = self.module.apply({"params": params}, rep, dec_in,
                                   method="logits_from_encoded")
        tgt = jnp.tile(ans, (b, 1))
        logp = jnp.take_along_axis(jax.nn.log_softmax(jnp.asarray(logits, jnp.float32)),
                                   tgt[..., None], axis=-1)[..., 0]
        return jnp.sum(logp * (tgt > 0), -1).reshape(b, n)

    # ---------------------------------------------------------------- decoding
    def decode_fns(self, cache: bool = True):
        """``decoding.encdec_adapter``: params ``{'model': p, 'encoder_features': {'image':
        ..., 'encoder_input_tokens': ...}}``, decoder prompt ``[[0]]`` per row.
        ``cache=True``: the image (and question) encoded once, the decoder over a KV cache;
        ``cache=False``: the recompute reference (``lm_logits`` over the whole buffer)."""
        return decoding.encdec_adapter(self.module, cache=cache)

    def encode(self, params, encoder_features: dict):
        return self.module.apply({"params": params}, encoder_features, method="encode")

    def flops_per_step(self, batch: int, lengths: dict) -> float:
        return family_spec(self.family).flops_per_step(self.kind, self.config, batch, lengths)

    def metadata(self) -> dict:
        return model_metadata(self)


__all__ = ["ImageTextLM"]
