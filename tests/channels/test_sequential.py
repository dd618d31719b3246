"""sasrec: contract plus next-item and text-use checks on the topic domain."""

from __future__ import annotations

import numpy as np
import pytest

from llmrecall.channels.early_stop import HeldOutNext, newest_window_rows
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


# ---- early stopping on held-out next items ------------------------------------------------

def test_held_out_next_masks_exactly_the_newest_target_of_each_chosen_user():
    log = Interactions.build(user=[0] * 7 + [1, 1, 1, 2, 2], item=[1, 2, 3, 4, 5, 6, 7, 2, 9, 2, 3, 4],
                             time=np.arange(12))
    h = Histories.from_interactions(log, 3, 10)
    w = training_windows(h, 3)
    before = w.copy()
    held = HeldOutNext.take(w, h.lengths(), 3, 10, np.random.default_rng(0), "recall@1", 2)
    # users 0 and 1 have 3+ items (user 2 has two): their newest windows are rows 0 and 2
    np.testing.assert_array_equal(held.targets, [7, 2])
    np.testing.assert_array_equal(held.sequences, [before[0, :3], before[2, :3]])
    changed = np.argwhere(w != before)
    np.testing.assert_array_equal(changed, [[0, 3], [2, 3]])
    assert (w[[0, 2], 3] == 0).all()  # padding: the loss skips it
    # user 1 had item 2 before its target 2: a repeat stays rankable; 9 is excluded
    seen_of_1 = held.seen_items[held.seen_rows == 1]
    np.testing.assert_array_equal(np.sort(seen_of_1), [9])


def test_newest_window_rows_follow_training_windows():
    lengths = np.array([7, 1, 2, 0, 12])
    rows = newest_window_rows(lengths, 3)
    # windows: user 0 -> 2, user 1 -> 0, user 2 -> 1, user 3 -> 0, user 4 -> 4
    np.testing.assert_array_equal(rows, [0, -1, 2, -1, 3])


def test_early_stopping_keeps_the_best_epoch(lm_cache):
    data = make_dataset()
    channel = SASRec(text_init="none", **{**SMALL, "epochs": 40, "lr": 2e-2},
                     patience=2, holdout_users=25, monitor="recall@1").fit(data)
    stopping = channel.stopping_
    assert stopping is not None
    scores = stopping.scores
    assert 1 <= len(scores) <= 40
    assert stopping.best_epoch == int(np.argmax(scores)) + 1  # the first of equal bests
    stopped_early = len(scores) < 40
    if stopped_early:
        assert len(scores) - stopping.best_epoch == 2
    # the network handed back is the best epoch's: scoring it again gives the best value
    assert stopping._evaluate(channel.model_) == pytest.approx(max(scores))
    assert stopping.summary()["best"] == pytest.approx(max(scores), abs=1e-4)


def test_early_stopping_off_trains_every_epoch_as_before(lm_cache):
    data = make_dataset()
    plain = SASRec(text_init="none", **{**SMALL, "epochs": 3}).fit(data)
    assert plain.stopping_ is None
    # the held-out users draw from their own stream: a patient fit that runs all its epochs
    # follows the same batch order, so only the held-out targets make it differ
    patient = SASRec(text_init="none", **{**SMALL, "epochs": 3}, patience=5, holdout_users=1).fit(data)
    assert len(patient.stopping_.scores) == 3
    users = np.arange(data.n_users, dtype=np.int32)
    h = data.histories()
    assert not np.allclose(plain.score(users, h), patient.score(users, h))


def test_early_stopping_parameters():
    with pytest.raises(ConfigError, match="monitor"):
        SASRec(patience=2, monitor="mrr@10")
    with pytest.raises(ConfigError, match="monitor"):
        SASRec(patience=2, monitor="ndcg@0")
    with pytest.raises(ConfigError, match="patience"):
        SASRec(patience=-1)
    with pytest.raises(ConfigError, match="holdout_users"):
        SASRec(patience=1, holdout_users=0)


def test_evaluate_reports_how_an_early_stopped_channel_trained(lm_cache):
    from llmrecall.config import parse_config
    from llmrecall.evaluate.experiment import evaluate

    params = {**SMALL, "epochs": 4, "patience": 2, "holdout_users": 10, "text_init": "none"}
    config = parse_config({"channels": [{"kind": "popularity"},
                                        {"kind": "sasrec", "params": params}]})
    report = evaluate(make_dataset(), "loo", config, ks=(5,))
    training = report["training"]
    assert list(training) == ["sasrec"]
    assert training["sasrec"]["monitor"] == "ndcg@10"
    assert training["sasrec"]["held_out_users"] == 10
    assert 1 <= training["sasrec"]["best_epoch"] <= training["sasrec"]["epochs_run"] <= 4


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

    from llmrecall.channels.train_state import save_train_state

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
        return _resumed_in_fresh_objects(channel, folder, windows, n_items, after=2)

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


def test_early_stopped_fit_resumed_from_a_checkpoint_equals_the_uninterrupted_one(tmp_path,
                                                                                 lm_cache):
    """A patient fit interrupted after epoch 2 and resumed in fresh objects from the
    checkpoint (train state + the early stopping state written beside it) runs the same
    epochs, records the same scores and ends on the same best weights."""
    import torch

    from llmrecall.channels.train_state import save_train_state

    params = dict(text_init="none", dim=16, max_len=6, epochs=7, batch_size=8, dropout=0.2,
                  lr=2e-2, patience=2, holdout_users=15)
    data = make_dataset()
    folder = tmp_path / "checkpoint"

    def interrupted_then_resumed(channel, model, windows, n_items):
        rng = np.random.default_rng(channel.seed)

        def checkpoint(done, optimizer):
            save_train_state(folder, model, optimizer, done, rng.bit_generator.state,
                             [torch.get_rng_state()])
            channel.stopping_.save(folder)
            if done == 2:
                raise _Interrupted

        with pytest.raises(_Interrupted):
            channel.train_epochs(model, windows, n_items, rng, on_epoch=checkpoint)
        stopping = channel.stopping_
        stopping.scores, stopping.best_epoch = [], 0  # forget: only the files carry on
        stopping._best_state = None
        stopping.load(folder)
        assert len(stopping.scores) == 2
        return _resumed_in_fresh_objects(channel, folder, windows, n_items, after=2)

    resumed = SASRec(**params).fit(data, train=interrupted_then_resumed)
    whole = SASRec(**params).fit(data)
    assert resumed.stopping_.scores == whole.stopping_.scores
    assert resumed.stopping_.best_epoch == whole.stopping_.best_epoch
    mine, theirs = resumed.model_.state_dict(), whole.model_.state_dict()
    for key in mine:
        assert torch.equal(mine[key], theirs[key]), key


def _resumed_in_fresh_objects(channel, folder, windows, n_items: int, after: int):
    """A new start of ``channel``'s training from the checkpoint in ``folder`` (written
    after epoch ``after``): a network built under another torch seed, a new optimizer and a
    numpy generator seeded otherwise, nothing carried over but the checkpoint's files; the
    remaining epochs are trained and the network returned."""
    import torch

    from llmrecall.channels.sequential import _build_model
    from llmrecall.channels.train_state import load_train_state, restore

    torch.manual_seed(12345)
    fresh = _build_model(n_items, channel.dim, channel.blocks, channel.heads,
                         channel.max_len, channel.dropout, None, channel.text_init)
    state = load_train_state(folder)
    assert state.step == after
    fresh.load_state_dict(state.weights)
    optimizer = channel.optimizer(fresh)
    rng = np.random.default_rng(999)
    restore(state, optimizer, rng, rank=0)
    channel.train_epochs(fresh, windows, n_items, rng, optimizer=optimizer,
                         start_epoch=state.step)
    return fresh


def test_one_worker_holding_its_slice_trains_as_one_process():
    """``rows_per_worker`` (a data-parallel worker holding only its slice of the windows)
    with one worker holding every row is the one-process loop: the same permutation, the
    same batches, the same weights bit for bit. A slice that is empty or longer than
    ``rows_per_worker`` is refused."""
    import torch

    data = make_dataset()
    channel = SASRec(text_init="none", dim=16, max_len=6, epochs=2, batch_size=8)
    windows = training_windows(data.histories(), channel.max_len)

    def trained(**sliced):
        torch.manual_seed(0)
        model = channel.initial_model(data)
        channel.stopping_ = None
        channel.train_epochs(model, windows, data.n_items, np.random.default_rng(0), **sliced)
        return model.state_dict()

    whole, one_slice = trained(), trained(rows_per_worker=len(windows))
    for key in whole:
        assert torch.equal(whole[key], one_slice[key]), key
    model = channel.initial_model(data)
    for bad in (len(windows) - 1, 0):
        with pytest.raises(ValueError, match="slice"):
            channel.train_epochs(model, windows[:bad] if bad == 0 else windows,
                                 data.n_items, np.random.default_rng(0), rows_per_worker=bad)
