"""Fit a :class:`~llmrecall.fusion.LearnedFusion` on the validation split, and guard it.

**The model.** For each validation user, the candidates are the union of the channels'
lists. A candidate's score is a sum over the channels that propose it of a learned function
of its rank there, ``A[c, bucket(r)] + s[c] * log(1 + r)`` (rank buckets
:data:`RANK_EDGES`; the log term orders candidates within a bucket), plus the same terms
again per history-length bucket of the user (shrunk towards the shared ones by the L2
penalty). The parameters maximise the likelihood of the user's validation target under a
softmax over the user's candidate union (a conditional logit: it learns to rank the target
among exactly the candidates fusion chooses from), with an L2 penalty, by L-BFGS (scipy).
Unions above :data:`MAX_ROWS_PER_USER` candidates are subsampled, with the usual
log(1 / sampling rate) correction on the sampled negatives; at most :data:`MAX_FIT_USERS`
users are used per fit. The fitted function is tabulated per (bucket, channel, rank), so
applying it is RRF's scatter with a table lookup (:meth:`LearnedFusion.fuse`).

**The guard.** The validation users are split into :data:`FOLDS` folds; each fold's learned
lists come from a model fitted on the other folds (out-of-fold). Candidate answers are "the
first ``m`` candidates of channel ``c``, then the learned list" for every channel ``c`` and
``m`` in :data:`PREFIXES` and ``k`` (``m = 0``: the learned list; ``m = k``: channel ``c``
alone). On the out-of-fold lists, the guard keeps the answer with the highest recall summed
over the cut-offs among those that beat the best single channel at **every** cut-off (the
best channel may differ per cut-off) by at least :data:`GUARD_Z` standard errors of the
paired per-user difference; if none does, among those that beat the reference channel (the
best by summed recall) so at every cut-off, which ``m = k`` always does (it *is* the
reference: difference and standard error 0). So, on the validation users, out of fold, the
fused list is by construction never below that reference channel at any cut-off, and where
it differs from it, it is ahead by more than the validation set's noise: a gain of a user or
two on validation is no reason to expect one on test. The final table is refitted on all
validation users.

**The score base** (``score_base=True``). Ranks say nothing about how far apart two
candidates are; scores do. Offered, the guard also considers lists ordered by
``sum_c w[c] * z[c]``, ``z[c]`` the candidate's standardised score in channel ``c``'s list
(:func:`~llmrecall.fusion.standardised_scores`; 0 where ``c`` does not propose it) and
``w >= 0`` fitted by the same conditional logit, out of fold for the guard's lists. It
wins where channels are complementary in ways a rank table cannot express; under
``cold-items`` textcf's and cf_transfer's scores blend to more than either list
(docs/benchmarks.md §3b).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import scipy.sparse as sp
from scipy.optimize import minimize

from llmrecall.channels.base import Candidates
from llmrecall.fusion import ChannelWeight, LearnedFusion, standardised_scores
from llmrecall.tune.fastfuse import fused_ids

#: cut-offs the guard compares at
GUARD_KS = (10, 20, 50, 100, 200)
#: upper edges of the rank buckets: bucket b holds ranks in [RANK_EDGES[b-1], RANK_EDGES[b])
RANK_EDGES = np.array([1, 2, 3, 5, 10, 20, 50, 100, 200, 400], np.int64)
#: history-length buckets (edges at the validation users' length terciles)
LENGTH_BUCKETS = 3
#: how many of the guard channel's first candidates may lead the list (plus ``k``: all)
PREFIXES = (0, 5, 10, 20, 50, 100, 150)
#: standard errors (of the paired per-user difference, out of fold) by which an answer must
#: beat the best channel at a cut-off: a validation gain smaller than the validation set's
#: own noise is not evidence that the learned list will hold its place on test
GUARD_Z = 1.0
#: folds of the out-of-fold guard lists
FOLDS = 2
#: users per fit (a random subset above this)
MAX_FIT_USERS = 3000
#: candidates per user in a fit (the target plus a uniform sample of the others above this)
MAX_ROWS_PER_USER = 200
#: held-out users fused at once for the out-of-fold lists (bounds the fit's memory)
OOF_CHUNK = 2048
#: L2 penalty on the shared terms, and on the per-length-bucket terms
L2_SHARED, L2_BUCKET = 1.0, 4.0


def fit_learned_fusion(lists: Mapping[str, np.ndarray | Candidates], targets: sp.csr_matrix,
                       history_lengths: np.ndarray, n_items: int, *, k: int = 200,
                       ks: Sequence[int] = GUARD_KS, seed: int = 0,
                       rrf_weights: Mapping[str, ChannelWeight] | None = None,
                       rrf_k: float = 60.0, score_base: bool = False) -> LearnedFusion:
    """Learn fusion from validation lists and choose its guard (see the module text).

    Args:
        lists: channel name -> int32[u, k_c] candidate ids (or :class:`Candidates`) of the u
            validation users, best first, -1 padded, masked as the task masks them.
        targets: CSR [u, n_items]; row i is user i's validation targets (at least one).
        history_lengths: int[u] each user's history length when recalled.
        n_items: catalog size.
        k: length of the fused list the guard checks (cut-offs above it are dropped).
        seed: seed of the folds and samples (the fit is deterministic given it).
        rrf_weights: the config's channel weights; given, the config's weighted RRF
            (``rrf_k``) of the same lists is a second base the guard may choose instead of
            the learned list (it has no fitted parameters, so its validation lists are
            already out of sample). None: the learned base only.
        score_base: also offer the guard the score base (a weighted sum of the channels'
            standardised scores, :func:`~llmrecall.fusion.standardised_scores`; the weights
            fitted as the table is, out of fold for the guard's lists). Needs ``lists`` as
            :class:`Candidates` carrying the channels' own scores.
    Returns:
        the fitted :class:`LearnedFusion`; its ``report`` holds the out-of-fold recalls of
        every channel, of the learned list and of the guarded list at each cut-off.
    """
    names = list(lists)
    if not names:
        raise ValueError("fit_learned_fusion() needs at least one channel's lists")
    ids = {nm: np.asarray(c.ids if isinstance(c, Candidates) else c, np.int32)
           for nm, c in lists.items()}
    if score_base and any(not isinstance(c, Candidates) for c in lists.values()):
        raise ValueError("the score base needs the channels' scores: pass Candidates, not ids")
    scores = {nm: np.asarray(c.scores, np.float32) for nm, c in lists.items()
              if isinstance(c, Candidates)} if score_base else {}
    # standardised once over all rows (each row is standardised alone, so a fold's rows are
    # the same as they would be alone)
    standardised = {nm: standardised_scores(a) for nm, a in scores.items()}
    score_widths = np.array([a.shape[1] for a in ids.values()], np.int64)
    targets = sp.csr_matrix(targets)
    u = targets.shape[0]
    lengths = np.asarray(history_lengths, np.int64)
    if lengths.shape != (u,) or any(a.shape[0] != u for a in ids.values()):
        raise ValueError("lists, targets and history_lengths must have one row per user")
    ks = sorted(c for c in ks if c <= k) or [k]
    width = max(a.shape[1] for a in ids.values())
    edges = np.unique(np.quantile(lengths, np.linspace(0, 1, LENGTH_BUCKETS + 1)[1:-1])
                      .astype(np.int64)) if u else np.zeros(0, np.int64)
    rng = np.random.default_rng(seed)
    # the score base draws its own samples: offering it leaves the learned table unchanged
    score_rng = np.random.default_rng([seed, 1])
    fold = rng.permutation(u) % FOLDS
    learned_oof = np.full((u, k), -1, np.int32)
    score_oof = np.full((u, k), -1, np.int32)
    for f in range(FOLDS):
        train, held = np.flatnonzero(fold != f), np.flatnonzero(fold == f)
        table = _fit_table(ids, targets, lengths, edges, train, n_items, width, rng)
        fold_models = [(LearnedFusion(names, table, edges), learned_oof)]
        if score_base:
            weights = _fit_score_weights(ids, standardised, targets, train, n_items,
                                         score_rng)
            fold_models.append((LearnedFusion(names, table, edges, base="score",
                                              score_weights=weights,
                                              score_widths=score_widths), score_oof))
        # in chunks: fuse() also returns every candidate's ranks and contributions (for
        # explanations), u x k x channels arrays the guard does not read
        for fold_model, out in fold_models:
            for s in range(0, len(held), OOF_CHUNK):
                rows = held[s:s + OOF_CHUNK]
                out[rows] = fold_model.fuse(
                    {nm: (Candidates(a[rows], scores[nm][rows]) if score_base else a[rows])
                     for nm, a in ids.items()}, k, history_lengths=lengths[rows],
                    n_items=n_items).ids
    table = _fit_table(ids, targets, lengths, edges, np.arange(u), n_items, width, rng)
    score_weights = (_fit_score_weights(ids, standardised, targets, np.arange(u), n_items,
                                         score_rng) if score_base else None)
    bases = {"learned": learned_oof}
    if rrf_weights is not None:
        bases["rrf"] = fused_ids(ids, k, n_items, weights=rrf_weights, rrf_k=rrf_k)
    if score_base:
        bases["score"] = score_oof
    reference, prefix, base, report = _guard(bases, ids, targets, n_items, k, ks)
    if score_weights is not None:
        report["score_weights"] = {nm: round(float(w), 6)
                                   for nm, w in zip(names, score_weights, strict=True)}
    # the bonus step exceeds twice the largest possible base sum (see LearnedFusion; the
    # score base's sums depend on the scores, so it sets its step per call)
    if base == "rrf":
        assert rrf_weights is not None
        largest = sum(max(rrf_weights.get(nm, ChannelWeight()).weight, 0.0)
                      for nm in names) / (rrf_k + 1.0)
    elif base == "score":
        largest = 0.0  # its sums depend on the scores: it sets its step per call
    else:
        largest = float(np.abs(table).max(axis=2).sum(axis=1).max(initial=0.0))
    return LearnedFusion(names, table, edges, reference, prefix, 2.0 * largest + 1.0, report,
                         base, float(rrf_k), score_weights,
                         score_widths if score_base else None)


# ---- the model ------------------------------------------------------------------------------

def _rank_bucket(ranks: np.ndarray) -> np.ndarray:
    """Rank bucket of 0-based ranks (``len(RANK_EDGES)`` for ranks past the last edge)."""
    return np.searchsorted(RANK_EDGES, ranks, side="right")


_ABSENT = len(RANK_EDGES) + 1  # the bucket index of "not proposed" (its terms stay 0)
_NB = _ABSENT + 1


def _candidate_rows(ids: Mapping[str, np.ndarray], users: np.ndarray, n_items: int,
                    ) -> tuple[np.ndarray, np.ndarray]:
    """The union of the channels' candidates of ``users``: (keys int64[N] = row * n_items +
    item, sorted; ranks int32[N, C], -1 where the channel does not propose it)."""
    n = len(users)
    parts, ranks_parts = [], []
    for a in ids.values():
        sub = a[users]
        keep = (sub >= 0) & (sub < n_items)
        rows, ranks = np.nonzero(keep)
        parts.append(rows.astype(np.int64) * n_items + sub[keep])
        ranks_parts.append(ranks.astype(np.int32))
    keys, inverse = np.unique(np.concatenate(parts) if parts else np.zeros(0, np.int64),
                              return_inverse=True)
    ranks_out = np.full((len(keys), len(parts)), -1, np.int32)
    start = 0
    for c, r in enumerate(ranks_parts):
        ranks_out[inverse[start:start + len(r)], c] = r
        start += len(r)
    del n
    return keys, ranks_out


def _is_target(keys: np.ndarray, targets: sp.csr_matrix, n_items: int) -> np.ndarray:
    """bool per key (row * n_items + item): is the item one of row's targets."""
    t = targets.tocsr()
    t_keys = np.repeat(np.arange(t.shape[0], dtype=np.int64), np.diff(t.indptr)) * n_items \
        + t.indices
    t_keys.sort()
    pos = np.minimum(np.searchsorted(t_keys, keys), max(len(t_keys) - 1, 0))
    return (t_keys[pos] == keys) if len(t_keys) else np.zeros(len(keys), bool)


def _training_rows(ids: Mapping[str, np.ndarray], targets: sp.csr_matrix, users: np.ndarray,
                   n_items: int, rng: np.random.Generator,
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The candidate rows a fit on ``users`` (indices into the rows; at most
    :data:`MAX_FIT_USERS` of them, drawn with ``rng``) learns from: ``(users, row, ranks,
    label, offset)`` with ``row`` int64[N] indices into the returned ``users`` (contiguous
    per user), ``ranks`` int32[N, C] (-1: not proposed by that channel), ``label`` bool[N]
    (a validation target) and ``offset`` float64[N], the log(1 / sampling rate) of a
    subsampled negative. Only users with a target among their candidates are kept (a softmax
    learns nothing from the others); unions above :data:`MAX_ROWS_PER_USER` are subsampled,
    the targets always kept."""
    if len(users) > MAX_FIT_USERS:
        users = np.sort(rng.choice(users, MAX_FIT_USERS, replace=False))
    keys, ranks = _candidate_rows(ids, users, n_items)
    row = keys // n_items
    label = _is_target(users[row].astype(np.int64) * n_items + keys % n_items, targets, n_items)
    has = np.bincount(row[label], minlength=len(users)) > 0
    keep = has[row]
    row, ranks, label = row[keep], ranks[keep], label[keep]
    # subsample the negatives of large unions; the target (label) is always kept
    order = np.lexsort((np.where(label, -1.0, rng.random(len(row))), row))
    row, ranks, label = row[order], ranks[order], label[order]
    size = np.bincount(row, minlength=len(users))
    start = np.concatenate([[0], np.cumsum(size)[:-1]])
    place = np.arange(len(row)) - start[row]
    n_pos = np.bincount(row[label], minlength=len(users))
    kept = place < np.maximum(MAX_ROWS_PER_USER, n_pos[row] + 1)
    kept_neg = np.bincount(row[kept & ~label], minlength=len(users))
    all_neg = size - n_pos
    offset = np.where(label, 0.0, np.log(np.maximum(all_neg, 1) / np.maximum(kept_neg, 1))[row])
    return users, row[kept], ranks[kept], label[kept], offset[kept]


def _conditional_logit(design: sp.csr_matrix, offset: np.ndarray, row: np.ndarray,
                       label: np.ndarray, penalty: np.ndarray,
                       bounds: list[tuple[float | None, float | None]] | None = None,
                       ) -> np.ndarray:
    """Parameters float64[P] maximising the likelihood of each user's targets under a
    softmax over that user's candidate rows (``row`` contiguous per user, every user with at
    least one ``label``), logits ``design @ theta + offset`` (``design`` [N, P]), minus
    ``penalty * theta**2 / 2``; by L-BFGS-B within ``bounds``."""
    seg_start = np.flatnonzero(np.r_[True, row[1:] != row[:-1]])
    seg_of = np.cumsum(np.r_[True, row[1:] != row[:-1]]) - 1
    pos_weight = np.where(label, 1.0 / np.bincount(seg_of[label])[seg_of], 0.0)
    design_t = design.T.tocsr()

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        z = design @ theta + offset
        zmax = np.maximum.reduceat(z, seg_start)
        e = np.exp(z - zmax[seg_of])
        total = np.add.reduceat(e, seg_start)
        value = float(np.sum(np.log(total) + zmax) - np.sum(pos_weight * z))
        g = e / total[seg_of] - pos_weight  # d value / d z
        # parameters no candidate uses keep gradient 0 and stay at their start, 0
        value += 0.5 * float(np.sum(penalty * theta * theta))
        return value, design_t @ g + penalty * theta

    result = minimize(loss, np.zeros(design.shape[1]), jac=True, method="L-BFGS-B",
                      bounds=bounds, options={"maxiter": 150})
    return np.asarray(result.x, np.float64)


def _fit_table(ids: Mapping[str, np.ndarray], targets: sp.csr_matrix, lengths: np.ndarray,
               edges: np.ndarray, users: np.ndarray, n_items: int, width: int,
               rng: np.random.Generator) -> np.ndarray:
    """Fit the model on ``users`` (indices into the rows); returns table float32[H, C, width]."""
    C, H = len(ids), len(edges) + 1
    users, row, ranks, label, offset = _training_rows(ids, targets, users, n_items, rng)
    if not len(row):  # no validation target among any candidate: nothing to learn
        return np.zeros((H, C, width), np.float32)
    design, penalty, sizes = _table_design(ranks, lengths[users[row]], edges)
    theta = _conditional_logit(design, offset, row, label, penalty)
    return _tabulated(theta, sizes, C, H, width)


def _table_design(ranks: np.ndarray, lengths: np.ndarray, edges: np.ndarray,
                  ) -> tuple[sp.csr_matrix, np.ndarray, tuple[int, ...]]:
    """The table's design matrix [N, P] for candidate rows with ``ranks`` int32[N, C] and
    their users' history ``lengths`` int64[N], its L2 penalty float64[P] and block sizes."""
    C, H = ranks.shape[1], len(edges) + 1
    h = np.searchsorted(edges, lengths, side="right")
    present = ranks >= 0
    bucket = np.where(present, _rank_bucket(np.maximum(ranks, 0)), _ABSENT)
    logr = np.where(present, np.log1p(np.maximum(ranks, 0)), 0.0)
    # per proposing channel, its rank bucket's shared and per-length-bucket indicator, and
    # log(1 + rank) on its shared and per-length-bucket slope
    sizes = (C * _NB, H * C * _NB, C, H * C)
    base = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    r_idx, c_idx = np.nonzero(present)
    b, hh = bucket[r_idx, c_idx], h[r_idx]
    lg = logr[r_idx, c_idx]
    design = sp.csr_matrix(
        (np.concatenate([np.ones(2 * len(r_idx)), lg, lg]),
         (np.tile(r_idx, 4),
          np.concatenate([base[0] + c_idx * _NB + b, base[1] + (hh * C + c_idx) * _NB + b,
                          base[2] + c_idx, base[3] + hh * C + c_idx]))),
        shape=(len(ranks), sum(sizes)))
    penalty = np.concatenate([np.full(sizes[0], L2_SHARED), np.full(sizes[1], L2_BUCKET),
                              np.full(sizes[2], L2_SHARED), np.full(sizes[3], L2_BUCKET)])
    return design, penalty, sizes


def _tabulated(theta: np.ndarray, sizes: tuple[int, ...], C: int, H: int,
               width: int) -> np.ndarray:
    """The fitted table float32[H, C, width] from the table's parameters ``theta``."""
    base = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    a, ah, s, sh = np.split(theta[:sum(sizes)], base[1:])
    r = np.arange(width)
    rb, lr = _rank_bucket(r), np.log1p(r)
    table = (a.reshape(C, _NB)[None, :, rb] + ah.reshape(H, C, _NB)[:, :, rb]
             + (s[None, :, None] + sh.reshape(H, C)[:, :, None]) * lr[None, None, :])
    return table.astype(np.float32)


def _fit_score_weights(ids: Mapping[str, np.ndarray], standardised: Mapping[str, np.ndarray],
                       targets: sp.csr_matrix, users: np.ndarray, n_items: int,
                       rng: np.random.Generator) -> np.ndarray:
    """The score base's weights float32[C] >= 0, fitted on ``users``: a candidate's logit is
    ``sum_c weight[c] * z[c]``, ``z[c]`` its standardised score in channel ``c``'s list
    (``standardised[c]``, float32[u, k_c] from :func:`~llmrecall.fusion.standardised_scores`
    of all rows; 0 where ``c`` does not propose it), by
    the table's likelihood. C parameters, not the table's hundreds: a joint table + score
    model was tried and fitted the validation folds no better (docs/benchmarks.md §3b)."""
    C = len(ids)
    users, row, ranks, label, offset = _training_rows(ids, targets, users, n_items, rng)
    if not len(row):
        return np.zeros(C, np.float32)
    z = np.zeros((len(row), C))
    for c, name in enumerate(ids):
        present = ranks[:, c] >= 0
        z[present, c] = standardised[name][users[row[present]], ranks[present, c]]
    theta = _conditional_logit(sp.csr_matrix(z), offset, row, label, np.full(C, L2_SHARED),
                               bounds=[(0.0, None)] * C)
    return theta.astype(np.float32)


# ---- the guard ------------------------------------------------------------------------------

def _guard(bases: Mapping[str, np.ndarray], ids: Mapping[str, np.ndarray],
           targets: sp.csr_matrix, n_items: int, k: int, ks: Sequence[int],
           z: float | None = None) -> tuple[str | None, int, str, dict]:
    """Choose (reference channel, prefix, base) on the validation users: ``bases`` maps a
    base's name ("learned": the out-of-fold learned lists; "rrf": the config's RRF;
    "score": the out-of-fold score-base lists) to its lists int32[u, k]; each answer is a
    channel's prefix, then one base.

    An answer passes at a cut-off when its recall exceeds the floor's (the best channel
    there) by at least ``z`` standard errors of the paired per-user difference; an answer
    that equals the floor user by user has a difference and a standard error of 0, so the
    reference channel itself (``m = k``) always passes against itself. ``z``: None reads
    :data:`GUARD_Z`.
    """
    z = GUARD_Z if z is None else float(z)
    u = targets.shape[0]
    per_user = 1.0 / np.maximum(np.diff(targets.indptr), 1)  # recall's per-user weight
    rows = np.arange(u, dtype=np.int64)[:, None] * n_items
    ks_arr = np.asarray(ks)

    def hits(lst: np.ndarray) -> np.ndarray:
        return (_is_target((rows + np.maximum(lst, 0)).ravel(), targets, n_items)
                .reshape(lst.shape) & (lst >= 0))

    def recall(found_at: np.ndarray) -> np.ndarray:  # found_at: [u, len(ks)] hit counts
        return per_user @ found_at / max(u, 1)

    refs, ref_cums, channel_found = {}, {}, {}
    for name, a in ids.items():
        ref = np.full((u, k), -1, np.int32)
        ref[:, :min(k, a.shape[1])] = a[:, :k]
        # int32 counts and places throughout (at most k): the guard's arrays are u x k
        refs[name], ref_cums[name] = ref, np.cumsum(hits(ref), axis=1, dtype=np.int32)
        channel_found[name] = ref_cums[name][:, ks_arr - 1]  # [u, len(ks)] hits at each cut
    channel_recall = {nm: recall(f) for nm, f in channel_found.items()}
    names = list(ids)
    best_at = np.argmax([channel_recall[nm] for nm in names], axis=0)  # per cut-off
    best_found = np.stack([channel_found[names[b]][:, j] for j, b in enumerate(best_at)], 1)
    best = recall(best_found)
    by_sum = max(channel_recall, key=lambda nm: float(channel_recall[nm].sum()))

    def clears(got: np.ndarray, floor_found: np.ndarray) -> np.ndarray:
        """bool[len(ks)]: ``got``'s recall is ``z`` paired standard errors above the floor."""
        diff = (got - floor_found) * per_user[:, None]  # per-user recall difference
        margin = z * diff.std(axis=0, ddof=1) / np.sqrt(u) if u > 1 else np.zeros(len(ks))
        return diff.mean(axis=0) >= margin - 1e-12

    options = []
    base_hits = {b: hits(lst) for b, lst in bases.items()}
    for base, name in ((b, nm) for b in bases for nm in names):
        learned, learned_hits = bases[base], base_hits[base]
        ref, ref_cum = refs[name], ref_cums[name]
        # each learned entry's 0-based place in this channel's list (-1: not in it)
        ref_keys = (rows + np.maximum(ref, 0))[ref >= 0]
        ref_rank = np.broadcast_to(np.arange(k, dtype=np.int32), ref.shape)[ref >= 0]
        order = np.argsort(ref_keys)
        ref_keys, ref_rank = ref_keys[order], ref_rank[order]
        l_keys = (rows + np.maximum(learned, 0)).ravel()
        at = np.minimum(np.searchsorted(ref_keys, l_keys), max(len(ref_keys) - 1, 0))
        found = (ref_keys[at] == l_keys) if len(ref_keys) else np.zeros(len(l_keys), bool)
        place = np.where(found & (learned.ravel() >= 0), ref_rank[at] if len(ref_rank) else -1,
                         -1).astype(np.int32).reshape(learned.shape)
        del ref_keys, ref_rank, order, l_keys, at, found
        for m in sorted({*(p for p in PREFIXES if p < k), k}):
            m_eff = (ref[:, :m] >= 0).sum(axis=1)  # the prefix may be shorter than m
            taken = (place >= 0) & (place < m)
            kept = ~taken
            new_place = np.cumsum(kept, axis=1, dtype=np.int32) - 1
            got = np.empty((u, len(ks)))
            for j, cut in enumerate(ks):
                head = ref_cum[:, min(cut, m) - 1] if m > 0 else np.zeros(u)
                fill = (learned_hits & kept & (new_place < (cut - m_eff)[:, None])).sum(axis=1)
                got[:, j] = head + fill
            options.append((name, m, recall(got), bool(clears(got, best_found).all()),
                            bool(clears(got, channel_found[by_sum]).all()), base))

    def pick(among) -> tuple[str, int, np.ndarray, str] | None:
        # the most recall in all; then the shortest prefix (most of the base list); then
        # the first base (the learned one)
        order = list(bases)
        chosen = max(among, key=lambda o: (float(o[2].sum()), -o[1], -order.index(o[5])),
                     default=None)
        return None if chosen is None else (*chosen[:3], chosen[5])

    picked = pick([o for o in options if o[3]])
    criterion = "every channel"
    if picked is None:
        criterion = "reference channel"
        picked = pick([o for o in options if o[0] == by_sum and o[4]])
    assert picked is not None  # m = k reproduces the reference channel exactly
    name, m, fused, base = picked
    if m >= k:
        base = next(iter(bases))  # the channel's list alone: no base is used
    base_only = {b: next(o[2] for o in options if o[1] == 0 and o[5] == b) for b in bases}

    def as_dict(r: np.ndarray) -> dict[str, float]:
        return {str(c): round(float(x), 6) for c, x in zip(ks, r, strict=True)}

    report = {
        "guard_ks": list(ks), "validation_users": int(u), "criterion": criterion,
        "margin_z": float(z), "reference": name, "prefix": int(m), "base": base,
        "out_of_fold_recall": {"fused": as_dict(fused),
                               **{b: as_dict(r) for b, r in base_only.items()},
                               "best_channel": as_dict(best),
                               **{f"channel:{nm}": as_dict(r) for nm, r in channel_recall.items()}},
    }
    return (name if m > 0 else None), int(m), base, report
