"""Ranking metrics: hand-computed cases, a naive per-user reference, and invariants."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from llmrecall.errors import DataError
from llmrecall.evaluate import ranking_metrics


def _targets(rows: list[list[int]], n_items: int) -> sp.csr_matrix:
    r = [i for i, row in enumerate(rows) for _ in row]
    c = [j for row in rows for j in row]
    return sp.csr_matrix((np.ones(len(c), np.float32), (r, c)), shape=(len(rows), n_items))


def _naive(ranked: np.ndarray, target_rows: list[set[int]], k: int, n_items: int) -> dict:
    """Per-user loop straight from the definitions in docs/evaluation.md."""
    recall, hr, ndcg, mrr = [], [], [], []
    for row, target in zip(ranked.tolist(), target_rows):
        top = [i for i in row[:k]]
        hit_ranks = [r + 1 for r, i in enumerate(top) if i in target]
        recall.append(len(hit_ranks) / len(target))
        hr.append(1.0 if hit_ranks else 0.0)
        dcg = sum(1 / math.log2(r + 1) for r in hit_ranks)
        idcg = sum(1 / math.log2(r + 1) for r in range(1, min(len(target), k) + 1))
        ndcg.append(dcg / idcg)
        mrr.append(1 / hit_ranks[0] if hit_ranks else 0.0)
    seen = {i for row in ranked[:, :k].tolist() for i in row if i >= 0}
    return {f"recall@{k}": np.mean(recall), f"hr@{k}": np.mean(hr), f"ndcg@{k}": np.mean(ndcg),
            f"mrr@{k}": np.mean(mrr), f"coverage@{k}": len(seen) / n_items}


def test_hand_computed_case():
    ranked = np.array([[3, 1, 4, 0], [2, 0, -1, -1]], np.int32)
    targets = _targets([[1, 0, 7], [5]], 8)
    m = ranking_metrics(ranked, targets, ks=(1, 2, 4))
    d = lambda rank: 1 / math.log2(rank + 1)  # noqa: E731
    # user 0 hits at ranks 2 and 4 of 3 targets; user 1 never hits
    assert m["recall@1"] == 0.0
    assert m["recall@2"] == pytest.approx((1 / 3) / 2)
    assert m["recall@4"] == pytest.approx((2 / 3) / 2)
    assert m["hr@1"] == 0.0 and m["hr@2"] == 0.5 and m["hr@4"] == 0.5
    assert m["ndcg@2"] == pytest.approx(d(2) / (d(1) + d(2)) / 2)
    assert m["ndcg@4"] == pytest.approx((d(2) + d(4)) / (d(1) + d(2) + d(3)) / 2)
    assert m["mrr@1"] == 0.0
    assert m["mrr@2"] == pytest.approx(0.25) and m["mrr@4"] == pytest.approx(0.25)
    assert m["coverage@1"] == pytest.approx(2 / 8)
    assert m["coverage@2"] == pytest.approx(4 / 8)
    assert m["coverage@4"] == pytest.approx(5 / 8)
    assert m["users"] == 2


def test_single_target_hr_equals_recall():
    ranked = np.array([[0, 1, 2], [2, 1, 0], [1, 2, 0]], np.int32)
    m = ranking_metrics(ranked, _targets([[1], [0], [1]], 3), ks=(1, 2, 3))
    for k in (1, 2, 3):
        assert m[f"hr@{k}"] == m[f"recall@{k}"]
    assert m["mrr@3"] == pytest.approx((1 / 2 + 1 / 3 + 1) / 3)


def test_duplicate_targets_count_once():
    ranked = np.array([[4, 2]], np.int32)
    # (data, indices, indptr) keeps the duplicate entry and an explicit zero as given
    dup = sp.csr_matrix((np.array([1, 1, 1, 0], np.float32), np.array([4, 4, 1, 2]),
                         np.array([0, 4])), shape=(1, 5))
    m = ranking_metrics(ranked, dup, ks=(1,))
    assert m["recall@1"] == pytest.approx(0.5)  # targets {4, 1}; the stored zero is no target
    assert dup.nnz == 4, "the caller's matrix must not be modified"


@pytest.mark.parametrize("ranked, targets, message", [
    (np.array([[0, 1]]), _targets([[0]], 3), "cut-off 10 exceeds"),
    (np.array([[0, 5] + [1] * 8]), _targets([[0]], 3), "ranked ids must lie"),
    (np.array([[0, 1, 2, 0, -1, -1, -1, -1, -1, -1]]), _targets([[0]], 3), "lists an item twice"),
    (np.array([[0] + [-1] * 9]), sp.csr_matrix((1, 3), dtype=np.float32), "no targets"),
    (np.array([[0] + [-1] * 9, [1] + [-1] * 9]), _targets([[0]], 3), "rows for 2"),
    (np.zeros((1, 10)), _targets([[0]], 3), "integer item ids"),
])
def test_bad_input_is_named(ranked, targets, message):
    with pytest.raises(DataError, match=message):
        ranking_metrics(ranked, targets, ks=(10,))


@st.composite
def rankings(draw):
    """Random ranked lists (distinct items, some -1 padding) and non-empty target sets."""
    n_items = draw(st.integers(2, 30))
    n_users = draw(st.integers(1, 8))
    width = draw(st.integers(1, n_items))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    ranked = np.stack([rng.permutation(n_items)[:width] for _ in range(n_users)]).astype(np.int32)
    pad = rng.integers(0, width + 1, n_users)
    ranked[np.arange(width)[None, :] >= (width - pad)[:, None]] = -1
    target_rows = [set(rng.choice(n_items, rng.integers(1, n_items + 1), replace=False).tolist())
                   for _ in range(n_users)]
    return ranked, target_rows, n_items


@settings(max_examples=150, deadline=None)
@given(rankings())
def test_matches_naive_reference(case):
    ranked, target_rows, n_items = case
    ks = sorted({1, ranked.shape[1], max(1, ranked.shape[1] // 2)})
    m = ranking_metrics(ranked, _targets([sorted(t) for t in target_rows], n_items), ks=ks)
    for k in ks:
        for key, value in _naive(ranked, target_rows, k, n_items).items():
            assert m[key] == pytest.approx(value, abs=1e-12), key


@settings(max_examples=150, deadline=None)
@given(rankings())
def test_monotone_in_k_and_bounded(case):
    ranked, target_rows, n_items = case
    ks = list(range(1, ranked.shape[1] + 1))
    m = ranking_metrics(ranked, _targets([sorted(t) for t in target_rows], n_items), ks=ks)
    for name in ("recall", "hr", "mrr", "coverage"):
        values = [m[f"{name}@{k}"] for k in ks]
        assert all(a <= b + 1e-12 for a, b in zip(values, values[1:])), name
    for key, value in m.items():
        if key != "users":
            assert 0.0 <= value <= 1.0 + 1e-12, key


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 6), st.integers(2, 40))
def test_perfect_ranking_scores_one(seed, n_users, n_items):
    rng = np.random.default_rng(seed)
    k = int(rng.integers(1, n_items + 1))
    rows, ranked = [], np.full((n_users, k), -1, np.int32)
    for u in range(n_users):
        order = rng.permutation(n_items)
        size = int(rng.integers(1, k + 1))  # |T| <= K so recall can reach 1
        rows.append(order[:size].tolist())
        ranked[u] = order[:k]  # the targets first, then anything else
    m = ranking_metrics(ranked, _targets(rows, n_items), ks=(k,))
    for name in ("recall", "hr", "ndcg", "mrr"):
        assert m[f"{name}@{k}"] == pytest.approx(1.0), name
