"""textcf: contract plus topic recovery and cold-item scoring on the topic domain."""

from __future__ import annotations

import numpy as np
import pytest

from llmrecall.channels.textcf import TextCF
from llmrecall.errors import ConfigError

from .lm_contract import LMChannelContract
from .lm_data import COLD, N_SINGLE, make_dataset, topic_of, user_topics


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

        from llmrecall.channels.textcf import _bipartite, _light_propagation, _normalised

        channel, data = fitted
        h = data.histories()
        rows = h.matrix()
        mean = channel._history_weights(h, np.arange(data.n_users), data.n_items, rows)
        with torch.no_grad():
            items = channel.mlp_(torch.from_numpy(channel.text_vectors_)).numpy()
            users = (channel.mlp_(torch.from_numpy(mean @ channel.text_vectors_)).numpy()
                     if channel.user_init == "text" else mean @ items)
        z = _light_propagation(_bipartite(_normalised(rows)), np.vstack([users, items]),
                               channel.layers)
        users = z[:data.n_users]
        expected = users / np.linalg.norm(users, axis=1, keepdims=True)
        got = channel.user_vectors(np.arange(data.n_users, dtype=np.int32), h)
        np.testing.assert_allclose(got, expected, atol=1e-5)

    def test_history_weights_are_a_mean(self, fitted):
        channel, data = fitted
        h = data.histories()
        mean = channel._history_weights(h, np.arange(data.n_users), data.n_items, h.matrix())
        sums = np.asarray(mean.sum(axis=1)).ravel()
        np.testing.assert_allclose(sums[h.lengths() > 0], 1.0, rtol=1e-5)
        # only history items carry weight
        assert (mean.multiply(h.matrix()) != mean).nnz == 0


class TestTextCFColdSetting(TestTextCF):
    """The setting for new items: users from recency-weighted item vectors, items never
    propagated, a bounded number of large-batch steps."""

    def make_channel(self):
        return TextCF(dim=32, hidden=64, epochs=1000, batch_size=128, lr=3e-3, max_steps=120,
                      user_init="items", recency_decay=0.9, recent=20, propagate_items=False)

    def test_recency_weights_decay_with_age(self, fitted):
        channel, data = fitted
        h = data.histories()
        checked = 0
        for user in range(data.n_users):
            recent = h.of(user)[-channel.recent:]
            if len(recent) < 3 or len(set(recent)) < len(recent):
                continue  # a repeated item sums its weights
            mean = channel._history_weights(h, np.array([user]), data.n_items,
                                            h.matrix(np.array([user]))).toarray()[0]
            w = mean[recent[::-1]]  # newest first
            np.testing.assert_allclose(w[1:] / w[:-1], channel.recency_decay, rtol=1e-4)
            checked += 1
        assert checked > 0

    def test_items_are_their_text_image(self, fitted):
        import torch

        channel, _ = fitted
        with torch.no_grad():
            items = channel.mlp_(torch.from_numpy(channel.text_vectors_)).numpy()
        expected = items / np.linalg.norm(items, axis=1, keepdims=True)
        np.testing.assert_allclose(channel.item_vectors_, expected, atol=1e-5)

class TestTextCFWithPopularityPrior(TestTextCF):
    """The contract and the topic checks hold with the popularity prior added."""

    def make_channel(self):
        return TextCF(dim=32, hidden=64, epochs=40, batch_size=64, lr=3e-3,
                      popularity_prior=1.5)

    def test_scores_are_the_logits_plus_the_weighted_prior(self, fitted):
        import copy

        channel, data = fitted
        h, users = data.histories(), np.arange(data.n_users, dtype=np.int32)
        plain = copy.copy(channel)
        plain.popularity_prior = 0.0  # the same fitted model, scored by the cosine alone
        cos = plain.score(users, h)
        np.testing.assert_allclose(channel.score(users, h),
                                   cos / channel.tau + 1.5 * channel.item_prior_[None, :],
                                   rtol=1e-5, atol=1e-5)

    def test_the_prior_is_observed_for_trained_items_and_predicted_for_cold_ones(self,
                                                                                fitted):
        from llmrecall.channels.popularity_prior import TextPopularityPrior

        channel, data = fitted
        counts = np.bincount(data.interactions.item, minlength=data.n_items)
        assert (counts[COLD] == 0).all() and (counts[counts > 0] > 0).all()
        warm = counts > 0
        np.testing.assert_allclose(channel.item_prior_[warm], np.log(counts[warm]), rtol=1e-6)
        prior = TextPopularityPrior.from_arrays(channel.prior_coef_, channel.prior_intercept_)
        np.testing.assert_allclose(channel.item_prior_[COLD],
                                   prior.predict(channel.text_vectors_[COLD]), rtol=1e-5)

    def test_added_items_get_their_predicted_prior(self, fitted):
        import copy

        channel, data = fitted
        grown = copy.deepcopy(channel)
        n = data.n_items
        warm_prior = grown.item_prior_[0]
        # a new item two past the end (the id between is not given) and an edited warm one
        grown.add_items(np.array([n + 1, 0]), ["Mars rover mission diary", "Rocket science"])
        assert grown.item_prior_.shape == (n + 2,)
        assert grown.item_prior_[0] == warm_prior  # its training events have not changed
        assert grown.item_prior_[n] == -np.inf  # never scored above a real item
        expected = grown.prior_intercept_[0] + grown.text_vectors_[n + 1] @ grown.prior_coef_
        np.testing.assert_allclose(grown.item_prior_[n + 1], expected, rtol=1e-5)
        assert np.isfinite(grown.item_prior_[n + 1])


@pytest.mark.parametrize("bad", [{"tau": 0}, {"max_steps": -1}, {"user_init": "users"},
                                 {"recency_decay": 0.0}, {"recency_decay": 1.5}, {"recent": 0},
                                 {"popularity_prior": -1.0}, {"popularity_prior": float("nan")},
                                 {"lr_schedule": "linear"}])
def test_bad_parameters(bad):
    with pytest.raises(ConfigError):
        TextCF(**bad)


def _small_graph(channel: TextCF, seed: int = 0):
    """A random TrainingGraph: 12 users, 9 items, 16-d text (no embedder needed)."""
    import scipy.sparse as sp

    from llmrecall.channels.textcf import TrainingGraph, _bipartite, _normalised

    rng = np.random.default_rng(seed)
    rows = sp.csr_matrix((rng.random((12, 9)) < 0.45).astype(np.float32))
    text = rng.normal(size=(9, 16)).astype(np.float32)
    mean_rows = channel._history_weights(None, np.arange(12), 9, rows)
    user_text = np.asarray(mean_rows @ text, np.float32) if channel.user_init == "text" else None
    coo = rows.tocoo()
    return TrainingGraph(text, user_text, mean_rows, _bipartite(_normalised(rows)),
                         coo.row.astype(np.int64), coo.col.astype(np.int64))


def _gradients(channel, mlp, graph, take, rank, world):
    from llmrecall.channels.textcf import _layer0

    mlp.zero_grad()
    channel._loss(_layer0(mlp, graph, channel.user_init), graph, take, rank, world).backward()
    return [p.grad.clone() for p in mlp.parameters()]


@pytest.mark.parametrize("settings", [{}, {"user_init": "items", "propagate_items": False}])
def test_data_parallel_anchors_average_to_the_batch_gradient(settings):
    """What the Ray Train workers compute: worker r's anchors r::world of a batch, each
    against every item of the batch. The mean of the workers' gradients (what DDP applies)
    is the one-process gradient of the batch, repeated items in the batch included."""
    import torch

    from llmrecall.channels.textcf import _mlp

    channel = TextCF(dim=8, hidden=16, **settings)
    graph = _small_graph(channel)
    torch.manual_seed(0)
    mlp = _mlp(16, 16, 8)
    take = np.random.default_rng(1).permutation(len(graph.pairs_u))[:12]
    assert len(set(graph.pairs_i[take])) < len(take)  # some item twice: the mask counts
    whole = _gradients(channel, mlp, graph, take, 0, 1)
    for world in (2, 3):
        parts = [_gradients(channel, mlp, graph, take, r, world) for r in range(world)]
        for g, *p in zip(whole, *parts):
            torch.testing.assert_close(torch.stack(p).mean(0), g, rtol=1e-5, atol=1e-6)
    # a batch with fewer pairs than workers: each worker takes it whole
    short = take[:2]
    np.testing.assert_array_equal(
        _gradients(channel, mlp, graph, short, 2, 3)[0].numpy(),
        _gradients(channel, mlp, graph, short, 0, 1)[0].numpy())


def test_train_hook_gets_the_initial_mlp_and_its_result_is_kept(lm_cache):
    """``fit(train=...)`` hands the hook the initialised MLP and the graph; a hook that runs
    the channel's own steps in one process gives the plain fit exactly."""
    from llmrecall.channels.textcf import _layer0

    data = make_dataset()
    params = dict(dim=16, hidden=32, epochs=3, batch_size=64, lr=3e-3)
    plain = TextCF(**params).fit(data)
    seen = []

    def train(channel, mlp, graph):
        seen.append(graph)
        channel.train_steps(_layer0(mlp, graph, channel.user_init), graph,
                            np.random.default_rng(channel.seed))
        return mlp

    hooked = TextCF(**params).fit(data, train=train)
    assert len(seen) == 1 and seen[0].n_users == data.n_users
    assert len(seen[0].pairs_u) == data.histories().matrix().nnz
    np.testing.assert_array_equal(hooked.item_vectors_, plain.item_vectors_)
    np.testing.assert_array_equal(hooked.item_layers_, plain.item_layers_)


class _Interrupted(Exception):
    pass


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_every_step_runs_at_the_rate_of_its_schedule(lm_cache, schedule):
    """The rate each optimiser step ran at: ``lr`` throughout, or cosine-annealed from
    ``lr`` (the first step) to nearly 0 (the last), strictly decreasing; the annealed fit
    differs from the constant one."""
    from llmrecall.channels.textcf import _layer0

    data = make_dataset()
    params = dict(dim=16, hidden=32, epochs=3, batch_size=64, lr=3e-3)
    rates: list[float] = []

    def recording(channel, mlp, graph):
        layer0 = _layer0(mlp, graph, channel.user_init)
        optimizer = channel.optimizer(layer0)
        # the rate a step ran at is the group's rate when the step's callback sees it
        channel.train_steps(layer0, graph, np.random.default_rng(channel.seed),
                            optimizer=optimizer,
                            on_step=lambda *_: rates.append(optimizer.param_groups[0]["lr"]))
        return mlp

    fitted = TextCF(lr_schedule=schedule, **params).fit(data, train=recording)
    assert len(rates) == 12
    if schedule == "constant":
        assert rates == [3e-3] * 12
    else:
        assert rates[0] == pytest.approx(3e-3)
        assert np.all(np.diff(rates) < 0)
        assert rates[-1] < 0.02 * 3e-3
        assert rates[6] == pytest.approx(1.5e-3)  # halfway: half the rate
        constant = TextCF(**params).fit(data)
        assert not np.allclose(fitted.item_vectors_, constant.item_vectors_)


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
@pytest.mark.parametrize("stop", [6, 8], ids=["inside-a-pass", "between-passes"])
def test_resuming_from_a_step_checkpoint_equals_the_uninterrupted_fit(lm_cache, tmp_path,
                                                                      stop, schedule):
    """Training stopped after ``stop`` of 12 steps (4 batches a pass over the 240 pairs;
    step 6 is inside the second pass, step 8 between passes) and resumed in fresh objects
    from the checkpoint written then gives the uninterrupted fit bit for bit: the
    checkpoint's numpy generator state is the one the current pass's order was drawn
    from, so the resumed run draws that order again and skips the batches done; an
    annealed rate is the step's own, whatever the checkpoint's optimizer held."""
    import torch

    from llmrecall.channels.textcf import _layer0, _mlp
    from llmrecall.channels.train_state import load_train_state, restore, save_train_state

    data = make_dataset()
    params = dict(dim=16, hidden=32, epochs=3, batch_size=64, lr=3e-3, lr_schedule=schedule)
    folder = tmp_path / "checkpoint"

    def stopped_then_resumed(channel, mlp, graph):
        assert channel.total_steps(graph) == 12 and len(graph.pairs_u) == 240

        def checkpoint(done, optimizer, rng_state):
            save_train_state(folder, mlp, optimizer, done, rng_state, [torch.get_rng_state()])
            if done == stop:
                raise _Interrupted

        with pytest.raises(_Interrupted):
            channel.train_steps(_layer0(mlp, graph, channel.user_init), graph,
                                np.random.default_rng(channel.seed), on_step=checkpoint)
        torch.manual_seed(12345)
        fresh = _mlp(graph.text.shape[1], channel.hidden, channel.dim)
        state = load_train_state(folder)
        fresh.load_state_dict(state.weights)
        layer0 = _layer0(fresh, graph, channel.user_init)
        optimizer = channel.optimizer(layer0)
        rng = np.random.default_rng(999)
        restore(state, optimizer, rng, rank=0)
        assert state.step == stop
        channel.train_steps(layer0, graph, rng, optimizer=optimizer, start_step=state.step)
        return fresh

    resumed = TextCF(**params).fit(data, train=stopped_then_resumed)
    whole = TextCF(**params).fit(data)
    mine, theirs = resumed.mlp_.state_dict(), whole.mlp_.state_dict()
    for key in theirs:
        assert torch.equal(mine[key], theirs[key]), key
    np.testing.assert_array_equal(resumed.item_vectors_, whole.item_vectors_)
    untrained = TextCF(**{**params, "lr": 0.0}).fit(data)
    assert not np.array_equal(untrained.item_vectors_, whole.item_vectors_)
