"""Dual encoder (contrastive): two towers, a similarity, in-batch negatives over the global
batch (CLIP; later X-CLIP, DictBERT's description / entry pairs, mPLUG's ITC).

The family network of kind ``'dual_encoder'`` is a flax module with four methods:

* ``embed_rows(batch, deterministic)`` -> pytree of per-example arrays of the *row* side
  (images / videos / descriptions), leading batch axis;
* ``embed_cols(batch, deterministic)`` -> the same for the *column* side (texts / entries);
* ``similarity(rows, cols)`` -> ``[N_rows, N_cols]`` logits, temperature applied (CLIP:
  ``exp(logit_scale) * cos``; X-CLIP: its four similarities averaged);
* ``valid(batch)`` -> ``[B]`` 1 for a real pair, 0 for a padding row;

and ``__call__(batch)`` (used by ``init``) running all of them. Class attribute
``side_names = ('image', 'text')`` names the two sides in metrics and ``plug-infer``.

The task model declares ``objective = 'global'``: the train step (``plug_jax.trainer.step``)
embeds every microbatch, takes :func:`plug_jax.losses.contrastive_sums` over the whole global
batch, and back-propagates per microbatch (GradCache), so the negatives of every example are
all other examples of the global batch on every device. Evaluation reports the in-batch loss
and accuracy per eval batch and, once over the gathered embeddings of the whole eval set,
retrieval R@1/5/10 both ways (:mod:`plug_jax.metrics.retrieval`); perplexity is not
reported (there are no tokens to predict).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from plug_jax import losses
from plug_jax.models.base import family_spec, model_metadata


@dataclasses.dataclass(frozen=True)
class DualEncoder:
    """Contrastive task model around a family's ``'dual_encoder'`` network."""

    config: Any
    family: str = "clip"
    recall_ks: tuple[int, ...] = (1, 5, 10)

    kind = "dual_encoder"
    objective = "global"  # the loss couples the examples of the batch (trainer.step)
    token_loss = False  # no perplexity
    accuracy_name = "in-batch retrieval accuracy"

    @property
    def module(self):
        return family_spec(self.family).network(self.kind, self.config)

    @property
    def side_names(self) -> tuple[str, str]:
        return tuple(getattr(self.module, "side_names", ("row", "col")))

    # ------------------------------------------------------------------ params
    def init_params(self, rng, batch: dict):
        zeros = {k: jnp.zeros(v.shape, v.dtype) for k, v in batch.items()}  # shapes suffice
        return self.module.init(rng, zeros)["params"]

    # -------------------------------------------------------------------- loss
    def embed(self, params, batch: dict, rng=None, deterministic: bool = True) -> dict:
        """Per-example embeddings of both sides and the validity mask (leading batch axis)."""
        rngs = None if deterministic or rng is None else {"dropout": rng}
        v = {"params": params}
        m = self.module
        return {"rows": m.apply(v, batch, deterministic=deterministic, rngs=rngs,
                                method=m.embed_rows),
                "cols": m.apply(v, batch, deterministic=deterministic, rngs=rngs,
                                method=m.embed_cols),
                "valid": m.apply(v, batch, method=m.valid)}

    def similarity(self, params, rows, cols):
        m = self.module
        return m.apply({"params": params}, rows, cols, method=m.similarity)

    def global_loss_sums(self, params, embeddings: dict, batch: dict | None = None) -> dict:
        """Symmetric InfoNCE over every pair of the (global) batch the embeddings come from."""
        logits = self.similarity(params, embeddings["rows"], embeddings["cols"])
        sums = losses.contrastive_sums(logits, embeddings["valid"])
        a, b = self.side_names
        rename = {"row2col": f"{a}2{b}", "col2row": f"{b}2{a}"}
        return {next((k.replace(o, n) for o, n in rename.items() if k.startswith(o)), k): v
                for k, v in sums.items()}

    def loss_sums(self, params, batch: dict, rng=None, deterministic: bool = False) -> dict:
        """The loss over ``batch`` alone (its own in-batch negatives)."""
        return self.global_loss_sums(params, self.embed(params, batch, rng, deterministic),
                                     batch)

    # ---------------------------------------------------------------- eval
    def eval_outputs(self, params, batch: dict) -> dict:
        """What whole-set metrics need from one eval batch (gathered by the loop)."""
        out = self.embed(params, batch, None, deterministic=True)
        m = self.module
        out["match_key"] = m.apply({"params": params}, batch, method=m.match_key)
        return out

    def whole_set_metrics(self, params, outputs: dict, similarity_fn=None) -> dict:
        """R@K both ways over every valid example of the eval set (gathered ``outputs``).

        Items with equal ``match_key`` (e.g. identical captions) are all positives of one
        another."""
        from plug_jax.metrics import retrieval
        valid = np.asarray(outputs["valid"]) > 0
        pick = lambda t: jax.tree_util.tree_map(lambda x: np.asarray(x)[valid], t)  # noqa: E731
        rows, cols = pick(outputs["rows"]), pick(outputs["cols"])
        sim = similarity_fn or self.similarity
        scores = np.asarray(jax.device_get(sim(params, rows, cols)), np.float64)
        keys = np.asarray(outputs["match_key"])[valid]
        a, b = self.side_names
        return retrieval.two_way_recall(scores, retrieval.pair_positives(keys, keys),
                                        self.recall_ks, names=(f"{a}2{b}", f"{b}2{a}"))

    # ------------------------------------------------------------------- flops
    def flops_per_step(self, batch: int, lengths) -> float:
        return family_spec(self.family).flops_per_step(self.kind, self.config, batch, lengths)

    # ---------------------------------------------------------------- inference
    def rank(self, params, rows_batch: dict, cols_batch: dict):
        """``[N_rows, N_cols]`` similarity of separately embedded rows and columns (infer)."""
        m, v = self.module, {"params": params}
        rows = m.apply(v, rows_batch, deterministic=True, method=m.embed_rows)
        cols = m.apply(v, cols_batch, deterministic=True, method=m.embed_cols)
        return self.similarity(params, rows, cols)

    def metadata(self) -> dict:
        return model_metadata(self)
