"""Fusion: merge several channels' candidate lists into one explained list per user.

The merge is weighted reciprocal-rank fusion (RRF): a candidate at 0-based rank r in channel c
earns ``weight_c / (rrf_k + r + 1)``; contributions of the same item from different channels
add up. RRF needs no score calibration between channels, which matters because an EASE score,
a cosine and a popularity count live on unrelated scales.

Everything is vectorised over the batch: no per-user Python loop.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from llmrecall.channels.base import Candidates
from llmrecall.topk import fit_mask, topk_first_tier


@dataclass(frozen=True)
class ChannelWeight:
    """How one channel takes part in fusion.

    Attributes:
        weight: multiplier of the channel's RRF contribution (0 disables it).
        quota: at most this many of the channel's candidates are considered (None: all).
        min_slots: the channel's candidates at positions ``< min_slots`` (and within its
            quota) are guaranteed a place in the final list, if filters allow them and ``k``
            has room (see :func:`fuse` for the exact rule). A guaranteed candidate that is
            filtered out does not pass its guarantee on to the next one.
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
        weights: float64[C] the weight each channel was fused with (None: not recorded).
        rrf_k: the RRF damping constant the lists were fused with (None: fused by a learned
            table, whose per-channel contributions are ``contrib``).
        contrib: float32[n, k, C] what each channel added to each candidate's fused score,
            0 where it did not propose it; recorded when the contribution is not RRF's
            (:class:`LearnedFusion`: the table value, plus the guard's bonus for the
            reference channel), None for RRF, whose contributions follow from ``ranks``.
    """

    ids: np.ndarray
    scores: np.ndarray
    channels: list[str]
    ranks: np.ndarray
    evidence: np.ndarray
    evidence_kinds: list[str]
    evidence_texts: list[list[str] | None]
    weights: np.ndarray | None = None
    rrf_k: float | None = 60.0
    contrib: np.ndarray | None = None

    def contributions(self, row: int) -> np.ndarray:
        """float32[k, C]: what each channel added to the fused score of each candidate of
        user ``row`` (``contrib[row]`` when recorded; else RRF's ``weight / (rrf_k + rank +
        1)``, computed as :func:`fuse` does); 0 where the channel did not propose the
        candidate or its rank was past its quota."""
        if self.contrib is not None:
            return self.contrib[row]
        if self.rrf_k is None:
            raise ValueError("per-channel contributions are recorded for RRF fusion only")
        ranks = self.ranks[row]
        weights = np.ones(len(self.channels)) if self.weights is None else self.weights
        value = (weights[None, :] / (self.rrf_k + np.maximum(ranks, 0) + 1.0)).astype(np.float32)
        return np.where(ranks >= 0, value, np.float32(0.0))

    def sources(self, row: int, col: int) -> list[tuple[str, int, int]]:
        """(channel, rank, evidence) for each channel that proposed candidate [row, col]."""
        return [(name, int(self.ranks[row, col, c]), int(self.evidence[row, col, c]))
                for c, name in enumerate(self.channels) if self.ranks[row, col, c] >= 0]


def fuse(lists: Mapping[str, Candidates], k: int, *,
         weights: Mapping[str, ChannelWeight] | None = None, rrf_k: float = 60.0,
         allowed: np.ndarray | None = None, seen: Sequence[np.ndarray] | None = None,
         n_items: int | None = None) -> FusedCandidates:
    """Merge per-channel candidates into the top-``k`` fused list of each user.

    The contract, per user (tests/test_fusion_contract.py checks it against a dict-based
    implementation of exactly this text):

    * **Score.** A channel with ``weight > 0`` contributes, for the candidate at 0-based
      position ``r`` of its list (``r < quota``; -1 padding and ids ``>= n_items`` are
      skipped), ``float32(weight / (rrf_k + r + 1))``. A candidate's fused score is the float32
      sum of its contributions, added in the order of ``lists``.
    * **Eligible.** Candidates with a score that are allowed (ids past the end of ``allowed``
      are allowed, see :func:`~llmrecall.topk.fit_mask`) and not in the user's ``seen``.
    * **Guaranteed.** Eligible candidates at a position ``r < min_slots`` of some channel.
    * **Membership.** If there are ``g >= k`` guaranteed candidates, the ``k`` best of them;
      otherwise all ``g`` of them plus the ``k - g`` best other eligible candidates. "Best"
      is by fused score descending, ties by item id ascending.
    * **Order.** The list is ordered by fused score descending, ties by item id ascending
      (guarantees decide membership, not order); it is padded with -1 / -inf.

    Args:
        lists: channel name -> :class:`Candidates` for the same n users (any k per channel).
        k: length of the fused list.
        weights: per-channel :class:`ChannelWeight` (default weight 1, no quota).
        rrf_k: RRF damping constant; larger flattens the advantage of top ranks.
        allowed: optional bool[n_items]; candidates outside it are dropped.
        seen: optional, per user, an int array of items to drop (already consumed).
        n_items: catalog size (default: the largest proposed id + 1).
    Returns:
        :class:`FusedCandidates`; a candidate proposed by several channels appears once.
    """
    names = list(lists)
    if not names:
        raise ValueError("fuse() needs at least one channel's candidates")
    weights = weights or {}
    n = lists[names[0]].ids.shape[0]
    for name in names:
        if lists[name].ids.shape[0] != n:
            raise ValueError(f"channel {name!r} answered for {lists[name].ids.shape[0]} users, "
                             f"expected {n}")
    if n_items is None:
        n_items = max(int(lists[nm].ids.max(initial=-1)) for nm in names) + 1
    n_items = max(n_items, 1)

    def rrf(_rows: slice) -> _Contribution:
        return lambda _name, w, _users, ranks: (w.weight / (rrf_k + ranks + 1.0)).astype(np.float32)

    return _fuse_blocks(lists, k, weights, rrf, allowed, seen, n_items, rrf_k)


#: what a channel's candidate adds to its fused score: (channel name, its ChannelWeight,
#: int64[m] rows within the block, int64[m] 0-based ranks) -> float32[m]
_Contribution = Callable[[str, ChannelWeight, np.ndarray, np.ndarray], np.ndarray]


def _fuse_blocks(lists: Mapping[str, Candidates], k: int, weights: Mapping[str, ChannelWeight],
                 contribution: Callable[[slice], _Contribution], allowed: np.ndarray | None,
                 seen: Sequence[np.ndarray] | None, n_items: int,
                 rrf_k: float | None = None) -> FusedCandidates:
    """:func:`fuse`'s rule with the per-candidate contribution given by ``contribution(rows)``
    for each block ``rows`` of users (RRF for :func:`fuse`, a learned table for
    :class:`LearnedFusion`). ``rrf_k`` is recorded for explanations (None: not RRF, and
    then each candidate's per-channel contributions are recorded instead)."""
    names = list(lists)
    n = lists[names[0]].ids.shape[0]
    record = rrf_k is None  # RRF's contributions follow from the ranks: nothing to record
    # users per dense block: the block is n_block x n_items float32 cells
    block = max(1, _BLOCK_CELLS // n_items)
    parts = [_fuse_block({nm: c.row_slice(slice(s, s + block)) for nm, c in lists.items()},
                         k, weights, contribution(slice(s, s + block)), allowed,
                         None if seen is None else seen[s:s + block], n_items, record)
             for s in range(0, n, block)] or [
        _fuse_block(lists, k, weights, contribution(slice(0, 0)), allowed, seen, n_items,
                    record)]
    return FusedCandidates(
        np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), names,
        np.concatenate([p[2] for p in parts]), np.concatenate([p[3] for p in parts]),
        [lists[nm].evidence_kind for nm in names], [lists[nm].evidence_text for nm in names],
        np.array([weights.get(nm, ChannelWeight()).weight for nm in names], np.float64),
        None if rrf_k is None else float(rrf_k),
        np.concatenate([p[4] for p in parts]) if record else None)


#: cells of the dense [users, items] fusion block (16M float32 = 64 MB)
_BLOCK_CELLS = 1 << 24


def _fuse_block(lists, k, weights, contribution: _Contribution, allowed, seen, n_items,
                record: bool = False):
    """Fuse one block of users on a dense [n, n_items] score grid (scatter, then top-k).
    Returns (ids, scores, ranks, evidence, contributions float32[n, k, C] if ``record``
    else None)."""
    names = list(lists)
    n = lists[names[0]].ids.shape[0]
    flat_size = n * n_items
    score = np.zeros(flat_size, np.float32)
    proposed = np.zeros(flat_size, bool)
    guaranteed = []  # flat cells at a guaranteed position of some channel
    # (keys, ranks, candidates, kc, contribution values if recorded) per channel
    keys_per_channel: list[tuple[np.ndarray, np.ndarray, Candidates, int,
                                 np.ndarray | None]] = []
    for name in names:
        cand = lists[name]
        w = weights.get(name, ChannelWeight())
        kc = cand.ids.shape[1] if w.quota is None else min(w.quota, cand.ids.shape[1])
        ids = cand.ids[:, :kc]
        keep = (ids >= 0) & (ids < n_items) & (w.weight > 0)
        rows, ranks = np.nonzero(keep)
        keys = rows.astype(np.int64) * n_items + ids[keep]
        value = contribution(name, w, rows, ranks)
        keys_per_channel.append((keys, ranks.astype(np.int32), cand, kc,
                                 value if record else None))
        # one channel lists an item at most once, so a plain fancy-index add is exact
        score[keys] += value
        proposed[keys] = True
        guaranteed.append(keys[ranks < w.min_slots])
    score = score.reshape(n, n_items)
    select = np.where(proposed.reshape(n, n_items), score, -np.inf).astype(np.float32)
    if allowed is not None:
        select[:, ~fit_mask(allowed, n_items)] = -np.inf
    if seen is not None and n:
        lengths = np.fromiter((len(x) for x in seen), np.int64, n)
        cols = (np.concatenate([np.asarray(x, np.int64) for x in seen]) if lengths.sum()
                else np.zeros(0, np.int64))
        rows = np.repeat(np.arange(n), lengths)
        inside = cols < n_items
        select[rows[inside], cols[inside]] = -np.inf
    # membership: guaranteed candidates first (select is scratch: it is overwritten here)
    chosen = topk_first_tier(select, np.concatenate(guaranteed), k)
    valid = chosen >= 0
    safe = np.maximum(chosen, 0)
    fused_score = np.where(valid, np.take_along_axis(score, safe, 1), -np.inf).astype(np.float32)
    # order within the list is by fused score alone (guarantees decide membership, not order)
    order = np.lexsort((np.where(valid, chosen, n_items), -fused_score), axis=1)
    ids = np.take_along_axis(chosen, order, 1).astype(np.int32)
    fused_score = np.take_along_axis(fused_score, order, 1)
    valid = ids >= 0
    out_keys = np.arange(n, dtype=np.int64)[:, None] * n_items + np.maximum(ids, 0)
    C = len(names)
    ranks_out = np.full((n, ids.shape[1], C), -1, np.int32)
    evidence_out = np.full((n, ids.shape[1], C), -1, np.int32)
    contrib_out = np.zeros((n, ids.shape[1], C), np.float32) if record else None
    lookup = np.full(flat_size, -1, np.int32)
    for c, (keys, ranks, cand, kc, recorded) in enumerate(keys_per_channel):
        lookup[keys] = ranks
        r = np.where(valid, lookup[out_keys], -1)
        ranks_out[:, :, c] = r
        if cand.evidence is not None:
            ev = cand.evidence[:, :kc]
            rows = np.broadcast_to(np.arange(n)[:, None], r.shape)
            evidence_out[:, :, c] = np.where(r >= 0, ev[rows, np.maximum(r, 0)], -1)
        if contrib_out is not None and recorded is not None and kc > 0:
            # the value each candidate got from this channel, by (row, its rank there)
            by_rank = np.zeros((n, kc), np.float32)
            by_rank[keys // n_items, ranks] = recorded
            rows = np.broadcast_to(np.arange(n)[:, None], r.shape)
            contrib_out[:, :, c] = np.where(r >= 0, by_rank[rows, np.maximum(r, 0)], 0.0)
        lookup[keys] = -1
    return ids, fused_score, ranks_out, evidence_out, contrib_out



# ---- learned fusion -------------------------------------------------------------------------

#: format of a saved :class:`LearnedFusion` (``params.json`` + ``table.npz``); format 1
#: (before ``base``) is read as ``base = "learned"``, format 2 (before ``score_weights``)
#: as having none
LEARNED_FORMAT = 3
#: what fills a :class:`LearnedFusion`'s list after the guard's prefix
LEARNED_BASES = ("learned", "rrf", "score")


def standardised_scores(scores: np.ndarray) -> np.ndarray:
    """float32[n, k]: each row of a channel's list scores ``scores`` float32[n, k] (best
    first, -inf padding) standardised over its finite entries (mean 0, s.d. 1), then shifted
    so that the row's lowest is 0.

    What the learned fusion's score base adds per channel: scores of different channels are
    on different scales (cosines, logits, counts), and their spread differs per user; the
    standardised score keeps how far apart a user's candidates are *within* a channel. The
    shift makes "not proposed" (0) equal the channel's last candidate. Padding, and rows
    with fewer than two finite scores or all equal, give 0 (no information).
    """
    scores = np.asarray(scores, np.float64)
    finite = np.isfinite(scores)
    count = finite.sum(axis=1, keepdims=True)
    values = np.where(finite, scores, 0.0)
    mean = values.sum(axis=1, keepdims=True) / np.maximum(count, 1)
    spread = np.sqrt((np.where(finite, values - mean, 0.0) ** 2).sum(axis=1, keepdims=True)
                     / np.maximum(count, 1))
    informative = (count >= 2) & (spread > 0)
    z = np.where(finite & informative, (values - mean) / np.where(informative, spread, 1.0), 0.0)
    lowest = np.where(finite, z, np.inf).min(axis=1, keepdims=True, initial=np.inf)
    shifted = np.where(finite & informative, z - np.where(np.isfinite(lowest), lowest, 0.0), 0.0)
    return shifted.astype(np.float32)


@dataclass
class LearnedFusion:
    """Fusion by a table learned on the validation split, guarded by its best channel.

    A candidate's fused score is the float32 sum, over the channels that propose it, of
    ``table[h, c, min(r, R - 1)]`` (channel ``c``, 0-based rank ``r``, user history-length
    bucket ``h``): RRF's rule with a learned contribution per (bucket, channel, rank) instead
    of ``weight / (rrf_k + r + 1)``. :func:`llmrecall.fusion_learn.fit_learned_fusion` fits
    it and chooses the guard.

    The guard: the ``reference`` channel's first ``prefix`` candidates come first, in that
    channel's order, then the ``base`` order fills the list. Their score carries a bonus
    ``step * (prefix - r)`` with ``step`` larger than twice any base sum, so the rule above
    (score descending) produces exactly that order. ``prefix = 0``: the base list alone;
    ``prefix >= k``: the reference channel's list.

    The base is the learned table (``base = "learned"``) or, where the guard found the
    config's own weighted RRF better on the validation users, RRF itself (``base =
    "rrf"``: ``weight / (rrf_k + r + 1)`` with the caller's weights, as :func:`fuse` scores
    it), or, where it was offered and found better, the score base (``base = "score"``:
    ``score_weights[c] * standardised_scores(...)`` of the channel's own scores, the weights
    learned on validation; it reads the lists' scores, not only their ranks). Either way only the
    channels the model was fitted with are fused: the guard chose on their lists.

    Attributes:
        channels: channel names, the order of ``table``'s axis 1.
        table: float32[H, C, R] contribution of a candidate by bucket, channel and rank
            (relative to the channel not proposing it, which adds nothing).
        length_edges: int64[H - 1] ascending; a user with history length ``n`` is in bucket
            ``searchsorted(length_edges, n, side="right")``.
        reference: the guard's channel (None: no guard).
        prefix: how many of the reference channel's first candidates lead the list.
        step: the bonus step (see above).
        report: the fit's validation numbers (JSON-ready), kept for reading, not used here.
        base: one of :data:`LEARNED_BASES`, what orders the list after the prefix.
        rrf_k: RRF's damping constant for ``base = "rrf"``.
        score_weights: float32[C] >= 0, the score base's weight per channel (None: the
            score base was not fitted; ``base = "score"`` needs it).
        score_widths: int64[C], each channel's list length at the fit: the score base
            standardises a channel's scores over that many first candidates, so a longer
            list (a service request for more candidates) is scaled as the fit saw it.
    """

    channels: list[str]
    table: np.ndarray
    length_edges: np.ndarray
    reference: str | None = None
    prefix: int = 0
    step: float = 0.0
    report: dict = field(default_factory=dict)
    base: str = "learned"
    rrf_k: float = 60.0
    score_weights: np.ndarray | None = None
    score_widths: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.base not in LEARNED_BASES:
            raise ValueError(f"LearnedFusion base {self.base!r}: expected one of {LEARNED_BASES}")
        if self.base == "score" and any(
                a is None or len(a) != len(self.channels)
                for a in (self.score_weights, self.score_widths)):
            raise ValueError("LearnedFusion base 'score' needs one score weight and list width "
                             "per channel")

    def buckets(self, history_lengths: np.ndarray) -> np.ndarray:
        """int64[n] history-length bucket of each user."""
        return np.searchsorted(self.length_edges, np.asarray(history_lengths), side="right")

    def fuse(self, lists: Mapping[str, Candidates | np.ndarray], k: int, *,
             history_lengths: np.ndarray,
             weights: Mapping[str, ChannelWeight] | None = None,
             allowed: np.ndarray | None = None, seen: Sequence[np.ndarray] | None = None,
             n_items: int | None = None) -> FusedCandidates:
        """The top-``k`` fused list of each user, as :func:`fuse` builds it (eligibility,
        ``quota`` and ``min_slots`` of ``weights``, order by score then item id), with the
        learned contribution and the guard's bonus as the score.

        Args:
            lists: channel name -> :class:`Candidates` (or int32[n, k_c] ids) for n users;
                channels the model was not fitted with are left out. With ``base =
                "score"`` the candidates' own scores are read (ids alone are refused).
            history_lengths: int[n] each user's history length (its bucket's table row).
            weights, allowed, seen, n_items: as for :func:`fuse` (with the learned base
                ``weight`` itself is not used: the table replaces it; ``weight = 0`` still
                leaves a channel out).
        Returns:
            :class:`FusedCandidates` whose ``channels`` are the known channels of ``lists``.
        """
        known: dict[str, Candidates] = {
            nm: c if isinstance(c, Candidates) else _ids_only(c)
            for nm, c in lists.items() if nm in self.channels}
        if not known:
            raise ValueError("LearnedFusion.fuse() got none of the channels it was fitted with: "
                             f"{self.channels}")
        names = list(known)
        n = known[names[0]].ids.shape[0]
        lengths = np.asarray(history_lengths)
        if lengths.shape != (n,):
            raise ValueError(f"history_lengths has shape {lengths.shape}, expected ({n},)")
        if n_items is None:
            n_items = max(int(known[nm].ids.max(initial=-1)) for nm in names) + 1
        n_items = max(n_items, 1)
        bucket = self.buckets(lengths)
        index = {nm: self.channels.index(nm) for nm in names}
        width = self.table.shape[2]
        step = self.step
        standardised: dict[str, np.ndarray] = {}
        if self.base == "score":
            if any(not isinstance(lists[nm], Candidates) for nm in names):
                raise ValueError("LearnedFusion base 'score' reads the channels' scores: pass "
                                 "Candidates, not ids")
            assert self.score_weights is not None  # __post_init__
            assert self.score_widths is not None
            standardised = {nm: _standardised_within(known[nm].scores,
                                                     int(self.score_widths[index[nm]]))
                            for nm in names}
            # the prefix's bonus step must exceed twice any base sum of this call
            largest = sum(float(self.score_weights[index[nm]]) * float(z.max(initial=0.0))
                          for nm, z in standardised.items())
            step = max(step, 2.0 * largest + 1.0)

        def learned(rows: slice) -> _Contribution:
            block_bucket = bucket[rows]
            block_start = rows.start or 0

            def contribution(name: str, w: ChannelWeight, users: np.ndarray,
                             ranks: np.ndarray) -> np.ndarray:
                if self.base == "rrf":
                    value = (w.weight / (self.rrf_k + ranks + 1.0)).astype(np.float32)
                elif self.base == "score":
                    assert self.score_weights is not None
                    value = (self.score_weights[index[name]]
                             * standardised[name][block_start + users, ranks])
                else:
                    value = self.table[block_bucket[users], index[name],
                                       np.minimum(ranks, width - 1)]
                if name == self.reference and self.prefix > 0:
                    value = value + np.where(ranks < self.prefix,
                                             step * (self.prefix - ranks), 0.0)
                return value.astype(np.float32)
            return contribution

        return _fuse_blocks(known, k, weights or {}, learned, allowed, seen, n_items)

    # ---- persistence: params.json + table.npz, no pickle ------------------------------------

    def save(self, directory: str | Path) -> None:
        """Write ``params.json`` and ``table.npz`` under ``directory`` (created)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        params = {"format": LEARNED_FORMAT, "kind": "learned", "channels": self.channels,
                  "reference": self.reference, "prefix": self.prefix, "step": self.step,
                  "base": self.base, "rrf_k": self.rrf_k,
                  "score_weights": (None if self.score_weights is None
                                    else [float(x) for x in self.score_weights]),
                  "score_widths": (None if self.score_widths is None
                                   else [int(x) for x in self.score_widths]),
                  "report": self.report}
        (directory / "params.json").write_text(json.dumps(params, indent=2))
        np.savez(directory / "table.npz", table=self.table.astype(np.float32),
                 length_edges=self.length_edges.astype(np.int64))

    @classmethod
    def load(cls, directory: str | Path) -> LearnedFusion:
        """Read what :meth:`save` wrote."""
        directory = Path(directory)
        params = json.loads((directory / "params.json").read_text())
        if params.get("format") not in (1, 2, LEARNED_FORMAT):
            raise ValueError(f"{directory}: learned fusion format {params.get('format')!r}, "
                             f"expected {LEARNED_FORMAT}")
        with np.load(directory / "table.npz", allow_pickle=False) as npz:
            table, edges = npz["table"], npz["length_edges"]
        weights, widths = params.get("score_weights"), params.get("score_widths")
        return cls(list(params["channels"]), table, edges, params["reference"],
                   int(params["prefix"]), float(params["step"]), params.get("report", {}),
                   str(params.get("base", "learned")), float(params.get("rrf_k", 60.0)),
                   None if weights is None else np.asarray(weights, np.float32),
                   None if widths is None else np.asarray(widths, np.int64))


def _standardised_within(scores: np.ndarray, width: int) -> np.ndarray:
    """float32[n, k]: :func:`standardised_scores` of the first ``width`` columns of
    ``scores`` float32[n, k]; a candidate past them gets the lowest, 0."""
    out = np.zeros(scores.shape, np.float32)
    out[:, :width] = standardised_scores(scores[:, :width])
    return out


def _ids_only(ids: np.ndarray) -> Candidates:
    """Candidates with rank-derived scores from ids int32[n, k] (-1 padded)."""
    ids = np.asarray(ids, np.int32)
    ranks = np.broadcast_to(-np.arange(ids.shape[1], dtype=np.float32), ids.shape)
    return Candidates(ids, np.where(ids >= 0, ranks, -np.inf).astype(np.float32))
