"""Swing (Alibaba): items are similar when *pairs* of users both chose them, and a pair counts
more the less else those two users have in common.

``sim(i, j) = sum_{u<v in U_i ∩ U_j} w_u w_v / (alpha + |I_u ∩ I_v|)`` with the user weight
``w_u = |I_u| ** -user_power``. To stay tractable each item keeps only its
``max_users_per_item`` most recent users (ties: later in the log first); the overlaps
``|I_u ∩ I_v|`` are counted on that capped matrix.

Computation, all sparse: enumerate the user pairs of every item (vectorised per item size),
count each pair's overlap with ``np.unique``, keep pairs sharing >= 2 items (a pair sharing
one item links nothing), build ``Z`` [pairs, items] with ``Z[p, i] = 1`` when both users of
``p`` chose ``i``, and ``sim = Z^T diag(K) Z`` column block by column block.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from llmrecall.channels.neighbors import ItemNeighborChannel, pruned_similarity
from llmrecall.channels.registry import register
from llmrecall.data.dataset import Dataset
from llmrecall.errors import ConfigError


def recent_users_per_item(dataset: Dataset, cap: int) -> tuple[np.ndarray, np.ndarray]:
    """Each item's ``cap`` most recent distinct users.

    Returns ``item_ptr int64[n_items+1]`` and ``users int64[nnz]``: item i's users are
    ``users[item_ptr[i]:item_ptr[i+1]]``, most recent first.
    """
    log = dataset.interactions
    order = np.lexsort((-np.arange(len(log)), -log.time, log.item))  # item, newest first
    item, user = log.item[order].astype(np.int64), log.user[order].astype(np.int64)
    # drop repeated (item, user) pairs, keeping the newest
    key = item * dataset.n_users + user
    _, first = np.unique(key, return_index=True)
    keep = np.zeros(len(key), bool)
    keep[first] = True
    item, user = item[keep], user[keep]
    counts = np.bincount(item, minlength=dataset.n_items)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.arange(len(item)) - starts[item]
    capped = rank < cap
    item, user = item[capped], user[capped]
    item_ptr = np.zeros(dataset.n_items + 1, np.int64)
    np.cumsum(np.bincount(item, minlength=dataset.n_items), out=item_ptr[1:])
    return item_ptr, user


def user_pairs(item_ptr: np.ndarray, users: np.ndarray,
               n_users: int) -> tuple[np.ndarray, np.ndarray]:
    """Every pair of users sharing an item, once per shared item.

    Returns ``pair_key int64[p]`` (``u * n_users + v`` with u < v) and ``item int64[p]``.
    Vectorised per distinct item size: items with n users are handled together with the
    ``n * (n-1) / 2`` upper-triangle index pairs.
    """
    sizes = np.diff(item_ptr)
    out_key, out_item = [], []
    for n in np.unique(sizes[sizes >= 2]):
        items = np.flatnonzero(sizes == n)
        members = users[item_ptr[items][:, None] + np.arange(n)[None, :]]  # [m, n]
        a, b = np.triu_indices(int(n), 1)
        u, v = members[:, a].ravel(), members[:, b].ravel()
        out_key.append(np.minimum(u, v) * n_users + np.maximum(u, v))
        out_item.append(np.repeat(items, len(a)))
    if not out_key:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(out_key), np.concatenate(out_item)


@register
class Swing(ItemNeighborChannel):
    """Swing item-item similarity (see the module docstring); scored like ItemCF.

    Args:
        alpha: smoothing in ``1 / (alpha + |I_u ∩ I_v|)``.
        user_power: user weight ``|I_u| ** -user_power`` (0 disables it).
        max_users_per_item: most recent users kept per item (bounds the pair count to
            ``n_items * max_users_per_item**2 / 2``).
        neighbors, history_length, position_half_life, time_half_life: as for ItemCF.
    """

    kind = "swing"
    evidence_template = "chosen by the same small circles of users as {evidence}"

    def __init__(self, alpha: float = 1.0, user_power: float = 0.5,
                 max_users_per_item: int = 100, neighbors: int = 200,
                 history_length: int | None = 20, position_half_life: float | None = 10.0,
                 time_half_life: float | None = None, name: str | None = None):
        super().__init__(neighbors, history_length, position_half_life, time_half_life, name)
        self.alpha = alpha
        self.user_power = user_power
        self.max_users_per_item = max_users_per_item

    def similarity(self, dataset: Dataset, matrix: sp.csr_matrix) -> sp.csr_matrix:
        if self.alpha <= 0:
            raise ConfigError(f"swing alpha must be > 0, got {self.alpha}")
        if self.max_users_per_item < 2:
            raise ConfigError(f"swing max_users_per_item must be >= 2, got "
                              f"{self.max_users_per_item}")
        item_ptr, users = recent_users_per_item(dataset, int(self.max_users_per_item))
        pair_key, item = user_pairs(item_ptr, users, dataset.n_users)
        keys, pair, overlap = np.unique(pair_key, return_inverse=True, return_counts=True)
        linked = overlap >= 2
        # renumber the linked pairs 0..P-1 and drop the rest
        new_id = np.cumsum(linked) - 1
        keep = linked[pair]
        pair, item = new_id[pair[keep]], item[keep]
        keys, overlap = keys[linked], overlap[linked]
        history_len = np.maximum(np.asarray(matrix.sum(axis=1), np.float64).ravel(), 1.0)
        user_weight = history_len ** -float(self.user_power)
        pu, pv = keys // dataset.n_users, keys % dataset.n_users
        pair_weight = user_weight[pu] * user_weight[pv] / (self.alpha + overlap)
        z = sp.csr_matrix((np.ones(len(pair), np.float32), (pair, item)),
                          shape=(len(keys), dataset.n_items))
        left = (sp.diags(pair_weight.astype(np.float32)) @ z).T.tocsr()  # [n_items, P]
        right = z.tocsc()

        def column_block(cols: np.ndarray) -> np.ndarray:
            return (left @ right[:, cols]).toarray()

        return pruned_similarity(dataset.n_items, self.neighbors, column_block)
