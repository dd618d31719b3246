"""What the history-based channels share: the weighted history they score from, the fallback
for users without one, and the per-candidate "which history item led here" evidence.

Every function works on a block of users at once (no per-user Python loops).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import scipy.sparse as sp

from llmrecall.data.dataset import Histories
from llmrecall.errors import DataError

#: (history item, candidate item) pairs examined per step when looking for evidence
EVIDENCE_PAIRS_PER_STEP = 2_000_000


def check_width(history: Histories, n_fitted_items: int, channel: str) -> int:
    """Number of score columns for ``history``: its item vocabulary, which may have grown
    since fit (new items get -inf) but may not have shrunk."""
    if history.n_items < n_fitted_items:
        raise DataError(f"channel {channel!r} was fitted on {n_fitted_items} items but the "
                        f"history knows only {history.n_items}: use the same item vocabulary")
    return history.n_items


def weighted_history(history: Histories, users: np.ndarray, n_items: int,
                     length: int | None = None, position_half_life: float | None = None,
                     time_half_life: float | None = None) -> sp.csr_matrix:
    """The history each user is scored from, as a weighted sparse matrix.

    Args:
        history: histories with at least ``max(users)+1`` rows.
        users: int[n] dense user ids.
        n_items: number of items the channel was fitted on; later items are dropped
            (the channel knows nothing about them).
        length: keep only the last ``length`` interactions (None: all).
        position_half_life: weight halves every this many positions back from the latest
            interaction (None: no position decay).
        time_half_life: weight halves every this many time units before the user's latest
            interaction (None: no time decay).
    Returns:
        float32 CSR [n, n_items] with sorted indices; an item seen several times keeps the
        weight of its most recent occurrence (1.0 everywhere when no decay is set).
    """
    users = np.asarray(users, dtype=np.int64)
    n = len(users)
    if n and users.max(initial=0) >= history.n_users:
        raise DataError(f"history has {history.n_users} users but user id {int(users.max())} "
                        "was asked for")
    lengths = history.lengths()[users] if n else np.zeros(0, np.int64)
    longest = int(lengths.max(initial=0))
    span = longest if length is None else min(int(length), longest)
    if span == 0:
        # scipy-stubs: csr_matrix's (M, N) shape overload accepts only float64 dtypes
        return sp.csr_matrix((n, n_items), dtype=np.float32)  # type: ignore[arg-type]
    items, times = history.recent(users, span)  # right-aligned, -1 / NaN padded
    weight = np.ones(items.shape, np.float64)
    if position_half_life is not None:
        back = np.arange(span - 1, -1, -1, dtype=np.float64)[None, :]
        weight = weight * np.exp2(-back / float(position_half_life))
    if time_half_life is not None:
        with np.errstate(invalid="ignore"):
            latest = np.nanmax(np.where(items >= 0, times, -np.inf), axis=1, keepdims=True)
            age = np.nan_to_num(latest - times, nan=0.0, posinf=0.0, neginf=0.0)
        weight = weight * np.exp2(-np.maximum(age, 0.0) / float(time_half_life))
    keep = (items >= 0) & (items < n_items)
    rows = np.broadcast_to(np.arange(n)[:, None], items.shape)[keep]
    cols, vals = items[keep].astype(np.int64), weight[keep]
    # one entry per (user, item): the most recent occurrence, i.e. the largest weight
    key = rows * n_items + cols
    order = np.lexsort((-vals, key))
    first = np.ones(len(order), bool)
    first[1:] = key[order][1:] != key[order][:-1]
    pick = order[first]
    out = sp.csr_matrix((vals[pick].astype(np.float32), (rows[pick], cols[pick])),
                        shape=(n, n_items))
    out.sort_indices()
    return out


def finish_scores(known: np.ndarray, no_signal: np.ndarray | None,
                  fallback: np.ndarray | None, width: int) -> np.ndarray:
    """Dense float32[n, width] scores from scores over the fitted items.

    Args:
        known: float[n, n_fitted] the channel's scores for the items it was fitted on.
        no_signal: bool[n], rows the channel could not personalise (e.g. empty history);
            they get ``fallback`` (float32[n_fitted], e.g. popularity) when it is given.
        width: output columns; columns past the fitted items (added later) are -inf.
    """
    n, fitted = known.shape
    out = np.full((n, width), -np.inf, np.float32)
    out[:, :fitted] = known
    if fallback is not None and no_signal is not None and no_signal.any():
        out[np.ix_(no_signal, np.arange(fitted))] = fallback[None, :]
    return out


def empty_rows(hist: sp.csr_matrix) -> np.ndarray:
    """bool[n]: rows of a CSR matrix without entries."""
    return np.diff(hist.indptr) == 0


def best_history_item(hist: sp.csr_matrix, ids: np.ndarray,
                      pair_value: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> np.ndarray:
    """For each candidate, the history item that contributed most to it.

    Args:
        hist: float32 CSR [n, n_fitted] weighted history (see :func:`weighted_history`).
        ids: int32[n, k] candidates, -1 padded; ids >= n_fitted have no evidence.
        pair_value: ``f(h int64[p], j int64[p]) -> float[p]``, what history item ``h``
            adds to candidate ``j`` per unit of history weight (e.g. their similarity).
    Returns:
        int32[n, k]: the history item maximising ``weight * pair_value``, or -1 where no
        history item adds a positive amount.
    """
    n, k = ids.shape
    fitted = hist.shape[1]
    out = np.full((n, k), -1, np.int32)
    lengths = np.diff(hist.indptr).astype(np.int64)
    # rows are processed in slices of about EVIDENCE_PAIRS_PER_STEP (row, candidate,
    # history entry) triples, which bounds memory whatever the history lengths
    cumulative = np.cumsum(lengths * k)
    start = 0
    while start < n:
        done = cumulative[start - 1] if start else 0
        stop = int(np.searchsorted(cumulative, done + EVIDENCE_PAIRS_PER_STEP, side="right"))
        stop = min(max(stop, start + 1), n)
        rows = np.arange(start, stop)
        _best_for_rows(hist, ids, rows, lengths[rows], fitted, pair_value, out)
        start = stop
    return out


def _best_for_rows(hist, ids, rows, lengths, fitted, pair_value, out) -> None:
    k = ids.shape[1]
    group_sizes = np.repeat(lengths, k)  # group = (row, candidate slot)
    total = int(group_sizes.sum())
    if total == 0:
        return
    group = np.repeat(np.arange(len(rows) * k), group_sizes)
    group_start = np.concatenate([[0], np.cumsum(group_sizes)[:-1]])
    within = np.arange(total) - group_start[group]
    row_of = rows[group // k]
    entry = hist.indptr[row_of] + within
    h = hist.indices[entry].astype(np.int64)
    j = ids[row_of, group % k].astype(np.int64)
    value = np.full(total, -np.inf)
    valid = (j >= 0) & (j < fitted)
    value[valid] = hist.data[entry[valid]] * pair_value(h[valid], j[valid])
    best = np.full(len(rows) * k, -np.inf)
    nonempty = group_sizes > 0  # groups are contiguous runs, so reduceat finds each maximum
    best[nonempty] = np.maximum.reduceat(value, group_start[nonempty])
    winner = (value == best[group]) & (value > 0)
    hit_groups, first = np.unique(group[winner], return_index=True)
    hit_entries = np.flatnonzero(winner)[first]
    out[rows[hit_groups // k], hit_groups % k] = h[hit_entries]


def sparse_lookup(matrix: sp.csr_matrix) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """``f(rows, cols) -> float64[p]``: entries of a CSR matrix (0 where absent), vectorised."""
    csr = matrix.tocsr()
    csr.sort_indices()
    n_cols = csr.shape[1]
    keys = np.repeat(np.arange(csr.shape[0], dtype=np.int64), np.diff(csr.indptr)) * n_cols \
        + csr.indices
    data = csr.data.astype(np.float64)

    def lookup(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        wanted = rows.astype(np.int64) * n_cols + cols
        pos = np.searchsorted(keys, wanted)
        pos_ok = np.minimum(pos, max(len(keys) - 1, 0))
        found = (pos < len(keys)) & (keys[pos_ok] == wanted) if len(keys) else np.zeros(
            len(wanted), bool)
        return np.where(found, data[pos_ok] if len(keys) else 0.0, 0.0)

    return lookup
