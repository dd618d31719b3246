"""The text-predicted popularity prior: a ridge regression from item text to log count."""

from __future__ import annotations

import numpy as np
import pytest

from llmrecall.channels.popularity_prior import TextPopularityPrior
from llmrecall.errors import DataError


def _items(n: int = 400, d: int = 24, seed: int = 0):
    """Unit text vectors and counts whose log is linear in them, plus noise."""
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(n, d)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    log_count = 3.0 + 4.0 * vectors @ rng.normal(size=d) + rng.normal(0, 0.1, n)
    return vectors, np.exp(log_count), log_count


def test_predicts_the_log_count_of_items_it_never_saw():
    vectors, counts, log_count = _items()
    new = np.arange(len(counts)) % 5 == 0
    prior = TextPopularityPrior().fit(vectors, np.where(new, 0.0, counts))
    predicted = prior.predict(vectors[new])
    assert np.corrcoef(predicted, log_count[new])[0, 1] > 0.95
    assert np.abs(predicted - log_count[new]).mean() < 0.5


def test_items_with_events_keep_their_observed_log_count():
    vectors, counts, _ = _items()
    counts = np.round(counts)
    counts[:50] = 0.0  # new: predicted
    prior = TextPopularityPrior().fit(vectors, counts)
    item_prior = prior.item_prior(vectors, counts)
    np.testing.assert_allclose(item_prior[counts > 0], np.log(counts[counts > 0]), rtol=1e-6)
    np.testing.assert_allclose(item_prior[:50], prior.predict(vectors[:50]), rtol=1e-6)
    assert item_prior.dtype == np.float32 and np.isfinite(item_prior).all()


def test_a_prediction_reads_its_own_row_alone():
    vectors, counts, _ = _items()
    prior = TextPopularityPrior().fit(vectors, counts)
    np.testing.assert_array_equal(prior.predict(vectors[7:8]), prior.predict(vectors)[7:8])


@pytest.mark.parametrize("counts", [[0, 0, 0, 0], [5, 0, 0, 0], [3, 3, 0, 3]])
def test_without_two_distinct_counts_the_prior_is_constant(counts):
    vectors = np.eye(4, dtype=np.float32)
    prior = TextPopularityPrior().fit(vectors, np.asarray(counts, float))
    predicted = prior.predict(vectors)
    assert np.ptp(predicted) == 0 and np.isfinite(predicted).all()


def test_counts_must_match_the_vectors():
    with pytest.raises(DataError, match="3 counts"):
        TextPopularityPrior().fit(np.zeros((4, 2), np.float32), np.ones(3))
