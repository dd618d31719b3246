"""EASE and EDLAE from the sharded log: one Gram matrix per shard, summed and solved by one
reducer.

The closed form inverts the whole ``m x m`` Gram matrix over the modelled items, so it
needs that matrix in one process (docs/scale-out.md, "What stays single-node"); what the
shards take off the driver is the log. The fit is one streamed shuffle with one reducer:

* **map** (one task per history shard): the shard's training rows as a binary matrix over
  the modelled items, each user's row weighted by the channel's unnormalised user weight
  (EDLAE's ``user_power``; 1 for EASE), and their Gram matrix ``(W X)^T (W X)`` in float64
  as one sparse piece (each (row, col) once), with the two sums the weights' normalisation
  needs (:func:`llmrecall.channels.edlae.weight_scale`);
* **reduce** (one task): the pieces added into one dense float64 ``m x m`` matrix **one at
  a time** (:meth:`~llmrecall.engine.local.Engine.shuffle_streamed`), scaled, and solved by
  the channel's own :meth:`~llmrecall.channels.ease.EASE.solve`; the reducer writes the
  weights to the run folder (:class:`~llmrecall.engine.stage_files.StageParts`) and the
  driver reads them, so a rerun with the same log and parameters solves nothing.

The modelled items (the ``max_items`` most popular) are chosen on the driver from the
summed per-item training users, as the in-process fit chooses them. Same answers as the
in-process fit to float rounding: the unweighted Gram matrix holds integer counts (exact
in both); a weighted one is summed in another order.

Memory: a map holds its shard and its Gram piece (at most ``m^2`` entries, 16 bytes each
in COO); the reducer holds the dense Gram matrix, the inverse and the weights, about
``20 m^2`` bytes (2 GB at the default ``max_items`` of 10,000); the driver and every recall
task hold the float32 weights (``4 m^2`` bytes, 400 MB at 10,000 items).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from llmrecall.channels.edlae import weight_scale
from llmrecall.channels.neighbors import binary_matrix, scaled_popularity
from llmrecall.engine.shard_split import read_shard
from llmrecall.engine.stage_files import StageParts, channel_params, digest

#: channel kinds fitted here
LINEAR_KINDS = ("ease", "edlae")

Columns = dict[str, np.ndarray]


def gram_shard_map(path: str, items: list[str], channel, modelled: np.ndarray,
                   split: bool = True) -> list[Columns]:
    """One shard's weighted Gram matrix over ``modelled`` (int64[m]) as one piece: ``row``,
    ``col`` (positions in ``modelled``), ``value`` float64, each (row, col) once; and
    ``interactions`` / ``weighted``, float64[1]: ``sum n_u`` and ``sum raw_u^2 n_u`` over the
    shard's users (``n_u`` a user's modelled training items)."""

    shard = read_shard(path, items, split)
    matrix = binary_matrix(shard.train, shard.n_users, len(items), np.float64)[:, modelled]
    lengths = np.asarray(matrix.getnnz(axis=1), np.float64)
    raw = channel.raw_user_weights(lengths)
    weighted = matrix if raw is None else sp.diags(raw) @ matrix
    gram = (weighted.T @ weighted).tocoo()
    weighted_sum = lengths.sum() if raw is None else float((raw ** 2 * lengths).sum())
    return [{"row": gram.row.astype(np.int32), "col": gram.col.astype(np.int32),
             "value": gram.data, "interactions": np.array([lengths.sum()]),
             "weighted": np.array([weighted_sum])}]


def gram_reduce(pieces: Iterator[Columns], m: int, channel) -> np.ndarray:
    """float32[m, m] the channel's weights (:meth:`EASE.solve`) from the shards' Gram
    pieces, added into one dense float64 matrix as they come."""
    gram = np.zeros((m, m), np.float64)
    interactions = weighted = 0.0
    for piece in pieces:
        gram[piece["row"], piece["col"]] += piece["value"]  # (row, col) unique in a piece
        interactions += float(piece["interactions"][0])
        weighted += float(piece["weighted"][0])
    # EASE: weighted == interactions, a scale of exactly 1
    gram *= weight_scale(interactions, weighted)
    return channel.solve(gram)


def fit_linear(channel, paths: list[str], items: list[str], item_users: np.ndarray, engine,
               run: Path, resumed: dict[str, Any], name: str, split: bool = True) -> None:
    """Fit ``channel`` (an unfitted :class:`~llmrecall.channels.ease.EASE` or EDLAE) from
    the shards ``paths`` (module docstring); ``item_users`` float64[n_items]: each item's
    training users summed over the shards. The weights are kept under ``run``;
    ``resumed[f"{name}_weights"]`` says whether they were found there."""
    channel.check_params()
    popularity = scaled_popularity(item_users)
    modelled = channel.modelled_items(popularity)
    kept = StageParts(run, channel.kind, digest(channel_params(channel),
                                                split))
    resumed[f"{name}_weights"] = kept.has(0)
    if not kept.has(0):
        def reduce(_p: int, pieces: Iterator[Columns]) -> None:
            kept.save(0, {"weights": gram_reduce(pieces, len(modelled), channel)}, {})

        engine.shuffle_streamed(
            lambda path: gram_shard_map(path, items, channel, modelled, split), paths, reduce, 1)
    weights = kept.load(0)[0]["weights"]
    channel.install(modelled, np.ascontiguousarray(weights), popularity)
