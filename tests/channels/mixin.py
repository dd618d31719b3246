"""``ChannelContract``: the tests every recall channel must pass.

A channel's test class inherits it and sets ``make_channel`` (an unfitted channel small
enough for the synthetic data) and ``min_recall_at_50`` (the slow ml-100k check).

Synthetic data: two disjoint communities. Users 0..59 only take items 0..9 (community A),
users 60..119 only items 10..19 (community B); each user takes 5 items of their community
and popularity differs per item, so every channel that learns from co-occurrence must put a
user's unseen community items first.
"""

from __future__ import annotations

import numpy as np
import pytest

from llmrecall.channels.base import Channel
from llmrecall.channels.registry import load_channel
from llmrecall.data.dataset import Catalog, Dataset, Histories, Interactions
from llmrecall.data.vocab import Vocabulary
from llmrecall.errors import NotFittedError

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


class ChannelContract:
    """Inherit and define ``make_channel``; set ``personalised = False`` for channels that
    rank every user alike, and ``min_recall_at_50`` for the ml-100k check."""

    personalised = True
    min_recall_at_50: float = 0.0

    def make_channel(self) -> Channel:
        raise AssertionError("test classes define make_channel()")

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
