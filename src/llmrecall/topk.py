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
        part = _lowest_ids_at_boundary(scores, part, kk)
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


def _lowest_ids_at_boundary(scores: np.ndarray, part: np.ndarray, kk: int) -> np.ndarray:
    """Make the selection deterministic: ``argpartition`` keeps an arbitrary subset of the
    items tied at the k-th score, so the result would depend on k and on the block. In rows
    where such a tie crosses the boundary, keep every item above the k-th score and the
    lowest ids among those equal to it.
    """
    picked = np.take_along_axis(scores, part, axis=1)
    kth = picked.min(axis=1, keepdims=True)
    tied_outside = (scores == kth).sum(axis=1) > (picked == kth).sum(axis=1)
    # a tie at -inf only involves items that are dropped anyway
    rows = np.flatnonzero(tied_outside & np.isfinite(kth[:, 0]))
    if len(rows) == 0:
        return part
    block, kth = scores[rows], kth[rows]
    tied = block == kth
    need = kk - (block > kth).sum(axis=1, keepdims=True)
    chosen = (block > kth) | (tied & (np.cumsum(tied, axis=1) <= need))
    part = part.copy()
    part[rows] = np.nonzero(chosen)[1].reshape(len(rows), kk)
    return part
