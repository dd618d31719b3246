"""Top-K ranking metrics over a batch of users, vectorised (no per-user Python loop).

Definitions (``docs/evaluation.md``), for a user with target set T and ranked list L:

- recall@K = |L[:K] ∩ T| / |T|
- hr@K = 1 if L[:K] ∩ T is non-empty, else 0
- ndcg@K = DCG@K / IDCG@K, binary gains, discount 1 / log2(rank + 1), IDCG over min(|T|, K)
- mrr@K = 1 / rank of the first hit in L[:K], else 0
- coverage@K = distinct items in all users' L[:K] / catalog size

Per-user values are averaged over users; coverage is one number for the whole batch.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from llmrecall.errors import DataError

DEFAULT_KS = (10, 20, 50, 100, 200)


def ranking_metrics(ranked: np.ndarray, targets: sp.csr_matrix, ks=DEFAULT_KS,
                    n_items: int | None = None) -> dict[str, float]:
    """Mean top-K metrics of ranked lists against target sets.

    Args:
        ranked: int[u, K] dense item ids, best first, padded with -1 (a padded slot is a
            miss). Rows must not repeat an item.
        targets: CSR [u, n_items]; the non-zero entries of row i are user i's targets. Every
            row needs at least one target.
        ks: cut-offs, each at most ``K``.
        n_items: catalog size for coverage; defaults to ``targets.shape[1]``.
    Returns:
        ``{"recall@10": ..., "hr@10": ..., "ndcg@10": ..., "mrr@10": ..., "coverage@10": ...}``
        for every K in ``ks``, as Python floats, plus ``"users"``: the number of users.
    """
    ranked = np.asarray(ranked)
    targets = sp.csr_matrix(targets, copy=True)  # binarised and sorted below
    n_items = targets.shape[1] if n_items is None else int(n_items)
    ks = sorted({int(k) for k in ks})
    _check(ranked, targets, ks, n_items)
    n_users, width = ranked.shape
    if n_users == 0:
        raise DataError("ranking_metrics got no users to evaluate")

    hits = _hits(ranked, targets)  # bool[u, K]
    n_targets = np.diff(targets.indptr)  # targets are binary and deduplicated by _check
    found = np.cumsum(hits, axis=1)  # hits within the first j+1 slots
    discount = 1.0 / np.log2(np.arange(2, width + 2))
    dcg = np.cumsum(hits * discount, axis=1)
    ideal = np.cumsum(discount)  # IDCG with n hits is ideal[n - 1]
    first_hit = np.where(hits.any(axis=1), hits.argmax(axis=1), width)

    out: dict[str, float] = {}
    for k in ks:
        found_k = found[:, k - 1]
        idcg = ideal[np.minimum(n_targets, k) - 1]
        out[f"recall@{k}"] = float(np.mean(found_k / n_targets))
        out[f"hr@{k}"] = float(np.mean(found_k > 0))
        out[f"ndcg@{k}"] = float(np.mean(dcg[:, k - 1] / idcg))
        out[f"mrr@{k}"] = float(np.mean(np.where(first_hit < k, 1.0 / (first_hit + 1), 0.0)))
        top = ranked[:, :k]
        out[f"coverage@{k}"] = float(np.unique(top[top >= 0]).size / n_items)
    out["users"] = int(n_users)
    return out


def _hits(ranked: np.ndarray, targets: sp.csr_matrix) -> np.ndarray:
    """bool[u, K]: whether ranked[i, j] is one of row i's targets.

    Encodes (row, item) pairs as one int64 key and looks the ranked keys up in the sorted
    target keys: one searchsorted for the whole batch.
    """
    n_users, width = ranked.shape
    n_cols = np.int64(targets.shape[1])
    target_rows = np.repeat(np.arange(n_users, dtype=np.int64), np.diff(targets.indptr))
    target_keys = target_rows * n_cols + targets.indices  # sorted: rows ascend, indices sorted
    keys = np.arange(n_users, dtype=np.int64)[:, None] * n_cols + ranked
    pos = np.searchsorted(target_keys, keys)
    pos = np.minimum(pos, max(len(target_keys) - 1, 0))
    hits = (target_keys[pos] == keys) if len(target_keys) else np.zeros(keys.shape, bool)
    return hits & (ranked >= 0)


def _check(ranked: np.ndarray, targets: sp.csr_matrix, ks: list[int], n_items: int) -> None:
    """Validate shapes and ids; binarise and sort ``targets`` in place."""
    if ranked.ndim != 2:
        raise DataError(f"ranked must be a 2-d array [users, K], got shape {ranked.shape}")
    if not np.issubdtype(ranked.dtype, np.integer):
        raise DataError(f"ranked must hold integer item ids, got dtype {ranked.dtype}")
    n_users, width = ranked.shape
    if targets.shape[0] != n_users:
        raise DataError(f"targets have {targets.shape[0]} rows for {n_users} ranked lists")
    if not ks or ks[0] < 1:
        raise DataError(f"cut-offs must be positive integers, got {ks}")
    if ks[-1] > width:
        raise DataError(f"cut-off {ks[-1]} exceeds the ranked list length {width}: "
                        "recall more candidates or lower the cut-offs")
    if n_items < 1:
        raise DataError(f"catalog size must be positive, got {n_items}")
    if ranked.size and (ranked.min() < -1 or ranked.max() >= targets.shape[1]):
        raise DataError(f"ranked ids must lie in [-1, {targets.shape[1]}), found "
                        f"{int(ranked.min())}..{int(ranked.max())}")
    targets.sum_duplicates()
    targets.eliminate_zeros()
    targets.sort_indices()
    empty = np.flatnonzero(np.diff(targets.indptr) == 0)
    if len(empty):
        raise DataError(f"{len(empty)} users have no targets (first: row {int(empty[0])}); "
                        "evaluate only users with at least one target")
    if width > 1:
        ordered = np.sort(ranked, axis=1)
        repeated = (ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] >= 0)
        if repeated.any():
            row = int(np.flatnonzero(repeated.any(axis=1))[0])
            raise DataError(f"ranked row {row} lists an item twice")
