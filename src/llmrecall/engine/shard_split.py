"""One history shard under ``loo``: what every task of the sharded log reads first.

Kept apart from :mod:`llmrecall.engine.sharded` so the modules that fit one kind of
channel from the shards (:mod:`~llmrecall.engine.sharded_ease`,
:mod:`~llmrecall.engine.sharded_sasrec`, :mod:`~llmrecall.engine.sharded_fusion`,
:mod:`~llmrecall.engine.sharded_text`) read a shard, or the catalog, without importing the
evaluation that imports them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from llmrecall.data.dataset import Dataset, Histories, Interactions
from llmrecall.data.vocab import Vocabulary
from llmrecall.errors import DataError


@dataclass(frozen=True)
class ShardSplit:
    """One history shard under ``loo``, its users numbered ``0..n_users-1`` in shard order.

    ``train``, ``valid``, ``test``: the three parts of its log (dense item ids of the
    whole catalog); ``valid`` and ``test`` hold one target per evaluated user.
    ``train_places``: int64 each training row's place in the log (``file * 2**32 + row``,
    what breaks ties in time).
    """

    n_users: int
    train: Interactions
    valid: Interactions
    test: Interactions
    train_places: np.ndarray


def read_shard(path: str, items: list[str], split: bool = True) -> ShardSplit:
    """Read a history shard and split it by ``loo`` (``items``: the item vocabulary);
    ``split=False`` keeps every row in ``train`` (what ``build`` fits on)."""
    frame = pl.read_parquet(path, columns=["items", "times", "places"])
    lengths = frame["items"].list.len().to_numpy().astype(np.int64)
    codes = frame["items"].explode().drop_nulls()
    try:
        item = codes.replace_strict(items, np.arange(len(items), dtype=np.int32),
                                    return_dtype=pl.Int32).to_numpy()
    except pl.exceptions.InvalidOperationError as exc:
        raise DataError(f"{path}: an item id missing from the vocabulary ({exc})") from None
    times = frame["times"].explode().drop_nulls().to_numpy().astype(np.float64)
    user = np.repeat(np.arange(len(lengths), dtype=np.int32), lengths)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    # rows are each user's history in time order: position 0 from the end is the last
    from_end = lengths[user] - 1 - (np.arange(len(user)) - starts[user])
    evaluated = (lengths[user] >= 3) & split
    role = np.where(evaluated & (from_end == 0), 2, np.where(evaluated & (from_end == 1), 1, 0))
    places = frame["places"].explode().drop_nulls().to_numpy().astype(np.int64)
    log = Interactions.build(user, item, times)
    return ShardSplit(len(lengths), log.take(role == 0), log.take(role == 1), log.take(role == 2),
                      places[role == 0])


def shard_task(path: str, items: list[str], on: str):
    """One shard's ``loo`` evaluation task for ``on`` ("test": recall from train +
    validation; "valid": from train), as :func:`~llmrecall.evaluate.protocols.make_split`
    builds it for the whole log."""
    from llmrecall.evaluate.protocols import task_for

    split = read_shard(path, items)
    n_items = len(items)
    if on == "test":
        fresh = Histories.from_interactions(split.train.concat(split.valid), split.n_users,
                                            n_items)
        return task_for(split.test, fresh, fresh)
    train = Histories.from_interactions(split.train, split.n_users, n_items)
    return task_for(split.valid, train, train)


def catalog_only(items: list[str], catalog) -> Dataset:
    """A :class:`~llmrecall.data.dataset.Dataset` of the vocabulary and catalog with no
    user and no event: what a channel fitted from the shards reads of the items (SASRec's
    initial network and item count, the text channels' item texts)."""
    empty = Interactions.build(np.zeros(0, np.int32), np.zeros(0, np.int32))
    return Dataset("sharded", Vocabulary(), Vocabulary(items), empty, catalog)
