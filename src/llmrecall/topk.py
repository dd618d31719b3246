"""Top-k selection over dense score blocks, the hot loop of every scoring channel."""

from __future__ import annotations

import numpy as np


def topk(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Best ``k`` columns of each row, best first.

    Args:
        scores: float32[n, m]; -inf marks columns that must never be returned.
    Returns:
        ``ids int32[n, k]`` and ``values float32[n, k]``, padded with -1 / -inf where a row
        has fewer than ``k`` finite scores. Ties break toward the lower column id.
    """
    n, m = scores.shape
    if k <= 0 or n == 0:
        return np.full((n, max(k, 0)), -1, np.int32), np.full((n, max(k, 0)), -np.inf, np.float32)
    kk = min(k, m)
    if kk < m:
        part = np.argpartition(-scores, kk - 1, axis=1)[:, :kk]
        _lowest_ids_among_ties(scores, part)
    else:
        part = np.broadcast_to(np.arange(m), (n, m)).copy()
    vals = np.take_along_axis(scores, part, axis=1)
    # sort by (-value, id) so ties are deterministic
    order = np.lexsort((part, -vals), axis=1)
    ids = np.take_along_axis(part, order, axis=1).astype(np.int32)
    vals = np.take_along_axis(vals, order, axis=1).astype(np.float32)
    ids[~np.isfinite(vals)] = -1
    vals[ids < 0] = -np.inf
    if kk < k:
        ids = np.pad(ids, ((0, 0), (0, k - kk)), constant_values=-1)
        vals = np.pad(vals, ((0, 0), (0, k - kk)), constant_values=-np.inf)
    return ids, vals


def _lowest_ids_among_ties(scores: np.ndarray, part: np.ndarray) -> None:
    """Make ``part`` (in place) keep the lowest ids among columns tied at the k-th value.

    argpartition keeps an arbitrary subset of the columns that tie with the k-th best value;
    rows where that matters are rare, so they are found with one comparison pass and only
    they are recomputed. Ties at -inf are never returned, so they are left alone.
    """
    kk = part.shape[1]
    vals = np.take_along_axis(scores, part, axis=1)
    kth = vals.min(axis=1)
    at_kth = scores == kth[:, None]
    tied = np.isfinite(kth) & (at_kth.sum(axis=1) > (vals == kth[:, None]).sum(axis=1))
    if not tied.any():
        return
    rows = np.flatnonzero(tied)
    above = scores[rows] > kth[rows, None]
    equal = at_kth[rows]
    need = kk - above.sum(axis=1)
    pick = above | (equal & (np.cumsum(equal, axis=1) <= need[:, None]))
    part[rows] = np.nonzero(pick)[1].reshape(len(rows), kk)
