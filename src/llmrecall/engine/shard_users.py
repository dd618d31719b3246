"""Per-user state of a channel fitted from the sharded log, kept per history shard.

Most channels fitted from the shards recall from the item side alone and the history they
are given. One that keeps each fitted user's own state (BPR's user factors: it has no cheap
fold-in; ``llm_interest``'s generated texts and their matches) cannot carry every user's
state to every task: that would put the whole user table on the driver and in each task.
Its fit writes the state per shard instead, each shard's users in that shard's numbering
(the numbering its tasks use), and the fitted channel carries a :class:`ShardUserRows`
naming the parts. A per-shard task asks :func:`for_shard` for its view: a shallow copy
with that shard's state in place, read from the shared work folder by the task itself.

A channel with such state has two methods: ``use_shard_users(state)`` installs one
shard's arrays (a dict, as a part holds them), ``join_shard_users(states)`` every shard's,
its users numbered shard after shard.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np

from llmrecall.engine.stage_files import StageParts


@dataclass(frozen=True)
class ShardUserRows:
    """A channel's per-user state for the users of each shard: part ``s`` of ``parts``
    holds shard ``paths[s]``'s users, in that shard's numbering, as the arrays the channel's
    ``use_shard_users`` takes."""

    parts: StageParts
    paths: tuple[str, ...]

    def load(self, path: str) -> dict[str, np.ndarray]:
        """The state of the shard at ``path`` (one of ``paths``)."""
        try:
            shard = self.paths.index(path)
        except ValueError:
            raise ValueError(f"{path} is not one of the {len(self.paths)} shards this "
                             f"channel was fitted from") from None
        return self.parts.load(shard)[0]

    def load_all(self) -> list[dict[str, np.ndarray]]:
        """Every shard's state, shard after shard (the users as the sharded ``build``'s
        artifact numbers them)."""
        return [self.parts.load(s)[0] for s in range(len(self.paths))]


def no_users(width: int) -> dict[str, np.ndarray]:
    """The per-user state of a user-texts channel (``llm_interest``, ``search_query``) with
    no user (``width`` matches per text): what the driver's fitted channel holds, each
    task reading its own shard's."""
    return {"text_indptr_": np.zeros(1, np.int64), "texts_": np.zeros(0, dtype="<U1"),
            "match_ids_": np.zeros((0, width), np.int32)}


def for_shard(target: Any, path: str) -> Any:
    """``target`` (a channel or a :class:`~llmrecall.pipeline.RecallPipeline`) as the task
    of the shard at ``path`` must use it: every channel with per-shard user state
    (``shard_rows_``) a shallow copy holding that shard's state; ``target`` itself when
    none has any (nothing is copied)."""
    channels = getattr(target, "channels", None)
    if isinstance(channels, dict):
        if not any(getattr(c, "shard_rows_", None) is not None for c in channels.values()):
            return target
        view = copy.copy(target)
        view.channels = {name: for_shard(c, path) for name, c in channels.items()}
        return view
    rows = getattr(target, "shard_rows_", None)
    if rows is None:
        return target
    view = copy.copy(target)
    view.use_shard_users(rows.load(path))
    return view


def install_all_users(channels: dict[str, Any]) -> None:
    """Put every shard's state into each channel that has it (shard after shard), and drop
    the reference to the work folder: what an artifact saves (its users numbered shard
    after shard)."""
    for channel in channels.values():
        rows = getattr(channel, "shard_rows_", None)
        if rows is not None:
            channel.join_shard_users(rows.load_all())
            del channel.shard_rows_
