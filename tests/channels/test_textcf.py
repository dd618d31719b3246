"""textcf: contract plus topic recovery and cold-item scoring on the topic domain."""

from __future__ import annotations

import numpy as np
import pytest
from .lm_contract import LMChannelContract, lm_cache  # noqa: F401
from .lm_data import COLD, N_SINGLE, topic_of, user_topics

from llmrecall.channels.textcf import TextCF
from llmrecall.errors import ConfigError


class TestTextCF(LMChannelContract):
    def make_channel(self):
        return TextCF(dim=32, hidden=64, epochs=40, batch_size=64, lr=3e-3)

    def test_users_get_their_topic(self, fitted):
        channel, data = fitted
        users = np.arange(N_SINGLE, dtype=np.int32)
        c = channel.recall(users, 2, data.histories())
        wanted = np.array([user_topics(u)[0] for u in users])
        assert (topic_of(c.ids) == wanted[:, None]).mean() >= 0.9

    def test_cold_items_are_scored_from_text(self, fitted):
        channel, data = fitted
        allowed = np.zeros(data.n_items, bool)
        allowed[COLD] = True
        users = np.arange(N_SINGLE, dtype=np.int32)
        c = channel.recall(users, 1, data.histories(), allowed=allowed)
        wanted = np.array([user_topics(u)[0] for u in users])
        assert (topic_of(c.ids[:, 0]) == wanted).mean() >= 0.8

    def test_user_vectors_equal_training_propagation(self, fitted):
        """Given the training history, recall-time user vectors are exactly the LightGCN
        user embeddings of training (so fresh histories land in the same space)."""
        import torch

        from llmrecall.channels.textcf import (_bipartite, _light_propagation, _mean_rows,
                                               _normalised)

        channel, data = fitted
        h = data.histories()
        rows = h.matrix()
        with torch.no_grad():
            z0 = torch.cat([channel.mlp_(torch.from_numpy(_mean_rows(rows, channel.text_vectors_))),
                            channel.mlp_(torch.from_numpy(channel.text_vectors_))]).numpy()
        z = _light_propagation(_bipartite(_normalised(rows)), z0, channel.layers)
        users = z[:data.n_users]
        expected = users / np.linalg.norm(users, axis=1, keepdims=True)
        got = channel.user_vectors(np.arange(data.n_users, dtype=np.int32), h)
        np.testing.assert_allclose(got, expected, atol=1e-5)


def test_bad_parameters():
    with pytest.raises(ConfigError):
        TextCF(tau=0)
