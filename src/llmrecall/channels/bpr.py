"""BPR (Rendle et al. 2009) via implicit's CPU sampler."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import scipy.sparse as sp

from llmrecall.channels.factors import FactorChannel, each_iteration
from llmrecall.channels.history import empty_rows
from llmrecall.channels.registry import register


@register
class BPR(FactorChannel):
    """Bayesian personalised ranking matrix factorisation.

    Trained on one thread so that a seed gives the same factors every time (implicit's
    multi-threaded SGD is lock-free and order dependent). At recall, **users known at fit
    keep their fitted vector** (BPR has no cheap exact fold-in; one interaction newer than
    the model changes little). Users unseen at fit get the mean factor vector of the fitted
    items in their history; those with none get popularity.
    """

    kind = "bpr"
    keeps_user_vectors = True

    def __init__(self, factors: int = 64, regularization: float = 0.01,
                 learning_rate: float = 0.02, iterations: int = 50, seed: int = 0,
                 name: str | None = None):
        super().__init__(factors, regularization, iterations, seed, name)
        self.learning_rate = learning_rate

    def train(self, matrix: sp.csr_matrix, on_iteration: Callable[[], None] | None = None,
              ) -> tuple[np.ndarray, np.ndarray]:
        from implicit.cpu.bpr import BayesianPersonalizedRanking

        model = BayesianPersonalizedRanking(
            factors=int(self.factors), learning_rate=float(self.learning_rate),
            regularization=float(self.regularization), iterations=int(self.iterations),
            random_state=int(self.seed), num_threads=1)
        model.fit(matrix, show_progress=False, callback=each_iteration(on_iteration))
        return model.user_factors, model.item_factors

    def evidence_factors(self) -> np.ndarray:
        return self.item_factors_[:, :-1]  # without the item-bias column

    def user_vectors(self, users: np.ndarray, hist: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
        fitted_users = self.user_factors_.shape[0]
        known = users < fitted_users
        vectors = np.zeros((len(users), self.item_factors_.shape[1]), np.float32)
        vectors[known] = self.user_factors_[users[known]]
        # new users: the mean of their history's item vectors, with implicit's constant 1
        # in the last column so the item bias still counts
        counts = np.diff(hist.indptr).astype(np.float32)
        binary = hist.copy()
        binary.data[:] = 1.0
        means = np.asarray(binary @ self.item_factors_) / np.maximum(counts, 1.0)[:, None]
        means[:, -1] = 1.0
        vectors[~known] = means[~known]
        placed = known | ~empty_rows(hist)
        return vectors, placed
