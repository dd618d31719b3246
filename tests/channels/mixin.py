"""``ChannelContract``: the tests every recall channel must pass.

A channel's test class inherits it and sets ``make_channel`` (an unfitted channel small
enough for the synthetic data) and ``min_recall_at_50`` (the slow ml-100k check).

Synthetic data: two disjoint communities. Users 0..59 only take items 0..9 (community A),
users 60..119 only items 10..19 (community B); each user takes 5 items of their community
and popularity differs per item, so every channel that learns from co-occurrence must put a
user's unseen community items first.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from llmrecall.channels.base import Candidates, Channel
from llmrecall.channels.capabilities import (
    AddsItems,
    AnswersQueries,
    CachesUsers,
    RefreshesInterests,
    SearchesVectors,
    UsesEmbedder,
    UsesGenerator,
)
from llmrecall.channels.registry import load_channel
from llmrecall.channels.user_cache import UserStateCache
from llmrecall.data.dataset import Catalog, Dataset, Histories, Interactions
from llmrecall.data.vocab import Vocabulary
from llmrecall.errors import DataError, NotFittedError
from llmrecall.index import VectorIndex

N_USERS, N_ITEMS, PER_COMMUNITY, TAKEN = 120, 20, 10, 5


def community(user: np.ndarray) -> np.ndarray:
    return (np.asarray(user) >= N_USERS // 2).astype(int)


def synthetic_dataset(seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    # skewed item appeal inside each community, so popularity has a clear order
    appeal = np.linspace(2.0, 1.0, PER_COMMUNITY)
    users, items = [], []
    for user in range(N_USERS):
        base = PER_COMMUNITY * community(user)
        chosen = rng.choice(PER_COMMUNITY, TAKEN, replace=False, p=appeal / appeal.sum())
        users += [user] * TAKEN
        items += list(base + chosen)
    log = Interactions.build(users, items, time=rng.permutation(len(users)).astype(float))
    return Dataset("checkerboard", Vocabulary(map(str, range(N_USERS))),
                   Vocabulary(map(str, range(N_ITEMS))), log, Catalog.empty(N_ITEMS))


def with_extra(dataset: Dataset, users, items, n_users: int, n_items: int) -> Histories:
    """The dataset's histories plus extra interactions, widened to n_users x n_items."""
    log = dataset.interactions
    extra = Interactions.build(users, items, time=np.arange(len(users)) + log.time.max() + 1)
    return Histories.from_interactions(log.concat(extra), n_users, n_items)


def popularity_ranking(dataset: Dataset) -> np.ndarray:
    counts = np.bincount(dataset.interactions.item, minlength=dataset.n_items)
    return np.lexsort((np.arange(dataset.n_items), -counts))


class _Reached(BaseException):
    """Raised by a :class:`_Spy` when a channel touches it (a BaseException, so no
    ``except Exception`` on the way swallows it)."""


class _Spy:
    """A stand-in backend: any attribute access raises :class:`_Reached` naming it, which
    proves that ``fit`` reached the object handed over by ``use()``."""

    def __init__(self, label: str):
        object.__setattr__(self, "_label", label)

    def __getattr__(self, name: str):
        raise _Reached(self._label)


def _check_padded(got: Candidates, rows: int, k: int, n_items: int) -> None:
    """Shapes, dtypes and padding of a query answer: each row's valid ids (in the catalog,
    distinct, best first) come first, then -1 / -inf."""
    assert got.ids.shape == got.scores.shape == (rows, k)
    assert got.ids.dtype == np.int32 and got.scores.dtype == np.float32
    valid = got.ids >= 0
    assert (np.isfinite(got.scores) == valid).all()
    assert (np.diff(valid.astype(int), axis=1) <= 0).all(), "padding only at the end"
    assert (got.ids[valid] < n_items).all()
    for r in range(rows):
        row = got.ids[r][valid[r]]
        assert len(np.unique(row)) == len(row), "duplicate candidates"
        assert (np.diff(got.scores[r][valid[r]]) <= 0).all(), "not best first"


class CapabilityContract:
    """The checks of each optional capability (:mod:`llmrecall.channels.capabilities`) a
    channel declares. For a capability it does not declare, the channel must not have the
    capability's method either: the service calls only declared ones, so an undeclared
    ``add_items`` would silently never run.

    A subclass defines ``make_channel`` and a ``data`` fixture; the checks of the serving
    capabilities also use its ``fitted`` fixture (requested only when declared)."""

    def make_channel(self) -> Channel:
        raise AssertionError("test classes define make_channel()")

    def test_capability_answers_queries(self, request, data):
        if not isinstance(self.make_channel(), AnswersQueries):
            assert not hasattr(self.make_channel(), "recall_query")
            return
        fitted = request.getfixturevalue("fitted")
        query = data.catalog.texts()[0]  # community A's first item
        got = fitted.recall_query([query, None, "  "], 5)
        _check_padded(got, 3, 5, data.n_items)
        assert (got.ids[0] >= 0).all() and (got.ids[1:] == -1).all(), "no query: no filler"
        assert (got.ids[0, :3] // PER_COMMUNITY == 0).all(), "the query's own community first"
        _check_padded(fitted.recall_query([query], data.n_items + 5), 1, data.n_items + 5,
                      data.n_items)
        allowed = np.ones(data.n_items, bool)
        allowed[got.ids[0, :2]] = False
        masked = fitted.recall_query([query], 5, allowed)
        assert not np.isin(masked.ids, got.ids[0, :2]).any()
        assert isinstance(fitted.query_source, str) and fitted.query_source

    def test_capability_adds_items(self, request, data, tmp_path):
        if not isinstance(self.make_channel(), AddsItems):
            assert not hasattr(self.make_channel(), "add_items")
            return
        fitted = request.getfixturevalue("fitted")
        channel = load_channel(fitted.save(tmp_path / "copy"))  # the class's channel stays as fitted
        assert isinstance(channel, AddsItems)
        new = data.n_items
        history = with_extra(data, [], [], N_USERS, new + 1)
        users = np.arange(N_USERS)
        before = channel.recall(users, new + 1, history)
        assert not (before.ids == new).any()
        channel.add_items(np.zeros(0, np.int32), [])
        np.testing.assert_array_equal(channel.recall(users, new + 1, history).ids, before.ids)
        # about community A (no exact twin of an item: a tie could then go either way)
        text = " ".join(data.catalog.texts()[:2])
        channel.add_items(np.array([new], np.int32), [text])
        after = channel.recall(users, new + 1, history)
        a_users = community(users) == 0
        assert (after.ids[a_users] == new).any(axis=1).all(), "the new item is recallable"
        if isinstance(channel, AnswersQueries):
            assert new in channel.recall_query([text], 3).ids
        # a replay (the service's start-up) changes no answer (semantic_i2i recomputes
        # neighbour-table rows in another product shape: scores may move by an ulp)
        channel.add_items(np.array([new], np.int32), [text])
        again = channel.recall(users, new + 1, history)
        np.testing.assert_array_equal(again.ids, after.ids)
        np.testing.assert_allclose(again.scores, after.scores, rtol=1e-6)

    def test_capability_caches_users(self, request, data):
        if not isinstance(self.make_channel(), CachesUsers):
            assert not hasattr(self.make_channel(), "user_cache")
            return
        fitted = request.getfixturevalue("fitted")
        assert fitted.user_cache is None, "offline: no cache"
        history = data.histories()
        versioned = replace(history, versions=np.arange(len(history.indptr) - 1, dtype=np.int64))
        users = np.arange(N_USERS)
        plain = fitted.recall(users, 8, history, explain=True)
        cache = fitted.user_cache = UserStateCache(10 * N_USERS)
        try:
            first = fitted.recall(users, 8, versioned, explain=True)
            misses = cache.misses
            second = fitted.recall(users, 8, versioned, explain=True)
        finally:
            del fitted.user_cache  # back to the class default, None
        assert misses > 0 and cache.misses == misses and cache.hits >= N_USERS
        for got in (first, second):  # bit-identical with and without the cache
            np.testing.assert_array_equal(got.ids, plain.ids)
            np.testing.assert_array_equal(got.scores, plain.scores)
            if plain.evidence is not None:
                np.testing.assert_array_equal(got.evidence, plain.evidence)

    def test_capability_searches_vectors(self, request, data, tmp_path):
        if not isinstance(self.make_channel(), SearchesVectors):
            assert not hasattr(self.make_channel(), "use_index")
            return
        fitted = request.getfixturevalue("fitted")
        channel = load_channel(fitted.save(tmp_path / "copy"))  # the class's channel stays as fitted
        assert isinstance(channel, SearchesVectors)
        ids, vectors = channel.indexed_vectors()
        assert ids.dtype == np.int64 and vectors.dtype == np.float32
        np.testing.assert_array_equal(ids, np.sort(channel.index.ids))
        assert vectors.shape == (len(ids), channel.index.dim)
        users = np.arange(N_USERS)
        history = data.histories()
        before = channel.recall(users, 8, history, explain=True)
        query = data.catalog.texts()[0]
        before_query = channel.recall_query([query], 5) \
            if isinstance(channel, AnswersQueries) else None
        # another index holding the same vectors (the service's Milvus collection)
        other = VectorIndex(vectors.shape[1], "flat")
        other.add(ids, vectors)
        channel.use_index(other)
        assert channel.index is other
        after = channel.recall(users, 8, history, explain=True)
        np.testing.assert_array_equal(after.ids, before.ids)
        np.testing.assert_allclose(after.scores, before.scores, rtol=1e-6)
        if before_query is not None:
            np.testing.assert_array_equal(channel.recall_query([query], 5).ids, before_query.ids)
        if isinstance(channel, AddsItems):  # later additions go into the new index
            channel.add_items(np.array([data.n_items], np.int32), [query])
            assert len(other) == len(ids) + 1
        short = VectorIndex(vectors.shape[1], "flat")
        short.add(ids[:1], vectors[:1])
        with pytest.raises(DataError, match="fewer"):
            channel.use_index(short)
        wrong_dim = VectorIndex(vectors.shape[1] + 1, "flat")
        with pytest.raises(DataError, match="dim"):
            channel.use_index(wrong_dim)

    def test_capability_refreshes_interests(self, request):
        if not isinstance(self.make_channel(), RefreshesInterests):
            assert not hasattr(self.make_channel(), "refresh_interest")
            return
        fitted = request.getfixturevalue("fitted")
        assert fitted.refresh_interest("0", ["0", "1"]) is None

    def test_capability_uses_backends(self, data):
        channel = self.make_channel()
        if not isinstance(channel, UsesEmbedder):
            assert not hasattr(channel, "use")
            return
        assert channel.use() is channel
        if isinstance(channel, UsesGenerator):
            # the generator is what fit needs first
            assert channel.use(generator=_Spy("generator"), embedder=_Spy("embedder")) is channel
            expected = "generator"
        else:
            assert channel.use(embedder=_Spy("embedder")) is channel
            expected = "embedder"
        with pytest.raises(_Reached) as reached:
            channel.fit(data)
        assert reached.value.args == (expected,)


class ChannelContract(CapabilityContract):
    """Inherit and define ``make_channel``; set ``personalised = False`` for channels that
    rank every user alike, and ``min_recall_at_50`` for the ml-100k check."""

    personalised = True
    min_recall_at_50: float = 0.0

    def ml100k_channel(self) -> Channel:
        """The channel the slow ml-100k check fits: default hyperparameters."""
        return type(self.make_channel())()

    # ---- fixtures --------------------------------------------------------------------
    @pytest.fixture(scope="class")
    @classmethod
    def data(cls) -> Dataset:
        return synthetic_dataset()

    @pytest.fixture(scope="class")
    @classmethod
    def fitted(cls, data) -> Channel:
        channel = cls().make_channel()
        assert channel.fit(data) is channel
        return channel

    # ---- the contract ----------------------------------------------------------------
    def test_known_answer_communities(self, fitted, data):
        history = data.histories()
        users = np.arange(N_USERS)
        if not self.personalised:  # everyone gets the popularity order minus what they saw
            got = fitted.recall(users, N_ITEMS, history)
            for user in users:
                seen = set(history.of(user).tolist())
                order = [i for i in popularity_ranking(data).tolist() if i not in seen]
                assert got.ids[user, :len(order)].tolist() == order
            return
        k = 3  # of the user's 5 unseen community items
        got = fitted.recall(users, k, history)
        assert (got.ids >= 0).all()
        assert (got.ids // PER_COMMUNITY == community(users)[:, None]).all()

    def test_batch_equals_single_users(self, fitted, data):
        history = data.histories()
        users = np.arange(N_USERS, dtype=np.int32)
        batch = fitted.recall(users, 7, history, explain=True, block=16)
        for user in users:
            one = fitted.recall(np.array([user]), 7, history, explain=True)
            np.testing.assert_array_equal(one.ids[0], batch.ids[user])
            np.testing.assert_allclose(one.scores[0], batch.scores[user], rtol=1e-5, atol=1e-6)
            if batch.evidence is not None:
                np.testing.assert_array_equal(one.evidence[0], batch.evidence[user])

    def test_seen_items_never_returned(self, fitted, data):
        history = data.histories()
        got = fitted.recall(np.arange(N_USERS), N_ITEMS, history)
        for user in range(N_USERS):
            assert not set(history.of(user).tolist()) & set(got.ids[user].tolist())

    def test_k_larger_than_catalog(self, fitted, data):
        history = data.histories()
        k = N_ITEMS + 7
        got = fitted.recall(np.arange(N_USERS), k, history)
        assert got.shape == (N_USERS, k)
        for user in range(N_USERS):
            row = got.ids[user]
            valid = row[row >= 0]
            assert len(valid) == len(set(valid.tolist())), "duplicate candidates"
            assert len(valid) == N_ITEMS - len(set(history.of(user).tolist()))
            assert (row[len(valid):] == -1).all()
            assert np.isneginf(got.scores[user, len(valid):]).all()
            assert (np.diff(got.scores[user, :len(valid)]) <= 0).all(), "not best first"

    def test_allowed_mask_respected(self, fitted, data):
        allowed = np.zeros(N_ITEMS, bool)
        allowed[::3] = True
        got = fitted.recall(np.arange(N_USERS), N_ITEMS, data.histories(), allowed=allowed)
        returned = got.ids[got.ids >= 0]
        assert len(returned) > 0
        assert allowed[returned].all()

    def test_unknown_user_with_history(self, fitted, data):
        # two users the channel never saw, one per community, each with 3 community items
        new_users = [N_USERS, N_USERS, N_USERS, N_USERS + 1, N_USERS + 1, N_USERS + 1]
        new_items = [0, 1, 2, 10, 11, 12]
        history = with_extra(data, new_users, new_items, N_USERS + 2, N_ITEMS)
        got = fitted.recall(np.array([N_USERS, N_USERS + 1]), 4, history)
        assert (got.ids >= 0).all()
        assert not set(got.ids[0].tolist()) & {0, 1, 2}
        if self.personalised:
            assert (got.ids[0] < PER_COMMUNITY).all()
            assert (got.ids[1] >= PER_COMMUNITY).all()

    def test_unknown_user_without_history_gets_popularity(self, fitted, data):
        history = with_extra(data, [], [], N_USERS + 1, N_ITEMS)
        got = fitted.recall(np.array([N_USERS]), 6, history)
        np.testing.assert_array_equal(got.ids[0], popularity_ranking(data)[:6])

    def test_fallback_marks_what_is_not_the_channels_own(self, fitted, data):
        """Regression: the service named a channel for the popularity list it falls back to
        for an empty history (and for zero-score fillers); ``Candidates.fallback`` now tells
        them apart from the channel's own candidates."""
        history = with_extra(data, [], [], N_USERS + 1, N_ITEMS)
        cold = fitted.recall(np.array([N_USERS]), 6, history, explain=True)
        if not self.personalised:  # its ranking is its own signal
            assert cold.fallback is None or not cold.fallback.any()
            return
        assert cold.fallback is not None and cold.fallback[cold.ids >= 0].all()
        assert (cold.own().ids == -1).all()
        got = fitted.recall(np.arange(N_USERS), N_ITEMS, data.histories(), explain=True)
        marked = np.zeros(got.shape, bool) if got.fallback is None else got.fallback
        # a known user's own candidates come first, then whatever the channel only fills in
        # (then the -1 padding)
        assert (np.diff((marked | (got.ids < 0)).astype(int), axis=1) >= 0).all()
        own = got.own()
        assert (own.ids >= 0).any(axis=1).all(), "every known user has own candidates"
        np.testing.assert_array_equal(own.ids[~marked], got.ids[~marked])
        if fitted.signal_floor is not None:
            valid = own.ids >= 0
            assert (own.scores[valid] > fitted.signal_floor).all()
            # no co-occurrence crosses the communities: the other one is filler only
            assert (own.ids[valid] // PER_COMMUNITY
                    == community(np.nonzero(valid)[0])).all()
            assert marked.any()

    def test_items_added_after_fit_never_crash(self, fitted, data):
        # the catalog grew by 3 items; user 0 already interacted with one of them
        history = with_extra(data, [0, N_USERS], [N_ITEMS + 1, N_ITEMS + 2], N_USERS + 1,
                             N_ITEMS + 3)
        got = fitted.recall(np.array([0, 1, N_USERS]), N_ITEMS + 3, history, explain=True)
        assert got.shape == (3, N_ITEMS + 3)
        assert (got.ids < N_ITEMS).all(), "items unknown at fit are never recalled"

    def test_evidence_points_into_history(self, fitted, data):
        history = data.histories()
        got = fitted.recall(np.arange(N_USERS), 3, history, explain=True)  # all in-community
        if got.evidence is None:
            assert got.evidence_kind == "none"
            return
        assert got.evidence_kind == "item" and got.evidence.shape == got.ids.shape
        for user in range(N_USERS):
            ev = got.evidence[user]
            assert set(ev[ev >= 0].tolist()) <= set(history.of(user).tolist())
        if self.personalised:
            has = got.evidence >= 0
            assert has.mean() > 0.5
            # the evidence comes from the candidate's own community
            assert (got.evidence[has] // PER_COMMUNITY == got.ids[has] // PER_COMMUNITY).all()

    def test_save_load_round_trip(self, fitted, data, tmp_path):
        fitted.save(tmp_path / "artifact")
        with np.load(tmp_path / "artifact" / "state.npz", allow_pickle=False) as npz:
            assert npz.files, "nothing was saved"
        loaded = load_channel(tmp_path / "artifact")
        assert type(loaded) is type(fitted) and loaded.get_params() == fitted.get_params()
        history = data.histories()
        users = np.arange(N_USERS)
        a = fitted.recall(users, 8, history, explain=True)
        b = loaded.recall(users, 8, history, explain=True)
        np.testing.assert_array_equal(a.ids, b.ids)
        np.testing.assert_array_equal(a.scores, b.scores)
        if a.evidence is not None:
            np.testing.assert_array_equal(a.evidence, b.evidence)

    def test_clone_is_unfitted_with_equal_params(self, fitted, data):
        copy = fitted.clone()
        assert type(copy) is type(fitted) and copy.get_params() == fitted.get_params()
        assert not any(key.endswith("_") for key in vars(copy))
        with pytest.raises(NotFittedError):
            copy.recall(np.arange(2), 3, data.histories())

    @pytest.mark.slow
    def test_min_recall_on_ml100k(self):
        from llmrecall.data.builtin import load_builtin
        from llmrecall.evaluate import evaluate_channel, make_split

        split = make_split(load_builtin("ml-100k"), "loo")
        channel = self.ml100k_channel().fit(split.train)
        recall = evaluate_channel(channel, split.test, k=50, ks=(50,))["recall@50"]
        assert recall >= self.min_recall_at_50, f"{channel.kind} Recall@50 {recall:.4f}"
