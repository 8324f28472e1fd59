"""Whole-set retrieval metrics against a brute-force count."""
import itertools

import numpy as np
import pytest

from plug_jax.metrics import retrieval


def _brute_recall(scores, positives, k):
    hits = 0
    for q in range(scores.shape[0]):
        # the top-k candidates, ties broken against the query (negatives first)
        order = sorted(range(scores.shape[1]),
                       key=lambda c: (-scores[q, c], bool(positives[q, c])))
        hits += any(positives[q, c] for c in order[:k])
    return hits / scores.shape[0]


def test_recall_at_k_equals_brute_force_with_duplicates_and_ties():
    rs = np.random.RandomState(0)
    scores = np.round(rs.randn(30, 30), 1)  # rounding makes ties
    keys = rs.randint(0, 20, size=30)  # equal keys = several positives per query
    pos = retrieval.pair_positives(keys, keys)
    got = retrieval.recall_at_k(scores, pos, (1, 5, 10))
    for k in (1, 5, 10):
        assert got[k] == pytest.approx(_brute_recall(scores, pos, k))


def test_two_way_recall_and_perfect_and_constant_scores():
    eye = np.eye(5)
    out = retrieval.two_way_recall(eye * 3, np.eye(5, dtype=bool), (1, 2))
    assert out["i2t_r@1"] == out["t2i_r@1"] == out["mean_recall"] == 1.0
    assert out["retrieval_candidates"] == 5
    flat = retrieval.recall_at_k(np.zeros((5, 5)), np.eye(5, dtype=bool), (1, 4, 5))
    assert flat == {1: 0.0, 4: 0.0, 5: 1.0}  # ties rank pessimistically
    # transposed direction uses the columns as queries
    s = np.array([[2.0, 1.0], [3.0, 0.0]])  # text 0 prefers image 1
    out = retrieval.two_way_recall(s, np.eye(2, dtype=bool), (1,))
    assert out["i2t_r@1"] == 0.5 and out["t2i_r@1"] == 0.0


def test_pair_positives_compare_whole_rows():
    rows = np.array([[1, 2, 0], [1, 2, 0], [1, 3, 0]])
    pos = retrieval.pair_positives(rows, rows)
    assert pos.tolist() == [[True, True, False], [True, True, False], [False, False, True]]
    with pytest.raises(ValueError, match="no positive"):
        retrieval.recall_at_k(np.zeros((2, 2)), np.zeros((2, 2), bool))


def test_every_permutation_of_a_small_case():
    """R@1 over all 3! orderings of a 3x3 score row agrees with the brute force."""
    pos = np.eye(3, dtype=bool)
    for perm in itertools.permutations([0.0, 1.0, 2.0]):
        s = np.array([perm, perm, perm])
        for k in (1, 2, 3):
            assert retrieval.recall_at_k(s, pos, (k,))[k] == pytest.approx(
                _brute_recall(s, pos, k))


def test_rank_summary_and_dual_softmax_on_a_worked_case():
    # query 0's positive ranks 1st, query 1's 3rd, query 2's 2nd (1-based)
    scores = np.array([[0.9, 0.1, 0.2], [0.8, 0.7, 0.1], [0.1, 0.5, 0.9]])
    positives = np.array([[1, 0, 0], [0, 0, 1], [0, 1, 0]], bool)
    assert retrieval.rank_summary(scores, positives) == {"median_rank": 2.0, "mean_rank": 2.0}
    # DSL: each candidate's column softmax over the queries, times the score
    col = np.exp(scores[:, 0] / 0.5) / np.exp(scores[:, 0] / 0.5).sum()
    got = retrieval.dual_softmax(scores, axis=0, temperature=0.5)
    np.testing.assert_allclose(got[:, 0], scores[:, 0] * col)
    # a candidate that scores high for every query (a hub) is demoted: candidate 0 wins
    # query 1 on raw scores, but its prior there is split with query 0
    hub = np.array([[0.9, 0.1], [0.8, 0.75]])
    assert hub[1].argmax() == 0
    assert retrieval.dual_softmax(hub, axis=0, temperature=0.05)[1].argmax() == 1


def test_dual_encoder_whole_set_chunks_ranks_and_dsl():
    """Chunked columns give the unchunked scores; ranks and DSL recalls are reported."""
    import jax

    from plug_jax.families.clip.config import ClipConfig
    from plug_jax.models import DualEncoder
    rs = np.random.RandomState(0)
    emb = rs.randn(7, 5).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    noisy = emb + 0.3 * rs.randn(7, 5).astype(np.float32)
    outputs = {"rows": noisy, "cols": emb, "valid": np.ones(7, np.float32),
               "match_key": np.arange(7)}
    cfg = ClipConfig.from_preset("tiny")
    sim = lambda p, r, c: jax.numpy.asarray(r) @ jax.numpy.asarray(c).T  # noqa: E731
    whole = DualEncoder(cfg, report_ranks=True, dual_softmax=True).whole_set_metrics(
        None, outputs, similarity_fn=sim)
    chunked = DualEncoder(cfg, report_ranks=True, dual_softmax=True,
                          eval_chunk=3).whole_set_metrics(None, outputs, similarity_fn=sim)
    assert whole == chunked
    scores = noisy.astype(np.float64) @ emb.T.astype(np.float64)
    pos = np.eye(7, dtype=bool)
    assert whole["image2text_median_rank"] == retrieval.rank_summary(scores, pos)[
        "median_rank"]
    assert whole["text2image_mean_rank"] == retrieval.rank_summary(scores.T, pos.T)[
        "mean_rank"]
    dsl = retrieval.recall_at_k(retrieval.dual_softmax(scores.T, axis=0), pos, (1, 5, 10))
    assert whole["dsl_text2image_r@1"] == dsl[1]
    plain = DualEncoder(cfg).whole_set_metrics(None, outputs, similarity_fn=sim)
    assert not any("rank" in k or k.startswith("dsl") for k in plain)
