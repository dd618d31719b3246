"""The recall optimisation loop: an Optuna study over fusion and channel parameters.

:func:`tune` splits the dataset and hands the tuner the train part and the *validation* task,
nothing else: :func:`tune_validation` has no way to reach test targets. The study lives in an
Optuna storage (SQLite file when ``storage`` is given) under a name derived from the dataset,
protocol, a fingerprint of the split data (:func:`data_fingerprint`), config hash, metric and
space, so rerunning the same command resumes it: the finished trials stay, and ``trials``
more are run. A study is only resumed by a run on the same data, split and settings (its
recorded identity); anything else is refused, naming what differs.

The first trial of a new study is the config itself, so the tuned config is never worse than
the untuned one on validation.
"""

from __future__ import annotations

import hashlib
import math
import statistics
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState

from llmrecall.config import PipelineConfig
from llmrecall.data.dataset import Dataset
from llmrecall.errors import ConfigError
from llmrecall.evaluate.protocols import EvalTask, Split, make_split
from llmrecall.tune.objective import DEFAULT_STAGES, ValidationObjective, parse_metric
from llmrecall.tune.space import Space, current_values, single_channel_values, suggest
from llmrecall.tune.store import FittedChannels

#: seconds between liveness marks of a running trial; a trial silent for GRACE_SECONDS
#: (its process was killed) is marked failed when the study is next opened
HEARTBEAT_SECONDS = 10
GRACE_SECONDS = 60
#: pruning starts once this many trials finished, and never before the first stage
PRUNER_STARTUP_TRIALS = 5


def default_metric(config: PipelineConfig) -> str:
    """Recall at the pipeline's fused list length: what the recall stage hands on."""
    return f"recall@{config.fusion.k}"


def data_fingerprint(train: Dataset, valid: EvalTask) -> str:
    """16 hex digits identifying what a tuning run sees: the training log (sizes, users,
    items, times, weights, in order) and the validation task (users, targets, candidate
    mask, masked items). Equal data split the same way give equal fingerprints; another
    dataset, another protocol or another split seed (where the split depends on it) give
    another one, whatever the datasets are called. One pass of blake2b over the arrays:
    about 10 ms per million interactions."""
    digest = hashlib.blake2b(digest_size=8)
    log = train.interactions
    digest.update(np.array([train.n_users, train.n_items, len(log)], np.int64).tobytes())
    for array in (log.user, log.item, log.time, log.weight, valid.users,
                  valid.targets.indptr, valid.targets.indices):
        digest.update(np.ascontiguousarray(array).tobytes())
        digest.update(b"|")
    if valid.candidate_mask is not None:
        digest.update(np.packbits(valid.candidate_mask).tobytes())
    if valid.exclude is not None:
        digest.update(valid.exclude.indptr.tobytes() + valid.exclude.indices.tobytes())
    return digest.hexdigest()


def open_storage(storage: str | Path | None) -> optuna.storages.BaseStorage:
    """In-memory storage for None, else an SQLite file (created) with trial heartbeats."""
    if storage is None:
        return optuna.storages.InMemoryStorage()
    path = Path(storage).expanduser().resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # heartbeats are marked experimental, and are what lets a killed run's trial be failed
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(f"sqlite:///{path}",
                                          heartbeat_interval=HEARTBEAT_SECONDS,
                                          grace_period=GRACE_SECONDS)


def tune(dataset: Dataset, protocol: str, config: PipelineConfig, trials: int,
         metric: str | None = None, *, storage: str | Path | None = None,
         study_name: str | None = None, seed: int = 0, space: Space = "all",
         timeout: float | None = None, max_users: int | None = None,
         stages: Sequence[float] = DEFAULT_STAGES, progress: bool = True,
         split: Split | None = None, models: FittedChannels | None = None,
         min_gain: float | None = None,
         ) -> tuple[PipelineConfig, dict[str, Any]]:
    """Tune ``config`` on the validation split of ``dataset`` under ``protocol``.

    Args:
        dataset, protocol, seed: what :func:`~llmrecall.evaluate.protocols.make_split` gets.
        config: the pipeline to tune (its values are the first trial).
        trials: how many trials this call runs (a resumed study keeps its earlier ones).
        metric: "NAME@K" maximised on validation; default recall at ``config.fusion.k``.
        storage: SQLite path for a resumable study; None keeps it in memory.
        study_name: default ``<dataset>-<protocol>-<config hash>-<metric>-<space>``.
        space: "all" (fusion + channel parameters) or "fusion".
        timeout: stop starting trials after this many seconds.
        max_users: tune on a seeded sample of at most this many validation users.
        stages: fractions of validation users after which a trial may be pruned.
        progress: report the trials (with the best value so far) through
            :mod:`llmrecall.progress`; False: nothing, and optuna's own log left as it is.
        split: ``make_split(dataset, protocol, seed)`` if already made (to share it, and
            ``models``, with :func:`~llmrecall.tune.compare.compare_on_test`).
        models: fitted channels on ``split.train`` to reuse and fill.
        min_gain: how far above the untuned config's validation value the best trial must
            be to replace it; None: one :func:`noise_floor` of the untuned value on the
            validation users scored; 0: any gain.
    Returns:
        The best config found and a JSON-ready report of the study.
    """
    parse_metric(metric or default_metric(config))  # fail on a bad metric before splitting
    split = split or make_split(dataset, protocol, seed)
    # only the train part and the validation task go further: test stays here, unread
    return tune_validation(split.train, split.valid, config, trials, metric, storage=storage,
                           study_name=study_name, seed=seed, space=space, timeout=timeout,
                           max_users=max_users, stages=stages, progress=progress,
                           context={"dataset": dataset.name, "protocol": protocol},
                           models=models, min_gain=min_gain)


def tune_validation(train: Dataset, valid: EvalTask, config: PipelineConfig, trials: int,
                    metric: str | None = None, *, storage: str | Path | None = None,
                    study_name: str | None = None, seed: int = 0, space: Space = "all",
                    timeout: float | None = None, max_users: int | None = None,
                    stages: Sequence[float] = DEFAULT_STAGES, progress: bool = True,
                    context: dict[str, Any] | None = None,
                    models: FittedChannels | None = None, min_gain: float | None = None,
                    ) -> tuple[PipelineConfig, dict[str, Any]]:
    """:func:`tune` on an already split dataset: ``train`` to fit, ``valid`` to score."""
    check_study(trials, min_gain, space)
    metric = metric or default_metric(config)
    name, k = parse_metric(metric)
    metric = f"{name}@{k}"
    context = dict(context or {"dataset": train.name})
    fingerprint = data_fingerprint(train, valid)
    identity = {**context, "data": fingerprint, "base_config_hash": config.config_hash(),
                "metric": metric, "space": space, "seed": seed, "max_users": max_users,
                "stages": list(stages)}
    # the fingerprint keeps two datasets of one name (two specs called data.toml) apart
    study_name = study_name or "-".join(
        str(x) for x in (context.get("dataset", train.name), context.get("protocol", "split"),
                         fingerprint[:8], config.config_hash(), metric, space))

    start = time.perf_counter()
    objective = ValidationObjective(train, valid, config, metric, space=space, stages=stages,
                                    max_users=max_users, seed=seed, models=models)
    return run_study(objective, config, trials, metric, identity, study_name, storage=storage,
                     seed=seed, space=space, timeout=timeout, progress=progress,
                     min_gain=min_gain, start=start)


def check_study(trials: int, min_gain: float | None, space: str) -> None:
    """Refuse a negative trial count or gain margin and an unknown search space."""
    if trials < 0:
        raise ConfigError(f"trials must be >= 0, got {trials}")
    if min_gain is not None and min_gain < 0:
        raise ConfigError(f"min_gain must be >= 0, got {min_gain}")
    if space not in ("all", "fusion"):
        raise ConfigError(f"space must be 'all' or 'fusion', got {space!r}")


def run_study(objective, config: PipelineConfig, trials: int, metric: str,
              identity: dict[str, Any], study_name: str, *, storage: str | Path | None,
              seed: int, space: Space, timeout: float | None, progress: bool,
              min_gain: float | None, start: float | None = None,
              ) -> tuple[PipelineConfig, dict[str, Any]]:
    """Run (or resume) the study ``study_name`` of ``objective`` (a
    :class:`~llmrecall.tune.objective.ValidationObjective`, or anything with its interface:
    the sharded log's :class:`~llmrecall.engine.sharded_tune.ShardedObjective`); the
    untuned config and each channel alone are the first trials. Returns the best config
    (the untuned one unless beaten by ``min_gain``) and the study's report."""
    start = time.perf_counter() if start is None else start
    study = _open_study(storage, study_name, identity, seed)
    if not study.trials:
        baseline = current_values(config, space)
        study.enqueue_trial(baseline, user_attrs={"baseline": True})
        names = [c.channel_name for c in config.enabled_channels]
        for name in names if len(names) > 1 else []:
            alone = single_channel_values(config, name, space)
            if alone != baseline:
                study.enqueue_trial(alone, user_attrs={"single_channel": name})
    finished_before = _count(study, TrialState.COMPLETE, TrialState.PRUNED)

    interrupted = False
    try:
        _optimize(study, objective, trials, timeout, progress, metric)
    except KeyboardInterrupt:
        # finished trials are already in the storage; rerunning resumes from them
        interrupted = True

    report = study_report(study, objective, storage, metric, space, identity)
    report.update(seconds=time.perf_counter() - start, interrupted=interrupted,
                  trials_this_run=_count(study, TrialState.COMPLETE, TrialState.PRUNED)
                  - finished_before)
    report["min_gain"] = _min_gain(min_gain, report, objective.n_users)
    best = best_config(study, config, space, report["min_gain"])
    report["kept_baseline"] = report["best_value"] is not None and best is config
    report["tuned_config_hash"] = best.config_hash()
    return best, report


def _open_study(storage, study_name: str, identity: dict[str, Any], seed: int) -> optuna.Study:
    rdb = open_storage(storage)
    existing = {s.study_name for s in optuna.get_all_study_summaries(rdb)}
    # a resumed study continues the sampler's random stream where the previous run stopped
    n_before = 0
    if study_name in existing:
        old = optuna.load_study(study_name=study_name, storage=rdb)
        recorded = old.user_attrs.get("identity")
        if recorded is not None and recorded != _jsonable(identity):
            raise ConfigError(_identity_clash(study_name, storage, recorded, _jsonable(identity)))
        n_before = len(old.trials)
    sampler = optuna.samplers.TPESampler(seed=seed + n_before, n_startup_trials=10)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=PRUNER_STARTUP_TRIALS,
                                         n_warmup_steps=0)
    study = optuna.create_study(study_name=study_name, storage=rdb, direction="maximize",
                                sampler=sampler, pruner=pruner, load_if_exists=True)
    if "identity" not in study.user_attrs:
        study.set_user_attr("identity", _jsonable(identity))
    return study


def _identity_clash(study_name: str, storage, recorded: dict, now: dict) -> str:
    """Why a stored study cannot be resumed by this run, field by field."""
    if "data" not in recorded:
        what = "was made before studies recorded a fingerprint of their data"
    elif recorded["data"] != now.get("data"):
        what = (f"was made on other data (fingerprint {recorded['data']}, this run's is "
                f"{now.get('data')}): another dataset, or the same one split differently")
    else:
        differing = sorted(k for k in {*recorded, *now} if recorded.get(k) != now.get(k))
        what = "was made with other settings: " + ", ".join(
            f"{k} {recorded.get(k)!r} (this run: {now.get(k)!r})" for k in differing)
    return (f"study {study_name!r} in {storage} {what}; resuming it would mix its trials "
            f"with this run's: choose another --study-name (or another --storage)")


def _jsonable(identity: dict[str, Any]) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in identity.items()}


def _optimize(study: optuna.Study, objective, trials: int, timeout: float | None,
              progress: bool, metric: str) -> None:
    if trials == 0:
        return
    if not progress:
        study.optimize(objective, n_trials=trials, timeout=timeout, gc_after_trial=False)
        return
    from llmrecall.progress import task

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with task(f"tune {metric}", trials, "trial") as bar:
        bar.set_status(f"best {_best_text(study)}")

        def callback(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
            state = "pruned" if trial.state == TrialState.PRUNED else (
                f"last {trial.value:.4f}" if trial.value is not None else trial.state.name.lower())
            bar.advance()
            bar.set_status(f"best {_best_text(study)}, {state}")

        study.optimize(objective, n_trials=trials, timeout=timeout, callbacks=[callback],
                       gc_after_trial=False)
        bar.set_status(f"best {_best_text(study)}")


def _best_text(study: optuna.Study) -> str:
    # a complete trial of a single-objective study has a value
    done = [t.value for t in study.trials if t.state == TrialState.COMPLETE and t.value is not None]
    return f"{max(done):.4f}" if done else "-"


def _count(study: optuna.Study, *states: TrialState) -> int:
    return len(study.get_trials(deepcopy=False, states=states))


def _min_gain(min_gain: float | None, report: dict[str, Any], n_users: int) -> float:
    if min_gain is not None:  # checked >= 0 before the study ran
        return float(min_gain)
    baseline = report.get("baseline_value")
    return 0.0 if baseline is None else noise_floor(baseline, n_users)


def noise_floor(value: float, n_users: int) -> float:
    """An upper bound on the standard error of a mean of per-user values in [0, 1] (recall,
    hit rate, NDCG, MRR) whose mean is ``value``: ``sqrt(value (1 - value) / n_users)``
    (a [0, 1] variable with mean m has variance at most m (1 - m))."""
    value = min(max(value, 0.0), 1.0)
    return math.sqrt(value * (1.0 - value) / max(n_users, 1))


def best_config(study: optuna.Study, config: PipelineConfig, space: Space,
                min_gain: float = 0.0) -> PipelineConfig:
    """``config`` with the best complete trial's values — or ``config`` itself when no trial
    finished, or when the best is not at least ``min_gain`` above the baseline trial (the
    config as given): the best of many noisy trials is biased upwards, and a gain smaller
    than the metric's noise is more likely selection than improvement."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return config
    baseline = [t.value for t in complete if t.user_attrs.get("baseline") and t.value is not None]
    if baseline and study.best_value - baseline[0] < min_gain:
        return config
    return suggest(optuna.trial.FixedTrial(study.best_trial.params), config, space)


def study_report(study: optuna.Study, objective: ValidationObjective, storage, metric: str,
                 space: Space, identity: dict[str, Any]) -> dict[str, Any]:
    """JSON-ready summary: trial counts, best and baseline values, per-trial costs."""
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    baseline = [t for t in complete if t.user_attrs.get("baseline")]
    fusion_only = [t.user_attrs["seconds"] for t in complete
                   if t.user_attrs.get("fits") == 0 and "seconds" in t.user_attrs]
    fitting = [t.user_attrs["seconds"] for t in complete
               if t.user_attrs.get("fits", 0) > 0 and "seconds" in t.user_attrs]
    stats = objective.store.stats
    return {
        "study_name": study.study_name,
        "storage": None if storage is None else str(storage),
        "identity": _jsonable(identity),
        "metric": metric,
        "space": space,
        "validation_users": objective.n_users,
        "trials": {state.name.lower(): sum(t.state == state for t in trials)
                   for state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL,
                                 TrialState.RUNNING)},
        "best_value": study.best_value if complete else None,
        "best_trial": study.best_trial.number if complete else None,
        "best_params": study.best_trial.params if complete else None,
        "baseline_value": baseline[0].value if baseline else None,
        "median_trial_seconds": {
            "fusion_only": statistics.median(fusion_only) if fusion_only else None,
            "with_channel_fits": statistics.median(fitting) if fitting else None,
            "fusion_only_trials": len(fusion_only), "fitting_trials": len(fitting)},
        "this_process": {"fits": stats.fits, "fit_seconds": stats.fit_seconds,
                         "recalls": stats.recalls, "list_hits": stats.list_hits},
    }
