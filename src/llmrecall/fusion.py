"""Fusion: merge several channels' candidate lists into one explained list per user.

The merge is weighted reciprocal-rank fusion (RRF): a candidate at 0-based rank r in channel c
earns ``weight_c / (rrf_k + r + 1)``; contributions of the same item from different channels
add up. RRF needs no score calibration between channels, which matters because an EASE score,
a cosine and a popularity count live on unrelated scales.

Everything is vectorised over the batch: no per-user Python loop.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from llmrecall.channels.base import Candidates
from llmrecall.topk import topk

#: bonus that lifts guaranteed (min_slots) candidates above every RRF score when selecting
_GUARANTEE = np.float32(1e6)


@dataclass(frozen=True)
class ChannelWeight:
    """How one channel takes part in fusion.

    Attributes:
        weight: multiplier of the channel's RRF contribution (0 disables it).
        quota: at most this many of the channel's candidates are considered (None: all).
        min_slots: this many of the channel's best candidates are guaranteed a place in the
            final list (if the channel produced them and filters allow them).
    """

    weight: float = 1.0
    quota: int | None = None
    min_slots: int = 0


@dataclass
class FusedCandidates:
    """The fused answer for a batch of n users, k candidates each.

    Attributes:
        ids: int32[n, k] dense item ids, best first, -1 padded.
        scores: float32[n, k] fused scores, -inf padded.
        channels: channel names, in the order used by the arrays below.
        ranks: int32[n, k, C] 0-based rank of the candidate in each channel, -1 if absent.
        evidence: int32[n, k, C] each channel's evidence for the candidate, -1 if none.
        evidence_kinds: per channel, "item", "text" or "none".
        evidence_texts: per channel, the texts that "text" evidence indexes (or None).
    """

    ids: np.ndarray
    scores: np.ndarray
    channels: list[str]
    ranks: np.ndarray
    evidence: np.ndarray
    evidence_kinds: list[str]
    evidence_texts: list[list[str] | None]

    def sources(self, row: int, col: int) -> list[tuple[str, int, int]]:
        """(channel, rank, evidence) for each channel that proposed candidate [row, col]."""
        return [(name, int(self.ranks[row, col, c]), int(self.evidence[row, col, c]))
                for c, name in enumerate(self.channels) if self.ranks[row, col, c] >= 0]


def fuse(lists: Mapping[str, Candidates], k: int, *,
         weights: Mapping[str, ChannelWeight] | None = None, rrf_k: float = 60.0,
         allowed: np.ndarray | None = None, seen: Sequence[np.ndarray] | None = None) -> FusedCandidates:
    """Merge per-channel candidates into the top-``k`` fused list of each user.

    Args:
        lists: channel name -> :class:`Candidates` for the same n users (any k per channel).
        k: length of the fused list.
        weights: per-channel :class:`ChannelWeight` (default weight 1, no quota).
        rrf_k: RRF damping constant; larger flattens the advantage of top ranks.
        allowed: optional bool[n_items]; candidates outside it are dropped.
        seen: optional, per user, an int array of items to drop (already consumed).
    Returns:
        :class:`FusedCandidates`; a candidate proposed by several channels appears once.
    """
    names = list(lists)
    if not names:
        raise ValueError("fuse() needs at least one channel's candidates")
    weights = weights or {}
    n = lists[names[0]].ids.shape[0]
    C = len(names)

    rows, items, contrib, chan, rank, evid, guaranteed = [], [], [], [], [], [], []
    for c, name in enumerate(names):
        cand = lists[name]
        w = weights.get(name, ChannelWeight())
        kc = cand.ids.shape[1] if w.quota is None else min(w.quota, cand.ids.shape[1])
        ids = cand.ids[:, :kc]
        if ids.shape[0] != n:
            raise ValueError(f"channel {name!r} answered for {ids.shape[0]} users, expected {n}")
        r = np.broadcast_to(np.arange(kc, dtype=np.int32), ids.shape)
        keep = ids >= 0
        if w.weight == 0:
            keep &= False
        rows.append(np.broadcast_to(np.arange(n)[:, None], ids.shape)[keep])
        items.append(ids[keep])
        contrib.append((w.weight / (rrf_k + r[keep] + 1.0)).astype(np.float32))
        chan.append(np.full(keep.sum(), c, np.int32))
        rank.append(r[keep])
        ev = cand.evidence[:, :kc][keep] if cand.evidence is not None else np.full(keep.sum(), -1)
        evid.append(ev.astype(np.int32))
        guaranteed.append(r[keep] < w.min_slots)

    row = np.concatenate(rows).astype(np.int64)
    item = np.concatenate(items).astype(np.int64)
    contrib_all = np.concatenate(contrib)
    chan_all, rank_all, evid_all = np.concatenate(chan), np.concatenate(rank), np.concatenate(evid)
    guar_all = np.concatenate(guaranteed)

    n_items = int(item.max()) + 1 if len(item) else 1
    drop = np.zeros(len(item), bool)
    if allowed is not None:
        inside = item < len(allowed)
        drop |= ~np.where(inside, allowed[np.minimum(item, len(allowed) - 1)], False)
    if seen is not None:
        seen_keys = np.concatenate([np.asarray(s, np.int64) + u * n_items
                                    for u, s in enumerate(seen)]) if n else np.zeros(0, np.int64)
        drop |= np.isin(row * n_items + item, seen_keys)
    keep = ~drop
    row, item, contrib_all = row[keep], item[keep], contrib_all[keep]
    chan_all, rank_all, evid_all, guar_all = chan_all[keep], rank_all[keep], evid_all[keep], guar_all[keep]

    # one slot per distinct (user, item): sum contributions, remember each channel's rank
    key = row * n_items + item
    uniq, slot = np.unique(key, return_inverse=True)
    fused_score = np.bincount(slot, weights=contrib_all, minlength=len(uniq)).astype(np.float32)
    is_guaranteed = np.bincount(slot, weights=guar_all, minlength=len(uniq)) > 0
    slot_ranks = np.full((len(uniq), C), -1, np.int32)
    slot_ranks[slot, chan_all] = rank_all
    slot_evid = np.full((len(uniq), C), -1, np.int32)
    slot_evid[slot, chan_all] = evid_all
    u_row, u_item = uniq // n_items, uniq % n_items
    if len(uniq) == 0:  # nothing proposed (or everything filtered) for every user
        return FusedCandidates(np.full((n, k), -1, np.int32), np.full((n, k), -np.inf, np.float32),
                               names, np.full((n, k, C), -1, np.int32),
                               np.full((n, k, C), -1, np.int32),
                               [lists[nm].evidence_kind for nm in names],
                               [lists[nm].evidence_text for nm in names])

    # lay slots out as a ragged [n, width] block, then top-k per row
    counts = np.bincount(u_row, minlength=n)
    width = max(int(counts.max()) if len(counts) else 0, 1)
    start = np.zeros(n + 1, np.int64)
    np.cumsum(counts, out=start[1:])
    col = np.arange(len(uniq)) - start[u_row]
    select_key = np.full((n, width), -np.inf, np.float32)
    select_key[u_row, col] = fused_score + np.where(is_guaranteed, _GUARANTEE, 0)
    slot_of = np.full((n, width), -1, np.int64)
    slot_of[u_row, col] = np.arange(len(uniq))

    chosen, _ = topk(select_key, k)  # columns into the block, guaranteed ones first
    valid = chosen >= 0
    chosen_slot = np.where(valid, np.take_along_axis(slot_of, np.maximum(chosen, 0), 1), -1)
    score = np.where(valid, fused_score[np.maximum(chosen_slot, 0)], -np.inf).astype(np.float32)
    # final order is by fused score alone (guarantees decide membership, not order)
    order = np.lexsort((np.where(valid, u_item[np.maximum(chosen_slot, 0)], 0), -score), axis=1)
    chosen_slot = np.take_along_axis(chosen_slot, order, 1)
    score = np.take_along_axis(score, order, 1)
    valid = chosen_slot >= 0
    safe = np.maximum(chosen_slot, 0)
    ids = np.where(valid, u_item[safe], -1).astype(np.int32)
    ranks = np.where(valid[..., None], slot_ranks[safe], -1).astype(np.int32)
    evidence = np.where(valid[..., None], slot_evid[safe], -1).astype(np.int32)
    return FusedCandidates(ids, score, names, ranks, evidence,
                           [lists[nm].evidence_kind for nm in names],
                           [lists[nm].evidence_text for nm in names])
