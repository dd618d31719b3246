"""The recall engine: one group of queries -> every channel under a time budget -> fusion.

Queries that share options (channel selection, filters, explanations) are answered as one
batch: each channel is called once for the whole group (batch-first contract), so per-request
Python work stays small and the numpy work is vectorised across concurrent requests.

A channel whose recall is bounded in-process computation (``Channel.in_process``: the
built-in collaborative and embedding channels) runs inline on the engine thread, one after
another, when ``inline_channels`` is on (the default): on a few cores, handing each call to
another thread and back cost more than the calls themselves (docs/serving.md,
Performance). The deadline is checked before each inline channel. Every other channel call
(plugins, anything doing I/O) runs on that channel's own small thread pool and is awaited
with one deadline for the group: a channel that raises or misses the deadline is left out
of this answer (the others still answer), counted in metrics, and after repeated failures
skipped for a cool-down period (a circuit breaker), so a stuck channel cannot eat the
budget of every request. A channel that raises is also logged with its traceback, at most
once per ``failure_log_interval_s`` per channel (:class:`FailureLog`). Text-query hooks run
after the channels, under the same deadline: once it has passed they are not started.

An answer names a channel only for the candidates it really produced: entries a channel
marks as its fallback (``Candidates.fallback``: e.g. the popularity ranking an item-to-item
channel gives a history it knows nothing of, or zero-score fillers) are left out of its
list before fusion; popularity answers under its own name (``live_popularity``, or the
pipeline's popularity channel). Queries with ``popular_fill`` (``/v1/items/{id}/similar``)
that their channels leave short of ``k`` are completed with live popularity, ranked after
every candidate a channel produced.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp

from llmrecall.channels.base import Candidates
from llmrecall.channels.capabilities import AnswersQueries
from llmrecall.data.dataset import Histories
from llmrecall.errors import ConfigError
from llmrecall.fusion import ChannelWeight, FusedCandidates, LearnedFusion, fuse
from llmrecall.serve import sources
from llmrecall.serve.live import COVISIT_WINDOW, LiveState, UserHistory
from llmrecall.serve.metrics import Metrics
from llmrecall.serve.settings import ServeSettings

if TYPE_CHECKING:
    from llmrecall.pipeline import RecallPipeline

log = logging.getLogger(__name__)


@dataclass
class RecallQuery:
    """One resolved request. ``row`` is the user's dense row, or None for an anonymous
    request (the engine gives it a fresh row past every known user)."""

    state: LiveState
    row: int | None
    history: UserHistory
    k: int
    query_text: str | None = None
    only: tuple[str, ...] | None = None
    allowed: np.ndarray | None = None  # per-request mask (already includes deletions)
    explain: bool = False
    max_reasons: int | None = None  # reasons per candidate when explaining (None: every channel)
    adhoc: bool = False  # a known user's history extended by the request: answered alone
    query_only: bool = False  # no user, no history: text matches lead, popularity fills
    popular_fill: bool = False  # fewer than k from the channels: live popularity completes

    def group_key(self) -> tuple:
        solo = id(self) if self.adhoc else None
        return (id(self.state), self.only, id(self.allowed), self.explain, self.query_only,
                self.popular_fill, solo)


@dataclass
class RecallAnswer:
    """Per-query result: candidates as JSON-ready dicts plus what went wrong."""

    candidates: list[dict]
    degraded: list[str]
    channel_counts: dict[str, int]
    seconds: dict[str, float] = field(default_factory=dict)


class FailureLog:
    """Channel failures logged with their traceback, at most one per key (a channel, a
    channel's query hook, a live source) per ``interval_s`` seconds: a channel failing on
    every request must not flood the log. The failures in between are counted, and the next
    one logged says how many there were. ``clock`` is replaceable for tests."""

    def __init__(self, interval_s: float, clock=time.monotonic):
        self.interval_s = interval_s
        self.clock = clock
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def failed(self, key: str, exc: BaseException) -> None:
        now = self.clock()
        with self._lock:  # engine threads may fail at once
            last = self._last.get(key)
            if last is not None and now - last < self.interval_s:
                self._suppressed[key] = self._suppressed.get(key, 0) + 1
                return
            self._last[key] = now
            suppressed = self._suppressed.pop(key, 0)
        more = (f" ({suppressed} more failures since the last one logged, "
                f"{self.interval_s:g}s ago or more)" if suppressed else "")
        log.error("channel %r failed and was left out of the answer%s: %s", key, more, exc,
                  exc_info=(type(exc), exc, exc.__traceback__))


class ChannelGuard:
    """Thread pool + circuit breaker of one channel."""

    def __init__(self, name: str, failures_to_open: int, cooldown_s: float):
        self.name = name
        self.executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix=f"channel-{name}")
        self.failures_to_open = failures_to_open
        self.cooldown_s = cooldown_s
        self.failures = 0
        self.open_until = 0.0

    def available(self) -> bool:
        return time.monotonic() >= self.open_until

    def record(self, ok: bool) -> None:
        if ok:
            self.failures = 0
            return
        self.failures += 1
        if self.failures >= self.failures_to_open:
            self.open_until = time.monotonic() + self.cooldown_s

    def shutdown(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


@dataclass(slots=True)
class GroupPlan:
    """Stage 1 of a group's recall (:func:`plan_group`): what the later stages read.

    ``rows`` (int64[n]) are the queries' history rows, anonymous ones given fresh rows past
    every known user, and ``users`` the same as int32; ``history`` holds row ``rows[i]`` =
    query i's history. ``allowed`` (bool[n_items]) is the group's item mask: its length
    fixes the item width of the batch (items added while it runs are left for the next
    one). ``channel_mask`` is what the channels get: None when nothing is filtered.
    ``names`` are the pipeline channels to call (none for a query-only group) and
    ``text_channels`` those among the selected that answer query text."""

    queries: list[RecallQuery]
    state: LiveState
    pipeline: RecallPipeline
    allowed: np.ndarray
    channel_mask: np.ndarray | None
    k_max: int
    rows: np.ndarray
    users: np.ndarray
    history: Histories
    names: list[str]
    text_channels: list[str]
    texts: list[str | None]
    has_text: bool  # some query has text

    @property
    def n_items(self) -> int:
        return len(self.allowed)

    @property
    def only(self) -> tuple[str, ...] | None:
        return self.queries[0].only

    @property
    def explain(self) -> bool:
        return self.queries[0].explain

    @property
    def query_only(self) -> bool:
        return self.queries[0].query_only

    @property
    def popular_fill(self) -> bool:
        return self.queries[0].popular_fill

    def wants(self, source: str) -> bool:
        """Whether the group's channel selection includes ``source`` (everything without one)."""
        only = self.queries[0].only
        return only is None or source in only


def plan_group(queries: list[RecallQuery]) -> GroupPlan:
    """The plan of one group of queries sharing their options (``RecallQuery.group_key``)."""
    first = queries[0]
    state, pipeline = first.state, first.state.artifact.pipeline
    # the mask fixes the item width of this batch: items added while it runs (the
    # service thread grows the arrays, mask last) are left for the next batch
    allowed = first.allowed if first.allowed is not None else state.allowed
    rows = np.empty(len(queries), np.int64)
    anon = state.next_row
    for i, q in enumerate(queries):
        if q.row is None:
            rows[i], anon = anon, anon + 1
        else:
            rows[i] = q.row
    history = _batch_histories(rows, [q.history for q in queries], len(allowed),
                               [_version(q) for q in queries])
    names = [n for n in pipeline.channels if first.only is None or n in first.only]
    text_channels = _query_channels_of(pipeline, names)
    if first.query_only:  # history channels would only repeat popularity
        names = []
    texts = [q.query_text for q in queries]
    return GroupPlan(queries, state, pipeline, allowed,
                     None if first.allowed is None and state.allows_all else allowed,
                     max(q.k for q in queries), rows, rows.astype(np.int32), history, names,
                     text_channels, texts, any(texts))


@dataclass(slots=True)
class Gathered:
    """What the stages of one group gather: candidate lists by source name (in the order
    fusion sees them), seconds by source, and the names left out of the answer."""

    lists: dict[str, Candidates] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    degraded: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _Calls:
    """How :meth:`RecallEngine._collect` files a kind of channel call: the suffix of its
    list name, its metric reasons, and whether a success resets the breaker and keeps only
    the channel's own entries."""

    suffix: str
    timeout: str
    error: str
    own: bool


_CHANNEL = _Calls("", "timeout", "error", True)
_QUERY = _Calls(":query", "query_timeout", "query", False)


def fusion_weights(pipeline: RecallPipeline, settings: ServeSettings,
                   lists: dict[str, Candidates], k_max: int) -> dict[str, ChannelWeight]:
    """The pipeline's channel weights, the live sources' from the settings, and
    ``query_weight`` (with ``query_min_slots`` places, at most ``k_max``) for every text
    match in ``lists`` (BM25, or an embedding channel's query hook)."""
    weights = dict(pipeline.weights)
    weights.update(settings.live_weights())
    for name in lists:
        if name == sources.QUERY_LEXICAL or name.endswith(":query"):
            weights[name] = ChannelWeight(settings.query_weight, None,
                                          min(settings.query_min_slots, k_max))
    return weights


class RecallEngine:
    """Answers groups of :class:`RecallQuery` (see the module docstring)."""

    def __init__(self, settings: ServeSettings, metrics: Metrics):
        self.settings = settings
        self.metrics = metrics
        self.guards: dict[str, ChannelGuard] = {}
        self._guards_lock = threading.Lock()
        self.failures = FailureLog(settings.failure_log_interval_s)
        self._names: dict[tuple[str, ...], dict[int, list[str]]] = {}  # see _channel_names

    def guard(self, name: str) -> ChannelGuard:
        g = self.guards.get(name)
        if g is None:
            with self._guards_lock:  # engine threads may meet a new channel at once
                g = self.guards.get(name)
                if g is None:
                    g = self.guards[name] = ChannelGuard(name, self.settings.breaker_failures,
                                                         self.settings.breaker_cooldown_s)
        return g

    def degraded_channels(self) -> list[str]:
        return sorted(n for n, g in self.guards.items() if g.failures > 0 or not g.available())

    def shutdown(self) -> None:
        for g in self.guards.values():
            g.shutdown()

    # ---- the hot path ----------------------------------------------------------------
    def recall(self, queries: list[RecallQuery]) -> list[RecallAnswer]:
        """Answer queries, grouping those that share options into one batch each."""
        groups: dict[tuple, list[int]] = {}
        for i, q in enumerate(queries):
            groups.setdefault(q.group_key(), []).append(i)
        out: list[RecallAnswer | None] = [None] * len(queries)
        for members in groups.values():
            answers = self._recall_group([queries[i] for i in members])
            for i, a in zip(members, answers):
                out[i] = a
        return out  # type: ignore[return-value]

    def _recall_group(self, queries: list[RecallQuery]) -> list[RecallAnswer]:
        """One group through the stages (module docstring): plan, channels started, live
        sources meanwhile, channels awaited and text-query hooks run under the one deadline,
        fusion, one answer per query."""
        plan = plan_group(queries)
        got = Gathered()
        start = time.perf_counter()
        deadline = start + self.settings.channel_budget_ms / 1000.0
        pending = self._start_channels(plan, start, got)
        seen = plan.history.matrix(plan.rows)  # computed while pooled channels run
        self._live_sources(plan, seen, got)
        self._collect(pending, deadline, got, _CHANNEL)
        if plan.has_text and plan.text_channels:
            self._query_text(plan, seen, deadline, got)
        for name, took in got.seconds.items():
            self.metrics.channel_seconds.labels(name).observe(took)
        self.metrics.set_degraded(self.degraded_channels())

        t = time.perf_counter()
        fused = self._fuse(plan, seen, got)
        if fused is None:  # nothing selected answered: an empty list, not an error
            return [RecallAnswer([], sorted(set(got.degraded)), {}, got.seconds) for _ in queries]
        got.seconds["fusion"] = time.perf_counter() - t
        return self._answers(plan, fused, got)

    # stage 2: pipeline channels, each inline or on its own pool, all under one deadline
    def _start_channels(self, plan: GroupPlan, start: float, got: Gathered) -> dict[str, Future]:
        """Each of ``plan.names`` started: run now on this thread (``inline_channels`` and an
        in-process channel; not run once the budget since ``start`` is spent) or submitted
        to its pool. A channel whose breaker is open is not called: it is degraded at once.
        Returns ``{name: Future of (Candidates, seconds)}`` for :meth:`_collect`."""
        futures: dict[str, Future] = {}
        settings, pipeline = self.settings, plan.pipeline
        for name in plan.names:
            guard = self.guard(name)
            if not guard.available():
                got.degraded.append(name)
                self.metrics.channel_errors.labels(name, "circuit_open").inc()
                continue
            channel = pipeline.channels[name]
            kc = max(pipeline.channel_k(name), plan.k_max)
            if settings.inline_channels and channel.in_process:
                futures[name] = _run_inline(start, settings.channel_budget_ms, _timed,
                                            channel.recall, plan.users, kc, plan.history,
                                            allowed=plan.channel_mask, explain=plan.explain)
                continue
            futures[name] = guard.executor.submit(
                _timed, channel.recall, plan.users, kc, plan.history, allowed=plan.channel_mask,
                explain=plan.explain)
        return futures

    def _collect(self, futures: dict[str, Future], deadline: float, got: Gathered,
                 kind: _Calls) -> None:
        """Wait for ``futures`` until ``deadline`` (a ``time.perf_counter()`` value), then
        put each answer in ``got`` under ``name + kind.suffix``; one not done is cancelled
        and one that raised is logged (:class:`FailureLog`): both are degraded, counted
        (``kind.timeout`` / ``kind.error``) and recorded by the channel's breaker."""
        wait(list(futures.values()), timeout=max(0.0, deadline - time.perf_counter()))
        for name, fut in futures.items():
            guard = self.guards[name]
            label = name + kind.suffix
            if not fut.done():
                fut.cancel()
                got.degraded.append(label)
                guard.record(False)
                self.metrics.channel_errors.labels(name, kind.timeout).inc()
                continue
            try:
                cand, took = fut.result()
            except Exception as exc:  # a broken channel must not fail the request
                self.failures.failed(label, exc)
                got.degraded.append(label)
                guard.record(False)
                self.metrics.channel_errors.labels(name, kind.error).inc()
                continue
            if kind.own:
                guard.record(True)
                cand = cand.own()  # never named for its fallback entries
            got.lists[label] = cand
            got.seconds[label] = took

    # stage 3: live sources, on this thread while pooled channels run
    def _live_sources(self, plan: GroupPlan, seen: sp.csr_matrix, got: Gathered) -> None:
        """The live sources ``plan`` selects: popularity, co-visits (not for a query-only
        group) and BM25 over the query text when no channel answers text queries."""
        state, live_k = plan.state, self.settings.live_k
        if plan.wants(sources.LIVE_POPULARITY):
            self._live(got, sources.LIVE_POPULARITY, lambda: sources.popularity(
                state.popularity[:plan.n_items], seen, live_k, plan.allowed))
        if plan.wants(sources.LIVE_COVISIT) and not plan.query_only:
            recent_items, _ = plan.history.recent(plan.rows, COVISIT_WINDOW * 2)

            def covisit() -> Candidates:
                parts = state.covisit.matrices()
                recent = _rows_matrix(recent_items, parts[0].shape[0])
                return sources.covisit(parts, recent, seen, live_k, plan.allowed, plan.explain)

            self._live(got, sources.LIVE_COVISIT, covisit)
        if plan.has_text and not plan.text_channels and plan.wants(sources.QUERY_LEXICAL):
            self._lexical(plan, seen, got)

    def _live(self, got: Gathered, name: str, make) -> None:
        """``make()`` answered as source ``name``; like a channel, one that raises is left
        out (logged, degraded, counted)."""
        t = time.perf_counter()
        try:
            got.lists[name] = make()
        except Exception as exc:
            self.failures.failed(name, exc)
            got.degraded.append(name)
            self.metrics.channel_errors.labels(name, "error").inc()
            return
        got.seconds[name] = time.perf_counter() - t

    def _lexical(self, plan: GroupPlan, seen: sp.csr_matrix, got: Gathered) -> None:
        k = max(self.settings.live_k, plan.k_max)
        self._live(got, sources.QUERY_LEXICAL, lambda: plan.state.lexical().recall(
            plan.texts, seen, k, plan.allowed))

    # stage 2b: text-query hooks, after the channels, under the same deadline
    def _query_text(self, plan: GroupPlan, seen: sp.csr_matrix, deadline: float,
                    got: Gathered) -> None:
        """``plan.text_channels`` answer the query text (``recall_query(texts, k, allowed)
        -> Candidates``, listed as ``<name>:query``) under the same guard rules and the
        request's ``deadline``: they run at once, each on its pool, and are awaited
        together until the deadline; none is started once it has passed (the channels
        before them may have spent it all). When none answers, BM25 still matches the
        query's words (``query_lexical``, if selected)."""
        futures: dict[str, Future] = {}
        for name in plan.text_channels:
            if time.perf_counter() >= deadline:
                got.degraded.append(f"{name}:query")
                self.metrics.channel_errors.labels(name, "query_timeout").inc()
                continue
            channel = plan.pipeline.channels[name]
            assert isinstance(channel, AnswersQueries)  # the plan lists only declared ones
            hook = channel.recall_query
            futures[name] = self.guard(name).executor.submit(_timed, hook, plan.texts,
                                                             plan.k_max, plan.allowed)
        self._collect(futures, deadline, got, _QUERY)
        if not any(name.endswith(":query") for name in got.lists) and plan.wants(
                sources.QUERY_LEXICAL):
            # every embedding channel failed on the query: BM25 still matches its words
            self._lexical(plan, seen, got)

    # stage 4: fusion
    def _fuse(self, plan: GroupPlan, seen: sp.csr_matrix, got: Gathered):
        """``got.lists`` fused (``FusedCandidates`` of ``plan.k_max`` columns), or None when
        no list answered: by the artifact's learned fusion for user recall with
        ``[fusion] method = "learned"`` (:func:`_learned_model`), else by RRF. With nothing
        answered and no channel selection, the answer is live popularity; ``popular_fill``
        groups get their short rows completed."""
        weights = fusion_weights(plan.pipeline, self.settings, got.lists, plan.k_max)
        if not got.lists and plan.only is None:
            got.lists[sources.LIVE_POPULARITY] = sources.popularity(
                plan.state.popularity[:plan.n_items], seen, plan.k_max, plan.allowed)
        rrf_k = plan.pipeline.config.fusion.rrf_k
        model = _learned_model(plan, got.lists)
        fused: FusedCandidates | None
        if model is not None:
            fused = _learned_fuse(model, plan, got.lists, weights)
        else:
            fused = (fuse(got.lists, plan.k_max, weights=weights, rrf_k=rrf_k,
                          allowed=plan.allowed) if got.lists else None)
        if plan.popular_fill:
            fused = self._fill_popular(fused, got.lists, weights, rrf_k, plan.state, seen,
                                       plan.n_items, plan.allowed, [q.k for q in plan.queries])
        return fused

    # stage 5: one answer per query
    def _answers(self, plan: GroupPlan, fused, got: Gathered) -> list[RecallAnswer]:
        counts = {name: (c.ids >= 0).sum(axis=1) for name, c in got.lists.items()}
        for name, c in counts.items():
            self.metrics.channel_candidates.labels(name).observe(float(c.mean()) if len(c) else 0.0)
        return [self._answer(fused, r, q, plan.state, got.degraded, counts, got.seconds)
                for r, q in enumerate(plan.queries)]

    def _fill_popular(self, fused, lists: dict[str, Candidates], weights: dict, rrf_k: float,
                      state: LiveState, seen: sp.csr_matrix, n_items: int,
                      allowed: np.ndarray, ks: list[int]):
        """``fused`` (None: nothing answered) with each row that holds fewer than its
        ``ks[row]`` candidates completed from live popularity (the ``live_popularity``
        source's own list: its ranks are the items' places in it), fused under a weight
        small enough to rank every filler after every candidate a channel produced. Items
        already in a row are not named again (they keep their channels); full rows get no
        filler at all. Adds the filler to ``lists`` and its weight to ``weights``."""
        if sources.LIVE_POPULARITY in lists:  # popularity already takes part in the answer
            return fused
        n = seen.shape[0]
        have = np.zeros(n, np.int64) if fused is None else (fused.ids >= 0).sum(axis=1)
        short = have < np.asarray(ks)
        if not short.any():
            return fused
        popular = sources.popularity(state.popularity[:n_items], seen, self.settings.live_k,
                                     allowed)
        ids = popular.ids.copy()
        ids[~short] = -1
        if fused is not None:  # blank, not remove: the others keep their places
            taken = (ids[:, :, None] == fused.ids[:, None, :]).any(axis=2) & (ids >= 0)
            ids[taken] = -1
        # a filler at position r contributes w / (rrf_k + r + 1) <= w / (rrf_k + 1); a real
        # candidate at least the smallest real contribution, weight / (rrf_k + list length)
        least = [weights.get(name, ChannelWeight()).weight / (rrf_k + c.ids.shape[1])
                 for name, c in lists.items() if weights.get(name, ChannelWeight()).weight > 0]
        weight = 0.5 * min(least) * (rrf_k + 1) if least else 1.0
        lists[sources.LIVE_POPULARITY] = Candidates(ids, np.where(ids >= 0, popular.scores,
                                                                  -np.inf).astype(np.float32))
        weights[sources.LIVE_POPULARITY] = ChannelWeight(weight)
        return fuse(lists, max(ks), weights=weights, rrf_k=rrf_k, allowed=allowed)

    def _answer(self, fused, r: int, q: RecallQuery, state: LiveState, degraded: list[str],
                counts: dict[str, np.ndarray], seconds: dict[str, float]) -> RecallAnswer:
        ids = fused.ids[r, :q.k]
        n_valid = int((ids >= 0).sum())
        ids = ids[:n_valid]
        present = fused.ranks[r, :n_valid] >= 0  # bool[n_valid, C]
        # which channels proposed each candidate, as one bit-set code per candidate
        codes = (present.astype(np.int64) << np.arange(present.shape[1])).sum(axis=1).tolist()
        names = self._channel_names(tuple(fused.channels), codes)
        titles = state.titles
        out = [{"item_id": raw, "title": titles[item], "score": score, "channels": names[code]}
               for raw, item, score, code in zip(state.items.raw(ids), ids.tolist(),
                                                 fused.scores[r, :n_valid].tolist(), codes)]
        if q.explain:
            pipeline = state.artifact.pipeline
            for col, (cand, order, gain) in enumerate(zip(out, *reason_order(fused, r, n_valid,
                                                                             q.max_reasons))):
                cand["reasons"] = [self._reason(fused, r, col, int(c), state, pipeline,
                                                float(gain[c])) for c in order]
        return RecallAnswer(out, sorted(set(degraded)),
                            {n: int(c[r]) for n, c in counts.items()}, seconds)

    def _channel_names(self, channels: tuple[str, ...], codes: list[int]) -> dict[int, list[str]]:
        """``{code: [channel names]}`` for bit-set codes over ``channels``. Answers of one
        pipeline use few distinct codes, so they are kept between requests (bounded):
        decoding every candidate's code each time was a visible share of a small batch.
        The lists are shared between answers and must not be mutated."""
        table = self._names.get(channels)
        if table is None:
            if len(self._names) > 64:
                self._names = {}  # replaced, not cleared: another engine thread may hold it
            table = self._names[channels] = {}
        missing = set(codes) - table.keys()
        if len(table) + len(missing) > 4096:
            table, missing = {}, set(codes)
            self._names[channels] = table
        for code in missing:
            table[code] = [c for b, c in enumerate(channels) if code >> b & 1]
        return table

    @staticmethod
    def _reason(fused, r: int, col: int, c: int, state: LiveState, pipeline,
                contribution: float) -> dict:
        name = fused.channels[c]
        ev = int(fused.evidence[r, col, c])
        kind = fused.evidence_kinds[c]
        label, evidence_item = None, None
        if ev >= 0 and kind == "item" and ev < state.n_items:
            evidence_item = state.items.raw([ev])[0]
            label = repr(state.titles[ev] or evidence_item)
        elif ev >= 0 and kind == "text":
            label = fused.evidence_texts[c][ev]
        base = name.split(":")[0]
        if base in pipeline.channels:
            why = pipeline.channels[base].explain(label)
        else:
            template = sources.EXPLANATIONS.get(name, "recalled by {name}")
            why = template.format(evidence=label or "your history", name=name)
        return {"channel": name, "rank": int(fused.ranks[r, col, c]) + 1, "why": why,
                "evidence_item": evidence_item, "contribution": contribution}


def _learned_model(plan: GroupPlan, lists: dict[str, Candidates]) -> LearnedFusion | None:
    """The pipeline's learned fusion if it fuses this group's ``lists``, else None (RRF).

    ``[fusion] method = "learned"`` fuses user recall: a group with a user or a history
    whose lists include some channel the model was fitted on. It scores those channels
    only: the sources it was not fitted with (live ones, query-text matches) were not in
    the validation lists its table and guard were chosen on, so they only complete rows it
    leaves short (:func:`_learned_fuse`). Item neighbours (``popular_fill``), query-only
    groups and groups where none of its channels answered are fused by RRF."""
    pipeline = plan.pipeline
    if pipeline.config.fusion.method != "learned" or plan.popular_fill or plan.query_only:
        return None
    model = pipeline.fusion_model_
    if model is None:
        raise ConfigError('[fusion] method = "learned" needs a fitted fusion: build the '
                          "artifact with `llmrecall build`")
    return model if any(name in model.channels for name in lists) else None


def _learned_fuse(model: LearnedFusion, plan: GroupPlan, lists: dict[str, Candidates],
                  weights: dict[str, ChannelWeight]) -> FusedCandidates:
    """``lists`` fused by ``model`` (the channels it was fitted on), completed from the other
    sources (live ones, query-text matches) fused by RRF, ranked after every learned
    candidate kept: e.g. a new user whose history channels have nothing of their own still
    gets live popularity.

    Those sources keep their guaranteed places (``min_slots``, as :func:`fuse` promises
    them): the first ``min_slots`` candidates of a live co-visit or query-match list are in
    the answer even where the learned candidates fill it, replacing the lowest learned
    ones, because that is how items added after the build get recalled (their co-visits).
    Past the learned candidates kept, the others' RRF order decides the rest of a row (every
    guaranteed candidate, then the best others while there is room). A filler's score is
    below the row's last learned score kept (and below 0), in the fillers' RRF order; its
    contributions are its RRF ones."""
    fused = model.fuse(lists, plan.k_max, history_lengths=plan.history.lengths()[plan.rows],
                       weights=weights, allowed=plan.allowed)
    others = {name: c for name, c in lists.items() if name not in model.channels}
    have = (fused.ids >= 0).sum(axis=1)
    owes = any(bool((c.ids[:, :weights.get(nm, ChannelWeight()).min_slots] >= 0).any())
               for nm, c in others.items())
    if not others or (not owes and (have >= plan.k_max).all()):
        return fused  # full rows and no guaranteed place to honour: nothing to fuse here
    fill = fuse(others, plan.k_max, weights=weights, rrf_k=plan.pipeline.config.fusion.rrf_k,
                allowed=plan.allowed)
    slots = np.array([weights.get(nm, ChannelWeight()).min_slots for nm in fill.channels])
    # bool[n, k]: the filler is at a guaranteed place of some source
    promised = np.any((fill.ranks >= 0) & (fill.ranks < slots[None, None, :]), axis=2)
    n, k, c1 = fused.ids.shape[0], fused.ids.shape[1], len(fused.channels)
    c2 = len(fill.channels)
    ids, scores = fused.ids.copy(), fused.scores.copy()
    ranks = np.concatenate([fused.ranks, np.full((n, k, c2), -1, np.int32)], axis=2)
    evidence = np.concatenate([fused.evidence, np.full((n, k, c2), -1, np.int32)], axis=2)
    assert fused.contrib is not None  # learned fusion records its contributions
    contrib = np.concatenate([fused.contrib, np.zeros((n, k, c2), np.float32)], axis=2)
    for row in range(n):
        h = int(have[row])
        cand = fill.ids[row]
        new = (cand >= 0) & ~np.isin(cand, ids[row, :h])
        owed = int((new & promised[row]).sum())
        if h >= k and not owed:
            continue  # the usual case: a full learned row and no guaranteed filler
        keep = max(min(h, k - owed), 0)
        room = k - keep
        # every guaranteed filler, then the best other fillers while there is room
        others_room = room - owed
        take = np.flatnonzero(new & (promised[row] | (np.cumsum(new & ~promised[row])
                                                      <= others_room)))[:room]
        if keep < h:  # learned candidates the guaranteed ones displace leave the row
            ids[row, keep:], scores[row, keep:] = -1, -np.inf
            ranks[row, keep:], evidence[row, keep:], contrib[row, keep:] = -1, -1, 0.0
        if not len(take):
            continue
        at = slice(keep, keep + len(take))
        base = min(float(scores[row, keep - 1]) if keep else 0.0, 0.0) - 1.0
        ids[row, at] = cand[take]
        scores[row, at] = base - (fill.scores[row, take[0]] - fill.scores[row, take])
        ranks[row, at, c1:] = fill.ranks[row, take]
        evidence[row, at, c1:] = fill.evidence[row, take]
        contrib[row, at, c1:] = fill.contributions(row)[take]
    assert fused.weights is not None and fill.weights is not None
    return FusedCandidates(ids, scores, fused.channels + fill.channels, ranks, evidence,
                           fused.evidence_kinds + fill.evidence_kinds,
                           fused.evidence_texts + fill.evidence_texts,
                           np.concatenate([fused.weights, fill.weights]), None, contrib)


def reason_order(fused, r: int, n_valid: int, max_reasons: int | None
                 ) -> tuple[list[np.ndarray], np.ndarray]:
    """The channels to give as reasons for the first ``n_valid`` candidates of row ``r``:
    per candidate, int64[<= max_reasons] channel positions by contribution to the fused
    score, largest first (ties: the order fusion saw the channels in), only channels that
    proposed the candidate (None: all of them); and float32[n_valid, C] the contributions
    (:meth:`~llmrecall.fusion.FusedCandidates.contributions`)."""
    gain = fused.contributions(r)[:n_valid]
    present = fused.ranks[r, :n_valid] >= 0
    # stable sort on -gain: equal contributions keep the channel order
    order = np.argsort(-gain, axis=1, kind="stable")
    keep = np.take_along_axis(present, order, axis=1)
    out = [row[k][:max_reasons] for row, k in zip(order, keep)]
    return out, gain


def _query_channels_of(pipeline, names: list[str]) -> list[str]:
    """The channels among ``names`` that answer free-text queries (declare
    :class:`~llmrecall.channels.capabilities.AnswersQueries`), one per distinct
    ``query_source`` (e.g. both semantic channels search the same embeddings of the same
    catalog: asking both would fuse one list twice and double the query's weight)."""
    out, seen = [], set()
    for name in names:
        channel = pipeline.channels[name]
        if not isinstance(channel, AnswersQueries):
            continue
        source = channel.query_source
        if source not in seen:
            seen.add(source)
            out.append(name)
    return out


def _run_inline(start: float, budget_ms: float, fn, *args, **kwargs) -> Future:
    """``fn(*args, **kwargs)`` run now, on this thread, as a finished Future (its result or
    its exception); a Future never run (so: not done) once the budget since ``start`` is
    spent, which the caller treats like a timeout."""
    fut: Future = Future()
    if time.perf_counter() - start > budget_ms / 1000.0:
        return fut
    try:
        fut.set_result(fn(*args, **kwargs))
    except Exception as exc:  # reported like a pool channel's failure
        fut.set_exception(exc)
    return fut


def _timed(fn, *args, **kwargs):
    t = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - t


def _version(q: RecallQuery) -> int:
    """The history version a channel may cache under: -1 for anonymous rows and for
    histories extended by the request (their content is not the row's stored one)."""
    return -1 if q.row is None or q.adhoc else q.history.version


def _batch_histories(rows: np.ndarray, hists: list[UserHistory], n_items: int,
                     versions: list[int] | None = None) -> Histories:
    """Histories with ``max(rows)+1`` rows where row ``rows[i]`` holds ``hists[i]`` and every
    other row is empty (rows repeated in the batch share the first one's history).
    ``versions[i]`` is row ``rows[i]``'s version (``Histories.versions``; -1 elsewhere);
    None gives a history without versions."""
    n_rows = int(rows.max()) + 1
    uniq, first = np.unique(rows, return_index=True)
    lengths = np.zeros(n_rows, np.int64)
    lengths[uniq] = [len(hists[i]) for i in first]
    indptr = np.zeros(n_rows + 1, np.int64)
    np.cumsum(lengths, out=indptr[1:])
    pick = [hists[i] for i in first]  # uniq is ascending, so this is CSR row order
    if pick:
        items = np.concatenate([h.items for h in pick]).astype(np.int32)
        times = np.concatenate([h.times for h in pick])
        weights = np.concatenate([h.weights for h in pick]).astype(np.float32)
    else:
        items, times, weights = np.zeros(0, np.int32), np.zeros(0), np.zeros(0, np.float32)
    row_versions = None
    if versions is not None:
        row_versions = np.full(n_rows, -1, np.int64)
        row_versions[uniq] = np.asarray(versions, np.int64)[first]
    return Histories(indptr, items, times, weights, n_items, row_versions)


def _rows_matrix(items: np.ndarray, n_items: int) -> sp.csr_matrix:
    """Binary float32 CSR [n, n_items] from right-aligned, -1 padded item rows."""
    n, width = items.shape
    keep = items >= 0
    rows = np.broadcast_to(np.arange(n)[:, None], (n, width))[keep]
    m = sp.csr_matrix((np.ones(int(keep.sum()), np.float32), (rows, items[keep])),
                      shape=(n, n_items))
    m.sum_duplicates()
    m.data[:] = 1.0
    return m
