"""``cf_transfer``: EASE on warm items, EASE carried through text neighbours to the rest.

The shared contract runs in test_lm_contract.py; here what is particular to the channel, on
ml-100k under ``cold-items`` (10% of the items have no training event and only they are
ranked): new items placed from their text must beat the mean-history text baseline by a wide
margin, warm items must keep EASE's exact scores, and an item added at run time must land
where the fit would have put it.
"""

from __future__ import annotations

import numpy as np
import pytest

from llmrecall.channels.cf_transfer import CFTransfer, text_neighbors
from llmrecall.channels.ease import EASE
from llmrecall.channels.semantic import SemanticUserInterest
from llmrecall.channels.text_features import item_texts
from llmrecall.data.builtin import load_builtin
from llmrecall.data.dataset import Histories
from llmrecall.errors import ConfigError
from llmrecall.evaluate import evaluate_channel, make_split


@pytest.fixture(scope="module")
def cold_split(lm_cache):
    return make_split(load_builtin("ml-100k"), "cold-items", seed=0)


@pytest.fixture(scope="module")
def fitted(cold_split):
    return CFTransfer().fit(cold_split.train)


def test_text_neighbors_are_nearest_first_weights_sum_to_one_and_batch_free():
    rng = np.random.default_rng(0)
    unit = lambda x: (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)  # noqa: E731
    warm, items = unit(rng.normal(size=(40, 8))), unit(rng.normal(size=(7, 8)))
    rows, weights = text_neighbors(items, warm, 5, temperature=0.1)
    assert rows.shape == weights.shape == (7, 5)
    cosine = items @ warm.T
    np.testing.assert_array_equal(rows[:, 0], cosine.argmax(axis=1))
    assert (np.diff(np.take_along_axis(cosine, rows, 1), axis=1) <= 0).all()
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, rtol=1e-6)
    assert (np.diff(weights, axis=1) <= 0).all()  # nearer: never less weight
    alone_rows, alone_weights = text_neighbors(items[3:4], warm, 5, temperature=0.1)
    np.testing.assert_array_equal(alone_rows[0], rows[3])
    np.testing.assert_allclose(alone_weights[0], weights[3], rtol=1e-6)
    # more neighbours than warm items: all of them
    assert text_neighbors(items, warm[:3], 5, temperature=0.1)[0].shape == (7, 3)


@pytest.mark.parametrize("params", [{"neighbors": 0}, {"temperature": 0.0},
                                    {"temperature": float("nan")}, {"regularization": -1.0},
                                    {"mapping_weight": -0.1}, {"mapping_weight": 1.5},
                                    {"mapping_weight": float("nan")}, {"mapping_ridge": 0.0}])
def test_bad_params_are_refused_before_fitting(params, cold_split):
    with pytest.raises(ConfigError):
        CFTransfer(**params).fit(cold_split.train)


def test_new_items_beat_the_mean_history_baseline(cold_split, fitted):
    """Validation task (the test task is benchmarks.md §3b's): measured 0.3120 against
    0.1395 for the recency-weighted mean of the history's text vectors."""
    task = cold_split.valid
    baseline = SemanticUserInterest(n_interests=1).fit(cold_split.train)
    recall = {name: evaluate_channel(ch, task, k=50, ks=(10,))["recall@10"]
              for name, ch in (("cf_transfer", fitted), ("baseline", baseline))}
    assert recall["cf_transfer"] > 1.8 * recall["baseline"], recall


def test_the_text_mapping_solves_its_ridge_regression(fitted):
    """W minimises ||E_w W - B[:, warm].T||^2 + ridge ||W||^2: its normal equations hold."""
    vectors = fitted.warm_vectors_.astype(np.float64)
    mapping = fitted.mapping_.astype(np.float64)
    assert mapping.shape == (vectors.shape[1], len(fitted.items_))
    lhs = (vectors.T @ vectors + fitted.mapping_ridge * np.eye(vectors.shape[1])) @ mapping
    rhs = vectors.T @ fitted.weights_[:, fitted.warm_].T.astype(np.float64)
    np.testing.assert_allclose(lhs, rhs, rtol=1e-3, atol=1e-4 * np.abs(rhs).max())


def test_mapping_weight_mixes_the_neighbours_and_the_mapping(cold_split, fitted):
    """A non-warm item's score is (1 - beta) * neighbours' estimate + beta * h @ W.T @ e;
    warm items are EASE's whatever beta."""
    users, history = np.arange(40), cold_split.train.histories()
    by_weight = {}
    for weight in (0.0, 1.0):
        channel = CFTransfer(mapping_weight=weight).fit(cold_split.train)
        by_weight[weight] = channel.score(users, history)
    mixed = fitted.score(users, history)
    cold = np.ones(cold_split.train.n_items, bool)
    cold[fitted.items_[fitted.warm_]] = False
    np.testing.assert_array_equal(fitted.mapped_items_, np.flatnonzero(cold))
    beta = fitted.mapping_weight
    assert 0 < beta < 1
    np.testing.assert_allclose(
        mixed[:, cold], (1 - beta) * by_weight[0.0][:, cold] + beta * by_weight[1.0][:, cold],
        rtol=1e-4, atol=1e-6)
    for scores in by_weight.values():
        np.testing.assert_array_equal(scores[:, ~cold], mixed[:, ~cold])
    # beta = 1: exactly the mapped estimate, from the fitted mapping and the item's vector
    hist = fitted._history(users, history)[:, fitted.items_]
    expected = (hist @ fitted.mapping_.T) @ fitted.mapped_vectors_.T
    np.testing.assert_allclose(by_weight[1.0][:, cold], expected, rtol=1e-4, atol=1e-6)
    assert not np.allclose(by_weight[0.0][:, cold], by_weight[1.0][:, cold])


def test_the_mix_beats_the_neighbours_alone_on_validation(cold_split, fitted):
    """Measured on ml-100k's validation task: 0.3394 for the default mix (beta 0.7) against
    0.3120 for the neighbours alone (beta 0); docs/benchmarks.md §3b has the grid."""
    neighbours_only = CFTransfer(mapping_weight=0.0).fit(cold_split.train)
    recall = {name: evaluate_channel(ch, cold_split.valid, k=50, ks=(10,))["recall@10"]
              for name, ch in (("mix", fitted), ("neighbours", neighbours_only))}
    assert recall["mix"] > recall["neighbours"] + 0.01, recall


def test_evidence_of_a_new_item_is_the_history_item_adding_most(cold_split):
    """With the mapping alone, a new item's evidence is the history item h maximising
    weight[h] * (W.T @ e[j])[h]."""
    channel = CFTransfer(mapping_weight=1.0).fit(cold_split.train)
    history = cold_split.train.histories()
    users = np.arange(5)
    new = np.flatnonzero(cold_split.test.candidate_mask)[:4]
    ids = np.tile(new, (len(users), 1)).astype(np.int32)
    found = channel.evidence(users, ids, history)
    hist = channel._history(users, history).tocsr()
    position = {int(item): p for p, item in enumerate(channel.items_)}
    row_of = {int(item): r for r, item in enumerate(channel.mapped_items_)}
    for u in range(len(users)):
        items = hist.indices[hist.indptr[u]:hist.indptr[u + 1]]
        weights = hist.data[hist.indptr[u]:hist.indptr[u + 1]]
        for c, item in enumerate(new):
            contribution = [w * float(channel.mapping_[:, position[h]]
                                      @ channel.mapped_vectors_[row_of[int(item)]])
                            if h in position else -np.inf for h, w in zip(items, weights)]
            best = int(np.argmax(contribution))
            assert found[u, c] == (items[best] if contribution[best] > 0 else -1)


def test_warm_items_keep_eases_exact_scores(cold_split, fitted):
    ease = EASE(max_items=fitted.max_items).fit(cold_split.train)
    users = np.arange(50)
    history = cold_split.train.histories()
    warm = np.zeros(cold_split.train.n_items, bool)
    warm[fitted.items_[fitted.warm_]] = True
    assert 0 < warm.sum() < len(warm)  # the new items are not warm
    ours, theirs = fitted.score(users, history), ease.score(users, history)
    np.testing.assert_allclose(ours[:, warm], theirs[:, warm], rtol=1e-5, atol=1e-6)
    # EASE cannot rank the new items (all 0: no training event); the transfer can
    assert (theirs[:, ~warm] == 0).all()
    assert np.isfinite(ours[:, ~warm]).all() and (np.ptp(ours[:, ~warm], axis=1) > 0).all()


def test_an_item_added_at_run_time_lands_where_the_fit_put_it(cold_split, fitted, tmp_path):
    from llmrecall.channels.registry import load_channel

    channel = load_channel(fitted.save(tmp_path / "copy"))
    new = np.flatnonzero(cold_split.test.candidate_mask)[:3]
    texts = [item_texts(cold_split.train)[i] for i in new]
    users, history = np.arange(20), cold_split.train.histories()
    before = channel.score(users, history)
    channel.add_items(new.astype(np.int32), texts)  # the same texts the fit embedded
    np.testing.assert_allclose(channel.score(users, history), before, rtol=1e-5, atol=1e-6)
    # a warm item keeps its EASE score whatever its new text
    warm_item = int(fitted.items_[fitted.warm_[0]])
    channel.add_items(np.array([warm_item]), ["an entirely different text"])
    np.testing.assert_array_equal(channel.score(users, history)[:, warm_item],
                                  before[:, warm_item])
    # a new id past the catalog gets a finite score; an id in between that nobody named: -inf
    end = cold_split.train.n_items
    channel.add_items(np.array([end + 1]), [texts[0]])
    wide = Histories.from_interactions(cold_split.train.interactions,
                                       cold_split.train.n_users, end + 2)
    scores = channel.score(users, wide)
    assert np.isfinite(scores[:, end + 1]).all() and np.isneginf(scores[:, end]).all()
    # each placed item has one mapped vector: edited ones replaced, new ones appended
    assert (np.diff(channel.mapped_items_) > 0).all() and channel.mapped_items_[-1] == end + 1
    assert len(channel.mapped_items_) == len(fitted.mapped_items_) + 1
    np.testing.assert_allclose(scores[:, end + 1], before[:, new[0]], rtol=1e-5, atol=1e-6)
