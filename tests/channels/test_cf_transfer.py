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
                                    {"temperature": float("nan")}, {"regularization": -1.0}])
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
    np.testing.assert_allclose(scores[:, end + 1], before[:, new[0]], rtol=1e-5, atol=1e-6)
