"""sasrec: contract plus next-item and text-use checks on the topic domain."""

from __future__ import annotations

import numpy as np
import pytest

from llmrecall.channels.sequential import SASRec, training_windows
from llmrecall.data.dataset import Histories, Interactions
from llmrecall.errors import ConfigError

from .lm_contract import LMChannelContract
from .lm_data import COLD, N_TOPIC, make_dataset, topic_of, user_topics

SMALL = dict(dim=32, max_len=10, epochs=150, batch_size=32, lr=3e-3, dropout=0.1)


class TestSASRecFuse(LMChannelContract):
    def make_channel(self):
        return SASRec(text_init="fuse", **SMALL)

    def test_predicts_the_next_item_of_the_walk(self, fitted):
        channel, data = fitted
        h = data.histories()
        users = np.arange(20, dtype=np.int32)  # single-topic users walk j -> j + 1 (mod 9)
        last = np.array([h.of(u)[-1] for u in users])
        successor = topic_of(last) * N_TOPIC + (last % N_TOPIC + 1) % (N_TOPIC - 1)
        c = channel.recall(users, 1, h, exclude_seen=False)
        assert (c.ids[:, 0] == successor).mean() >= 0.8

    def test_cold_items_have_text_vectors(self, fitted):
        """Fuse mode: an item never seen in training is its projected text, so its topic's
        users rank it above the other topics' cold items."""
        channel, data = fitted
        allowed = np.zeros(data.n_items, bool)
        allowed[COLD] = True
        users = np.arange(20, dtype=np.int32)
        c = channel.recall(users, 1, data.histories(), allowed=allowed)
        wanted = np.array([user_topics(u)[0] for u in users])
        assert (topic_of(c.ids[:, 0]) == wanted).mean() >= 0.5


class TestSASRecInit(LMChannelContract):
    def make_channel(self):
        return SASRec(text_init="init", **SMALL)

    def test_item_table_starts_from_text(self, lm_cache):
        from llmrecall.channels.text_features import item_text_vectors

        data = make_dataset()
        channel = SASRec(text_init="init", **{**SMALL, "epochs": 1, "lr": 1e-9}).fit(data)
        table = channel.model_.items()[1:].detach().numpy()
        text = item_text_vectors(data)
        # the PCA initialisation keeps the text geometry: similarities agree in rank
        a = np.corrcoef((table @ table.T).ravel(), (text @ text.T).ravel())[0, 1]
        assert a > 0.8


class TestSASRecIdOnly(LMChannelContract):
    def make_channel(self):
        return SASRec(text_init="none", **SMALL)

    def test_seeded_training_is_reproducible(self, fitted):
        channel, data = fitted
        again = channel.clone().fit(data)
        h = data.histories()
        users = np.arange(data.n_users, dtype=np.int32)
        np.testing.assert_allclose(channel.score(users, h), again.score(users, h), atol=1e-5)


def test_training_windows_cover_every_transition_once():
    log = Interactions.build(user=[0] * 7 + [1, 2, 2], item=[1, 2, 3, 4, 5, 6, 7, 9, 3, 4],
                             time=np.arange(10))
    h = Histories.from_interactions(log, 3, 10)
    w = training_windows(h, 3)
    # user 0: 7 items -> 6 transitions -> 2 windows of 4; user 1: none; user 2: 1 window
    assert w.shape == (3, 4)
    np.testing.assert_array_equal(w[0], [5, 6, 7, 8])
    np.testing.assert_array_equal(w[1], [2, 3, 4, 5])
    np.testing.assert_array_equal(w[2], [0, 0, 4, 5])


def test_bad_parameters():
    with pytest.raises(ConfigError, match="text_init"):
        SASRec(text_init="both")
    with pytest.raises(ConfigError, match="divisible"):
        SASRec(dim=30, heads=4)


class _Interrupted(Exception):
    pass


@pytest.mark.parametrize("sampled", [False, True], ids=["full-softmax", "sampled"])
def test_resuming_from_an_epoch_checkpoint_equals_the_uninterrupted_fit(tmp_path, sampled):
    """Training stopped after epoch 2 of 5 and resumed in fresh objects (network, optimizer,
    generators seeded otherwise) from the checkpoint written then gives the uninterrupted
    fit's weights bit for bit: the checkpoint holds everything the later epochs read
    (weights, AdamW state, the numpy order/negatives generator, torch's dropout
    generator). The checkpoint is safetensors and JSON only."""
    import torch

    from llmrecall.channels.sequential import _build_model
    from llmrecall.channels.train_state import load_train_state, restore, save_train_state

    params = dict(text_init="none", dim=16, max_len=6, epochs=5, batch_size=8, dropout=0.2)
    if sampled:  # 40 items > 10: shared negatives drawn from the numpy generator
        params.update(full_softmax_limit=10, negatives=7)
    data = make_dataset()
    folder = tmp_path / "checkpoint"

    def stopped_after_two_then_resumed(channel, model, windows, n_items):
        rng = np.random.default_rng(channel.seed)  # fit's generator, not yet drawn from

        def checkpoint(done, optimizer):
            save_train_state(folder, model, optimizer, done, rng.bit_generator.state,
                             [torch.get_rng_state()])
            if done == 2:
                raise _Interrupted

        with pytest.raises(_Interrupted):
            channel.train_epochs(model, windows, n_items, rng, on_epoch=checkpoint)
        # a new start: nothing carried over but the checkpoint's files
        torch.manual_seed(12345)
        fresh = _build_model(n_items, channel.dim, channel.blocks, channel.heads,
                             channel.max_len, channel.dropout, None, channel.text_init)
        state = load_train_state(folder)
        fresh.load_state_dict(state.weights)
        optimizer = channel.optimizer(fresh)
        rng = np.random.default_rng(999)
        restore(state, optimizer, rng, rank=0)
        assert state.step == 2
        channel.train_epochs(fresh, windows, n_items, rng, optimizer=optimizer,
                             start_epoch=state.step)
        return fresh

    resumed = SASRec(**params).fit(data, train=stopped_after_two_then_resumed)
    whole = SASRec(**params).fit(data)
    assert sorted(p.name for p in folder.iterdir()) == [
        "model.safetensors", "optimizer.safetensors", "train_state.json"]
    mine, theirs = resumed.model_.state_dict(), whole.model_.state_dict()
    assert mine.keys() == theirs.keys()
    for key in mine:
        assert torch.equal(mine[key], theirs[key]), key
    # and training moved the weights: the equality is not that of two untrained networks
    untrained = SASRec(**{**params, "lr": 0.0}).fit(data).model_.state_dict()
    assert not torch.equal(untrained["id_embedding.weight"], theirs["id_embedding.weight"])
