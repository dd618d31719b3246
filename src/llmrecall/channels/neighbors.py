"""Item-to-item neighbour channels (ItemCF, Swing): a sparse similarity, scored from the
user's recent history.

A subclass only says how to compute the item-item similarity; fitting, pruning to the top-N
neighbours of each candidate, scoring and evidence live here.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable

import numpy as np
import scipy.sparse as sp

from llmrecall.channels.base import Channel
from llmrecall.channels.history import (
    best_history_item,
    check_width,
    empty_rows,
    finish_scores,
    sparse_lookup,
    weighted_history,
)
from llmrecall.data.dataset import Dataset, Histories, Interactions
from llmrecall.errors import ConfigError
from llmrecall.threads import limited_blas

#: dense entries per similarity column block while pruning (bounds memory to ~32 MB)
BLOCK_ENTRIES = 8_000_000


def training_matrix(dataset: Dataset) -> sp.csr_matrix:
    """Binary float32 CSR [n_users, n_items] of the dataset's interactions."""
    return binary_matrix(dataset.interactions, dataset.n_users, dataset.n_items)


def binary_matrix(log: Interactions, n_users: int, n_items: int,
                  dtype: type = np.float32) -> sp.csr_matrix:
    """CSR [n_users, n_items] of ``dtype``: 1 where ``log`` has the (user, item) pair."""
    matrix: sp.csr_matrix = sp.csr_matrix((np.ones(len(log), dtype), (log.user, log.item)),
                                        shape=(n_users, n_items))
    matrix.sum_duplicates()
    matrix.data[:] = 1.0
    return matrix


def item_popularity(matrix: sp.csr_matrix) -> np.ndarray:
    """float32[n_items] interaction counts scaled to [0, 1]: the empty-history fallback."""
    return scaled_popularity(np.asarray(matrix.sum(axis=0), np.float64).ravel())


def scaled_popularity(counts: np.ndarray) -> np.ndarray:
    """float32[n_items] ``counts`` (float64, each item's training users) scaled to [0, 1],
    as :func:`item_popularity` gives them (a sharded fit sums the counts over shards)."""
    return (counts / max(counts.max(initial=0.0), 1.0)).astype(np.float32)


def pruned_similarity(n_items: int, neighbors: int,
                      column_block: Callable[[np.ndarray], np.ndarray]) -> sp.csr_matrix:
    """Assemble an item-item similarity keeping each candidate's top ``neighbors``.

    Args:
        n_items: size of the square matrix.
        neighbors: entries kept per column (the candidate's most similar history items).
        column_block: ``f(cols int64[b]) -> float[n_items, b]`` dense similarity of every
            item (rows, the history item) to the candidates ``cols``.
    Returns:
        float32 CSR [n_items, n_items]: row = history item, column = candidate; at most
        ``neighbors`` positive entries per column, none on the diagonal.
    """
    if neighbors < 1:
        raise ConfigError(f"neighbors must be >= 1, got {neighbors}")
    parts = [prune_block(column_block(cols), cols, neighbors)
             for cols in column_blocks(n_items)]
    return assemble_pruned(n_items, parts)


def column_blocks(n_items: int) -> list[np.ndarray]:
    """The candidate-column blocks (int64[b] each, ascending, covering ``0..n_items-1``)
    that :func:`pruned_similarity` prunes one at a time: ``BLOCK_ENTRIES // n_items``
    columns each, so a dense block stays near ``BLOCK_ENTRIES`` entries."""
    width = max(1, BLOCK_ENTRIES // max(n_items, 1))
    return [np.arange(start, min(start + width, n_items)) for start in range(0, n_items, width)]


def prune_block(block: np.ndarray, cols: np.ndarray,
                neighbors: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The top ``neighbors`` positive entries of each column of one dense block.

    Args:
        block: float[n_items, b] similarity of every item to the candidates ``cols``
            (cast to float32 here; the diagonal is cleared here).
        cols: int64[b] the candidates' item ids.
    Returns:
        ``(rows, cols, values)`` of the kept entries (int64, int64, float32). Each column
        is selected on its own (``argpartition`` per column), so a column's kept entries
        depend only on that column's values: any process holding the same column keeps
        the same entries.
    """
    block = np.array(block, dtype=np.float32, copy=True)
    n_items = block.shape[0]
    keep = min(neighbors, n_items)
    block[cols, np.arange(len(cols))] = 0.0  # an item is not its own neighbour
    if keep < n_items:
        top = np.argpartition(-block, keep - 1, axis=0)[:keep]
    else:
        top = np.broadcast_to(np.arange(n_items)[:, None], block.shape)
    vals = np.take_along_axis(block, top, axis=0)
    positive = vals > 0
    return (top[positive], np.broadcast_to(cols[None, :], top.shape)[positive],
            vals[positive])


def assemble_pruned(n_items: int,
                    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> sp.csr_matrix:
    """float32 CSR [n_items, n_items] from :func:`prune_block` outputs (any order)."""
    rows = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int64)
    cols = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, np.int64)
    vals = np.concatenate([p[2] for p in parts]) if parts else np.zeros(0, np.float32)
    similarity = sp.csr_matrix((vals, (rows, cols)), shape=(n_items, n_items), dtype=np.float32)
    similarity.sort_indices()
    return similarity


class ItemNeighborChannel(Channel):
    """Scores ``s[u, j] = sum_h w(u, h) * similarity_[h, j]`` over the user's recent history.

    ``w(u, h)`` is 1, or decays with the position / time of ``h`` in the history (see
    :func:`~llmrecall.channels.history.weighted_history`). Users whose usable history is empty
    get item popularity instead (marked as the channel's fallback, see
    ``Candidates.fallback``), as are candidates scoring 0: nothing in the history was ever
    chosen with them. Items added after fit are never recalled (-inf).

    Learned state: ``similarity_`` float32 CSR [n_items, n_items] (row = history item,
    column = candidate, top ``neighbors`` per column) and ``popularity_`` float32[n_items].
    Evidence: the history item with the largest ``w(u, h) * similarity_[h, j]``.
    """

    in_process = True  # see Channel.in_process
    signal_floor = 0.0  # a score of 0: no co-occurrence with the history at all

    evidence_template = "often chosen together with {evidence}"

    def __init__(self, neighbors: int = 100, history_length: int | None = None,
                 position_half_life: float | None = None,
                 time_half_life: float | None = None, name: str | None = None):
        super().__init__(name)
        self.neighbors = neighbors
        self.history_length = history_length
        self.position_half_life = position_half_life
        self.time_half_life = time_half_life

    @abstractmethod
    def similarity(self, dataset: Dataset, matrix: sp.csr_matrix) -> sp.csr_matrix:
        """The pruned similarity (see :func:`pruned_similarity`) from the binary training
        matrix ``matrix`` float32 CSR [n_users, n_items]."""

    def fit(self, dataset: Dataset, similarity: Callable[..., sp.csr_matrix] | None = None,
            ) -> ItemNeighborChannel:
        """Fit on ``dataset``. ``similarity(channel, dataset, matrix)``, when given, computes
        the pruned similarity in place of :meth:`similarity` (a distributed engine's
        map-shuffle-reduce; it must return the same matrix)."""
        for field in ("history_length", "position_half_life", "time_half_life"):
            value = getattr(self, field)
            if value is not None and value <= 0:
                raise ConfigError(f"{self.kind} {field} must be positive or None, got {value}")
        matrix = training_matrix(dataset)
        with limited_blas():
            computed = (self.similarity(dataset, matrix) if similarity is None
                        else similarity(self, dataset, matrix))
            self.similarity_ = computed.tocsr().astype(np.float32)
        self.popularity_ = item_popularity(matrix)
        return self

    def install(self, similarity: sp.csr_matrix, item_counts: np.ndarray) -> ItemNeighborChannel:
        """Take a fit computed elsewhere (the sharded evaluation's map-reduce): the pruned
        similarity float32 CSR [n_items, n_items] and each item's number of distinct
        training users float[n_items] (the empty-history fallback)."""
        self.similarity_ = similarity.tocsr().astype(np.float32)
        counts = np.asarray(item_counts, np.float64)
        self.popularity_ = (counts / max(counts.max(initial=0.0), 1.0)).astype(np.float32)
        return self

    def _history(self, users: np.ndarray, history: Histories) -> sp.csr_matrix:
        return weighted_history(history, users, self.similarity_.shape[0], self.history_length,
                                self.position_half_life, self.time_half_life)

    def score(self, users: np.ndarray, history: Histories) -> np.ndarray:
        return self.scored(users, history)[0]

    def scored(self, users: np.ndarray, history: Histories) -> tuple[np.ndarray, np.ndarray]:
        width = check_width(history, self.similarity_.shape[0], self.name)
        hist = self._history(users, history)
        known = (hist @ self.similarity_).toarray()
        empty = empty_rows(hist)
        return finish_scores(known, empty, self.popularity_, width), empty

    def evidence(self, users: np.ndarray, ids: np.ndarray, history: Histories) -> np.ndarray:
        return best_history_item(self._history(users, history), ids,
                                 sparse_lookup(self.similarity_))
