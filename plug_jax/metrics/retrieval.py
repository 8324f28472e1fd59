"""Retrieval metrics over a whole eval set (numpy; computed once over gathered outputs).

``recall_at_k(scores, positives, ks)``: for each query row of ``scores`` ``[Q, C]`` the rank
of its best-scored positive among all ``C`` candidates; R@K is the share of queries whose
best positive is in the top K. ``positives`` is a boolean ``[Q, C]`` (several positives per
query are allowed: two images with one caption). Ties count against the query (a positive
tied with a negative ranks after it), so a constant score matrix gives R@1 = 0 unless every
candidate is a positive.

``rank_summary(scores, positives)``: the median and mean 1-based rank of each query's best
positive (MdR / MnR, lower is better). ``dual_softmax(scores, axis, temperature)``: the
dual-softmax re-weighting of inference (DSL, Cheng et al. 2021), a score times the softmax
of the scores over the *other* side.

``pair_positives(keys_q, keys_c)`` builds ``positives`` from per-item keys (equal keys =
a positive pair), e.g. the token rows of the captions: identical captions match each other's
images.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def pair_positives(keys_q, keys_c) -> np.ndarray:
    """``[Q, C]`` bool: ``keys_q[i] == keys_c[j]`` (keys: ``[N]`` scalars or ``[N, ...]``
    rows compared whole)."""
    kq, kc = np.asarray(keys_q), np.asarray(keys_c)
    if kq.ndim == 1:
        return kq[:, None] == kc[None, :]
    allk = np.concatenate([kq.reshape(len(kq), -1), kc.reshape(len(kc), -1)])
    _, ids = np.unique(allk, axis=0, return_inverse=True)
    ids = ids.reshape(-1)
    return ids[:len(kq), None] == ids[None, len(kq):]


def ranks_of_best_positive(scores, positives) -> np.ndarray:
    """``[Q]`` 0-based rank of each query's best positive (ties rank pessimistically)."""
    s = np.asarray(scores, np.float64)
    pos = np.asarray(positives, bool)
    if s.shape != pos.shape or s.ndim != 2:
        raise ValueError(f"scores {s.shape} and positives {pos.shape} must be one [Q, C] shape")
    if not pos.any(axis=1).all():
        raise ValueError("a query has no positive candidate; every query needs one")
    best = np.where(pos, s, -np.inf).max(axis=1)
    # candidates that are not positives and score at least as high as the best positive
    return np.sum((s >= best[:, None]) & ~pos, axis=1)


def recall_at_k(scores, positives, ks: Sequence[int] = (1, 5, 10)) -> dict[int, float]:
    ranks = ranks_of_best_positive(scores, positives)
    return {int(k): float(np.mean(ranks < k)) for k in ks}


def two_way_recall(scores, positives, ks: Sequence[int] = (1, 5, 10),
                   names: tuple[str, str] = ("i2t", "t2i")) -> dict[str, float]:
    """R@K both ways over a ``[N_row, N_col]`` score matrix: ``<names[0]>_r@k`` ranks the
    columns for each row, ``<names[1]>_r@k`` the rows for each column; ``mean_recall`` is
    the mean of all of them (the usual retrieval summary, "RSUM / 6")."""
    s, p = np.asarray(scores), np.asarray(positives, bool)
    out = {}
    for name, (ss, pp) in zip(names, ((s, p), (s.T, p.T))):
        for k, v in recall_at_k(ss, pp, ks).items():
            out[f"{name}_r@{k}"] = v
    out["mean_recall"] = float(np.mean(list(out.values())))
    out["retrieval_candidates"] = float(s.shape[1])
    return out


def rank_summary(scores, positives) -> dict[str, float]:
    """``{'median_rank', 'mean_rank'}``: 1-based ranks of each query's best positive."""
    ranks = ranks_of_best_positive(scores, positives) + 1
    return {"median_rank": float(np.median(ranks)), "mean_rank": float(np.mean(ranks))}


def dual_softmax(scores, axis: int, temperature: float = 1.0) -> np.ndarray:
    """``scores * softmax(scores / temperature, axis)``: for ranking the candidates of each
    query row of ``scores`` ``[Q, C]``, pass ``axis=0`` (each candidate's distribution over
    the queries, the prior DSL multiplies in)."""
    s = np.asarray(scores, np.float64)
    z = s / float(temperature)
    z = np.exp(z - z.max(axis=axis, keepdims=True))
    return s * (z / z.sum(axis=axis, keepdims=True))
