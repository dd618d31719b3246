"""EASE (Steck 2019): a dense item-item linear model with a closed-form solution.

``B = argmin ||X - X B||^2 + lam ||B||^2  s.t. diag(B) = 0`` is ``B = I - P / diag(P)`` with
``P = (X^T X + lam I)^-1``. Memory and time grow as n_items^2 and n_items^3: fine for a few
thousand items (ml-1m: 3,706 items, 55 MB), heavy beyond ~20k.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg

from llmrecall.channels.base import Channel
from llmrecall.channels.history import (best_history_item, check_width, empty_rows,
                                        finish_scores, limited_blas, weighted_history)
from llmrecall.channels.neighbors import item_popularity, training_matrix
from llmrecall.channels.registry import register
from llmrecall.data.dataset import Dataset, Histories
from llmrecall.errors import ConfigError


@register
class EASE(Channel):
    """EASE scores ``s[u] = x_u @ weights_`` from the user's whole (binary) history.

    Args:
        regularization: lambda on the diagonal of the Gram matrix (RecBole uses 1000 on ML-1M).
    Users whose history holds no fitted item get item popularity. Items added after fit are
    never recalled (-inf). Evidence: the history item ``h`` with the largest ``weights_[h, j]``.

    Learned state: ``weights_`` float32[n_items, n_items] (zero diagonal), ``popularity_``
    float32[n_items].
    """

    kind = "ease"
    evidence_template = "because you liked {evidence}"

    def __init__(self, regularization: float = 500.0, name: str | None = None):
        super().__init__(name)
        self.regularization = regularization

    def fit(self, dataset: Dataset) -> "EASE":
        if self.regularization <= 0:
            raise ConfigError(f"ease regularization must be > 0, got {self.regularization}")
        matrix = training_matrix(dataset)
        with limited_blas():
            gram = (matrix.T @ matrix).toarray().astype(np.float64)
            gram[np.diag_indices_from(gram)] += float(self.regularization)
            # Cholesky inverse: the Gram matrix plus lam*I is symmetric positive definite
            inverse = scipy.linalg.cho_solve(scipy.linalg.cho_factor(gram, overwrite_a=True),
                                             np.eye(gram.shape[0]), overwrite_b=True)
        weights = -inverse / np.diag(inverse)[None, :]
        weights[np.diag_indices_from(weights)] = 0.0
        self.weights_ = weights.astype(np.float32)
        self.popularity_ = item_popularity(matrix)
        return self

    def _history(self, users: np.ndarray, history: Histories):
        return weighted_history(history, users, self.weights_.shape[0])

    def score(self, users: np.ndarray, history: Histories) -> np.ndarray:
        width = check_width(history, self.weights_.shape[0], self.name)
        hist = self._history(users, history)
        with limited_blas():
            known = np.asarray(hist @ self.weights_)
        return finish_scores(known, empty_rows(hist), self.popularity_, width)

    def evidence(self, users: np.ndarray, ids: np.ndarray, history: Histories) -> np.ndarray:
        weights = self.weights_
        return best_history_item(self._history(users, history), ids,
                                 lambda h, j: weights[h, j])
