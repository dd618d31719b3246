"""EDLAE's closed form against the model it stands for: a linear autoencoder trained on
dropped-out inputs with the loss on the dropped-out entries only, its expectation computed
by enumerating every dropout mask of a tiny matrix and minimised by least squares."""

import itertools

import numpy as np
import pytest

from llmrecall.channels import EASE, EDLAE
from llmrecall.channels.neighbors import training_matrix
from llmrecall.config import validate_channel_params
from llmrecall.errors import ConfigError

from .test_classic_math import random_dataset


def emphasised_denoising_minimiser(x: np.ndarray, p: float, lam: float,
                                   user_weights: np.ndarray | None = None) -> np.ndarray:
    """argmin_B E_M[ sum_{u,j: m_uj = 0} w_u^2 (x_uj - (z_u @ B)_j)^2 ] + p * lam * ||B||_F^2
    (``w_u``: ``user_weights``, 1 when None).

    ``z_u = x_u * m_u / (1 - p)`` (inverted dropout, each entry dropped with probability p,
    independently). The expectation is exact: every mask of a user's row, weighted by its
    probability, is one block of least-squares rows. Columns of B separate; column j's rows
    are the masks that drop j, plus the ridge rows (``p * lam``: the expected loss carries
    the factor p of a dropped target that the closed form's ``Lambda`` leaves out).
    """
    n_users, n_items = x.shape
    masks = np.array(list(itertools.product((0.0, 1.0), repeat=n_items)))  # [2^m, m]
    kept = masks.sum(axis=1)
    prob = (1 - p) ** kept * p ** (n_items - kept)
    w = np.ones(n_users) if user_weights is None else user_weights
    b = np.zeros((n_items, n_items))
    for j in range(n_items):
        drops_j = masks[:, j] == 0
        rows, targets = [], []
        for u in range(n_users):
            weight = w[u] * np.sqrt(prob[drops_j])[:, None]
            rows.append(weight * masks[drops_j] * x[u] / (1 - p))
            targets.append(weight[:, 0] * x[u, j])
        rows.append(np.sqrt(p * lam) * np.eye(n_items))
        targets.append(np.zeros(n_items))
        b[:, j] = np.linalg.lstsq(np.vstack(rows), np.concatenate(targets), rcond=None)[0]
    return b


@pytest.mark.parametrize("p, lam", [(0.3, 2.0), (0.6, 0.5)])
def test_closed_form_minimises_the_emphasised_denoising_loss(p, lam):
    data = random_dataset(n_users=12, n_items=7, density=0.45, seed=3)
    x = training_matrix(data).toarray().astype(np.float64)
    expected = emphasised_denoising_minimiser(x, p, lam)
    # the diagonal never reaches the loss (a dropped target is a zero input): the ridge
    # alone sets it, to 0
    np.testing.assert_allclose(np.diag(expected), 0.0, atol=1e-10)
    channel = EDLAE(l2=lam, dropout=p, max_items=None).fit(data)
    np.testing.assert_allclose(channel.weights_, expected, rtol=1e-4, atol=1e-6)
    # and it is not EASE: the popular items' columns are shrunk more
    ease = EASE(regularization=lam, max_items=None).fit(data)
    assert np.abs(channel.weights_ - ease.weights_).max() > 1e-2


@pytest.mark.parametrize("p, lam, power", [(0.3, 2.0, 0.5), (0.6, 0.5, 1.0)])
def test_user_weighted_closed_form_minimises_the_weighted_loss(p, lam, power):
    data = random_dataset(n_users=12, n_items=7, density=0.45, seed=3)
    x = training_matrix(data).toarray().astype(np.float64)
    lengths = x.sum(axis=1)
    assert lengths.min() > 0 and lengths.max() >= 2 * lengths.min()  # the weights differ
    # w_u = c * n_u^-a, c keeping sum_u w_u^2 n_u = sum_u n_u (the Gram matrix's trace)
    w = lengths ** -power
    w *= np.sqrt(lengths.sum() / (w ** 2 * lengths).sum())
    expected = emphasised_denoising_minimiser(x, p, lam, user_weights=w)
    channel = EDLAE(l2=lam, dropout=p, max_items=None, user_power=power).fit(data)
    np.testing.assert_allclose(channel.weights_, expected, rtol=1e-4, atol=1e-6)
    # and the weighting matters: the unweighted fit is another model
    unweighted = EDLAE(l2=lam, dropout=p, max_items=None).fit(data)
    assert np.abs(channel.weights_ - unweighted.weights_).max() > 1e-2


def test_user_weights_keep_the_gram_trace_and_skip_users_without_items():
    data = random_dataset(n_users=30, n_items=9, density=0.3, seed=5)
    matrix = training_matrix(data)
    matrix = matrix.tolil()
    matrix[0, :] = 0  # a user with no modelled item: weight 0, not inf
    matrix = matrix.tocsr()
    matrix.eliminate_zeros()
    w = EDLAE(user_power=0.4)._user_weights(matrix)
    lengths = matrix.getnnz(axis=1)
    assert w[0] == 0.0 and np.isfinite(w).all()
    np.testing.assert_allclose((w ** 2 * lengths).sum(), lengths.sum())
    # heavier users weigh less
    active = lengths > 0
    order = np.argsort(lengths[active], kind="stable")
    assert np.all(np.diff(w[active][order]) <= 1e-12)
    assert EDLAE(user_power=0.0)._user_weights(matrix) is None


def test_zero_user_power_is_the_unweighted_fit_bit_for_bit():
    data = random_dataset()
    weighted = EDLAE(l2=7.0, dropout=0.3, max_items=None, user_power=0.0).fit(data)
    default = EDLAE(l2=7.0, dropout=0.3, max_items=None).fit(data)
    np.testing.assert_array_equal(weighted.weights_, default.weights_)


def test_user_power_survives_save_and_load(tmp_path):
    from llmrecall.channels import load_channel

    data = random_dataset(n_users=40, n_items=15, density=0.3)
    channel = EDLAE(l2=3.0, dropout=0.2, user_power=0.35).fit(data)
    loaded = load_channel(channel.save(tmp_path / "edlae"))
    assert isinstance(loaded, EDLAE) and loaded.user_power == 0.35
    np.testing.assert_array_equal(loaded.weights_, channel.weights_)
    users = np.arange(data.n_users, dtype=np.int32)
    history = data.histories()
    np.testing.assert_array_equal(loaded.recall(users, 5, history).ids,
                                  channel.recall(users, 5, history).ids)


def test_without_dropout_it_is_ease():
    data = random_dataset()
    edlae = EDLAE(l2=7.0, dropout=0.0, max_items=None).fit(data)
    ease = EASE(regularization=7.0, max_items=None).fit(data)
    np.testing.assert_array_equal(edlae.weights_, ease.weights_)


def test_max_items_models_the_popular_head():
    data = random_dataset(n_users=40, n_items=15, density=0.3)
    head = EDLAE(l2=3.0, dropout=0.2, max_items=6).fit(data)
    counts = np.bincount(data.interactions.item, minlength=data.n_items)
    assert set(head.items_.tolist()) == set(np.argsort(-counts, kind="stable")[:6].tolist())
    sub = data.with_interactions(data.interactions.take(np.isin(data.interactions.item, head.items_)))
    alone = EDLAE(l2=3.0, dropout=0.2, max_items=None).fit(sub)
    np.testing.assert_allclose(head.weights_, alone.weights_[np.ix_(head.items_, head.items_)],
                               atol=1e-5)


@pytest.mark.parametrize("params, match", [({"l2": 0.0}, "l2"), ({"dropout": 1.0}, "dropout"),
                                           ({"dropout": -0.1}, "dropout"),
                                           ({"user_power": -0.5}, "user_power"),
                                           ({"max_items": 0}, "max_items")])
def test_out_of_range_parameters_are_refused(params, match):
    with pytest.raises(ConfigError, match=match):
        EDLAE(**params).fit(random_dataset())
    with pytest.raises(ValueError, match=match):  # the config refuses them when it is read
        validate_channel_params("edlae", params)
