"""The tuning objective: a pipeline config's validation metric, measured in growing stages.

The objective holds the training dataset and the *validation* task only; it cannot see test
targets because it is never given them. Validation users are shuffled once (seeded) and cut
into chunks; stage ``s`` scores the users of chunks ``0..s``. After each stage the value is
reported to the trial so a pruner can stop a trial that is already behind on a small subset
before its channels recall the rest.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import optuna

from llmrecall.config import PipelineConfig
from llmrecall.data.dataset import Dataset
from llmrecall.errors import ConfigError
from llmrecall.evaluate.metrics import ranking_metrics
from llmrecall.evaluate.protocols import EvalTask
from llmrecall.fusion import ChannelWeight
from llmrecall.pipeline import allowed_mask
from llmrecall.tune.fastfuse import fused_ids
from llmrecall.tune.space import Space, suggest
from llmrecall.tune.store import ChannelStore, FittedChannels

METRIC_NAMES = ("recall", "hr", "ndcg", "mrr", "coverage")
#: share of validation users scored at each pruning stage
DEFAULT_STAGES = (0.25, 0.5, 1.0)


def parse_metric(metric: str) -> tuple[str, int]:
    """``"recall@200"`` -> ("recall", 200); ConfigError naming the problem otherwise."""
    name, sep, k = metric.strip().lower().partition("@")
    if not sep or name not in METRIC_NAMES or not k.isdigit() or not 1 <= int(k) <= 5000:
        raise ConfigError(f"metric {metric!r} must look like NAME@K with NAME one of "
                          f"{', '.join(METRIC_NAMES)} and 1 <= K <= 5000")
    return name, int(k)


def _stage_bounds(n_users: int, stages: Sequence[float]) -> list[int]:
    if not stages or list(stages) != sorted(stages) or stages[-1] != 1.0 or stages[0] <= 0:
        raise ConfigError(f"stages must be increasing fractions ending at 1.0, got {stages}")
    bounds = sorted({max(1, int(round(f * n_users))) for f in stages})
    return [0, *bounds]


class TrialObjective(ABC):
    """An Optuna objective over pipeline configs: a subclass provides ``evaluate(config,
    report)`` (the metric, reporting it after each stage), ``base``, ``space`` and
    ``store.stats.fits``; a trial suggests a config, prunes on the stage reports and records
    its channel fits and seconds."""

    base: PipelineConfig
    space: Space
    store: Any  # a channel list cache with .stats (a StoreStats)

    @abstractmethod
    def evaluate(self, config: PipelineConfig,
                 report: Callable[[float, int], None] | None = None) -> float:
        """The metric of ``config``; ``report(value, stage)`` after each stage (it may raise
        ``optuna.TrialPruned``)."""

    def __call__(self, trial: optuna.trial.Trial) -> float:
        start = time.perf_counter()
        fits_before = self.store.stats.fits
        config = suggest(trial, self.base, self.space)

        def report(value: float, stage: int) -> None:
            trial.report(value, stage)
            trial.set_user_attr("stage", stage)
            if trial.should_prune():
                trial.set_user_attr("fits", self.store.stats.fits - fits_before)
                trial.set_user_attr("seconds", time.perf_counter() - start)
                raise optuna.TrialPruned(f"pruned at stage {stage} with {value:.4f}")

        value = self.evaluate(config, report)
        trial.set_user_attr("fits", self.store.stats.fits - fits_before)
        trial.set_user_attr("seconds", time.perf_counter() - start)
        return value


class ValidationObjective(TrialObjective):
    """Scores pipeline configs on a validation task; callable as an Optuna objective.

    Args:
        train: the dataset channels are fitted on (the split's train part).
        valid: the validation task (users, targets, input history, candidate mask).
        base: the config being tuned; trials substitute values into it.
        metric: "NAME@K", e.g. "recall@200"; the fused list is K long.
        space: "all" (fusion and channel parameters) or "fusion".
        stages: increasing fractions of validation users, ending at 1.0.
        max_users: evaluate at most this many validation users (a seeded sample).
        seed: seeds the user shuffle and sample.
        store: the channel list cache to use (a new one if None).
        models: fitted channels shared with later evaluations on the same ``train`` (e.g.
            the test comparison); used by a new store.
    """

    def __init__(self, train: Dataset, valid: EvalTask, base: PipelineConfig, metric: str, *,
                 space: Space = "all", stages: Sequence[float] = DEFAULT_STAGES,
                 max_users: int | None = None, seed: int = 0, store: ChannelStore | None = None,
                 models: FittedChannels | None = None):
        self.metric_name, self.k = parse_metric(metric)
        self.metric = f"{self.metric_name}@{self.k}"
        self.base, self.space, self.train = base, space, train
        n = len(valid.users)
        if n == 0:
            raise ConfigError("the validation task has no users: nothing to tune on")
        order = np.random.default_rng(seed).permutation(n)
        if max_users is not None:
            order = order[:max_users]
        self.bounds = _stage_bounds(len(order), stages)
        # each chunk keeps the task's ascending user order; chunks follow one another
        parts = [np.sort(order[a:b]) for a, b in zip(self.bounds[:-1], self.bounds[1:])]
        rows = np.concatenate(parts)
        self.users = valid.users[rows].astype(np.int32)
        self.targets = valid.targets[rows]
        self.n_items = valid.n_items
        allowed = allowed_mask(train, base)
        if valid.candidate_mask is not None:
            allowed = valid.candidate_mask if allowed is None else allowed & valid.candidate_mask
        self.allowed = allowed
        chunks = [valid.take(p, allowed) for p in parts]
        self.store = store or ChannelStore(train, chunks, models=models)

    @property
    def n_users(self) -> int:
        return len(self.users)

    def evaluate(self, config: PipelineConfig,
                 report: Callable[[float, int], None] | None = None) -> float:
        """The metric of ``config`` on all (sampled) validation users.

        ``report(value, stage)`` is called after each stage with the metric on the users
        scored so far; it may raise (e.g. ``optuna.TrialPruned``) to stop early.
        """
        weights = {c.channel_name: ChannelWeight(c.weight, c.quota, c.min_slots)
                   for c in config.enabled_channels}
        fused_parts = []
        value = 0.0
        for stage in range(len(self.bounds) - 1):
            lists = {c.channel_name: self.store.candidates(
                         c, config.seed, c.k or config.fusion.channel_k, stage)
                     for c in config.enabled_channels}
            fused_parts.append(fused_ids(lists, self.k, self.n_items, weights=weights,
                                         rrf_k=config.fusion.rrf_k, allowed=self.allowed))
            upto = self.bounds[stage + 1]
            value = ranking_metrics(np.concatenate(fused_parts), self.targets[:upto],
                                    [self.k], self.n_items)[self.metric]
            if report is not None:
                report(value, stage)
        return value
