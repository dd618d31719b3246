"""Checks for the language-model channels on the topic domain, beyond the shared contract.

The shared contract (``mixin.ChannelContract``, run in ``test_lm_contract.py``) covers batch ==
single, unknown users, k > catalog, seen items, the allowed mask, save/load and clone. This
mixin adds, on real item texts: ordered and duplicate-free answers, the popularity fallback
with the evidence it (does not) give, fresh ad-hoc histories, items added after fit, and a
save/load round trip that checks the artifact formats (no pickles anywhere).

A subclass provides ``make_channel()`` (unfitted, small settings).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from llmrecall.channels import Channel
from llmrecall.channels.registry import load_channel
from llmrecall.data.dataset import Dataset, Histories, Interactions

from .lm_data import make_dataset


def with_extra_users(dataset: Dataset, extra: int) -> Histories:
    """The dataset's histories plus ``extra`` trailing users with empty histories."""
    h = dataset.histories()
    indptr = np.concatenate([h.indptr, np.full(extra, h.indptr[-1], np.int64)])
    return Histories(indptr, h.items, h.times, h.weights, h.n_items)


class LMChannelContract:
    """Mixin: contract tests, parameterised by :meth:`make_channel`."""

    def make_channel(self) -> Channel:
        raise TypeError("subclasses define make_channel()")

    def dataset(self) -> Dataset:
        return make_dataset()

    @pytest.fixture(scope="class")
    @classmethod
    def fitted(cls, lm_cache):
        """(fitted channel, dataset), fitted once per test class."""
        contract = cls()
        data = contract.dataset()
        return contract.make_channel().fit(data), data

    def test_scores_sorted_and_padded_consistently(self, fitted):
        channel, data = fitted
        c = channel.recall(np.arange(data.n_users, dtype=np.int32), 10, data.histories())
        finite = np.isfinite(c.scores)
        assert ((c.ids >= 0) == finite).all()
        assert (np.diff(np.where(finite, c.scores, -1e30), axis=1) <= 1e-6).all()
        for row in c.ids:
            real = row[row >= 0]
            assert len(np.unique(real)) == len(real)

    def test_unknown_and_empty_users_get_popularity(self, fitted):
        channel, data = fitted
        h = with_extra_users(data, 3)
        new = np.arange(data.n_users, data.n_users + 3, dtype=np.int32)
        c = channel.recall(new, 5, h, explain=True)
        assert c.ids.shape == (3, 5)
        # an empty history gives nothing to go on: the popularity ranking, no evidence
        counts = np.bincount(data.interactions.item, minlength=data.n_items)
        order = np.lexsort((np.arange(data.n_items), -counts))[:5]
        assert (c.ids == order).all()
        assert (c.evidence == -1).all()
        c0 = channel.recall(np.zeros(0, np.int32), 5, h)
        assert c0.ids.shape == (0, 5)

    def test_items_added_after_fit_are_never_recalled(self, fitted):
        channel, data = fitted
        h = data.histories()
        grown = Histories(h.indptr, h.items, h.times, h.weights, data.n_items + 3)
        # user 0 also has an item the channel never saw, as its latest event
        extra = Interactions.build(user=[0], item=[data.n_items + 1], time=[1e9])
        full = Histories.from_interactions(data.interactions.concat(extra), data.n_users,
                                           data.n_items + 3)
        for hist in (grown, full):
            c = channel.recall(np.arange(data.n_users, dtype=np.int32), data.n_items + 3, hist,
                               explain=True)
            assert (c.ids < data.n_items).all() and (c.ids[:, :5] >= 0).all()

    def test_fresh_history_counts(self, fitted):
        """A new user with an ad-hoc history gets candidates that depend on it."""
        channel, data = fitted
        h = data.histories()
        log = Interactions.build(user=[0, 0, 0, 1, 1, 1], item=[0, 1, 2, 20, 21, 22],
                                 time=[1, 2, 3, 1, 2, 3])
        fresh = Histories.from_interactions(log, 2, data.n_items)
        c = channel.recall(np.array([0, 1], np.int32), 5, fresh)
        assert (c.ids >= 0).all()
        assert not np.array_equal(c.ids[0], c.ids[1])
        assert not np.isin(c.ids[0], [0, 1, 2]).any()
        del h

    def test_save_load_round_trip(self, fitted, tmp_path):
        channel, data = fitted
        h = data.histories()
        channel.save(tmp_path / "ch")
        files = {p.name for p in (tmp_path / "ch").rglob("*") if p.is_file()}
        assert not any(f.endswith((".pkl", ".pickle", ".pt")) for f in files)
        for npz in (tmp_path / "ch").rglob("*.npz"):
            with np.load(npz, allow_pickle=False) as arrays:
                [arrays[k] for k in arrays.files]
        meta = json.loads((tmp_path / "ch" / "params.json").read_text())
        assert meta["kind"] == channel.kind
        loaded = load_channel(tmp_path / "ch")
        assert type(loaded) is type(channel)
        users = np.arange(data.n_users, dtype=np.int32)
        a, b = channel.recall(users, 10, h, explain=True), loaded.recall(users, 10, h, explain=True)
        np.testing.assert_array_equal(a.ids, b.ids)
        np.testing.assert_allclose(a.scores, b.scores, rtol=1e-5, atol=1e-6)

