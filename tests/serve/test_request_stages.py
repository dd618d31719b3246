"""The stages of the engine's request path, each on its own: plan, channels under one
deadline, live sources, text-query hooks, fusion, answers (serve/engine.py)."""

from __future__ import annotations

import time
from concurrent.futures import Future

import numpy as np
import pytest

from llmrecall.channels.base import Candidates
from llmrecall.serve import sources
from llmrecall.serve.artifacts import load_artifact
from llmrecall.serve.engine import (
    _CHANNEL,
    _QUERY,
    Gathered,
    RecallEngine,
    RecallQuery,
    fusion_weights,
    plan_group,
)
from llmrecall.serve.live import LiveState, UserHistory
from llmrecall.serve.metrics import Metrics
from llmrecall.serve.settings import ServeSettings
from llmrecall.serve.store import Store

from .conftest import _build

CONFIG = """
seed = 0
[[channels]]
kind = "test_popularity"
[[channels]]
kind = "test_cooc"
[[channels]]
kind = "test_failing"
[[channels]]
kind = "test_text"
[[channels]]
kind = "test_text_broken"
"""


@pytest.fixture(scope="module")
def stage_artifact(tmp_path_factory):
    return _build(tmp_path_factory, "stages", CONFIG)


@pytest.fixture
def setup(stage_artifact, tmp_path):
    state = LiveState(load_artifact(stage_artifact), Store(tmp_path / "s.sqlite").read_all())
    engine = RecallEngine(ServeSettings(artifact_dir=stage_artifact, channel_budget_ms=5000),
                          Metrics())
    yield state, engine
    engine.shutdown()


def _query(state, user: str | None = "196", k: int = 10, **options) -> RecallQuery:
    row = state.row_for(user) if user is not None else None
    history = options.pop("history", None) or state.history(row)
    return RecallQuery(state, row, history, k, **options)


def _errors(engine, channel: str, reason: str) -> float:
    value = engine.metrics.registry.get_sample_value(
        "llmrecall_channel_errors_total", {"channel": channel, "reason": reason})
    return value or 0.0


def _candidates(ids: list[int], fallback: list[bool] | None = None) -> Candidates:
    scores = np.linspace(1.0, 0.5, len(ids)).astype(np.float32)[None, :]
    marks = None if fallback is None else np.asarray([fallback])
    return Candidates(np.asarray([ids], np.int32), scores, fallback=marks)


# ---- stage 1: plan ---------------------------------------------------------------------------

def test_plan_gives_anonymous_queries_fresh_rows_past_every_known_user(setup):
    state, _ = setup
    anon = UserHistory(np.asarray([49], np.int32), np.zeros(1), np.ones(1, np.float32))
    known = _query(state, "196", k=5)
    plan = plan_group([known, _query(state, None, k=30, history=anon),
                       _query(state, None, k=7, history=anon)])
    row = state.row_for("196")
    assert plan.rows.tolist() == [row, state.next_row, state.next_row + 1]
    assert plan.users.dtype == np.int32 and plan.users.tolist() == plan.rows.tolist()
    assert plan.k_max == 30 and plan.n_items == len(state.allowed)
    assert plan.history.of(row).tolist() == state.history(row).items.tolist()
    assert plan.history.of(state.next_row + 1).tolist() == [49]
    assert plan.history.versions is not None and plan.history.versions[state.next_row] == -1
    assert plan.channel_mask is None  # nothing filtered: channels are called without a mask
    assert plan.names == list(state.artifact.pipeline.channels)
    assert plan.text_channels == ["test_text", "test_text_broken"] and not plan.has_text


def test_plan_of_a_filtered_query_only_group(setup):
    state, _ = setup
    allowed = state.allowed.copy()
    allowed[:10] = False
    plan = plan_group([_query(state, None, query_text="star wars", allowed=allowed,
                              only=("test_cooc", "test_text"), query_only=True)])
    assert plan.channel_mask is allowed and plan.allowed is allowed
    assert plan.names == []  # history channels would only repeat popularity
    assert plan.text_channels == ["test_text"] and plan.has_text
    assert plan.wants("test_cooc") and not plan.wants(sources.LIVE_POPULARITY)


# ---- stage 2: channels under one deadline ------------------------------------------------------

def test_an_open_breaker_skips_the_channel(setup):
    state, engine = setup
    engine.guard("test_cooc").open_until = time.monotonic() + 60
    plan = plan_group([_query(state, only=("test_cooc", "test_popularity"))])
    got = Gathered()
    pending = engine._start_channels(plan, time.perf_counter(), got)
    assert list(pending) == ["test_popularity"] and got.degraded == ["test_cooc"]
    assert _errors(engine, "test_cooc", "circuit_open") == 1


def test_collect_keeps_own_entries_and_leaves_out_late_and_failed_channels(setup):
    _, engine = setup
    ok, late, failed = Future(), Future(), Future()
    ok.set_result((_candidates([5, 6, 7], [False, False, True]), 0.25))
    failed.set_exception(RuntimeError("broken"))
    for name in ("ok", "late", "failed"):
        engine.guard(name).failures = 1
    got = Gathered()
    engine._collect({"ok": ok, "late": late, "failed": failed},
                    time.perf_counter() + 0.01, got, _CHANNEL)
    assert list(got.lists) == ["ok"] and got.lists["ok"].ids.tolist() == [[5, 6, -1]]
    assert got.seconds == {"ok": 0.25} and got.degraded == ["late", "failed"]
    assert late.cancelled()
    assert engine.guards["ok"].failures == 0  # a success resets the breaker
    assert engine.guards["late"].failures == engine.guards["failed"].failures == 2
    assert _errors(engine, "late", "timeout") == 1 and _errors(engine, "failed", "error") == 1


def test_collect_files_query_hooks_under_their_own_names(setup):
    _, engine = setup
    ok, failed = Future(), Future()
    ok.set_result((_candidates([1, 2], [False, True]), 0.5))
    failed.set_exception(RuntimeError("broken"))
    engine.guard("text").failures = engine.guard("broken").failures = 1
    got = Gathered()
    engine._collect({"text": ok, "broken": failed}, time.perf_counter() + 1, got, _QUERY)
    assert got.lists["text:query"].ids.tolist() == [[1, 2]]  # query lists are kept whole
    assert got.degraded == ["broken:query"] and _errors(engine, "broken", "query") == 1
    assert engine.guards["text"].failures == 1  # a query answer does not reset the breaker


# ---- stage 3: live sources ---------------------------------------------------------------------

def test_live_sources_follow_the_selection(setup):
    state, engine = setup
    seen_of = lambda plan: plan.history.matrix(plan.rows)  # noqa: E731
    plan = plan_group([_query(state)])
    got = Gathered()
    engine._live_sources(plan, seen_of(plan), got)
    assert list(got.lists) == [sources.LIVE_POPULARITY, sources.LIVE_COVISIT]
    plan = plan_group([_query(state, None, query_text="star wars", query_only=True,
                              only=(sources.LIVE_POPULARITY, sources.LIVE_COVISIT,
                                    sources.QUERY_LEXICAL))])
    got = Gathered()
    engine._live_sources(plan, seen_of(plan), got)
    # query-only: no co-visits; no text channel selected: BM25 matches the words
    assert list(got.lists) == [sources.LIVE_POPULARITY, sources.QUERY_LEXICAL]


def test_a_failing_live_source_is_left_out(setup, monkeypatch):
    state, engine = setup

    def broken():
        raise RuntimeError("no co-visits today")

    monkeypatch.setattr(state.covisit, "matrices", broken)
    plan = plan_group([_query(state)])
    got = Gathered()
    engine._live_sources(plan, plan.history.matrix(plan.rows), got)
    assert list(got.lists) == [sources.LIVE_POPULARITY] and got.degraded == [sources.LIVE_COVISIT]
    assert _errors(engine, sources.LIVE_COVISIT, "error") == 1


# ---- stage 2b: text-query hooks ------------------------------------------------------------------

def test_query_text_falls_back_to_bm25_when_every_hook_fails(setup):
    state, engine = setup
    plan = plan_group([_query(state, query_text="star wars",
                              only=("test_text_broken", sources.QUERY_LEXICAL))])
    got = Gathered()
    engine._query_text(plan, plan.history.matrix(plan.rows), time.perf_counter() + 5, got)
    assert got.degraded == ["test_text_broken:query"]
    assert list(got.lists) == [sources.QUERY_LEXICAL]


def test_no_query_hook_starts_once_the_deadline_has_passed(setup):
    state, engine = setup
    plan = plan_group([_query(state, query_text="star wars", only=("test_text",))])
    got = Gathered()
    engine._query_text(plan, plan.history.matrix(plan.rows), time.perf_counter() - 1, got)
    assert got.degraded == ["test_text:query"] and got.lists == {}
    assert _errors(engine, "test_text", "query_timeout") == 1


# ---- stage 4: fusion --------------------------------------------------------------------------

def test_fusion_weights_give_text_matches_the_query_weight(setup):
    state, engine = setup
    settings = engine.settings
    lists = {"test_cooc": None, "test_text:query": None, sources.QUERY_LEXICAL: None}
    weights = fusion_weights(state.artifact.pipeline, settings, lists, 4)  # type: ignore[arg-type]
    assert weights["test_cooc"] == state.artifact.pipeline.weights["test_cooc"]
    assert weights[sources.LIVE_COVISIT] == settings.live_weights()[sources.LIVE_COVISIT]
    for name in ("test_text:query", sources.QUERY_LEXICAL):
        assert weights[name].weight == settings.query_weight
        assert weights[name].min_slots == min(settings.query_min_slots, 4)


def test_fuse_answers_live_popularity_when_nothing_answered(setup):
    state, engine = setup
    plan = plan_group([_query(state, k=5)])
    seen = plan.history.matrix(plan.rows)
    got = Gathered()
    fused = engine._fuse(plan, seen, got)
    assert list(got.lists) == [sources.LIVE_POPULARITY] and fused.ids.shape == (1, 5)
    assert not set(fused.ids[0].tolist()) & set(state.history(plan.rows[0]).items.tolist())
    # a selection that answered nothing: no answer, rather than items it did not select
    plan = plan_group([_query(state, k=5, only=("test_cooc",))])
    assert engine._fuse(plan, seen, Gathered()) is None


# ---- stage 5: answers ---------------------------------------------------------------------------

def test_each_query_gets_its_own_k_and_counts(setup):
    state, engine = setup
    queries = [_query(state, "196", k=3), _query(state, "1", k=8)]
    plan = plan_group(queries)
    got = Gathered({"a": Candidates(np.asarray([[1, 2, 3, -1], [4, 5, -1, -1]], np.int32),
                                    np.asarray([[3, 2, 1, -np.inf], [2, 1, -np.inf, -np.inf]],
                                               np.float32))},
                   {"a": 0.1}, ["b"])
    fused = engine._fuse(plan, plan.history.matrix(plan.rows), got)
    first, second = engine._answers(plan, fused, got)
    assert [c["item_id"] for c in first.candidates] == state.items.raw([1, 2, 3])
    assert [c["item_id"] for c in second.candidates] == state.items.raw([4, 5])
    assert first.channel_counts == {"a": 3} and second.channel_counts == {"a": 2}
    assert first.degraded == second.degraded == ["b"]
