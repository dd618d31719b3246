"""Evaluation protocols: how a dataset is split into train, validation and test tasks.

Three protocols, defined in ``docs/evaluation.md``:

- ``loo``: chronological leave-one-out (the default).
- ``recbole-general``: RecBole's published ML-1M benchmark (ratings >= 3, 10-core, random
  8:1:1 per user, full ranking), matching RecBole 1.2.1's split and masking rules.
- ``cold-items``: 10% of items are brand new; rank only them.

A protocol yields a :class:`Split`: the (possibly filtered) dataset, a train dataset with the
same vocabularies, and two :class:`EvalTask` objects. A task says whom to evaluate, what they
should find, which history the channels recall from and which items must not be ranked.

Repeat consumption follows RecBole's full-sort evaluation: the items masked for a user are
the ones they already consumed *minus their current targets* (RecBole's
``history_item = used_item - positive_item``), so a target that also occurs earlier in the
history can still be recalled and counts as a hit.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import polars as pl
import scipy.sparse as sp

from llmrecall.data.dataset import Dataset, Histories, Interactions, SearchLog
from llmrecall.data.vocab import Vocabulary
from llmrecall.errors import ConfigError, DataError

PROTOCOLS = ("loo", "recbole-general", "cold-items")

#: recbole-general: RecBole's ``val_interval: {rating: "[3,inf)"}``
MIN_RATING = 3.0
#: recbole-general: RecBole's ``user_inter_num_interval`` / ``item_inter_num_interval: "[10,inf)"``
CORE = 10
#: recbole-general: RecBole's ``split: {RS: [0.8, 0.1, 0.1]}``
SPLIT_RATIOS = (0.8, 0.1, 0.1)
#: cold-items: share of the catalog made "new" for test (and again, disjoint, for validation)
NEW_ITEM_FRACTION = 0.1


@dataclass
class EvalTask:
    """One evaluation round (validation or test) over a batch of users.

    Attributes:
        users: int32[u] dense users to evaluate, ascending; each has at least one target.
        targets: float32 CSR [u, n_items], binary; row i is the target set of ``users[i]``.
        history: the input history channels recall from, with rows for all users of the
            dataset (``history.n_users == dataset.n_users``).
        candidate_mask: bool[n_items] or None; when set, only these items may be ranked.
        exclude: float32 CSR [u, n_items], binary, or None; row i lists the items that must
            never be ranked for ``users[i]`` (already consumed, minus the targets). None means
            "the user's items in ``history`` minus their targets" (see :meth:`excluded`).
    """

    users: np.ndarray
    targets: sp.csr_matrix
    history: Histories
    candidate_mask: np.ndarray | None = None
    exclude: sp.csr_matrix | None = None

    def __post_init__(self) -> None:
        u = len(self.users)
        if self.targets.shape[0] != u:
            raise DataError(f"EvalTask targets have {self.targets.shape[0]} rows for {u} users")
        if self.targets.shape[1] != self.history.n_items:
            raise DataError(f"EvalTask targets have {self.targets.shape[1]} columns, the "
                            f"history has {self.history.n_items} items")
        if u and int(self.users.max()) >= self.history.n_users:
            raise DataError(f"EvalTask user {int(self.users.max())} has no history row "
                            f"(history has {self.history.n_users} users)")
        if self.candidate_mask is not None and len(self.candidate_mask) != self.history.n_items:
            raise DataError(f"EvalTask candidate_mask has {len(self.candidate_mask)} entries "
                            f"for {self.history.n_items} items")
        if self.exclude is not None and self.exclude.shape != self.targets.shape:
            raise DataError(f"EvalTask exclude has shape {self.exclude.shape}, "
                            f"targets have {self.targets.shape}")

    @property
    def n_items(self) -> int:
        return self.history.n_items

    def excluded(self) -> sp.csr_matrix:
        """float32 CSR [u, n_items], binary: items never ranked for each evaluated user."""
        if self.exclude is not None:
            return self.exclude
        return and_not(self.history.matrix(self.users), self.targets)

    def take(self, rows: np.ndarray, candidate_mask: np.ndarray | None = None) -> EvalTask:
        """The task for ``users[rows]`` only (``rows``: int positions, ascending), the same
        history; ``candidate_mask``, if given, in place of this task's."""
        mask = self.candidate_mask if candidate_mask is None else candidate_mask
        return EvalTask(self.users[rows], self.targets[rows], self.history, mask,
                        None if self.exclude is None else self.exclude[rows])

    def describe(self) -> dict:
        return {"users": int(len(self.users)), "targets": int(self.targets.nnz),
                "candidates": int(self.n_items if self.candidate_mask is None
                                  else self.candidate_mask.sum())}


@dataclass
class Split:
    """A dataset split by one protocol.

    Attributes:
        protocol: the protocol name.
        seed: the seed of its random choices (unused by ``loo``, which is deterministic).
        dataset: the dataset after the protocol's filtering (``recbole-general``: ratings >= 3,
            10-core, compacted vocabularies; other protocols: the input dataset).
        train: ``dataset`` with the train interactions only (same vocabularies and catalog).
        valid: the validation task (tune on it).
        test: the test task (report it).
    """

    protocol: str
    seed: int
    dataset: Dataset
    train: Dataset
    valid: EvalTask
    test: EvalTask

    def describe(self) -> dict:
        return {"protocol": self.protocol, "seed": self.seed, "dataset": self.dataset.describe(),
                "train_interactions": len(self.train.interactions),
                "valid": self.valid.describe(), "test": self.test.describe()}


def make_split(dataset: Dataset, protocol: str, seed: int = 0) -> Split:
    """Split ``dataset`` by ``protocol`` ("loo", "recbole-general" or "cold-items").

    Deterministic: the same dataset, protocol and seed always give the same split.
    """
    if protocol == "loo":
        return _loo(dataset, seed)
    if protocol == "recbole-general":
        return _recbole_general(dataset, seed)
    if protocol == "cold-items":
        return _cold_items(dataset, seed)
    raise ConfigError(f"unknown evaluation protocol {protocol!r}; known: {', '.join(PROTOCOLS)}")


# ---- loo ------------------------------------------------------------------------------------

def _loo(dataset: Dataset, seed: int) -> Split:
    log = dataset.interactions
    order = log.chronological_order()
    counts = np.bincount(log.user, minlength=dataset.n_users)
    # position of each (sorted) entry counted from the user's last interaction: 0 = last
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    sorted_user = log.user[order]
    from_end = counts[sorted_user] - 1 - (np.arange(len(order)) - starts[sorted_user])
    evaluated = counts[sorted_user] >= 3
    role = np.zeros(len(log), np.int8)  # 0 train, 1 valid, 2 test; original log order
    role[order[evaluated & (from_end == 1)]] = 1
    role[order[evaluated & (from_end == 0)]] = 2
    train_log, valid_log, test_log = (log.take(role == r) for r in (0, 1, 2))

    n_users, n_items = dataset.n_users, dataset.n_items
    train_hist = Histories.from_interactions(train_log, n_users, n_items)
    fresh_hist = Histories.from_interactions(train_log.concat(valid_log), n_users, n_items)
    valid = task_for(valid_log, train_hist, train_hist)
    # test: the model state is one step stale, the history is fresh (train + valid)
    test = task_for(test_log, fresh_hist, fresh_hist)
    train = dataset.with_interactions(train_log)
    if dataset.searches is not None and searches_comparable(dataset):
        train = replace(train, searches=dataset.searches.before(held_out_times(valid_log, n_users)))
    return Split("loo", seed, dataset, train, valid, test)


def held_out_times(valid_log: Interactions, n_users: int) -> np.ndarray:
    """float64[n_users]: each evaluated user's first held-out time (their validation
    target's), ``inf`` for a user with nothing held out. The searches a ``loo`` fit sees
    are those made before it (:meth:`~llmrecall.data.dataset.SearchLog.before`): a query
    typed after the target would tell the model what the user went on to want. The test
    target is ranked by the same fit (one step stale), so it sees the same searches."""
    cut = np.full(n_users, np.inf)
    cut[valid_log.user] = valid_log.time
    return cut


def searches_comparable(dataset: Dataset) -> bool:
    """Whether the search log's times and the interactions' are on one clock: both in
    seconds. A log read without a time column is timed by its row positions, which say
    nothing about the other file's rows; then no search can be placed before or after a
    target, and the fit sees every search (docs/evaluation.md)."""
    return "file order" not in (dataset.meta.get("time"), dataset.meta.get("search_time"))


# ---- recbole-general ------------------------------------------------------------------------

def recbole_general_filter(dataset: Dataset, min_rating: float = MIN_RATING,
                           core: int = CORE) -> Dataset:
    """RecBole's data filtering for its general benchmark, with compacted vocabularies.

    Keeps ratings >= ``min_rating`` (RecBole ``val_interval``), then removes users and items
    with fewer than ``core`` interactions, repeatedly, until every survivor has at least
    ``core`` (RecBole ``user/item_inter_num_interval: "[core,inf)"``; the k-core is unique, so
    the removal order does not matter). Users and items without interactions are dropped and
    the survivors renumbered in their original order; catalog rows follow their items.
    """
    log = dataset.interactions
    if log.rating is None:
        raise DataError(f"protocol 'recbole-general' needs explicit ratings; dataset "
                        f"{dataset.name!r} has none")
    # NaN ratings compare False and are dropped, as RecBole drops them
    keep = log.rating >= min_rating
    while True:
        user_count = np.bincount(log.user[keep], minlength=dataset.n_users)
        item_count = np.bincount(log.item[keep], minlength=dataset.n_items)
        low = keep & ((user_count[log.user] < core) | (item_count[log.item] < core))
        if not low.any():
            break
        keep &= ~low
    return compact(dataset, keep)


def compact(dataset: Dataset, keep: np.ndarray) -> Dataset:
    """``dataset`` with only the interactions where ``keep`` (bool[m]) is True, and only the
    users and items that still have interactions, renumbered densely in their old order.

    The catalog keeps the surviving items' rows; searches keep the surviving users' rows.
    """
    log = dataset.interactions.take(keep)
    user_alive = np.bincount(log.user, minlength=dataset.n_users) > 0
    item_alive = np.bincount(log.item, minlength=dataset.n_items) > 0
    user_map = np.full(dataset.n_users, -1, np.int32)
    user_map[user_alive] = np.arange(user_alive.sum(), dtype=np.int32)
    item_map = np.full(dataset.n_items, -1, np.int32)
    item_map[item_alive] = np.arange(item_alive.sum(), dtype=np.int32)
    log = replace(log, user=user_map[log.user], item=item_map[log.item])

    user_ids, item_ids = dataset.users.ids, dataset.items.ids
    users = Vocabulary(user_ids[i] for i in np.flatnonzero(user_alive))
    items = Vocabulary(item_ids[i] for i in np.flatnonzero(item_alive))
    catalog = replace(dataset.catalog, frame=dataset.catalog.frame.filter(pl.Series(item_alive)))
    searches = dataset.searches
    if searches is not None:
        alive = user_alive[searches.user]
        searches = SearchLog(user_map[searches.user[alive]],
                             [q for q, a in zip(searches.query, alive) if a],
                             searches.time[alive])
    return replace(dataset, users=users, items=items, interactions=log, catalog=catalog,
                   searches=searches)


def recbole_split_counts(totals: np.ndarray, ratios=SPLIT_RATIOS) -> np.ndarray:
    """Part sizes per group, exactly as RecBole 1.2.1's ``Dataset._calcu_split_ids``.

    Every part but the first gets ``int(ratio * total)`` (rounded down); the first gets the
    rest. Then, walking from the last part backwards and while the first part keeps more
    than one entry, a part whose exact share lies strictly between 0 and 1 is raised to one
    (taken from the first part). So 10 interactions split 8:1:1 give 8/1/1, 19 give 17/1/1,
    2 give 1/0/1.

    Args:
        totals: int[g] group sizes.
        ratios: part ratios, not necessarily normalised.
    Returns:
        int64[g, len(ratios)] part sizes; each row sums to its total.
    """
    totals = np.asarray(totals, dtype=np.int64)
    total_ratio = sum(ratios)
    shares = [r / total_ratio for r in ratios]  # python floats, as RecBole computes them
    exact = np.stack([s * totals.astype(np.float64) for s in shares], axis=1)
    counts = exact.astype(np.int64)  # int() truncation; shares are non-negative
    counts[:, 0] = totals - counts[:, 1:].sum(axis=1)
    active = np.ones(len(totals), bool)
    for i in range(1, len(ratios)):
        active &= counts[:, 0] > 1  # RecBole breaks out of its loop for this group
        bump = active & (exact[:, -i] > 0) & (exact[:, -i] < 1)
        counts[bump, -i] += 1
        counts[bump, 0] -= 1
    return counts


def _recbole_general(dataset: Dataset, seed: int) -> Split:
    filtered = recbole_general_filter(dataset)
    if len(filtered.interactions) == 0:
        raise DataError(f"protocol 'recbole-general' leaves no interactions of dataset "
                        f"{dataset.name!r} (ratings >= {MIN_RATING:g}, {CORE}-core)")
    log = filtered.interactions
    # RecBole (order RO, group_by user) shuffles the whole log, then groups it by user keeping
    # the shuffled order: each user's interactions end up in a uniformly random order.
    rng = np.random.default_rng(seed)
    shuffled = rng.permutation(len(log))
    order = shuffled[np.argsort(log.user[shuffled], kind="stable")]
    totals = np.bincount(log.user, minlength=filtered.n_users)
    parts = recbole_split_counts(totals)
    starts = np.concatenate([[0], np.cumsum(totals)[:-1]])
    sorted_user = log.user[order]
    position = np.arange(len(order)) - starts[sorted_user]
    role = np.zeros(len(log), np.int8)
    role[order] = ((position >= parts[sorted_user, 0]).astype(np.int8)
                   + (position >= parts[sorted_user, 0] + parts[sorted_user, 1]))
    train_log, valid_log, test_log = (log.take(role == r) for r in (0, 1, 2))

    n_users, n_items = filtered.n_users, filtered.n_items
    train_hist = Histories.from_interactions(train_log, n_users, n_items)
    seen_hist = Histories.from_interactions(train_log.concat(valid_log), n_users, n_items)
    valid = task_for(valid_log, train_hist, train_hist)
    # RecBole's test: the model scores from the train matrix only (e.g. EASE's
    # ``interaction_matrix[user] @ B``) while train + valid items are masked.
    test = task_for(test_log, train_hist, seen_hist)
    return Split("recbole-general", seed, filtered, filtered.with_interactions(train_log),
                 valid, test)


# ---- cold-items -----------------------------------------------------------------------------

def _cold_items(dataset: Dataset, seed: int) -> Split:
    n_items = dataset.n_items
    n_new = max(1, int(round(NEW_ITEM_FRACTION * n_items)))
    if 2 * n_new >= n_items:  # test-new, valid-new and at least one old item
        raise DataError(f"protocol 'cold-items' needs at least 3 items; dataset "
                        f"{dataset.name!r} has {n_items}")
    # one permutation: the first tenth is new at test time, the next tenth new at validation
    perm = np.random.default_rng(seed).permutation(n_items)
    test_new = np.zeros(n_items, bool)
    test_new[perm[:n_new]] = True
    valid_new = np.zeros(n_items, bool)
    valid_new[perm[n_new:2 * n_new]] = True

    log = dataset.interactions
    in_test, in_valid = test_new[log.item], valid_new[log.item]
    train_log = log.take(~in_test & ~in_valid)
    train_hist = Histories.from_interactions(train_log, dataset.n_users, n_items)
    valid = task_for(log.take(in_valid), train_hist, train_hist, candidate_mask=valid_new)
    test = task_for(log.take(in_test), train_hist, train_hist, candidate_mask=test_new)
    return Split("cold-items", seed, dataset, dataset.with_interactions(train_log), valid, test)


# ---- shared ---------------------------------------------------------------------------------

def task_for(target_log: Interactions, history: Histories, seen: Histories,
          candidate_mask: np.ndarray | None = None) -> EvalTask:
    """A task for the users in ``target_log``: their target sets, recall from ``history``,
    mask their items in ``seen`` except their targets (RecBole: used items - positives)."""
    n_users, n_items = history.n_users, history.n_items
    by_user = sp.csr_matrix((np.ones(len(target_log), np.float32),
                             (target_log.user, target_log.item)), shape=(n_users, n_items))
    by_user.sum_duplicates()
    by_user.data[:] = 1.0
    users = np.flatnonzero(by_user.getnnz(axis=1) > 0).astype(np.int32)
    targets = by_user[users]
    exclude = and_not(seen.matrix(users), targets)
    return EvalTask(users, targets, history, candidate_mask, exclude)


def and_not(a: sp.csr_matrix, b: sp.csr_matrix) -> sp.csr_matrix:
    """Binary ``a AND NOT b`` for binary CSR matrices of one shape (float32 CSR)."""
    out = (a - a.multiply(b)).tocsr().astype(np.float32)
    out.eliminate_zeros()
    out.sort_indices()
    return out
