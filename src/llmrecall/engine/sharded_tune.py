"""``tune`` from a sharded log: the tuning objective scored shard by shard.

With ``[engine] log = "sharded"``, ``llmrecall tune --data SPEC.toml`` runs the study of
:mod:`llmrecall.tune.study` (the same trials, pruning, baseline and noise floor) with
:class:`ShardedObjective` in place of the one-process
:class:`~llmrecall.tune.objective.ValidationObjective`; nothing loads the log:

* **Channel lists, once per channel setting.** The first trial that asks for a channel
  with given parameters (and list length) fits it from the history shards
  (:func:`~llmrecall.engine.sharded.fit_from_shards`, on the ``loo`` training part) and
  recalls every shard's validation users with it, one task per shard; each shard's lists
  (``users x k`` ids) are written to ``work_dir`` by the task that computed them
  (:class:`~llmrecall.engine.stage_files.StageParts`, named by the channel's
  :func:`~llmrecall.tune.store.channel_key`). Later trials, and a later study on the same
  log, read them: a fusion-only trial fits and recalls nothing.
* **A trial.** One task per shard reads the trial's channels' lists of that shard (the
  users' targets are kept with them: a trial reads no shard of the log), fuses
  them with the trial's weights (:func:`~llmrecall.tune.fastfuse.fused_ids`, the
  one-process tuner's fusion) and returns the metric's sum over the shard's users; the
  driver adds the sums. The shards are taken in stages (a quarter, a half, all, by
  default), after each of which the trial may be pruned, as the one-process tuner prunes
  after each chunk of users.

The driver holds the item vocabulary and one number per shard: no list, target or history.
The metric must be a mean over users (``recall``, ``hr``, ``ndcg``, ``mrr``; not
``coverage``); ``max_users`` is not offered (every shard's users are scored).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from llmrecall.config import ChannelConfig, PipelineConfig
from llmrecall.engine.sharded import fit_from_shards, shard_task
from llmrecall.engine.stage_files import StageParts, digest
from llmrecall.errors import ConfigError
from llmrecall.fusion import ChannelWeight
from llmrecall.tune.objective import DEFAULT_STAGES, TrialObjective, _stage_bounds, parse_metric
from llmrecall.tune.space import Space
from llmrecall.tune.store import StoreStats, channel_key


@dataclass
class ShardedLog:
    """The history shards of one log and where their stage results go: ``paths`` (shard
    files, in order), ``items`` (the vocabulary), the ``engine`` whose tasks read them,
    the ``run`` folder in the work folder, ItemCF's ``reducer_bytes``, ``catalog()``
    giving the items' catalog (SASRec's item texts), and ``searches()`` the search log's
    shards (``search_query``'s; ``timed_searches``: it has a time column)."""

    paths: list[str]
    items: list[str]
    engine: Any
    run: Path
    reducer_bytes: int
    catalog: Callable[[], Any] | None = None
    searches: Callable[[], list[str] | None] = lambda: None
    timed_searches: bool = True


def shard_lists(shard: int, path: str, items: list[str], channel, k: int,
                kept: StageParts) -> int:
    """Recall shard ``shard``'s validation users with the fitted ``channel``; write the ids
    (int32[users, k], -1 padded) to ``kept`` with the users' targets (CSR ``indptr`` and
    ``indices``, so a trial reads no shard) and return the number of users."""
    from llmrecall.engine.shard_users import for_shard
    from llmrecall.evaluate.runner import rank_task

    task = shard_task(path, items, "valid")
    channel = for_shard(channel, path)  # per-user rows kept per shard (BPR's factors)
    ids = rank_task(channel, task, k) if len(task.users) else np.zeros((0, k), np.int32)
    targets = task.targets.tocsr()
    kept.save(shard, {"ids": ids, "target_indptr": targets.indptr,
                      "target_indices": targets.indices}, {"users": len(task.users)})
    return len(task.users)


def shard_score(n_items: int, lists: dict[str, StageParts], shard: int, k: int, metric: str,
                weights: dict[str, ChannelWeight], rrf_k: float) -> float:
    """The sum over shard ``shard``'s validation users of ``metric`` for the fusion of the
    kept ``lists`` with ``weights``."""
    from llmrecall.evaluate.metrics import ranking_metrics
    from llmrecall.tune.fastfuse import fused_ids

    parts = {name: kept.load(shard)[0] for name, kept in lists.items()}
    first = next(iter(parts.values()))
    n = len(first["target_indptr"]) - 1
    if not n:
        return 0.0
    targets = sp.csr_matrix((np.ones(len(first["target_indices"]), np.float32),
                             first["target_indices"], first["target_indptr"]),
                            shape=(n, n_items))
    fused = fused_ids({name: p["ids"] for name, p in parts.items()}, k, n_items,
                      weights=weights, rrf_k=rrf_k)
    return float(ranking_metrics(fused, targets, [k], n_items)[metric] * n)


class ShardedChannelLists:
    """Each channel setting's validation lists, per shard, in the work folder (see the
    module docstring); ``stats`` counts fits, recalls and lists found kept."""

    def __init__(self, log: ShardedLog):
        self.log = log
        self.stats = StoreStats()
        self.users: list[int] | None = None  # validation users per shard, once known

    def ensure(self, config: ChannelConfig, seed: int, k: int) -> StageParts:
        """The kept lists of ``config`` (top ``k``) for every shard: fitted and recalled
        now for the shards that have none."""
        from llmrecall.pipeline import build_channel

        log = self.log
        kept = StageParts(log.run, "valid-lists", digest(channel_key(config, seed, k)))
        todo = kept.missing(len(log.paths))
        if not todo:
            self.stats.list_hits += 1
            return kept
        start = time.perf_counter()
        channel = build_channel(config, seed)
        fit_from_shards({config.channel_name: channel}, log.paths, log.items, log.engine,
                        log.reducer_bytes, log.run, {}, catalog=log.catalog,
                        searches=log.searches, timed_searches=log.timed_searches)
        self.stats.fits += 1
        self.stats.fit_seconds += time.perf_counter() - start
        paths, items = log.paths, log.items
        log.engine.map_tasks(lambda s: shard_lists(s, paths[s], items, channel, k, kept), todo)
        self.stats.recalls += len(todo)
        return kept

    def validation_users(self, kept: StageParts) -> list[int]:
        """Validation users per shard, read from any channel's kept lists."""
        if self.users is None:
            self.users = [int(kept.load(s)[1]["users"]) for s in range(len(self.log.paths))]
        return self.users


class ShardedObjective(TrialObjective):
    """:class:`~llmrecall.tune.objective.ValidationObjective`'s interface (``evaluate``,
    callable as an Optuna objective, ``n_users``, ``store.stats``) over a sharded log;
    stage ``s`` scores the shards ``0..bounds[s+1]``."""

    def __init__(self, log: ShardedLog, base: PipelineConfig, metric: str, *,
                 space: Space = "all", stages: Sequence[float] = DEFAULT_STAGES):
        self.metric_name, self.k = parse_metric(metric)
        if self.metric_name == "coverage":
            raise ConfigError("tune with [engine] log = \"sharded\": coverage is not a mean "
                              "over users; tune recall, hr, ndcg or mrr")
        self.metric = f"{self.metric_name}@{self.k}"
        self.base, self.space, self.log = base, space, log
        self.bounds = _stage_bounds(len(log.paths), stages)
        self.store = ShardedChannelLists(log)
        first = base.enabled_channels[0]
        kept = self.store.ensure(first, base.seed, first.k or base.fusion.channel_k)
        self.per_shard = self.store.validation_users(kept)
        if not sum(self.per_shard):
            raise ConfigError("the sharded log has no user with 3 or more events: nothing "
                              "to tune on")

    @property
    def n_users(self) -> int:
        return int(sum(self.per_shard))

    def evaluate(self, config: PipelineConfig,
                 report: Callable[[float, int], None] | None = None) -> float:
        """The metric of ``config`` on every shard's validation users; ``report(value,
        stage)`` after each stage of shards (it may raise to prune)."""
        weights = {c.channel_name: ChannelWeight(c.weight, c.quota, c.min_slots)
                   for c in config.enabled_channels}
        lists = {c.channel_name: self.store.ensure(c, config.seed,
                                                   c.k or config.fusion.channel_k)
                 for c in config.enabled_channels}
        log, k, metric, rrf_k = self.log, self.k, self.metric, config.fusion.rrf_k
        n_items = len(log.items)
        total, value = 0.0, 0.0
        for stage in range(len(self.bounds) - 1):
            shards = list(range(self.bounds[stage], self.bounds[stage + 1]))
            total += sum(log.engine.map_tasks(
                lambda s: shard_score(n_items, lists, s, k, metric, weights, rrf_k), shards))
            users = sum(self.per_shard[:self.bounds[stage + 1]])
            value = total / users if users else 0.0
            if report is not None:
                report(value, stage)
        return value


def tune_sharded(spec, config: PipelineConfig, trials: int, metric: str | None = None, *,
                 engine, work_dir: str | Path | None = None,
                 storage: str | Path | None = None, study_name: str | None = None,
                 seed: int = 0, space: Space = "all", timeout: float | None = None,
                 stages: Sequence[float] = DEFAULT_STAGES, progress: bool = True,
                 min_gain: float | None = None, shard_events: int | None = None,
                 reducer_bytes: int | None = None, name: str | None = None,
                 say: Callable[[str], None] | None = None,
                 ) -> tuple[PipelineConfig, dict[str, Any], dict[str, Any]]:
    """Tune ``config`` on the validation users of the sharded log ``spec`` (``loo``), then
    evaluate the untuned and the tuned config on its test users, once, shard by shard.
    Returns ``(tuned config, study report, comparison)``; the last is what
    :func:`~llmrecall.tune.compare.compare_on_test` returns. The study is
    :func:`~llmrecall.tune.study.run_study`'s (the same trials, pruning, baseline and
    noise floor), its identity the log's run folder."""
    from llmrecall.data.loaders import read_catalog
    from llmrecall.engine.sharded import (
        REDUCER_BYTES,
        SHARD_EVENTS,
        check_sharded,
        evaluate_sharded,
        open_sharded_log,
    )
    from llmrecall.tune.compare import comparison, comparison_ks
    from llmrecall.tune.study import check_study, default_metric, run_study

    check_sharded(spec, config, "loo", command="tune")
    check_study(trials, min_gain, space)
    metric_name, k = parse_metric(metric or default_metric(config))
    metric = f"{metric_name}@{k}"
    shard_events = shard_events or SHARD_EVENTS
    reducer_bytes = reducer_bytes or REDUCER_BYTES
    dataset = name or spec.name or "dataset"
    start = time.perf_counter()
    with open_sharded_log(spec, engine, work_dir, shard_events) as log:
        objective = ShardedObjective(
            ShardedLog(log.shards.paths, log.items, engine, log.run, reducer_bytes,
                       catalog=lambda: read_catalog(spec.items, len(log.items)),
                       searches=log.searches, timed_searches=log.timed_searches),
            config, metric, space=space, stages=stages)
        identity = {"dataset": dataset, "protocol": "loo", "data": log.run.name,
                    "base_config_hash": config.config_hash(), "metric": metric,
                    "space": space, "seed": seed, "max_users": None, "stages": list(stages)}
        study_name = study_name or "-".join(str(x) for x in (
            dataset, "loo", log.run.name[4:12], config.config_hash(), metric, space))
        tuned, report = run_study(objective, config, trials, metric, identity, study_name,
                                  storage=storage, seed=seed, space=space, timeout=timeout,
                                  progress=progress, min_gain=min_gain, start=start)
        report["engine"] = {"log": "sharded", "shards": len(log.shards.paths),
                            "events": log.shards.events, "users": log.shards.n_users}
        ks = comparison_ks(config, tuned, metric)
        reports = {}
        for label, cfg in (("default", config), ("tuned", tuned)):
            if say is not None:
                say(f"evaluating the {label} config on test")
            # the same work folder: the shards, and every fit the two configs share, are
            # found there
            reports[label] = evaluate_sharded(spec, cfg, "loo", engine=engine, on="test",
                                              seed=seed, ks=ks, work_dir=log.run.parent,
                                              shard_events=shard_events,
                                              reducer_bytes=reducer_bytes, name=dataset)
    return tuned, report, comparison(reports["default"], reports["tuned"], metric, ks)
