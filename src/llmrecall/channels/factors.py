"""Matrix-factorisation channels (ALS, BPR) trained with the ``implicit`` library on CPU.

Scores are ``user_vector @ item_factors_.T``. How a user's vector is found from the history
passed to :meth:`~llmrecall.channels.base.Channel.recall` is the one thing ALS and BPR do
differently (:meth:`FactorChannel.user_vectors`).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable
from typing import ClassVar

import numpy as np
import scipy.sparse as sp

from llmrecall import progress
from llmrecall.channels.base import Channel
from llmrecall.channels.capabilities import CachesUsers
from llmrecall.channels.history import (
    best_history_item,
    check_width,
    finish_scores,
    weighted_history,
)
from llmrecall.channels.neighbors import item_popularity, training_matrix
from llmrecall.channels.user_cache import cached_user_states
from llmrecall.data.dataset import Dataset, Histories
from llmrecall.errors import ConfigError
from llmrecall.scoring import dot_rows
from llmrecall.threads import limited_blas

#: (pair, factor) products computed at once when looking for evidence
_EVIDENCE_CHUNK = 200_000

def each_iteration(on_iteration: Callable[[], None] | None):
    """``on_iteration`` as implicit's ``fit(callback=...)``, which passes the iteration,
    its seconds and a loss (None: no callback, as implicit's default)."""
    if on_iteration is None:
        return None
    return lambda *_: on_iteration()


class FactorChannel(Channel, CachesUsers):
    """Base of the factor channels.

    Learned state: ``user_factors_`` float32[n_users, f'], ``item_factors_`` float32[n_items,
    f'] (implicit's layout: BPR appends an item-bias column and a constant-1 user column),
    ``popularity_`` float32[n_items] for users the channel cannot place (marked as the
    channel's fallback, ``Candidates.fallback``, as are users whose vector is zero). Items added after
    fit are never recalled (-inf). Evidence: the history item whose factor vector has the
    largest dot product with the candidate's.

    ``user_cache`` (set by the service, None offline) keeps ``(vector, placed)`` per user
    while the user's history version is unchanged (:mod:`llmrecall.channels.user_cache`).
    """

    in_process = True  # see Channel.in_process

    evidence_template = "fits your taste profile; closest to {evidence}"

    #: whether recall reads each fitted user's own row of ``user_factors_`` (BPR), rather
    #: than solving the user's vector from the history it is given (ALS)
    keeps_user_vectors: ClassVar[bool] = False

    def __init__(self, factors: int, regularization: float, iterations: int, seed: int,
                 name: str | None):
        super().__init__(name)
        self.factors = factors
        self.regularization = regularization
        self.iterations = iterations
        self.seed = seed

    @abstractmethod
    def train(self, matrix: sp.csr_matrix, on_iteration: Callable[[], None] | None = None,
              ) -> tuple[np.ndarray, np.ndarray]:
        """Fit implicit on the binary float32 CSR [n_users, n_items]; return the user and
        item factors as float32 arrays. ``on_iteration`` is called after each iteration."""

    @abstractmethod
    def user_vectors(self, users: np.ndarray, hist: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
        """``vectors float32[n, f']`` for ``users`` given their binary history ``hist``
        (CSR [n, n_fitted_items]) and ``placed bool[n]``: False where nothing is known (the
        row then gets popularity)."""

    def evidence_factors(self) -> np.ndarray:
        """float32[n_items, f] item vectors compared for evidence."""
        return self.item_factors_

    def check_params(self) -> None:
        """Raise :class:`ConfigError` for hyperparameters the fit cannot use."""
        for field in ("factors", "iterations"):
            if int(getattr(self, field)) < 1:
                raise ConfigError(f"{self.kind} {field} must be >= 1, got {getattr(self, field)}")
        if self.regularization < 0:
            raise ConfigError(f"{self.kind} regularization must be >= 0, got "
                              f"{self.regularization}")

    def fit(self, dataset: Dataset) -> FactorChannel:
        self.check_params()
        matrix = training_matrix(dataset)
        users, items = self.fit_matrix(matrix)
        self.install(users, items, item_popularity(matrix))
        return self

    def fit_matrix(self, matrix: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`train` on ``matrix`` (binary float32 CSR [n_users, n_items]) with BLAS on
        one thread: implicit parallelises itself, BLAS threads on top only oversubscribe."""
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=1, user_api="blas"), progress.task(
                f"fit {self.name}", int(self.iterations), "iteration") as bar:
            return self.train(matrix, bar.advance)

    def use_shard_users(self, state: dict[str, np.ndarray]) -> None:
        """Install one shard's user factors (``state["user_factors_"]`` float32[its users,
        f'], numbered as that shard numbers its users): the sharded log's per-shard view."""
        self.user_factors_ = state["user_factors_"]

    def join_shard_users(self, states: list[dict[str, np.ndarray]]) -> None:
        """Install every shard's user factors, the users numbered shard after shard."""
        self.user_factors_ = np.concatenate([s["user_factors_"] for s in states])

    def install(self, user_factors: np.ndarray, item_factors: np.ndarray,
                popularity: np.ndarray) -> None:
        """Take factors fitted elsewhere (the sharded log's reducer): ``user_factors``
        float32[n_users, f'] (may have no rows where :meth:`user_vectors` does not read
        them: ALS), ``item_factors`` float32[n_items, f'], ``popularity`` float32[n_items]
        (:func:`~llmrecall.channels.neighbors.item_popularity`'s scale)."""
        self.user_factors_ = np.ascontiguousarray(user_factors, dtype=np.float32)
        self.item_factors_ = np.ascontiguousarray(item_factors, dtype=np.float32)
        self.popularity_ = np.asarray(popularity, np.float32)

    def _history(self, users: np.ndarray, history: Histories) -> sp.csr_matrix:
        return weighted_history(history, users, self.item_factors_.shape[0])

    def score(self, users: np.ndarray, history: Histories) -> np.ndarray:
        return self.scored(users, history)[0]

    def scored(self, users: np.ndarray, history: Histories) -> tuple[np.ndarray, np.ndarray]:
        width = check_width(history, self.item_factors_.shape[0], self.name)
        users = np.asarray(users, dtype=np.int64)
        # item_factors_ is what user_vectors reads besides the history
        vectors, placed = cached_user_states(
            self.user_cache, users, history, self.item_factors_,
            lambda pos: self.user_vectors(users[pos], self._history(users[pos], history)))
        with limited_blas():
            known = dot_rows(vectors, self.item_factors_)  # batch-independent rows
        # a zero vector (a history of items never chosen in training) ranks by item id only
        no_signal = ~placed | ~vectors.any(axis=1)
        return finish_scores(known, ~placed, self.popularity_, width), no_signal

    def evidence(self, users: np.ndarray, ids: np.ndarray, history: Histories) -> np.ndarray:
        factors = self.evidence_factors()

        def dot(h: np.ndarray, j: np.ndarray) -> np.ndarray:
            out = np.empty(len(h), np.float64)
            for s in range(0, len(h), _EVIDENCE_CHUNK):
                t = slice(s, s + _EVIDENCE_CHUNK)
                out[t] = np.einsum("pf,pf->p", factors[h[t]], factors[j[t]])
            return out

        return best_history_item(self._history(users, history), ids, dot)
