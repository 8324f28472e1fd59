"""Image-text pre-training and retrieval (mPLUG; the ALBEF recipe: ITC + ITM + MLM + prefix
LM, arXiv 2107.07651 / 2205.12005).

The family network of kind ``'image_text_pretrain'`` is a flax module with ``encode_image``,
``encode_text``, ``fuse``, ``itc_features``, ``itm_logits``, ``temperature``, ``mlm_logits``,
``decode_full`` and ``init_pretrain`` (:class:`plug_jax.families.mplug.network.MPlug`).

Batches are image-caption pairs from the ``image_text`` converter: ``image`` and the caption
as ``decoder_target_tokens`` (ending in EOS). The text the encoders read is ``[CLS] +
caption`` (``cls_id``; the last target position is dropped to keep the length), so the CLS
state carries the ITC feature and the fused CLS the ITM logit, as in the released code.

Objectives (each weighted by a gin field; a weight of 0 removes its forward pass):

* **ITC**: cosine similarities of ``vision_proj(v_cls)`` and ``text_proj(t_cls)`` divided by
  the learnable temperature, over the *global* batch (``objective = 'global'``: the train step
  gathers every microbatch's embeddings, GradCache); targets are uniform over the positives
  of a row, and pairs whose captions are identical are each other's positives (ALBEF's
  multi-positive targets by image id); ``L = (CE(i2t) + CE(t2i)) / 2``.
* **ITM**: a binary head on the fused CLS; per pair one positive, one hard-negative text for
  the image and one hard-negative image for the text, each drawn from ``softmax(sim)`` over
  the batch with the positives masked out (no gradient through the draw); CE over the 3B
  pairs. The draws use per-example uniforms made in ``embed`` from the step's RNG, so a
  GradCache recomputation draws the same negatives.
* **MLM**: ``mlm_probability`` of the caption tokens (not CLS, padding or EOS) are masked
  (80% ``[MASK]`` = ``mask_id``, 10% a random token, 10% kept), the masked text is fused
  with the image and the MLM head predicts the originals.
* **Prefix LM**: each caption is cut at a random point ``s`` (1 <= s < its length): the
  text encoder and fusion read ``[CLS] + caption[:s]`` with the image, and the decoder
  generates ``caption[s:]`` (EOS included) from ``[fused vision ; fused prefix]``.

**Momentum distillation** (ALBEF, gin ``momentum_distillation = True``; off by default: the
momentum copies double the towers' parameter memory). The model then keeps a state
(``TrainState.model_state``, checkpointed): EMA copies of the image and text towers and the
ITC projections (``params_m``, the released ``*_m`` tensors), feature queues
``image_queue`` / ``text_queue`` ``[queue_size, embed_dim]``, ``idx_queue`` (a hash of each
queued caption, for the multi-positive targets; -1 = empty), ``queue_ptr`` and ``steps``
(for ``alpha_warmup_steps``: alpha grows linearly from 0, as the released code does over its
first epoch). Each train
step (``begin_step``) first moves the copies towards the parameters
(``m <- momentum * m + (1 - momentum) * p``), then computes the momentum features of the
global batch; ITC compares each online feature with the momentum features of the batch
*and* the queue, and its targets are ``alpha * softmax(momentum similarities) + (1 -
alpha) * positives`` (the positives: identical captions, in the batch or queued);
``end_step`` enqueues the batch's momentum features (``queue_size`` must be a multiple of
the global batch). ITM's hard negatives are still drawn from the in-batch online
similarities. Without momentum distillation ITC is the plain in-batch form over the global
batch. Evaluation is the in-batch form either way.

Whole-set evaluation (``eval_outputs`` / ``whole_set_metrics``): ITC similarities between
every image and every caption of the eval set give ``itc_i2t_r@K`` / ``itc_t2i_r@K``; then,
as released, the top ``k_test`` candidates of each query are re-scored with the ITM head
(``itm logit[1] - logit[0]`` plus ``rerank_itc_weight`` x the ITC cosine, BLIP's sum by
default) and every other candidate keeps ``-inf``: ``i2t_r@K`` / ``t2i_r@K`` and
``mean_recall``.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from plug_jax.models.base import family_spec, model_metadata

_NEG = -1e9
# the top-level parameter groups that have momentum copies (ALBEF: visual_encoder_m,
# vision_proj_m, text_encoder_m, text_proj_m; mPLUG large also its visn_fc / layer norm)
MOMENTUM_KEYS = ("vision", "vision_to_text", "text_encoder", "vision_proj", "text_proj")


def caption_ids(tokens) -> jax.Array:
    """``[B]`` int32 >= 0: a hash of each row of caption ids (equal captions, equal ids), the
    key by which queued captions are positives."""
    t = jnp.asarray(tokens).astype(jnp.uint32)
    h = jnp.zeros(t.shape[:1], jnp.uint32)
    for i in range(t.shape[1]):
        h = h * jnp.uint32(1000003) + t[:, i] + jnp.uint32(1)
    return (h & jnp.uint32(0x7FFFFFFF)).astype(jnp.int32)


def _ce(logits, labels):
    logits = jnp.asarray(logits, jnp.float32)
    logp = jax.nn.log_softmax(logits)
    nll = -jnp.take_along_axis(logp, labels[..., None], axis=-1)[..., 0]
    right = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    return nll, right


def _pick(x, idx):
    return jnp.take(x, idx, axis=0)


@dataclasses.dataclass(frozen=True)
class ImageTextPretrain:
    """ITC + ITM + MLM + prefix LM around a family's ``'image_text_pretrain'`` network; with
    ``mlm_weight = lm_weight = 0`` it is the retrieval fine-tune (ITC + ITM)."""

    config: Any
    family: str = "mplug"
    itc_weight: float = 1.0
    itm_weight: float = 1.0
    mlm_weight: float = 1.0
    lm_weight: float = 1.0
    mlm_probability: float = 0.15
    cls_id: int | None = None  # default: vocab_size - 2
    mask_id: int | None = None  # default: vocab_size - 1
    k_test: int = 16
    # re-ranked score = ITM (logit[1] - logit[0]) + rerank_itc_weight x ITC cosine: 1.0 is
    # BLIP's / mPLUG-2's "score + topk_sim", 0.0 ALBEF's ITM alone (ties then broken by ITC)
    rerank_itc_weight: float = 1.0
    recall_ks: tuple[int, ...] = (1, 5, 10)
    # ALBEF momentum distillation (module docstring); released: 0.995, 0.4, 65536
    momentum_distillation: bool = False
    momentum: float = 0.995
    alpha: float = 0.4
    queue_size: int = 65536
    # alpha grows linearly from 0 over this many steps (released: the first epoch)
    alpha_warmup_steps: int = 0

    kind = "image_text_pretrain"
    objective = "global"  # ITC / ITM negatives couple the examples (trainer.step)
    token_loss = False
    accuracy_name = "ITC in-batch accuracy"
    eval_groups = ("itc_loss", "itm_accuracy", "mlm_accuracy", "lm_accuracy")
    side_names = ("image", "text")

    def __post_init__(self):
        if self.momentum_distillation:
            if not 0.0 <= self.momentum < 1.0 or not 0.0 <= self.alpha <= 1.0:
                raise ValueError(f"ImageTextPretrain: momentum {self.momentum} must be in "
                                 f"[0, 1) and alpha {self.alpha} in [0, 1] (released: 0.995, "
                                 f"0.4)")
            if self.queue_size < 1:
                raise ValueError(f"ImageTextPretrain.queue_size={self.queue_size}; fix: a "
                                 f"positive multiple of the global batch size")
        v = self.config.vocab_size
        for name in ("cls_id", "mask_id"):
            i = self._id(name)
            if not 1 < i < v:
                raise ValueError(f"ImageTextPretrain.{name}={i} is outside the vocabulary "
                                 f"(2..{v - 1}); fix: leave it unset (vocab_size - 2 / - 1) "
                                 f"and give MPlugConfig.vocab_size two ids more than the "
                                 f"tokenizer's")

    def _id(self, name: str) -> int:
        v = self.config.vocab_size
        given = getattr(self, name)
        return int(given if given is not None else v - (2 if name == "cls_id" else 1))

    @property
    def module(self):
        return family_spec(self.family).network(self.kind, self.config)

    def _apply(self, params, method, *args, **kw):
        return self.module.apply({"params": params}, *args, method=method, **kw)

    # ------------------------------------------------------------------ params
    def init_params(self, rng, batch: dict):
        image = jnp.zeros(batch["image"].shape, jnp.float32)
        ids = jnp.zeros(batch["decoder_target_tokens"].shape, jnp.int32)
        # the MLM head only where MLM is trained: a retrieval model then has the parameters
        # of a converted released retrieval checkpoint, which has no MLM head
        method = "init_pretrain" if self.mlm_weight else "__call__"
        return self.module.init(rng, image, ids, None, ids, method=method)["params"]

    # ------------------------------------------------- momentum distillation state
    def init_state(self, params, rng) -> dict | None:
        """``None``, or (``momentum_distillation``) the momentum copies of the towers and
        projections (equal to ``params``) and the feature queues (random unit vectors,
        as released; ``idx_queue`` -1 marks them as nobody's positives)."""
        if not self.momentum_distillation:
            return None
        e = int(self.config.embed_dim)
        k1, k2 = jax.random.split(rng)

        def unit(k):
            x = jax.random.normal(k, (self.queue_size, e), jnp.float32)
            return x / jnp.linalg.norm(x, axis=-1, keepdims=True)

        return {"params_m": {k: params[k] for k in MOMENTUM_KEYS if k in params},
                "image_queue": unit(k1), "text_queue": unit(k2),
                "idx_queue": jnp.full((self.queue_size,), -1, jnp.int32),
                "queue_ptr": jnp.zeros((), jnp.int32), "steps": jnp.zeros((), jnp.int32)}

    def begin_step(self, state: dict, params, batch: dict) -> tuple[dict, dict]:
        """The momentum update, then the momentum ITC features of ``batch`` (the global
        batch) and its caption ids: ``(state, context)``; the context also carries the
        queues as they were before this step's enqueue."""
        b = batch["decoder_target_tokens"].shape[0]
        if self.queue_size % b:
            raise ValueError(f"ImageTextPretrain.queue_size {self.queue_size} is not a "
                             f"multiple of the global batch size {b}; fix: set queue_size "
                             f"to a multiple of BATCH_SIZE")
        m = float(self.momentum)
        online = {k: params[k] for k in state["params_m"]}
        params_m = jax.tree_util.tree_map(lambda a, p: m * a + (1.0 - m) * p.astype(a.dtype),
                                          state["params_m"], online)
        state = {**state, "params_m": params_m}
        ids, mask = self._text(batch["decoder_target_tokens"])
        merged = {**params, **params_m}
        v = self._apply(merged, "encode_image", jnp.asarray(batch["image"], jnp.float32))
        t = self._apply(merged, "encode_text", ids, mask.astype(jnp.int32))
        img_m, txt_m = self._apply(merged, "itc_features", v, t)
        valid = jnp.any(jnp.asarray(batch["decoder_target_tokens"]) > 0, -1)
        idx = jnp.where(valid, caption_ids(batch["decoder_target_tokens"]), -1)
        return state, {"image_feat_m": img_m.astype(jnp.float32),
                       "text_feat_m": txt_m.astype(jnp.float32), "idx": idx,
                       "image_queue": state["image_queue"], "text_queue": state["text_queue"],
                       "idx_queue": state["idx_queue"], "alpha": self._alpha(state["steps"])}

    def _alpha(self, steps):
        """``alpha``, ramped linearly from 0 over ``alpha_warmup_steps`` (as released)."""
        if not self.alpha_warmup_steps:
            return jnp.float32(self.alpha)
        ramp = jnp.minimum(steps.astype(jnp.float32) / float(self.alpha_warmup_steps), 1.0)
        return jnp.float32(self.alpha) * ramp

    def end_step(self, state: dict, context: dict) -> dict:
        """Enqueue the batch's momentum features and caption ids at ``queue_ptr``."""
        b = context["idx"].shape[0]
        ptr = state["queue_ptr"]
        put = lambda q, x: jax.lax.dynamic_update_slice_in_dim(q, x.astype(q.dtype), ptr, 0)  # noqa: E731
        return {**state, "image_queue": put(state["image_queue"], context["image_feat_m"]),
                "text_queue": put(state["text_queue"], context["text_feat_m"]),
                "idx_queue": put(state["idx_queue"], context["idx"]),
                "queue_ptr": (ptr + b) % self.queue_size, "steps": state["steps"] + 1}

    def _itc_distilled(self, emb: dict, context: dict, temp, valid):
        """ALBEF's ITC: online features against ``[momentum batch ; queue]``, targets
        ``alpha * softmax(momentum sims) + (1 - alpha) * positives``. Returns per-example
        ``(loss [B], hit [B])``."""
        img_all = jnp.concatenate([context["image_feat_m"], context["image_queue"]], 0)
        txt_all = jnp.concatenate([context["text_feat_m"], context["text_queue"]], 0)
        idx_all = jnp.concatenate([context["idx"], context["idx_queue"]], 0)
        b = valid.shape[0]
        # a padding row of the batch is no candidate (queued entries always are)
        cand = jnp.concatenate([valid > 0, jnp.ones(idx_all.shape[0] - b, bool)])
        pos = (context["idx"][:, None] == idx_all[None, :]) & (context["idx"][:, None] >= 0)
        pos = pos & cand[None]
        tgt = pos.astype(jnp.float32) / jnp.maximum(pos.sum(1, keepdims=True), 1)

        def side(q, q_m, keys):
            sim = jnp.where(cand[None], q @ keys.T / temp, _NEG)
            sim_m = jnp.where(cand[None], q_m @ keys.T / temp, _NEG)
            a = context["alpha"]
            target = a * jax.nn.softmax(sim_m, 1) + (1.0 - a) * tgt
            loss = -jnp.sum(jax.nn.log_softmax(sim, 1) * jax.lax.stop_gradient(target), 1)
            hit = jnp.take_along_axis(pos, jnp.argmax(sim, 1)[:, None], 1)[:, 0]
            return loss, hit.astype(jnp.float32)

        l_i2t, h_i2t = side(emb["image_feat"], context["image_feat_m"], txt_all)
        l_t2i, h_t2i = side(emb["text_feat"], context["text_feat_m"], img_all)
        return 0.5 * (l_i2t + l_t2i) * valid, 0.5 * (h_i2t + h_t2i)

    # ------------------------------------------------------------------ inputs
    def _text(self, tokens):
        """``[CLS] + caption`` ids and mask ``[B, L]`` (the last position is dropped)."""
        tgt = jnp.asarray(tokens, jnp.int32)
        b = tgt.shape[0]
        ids = jnp.concatenate([jnp.full((b, 1), self._id("cls_id"), jnp.int32), tgt[:, :-1]], 1)
        return ids, (jnp.arange(ids.shape[1])[None] == 0) | (ids > 0)

    def _mlm_ids(self, ids, sel, rng):
        """``ids`` with the selected positions replaced 80 / 10 / 10."""
        r1, r2 = jax.random.split(rng)
        u = jax.random.uniform(r1, ids.shape)
        rand_ids = jax.random.randint(r2, ids.shape, 2, self._id("cls_id"))
        new = jnp.where(u < 0.8, self._id("mask_id"), jnp.where(u < 0.9, rand_ids, ids))
        return jnp.where(sel > 0, new, ids)

    @staticmethod
    def _prefix(ids, mask, split):
        """Prefix text (``[CLS] + caption[:s]``) mask and the suffix ``caption[s:]`` as
        decoder inputs / targets / weights (``split`` float ``[B]``)."""
        tgt = ids[:, 1:]
        s = jnp.round(split).astype(jnp.int32)
        L = ids.shape[1]
        pos = jnp.arange(L)[None]
        prefix_mask = mask & (pos <= s[:, None])
        idx = s[:, None] + pos
        n = jnp.sum(tgt > 0, -1)
        suffix = jnp.take_along_axis(jnp.pad(tgt, ((0, 0), (0, L + 1))), idx, axis=1)
        suffix = jnp.where(idx < n[:, None], suffix, 0)
        dec_in = jnp.pad(suffix[:, :-1], ((0, 0), (1, 0)))
        return prefix_mask, dec_in, suffix, (suffix > 0).astype(jnp.float32)

    # ------------------------------------------------------------------ loss
    def embed(self, params, batch: dict, rng=None, deterministic: bool = True) -> dict:
        """Per-example tower outputs (leading batch axis), all floating point: ``vision``,
        ``text``, ``image_feat``, ``text_feat``, ``valid``, and the random choices the global
        loss reuses (``mlm_select``, ``mlm_text``, ``prefix_split``, ``prefix_text``,
        ``uniform`` ``[B, 2]`` for the hard-negative draws)."""
        rngs = None if deterministic or rng is None else {"dropout": rng}
        kw = dict(deterministic=deterministic, rngs=rngs)
        ids, mask = self._text(batch["decoder_target_tokens"])
        b, L = ids.shape
        key = jax.random.PRNGKey(0) if rng is None else jax.random.fold_in(rng, 17)
        k_sel, k_rep, k_split, k_u = jax.random.split(key, 4)
        v = self._apply(params, "encode_image", jnp.asarray(batch["image"], jnp.float32),
                        **kw)
        t = self._apply(params, "encode_text", ids, mask.astype(jnp.int32), **kw)
        img_f, txt_f = self._apply(params, "itc_features", v, t)
        out = {"vision": v, "text": t, "image_feat": img_f, "text_feat": txt_f,
               "valid": jnp.any(jnp.asarray(batch["decoder_target_tokens"]) > 0,
                                -1).astype(jnp.float32),
               "uniform": jax.random.uniform(k_u, (b, 2))}
        if self.mlm_weight:
            sel = self._mlm_select(ids, k_sel)
            out["mlm_select"] = sel.astype(jnp.float32)
            out["mlm_text"] = self._apply(params, "encode_text",
                                          self._mlm_ids(ids, sel, k_rep),
                                          mask.astype(jnp.int32), **kw)
        if self.lm_weight:
            n = jnp.sum(jnp.asarray(batch["decoder_target_tokens"]) > 0, -1)
            split = 1.0 + jnp.floor(jax.random.uniform(k_split, (b,))
                                    * jnp.maximum(n - 1, 1).astype(jnp.float32))
            out["prefix_split"] = jnp.minimum(split, jnp.maximum(n - 1, 1).astype(jnp.float32))
            pmask, _, _, _ = self._prefix(ids, mask, out["prefix_split"])
            out["prefix_text"] = self._apply(params, "encode_text", ids,
                                             pmask.astype(jnp.int32), **kw)
        return out

    @staticmethod
    def _draw_negatives(sim, pos, keep, uniform):
        """``(neg_text [B], ok_text [B], neg_image [B], ok_image [B])``: for image ``i`` a
        text drawn with probability ``softmax(sim[i])`` over its non-positive valid texts
        (inverse CDF at ``uniform[i, 0]``), and for text ``j`` an image likewise from
        ``softmax(sim[:, j])`` (``uniform[j, 1]``); ``ok`` is 0 where a row has no
        negative. No gradient flows through the draw."""
        sim = jax.lax.stop_gradient(sim)

        def draw(weights, u):
            tot = jnp.sum(weights, 1)
            cdf = jnp.cumsum(weights, 1) / jnp.maximum(tot, 1e-30)[:, None]
            j = jnp.sum(cdf < u[:, None], 1)
            return jnp.minimum(j, weights.shape[1] - 1), (tot > 0).astype(jnp.float32)

        w_i2t = jnp.where(pos | ~keep, 0.0, jax.nn.softmax(sim, 1))
        w_t2i = jnp.where(pos.T | ~keep.T, 0.0, jax.nn.softmax(sim, 0).T)
        neg_t, ok_t = draw(w_i2t, uniform[:, 0])
        neg_i, ok_i = draw(w_t2i, uniform[:, 1])
        return neg_t, ok_t, neg_i, ok_i

    def _mlm_select(self, ids, key):
        """``[B, L]`` bool: each caption token (not ``[CLS]``, padding or EOS) with
        probability ``mlm_probability``."""
        maskable = (ids > 1) & (jnp.arange(ids.shape[1])[None] > 0)
        return maskable & (jax.random.uniform(key, ids.shape) < self.mlm_probability)

    def _positives(self, tokens, valid):
        t = jnp.asarray(tokens, jnp.int32)
        same = jnp.all(t[:, None, :] == t[None, :, :], axis=-1)
        return same & (valid[:, None] > 0) & (valid[None, :] > 0)

    def global_loss_sums(self, params, emb: dict, batch: dict, context: dict | None = None,
                         ) -> dict:
        """The weighted sum of the objectives' per-example means, over the (global) batch
        the embeddings come from; every term also reported as its own group. ``context``
        (from :meth:`begin_step`, with the queues of the state) switches ITC to the
        momentum-distilled form."""
        valid = emb["valid"]
        nvalid = jnp.maximum(jnp.sum(valid), 1.0)
        ids, mask = self._text(batch["decoder_target_tokens"])
        pos = self._positives(batch["decoder_target_tokens"], valid)
        temp = jnp.asarray(self._apply(params, "temperature"), jnp.float32)
        sim = emb["image_feat"] @ emb["text_feat"].T / temp  # [B, B] image x text
        keep = (valid[:, None] * valid[None, :]) > 0
        sums: dict[str, Any] = {}
        total = 0.0

        # ITC: soft targets over the positives of each row / column
        masked = jnp.where(keep, sim, _NEG)
        tgt = pos.astype(jnp.float32)
        i2t = -jnp.sum(jax.nn.log_softmax(masked, 1) * tgt, 1) / jnp.maximum(tgt.sum(1), 1)
        t2i = -jnp.sum(jax.nn.log_softmax(masked, 0) * tgt, 0) / jnp.maximum(tgt.sum(0), 1)
        itc = 0.5 * (i2t + t2i) * valid
        hit = 0.5 * (jnp.take_along_axis(pos, jnp.argmax(masked, 1)[:, None], 1)[:, 0]
                     + jnp.take_along_axis(pos, jnp.argmax(masked, 0)[None], 0)[0])
        if context is not None:
            itc, hit = self._itc_distilled(emb, context, temp, valid)
        sums.update(itc_loss=jnp.sum(itc), itc_correct=jnp.sum(hit * valid),
                    itc_weight=jnp.sum(valid))
        total += self.itc_weight * jnp.sum(itc) / nvalid

        # pairs to fuse: ITM (positive, negative text, negative image), MLM, prefix LM
        v, t = emb["vision"], emb["text"]
        v_mask = jnp.ones(v.shape[:2], jnp.int32)
        vs, ts, tms = [], [], []
        if self.itm_weight:
            neg_t, ok_t, neg_i, ok_i = self._draw_negatives(masked, pos, keep, emb["uniform"])
            vs += [v, v, _pick(v, neg_i)]
            ts += [t, _pick(t, neg_t), t]
            tms += [mask, _pick(mask, neg_t), mask]
        if self.mlm_weight:
            vs.append(v), ts.append(emb["mlm_text"]), tms.append(mask)
        if self.lm_weight:
            pmask, dec_in, dec_tgt, dec_w = self._prefix(ids, mask, emb["prefix_split"])
            vs.append(v), ts.append(emb["prefix_text"]), tms.append(pmask)
        if vs:
            tm = jnp.concatenate(tms, 0).astype(jnp.int32)
            fv, ft = self._apply(params, "fuse", jnp.concatenate(vs, 0),
                                 jnp.ones((len(vs) * v.shape[0], v.shape[1]), jnp.int32),
                                 jnp.concatenate(ts, 0).astype(v.dtype), tm)
        b, off = v.shape[0], 0
        if self.itm_weight:
            logits = self._apply(params, "itm_logits", ft[:3 * b])
            off = 3
            labels = jnp.concatenate([jnp.ones((b,), jnp.int32), jnp.zeros((2 * b,), jnp.int32)])
            wts = jnp.concatenate([valid, valid * ok_t, valid * ok_i])
            nll, right = _ce(logits, labels)
            sums.update(itm_loss=jnp.sum(nll * wts), itm_correct=jnp.sum(right * wts),
                        itm_weight=jnp.sum(wts))
            total += self.itm_weight * jnp.sum(nll * wts) / jnp.maximum(jnp.sum(wts), 1.0)
        if self.mlm_weight:
            logits = self._apply(params, "mlm_logits", ft[off * b:(off + 1) * b])
            off += 1
            nll, right = _ce(logits, ids)
            wts = emb["mlm_select"] * valid[:, None]
            sums.update(mlm_loss=jnp.sum(nll * wts), mlm_correct=jnp.sum(right * wts),
                        mlm_weight=jnp.sum(wts))
            total += self.mlm_weight * jnp.sum(nll * wts) / jnp.maximum(jnp.sum(wts), 1.0)
        if self.lm_weight:
            sl = slice(off * b, (off + 1) * b)
            memory = jnp.concatenate([fv[sl], ft[sl].astype(fv.dtype)], 1)
            mem_mask = jnp.concatenate([v_mask, pmask.astype(jnp.int32)], 1).astype(jnp.bool_)
            logits = self._apply(params, "decode_full", dec_in, None, memory, mem_mask)
            nll, right = _ce(logits, dec_tgt)
            wts = dec_w * valid[:, None]
            sums.update(lm_loss=jnp.sum(nll * wts), lm_correct=jnp.sum(right * wts),
                        lm_weight=jnp.sum(wts))
            total += self.lm_weight * jnp.sum(nll * wts) / jnp.maximum(jnp.sum(wts), 1.0)
        sums.update(loss=total * nvalid, correct=sums["itc_correct"], weight=nvalid)
        return sums

    def loss_sums(self, params, batch: dict, rng=None, deterministic: bool = False) -> dict:
        """The loss over ``batch`` alone (its own in-batch negatives)."""
        return self.global_loss_sums(params, self.embed(params, batch, rng, deterministic),
                                     batch)

    # ---------------------------------------------------------------- retrieval
    def eval_outputs(self, params, batch: dict) -> dict:
        """Per example: ITC features, the unfused vision and text states (for ITM
        re-ranking), the caption tokens (identical captions are each other's positives)."""
        ids, mask = self._text(batch["decoder_target_tokens"])
        v = self._apply(params, "encode_image", jnp.asarray(batch["image"], jnp.float32))
        t = self._apply(params, "encode_text", ids, mask.astype(jnp.int32))
        img_f, txt_f = self._apply(params, "itc_features", v, t)
        return {"image_feat": img_f, "text_feat": txt_f, "vision": v, "text": t,
                "text_mask": mask.astype(jnp.int32),
                "tokens": jnp.asarray(batch["decoder_target_tokens"], jnp.int32),
                "valid": jnp.any(jnp.asarray(batch["decoder_target_tokens"]) > 0, -1)}

    def itm_scores(self, params, vision, text, text_mask, chunk: int = 256):
        """``[N]`` ITM scores (``logit[1] - logit[0]``) of the pairs ``(vision[n], text[n])``,
        ``chunk`` pairs per call."""
        f = jax.jit(lambda p, v, t, m: self._itm_score(p, v, t, m))
        chunk = max(1, min(chunk, len(vision)))
        out = []
        for s in range(0, len(vision), chunk):
            n = len(vision[s:s + chunk])
            pad = lambda x: np.concatenate(  # noqa: E731
                [x[s:s + n], np.zeros((chunk - n,) + x.shape[1:], x.dtype)])
            out.append(np.asarray(f(params, pad(vision), pad(text), pad(text_mask)))[:n])
        return np.concatenate(out) if out else np.zeros((0,), np.float32)

    def _itm_score(self, params, v, t, m):
        m = m.at[:, 0].set(1)
        _, ft = self._apply(params, "fuse", v, jnp.ones(v.shape[:2], jnp.int32), t, m)
        logits = self._apply(params, "itm_logits", ft)
        return logits[:, 1] - logits[:, 0]

    def rerank(self, params, itc, vision, text, text_mask, k: int) -> np.ndarray:
        """``[N_img, N_txt]``: the top ``k`` texts of each image (and images of each text)
        by ITC re-scored with ITM (plus ``rerank_itc_weight`` x the ITC similarity; 1e-3 x
        when that is 0, a tie-breaker); the rest ``-inf``. Returns ``(i2t, t2i)`` score
        matrices."""
        itc = np.asarray(itc, np.float64)
        n_i, n_t = itc.shape
        out = []
        for scores, q_is_image in ((itc, True), (itc.T, False)):
            kk = min(k, scores.shape[1])
            top = np.argsort(-scores, axis=1, kind="stable")[:, :kk]
            q = np.repeat(np.arange(scores.shape[0]), kk)
            c = top.reshape(-1)
            vi, ti = (q, c) if q_is_image else (c, q)
            s = self.itm_scores(params, vision[vi], text[ti], text_mask[ti])
            full = np.full(scores.shape, -np.inf)
            full[q, c] = s + scores[q, c] * (self.rerank_itc_weight or 1e-3)
            out.append(full)
        return out[0], out[1].T

    def whole_set_metrics(self, params, outputs: dict, tie_break_seed: int | None = None) -> dict:
        """ITC R@K both ways, then R@K after ITM re-ranking of the top ``k_test``.

        Ties rank pessimistically; ``tie_break_seed`` instead breaks them at random (a
        1e-9 jitter on the ITC scores), which gives the chance-level recall a control with
        identical inputs (blank images) should be compared with."""
        from plug_jax.metrics import retrieval
        valid = np.asarray(outputs["valid"]) > 0
        o = {k: np.asarray(v)[valid] for k, v in outputs.items()}
        itc = o["image_feat"].astype(np.float64) @ o["text_feat"].astype(np.float64).T
        if tie_break_seed is not None:
            itc = itc + 1e-9 * np.random.default_rng(tie_break_seed).random(itc.shape)
        pos = retrieval.pair_positives(o["tokens"], o["tokens"])
        res = {f"itc_{k}": v for k, v in retrieval.two_way_recall(
            itc, pos, self.recall_ks, names=("i2t", "t2i")).items()
            if k != "retrieval_candidates"}
        i2t, t2i = self.rerank(params, itc, o["vision"], o["text"], o["text_mask"],
                               self.k_test)
        for name, (s, p) in (("i2t", (i2t, pos)), ("t2i", (t2i.T, pos.T))):
            for k, v in retrieval.recall_at_k(s, p, self.recall_ks).items():
                res[f"{name}_r@{k}"] = v
        res["mean_recall"] = float(np.mean([res[f"{n}_r@{k}"] for n in ("i2t", "t2i")
                                            for k in self.recall_ks]))
        res["retrieval_candidates"] = float(len(itc))
        return res

    # ---------------------------------------------------------------- inference
    def rank(self, params, rows_batch: dict, cols_batch: dict):
        """``[N_images, N_texts]`` ITM scores of every image with every text (plug-infer
        ranks a handful; the eval re-ranks only the ITC top-k)."""
        images = jnp.asarray(rows_batch["image"], jnp.float32)
        ids, mask = self._text(jnp.pad(jnp.asarray(cols_batch["decoder_target_tokens"]),
                                       ((0, 0), (0, 1))))
        v = np.asarray(self._apply(params, "encode_image", images))
        t = np.asarray(self._apply(params, "encode_text", ids, mask.astype(jnp.int32)))
        n_i, n_t = len(v), len(t)
        s = self.itm_scores(params, np.repeat(v, n_t, 0), np.tile(t, (n_i, 1, 1)),
                            np.tile(np.asarray(mask, np.int32), (n_i, 1)))
        return s.reshape(n_i, n_t)

    def flops_per_step(self, batch: int, lengths: dict) -> float:
        return family_spec(self.family).flops_per_step(self.kind, self.config, batch, lengths)

    def metadata(self) -> dict:
        return model_metadata(self)


__all__ = ["ImageTextPretrain"]
