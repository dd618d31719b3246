"""Each classic channel's learned state against a direct (slow, obvious) computation."""

import pickle

import numpy as np
import pytest
import scipy.sparse as sp

from llmrecall.channels import ALS, EASE, ItemCF, Popularity, Swing
from llmrecall.channels.history import best_history_item, weighted_history
from llmrecall.channels.neighbors import training_matrix
from llmrecall.data.dataset import Catalog, Dataset, Histories, Interactions
from llmrecall.data.vocab import Vocabulary
from llmrecall.errors import ConfigError

from .mixin import synthetic_dataset


def random_dataset(n_users=30, n_items=15, density=0.3, seed=1) -> Dataset:
    rng = np.random.default_rng(seed)
    mask = rng.random((n_users, n_items)) < density
    users, items = np.nonzero(mask)
    log = Interactions.build(users, items, time=rng.random(len(users)) * 100)
    return Dataset("random", Vocabulary(map(str, range(n_users))),
                   Vocabulary(map(str, range(n_items))), log, Catalog.empty(n_items))


def test_itemcf_reproduces_recbole_itemknn():
    # RecBole ItemKNN: cosine / (|x_i||x_j| + shrink + 1e-6), self 0, top-k per column,
    # prediction = R @ W over the whole binary history
    data = random_dataset()
    x = training_matrix(data).toarray().astype(np.float64)
    k, shrink = 4, 3.0
    norms = np.sqrt(x.sum(axis=0))
    sim = (x.T @ x) / (norms[:, None] * norms[None, :] + shrink + 1e-6)
    np.fill_diagonal(sim, 0.0)
    expected = np.zeros_like(sim)
    for j in range(sim.shape[1]):
        top = np.argsort(-sim[:, j], kind="stable")[:k]
        expected[top, j] = sim[top, j]
    channel = ItemCF(neighbors=k, shrink=shrink, iuf=False, history_length=None,
                     position_half_life=None).fit(data)
    np.testing.assert_allclose(channel.similarity_.toarray(), expected, rtol=1e-5, atol=1e-7)
    users = np.arange(data.n_users)
    scores = channel.score(users, data.histories())
    np.testing.assert_allclose(scores, x @ expected, rtol=1e-5, atol=1e-6)


def test_itemcf_iuf_damps_long_histories():
    data = random_dataset()
    x = training_matrix(data).toarray().astype(np.float64)
    damp = 1.0 / np.log1p(x.sum(axis=1))
    norms = np.sqrt(x.sum(axis=0))
    sim = (x.T @ (damp[:, None] * x)) / (norms[:, None] * norms[None, :] + 1e-6)
    np.fill_diagonal(sim, 0.0)
    channel = ItemCF(neighbors=data.n_items).fit(data)
    np.testing.assert_allclose(channel.similarity_.toarray(), sim, rtol=1e-5, atol=1e-7)


def test_swing_matches_the_definition():
    data = random_dataset(n_users=12, n_items=8, density=0.45)
    x = training_matrix(data).toarray().astype(bool)
    alpha, power = 1.0, 0.5
    weight = x.sum(axis=1) ** -power
    expected = np.zeros((8, 8))
    for u in range(12):
        for v in range(u + 1, 12):
            common = np.flatnonzero(x[u] & x[v])
            for i in common:
                for j in common:
                    if i != j:
                        expected[i, j] += weight[u] * weight[v] / (alpha + len(common))
    channel = Swing(alpha=alpha, user_power=power, max_users_per_item=100,
                    neighbors=8).fit(data)
    np.testing.assert_allclose(channel.similarity_.toarray(), expected, rtol=1e-5, atol=1e-7)


def test_swing_caps_users_per_item_to_the_most_recent():
    data = random_dataset(n_users=12, n_items=8, density=0.6)
    capped = Swing(max_users_per_item=3, neighbors=8).fit(data)
    full = Swing(max_users_per_item=100, neighbors=8).fit(data)
    assert capped.similarity_.sum() < full.similarity_.sum()
    with pytest.raises(ConfigError, match="max_users_per_item"):
        Swing(max_users_per_item=1).fit(data)


def test_ease_closed_form():
    data = random_dataset()
    x = training_matrix(data).toarray().astype(np.float64)
    lam = 7.0
    p = np.linalg.inv(x.T @ x + lam * np.eye(x.shape[1]))
    b = np.eye(x.shape[1]) - p / np.diag(p)[None, :]
    channel = EASE(regularization=lam).fit(data)
    np.testing.assert_allclose(channel.weights_, b, rtol=1e-4, atol=1e-6)
    assert np.all(np.diag(channel.weights_) == 0)


def test_als_user_vectors_are_exact_least_squares():
    data = random_dataset()
    channel = ALS(factors=3, regularization=0.5, alpha=4.0, iterations=5).fit(data)
    y = channel.item_factors_.astype(np.float64)
    history = data.histories()
    hist = weighted_history(history, np.arange(5), data.n_items)
    vectors, placed = channel.user_vectors(np.arange(5), hist)
    assert placed.all()
    for u in range(5):
        items = hist[u].indices
        c = np.zeros(data.n_items)
        c[items] = 4.0
        a = y.T @ y + y[items].T @ ((c[items] - 1)[:, None] * y[items]) + 0.5 * np.eye(3)
        b = y[items].T @ c[items]
        np.testing.assert_allclose(vectors[u], np.linalg.solve(a, b), rtol=1e-3, atol=1e-4)


def test_als_solver_follows_new_item_factors():
    """The cached solver (and its YᵀY) must not outlive the factors it was built from."""
    data = random_dataset()
    channel = ALS(factors=3, iterations=5, seed=0).fit(data)
    hist = weighted_history(data.histories(), np.arange(5), data.n_items)
    before, _ = channel.user_vectors(np.arange(5), hist)
    channel.item_factors_ = channel.item_factors_ * 2.0  # what load_state or a refit does
    after, _ = channel.user_vectors(np.arange(5), hist)
    fresh = ALS(factors=3, iterations=5, seed=0).fit(data)
    fresh.item_factors_ = channel.item_factors_.copy()
    expected, _ = fresh.user_vectors(np.arange(5), hist)
    np.testing.assert_allclose(after, expected, rtol=1e-5)
    assert not np.allclose(after, before)


def test_als_solves_users_on_read_only_item_factors():
    """A channel sent through Ray's object store holds read-only (zero-copy) arrays:
    implicit's solver, which takes a writable buffer, must get the same vectors."""
    data = random_dataset()
    channel = ALS(factors=3, iterations=5, seed=0).fit(data)
    hist = weighted_history(data.histories(), np.arange(5), data.n_items)
    expected, _ = channel.user_vectors(np.arange(5), hist)
    frozen = pickle.loads(pickle.dumps(channel))
    frozen.item_factors_.flags.writeable = False
    vectors, placed = frozen.user_vectors(np.arange(5), hist)
    assert placed.all() and not frozen.item_factors_.flags.writeable
    np.testing.assert_array_equal(vectors, expected)


def test_popularity_half_life_decays_from_the_latest_time():
    # item 0: one interaction at t=100 (latest); item 1: three at t=0 with half-life 50
    log = Interactions.build([0, 1, 2, 3], [0, 1, 1, 1], time=[100.0, 0.0, 0.0, 0.0])
    data = Dataset("p", Vocabulary("0123"), Vocabulary("01"), log, Catalog.empty(2))
    channel = Popularity(half_life=50.0).fit(data)
    np.testing.assert_allclose(channel.scores_, [1.0, 3 * 0.25])
    assert Popularity().fit(data).scores_.tolist() == [1.0, 3.0]


def test_weighted_history_keeps_recent_items_and_decays():
    log = Interactions.build([0, 0, 0, 0], [3, 1, 3, 2], time=[1.0, 2.0, 3.0, 4.0])
    history = Histories.from_interactions(log, 1, 5)
    hist = weighted_history(history, np.array([0]), 5, length=3, position_half_life=1.0)
    # last 3: item 1 (2 back), item 3 (1 back), item 2 (latest); the older 3 is cut
    np.testing.assert_allclose(hist.toarray()[0], [0, 0.25, 1.0, 0.5, 0])
    by_time = weighted_history(history, np.array([0]), 5, time_half_life=2.0)
    np.testing.assert_allclose(by_time.toarray()[0], [0, 2 ** -1, 1.0, 2 ** -0.5, 0])


def test_best_history_item_matches_brute_force():
    rng = np.random.default_rng(3)
    hist = sp.random(9, 12, density=0.4, format="csr", random_state=4, dtype=np.float32)
    hist.sort_indices()
    value = rng.normal(size=(12, 12))
    ids = rng.integers(-1, 12, size=(9, 5)).astype(np.int32)
    got = best_history_item(hist, ids, lambda h, j: value[h, j])
    dense = hist.toarray()
    for r in range(9):
        for c in range(5):
            j = ids[r, c]
            contrib = np.where(dense[r] > 0, dense[r] * (value[:, j] if j >= 0 else 0), -np.inf)
            best = int(np.argmax(contrib))
            expected = best if j >= 0 and contrib[best] > 0 else -1
            assert got[r, c] == expected


def test_checkerboard_is_a_real_known_answer():
    # guards the contract data itself: each user stays inside one community
    data = synthetic_dataset()
    log = data.interactions
    assert ((log.user >= 60) == (log.item >= 10)).all()


def test_als_recomputes_known_users_from_a_fresher_history():
    data = synthetic_dataset()
    channel = ALS(factors=2, iterations=10).fit(data)
    before = channel.score(np.array([0]), data.histories())
    fresher = Histories.from_interactions(
        data.interactions.concat(Interactions.build([0, 0], [15, 16], time=[1e3, 1e3 + 1])),
        data.n_users, data.n_items)
    after = channel.score(np.array([0]), fresher)
    assert after[0, 15:20].mean() > before[0, 15:20].mean()


def test_bpr_keeps_fitted_vectors_and_folds_in_new_users():
    from llmrecall.channels import BPR

    data = synthetic_dataset()
    channel = BPR(factors=4, iterations=20).fit(data)
    hist = sp.csr_matrix(([1.0, 1.0], ([1, 1], [2, 5])), shape=(2, data.n_items),
                         dtype=np.float32)
    vectors, placed = channel.user_vectors(np.array([3, data.n_users]), hist)
    np.testing.assert_array_equal(vectors[0], channel.user_factors_[3])
    expected = channel.item_factors_[[2, 5]].mean(axis=0)
    np.testing.assert_allclose(vectors[1, :-1], expected[:-1], rtol=1e-6)
    assert vectors[1, -1] == 1.0 and placed.all()
