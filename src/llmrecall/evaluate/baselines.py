"""Reference points for reading metrics: a seeded uniformly random ranking."""

from __future__ import annotations

import numpy as np

from llmrecall.channels.base import Channel
from llmrecall.data.dataset import Dataset, Histories

_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser: a well-mixed uint64 hash of each entry of ``x`` (uint64)."""
    x = x + _GOLDEN
    x = (x ^ (x >> np.uint64(30))) * _MIX1
    x = (x ^ (x >> np.uint64(27))) * _MIX2
    return x ^ (x >> np.uint64(31))


class RandomRanking(Channel):
    """Ranks items in a random order that is fixed per (seed, user).

    The score of (user, item) is a hash of (seed, user, item), so a user's list does not
    depend on the batch it is asked in. Used as the floor a channel must beat (e.g. the
    ``cold-items`` protocol compares every channel with it). Not registered as a channel
    kind: it is an evaluation reference, not a candidate source.
    """

    kind = "random-baseline"

    def __init__(self, seed: int = 0, name: str | None = None):
        super().__init__(name)
        self.seed = seed

    def fit(self, dataset: Dataset) -> "RandomRanking":
        self.n_items_ = np.int64(dataset.n_items)
        return self

    def score(self, users: np.ndarray, history: Histories) -> np.ndarray:
        """float32[len(users), n_items] uniform in [0, 1)."""
        with np.errstate(over="ignore"):  # uint64 arithmetic wraps on purpose
            key = (np.uint64(self.seed) * _GOLDEN
                   + np.asarray(users, np.uint64)[:, None] * np.uint64(0x100000001B3)
                   + np.arange(int(self.n_items_), dtype=np.uint64)[None, :])
            bits = _splitmix64(_splitmix64(key))
        return ((bits >> np.uint64(40)).astype(np.float32) / np.float32(1 << 24))
