"""Per-user state caching (serving): the cache itself, and every caching channel answering
exactly as without it on ml-100k, including after a history changes."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from llmrecall.channels.als import ALS
from llmrecall.channels.bpr import BPR
from llmrecall.channels.capabilities import attach_user_caches
from llmrecall.channels.semantic import SemanticItemToItem, SemanticUserInterest
from llmrecall.channels.sequential import SASRec
from llmrecall.channels.textcf import TextCF
from llmrecall.channels.user_cache import UserStateCache, cached_user_states
from llmrecall.data.dataset import Histories
from llmrecall.errors import ConfigError, DataError

K = 50


# ---- the cache -----------------------------------------------------------------------
def _payload(values):
    values = np.asarray(values, np.float32)
    return (values[:, None] * np.ones((1, 3), np.float32), values > 0)


def test_lookup_hits_only_the_stored_version():
    cache = UserStateCache(10)
    rows, versions = np.array([3, 5]), np.array([7, 8])
    ctx = object()
    cache.lookup(rows, versions, ctx)
    cache.store(rows, versions, _payload([1.0, 2.0]), ctx)
    hit, out = cache.lookup(np.array([5, 3, 3]), np.array([8, 7, 6]), ctx)
    assert hit.tolist() == [True, True, False]
    np.testing.assert_array_equal(out[0][0], [2.0, 2.0, 2.0])
    assert out[1][1] and out[2] is None


def test_version_minus_one_is_never_stored_or_hit():
    cache = UserStateCache(10)
    ctx = object()
    cache.lookup(np.array([1]), np.array([-1]), ctx)
    cache.store(np.array([1, 2]), np.array([-1, 4]), _payload([1.0, 2.0]), ctx)
    assert len(cache) == 1
    hit, _ = cache.lookup(np.array([1, 2]), np.array([-1, 4]), ctx)
    assert hit.tolist() == [False, True]


def test_least_recently_used_rows_are_evicted():
    cache = UserStateCache(2)
    ctx = object()
    cache.lookup(np.array([0]), np.array([0]), ctx)
    cache.store(np.array([0, 1]), np.array([0, 0]), _payload([1.0, 2.0]), ctx)
    cache.lookup(np.array([0]), np.array([0]), ctx)  # row 0 is now the most recent
    cache.store(np.array([2]), np.array([0]), _payload([3.0]), ctx)
    hit, _ = cache.lookup(np.array([0, 1, 2]), np.array([0, 0, 0]), ctx)
    assert hit.tolist() == [True, False, True]


def test_another_context_never_sees_old_entries():
    cache = UserStateCache(10)
    old, new = object(), object()
    cache.lookup(np.array([0]), np.array([0]), old)
    cache.store(np.array([0]), np.array([0]), _payload([1.0]), old)
    hit, _ = cache.lookup(np.array([0]), np.array([0]), new)
    assert not hit.any() and len(cache) == 0
    # a result computed under the replaced context arrives late: dropped
    cache.store(np.array([0]), np.array([0]), _payload([1.0]), old)
    assert not cache.lookup(np.array([0]), np.array([0]), new)[0].any()


def test_cached_user_states_computes_only_the_misses():
    cache = UserStateCache(10)
    users = np.array([4, 2, 4, 9])
    indptr = np.zeros(11, np.int64)
    h = Histories(indptr, np.zeros(0, np.int32), np.zeros(0), np.zeros(0, np.float32), 3,
                  np.array([0, 0, 1, 0, 1, 0, 0, 0, 0, -1]))
    asked = []

    def compute(pos):
        asked.append(users[pos].tolist())
        return (users[pos].astype(np.float32) * 10, users[pos] % 2 == 0)

    first = cached_user_states(cache, users, h, None, compute)
    again = cached_user_states(cache, users, h, None, compute)
    assert asked == [[4, 2, 4, 9], [9]]  # row 9 has version -1: always computed
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(first[0], [40, 20, 40, 90])


def test_bad_sizes_are_refused():
    with pytest.raises(ConfigError):
        UserStateCache(0)
    h = Histories(np.zeros(3, np.int64), np.zeros(0, np.int32), np.zeros(0),
                  np.zeros(0, np.float32), 3)
    with pytest.raises(DataError, match="versions"):
        replace(h, versions=np.zeros(5, np.int64))


def test_only_declaring_channels_get_a_cache():
    channels = [ALS(), BPR(), SASRec(), TextCF(), SemanticUserInterest(), SemanticItemToItem()]
    assert attach_user_caches(channels, 100) == 5
    assert all(isinstance(c.user_cache, UserStateCache) for c in channels[:5])
    assert not hasattr(channels[5], "user_cache")
    assert attach_user_caches(channels, 0) == 0
    assert all(c.user_cache is None for c in channels[:5])
    assert ALS().user_cache is None  # offline default: nothing cached


# ---- every caching channel on ml-100k ------------------------------------------------
@pytest.fixture(scope="module")
def ml100k():
    from llmrecall.data.builtin import load_builtin

    return load_builtin("ml-100k")


def _versioned(h: Histories, versions: np.ndarray) -> Histories:
    return replace(h, versions=np.asarray(versions, np.int64))


def _extended(h: Histories, user: int, items: np.ndarray) -> Histories:
    """``h`` with ``items`` appended (newest) to ``user``'s history."""
    e = h.indptr[user + 1]
    times = h.times[e - 1] + 1 + np.arange(len(items), dtype=np.float64)
    lengths = h.lengths()
    lengths[user] += len(items)
    indptr = np.zeros(len(lengths) + 1, np.int64)
    np.cumsum(lengths, out=indptr[1:])
    return Histories(indptr, np.insert(h.items, e, items).astype(np.int32),
                     np.insert(h.times, e, times),
                     np.insert(h.weights, e, np.ones(len(items), np.float32)), h.n_items)


def _same(a, b) -> None:
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(a.ids, b.ids)
    if a.evidence is not None:
        np.testing.assert_array_equal(a.evidence, b.evidence)


def check_cache_is_invisible(channel, data) -> None:
    """With a cache the channel answers exactly as without one: cold, warm, in mixed
    batches; a new version recomputes from the new history; version -1 never hits."""
    h = data.histories()
    rng = np.random.default_rng(0)
    users = rng.choice(data.n_users, 48, replace=False).astype(np.int32)

    def plain(u: np.ndarray, hist: Histories):
        return channel.recall(u, K, hist, explain=True)

    expected = plain(users, h)
    cache = UserStateCache(1000)
    channel.user_cache = cache
    try:
        hv = _versioned(h, np.zeros(data.n_users))
        _same(channel.recall(users[:16], K, hv, explain=True), plain(users[:16], h))
        assert cache.misses == 16 and cache.hits == 0 and len(cache) == 16
        # a batch of 16 cached and 32 new users, then all of them cached
        _same(channel.recall(users, K, hv, explain=True), expected)
        assert cache.hits == 16 and cache.misses == 48
        _same(channel.recall(users, K, hv, explain=True), expected)
        assert cache.hits == 64

        # the same row with a longer history under a new version: recomputed
        # (the user now has the top 3 of the old answer, so the answer must change)
        user = int(users[0])
        new_items = expected.ids[0, :3]
        grown = _extended(h, user, new_items)
        versions = np.zeros(data.n_users, np.int64)
        versions[user] = 1
        fresh = channel.recall(users, K, _versioned(grown, versions), explain=True)
        _same(fresh, plain(users, grown))
        assert not np.isin(fresh.ids[0], new_items).any()
        assert not np.array_equal(fresh.scores[0], expected.scores[0])

        # version -1 (ad-hoc histories): never answered from the cache
        hits = cache.hits
        anon = _versioned(grown, np.full(data.n_users, -1))
        _same(channel.recall(users, K, anon, explain=True), plain(users, grown))
        assert cache.hits == hits
    finally:
        channel.user_cache = None
    # offline again: the channel is untouched by having had a cache
    _same(plain(users, h), expected)


def test_als_cache_is_invisible(ml100k):
    check_cache_is_invisible(ALS(factors=32, iterations=5).fit(ml100k), ml100k)


def test_bpr_cache_is_invisible(ml100k):
    check_cache_is_invisible(BPR(factors=32, iterations=5).fit(ml100k), ml100k)


@pytest.fixture(scope="module")
def item_vectors(ml100k, request):
    from llmrecall.channels.text_features import item_text_vectors

    request.getfixturevalue("lm_cache")  # embed into the session's private cache
    return item_text_vectors(ml100k)


@pytest.mark.slow
def test_semantic_user_cache_is_invisible(ml100k, item_vectors):
    from llmrecall.channels.text_features import popularity

    channel = SemanticUserInterest(n_interests=3, diversity_threshold=0.5)
    channel.fit_vectors(item_vectors, popularity(ml100k))
    check_cache_is_invisible(channel, ml100k)


@pytest.mark.slow
def test_sasrec_cache_is_invisible(ml100k, item_vectors):
    channel = SASRec(text_init="fuse", dim=32, max_len=20, epochs=1, batch_size=256).fit(ml100k)
    check_cache_is_invisible(channel, ml100k)


@pytest.mark.slow
def test_textcf_cache_is_invisible(ml100k, item_vectors):
    channel = TextCF(dim=32, hidden=64, epochs=1, batch_size=1024, recency_decay=0.9)
    check_cache_is_invisible(channel.fit(ml100k), ml100k)
