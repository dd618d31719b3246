"""ItemCF: item-item cosine similarity with inverse-user-frequency damping.

``sim(i, j) = sum_u iuf(u) x_ui x_uj / (||x_i|| ||x_j|| + shrink + 1e-6)`` with
``iuf(u) = 1 / log(1 + |I_u|)`` (users with long histories count less) and binary ``x``.
Each candidate keeps its ``neighbors`` most similar items.

With ``iuf=False``, no history length limit and no decay this is exactly RecBole's ItemKNN
(``k`` = ``neighbors``, same ``shrink``, same 1e-6 in the denominator, pruning per
candidate column, score = history @ similarity).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from llmrecall.channels.neighbors import ItemNeighborChannel, pruned_similarity
from llmrecall.channels.registry import register
from llmrecall.data.dataset import Dataset
from llmrecall.errors import ConfigError


@register
class ItemCF(ItemNeighborChannel):
    """Item-item cosine neighbours (see the module docstring).

    Args:
        neighbors: similar items kept per candidate item.
        shrink: added to the cosine denominator; damps similarities from few co-occurrences.
        iuf: weight each user's co-occurrences by ``1 / log(1 + |I_u|)``.
        history_length: score from the last this many interactions (None: all).
        position_half_life / time_half_life: history decay, see
            :func:`~llmrecall.channels.history.weighted_history`.
    """

    kind = "itemcf"

    def __init__(self, neighbors: int = 200, shrink: float = 0.0, iuf: bool = True,
                 history_length: int | None = 20, position_half_life: float | None = 10.0,
                 time_half_life: float | None = None, name: str | None = None):
        super().__init__(neighbors, history_length, position_half_life, time_half_life, name)
        self.shrink = shrink
        self.iuf = iuf

    def similarity(self, dataset: Dataset, matrix: sp.csr_matrix) -> sp.csr_matrix:
        if self.shrink < 0:
            raise ConfigError(f"itemcf shrink must be >= 0, got {self.shrink}")
        norms = np.sqrt(np.asarray(matrix.sum(axis=0), np.float64).ravel())
        weighted = matrix
        if self.iuf:
            per_user = np.asarray(matrix.sum(axis=1), np.float64).ravel()
            damp = 1.0 / np.log1p(np.maximum(per_user, 1.0))
            weighted = sp.diags(damp.astype(np.float32)) @ matrix
        left = weighted.T.tocsr()  # [n_items, n_users]
        right = matrix.tocsc()

        def column_block(cols: np.ndarray) -> np.ndarray:
            co = (left @ right[:, cols]).toarray().astype(np.float64)
            return co / (norms[:, None] * norms[None, cols] + self.shrink + 1e-6)

        return pruned_similarity(dataset.n_items, self.neighbors, column_block)
