"""The recall pipeline: configured channels, fitted together, recalled and fused as one.

This is the library object the CLI, the evaluator, the tuner and the service all use.
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass, field

import numpy as np

from llmrecall.channels.base import Candidates, Channel
from llmrecall.channels.registry import channel_class
from llmrecall.config import ChannelConfig, PipelineConfig
from llmrecall.data.dataset import Dataset, Histories
from llmrecall.engine import current_engine
from llmrecall.errors import ConfigError
from llmrecall.fusion import ChannelWeight, FusedCandidates, LearnedFusion, fuse
from llmrecall.progress import task as progress_task
from llmrecall.topk import fit_mask


def build_channel(config: ChannelConfig, seed: int = 0) -> Channel:
    """An unfitted channel from its config (``seed`` fills a ``seed`` parameter if unset)."""
    cls = channel_class(config.kind)
    params = dict(config.params)
    if "seed" in inspect.signature(cls.__init__).parameters and "seed" not in params:
        params["seed"] = seed
    return cls(name=config.channel_name, **params)


def allowed_mask(dataset: Dataset, config: PipelineConfig) -> np.ndarray | None:
    """bool[n_items] from the config's filters, or None when nothing is filtered."""
    f = config.filters
    if not (f.include_categories or f.exclude_categories or f.allow_items or f.deny_items):
        return None
    mask = np.ones(dataset.n_items, bool)
    cats = dataset.catalog.categories
    if f.include_categories:
        want = set(f.include_categories)
        mask &= np.fromiter((bool(want.intersection(c)) for c in cats), bool, len(cats))
    if f.exclude_categories:
        avoid = set(f.exclude_categories)
        mask &= np.fromiter((not avoid.intersection(c) for c in cats), bool, len(cats))
    if f.allow_items:
        allow = np.zeros(dataset.n_items, bool)
        idx = dataset.items.lookup(f.allow_items)
        allow[idx[idx >= 0]] = True
        mask &= allow
    if f.deny_items:
        idx = dataset.items.lookup(f.deny_items)
        mask[idx[idx >= 0]] = False
    return mask


@dataclass
class RecallResult:
    """Fused candidates plus each channel's own list and timing for one batch."""

    fused: FusedCandidates
    per_channel: dict[str, Candidates]
    seconds: dict[str, float] = field(default_factory=dict)


class RecallPipeline:
    """Channels + fusion, configured by one :class:`PipelineConfig`."""

    def __init__(self, config: PipelineConfig):
        self.config = config
        self.channels: dict[str, Channel] = {
            c.channel_name: build_channel(c, config.seed) for c in config.enabled_channels}
        self.fit_seconds: dict[str, float] = {}
        self.dataset_: Dataset | None = None
        self.allowed_: np.ndarray | None = None
        #: the fitted fusion of ``[fusion] method = "learned"`` (set by
        #: :func:`llmrecall.evaluate.experiment.fit_fusion` or :meth:`LearnedFusion.load`)
        self.fusion_model_: LearnedFusion | None = None
        #: seconds spent fitting ``fusion_model_`` (its validation fit included), if here
        self.fusion_seconds_ = 0.0

    @property
    def weights(self) -> dict[str, ChannelWeight]:
        return {c.channel_name: ChannelWeight(c.weight, c.quota, c.min_slots)
                for c in self.config.enabled_channels}

    def channel_k(self, name: str) -> int:
        cfg = next(c for c in self.config.enabled_channels if c.channel_name == name)
        return cfg.k or self.config.fusion.channel_k

    def fit(self, dataset: Dataset, progress=None, models=None) -> RecallPipeline:
        """Fit every channel on ``dataset`` (its interactions are the training data).

        ``models`` (a :class:`llmrecall.tune.store.FittedChannels` on this very ``dataset``)
        supplies channels already fitted with the same kind, parameters and seed instead of
        refitting them; their fit time here is the lookup's.
        """
        if models is not None and models.train is not dataset:
            raise ConfigError("the shared fitted channels were fitted on another dataset")
        configs = {c.channel_name: c for c in self.config.enabled_channels}
        for name, channel in self.channels.items():
            start = time.perf_counter()
            # a channel that counts its own steps continues this stage (same description)
            with progress_task(f"fit {name}"):
                if models is None:
                    current_engine().fit_channel(channel, dataset)
                else:
                    self.channels[name] = models.get(configs[name], self.config.seed)
            self.fit_seconds[name] = time.perf_counter() - start
            if progress is not None:
                progress(name, self.fit_seconds[name])
        self.dataset_ = dataset
        self.allowed_ = allowed_mask(dataset, self.config)
        return self

    def recall_channels(self, users: np.ndarray, history: Histories, *,
                        allowed: np.ndarray | None = None, explain: bool = False,
                        only: list[str] | None = None) -> tuple[dict[str, Candidates], dict[str, float]]:
        """Each channel's candidates for ``users`` (int32[n]) and its wall time in seconds."""
        mask = _and_masks(self.allowed_, allowed)
        lists, seconds = {}, {}
        for name, channel in self.channels.items():
            if only is not None and name not in only:
                continue
            start = time.perf_counter()
            lists[name] = channel.recall(users, self.channel_k(name), history,
                                         allowed=mask, explain=explain)
            seconds[name] = time.perf_counter() - start
        return lists, seconds

    def fuse(self, lists: dict[str, Candidates], k: int | None = None,
             allowed: np.ndarray | None = None, *,
             history_lengths: np.ndarray | None = None) -> FusedCandidates:
        """The fused top-``k`` of ``lists`` by the configured method. ``history_lengths``
        (int[n], each user's history length) is needed by ``method = "learned"`` only."""
        k = k or self.config.fusion.k
        allowed = _and_masks(self.allowed_, allowed)
        if self.config.fusion.method == "learned":
            if self.fusion_model_ is None:
                raise ConfigError('[fusion] method = "learned" needs a fitted fusion: fit it on '
                                  "a validation split (llmrecall.evaluate.experiment.fit_fusion)")
            if history_lengths is None:
                raise ValueError('[fusion] method = "learned" needs each user\'s history length')
            return self.fusion_model_.fuse(lists, k, history_lengths=history_lengths,
                                           weights=self.weights, allowed=allowed)
        return fuse(lists, k, weights=self.weights, rrf_k=self.config.fusion.rrf_k,
                    allowed=allowed)

    def recall(self, users: np.ndarray, history: Histories, k: int | None = None, *,
               allowed: np.ndarray | None = None, explain: bool = False,
               only: list[str] | None = None) -> RecallResult:
        """Fused top-``k`` candidates for ``users`` from ``history``."""
        lists, seconds = self.recall_channels(users, history, allowed=allowed,
                                              explain=explain, only=only)
        start = time.perf_counter()
        fused = self.fuse(lists, k, allowed,
                          history_lengths=history.lengths()[np.asarray(users, np.int64)])
        seconds["fusion"] = time.perf_counter() - start
        return RecallResult(fused, lists, seconds)


def _and_masks(a: np.ndarray | None, b: np.ndarray | None) -> np.ndarray | None:
    if a is None:
        return b
    if b is None:
        return a
    n = max(len(a), len(b))
    return fit_mask(a, n) & fit_mask(b, n)
