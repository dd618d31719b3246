"""ALS and BPR from the sharded log: the training matrix assembled and factorised by one
reducer.

``implicit``'s ALS alternates over the whole user x item matrix, so it needs that matrix
in one process (docs/scale-out.md, "What stays single-node"); what the shards take off the
driver is the log. The fit is one streamed shuffle with one reducer:

* **map** (one task per history shard): the shard's distinct training (user, item) pairs,
  each of its users' first place in the log (the smallest ``file * 2**32 + row`` over
  all their rows) and the shard's index;
* **reduce** (one task): the pieces gathered one at a time, the users numbered by their
  first place (the loader's numbering: users in order of first appearance, so the matrix
  is the driver path's row for row), the binary float32 CSR built and factorised by the
  channel's own :meth:`~llmrecall.channels.factors.FactorChannel.fit_matrix`; the reducer
  writes the item factors to the run folder and the driver reads them, so a rerun
  factorises nothing.

ALS recomputes every user's vector from the history it is given at recall
(``recalculate_user``), so the recall tasks need only the item factors: the user factors
stay on the reducer, and the fitted channel's ``user_factors_`` (kept "for inspection
only") has no rows. Same model as the in-process fit: the same matrix, seed and
iterations (implicit's multi-threaded solver may add in another order: float rounding).

BPR keeps each fitted user's own vector at recall (it has no cheap fold-in), so its reducer
also writes the user factors back per shard, each shard's users in that shard's numbering
(:class:`~llmrecall.engine.shard_users.ShardUserRows`); every per-shard task (recall,
the fusion sample, a tuning trial's lists) reads its shard's part alone
(:func:`~llmrecall.engine.shard_users.for_shard`), and ``build`` writes them into the
artifact in its user order (shard after shard). BPR trains on one thread with its seed, so
the factors are the in-process fit's exactly.

Memory: a map holds its shard; the reducer holds every distinct training pair (about 30
bytes each while the COO lists become the CSR, then 12 in the CSR and as much again in
implicit's transposed copy), the first places (8 bytes a user) and implicit's factors
(``4 f (users + items)`` bytes). Measured at 8M events (at most 4.6M distinct pairs): no
worker process, this reducer or a recall task, above 2.4 GB (docs/benchmarks.md section
10). The driver and the recall tasks hold the item factors.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import scipy.sparse as sp

from llmrecall.channels.neighbors import binary_matrix, scaled_popularity
from llmrecall.engine.shard_split import read_shard
from llmrecall.engine.stage_files import StageParts, channel_params, digest

#: channel kinds fitted here
FACTOR_KINDS = ("als", "bpr")

Columns = dict[str, np.ndarray]


def pairs_shard_map(path: str, items: list[str], shard: int,
                    split: bool = True) -> list[Columns]:
    """One shard's training matrix as one piece: ``user`` int32 (the shard's numbering),
    ``item`` int32, each distinct pair once, user-major; ``first`` int64[users]: each
    user's smallest place in the log; ``shard`` int64[1]: the shard's index ``shard``
    (its place in the shards' list, which the reducer's rows are kept by)."""
    return [pairs_piece(read_shard(path, items, split), path, len(items), shard)]


def pairs_piece(data, path: str, n_items: int, shard: int) -> Columns:
    """:func:`pairs_shard_map`'s piece of the shard at ``path`` already read as ``data``
    (a :class:`~llmrecall.engine.shard_split.ShardSplit`)."""
    matrix = binary_matrix(data.train, data.n_users, n_items).tocoo()
    return {"user": matrix.row.astype(np.int32), "item": matrix.col.astype(np.int32),
            "first": first_places(path), "shard": np.array([shard], np.int64)}


def first_places(path: str) -> np.ndarray:
    """int64[users] each user of the shard at ``path`` (the shard's numbering): the
    smallest place in the log of any of the user's rows."""
    places = pl.read_parquet(path, columns=["places"])["places"].list.min()
    return places.to_numpy().astype(np.int64)


def numbers_by_first_place(firsts: list[np.ndarray]) -> np.ndarray:
    """int64[sum of lengths]: the loader's number of every user of the shards, the
    shards' users one after another (``firsts`` each shard's :func:`first_places`):
    users numbered in order of their first place in the log (first appearance)."""
    first = np.concatenate(firsts) if firsts else np.zeros(0, np.int64)
    number = np.empty(len(first), np.int64)
    number[np.argsort(first, kind="stable")] = np.arange(len(first))
    return number


def gathered_matrix(pieces: Iterator[Columns], n_items: int) -> sp.csr_matrix:
    """Binary float32 CSR [users, n_items] of every shard's pairs, users numbered by their
    first place in the log (the loader's first-appearance order)."""
    return gathered_rows(pieces, n_items)[0]


def gathered_rows(pieces: Iterator[Columns], n_items: int,
                  ) -> tuple[sp.csr_matrix, dict[int, np.ndarray]]:
    """:func:`gathered_matrix`, and for each shard (by the index its piece names)
    int64[its users]: the matrix row of each of its users (in the shard's numbering)."""
    users, items, firsts = [], [], []
    shards: list[tuple[int, int, int]] = []  # (shard, its first row here, its users)
    offset = 0
    for piece in pieces:
        users.append(piece["user"].astype(np.int64) + offset)
        items.append(piece["item"])
        firsts.append(piece["first"])
        shard = int(piece["shard"][0])
        if any(shard == seen for seen, _start, _n in shards):
            raise ValueError(f"two pieces name shard {shard}: each map must name its own")
        shards.append((shard, offset, len(piece["first"])))
        offset += len(piece["first"])
    number = numbers_by_first_place(firsts)
    rows = number[np.concatenate(users)] if users else np.zeros(0, np.int64)
    cols = np.concatenate(items) if items else np.zeros(0, np.int32)
    matrix = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)),
                           shape=(len(number), n_items))
    return matrix, {s: number[start:start + n] for s, start, n in shards}


def fit_factors(channel, paths: list[str], items: list[str], item_users: np.ndarray, engine,
                run: Path, resumed: dict[str, Any], name: str, split: bool = True) -> None:
    """Fit ``channel`` (an unfitted :class:`~llmrecall.channels.als.ALS` or
    :class:`~llmrecall.channels.bpr.BPR`) from the shards ``paths`` (module docstring);
    ``item_users`` float64[n_items]: each item's training users summed over the shards
    (the fallback ranking). The item factors (and BPR's user factors, per shard) are kept
    under ``run``; ``resumed[f"{name}_factors"]`` says whether they were found there."""
    from llmrecall.engine.shard_users import ShardUserRows

    channel.check_params()
    n_items = len(items)
    key = digest(channel_params(channel), split)
    kept = StageParts(run, channel.kind, key)
    per_user = channel.keeps_user_vectors  # BPR: each fitted user's own vector at recall
    user_parts = StageParts(run, f"{channel.kind}-users", key)
    resumed[f"{name}_factors"] = kept.has(0)
    if not kept.has(0):
        def reduce(_p: int, pieces: Iterator[Columns]) -> None:
            matrix, shard_rows = gathered_rows(pieces, n_items)
            users, factors = channel.fit_matrix(matrix)
            if per_user:  # written before the item factors, whose part says "all done"
                for shard, rows in shard_rows.items():
                    user_parts.save(shard, {"user_factors_": np.ascontiguousarray(
                        users[rows], np.float32)}, {})
            kept.save(0, {"item_factors": np.ascontiguousarray(factors, np.float32)},
                      {"users": matrix.shape[0], "pairs": int(matrix.nnz)})

        engine.shuffle_streamed(
            lambda path: pairs_shard_map(path, items, paths.index(path), split), paths,
            reduce, 1)
    factors = kept.load(0)[0]["item_factors"]
    channel.install(np.zeros((0, factors.shape[1]), np.float32), factors,
                    scaled_popularity(item_users))
    if per_user:
        channel.shard_rows_ = ShardUserRows(user_parts, tuple(paths))
