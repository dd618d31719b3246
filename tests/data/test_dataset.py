"""Vocabulary and Histories: the id map and the per-user time-ordered view of a log."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmrecall.data.dataset import Histories, Interactions
from llmrecall.data.vocab import Vocabulary
from llmrecall.errors import DataError, UnknownIdError

# --- Vocabulary ---------------------------------------------------------------------------


def test_vocabulary_assigns_first_seen_indices_and_keeps_them():
    vocab = Vocabulary(["b", "a", "b", "c"])
    assert vocab.ids == ["b", "a", "c"] and len(vocab) == 3
    assert vocab.add("a") == 1 and vocab.add("d") == 3
    np.testing.assert_array_equal(vocab.add_many(["c", "e", "b"]), [2, 4, 0])
    assert vocab.add_many([]).dtype == np.int32


def test_vocabulary_ids_are_text():
    vocab = Vocabulary(["007", "7"])
    assert vocab.index("007") == 0 and vocab.index(7) == 1 and len(vocab) == 2
    assert 7 in vocab and "07" not in vocab


def test_vocabulary_lookup_unknown_and_strict():
    vocab = Vocabulary(["x", "y"])
    out = vocab.lookup(["y", "nope", "x"])
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, [1, -1, 0])
    with pytest.raises(UnknownIdError, match="nope"):
        vocab.lookup(["y", "nope"], strict=True)
    with pytest.raises(UnknownIdError):
        vocab.index("nope")
    assert vocab.raw([1, -1, 0]) == ["y", None, "x"]


def test_vocabulary_copy_is_independent_and_equal():
    vocab = Vocabulary(["x", "y"])
    twin = vocab.copy()
    assert twin == vocab
    twin.add("z")
    assert twin != vocab and len(vocab) == 2


# --- Histories ----------------------------------------------------------------------------


def _log(users, items, times, weights=None) -> Interactions:
    return Interactions.build(user=users, item=items, time=times, weight=weights)


def test_histories_sort_by_time_and_keep_log_order_for_ties():
    # user 0: items 5 (t=3), 1 (t=1), 2 (t=1), 3 (t=2); user 2: item 4; user 1: nothing
    log = _log([0, 0, 2, 0, 0], [5, 1, 4, 2, 3], [3.0, 1.0, 0.0, 1.0, 2.0])
    hist = Histories.from_interactions(log, n_users=3, n_items=6)
    assert hist.n_users == 3
    np.testing.assert_array_equal(hist.lengths(), [4, 0, 1])
    np.testing.assert_array_equal(hist.of(0), [1, 2, 3, 5])  # 1 before 2: same time, log order
    assert hist.of(1).size == 0
    np.testing.assert_array_equal(hist.times[hist.indptr[0]:hist.indptr[1]], [1, 1, 2, 3])

    # swapping the tied entries in the log swaps them in the history
    swapped = _log([0, 0, 2, 0, 0], [5, 2, 4, 1, 3], [3.0, 1.0, 0.0, 1.0, 2.0])
    np.testing.assert_array_equal(Histories.from_interactions(swapped, 3, 6).of(0), [2, 1, 3, 5])


def test_recent_is_right_aligned_and_padded():
    log = _log([0, 0, 0, 1], [7, 8, 9, 3], [1.0, 2.0, 3.0, 5.0])
    hist = Histories.from_interactions(log, n_users=3, n_items=10)
    items, times = hist.recent(np.array([0, 1, 2]), 2)
    assert items.dtype == np.int32 and items.shape == (3, 2)
    np.testing.assert_array_equal(items, [[8, 9], [-1, 3], [-1, -1]])
    np.testing.assert_array_equal(times[0], [2.0, 3.0])
    assert np.isnan(times[1, 0]) and times[1, 1] == 5.0 and np.isnan(times[2]).all()
    # longer than any history: everything, left-padded
    items, _ = hist.recent(np.array([0]), 5)
    np.testing.assert_array_equal(items, [[-1, -1, 7, 8, 9]])


def test_recent_on_an_empty_log():
    hist = Histories.from_interactions(_log([], [], []), n_users=2, n_items=3)
    items, times = hist.recent(np.array([0, 1]), 3)
    assert (items == -1).all() and np.isnan(times).all()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4), st.integers(0, 6), st.integers(0, 3)), max_size=40),
       st.integers(1, 6))
def test_recent_matches_a_per_user_reference(events, length):
    users, items, times = (list(column) for column in zip(*events)) if events else ([], [], [])
    hist = Histories.from_interactions(_log(users, items, times), n_users=5, n_items=7)
    got, _ = hist.recent(np.arange(5), length)
    for user in range(5):
        # reference: this user's events sorted by time, ties in log order (sorted is stable)
        mine = sorted([(t, i) for u, i, t in zip(users, items, times) if u == user],
                      key=lambda pair: pair[0])
        tail = [i for _, i in mine][-length:]
        assert got[user].tolist() == [-1] * (length - len(tail)) + tail


def test_matrix_binary_and_weighted():
    log = _log([0, 0, 0, 2], [1, 1, 3, 0], [1.0, 2.0, 3.0, 1.0], weights=[2.0, 3.0, 0.5, 4.0])
    hist = Histories.from_interactions(log, n_users=3, n_items=4)
    binary = hist.matrix()
    assert binary.shape == (3, 4) and binary.dtype == np.float32
    np.testing.assert_array_equal(binary.toarray(), [[0, 1, 0, 1], [0, 0, 0, 0], [1, 0, 0, 0]])
    weighted = hist.matrix(binary=False)
    np.testing.assert_allclose(weighted.toarray(), [[0, 5, 0, 0.5], [0, 0, 0, 0], [4, 0, 0, 0]])
    # a subset of users gives exactly those rows, in the order asked
    subset = hist.matrix(np.array([2, 0]), binary=False)
    np.testing.assert_allclose(subset.toarray(), weighted.toarray()[[2, 0]])


def test_interactions_reject_mismatched_columns():
    with pytest.raises(DataError, match="time"):
        Interactions(user=np.zeros(3, np.int32), item=np.zeros(3, np.int32),
                     time=np.zeros(2), weight=np.ones(3, np.float32), event=np.zeros(3, np.int16))


def test_matrix_leaves_the_history_unchanged():
    """Regression: matrix() used to share `items` with scipy, and sum_duplicates() then
    compacted the history in place (user 0's [1, 1, 3] became [1, 3, 0])."""
    log = _log([0, 0, 0, 2], [1, 1, 3, 0], [1.0, 2.0, 3.0, 1.0])
    hist = Histories.from_interactions(log, n_users=3, n_items=4)
    before = (hist.items.copy(), hist.indptr.copy(), hist.weights.copy())
    hist.matrix()
    hist.matrix(np.array([0]), binary=False)
    for now, then in zip((hist.items, hist.indptr, hist.weights), before):
        np.testing.assert_array_equal(now, then)
