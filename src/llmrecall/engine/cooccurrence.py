"""ItemCF and Swing co-occurrence as map -> shuffle -> reduce, in plain numpy.

These are the steps a distributed engine runs on its workers (:mod:`llmrecall.engine.ray`
sends each call to a task); nothing here imports a cluster library, and
:func:`run_local` chains the steps in one process (the reference the tests compare with).

Each reducer owns a contiguous range of candidate items (columns) and ends in the same
per-column pruning as the in-process fit (:func:`~llmrecall.channels.neighbors.prune_block`)
on column values computed by the same sparse product over the rows that touch its
columns, so the neighbour lists are **identical** to ``ItemCF.fit`` / ``Swing.fit``, not
merely close: scipy's product adds a candidate's terms in float32 in ascending order of
the inner index (user, or user pair), and a row that holds none of a reducer's columns
adds nothing to them, so leaving it out changes no addition. Pruning is per column, so
how the columns are split among reducers does not matter either.

ItemCF (one shuffle): map each block of users to their rows (items and weight), sent to
every reducer whose column range the row touches (shuffle by item range); reduce: the
co-occurrence of every item with the range's candidates, the cosine denominator, each
column's top ``neighbors``. Shuffle bytes: each interaction once per range its user's
row touches (at most ``n_partitions`` times), not once per item pair.

Swing (three shuffles): (1) the log keyed by item: each item's most recent distinct users
(capped); (2) the user pairs of each item keyed by pair: a pair's overlap (items in
common) and weight, pairs sharing fewer than two items dropped; (3) each linked pair's
row (its items, its weight) sent to the reducers whose ranges it touches; reduce: the
pair-weighted co-occurrence of every item with the range's candidates, the top per column.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import scipy.sparse as sp

from llmrecall.channels.neighbors import BLOCK_ENTRIES, assemble_pruned, prune_block
from llmrecall.errors import ConfigError

#: a shuffled partition: a dict of equal-length numpy columns
Columns = dict[str, np.ndarray]


# --- helpers ----------------------------------------------------------------------------


def group_pairs(indptr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every pair of positions ``a < b`` inside each group of a CSR layout.

    Returns ``(a, b)`` int64[p], positions into the grouped array. Vectorised per distinct
    group size (as ``swing.user_pairs``).
    """
    sizes = np.diff(indptr)
    out_a, out_b = [], []
    for n in np.unique(sizes[sizes >= 2]):
        groups = np.flatnonzero(sizes == n)
        base = indptr[groups][:, None]
        a, b = np.triu_indices(int(n), 1)
        out_a.append((base + a[None, :]).ravel())
        out_b.append((base + b[None, :]).ravel())
    if not out_a:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(out_a), np.concatenate(out_b)


def partition_by(key: np.ndarray, n_partitions: int) -> list[np.ndarray]:
    """Row indices per partition for an int key already mapped to ``0..n_partitions-1``."""
    order = np.argsort(key, kind="stable")
    bounds = np.searchsorted(key[order], np.arange(n_partitions + 1))
    return [order[bounds[p]:bounds[p + 1]] for p in range(n_partitions)]


def column_ranges(n_items: int, n_partitions: int) -> np.ndarray:
    """int64[P+1] bounds: reducer p owns the candidate columns ``bounds[p]:bounds[p+1]``."""
    return np.linspace(0, n_items, n_partitions + 1).round().astype(np.int64)


def _split(columns: Columns, parts: list[np.ndarray]) -> list[Columns]:
    return [{k: v[idx] for k, v in columns.items()} for idx in parts]


def concat(parts: Sequence[Columns]) -> Columns:
    """One partition from the pieces every map task sent it."""
    keys = parts[0].keys()
    return {k: np.concatenate([p[k] for p in parts]) for k in keys}


def rows_to_ranges(group: np.ndarray, item: np.ndarray, extra: Columns,
                   bounds: np.ndarray) -> list[Columns]:
    """Send every whole row (entries sharing ``group``, sorted by it) to each partition
    whose column range holds at least one of the row's items."""
    n_partitions = len(bounds) - 1
    part_of = np.searchsorted(bounds, item, "right") - 1
    # (row, partition) pairs that occur, then every entry of the row for each of them
    touched = np.unique(np.stack([group, part_of], 1), axis=0) if len(group) else \
        np.zeros((0, 2), np.int64)
    change = np.ones(len(group), bool)
    change[1:] = group[1:] != group[:-1]
    starts = np.flatnonzero(change)
    ends = np.append(starts[1:], len(group))
    row_index = np.searchsorted(group[starts], touched[:, 0])
    lengths = ends[row_index] - starts[row_index]
    take = np.repeat(starts[row_index] - np.concatenate([[0], np.cumsum(lengths)[:-1]]),
                     lengths) + np.arange(int(lengths.sum()))
    dest = np.repeat(touched[:, 1], lengths)
    columns = {"group": group[take], "item": item[take], **{k: v[take] for k, v in extra.items()}}
    return _split(columns, partition_by(dest, n_partitions))


def _pruned_range(left: sp.csr_matrix, right: sp.csc_matrix, lo: int, hi: int, n_items: int,
                  neighbors: int, scale=None) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Prune candidate columns ``lo:hi`` of ``left @ right`` in blocks of about
    ``BLOCK_ENTRIES`` dense entries; ``scale(block, cols)`` post-processes a block."""
    width = max(1, BLOCK_ENTRIES // max(n_items, 1))
    out = []
    for start in range(lo, hi, width):
        cols = np.arange(start, min(start + width, hi))
        block = (left @ right[:, cols]).toarray()
        if scale is not None:
            block = scale(block, cols)
        out.append(prune_block(block, cols, neighbors))
    return out


# --- ItemCF -----------------------------------------------------------------------------


def itemcf_weights(matrix: sp.csr_matrix, iuf: bool) -> np.ndarray:
    """float32[n_users] each user's co-occurrence weight, as ``ItemCF.similarity`` has it."""
    if not iuf:
        return np.ones(matrix.shape[0], np.float32)
    per_user = np.asarray(matrix.sum(axis=1), np.float64).ravel()
    return (1.0 / np.log1p(np.maximum(per_user, 1.0))).astype(np.float32)


def itemcf_map(rows: sp.csr_matrix, first_user: int, weights: np.ndarray,
               bounds: np.ndarray) -> list[Columns]:
    """Map a block of users (binary CSR rows; row r is user ``first_user + r``) to their
    rows, each sent to the reducers whose column ranges it touches."""
    rows = rows.tocsr()
    user = np.repeat(np.arange(rows.shape[0], dtype=np.int64), np.diff(rows.indptr)) + first_user
    return rows_to_ranges(user, rows.indices.astype(np.int64), {"w": weights[user]}, bounds)


def itemcf_reduce(part: Columns, lo: int, hi: int, n_users: int, n_items: int,
                  norms: np.ndarray, shrink: float, neighbors: int,
                  ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Reduce one partition (the whole rows of every user with an item in ``lo:hi``) to
    the top neighbours of the candidates ``lo:hi`` (``prune_block`` outputs)."""
    users, row = np.unique(part["group"], return_inverse=True)
    ones = np.ones(len(row), np.float32)
    matrix = sp.csr_matrix((ones, (row, part["item"])), shape=(len(users), n_items))
    matrix.sum_duplicates()
    matrix.data[:] = 1.0
    first = np.unique(row, return_index=True)[1]
    weights = part["w"][first].astype(np.float32)
    left = (sp.diags(weights) @ matrix).T.tocsr()  # as ItemCF.similarity, on these rows

    def scale(block: np.ndarray, cols: np.ndarray) -> np.ndarray:
        return block.astype(np.float64) / (norms[:, None] * norms[None, cols] + shrink + 1e-6)

    return _pruned_range(left, matrix.tocsc(), lo, hi, n_items, neighbors, scale)


def check_itemcf(channel) -> None:
    if channel.shrink < 0:
        raise ConfigError(f"itemcf shrink must be >= 0, got {channel.shrink}")


# --- Swing ------------------------------------------------------------------------------


def check_swing(channel) -> None:
    if channel.alpha <= 0:
        raise ConfigError(f"swing alpha must be > 0, got {channel.alpha}")
    if channel.max_users_per_item < 2:
        raise ConfigError(f"swing max_users_per_item must be >= 2, got "
                          f"{channel.max_users_per_item}")


def swing_map_log(item: np.ndarray, user: np.ndarray, time: np.ndarray, position: np.ndarray,
                  n_partitions: int) -> list[Columns]:
    """Stage 1 map: a slice of the log keyed by item (``position`` = the row in the whole
    log, which breaks ties in time: later rows are more recent)."""
    columns = {"item": item.astype(np.int64), "user": user.astype(np.int64),
               "time": time.astype(np.float64), "pos": position.astype(np.int64)}
    return _split(columns, partition_by(columns["item"] % n_partitions, n_partitions))


def swing_recent_users(part: Columns, cap: int, n_users: int) -> Columns:
    """Stage 1 reduce: each item's ``cap`` most recent distinct users (as
    ``swing.recent_users_per_item``): ``item``, ``user`` columns, most recent first."""
    item, user = part["item"], part["user"]
    order = np.lexsort((-part["pos"], -part["time"], item))
    item, user = item[order], user[order]
    key = item * n_users + user
    _, first = np.unique(key, return_index=True)
    keep = np.zeros(len(key), bool)
    keep[first] = True
    item, user = item[keep], user[keep]
    change = np.ones(len(item), bool)
    change[1:] = item[1:] != item[:-1]
    starts = np.flatnonzero(change)
    rank = np.arange(len(item)) - np.repeat(starts, np.diff(np.append(starts, len(item))))
    capped = rank < cap
    return {"item": item[capped], "user": user[capped]}


def swing_map_pairs(recent: Columns, n_users: int, n_partitions: int) -> list[Columns]:
    """Stage 2 map: every user pair of each item, keyed by the pair."""
    item, user = recent["item"], recent["user"]
    change = np.ones(len(item), bool)
    change[1:] = item[1:] != item[:-1]
    indptr = np.append(np.flatnonzero(change), len(item)).astype(np.int64)
    a, b = group_pairs(indptr)
    key = np.minimum(user[a], user[b]) * n_users + np.maximum(user[a], user[b])
    columns = {"key": key, "item": item[a]}
    return _split(columns, partition_by(key % n_partitions, n_partitions))


def swing_pair_weights(part: Columns, user_weight: np.ndarray, alpha: float,
                       n_users: int) -> Columns:
    """Stage 2 reduce: the linked pairs (>= 2 items in common), each item it shares with
    the pair's key and float32 weight ``w_u w_v / (alpha + overlap)``, sorted by key."""
    order = np.argsort(part["key"], kind="stable")
    keys, inverse, overlap = np.unique(part["key"], return_inverse=True, return_counts=True)
    linked = (overlap >= 2)[inverse][order]
    key, item = part["key"][order][linked], part["item"][order][linked]
    pair_overlap = overlap[inverse][order][linked]
    pu, pv = key // n_users, key % n_users
    weight = user_weight[pu] * user_weight[pv] / (alpha + pair_overlap)
    return {"key": key, "item": item, "k": weight.astype(np.float32)}


def swing_map_rows(pairs: Columns, bounds: np.ndarray) -> list[Columns]:
    """Stage 3 map: each linked pair's row sent to the reducers whose ranges it touches."""
    return rows_to_ranges(pairs["key"], pairs["item"], {"k": pairs["k"]}, bounds)


def swing_reduce(part: Columns, lo: int, hi: int, n_items: int,
                 neighbors: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Stage 3 reduce: ``Z^T diag(K) Z`` restricted to the candidates ``lo:hi``, its rows
    (pairs) in ascending key order as ``Swing.similarity`` numbers them."""
    keys, row = np.unique(part["group"], return_inverse=True)
    z = sp.csr_matrix((np.ones(len(row), np.float32), (row, part["item"])),
                      shape=(len(keys), n_items))
    first = np.unique(row, return_index=True)[1]
    weight = part["k"][first].astype(np.float32)
    left = (sp.diags(weight) @ z).T.tocsr()
    return _pruned_range(left, z.tocsc(), lo, hi, n_items, neighbors)


def swing_user_weights(matrix: sp.csr_matrix, user_power: float) -> np.ndarray:
    """float64[n_users] ``|I_u| ** -user_power`` as ``Swing.similarity`` has it."""
    history_len = np.maximum(np.asarray(matrix.sum(axis=1), np.float64).ravel(), 1.0)
    return history_len ** -float(user_power)


# --- one process ------------------------------------------------------------------------


def run_local(channel, dataset, matrix: sp.csr_matrix, n_partitions: int = 3,
              user_block: int = 1000) -> sp.csr_matrix:
    """The map-shuffle-reduce of ``channel`` (ItemCF or Swing) in this process: the same
    steps as the distributed engine, for tests and as its reference."""
    shuffle: Callable = _shuffle_local
    if channel.kind == "itemcf":
        return itemcf_similarity(channel, dataset, matrix, shuffle, n_partitions, user_block)
    return swing_similarity(channel, dataset, matrix, shuffle, n_partitions, user_block)


def _shuffle_local(map_fn, inputs, reduce_fn, n_partitions, keep: bool = False):
    # keep: the reduce outputs stay where they were computed (one process: here)
    pieces = [map_fn(x) for x in inputs]
    return [reduce_fn(p, concat([piece[p] for piece in pieces])) for p in range(n_partitions)]


def itemcf_similarity(channel, dataset, matrix: sp.csr_matrix, shuffle: Callable,
                      n_partitions: int, user_block: int) -> sp.csr_matrix:
    """ItemCF's pruned similarity through ``shuffle(map_fn, inputs, reduce_fn, P)``."""
    check_itemcf(channel)
    n_items, n_users = dataset.n_items, dataset.n_users
    bounds = column_ranges(n_items, n_partitions)
    weights = itemcf_weights(matrix, channel.iuf)
    norms = np.sqrt(np.asarray(matrix.sum(axis=0), np.float64).ravel())
    starts = list(range(0, matrix.shape[0], user_block))
    inputs = [(s, matrix[s:s + user_block]) for s in starts]
    shrink, neighbors = float(channel.shrink), int(channel.neighbors)
    results = shuffle(
        lambda x: itemcf_map(x[1], x[0], weights, bounds), inputs,
        lambda p, part: itemcf_reduce(part, int(bounds[p]), int(bounds[p + 1]), n_users,
                                      n_items, norms, shrink, neighbors),
        n_partitions)
    return assemble_pruned(n_items, [blk for r in results for blk in r])


def swing_similarity(channel, dataset, matrix: sp.csr_matrix, shuffle: Callable,
                     n_partitions: int, user_block: int) -> sp.csr_matrix:
    """Swing's pruned similarity through three shuffles (see the module docstring)."""
    check_swing(channel)
    n_items, n_users = dataset.n_items, dataset.n_users
    log = dataset.interactions
    chunk = max(1, user_block * 100)
    inputs = [(log.item[s:s + chunk], log.user[s:s + chunk], log.time[s:s + chunk],
               np.arange(s, min(s + chunk, len(log)), dtype=np.int64))
              for s in range(0, len(log), chunk)]
    cap = int(channel.max_users_per_item)
    # the first two stages' outputs stay on the workers (keep): only the pruned columns of
    # the last come back
    recent = shuffle(
        lambda x: swing_map_log(x[0], x[1], x[2], x[3], n_partitions),
        inputs, lambda p, part: swing_recent_users(part, cap, n_users), n_partitions,
        keep=True)
    user_weight = swing_user_weights(matrix, channel.user_power)
    alpha = float(channel.alpha)
    pairs = shuffle(
        lambda r: swing_map_pairs(r, n_users, n_partitions), recent,
        lambda p, part: swing_pair_weights(part, user_weight, alpha, n_users), n_partitions,
        keep=True)
    bounds = column_ranges(n_items, n_partitions)
    neighbors = int(channel.neighbors)
    results = shuffle(
        lambda x: swing_map_rows(x, bounds), pairs,
        lambda p, part: swing_reduce(part, int(bounds[p]), int(bounds[p + 1]), n_items,
                                     neighbors), n_partitions)
    return assemble_pruned(n_items, [blk for r in results for blk in r])
