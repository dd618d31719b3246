"""The built-in datasets load with their documented sizes."""

from __future__ import annotations

import numpy as np
import pytest

from llmrecall.data.builtin import load_builtin
from llmrecall.errors import DataError


def _check_consistent(ds):
    log = ds.interactions
    assert log.user.min() >= 0 and log.user.max() < ds.n_users
    assert log.item.min() >= 0 and log.item.max() < ds.n_items
    assert len(ds.catalog) == ds.n_items
    assert np.unique(log.user).size == ds.n_users  # every user has history


def test_ml100k_sizes():
    ds = load_builtin("ml-100k")
    assert (ds.n_users, ds.n_items, len(ds.interactions)) == (943, 1_682, 100_000)
    _check_consistent(ds)
    assert np.isfinite(ds.interactions.rating).all()
    assert set(np.unique(ds.interactions.rating)) == {1, 2, 3, 4, 5}
    assert ds.catalog.titles[0] == "Toy Story"


@pytest.mark.slow
def test_ml1m_sizes():
    ds = load_builtin("ml-1m")
    assert ds.n_users == 6_040 and len(ds.interactions) == 1_000_209
    assert np.unique(ds.interactions.item).size == 3_706  # items with at least one rating
    _check_consistent(ds)


@pytest.mark.slow
def test_amazon_games_6k_sizes():
    ds = load_builtin("amazon-games-6k")
    assert (ds.n_users, ds.n_items, len(ds.interactions)) == (50_546, 16_859, 440_264)
    _check_consistent(ds)
    # time is the position in each user's sequence: 0, 1, 2, ... per user
    hist = ds.histories()
    first = hist.times[hist.indptr[:-1]]
    assert (first == 0).all()


def test_unknown_builtin_name():
    with pytest.raises(DataError, match="ml-100k"):
        load_builtin("ml-10m")
