"""semantic_i2i and semantic_user: contract plus known answers on the topic domain."""

from __future__ import annotations

import numpy as np
import pytest

from llmrecall.channels.semantic import SemanticItemToItem, SemanticUserInterest
from llmrecall.errors import ConfigError

from .lm_contract import LMChannelContract
from .lm_data import COLD, N_SINGLE, make_dataset, topic_of, user_topics


class TestSemanticItemToItem(LMChannelContract):
    def make_channel(self):
        return SemanticItemToItem(recent=5)

    def test_neighbours_share_the_topic_and_cite_history(self, fitted):
        channel, data = fitted
        h = data.histories()
        users = np.arange(N_SINGLE, dtype=np.int32)
        c = channel.recall(users, 2, h, explain=True)
        wanted = np.array([user_topics(u)[0] for u in users])
        assert (topic_of(c.ids) == wanted[:, None]).mean() >= 0.9
        recent, _ = h.recent(users, 5)
        assert all(np.isin(c.evidence[i], recent[i]).all() for i in range(len(users)))

    def test_cold_items_are_retrievable(self, fitted):
        channel, data = fitted
        allowed = np.zeros(data.n_items, bool)
        allowed[COLD] = True
        users = np.arange(N_SINGLE, dtype=np.int32)
        c = channel.recall(users, 1, data.histories(), allowed=allowed)
        wanted = np.array([user_topics(u)[0] for u in users])
        assert (topic_of(c.ids[:, 0]) == wanted).mean() >= 0.8

    def test_recent_items_weigh_more(self, fitted):
        """Score = decay**age * cosine: the newest item's neighbours win over older ones."""
        channel, data = fitted
        from llmrecall.data.dataset import Histories, Interactions

        log = Interactions.build(user=[0] * 4, item=[0, 1, 2, 10], time=[1, 2, 3, 4])
        h = Histories.from_interactions(log, 1, data.n_items)
        c = channel.recall(np.array([0], np.int32), 3, h, explain=True)
        assert (topic_of(c.ids[0]) == 1).all() and (c.evidence[0] == 10).all()

    def test_bad_parameters(self):
        with pytest.raises(ConfigError, match="recent"):
            SemanticItemToItem(recent=0)
        with pytest.raises(ConfigError, match="recency_decay"):
            SemanticItemToItem(recency_decay=1.5)


class TestSemanticUserInterest(LMChannelContract):
    def make_channel(self):
        return SemanticUserInterest(n_interests=2, diversity_threshold=0.7)

    def test_single_topic_users_get_their_topic(self, fitted):
        channel, data = fitted
        users = np.arange(N_SINGLE, dtype=np.int32)
        c = channel.recall(users, 2, data.histories())
        wanted = np.array([user_topics(u)[0] for u in users])
        assert (topic_of(c.ids) == wanted[:, None]).mean() >= 0.9

    def test_mixed_users_get_two_interests_and_both_topics(self, fitted):
        channel, data = fitted
        h = data.histories()
        users = np.arange(N_SINGLE, data.n_users, dtype=np.int32)
        centroids, share, evidence = channel.interests(users, h)
        assert ((share > 0).sum(axis=1) == 2).all()
        np.testing.assert_allclose(share.sum(axis=1), 1.0, rtol=1e-5)
        # each interest is represented by a history item of a different topic
        ev_topics = topic_of(evidence)
        assert (ev_topics[:, 0] != ev_topics[:, 1]).all()
        c = channel.recall(users, 10, h, explain=True)
        for row, ev, u in zip(c.ids, c.evidence, users):
            # both interests contribute candidates, each credited to its own topic
            assert set(topic_of(row)) == set(user_topics(int(u)))
            assert set(topic_of(ev)) == set(user_topics(int(u)))

    def test_one_interest_is_the_weighted_mean(self, lm_cache):
        data = make_dataset()
        channel = SemanticUserInterest(n_interests=1, recent=4, recency_decay=0.5).fit(data)
        h = data.histories()
        centroids, share, _ = channel.interests(np.array([3], np.int32), h)
        last = h.of(3)[-4:]
        weights = 0.5 ** np.arange(3, -1, -1)
        mean = (channel.item_vectors_[last] * weights[:, None]).sum(0)
        np.testing.assert_allclose(centroids[0, 0], mean / np.linalg.norm(mean), atol=1e-5)
        assert share[0, 0] == 1.0
