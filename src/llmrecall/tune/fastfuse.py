"""Fused ids only, for tuning: the same answer as :func:`llmrecall.fusion.fuse`, faster.

:func:`~llmrecall.fusion.fuse` also builds, per candidate, each channel's rank and evidence
for explanations; a tuning trial needs only the fused ids, and re-runs fusion hundreds of
times. Here contributions are scattered into a dense block of users x items, which is one
vectorised pass per channel plus a top-k.

Equality with ``fuse`` (tested, both against the same dict-based statement of the contract in
tests/test_fusion_contract.py): contributions are float32, summed in float32 in channel order
as ``fuse`` sums them; guaranteed candidates are chosen first by the same
:func:`~llmrecall.topk.topk_first_tier`; the final order is by (score desc, item id asc).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from llmrecall.fusion import ChannelWeight
from llmrecall.topk import fit_mask, topk_first_tier

#: dense cells (users x items) per block; bounds temporary memory to about 13 bytes each
BLOCK_CELLS = 1 << 24


def fused_ids(lists: Mapping[str, np.ndarray], k: int, n_items: int, *,
              weights: Mapping[str, ChannelWeight] | None = None, rrf_k: float = 60.0,
              allowed: np.ndarray | None = None) -> np.ndarray:
    """Top-``k`` fused ids int32[n, k] (-1 padded) from channel ids int32[n, k_c] each.

    ``lists`` maps channel name -> candidate ids, best first, -1 padded, no repeats within
    a row. ``weights``/``rrf_k``/``allowed`` mean what they mean for ``fuse``.
    """
    names = list(lists)
    if not names:
        raise ValueError("fused_ids() needs at least one channel's candidates")
    n = lists[names[0]].shape[0]
    weights = weights or {}
    block = max(1, BLOCK_CELLS // max(n_items, 1))
    out = [_block({nm: lists[nm][s:s + block] for nm in names}, k, n_items, weights, rrf_k,
                  allowed) for s in range(0, n, block)]
    return np.concatenate(out) if out else np.zeros((0, k), np.int32)


def _block(lists: Mapping[str, np.ndarray], k: int, n_items: int,
           weights: Mapping[str, ChannelWeight], rrf_k: float,
           allowed: np.ndarray | None) -> np.ndarray:
    n = next(iter(lists.values())).shape[0]
    # flat views: one 1-d scatter per channel is much cheaper than 2-d fancy indexing
    score = np.zeros(n * n_items, np.float32)
    proposed = np.zeros(n * n_items, bool)
    guaranteed = []  # flat cells at a guaranteed position of some channel
    for name, ids in lists.items():
        w = weights.get(name, ChannelWeight())
        if w.weight <= 0:
            continue  # fuse() drops such a channel's candidates altogether
        kc = ids.shape[1] if w.quota is None else min(w.quota, ids.shape[1])
        ids = ids[:, :kc]
        keep = (ids >= 0) & (ids < n_items)
        rank = np.broadcast_to(np.arange(kc), ids.shape)[keep]
        cells = (np.arange(n, dtype=np.int64)[:, None] * n_items + ids)[keep]
        contrib = (w.weight / (rrf_k + rank + 1.0)).astype(np.float32)
        # a channel proposes an item at most once per user, so plain fancy-index += is exact
        score[cells] += contrib
        proposed[cells] = True
        guaranteed.append(cells[rank < w.min_slots])
    score = score.reshape(n, n_items)
    proposed = proposed.reshape(n, n_items)
    if allowed is not None:  # as in fuse(): ids past the end of ``allowed`` are allowed
        proposed &= fit_mask(np.asarray(allowed, bool), n_items)[None, :]
    select = np.where(proposed, score, np.float32(-np.inf))
    chosen = topk_first_tier(select, np.concatenate(guaranteed or [np.zeros(0, np.int64)]), k)
    valid = chosen >= 0
    chosen_score = np.where(valid, np.take_along_axis(score, np.maximum(chosen, 0), 1), -np.inf)
    order = np.lexsort((np.where(valid, chosen, 0), -chosen_score), axis=1)
    return np.take_along_axis(chosen, order, 1).astype(np.int32)
