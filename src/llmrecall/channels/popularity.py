"""Popularity: the same ranking for everyone, interaction counts with exponential time decay."""

from __future__ import annotations

import numpy as np

from llmrecall.channels.base import Channel
from llmrecall.channels.history import check_width
from llmrecall.channels.registry import register
from llmrecall.data.dataset import Dataset, Histories
from llmrecall.errors import ConfigError


@register
class Popularity(Channel):
    """``score(j) = sum over interactions with j of 0.5 ** ((t_latest - t) / half_life)``.

    ``t_latest`` is the latest time in the training data; ``half_life`` is in the dataset's
    time units (seconds for MovieLens, sequence positions for amazon-games-6k); None gives
    plain counts. Every user, known or not, with or without history, gets this ranking.
    Items added after fit are never recalled (-inf). Evidence: none.

    Learned state: ``scores_`` float32[n_items].
    """

    in_process = True  # see Channel.in_process

    kind = "popularity"
    evidence_template = ""

    def explain(self, evidence_label: str | None) -> str:
        return "popular with everyone lately"

    def __init__(self, half_life: float | None = None, name: str | None = None):
        super().__init__(name)
        self.half_life = half_life

    def check_params(self) -> None:
        """Raise :class:`ConfigError` when ``half_life`` is not positive or None."""
        if self.half_life is not None and self.half_life <= 0:
            raise ConfigError(f"popularity half_life must be positive or None, got "
                              f"{self.half_life}")

    def fit(self, dataset: Dataset) -> Popularity:
        self.check_params()
        log = dataset.interactions
        weight = np.ones(len(log), np.float64)
        if self.half_life is not None and len(log):
            weight = np.exp2(-(log.time.max() - log.time) / float(self.half_life))
        self.scores_ = np.bincount(log.item, weights=weight,
                                   minlength=dataset.n_items).astype(np.float32)
        return self

    def install(self, scores: np.ndarray) -> Popularity:
        """Take scores float[n_items] computed elsewhere (the sharded evaluation sums
        each shard's decayed counts)."""
        self.scores_ = np.asarray(scores).astype(np.float32)
        return self

    def score(self, users: np.ndarray, history: Histories) -> np.ndarray:
        width = check_width(history, len(self.scores_), self.name)
        row = np.full(width, -np.inf, np.float32)
        row[:len(self.scores_)] = self.scores_
        return np.broadcast_to(row, (len(users), width))
