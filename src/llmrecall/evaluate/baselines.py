"""Reference points for reading metrics: a uniformly random ranking, as a seeded channel
(:class:`RandomRanking`) and as its exact expected metrics (:func:`random_ranking_metrics`)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from llmrecall.channels.base import Channel
from llmrecall.data.dataset import Dataset, Histories
from llmrecall.evaluate.metrics import DEFAULT_KS
from llmrecall.evaluate.protocols import EvalTask

#: how the report's random row is computed (kept next to it in the JSON report)
RANDOM_METHOD = ("exact expectation over uniformly random orders of each user's candidates "
                 "(analytic, no sampling)")

_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser: a well-mixed uint64 hash of each entry of ``x`` (uint64)."""
    x = x + _GOLDEN
    x = (x ^ (x >> np.uint64(30))) * _MIX1
    x = (x ^ (x >> np.uint64(27))) * _MIX2
    return x ^ (x >> np.uint64(31))


class RandomRanking(Channel):
    """Ranks items in a random order that is fixed per (seed, user).

    The score of (user, item) is a hash of (seed, user, item), so a user's list does not
    depend on the batch it is asked in. Used as the floor a channel must beat (e.g. the
    ``cold-items`` protocol compares every channel with it). Not registered as a channel
    kind: it is an evaluation reference, not a candidate source.
    """

    kind = "random-baseline"

    def __init__(self, seed: int = 0, name: str | None = None):
        super().__init__(name)
        self.seed = seed

    def fit(self, dataset: Dataset) -> RandomRanking:
        self.n_items_ = np.int64(dataset.n_items)
        return self

    def score(self, users: np.ndarray, history: Histories) -> np.ndarray:
        """float32[len(users), n_items] uniform in [0, 1)."""
        with np.errstate(over="ignore"):  # uint64 arithmetic wraps on purpose
            key = (np.uint64(self.seed) * _GOLDEN
                   + np.asarray(users, np.uint64)[:, None] * np.uint64(0x100000001B3)
                   + np.arange(int(self.n_items_), dtype=np.uint64)[None, :])
            bits = _splitmix64(_splitmix64(key))
        return ((bits >> np.uint64(40)).astype(np.float32) / np.float32(1 << 24))


def random_ranking_metrics(task: EvalTask, ks=DEFAULT_KS) -> dict[str, float]:
    """Expected metrics of a uniformly random ranking of each user's candidates, exactly.

    A user's candidates are the items of ``task.candidate_mask`` (every item when None) not in
    ``task.excluded()``: what a channel may rank for them. With C candidates, t of the user's
    |T| targets among them and L = min(K, C), over the C! equally likely orders:

    - recall@K = t L / (C |T|)
    - hr@K = 1 - S(L), where S(m) = prod_{j<m} (C - t - j) / (C - j) is the chance that
      the first m places hold no target
    - ndcg@K = (t / C) sum_{r<=L} 1 / log2(r + 1), over IDCG@K (as :func:`ranking_metrics`)
    - mrr@K = sum_{r<=L} (1 / r) S(r - 1) t / (C - r + 1)
    - coverage@K = sum_i (1 - prod_{u: i a candidate of u} (1 - L_u / C_u)) / n_items
      (users' orders independent)

    Recall, HR, NDCG and MRR are averaged over the task's users. Returns the keys of
    :func:`~llmrecall.evaluate.metrics.ranking_metrics` (``"recall@10"``, ..., ``"users"``).
    """
    ks = sorted({int(k) for k in ks})
    n_items = int(task.n_items)
    mask = (np.ones(n_items, bool) if task.candidate_mask is None
            else np.asarray(task.candidate_mask, bool))
    weights = sp.diags(mask.astype(np.float32))
    excluded = (task.excluded() @ weights).tocsr()
    excluded.eliminate_zeros()
    excluded.data[:] = 1.0
    targets = task.targets.tocsr()
    n_targets = np.diff(targets.indptr).astype(np.float64)                       # |T|
    c = float(mask.sum()) - np.diff(excluded.indptr).astype(np.float64)          # C
    t = np.asarray((targets @ weights).sum(axis=1)).ravel() - np.asarray(
        targets.multiply(excluded).sum(axis=1)).ravel()                          # t

    k_max = ks[-1]
    r = np.arange(1, k_max + 1, dtype=np.float64)                                # ranks
    inside = r[None, :] <= c[:, None]                                            # r <= C
    with np.errstate(divide="ignore", invalid="ignore"):
        # chance that place r holds the first target: S(r - 1) t / (C - r + 1)
        factor = np.where(inside, np.maximum(c[:, None] - t[:, None] - (r - 1), 0.0)
                          / (c[:, None] - (r - 1)), 1.0)
        no_hit_before = np.cumprod(np.hstack([np.ones((len(c), 1)), factor[:, :-1]]), axis=1)
        first_hit = np.where(inside, no_hit_before * t[:, None] / (c[:, None] - (r - 1)), 0.0)
        discount = 1.0 / np.log2(r + 1.0)
        dcg = np.cumsum(np.where(inside, discount, 0.0), axis=1) * (t / np.maximum(c, 1))[:, None]
        hr = np.cumsum(first_hit, axis=1)
        mrr = np.cumsum(first_hit / r, axis=1)
    ideal = np.cumsum(discount)
    out: dict[str, float] = {}
    for k in ks:
        shown = np.minimum(k, c)
        idcg = ideal[np.clip(np.minimum(n_targets, k).astype(np.int64) - 1, 0, None)]
        out[f"recall@{k}"] = float(np.mean(np.where(c > 0, t * shown / np.maximum(c, 1), 0.0)
                                           / np.maximum(n_targets, 1)))
        out[f"hr@{k}"] = float(np.mean(hr[:, k - 1]))
        out[f"ndcg@{k}"] = float(np.mean(dcg[:, k - 1] / idcg))
        out[f"mrr@{k}"] = float(np.mean(mrr[:, k - 1]))
        out[f"coverage@{k}"] = _expected_coverage(shown, c, mask, excluded) / max(n_items, 1)
    out["users"] = int(len(task.users))
    return out


def _expected_coverage(shown: np.ndarray, c: np.ndarray, mask: np.ndarray,
                       excluded: sp.csr_matrix) -> float:
    """Expected number of distinct items in the users' random top-K lists: item i is in
    user u's list with chance shown_u / C_u when it is one of u's candidates."""
    p = np.where(c > 0, shown / np.maximum(c, 1), 0.0)
    full = p >= 1.0  # such a user lists every candidate: log(1 - p) would be -inf
    log_miss = np.log1p(-np.where(full, 0.0, p))
    # sums over the users for whom each item is a candidate: all users minus the excluding
    full_users = full.sum() - excluded.T @ full.astype(np.float64)
    log_missed = log_miss.sum() - excluded.T @ log_miss
    missed = np.where(full_users > 0, 0.0, np.exp(log_missed))
    return float(((1.0 - missed) * mask).sum())
