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
    # Whole-set eval extras: median / mean rank both ways; dual-softmax inference (DSL),
    # reported separately under dsl_*; the similarity is computed over at most
    # ``eval_chunk`` columns at a time (X-CLIP's fine-grained similarity holds
    # rows x chunk x words x frames floats).
    report_ranks: bool = False
    dual_softmax: bool = False
    dsl_temperature: float = 1.0
    eval_chunk: int = 256

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
        sim = jax.jit(similarity_fn or self.similarity)
        n = len(jax.tree_util.tree_leaves(cols)[0])
        step = max(int(self.eval_chunk), 1)
        scores = np.concatenate(
            [np.asarray(jax.device_get(sim(params, rows, jax.tree_util.tree_map(
                lambda x: x[j:j + step], cols))), np.float64) for j in range(0, n, step)],
            axis=1)
        keys = np.asarray(outputs["match_key"])[valid]
        a, b = self.side_names
        names = (f"{a}2{b}", f"{b}2{a}")
        positives = retrieval.pair_positives(keys, keys)
        out = retrieval.two_way_recall(scores, positives, self.recall_ks, names=names)
        if self.report_ranks:
            for name, (s, p) in zip(names, ((scores, positives), (scores.T, positives.T))):
                out.update({f"{name}_{k}": v
                            for k, v in retrieval.rank_summary(s, p).items()})
        if self.dual_softmax:  # each direction ranks with the prior over the other side
            t = self.dsl_temperature
            for name, (s, p) in zip(names, ((scores, positives), (scores.T, positives.T))):
                s = retrieval.dual_softmax(s, axis=0, temperature=t)
                out.update({f"dsl_{name}_r@{k}": v
                            for k, v in retrieval.recall_at_k(s, p, self.recall_ks).items()})
        return out

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
