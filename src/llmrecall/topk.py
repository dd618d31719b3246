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
    # sort by (-value, id) so ties are deterministic: ids ascending, then a stable sort by
    # value (a third cheaper than lexsort on the two keys)
    part.sort(axis=1)
    vals = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-vals, axis=1, kind="stable")
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
    above = block > kth
    need = kk - above.sum(axis=1)
    # the tied entries in (row, id) order; keep the first `need` of each row. Working on the
    # tied entries alone avoids a cumsum over the whole block (most of the cost when a
    # channel's scores are coarse, e.g. popularity counts).
    tie_row, tie_col = np.nonzero(block == kth)
    first = np.searchsorted(tie_row, np.arange(len(rows)))
    keep = (np.arange(len(tie_row)) - first[tie_row]) < need[tie_row]
    above_row, above_col = np.nonzero(above)
    row_of = np.concatenate([above_row, tie_row[keep]])
    col_of = np.concatenate([above_col, tie_col[keep]])
    order = np.argsort(row_of, kind="stable")
    part = part.copy()
    part[rows] = col_of[order].reshape(len(rows), kk)
    return part


def fit_mask(mask: np.ndarray, width: int) -> np.ndarray:
    """bool ``mask`` cut or padded to ``width`` columns; padding is True (not filtered),
    because items beyond a mask's length were added after the mask was built."""
    if len(mask) >= width:
        return mask[:width]
    return np.pad(mask, (0, width - len(mask)), constant_values=True)


def topk_first_tier(scores: np.ndarray, first: np.ndarray, k: int) -> np.ndarray:
    """Best ``k`` columns of each row when the cells ``first`` come before all others.

    The answer holds the row's first-tier cells, best first, up to ``k`` of them; the places
    left go to its other cells, best first. "Best" is (score desc, column asc) in each tier,
    as in :func:`topk`. Two separate selections, not a bonus added to the first tier's
    scores: a finite bonus large enough to lift every score would absorb the scores' low bits
    (float32 spacing near 1e6 is 0.0625), and the first tier would then tie.

    Args:
        scores: float32[n, m], -inf for cells that must never be returned. Overwritten: the
            first-tier cells are set to -inf.
        first: int64[f] flat cell indices (``row * m + column``) of the first tier, in any
            order, repeats allowed; cells whose score is -inf are ignored.
        k: list length.
    Returns:
        int32[n, k] column ids, -1 padded: the first tier's chosen cells, then the others'.
        Cheap when ``first`` is short: one :func:`topk` over the block plus a sort of ``first``.
    """
    n, m = scores.shape
    first = np.unique(np.asarray(first, np.int64))
    rows, cols = np.divmod(first, max(m, 1))
    live = np.isfinite(scores[rows, cols])
    rows, cols = rows[live], cols[live]
    if k <= 0 or len(rows) == 0:
        return topk(scores, k)[0]
    vals = scores[rows, cols]
    scores[rows, cols] = -np.inf  # the rest: everything but the first tier
    order = np.lexsort((cols, -vals, rows))  # by row, then score desc, then column asc
    rows, cols = rows[order], cols[order]
    slot = np.arange(len(rows)) - np.searchsorted(rows, rows)  # position within its row
    keep = slot < k
    chosen = np.full((n, k), -1, np.int32)
    chosen[rows[keep], slot[keep]] = cols[keep]
    taken = np.bincount(rows[keep], minlength=n)[:, None]  # first-tier places per row
    rest, _ = topk(scores, k)
    back = np.arange(k)[None, :] - taken  # where the rest's entries go: after the first tier
    return np.where(back < 0, chosen, np.take_along_axis(rest, np.maximum(back, 0), 1))
