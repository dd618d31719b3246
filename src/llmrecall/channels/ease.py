"""EASE (Steck 2019): a dense item-item linear model with a closed-form solution.

``B = argmin ||X - X B||^2 + lam ||B||^2  s.t. diag(B) = 0`` is ``B = I - P / diag(P)`` with
``P = (X^T X + lam I)^-1``. Memory and time grow as n_items^2 and n_items^3: fine for a few
thousand items (ml-1m: 3,706 items, 55 MB), heavy beyond ~20k.
"""

from __future__ import annotations

from typing import Self

import numpy as np
import scipy.linalg
import scipy.sparse as sp

from llmrecall.channels.base import Channel
from llmrecall.channels.history import (
    best_history_item,
    check_width,
    empty_rows,
    finish_scores,
    weighted_history,
)
from llmrecall.channels.neighbors import item_popularity, training_matrix
from llmrecall.channels.registry import register
from llmrecall.data.dataset import Dataset, Histories
from llmrecall.errors import ConfigError
from llmrecall.threads import limited_blas


@register
class EASE(Channel):
    """EASE scores ``s[u] = x_u @ weights_`` from the user's whole (binary) history.

    Args:
        regularization: lambda on the diagonal of the Gram matrix (RecBole uses 1000 on ML-1M).
        max_items: model only the this many most popular items (None: all). Fit time grows
            as the cube of the modelled items (17k items: minutes on 2 cores; 10k: ~5x less),
            and the long tail it drops is where the other channels recall anyway.
    Users whose history holds no modelled item get item popularity, marked as the channel's
    fallback (``Candidates.fallback``), as are users whose modelled items all have zero
    weights (items never chosen in training). Items outside the model
    (long tail beyond ``max_items``, or added after fit) are never recalled (-inf).
    Evidence: the history item ``h`` with the largest ``weights_[h, j]``.

    Learned state: ``items_`` int32[m] the modelled items (ascending), ``weights_``
    float32[m, m] over them (zero diagonal), ``popularity_`` float32[n_items].
    """

    in_process = True  # see Channel.in_process

    kind = "ease"
    evidence_template = "predicted from {evidence} in your history (EASE)"

    def __init__(self, regularization: float = 500.0, max_items: int | None = 10000,
                 name: str | None = None):
        super().__init__(name)
        self.regularization = regularization
        self.max_items = max_items

    def _check_params(self) -> None:
        """Raise ConfigError for hyperparameters :meth:`fit` cannot use."""
        if self.regularization <= 0:
            raise ConfigError(f"ease regularization must be > 0, got {self.regularization}")

    def _penalty(self, counts: np.ndarray) -> float | np.ndarray:
        """What is added to the Gram matrix's diagonal, given ``counts`` float64[m] (that
        diagonal: each modelled item's training interactions): lambda for every item."""
        return float(self.regularization)

    def _user_weights(self, sub) -> np.ndarray | None:
        """Per-user row weights float64[n_users] for the Gram matrix, given the training
        matrix over the modelled items (``sub``, CSR [n_users, m]); None: every user 1."""
        return None

    def raw_user_weights(self, lengths: np.ndarray) -> np.ndarray | None:
        """Unnormalised row weights float64[n_users] from each user's modelled training
        items ``lengths`` (the weights are these times one constant over all users, see
        :func:`llmrecall.channels.edlae.weight_scale`); None: every user 1."""
        return None

    def fit(self, dataset: Dataset) -> Self:
        self.check_params()
        matrix = training_matrix(dataset)
        popularity = item_popularity(matrix)
        modelled = self.modelled_items(popularity)
        sub = matrix[:, modelled]
        weights_u = self._user_weights(sub)
        with limited_blas():
            # each user's squared loss weighted by weights_u ** 2: X^T diag(w^2) X
            weighted = sub if weights_u is None else sp.diags(weights_u) @ sub
            gram = (weighted.T @ weighted).toarray().astype(np.float64)
        return self.install(modelled, self.solve(gram), popularity)

    def check_params(self) -> None:
        """Raise ConfigError for hyperparameters :meth:`fit` cannot use."""
        self._check_params()
        if self.max_items is not None and self.max_items < 1:
            raise ConfigError(f"{self.kind} max_items must be >= 1 or None, got {self.max_items}")

    def modelled_items(self, popularity: np.ndarray) -> np.ndarray:
        """int64[m] the items the model covers, ascending: the ``max_items`` most popular
        by ``popularity`` float32[n_items] (:func:`item_popularity`; ties in item order),
        or all."""
        n_items = len(popularity)
        if self.max_items is not None and n_items > self.max_items:
            return np.sort(np.argsort(-popularity, kind="stable")[: self.max_items])
        return np.arange(n_items)

    def solve(self, gram: np.ndarray) -> np.ndarray:
        """float32[m, m] C-ordered weights (zero diagonal) from ``gram`` float64[m, m], the
        (user-weighted) Gram matrix over the modelled items, which is overwritten.

        The fitted state is the same whoever summed ``gram``: the in-process fit, or the
        sharded one (:mod:`llmrecall.engine.sharded_ease`) adding one Gram matrix per shard.
        """
        with limited_blas():
            gram[np.diag_indices_from(gram)] += self._penalty(np.diag(gram).copy())
            # Cholesky inverse: the Gram matrix plus a positive diagonal is symmetric positive
            # definite
            inverse = scipy.linalg.cho_solve(scipy.linalg.cho_factor(gram, overwrite_a=True),
                                             np.eye(gram.shape[0]), overwrite_b=True)
        weights = -inverse / np.diag(inverse)[None, :]
        weights[np.diag_indices_from(weights)] = 0.0
        # C order: the solver returns Fortran order, which makes every `hist @ weights_` copy
        return np.ascontiguousarray(weights, dtype=np.float32)

    def install(self, modelled: np.ndarray, weights: np.ndarray, popularity: np.ndarray) -> Self:
        """Set the fitted state from its parts: ``modelled`` int[m] (:meth:`modelled_items`),
        ``weights`` float32[m, m] (:meth:`solve`), ``popularity`` float32[n_items]."""
        self.items_ = np.asarray(modelled).astype(np.int32)
        self.weights_ = weights
        self.popularity_ = popularity
        return self

    @property
    def _n_fitted(self) -> int:
        return len(self.popularity_)

    def _history(self, users: np.ndarray, history: Histories):
        return weighted_history(history, users, self._n_fitted)

    def score(self, users: np.ndarray, history: Histories) -> np.ndarray:
        return self.scored(users, history)[0]

    def scored(self, users: np.ndarray, history: Histories) -> tuple[np.ndarray, np.ndarray]:
        width = check_width(history, self._n_fitted, self.name)
        hist = self._history(users, history)[:, self.items_]
        known = np.full((hist.shape[0], self._n_fitted), -np.inf, np.float32)
        with limited_blas():
            modelled = np.asarray(hist @ self.weights_)
        known[:, self.items_] = modelled
        # a row of zeros: the history's modelled items were never chosen in training (their
        # weights are all 0), so the ranking would be item id order, not the model's
        no_signal = np.asarray(~modelled.any(axis=1), bool)
        return finish_scores(known, empty_rows(hist), self.popularity_, width), no_signal

    def evidence(self, users: np.ndarray, ids: np.ndarray, history: Histories) -> np.ndarray:
        weights = self.weights_
        position = np.full(self._n_fitted + 1, -1, np.int64)  # last slot: unknown/padding
        position[self.items_] = np.arange(len(self.items_))

        def pair_value(h: np.ndarray, j: np.ndarray) -> np.ndarray:
            ph, pj = position[np.minimum(h, self._n_fitted)], position[np.minimum(j, self._n_fitted)]
            inside = (ph >= 0) & (pj >= 0)
            return np.where(inside, weights[np.maximum(ph, 0), np.maximum(pj, 0)], -np.inf)

        return best_history_item(self._history(users, history), ids, pair_value)
