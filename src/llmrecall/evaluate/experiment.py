"""Run a pipeline through a protocol: split, fit, recall every channel, fuse, score.

Channel lists are produced once and kept (``ChannelLists``) so that fusion can be re-scored
cheaply, which is what the tuner relies on.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

from llmrecall.channels.base import Candidates
from llmrecall.config import PipelineConfig
from llmrecall.data.dataset import Dataset
from llmrecall.engine import current_engine
from llmrecall.evaluate.metrics import DEFAULT_KS, ranking_metrics
from llmrecall.evaluate.protocols import EvalTask, Split, make_split
from llmrecall.fusion import LearnedFusion
from llmrecall.fusion_learn import fit_learned_fusion
from llmrecall.pipeline import RecallPipeline
from llmrecall.progress import task as progress_task


@dataclass
class ChannelLists:
    """Every channel's candidates for all users of one evaluation task."""

    task: EvalTask
    lists: dict[str, Candidates]
    recall_seconds: dict[str, float] = field(default_factory=dict)


def recall_task(pipeline: RecallPipeline, task: EvalTask,
                only: list[str] | None = None) -> ChannelLists:
    """Each channel's ranked list for every user of ``task``, with the task's masking, and
    the channel's own scores of it (RRF and the learned table read only the ranks; the
    learned fusion's score base reads the scores). The ranking runs on the current engine
    (:mod:`llmrecall.engine`).
    """
    lists, seconds = {}, {}
    for name, channel in pipeline.channels.items():
        if only is not None and name not in only:
            continue
        start = time.perf_counter()
        with progress_task(f"recall {name}", len(task.users), "user") as bar:
            lists[name] = current_engine().recall_lists(channel, task,
                                                        pipeline.channel_k(name),
                                                        on_batch=bar.advance)
        seconds[name] = time.perf_counter() - start
    return ChannelLists(task, lists, seconds)


def fuse_task(pipeline: RecallPipeline, lists: ChannelLists, k: int) -> np.ndarray:
    """Fused ids int32[u, k] for the task's users."""
    task = lists.task
    return pipeline.fuse(lists.lists, k, allowed=task.candidate_mask,
                         history_lengths=task.history.lengths()[task.users]).ids


def fit_fusion(pipeline: RecallPipeline, valid: ChannelLists | EvalTask,
               k: int | None = None) -> LearnedFusion:
    """Fit ``[fusion] method = "learned"`` on validation lists and attach it to ``pipeline``.

    ``valid`` is the validation task (its lists are recalled here) or its
    :class:`ChannelLists`; the pipeline's channels must be fitted on the data before it (a
    split's ``train``). The guard compares at every cut-off of
    :data:`~llmrecall.fusion_learn.GUARD_KS` up to ``k`` (default ``[fusion] k``).
    """
    lists = valid if isinstance(valid, ChannelLists) else recall_task(pipeline, valid)
    task = lists.task
    fusion = pipeline.config.fusion
    model = fit_learned_fusion(dict(lists.lists), task.targets,
                               task.history.lengths()[task.users], task.n_items,
                               k=k or fusion.k, seed=pipeline.config.seed,
                               rrf_weights=pipeline.weights, rrf_k=fusion.rrf_k,
                               score_base=fusion.score_base)
    pipeline.fusion_model_ = model
    return model


#: how the guard's base is named in messages
BASE_NAMES = {"learned": "the learned table's list", "rrf": "the config's RRF",
              "score": "the score base's list"}


def guard_choice(report: dict) -> str:
    """The learned fusion's choice in words, from its fit ``report`` (reference channel,
    prefix and base): e.g. "textcf first 5, then the score base's list"."""
    base = BASE_NAMES.get(report.get("base", "learned"), str(report.get("base")))
    prefix, reference = int(report["prefix"]), report["reference"]
    if prefix >= max(report.get("guard_ks", [0]) or [0]) and prefix > 0:
        return f"{reference} alone"
    return base if prefix == 0 else f"{reference} first {prefix}, then {base}"


def score_lists(pipeline: RecallPipeline, lists: ChannelLists, n_items: int,
                ks=DEFAULT_KS) -> tuple[dict[str, dict[str, float]], float]:
    """Metrics per channel and for ``fused``; also the fusion wall time in seconds."""
    results, fusion_seconds, _fused = score_and_fuse(pipeline, lists, n_items, ks)
    return results, fusion_seconds


def score_and_fuse(pipeline: RecallPipeline, lists: ChannelLists, n_items: int, ks,
                    ) -> tuple[dict[str, dict[str, float]], float, np.ndarray]:
    """As :func:`score_lists`, also returning the fused ids int32[u, max(ks)]."""
    targets = lists.task.targets
    results = {name: ranking_metrics(c.ids, targets, ks, n_items) for name, c in lists.lists.items()}
    start = time.perf_counter()
    fused = fuse_task(pipeline, lists, max(ks))
    fusion_seconds = time.perf_counter() - start
    results["fused"] = ranking_metrics(fused, targets, ks, n_items)
    return results, fusion_seconds, fused


def generation_report(pipeline: RecallPipeline) -> dict[str, dict]:
    """What each channel that generated text in its fit did (``llm_interest``'s interests,
    ``llm_knowledge``'s item knowledge): users or items asked, generated, reused, seconds;
    generated on a pool (the Ray engine), also its actors, tokens, and seconds and tokens
    per 1,000 generated users or items. Empty when no channel generated."""
    out: dict[str, dict] = {}
    for name, channel in pipeline.channels.items():
        stats = getattr(channel, "job_stats", None) or getattr(channel, "knowledge_stats", None)
        if stats is None:
            continue
        summary = {k: v for k, v in asdict(stats).items()
                   if k not in ("per_user_seconds", "per_item_seconds", "cost")}
        out[name] = {**summary, **getattr(stats, "cost", {})}  # stats pickled before `cost`
    return out


def training_report(pipeline: RecallPipeline) -> dict[str, dict]:
    """How each early-stopped channel trained (``sasrec`` with ``patience``): the metric
    followed, held-out users, epochs run, the best epoch and its value. Empty when none."""
    out: dict[str, dict] = {}
    for name, channel in pipeline.channels.items():
        stopping = getattr(channel, "stopping_", None)
        if stopping is not None:
            out[name] = stopping.summary()
    return out


def evaluate(dataset: Dataset, protocol: str, config: PipelineConfig, *, seed: int = 0,
             ks=DEFAULT_KS, on: str = "test",
             progress: Callable[[str], None] | None = None, split: Split | None = None,
             models=None) -> dict:
    """Evaluate ``config`` on ``dataset`` under ``protocol``; returns the report dict.

    ``on`` is "test" (the reported numbers) or "valid" (what tuning may look at).
    ``progress`` is called with one-line messages (the split's size); each channel's fit and
    recall is a stage of :mod:`llmrecall.progress` (a bar or a line, as the command chose).
    ``split``: ``make_split(dataset, protocol, seed)`` if already made; ``models``: a
    :class:`llmrecall.tune.store.FittedChannels` on ``split.train`` whose fitted channels
    are reused (see :meth:`RecallPipeline.fit`).
    """
    return run_experiment(dataset, protocol, config, seed=seed, ks=ks, on=on,
                          progress=progress, split=split, models=models)[0]


def run_experiment(dataset: Dataset, protocol: str, config: PipelineConfig, *, seed: int = 0,
                   ks=DEFAULT_KS, on: str = "test",
                   progress: Callable[[str], None] | None = None,
                   split: Split | None = None, models=None,
                   on_lists: Callable[[ChannelLists, np.ndarray], None] | None = None,
                   ) -> tuple[dict, RecallPipeline, Split]:
    """As :func:`evaluate`, also returning the fitted pipeline and the split (the pipeline
    is fitted on ``split.train`` and can recall from any fresher history).

    ``on_lists``, if given, is called once the lists are scored with every channel's lists
    and the fused ids int32[u, max(ks)] (the lists the report's metrics were computed from;
    :func:`llmrecall.evaluate.ranks.build_ranks` turns them into the HTML report's data).
    """
    say = progress or (lambda _msg: None)
    # every channel's own list is scored at every cut-off: a short list fails here, not
    # after the split, the fits and the recalls
    config.check_cutoffs(ks)
    start = time.perf_counter()
    if split is None:
        split = make_split(dataset, protocol, seed)
    split_seconds = time.perf_counter() - start
    say(f"split {protocol}: {len(split.train.interactions):,} train interactions, "
        f"{len(split.test.users):,} test users")
    # each channel's fit and recall is a stage of llmrecall.progress (its line or bar)
    pipeline = RecallPipeline(config).fit(split.train, models=models)
    task = split.test if on == "test" else split.valid
    fusion_report = None
    if config.fusion.method == "learned":
        # learned on the validation lists; on="valid" then scores it in-sample (its guard's
        # out-of-fold numbers are in the report's "fusion" entry)
        start_fusion = time.perf_counter()
        valid_lists = recall_task(pipeline, split.valid)
        fusion_report = {**fit_fusion(pipeline, valid_lists, max(ks)).report,
                         "fit_seconds": time.perf_counter() - start_fusion}
        say(f"learned fusion: {guard_choice(fusion_report)} "
            f"({fusion_report['fit_seconds']:.1f}s)")
    lists = valid_lists if on == "valid" and fusion_report is not None else recall_task(pipeline, task)
    results, fusion_seconds, fused = score_and_fuse(pipeline, lists, split.dataset.n_items, ks)
    if on_lists is not None:
        on_lists(lists, fused)
    reference = None
    if protocol == "cold-items":
        # no history says anything about a new item: read the channels against chance
        from llmrecall.evaluate.baselines import RANDOM_METHOD, random_ranking_metrics

        reference = {"random": random_ranking_metrics(task, ks), "method": RANDOM_METHOD}
    report = {
        "dataset": dataset.name,
        "protocol": protocol,
        "seed": seed,
        "split": on,
        "config_hash": config.config_hash(),
        "users_evaluated": int(len(task.users)),
        "results": results,
        **({"reference": reference} if reference is not None else {}),
        **({"fusion": fusion_report} if fusion_report is not None else {}),
        **({"generation": generation} if (generation := generation_report(pipeline)) else {}),
        **({"training": training} if (training := training_report(pipeline)) else {}),
        "timings": {
            "split_seconds": split_seconds,
            "fit_seconds": dict(pipeline.fit_seconds),
            "recall_seconds": dict(lists.recall_seconds),
            "fusion_seconds": fusion_seconds,
            "total_seconds": time.perf_counter() - start,
        },
    }
    return report, pipeline, split
