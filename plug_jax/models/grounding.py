"""Visual grounding with an image-to-text network (mPLUG; MODEL_SPECS.md section 5): a
referring phrase and an image -> the phrase's box, generated as four location tokens.

:class:`GroundingLM` is :class:`~plug_jax.models.image_text_lm.ImageTextLM` (same network,
the phrase read by the encoder with the image: ``encoder_text=True``) with

* **location tokens** above the text vocabulary: location token ``k`` (pixel coordinate ``k``
  in ``0 .. image_size``, so ``image_size + 1`` bins, as the released 337 bins at 336 px) is
  the id ``loc_offset + k``; ``loc_offset`` is the task vocabulary's size (the task module
  ``tasks/mplug_grounding.py`` documents the layout) and ``config.vocab_size`` must hold
  ``loc_offset + image_size + 1`` ids. Targets are ``[x0, y0, x1, y1, EOS]`` as such ids
  (pixels, exclusive ends); the gold box is read back from them, no extra label is needed.
* **masked decoding** (:meth:`GroundingLM.predict_boxes`): exactly four greedy steps, every
  non-location logit set to ``-inf``, so every emitted id is a location id. The image and
  phrase are encoded once; the decoder (four tokens) is recomputed over the whole buffer at
  each step (``decode_full``), which at this length costs less than a KV cache's bookkeeping.
* **box-reweighted loss** (``box_loss=True``, training only): the released recipe reweights
  the sequence cross-entropy by a per-box L1 term (clamped to [0, 5]) and by 1 - GIoU. Here,
  per example::

      pred    = the box of the teacher-forced argmax over the location ids at each of the 4
                coordinate positions (the coordinate the model would emit given the gold
                previous ones)
      l1      = sum_k |pred_k - gold_k| / image_size      (normalised coordinates, sum over
                the 4 coordinates: in [0, 4]; clamped to [0, 5] as released, so the clamp
                never binds at this normalisation)
      weight  = 1 + clamp(l1, 0, 5) + (1 - GIoU(pred, gold))       in [1, 7)
      loss    = sum_b stop_gradient(weight_b) * (token NLL of example b, EOS included)

  The argmax box (rather than the expected box under the location softmax) was chosen
  because it is the box greedy decoding produces, so the weight grows exactly on the
  examples whose *decoded* box is wrong and falls to 1 on those it gets right, and a
  non-differentiable weight leaves the gradient a plain (reweighted) cross-entropy: no
  second objective to balance. The weight is not renormalised over the batch (Adam is
  nearly invariant to the loss scale). With ``deterministic=True`` (evaluation) ``loss``
  is the plain token cross-entropy, so eval loss and perplexity keep their meaning; the box
  terms are reported in both: ``box_l1``, ``box_giou`` and ``box_loss_scale`` (the mean
  weight) per example, ``ce_loss`` per token.
* **metrics over the whole eval set** (:meth:`eval_outputs` / :meth:`whole_set_metrics`):
  the masked-greedy box of every example against its gold box: ``grounding_accuracy`` (the
  share with IoU >= 0.5, RefCOCO's Acc@0.5) and ``mean_iou``; both on the eval line.
* ``plug-infer`` (:meth:`infer_boxes`, called by ``loop._infer_media``): each
  ``image:PATH|phrase`` prompt prints its box and writes ``MODEL_DIR/infer/grounding_<n>.png``
  (the image, 4x nearest-upscaled, with the box outline in red).
"""
from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np

from plug_jax import losses
from plug_jax.metrics import boxes as box_metrics
from plug_jax.models.image_text_lm import ImageTextLM, _media_features

NUM_COORDS = 4
BOX_COLOUR = (255, 0, 0)
DRAW_SCALE = 4


@dataclasses.dataclass(frozen=True)
class GroundingLM(ImageTextLM):
    """Referring phrase + image -> box (module docstring). ``loc_offset`` is required."""

    image_size: int = 64
    loc_offset: int = dataclasses.field(default=-1, kw_only=True)
    box_loss: bool = True

    summary_metrics = ("grounding_accuracy", "mean_iou")  # printed on the eval line

    def __post_init__(self):
        if self.loc_offset < 2:
            raise ValueError(f"GroundingLM needs loc_offset (the id of location token 0: the "
                             f"task vocabulary's size), got {self.loc_offset}; fix: bind "
                             f"GroundingLM.loc_offset (tasks/mplug_grounding.py loc_offset())")
        need = self.loc_offset + self.num_bins
        vocab = getattr(self.config, "vocab_size", None)
        if vocab is not None and vocab < need:
            raise ValueError(f"vocab_size {vocab} cannot hold the location ids {self.loc_offset}"
                             f"..{need - 1}; fix: set the config's vocab_size >= {need}")

    @property
    def num_bins(self) -> int:
        return self.image_size + 1

    # ---------------------------------------------------------------- boxes from ids
    def gold_boxes(self, batch: dict):
        """``(boxes [B, 4] int32 pixels, valid [B] float32)`` from the first four target ids
        (valid: all four are location ids)."""
        k = jnp.asarray(batch["decoder_target_tokens"], jnp.int32)[:, :NUM_COORDS]
        k = k - self.loc_offset
        valid = jnp.all((k >= 0) & (k < self.num_bins), axis=-1)
        return jnp.clip(k, 0, self.image_size), valid.astype(jnp.float32)

    def _location_logits(self, logits):
        return logits[..., self.loc_offset:self.loc_offset + self.num_bins]

    def box_terms(self, logits, batch: dict) -> dict:
        """Per example: the teacher-forced argmax box ``pred`` (location ids only), ``gold``,
        ``valid``, ``l1`` (clamped), ``giou`` and the loss ``weight`` (module docstring)."""
        pred = jnp.argmax(self._location_logits(logits[:, :NUM_COORDS]), axis=-1)
        gold, valid = self.gold_boxes(batch)
        l1 = jnp.sum(jnp.abs(pred - gold), axis=-1).astype(jnp.float32) / self.image_size
        l1 = jnp.clip(l1, 0.0, 5.0)
        g = box_metrics.giou(pred.astype(jnp.float32), gold.astype(jnp.float32), xp=jnp)
        weight = jnp.where(valid > 0, 1.0 + l1 + (1.0 - g), 1.0)
        return {"pred": pred, "gold": gold, "valid": valid, "l1": l1, "giou": g,
                "weight": jax.lax.stop_gradient(weight)}

    def loss_sums(self, params, batch: dict, rng=None, deterministic: bool = False) -> dict:
        """Token cross-entropy sums (training with ``box_loss``: each example's NLL times its
        box weight), ``ce_loss`` (always the plain CE), the ``answer`` group (whole box exact
        under teacher forcing) and the ``box`` group (per valid example: ``box_l1``,
        ``box_giou``, ``box_loss_scale``; ``box_weight`` counts them)."""
        logits = self.logits(params, batch, rng, deterministic)
        targets = jnp.asarray(batch["decoder_target_tokens"], jnp.int32)
        w, nll, exact, has = self._per_example(logits, batch)
        sums = losses.cross_entropy_sums(logits, targets, w, self.z_loss)
        sums["ce_loss"] = jnp.sum(nll)
        t = self.box_terms(logits, batch)
        if self.box_loss and not deterministic:
            sums["loss"] = sums["loss"] + jnp.sum((t["weight"] - 1.0) * jnp.sum(nll, axis=-1))
        v = t["valid"]
        sums["answer_loss"] = jnp.sum(nll)
        sums["answer_correct"] = jnp.sum(exact)
        sums["answer_weight"] = jnp.sum(has)
        sums["box_l1"] = jnp.sum(t["l1"] * v)
        sums["box_giou"] = jnp.sum(t["giou"] * v)
        sums["box_loss_scale"] = jnp.sum(t["weight"] * v)
        sums["box_weight"] = jnp.sum(v)
        return sums

    # ---------------------------------------------------------------- masked decoding
    def predict_boxes(self, params, features: dict) -> dict:
        """Masked greedy decoding: ``{'tokens': [B, 4] ids (all location ids), 'boxes':
        [B, 4] int32 pixels}`` for ``features`` (``image``, ``encoder_input_tokens``)."""
        enc = self.encode(params, features)
        b = jax.tree_util.tree_leaves(enc)[0].shape[0]
        ids = jnp.zeros((b, NUM_COORDS), jnp.int32)  # [start=0, c0, c1, c2]
        toks = []
        for t in range(NUM_COORDS):
            logits = self.module.apply({"params": params}, ids, None, enc["hidden_states"],
                                       enc["mask"], method="decode_full")
            vocab = jnp.arange(logits.shape[-1])
            is_loc = (vocab >= self.loc_offset) & (vocab < self.loc_offset + self.num_bins)
            tok = jnp.argmax(jnp.where(is_loc, logits[:, t], -jnp.inf), axis=-1)
            tok = tok.astype(jnp.int32)
            toks.append(tok)
            if t + 1 < NUM_COORDS:
                ids = ids.at[:, t + 1].set(tok)
        tokens = jnp.stack(toks, axis=-1)
        return {"tokens": tokens, "boxes": tokens - self.loc_offset}

    # ---------------------------------------------------------------- whole-set eval
    def eval_outputs(self, params, batch: dict) -> dict:
        """Per example: ``pred_box`` (masked greedy), ``gold_box`` and ``valid``."""
        pred = self.predict_boxes(params, _media_features(batch))["boxes"]
        gold, valid = self.gold_boxes(batch)
        return {"pred_box": pred, "gold_box": gold, "valid": valid}

    def whole_set_metrics(self, params, outputs: dict) -> dict:
        """``grounding_accuracy`` (IoU >= 0.5), ``mean_iou`` and ``grounding_count`` over
        the valid examples of the whole eval set."""
        valid = np.asarray(outputs["valid"]) > 0
        pred = np.asarray(outputs["pred_box"])[valid]
        gold = np.asarray(outputs["gold_box"])[valid]
        if not len(pred):
            return {"grounding_count": 0.0}
        return {"grounding_accuracy": box_metrics.grounding_accuracy(pred, gold, 0.5),
                "mean_iou": float(np.mean(box_metrics.iou(pred, gold))),
                "grounding_count": float(len(pred))}

    # ---------------------------------------------------------------- plug-infer
    def infer_boxes(self, params, dataset_cfg, items: list[dict], vocabulary, model_dir: str,
                    step=None) -> list[dict]:
        """``plug-infer`` for grounding: every ``image:PATH|phrase`` prompt (plain text
        prompts: phrases asked of every image; no image prompt: the first four examples of
        ``dataset_cfg``'s split with their phrases and gold boxes) -> its box, printed as
        ``[box] IMAGE | phrase ▸ [x0, y0, x1, y1] -> PNG`` and drawn on the image into
        ``MODEL_DIR/infer/grounding_<n>.png``. Returns ``[{'image', 'prompt', 'box',
        'png'}]`` (and ``'gold'`` for dataset examples)."""
        from plug_jax.trainer import loop  # noqa: PLC0415 (loop imports the models)
        if any("frames" in it for it in items):
            raise loop.TrainError("grounding reads images; a prompt names a video; fix: pass "
                                  "image:PATH|phrase prompts")
        width = int(dict(dataset_cfg.task_feature_lengths).get("inputs", 16) or 16)
        eos = getattr(vocabulary, "eos_id", 1)
        queries = []  # (name, pixels, phrase, ids, gold)

        def ids_of(text):
            return list(vocabulary.encode(text))[:width - 1] + [eos]

        images = [(it.get("source", f"prompt {i}"), it["image"], it.get("text", ""))
                  for i, it in enumerate(items) if "image" in it]
        plain = [it["text"] for it in items if "image" not in it and it.get("text")]
        if images:
            for name, pixels, text in images:
                for t in ([text] if text else []) + plain:
                    queries.append((name, pixels, t, ids_of(t), None))
        else:
            it = loop._batch_iterator(dataclasses.replace(dataset_cfg, batch_size=4),
                                      repeat=False, shuffle=False)
            b = {k: np.asarray(v) for k, v in next(iter(it)).items()}
            gold, _ = jax.device_get(self.gold_boxes(b))
            for r in range(b["image"].shape[0]):
                name = f"{dataset_cfg.split}[{r}]"
                own = [int(x) for x in b["encoder_input_tokens"][r] if x > 0]
                for t in plain or [None]:
                    if t is None:
                        text = vocabulary.decode([x for x in own if x != eos])
                        queries.append((name, b["image"][r], text, own, gold[r].tolist()))
                    else:
                        queries.append((name, b["image"][r], t, ids_of(t), None))
        if not queries:
            raise loop.TrainError("nothing to ground: give 'image:PATH|phrase' prompts (or "
                                  "none, to use the validation images)")
        enc = np.zeros((len(queries), width), np.int32)
        for r, q in enumerate(queries):
            enc[r, :len(q[3])] = q[3][:width]
        feats = {"image": np.stack([q[1] for q in queries]).astype(np.float32),
                 "encoder_input_tokens": enc}
        boxes = np.asarray(jax.device_get(jax.jit(self.predict_boxes)(params, feats)["boxes"]))
        out_dir = os.path.join(model_dir, "infer")
        os.makedirs(out_dir, exist_ok=True)
        results = []
        for n, ((name, pixels, text, _, gold), box) in enumerate(zip(queries, boxes)):
            png = os.path.join(out_dir, f"grounding_{n}.png")
            draw_box(pixels, box.tolist(), png)
            res = {"image": name, "prompt": text, "box": [int(c) for c in box], "png": png}
            if gold is not None:
                res["gold"] = [int(c) for c in gold]
            results.append(res)
        if jax.process_index() == 0:
            print(f"boxes from {model_dir}" + (f" @ step {step}" if step is not None else "")
                  + f" ({self.image_size} px coordinates, [x0, y0, x1, y1], ends exclusive)")
            for res in results:
                g = f" (gold {res['gold']})" if "gold" in res else ""
                print(f"[box] {res['image']} | {res['prompt']} ▸ {res['box']}{g} -> "
                      f"{res['png']}", flush=True)
        return results


def denormalize(pixels) -> np.ndarray:
    """CLIP-normalised float ``[H, W, 3]`` -> uint8 RGB."""
    from plug_jax.data.media import CLIP_MEAN, CLIP_STD  # noqa: PLC0415
    x = np.asarray(pixels, np.float32) * np.float32(CLIP_STD) + np.float32(CLIP_MEAN)
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


def draw_box(pixels, box, path: str, *, scale: int = DRAW_SCALE, colour=BOX_COLOUR,
             width: int = 2) -> str:
    """Write ``pixels`` (CLIP-normalised ``[H, W, 3]``) upscaled ``scale`` x (nearest) to
    ``path`` (PNG) with the outline of ``box`` (``[x0, y0, x1, y1]`` model pixels, ends
    exclusive) drawn in ``colour``: the outline covers the box's border pixels, from
    ``(x0 * scale, y0 * scale)`` to ``(x1 * scale - 1, y1 * scale - 1)``, ``width`` pixels
    thick, inside the box. An inverted box is drawn with its corners sorted; an empty one
    as a one-model-pixel box."""
    from PIL import Image, ImageDraw  # noqa: PLC0415
    img = Image.fromarray(denormalize(pixels), "RGB")
    img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    x0, x1 = sorted((int(box[0]), int(box[2])))
    y0, y1 = sorted((int(box[1]), int(box[3])))
    x1, y1 = max(x1, x0 + 1), max(y1, y0 + 1)
    ImageDraw.Draw(img).rectangle([x0 * scale, y0 * scale, x1 * scale - 1, y1 * scale - 1],
                                  outline=tuple(colour), width=width)
    img.save(path, format="PNG")
    return path


__all__ = ["GroundingLM", "denormalize", "draw_box"]
