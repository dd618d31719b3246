"""Protocols: known answers on small logs, RecBole's rounding, split invariants, real data."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from llmrecall.data.builtin import load_builtin
from llmrecall.data.dataset import Catalog, Dataset, Interactions, SearchLog
from llmrecall.data.vocab import Vocabulary
from llmrecall.errors import ConfigError, DataError
from llmrecall.evaluate import make_split, recbole_general_filter, recbole_split_counts


def synthetic(users, items, times=None, ratings=None, n_users=None, n_items=None) -> Dataset:
    """A dataset over users u0.. and items i0.. (titles "title i") from parallel lists."""
    n_users = n_users or (max(users) + 1)
    n_items = n_items or (max(items) + 1)
    catalog = Catalog(pl.DataFrame({"title": [f"title {i}" for i in range(n_items)],
                                    "category": [[] for _ in range(n_items)]},
                                   schema={"title": pl.Utf8, "category": pl.List(pl.Utf8)}))
    log = Interactions.build(users, items, time=times, rating=ratings)
    return Dataset("synthetic", Vocabulary(f"u{i}" for i in range(n_users)),
                   Vocabulary(f"i{i}" for i in range(n_items)), log, catalog)


def rows(matrix: sp.csr_matrix) -> list[list[int]]:
    return [sorted(matrix.indices[matrix.indptr[r]:matrix.indptr[r + 1]].tolist())
            for r in range(matrix.shape[0])]


def random_log(seed: int, n_users: int, n_items: int, density: float, with_ratings=False):
    """A log without repeated (user, item) pairs, integer times with many ties."""
    rng = np.random.default_rng(seed)
    present = rng.random((n_users, n_items)) < density
    users, items = np.nonzero(present)
    shuffle = rng.permutation(len(users))
    users, items = users[shuffle], items[shuffle]
    times = rng.integers(0, 5, len(users))
    ratings = None
    if with_ratings:  # mostly >= 3, so that a dense log survives the 10-core filter
        ratings = rng.choice([1, 2, 3, 4, 5], len(users), p=[.1, .1, .2, .3, .3]).astype(np.float32)
    return synthetic(users, items, times, ratings, n_users=n_users, n_items=n_items)


# ---- loo ------------------------------------------------------------------------------------

def test_loo_known_answer_with_ties_and_short_users():
    # user 0: time order 1,2,3(tie, file order),0,4 -> train {1,2,3}, valid 0, test 4
    # user 1: items 6 and 7 tie at t=2; 7 comes later in the file, so it is the last
    # user 2: two interactions -> all train, not evaluated
    users = [0, 0, 0, 0, 0, 1, 1, 1, 2, 2]
    items = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
    times = [5, 1, 3, 3, 9, 1, 2, 2, 1, 2]
    split = make_split(synthetic(users, items, times), "loo")
    assert split.valid.users.tolist() == [0, 1] and split.test.users.tolist() == [0, 1]
    assert rows(split.valid.targets) == [[0], [6]]
    assert rows(split.test.targets) == [[4], [7]]
    train = split.train.interactions
    assert sorted(zip(train.user.tolist(), train.item.tolist())) == [
        (0, 1), (0, 2), (0, 3), (1, 5), (2, 8), (2, 9)]
    assert split.valid.history.of(0).tolist() == [1, 2, 3]  # train, oldest first
    assert split.test.history.of(0).tolist() == [1, 2, 3, 0]  # train + valid
    assert split.test.history.of(2).tolist() == [8, 9]
    assert rows(split.valid.exclude) == [[1, 2, 3], [5]]
    assert rows(split.test.exclude) == [[0, 1, 2, 3], [5, 6]]
    assert split.valid.candidate_mask is None and split.dataset is not None


def test_loo_fit_sees_only_the_searches_before_each_users_first_target():
    """A query typed after a user's validation target tells the model what came next:
    the train part keeps each evaluated user's searches made strictly before that target
    (one at the same second may have come after it), every search of a user with nothing
    held out, and the whole log when either file has no time column."""
    # user 0: valid target at t=5 (test at 9); user 1: valid at t=2; user 2: not evaluated
    base = synthetic([0, 0, 0, 0, 0, 1, 1, 1, 2, 2], list(range(10)),
                     [5, 1, 3, 3, 9, 1, 2, 2, 1, 2])
    searches = SearchLog(np.array([0, 0, 0, 0, 1, 1, 2, 2], np.int32),
                         ["before", "at the target", "after", "before test", "early", "late",
                          "any", "much later"],
                         np.array([4.0, 5.0, 6.0, 8.0, 1.5, 2.0, 0.0, 99.0]))
    timed = Dataset(base.name, base.users, base.items, base.interactions, base.catalog,
                    searches=searches, meta={"time": "seconds", "search_time": "seconds"})
    seen = make_split(timed, "loo").train.searches
    assert list(zip(seen.user.tolist(), seen.query)) == [
        (0, "before"), (1, "early"), (2, "any"), (2, "much later")]
    assert seen.time.tolist() == [4.0, 1.5, 0.0, 99.0]
    assert make_split(timed, "loo").dataset.searches is searches  # the whole log stays
    for untimed in ({"time": "seconds", "search_time": "file order"},
                    {"time": "file order", "search_time": "seconds"}):
        split = make_split(Dataset(base.name, base.users, base.items, base.interactions,
                                   base.catalog, searches=searches, meta=untimed), "loo")
        assert split.train.searches is searches


def test_loo_repeat_consumption_keeps_the_target_rankable():
    # user 0 consumes item 1 again at the end: the test target is item 1, which also sits in
    # the history; as in RecBole (masked = used - positives) it is not masked
    split = make_split(synthetic([0, 0, 0, 0], [1, 2, 3, 1], [1, 2, 3, 4]), "loo")
    assert rows(split.test.targets) == [[1]]
    assert split.test.history.of(0).tolist() == [1, 2, 3]
    assert rows(split.test.exclude) == [[2, 3]]
    assert rows(split.test.excluded()) == [[2, 3]]


def test_loo_ml_100k():
    ds = load_builtin("ml-100k")
    split = make_split(ds, "loo")
    assert len(split.valid.users) == 943 and len(split.test.users) == 943
    assert split.valid.targets.nnz == 943 and split.test.targets.nnz == 943
    assert len(split.train.interactions) == 100_000 - 2 * 943
    # the last interaction of each user, by time, is the test target
    last = np.zeros(ds.n_users, np.int64)
    order = ds.interactions.chronological_order()
    last[ds.interactions.user[order]] = ds.interactions.item[order]  # later entries overwrite
    assert (split.test.targets.indices == last[split.test.users]).all()


# ---- recbole-general ------------------------------------------------------------------------

def recbole_calcu_split_ids(tot, ratios):
    """RecBole 1.2.1 ``Dataset._calcu_split_ids`` as published, returning part sizes."""
    cnt = [int(ratios[i] * tot) for i in range(len(ratios))]
    cnt[0] = tot - sum(cnt[1:])
    for i in range(1, len(ratios)):
        if cnt[0] <= 1:
            break
        if 0 < ratios[-i] * tot < 1:
            cnt[-i] += 1
            cnt[0] -= 1
    return cnt


@pytest.mark.parametrize("ratios", [(0.8, 0.1, 0.1), (0.7, 0.2, 0.1), (1, 1, 1), (0.9, 0.05, 0.05)])
def test_split_counts_match_recbole(ratios):
    totals = np.arange(1, 400)
    normalised = [r / sum(ratios) for r in ratios]
    expected = np.array([recbole_calcu_split_ids(int(t), normalised) for t in totals])
    got = recbole_split_counts(totals, ratios)
    assert (got == expected).all()
    assert (got.sum(axis=1) == totals).all()


def test_split_counts_known_values():
    got = recbole_split_counts(np.array([1, 2, 3, 10, 19, 25]))
    assert got.tolist() == [[1, 0, 0], [1, 0, 1], [1, 1, 1], [8, 1, 1], [17, 1, 1], [21, 2, 2]]


def test_recbole_filter_cascades_and_compacts():
    # core 2: user 2 has one good rating -> dropped; that leaves item 2 with one -> dropped;
    # user 1's rating-2 interaction is dropped first; item 3 is never rated
    users = [0, 0, 0, 1, 1, 1, 2, 3, 3]
    items = [0, 1, 2, 0, 1, 4, 2, 0, 1]
    ratings = [5, 4, 3, 5, 3, 2, 5, 4, 4]
    ds = synthetic(users, items, ratings=ratings, n_items=5)
    out = recbole_general_filter(ds, core=2)
    assert out.users.ids == ["u0", "u1", "u3"]
    assert out.items.ids == ["i0", "i1"]
    assert out.catalog.titles == ["title 0", "title 1"]
    assert len(out.interactions) == 6
    assert sorted(zip(out.interactions.user.tolist(), out.interactions.item.tolist())) == [
        (0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1)]


def test_recbole_general_split_sizes_and_masking():
    # 12 users x 12 items, all liked: nothing is filtered; 12 -> 10/1/1 per user
    users, items = np.divmod(np.arange(144), 12)
    ds = synthetic(users, items, ratings=np.full(144, 4.0))
    split = make_split(ds, "recbole-general", seed=3)
    assert split.dataset.n_users == 12 and split.dataset.n_items == 12
    assert (np.bincount(split.train.interactions.user, minlength=12) == 10).all()
    assert (split.valid.targets.getnnz(axis=1) == 1).all()
    assert (split.test.targets.getnnz(axis=1) == 1).all()
    # RecBole's test recalls from train and masks train + valid
    assert (split.test.history.lengths() == 10).all()
    assert (split.test.exclude.getnnz(axis=1) == 11).all()
    assert (split.valid.exclude.getnnz(axis=1) == 10).all()
    assert split.valid.exclude.multiply(split.valid.targets).nnz == 0
    assert split.test.exclude.multiply(split.test.targets).nnz == 0
    again = make_split(ds, "recbole-general", seed=3)
    assert (again.test.targets != split.test.targets).nnz == 0
    other = make_split(ds, "recbole-general", seed=4)
    assert (other.test.targets != split.test.targets).nnz > 0


def test_recbole_general_needs_ratings_and_survivors():
    with pytest.raises(DataError, match="needs explicit ratings"):
        make_split(synthetic([0, 1], [0, 1]), "recbole-general")
    with pytest.raises(DataError, match="leaves no interactions"):
        make_split(synthetic([0, 1], [0, 1], ratings=[5, 5]), "recbole-general")


@pytest.mark.slow
def test_recbole_general_ml_1m_counts():
    split = make_split(load_builtin("ml-1m"), "recbole-general", seed=0)
    assert split.dataset.n_users == 6_033
    assert split.dataset.n_items == 3_123
    assert len(split.dataset.interactions) == 834_449
    assert len(split.dataset.catalog) == 3_123
    per_user = np.bincount(split.dataset.interactions.user)
    parts = recbole_split_counts(per_user)
    assert (np.bincount(split.train.interactions.user, minlength=6_033) == parts[:, 0]).all()
    assert (split.valid.targets.getnnz(axis=1) == parts[:, 1]).all()
    assert (split.test.targets.getnnz(axis=1) == parts[:, 2]).all()


def test_unknown_protocol():
    with pytest.raises(ConfigError, match="unknown evaluation protocol 'random'"):
        make_split(synthetic([0], [0]), "random")


# ---- cold-items -----------------------------------------------------------------------------

def test_cold_items_known_structure():
    ds = random_log(7, n_users=30, n_items=40, density=0.3)
    split = make_split(ds, "cold-items", seed=1)
    test_new, valid_new = split.test.candidate_mask, split.valid.candidate_mask
    assert test_new.sum() == 4 and valid_new.sum() == 4 and not (test_new & valid_new).any()
    log = ds.interactions
    assert not (test_new | valid_new)[split.train.interactions.item].any()
    for task, new in ((split.test, test_new), (split.valid, valid_new)):
        expected = sp.csr_matrix((np.ones(new[log.item].sum()),
                                  (log.user[new[log.item]], log.item[new[log.item]])),
                                 shape=(ds.n_users, ds.n_items))
        with_targets = np.flatnonzero(expected.getnnz(axis=1))
        assert task.users.tolist() == with_targets.tolist()  # users without new items skipped
        assert (task.targets != expected[with_targets]).nnz == 0
        assert task.history.matrix().nnz == len(split.train.interactions)
    assert make_split(ds, "cold-items", seed=2).test.candidate_mask.tolist() != test_new.tolist()


# ---- invariants -----------------------------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from(["loo", "recbole-general", "cold-items"]),
       st.integers(0, 3))
def test_splits_partition_the_log_and_never_leak(seed, protocol, split_seed):
    if protocol == "recbole-general":
        ds = random_log(seed, n_users=20, n_items=20, density=0.97, with_ratings=True)
    else:
        ds = random_log(seed, n_users=12, n_items=20, density=0.3)
    split = make_split(ds, protocol, seed=split_seed)
    n_users, n_items = split.dataset.n_users, split.dataset.n_items
    full = split.dataset.histories().matrix()
    train = split.train.histories().matrix()

    def spread(task):
        out = sp.lil_matrix((n_users, n_items), dtype=np.float32)
        out[task.users] = task.targets
        return out.tocsr()

    valid, test = spread(split.valid), spread(split.test)
    # disjoint: nothing held out is also in train (the logs have no repeated pairs)
    assert train.multiply(valid).nnz == 0 and train.multiply(test).nnz == 0
    assert valid.multiply(test).nnz == 0
    # together they are the whole (filtered) log
    assert train.nnz + valid.nnz + test.nnz == len(split.dataset.interactions) == full.nnz
    assert ((train + valid + test) != full).nnz == 0
    # channels recall from histories that hold no target of their task
    for task in (split.valid, split.test):
        assert task.history.matrix(task.users).multiply(task.targets).nnz == 0
        assert task.excluded().multiply(task.targets).nnz == 0


def test_cold_items_needs_three_items():
    with pytest.raises(DataError, match="needs at least 3 items; dataset 'synthetic' has 2"):
        make_split(synthetic([0, 0], [0, 1]), "cold-items")
    split = make_split(synthetic([0, 0, 0], [0, 1, 2]), "cold-items")
    assert split.test.candidate_mask.sum() == 1 and split.valid.candidate_mask.sum() == 1
