"""Merging many nearest-neighbour hit lists into one ranked list per user."""

from __future__ import annotations

import numpy as np

from llmrecall.topk import topk


def merge_hits(owner: np.ndarray, ids: np.ndarray, scores: np.ndarray,
               evidence: np.ndarray | None, n_rows: int, k: int, *,
               how: str = "max") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Merge hit lists of several queries per row (user) into that row's top ``k``.

    Args:
        owner: int64[q] the row each query belongs to.
        ids: int64[q, h] hit ids (-1 = none); scores float32[q, h] (-inf = none).
        evidence: int64[q] or int64[q, h] what each hit is credited to (e.g. the history
            item whose query found it), or None.
        n_rows: number of rows in the answer.
        k: width of the answer.
        how: "max" keeps an id's best score (and the evidence of that hit); "sum" adds the
            scores of every query that found it (evidence still from the best hit).
    Returns:
        ``ids int32[n_rows, k]`` (-1 padded), ``scores float32[n_rows, k]`` (-inf padded),
        ``evidence int32[n_rows, k]`` (-1 padded). Ties break toward the lower id.
    """
    q, h = ids.shape
    rows = np.repeat(np.asarray(owner, np.int64), h)
    flat_ids, flat_scores = ids.ravel(), scores.ravel()
    if evidence is None:
        flat_ev = np.full(q * h, -1, np.int64)
    else:
        evidence = np.asarray(evidence, np.int64)
        flat_ev = (np.repeat(evidence, h) if evidence.ndim == 1 else evidence.ravel())
    ok = (flat_ids >= 0) & np.isfinite(flat_scores)
    rows, flat_ids, flat_scores, flat_ev = rows[ok], flat_ids[ok], flat_scores[ok], flat_ev[ok]
    # best hit of each (row, id) pair first, then keep one entry per pair
    order = np.lexsort((-flat_scores, flat_ids, rows))
    rows, flat_ids, flat_scores, flat_ev = rows[order], flat_ids[order], flat_scores[order], flat_ev[order]
    first = np.ones(len(rows), bool)
    first[1:] = (rows[1:] != rows[:-1]) | (flat_ids[1:] != flat_ids[:-1])
    starts = np.flatnonzero(first)
    merged = flat_scores[starts]
    if how == "sum" and len(starts):
        merged = np.add.reduceat(flat_scores, starts).astype(np.float32)
    elif how != "max":
        raise ValueError(f"merge how must be 'max' or 'sum', got {how!r}")
    rows, flat_ids, flat_ev = rows[starts], flat_ids[starts], flat_ev[starts]
    # lay each row's unique hits into a dense [n_rows, width] block, then top-k it
    counts = np.bincount(rows, minlength=n_rows)
    width = max(int(counts.max()) if len(counts) else 0, 1)
    slot = np.arange(len(rows)) - np.repeat(np.cumsum(counts) - counts, counts)
    block_scores = np.full((n_rows, width), -np.inf, np.float32)
    block_ids = np.full((n_rows, width), -1, np.int64)
    block_ev = np.full((n_rows, width), -1, np.int64)
    block_scores[rows, slot] = merged
    block_ids[rows, slot] = flat_ids
    block_ev[rows, slot] = flat_ev
    # rows are sorted by id within each row, so topk's lower-column tie-break = lower id
    cols, vals = topk(block_scores, k)
    safe = np.maximum(cols, 0)
    out_ids = np.where(cols >= 0, np.take_along_axis(block_ids, safe, axis=1), -1).astype(np.int32)
    out_ev = np.where(cols >= 0, np.take_along_axis(block_ev, safe, axis=1), -1).astype(np.int32)
    return out_ids, vals, out_ev
