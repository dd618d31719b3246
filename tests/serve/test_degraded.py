"""A channel that raises or overruns its time budget never fails a recall request."""

from __future__ import annotations

import re


def metric(text: str, name: str, **labels) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        m = re.match(rf"{name}\{{(.*)\}} (\S+)$", line)
        if m and ",".join(sorted(m.group(1).split(","))) == want:
            return float(m.group(2))
    return 0.0


def test_broken_and_slow_channels_degrade_not_fail(make_server, degraded_artifact):
    server = make_server(degraded_artifact, "--channel-budget-ms", "300")
    for _ in range(4):  # enough failures to open both breakers
        r = server.client.post("/v1/recall", json={"user_id": "196", "k": 20, "explain": True})
        assert r.status_code == 200, r.text
        body = r.json()
        assert len(body["candidates"]) == 20
        assert {"test_failing", "test_slow"} <= set(body["degraded"])
        proposed = {ch for c in body["candidates"] for ch in c["channels"]}
        assert "test_cooc" in proposed and not proposed & {"test_failing", "test_slow"}
    text = server.client.get("/metrics").text
    assert metric(text, "llmrecall_channel_errors_total", channel="test_failing", reason="error") >= 3
    assert metric(text, "llmrecall_channel_errors_total", channel="test_slow", reason="timeout") >= 1
    assert metric(text, "llmrecall_channel_errors_total", channel="test_slow", reason="circuit_open") >= 1
    assert metric(text, "llmrecall_channel_degraded", channel="test_failing") == 1
    assert metric(text, "llmrecall_channel_degraded", channel="test_slow") == 1
    assert metric(text, "llmrecall_channel_degraded", channel="test_cooc") == 0
    health = server.client.get("/healthz").json()
    assert {"test_failing", "test_slow"} <= set(health["degraded_channels"])


# ---- in process: the engine's logs and deadline ----------------------------------------------

import logging  # noqa: E402

import pytest  # noqa: E402

from llmrecall.serve.artifacts import load_artifact  # noqa: E402
from llmrecall.serve.engine import RecallEngine, RecallQuery  # noqa: E402
from llmrecall.serve.live import LiveState  # noqa: E402
from llmrecall.serve.metrics import Metrics  # noqa: E402
from llmrecall.serve.settings import ServeSettings  # noqa: E402
from llmrecall.serve.store import Store  # noqa: E402

from .conftest import _build  # noqa: E402

EDGE_CONFIG = """
seed = 0
[[channels]]
kind = "test_popularity"
[[channels]]
kind = "test_failing"
[[channels]]
kind = "test_slow"
params = {seconds = 0.3}
[[channels]]
kind = "test_text"
[[channels]]
kind = "test_text_broken"
"""


@pytest.fixture(scope="module")
def edge_artifact(tmp_path_factory):
    return _build(tmp_path_factory, "edges", EDGE_CONFIG)


def _engine(artifact_dir, tmp_path, **settings):
    state = LiveState(load_artifact(artifact_dir), Store(tmp_path / "s.sqlite").read_all())
    engine = RecallEngine(ServeSettings(artifact_dir=artifact_dir, **settings), Metrics())
    return state, engine


def _ask(engine, state, only, query_text=None):
    row = state.row_for("196")
    (answer,) = engine.recall([RecallQuery(state, row, state.history(row), 10,
                                           query_text=query_text, only=only)])
    return answer


def _failures(caplog, name):
    return [r for r in caplog.records
            if r.levelno >= logging.ERROR and f"channel {name!r}" in r.getMessage()]


def test_channel_failures_are_logged_with_traceback_rate_limited(edge_artifact, tmp_path, caplog):
    # regression: a raising channel was only counted in a metric, its traceback lost
    state, engine = _engine(edge_artifact, tmp_path, breaker_failures=100)
    caplog.set_level(logging.ERROR, logger="llmrecall.serve.engine")
    for _ in range(3):
        assert "test_failing" in _ask(engine, state, ("test_failing", "test_popularity")).degraded
    (record,) = _failures(caplog, "test_failing")  # one per interval, not one per request
    assert record.exc_info and "this channel always fails" in str(record.exc_info[1])
    engine.failures.clock = lambda: 1e12  # the interval has passed
    _ask(engine, state, ("test_failing",))
    first, second = _failures(caplog, "test_failing")
    assert "2 more failures" in second.getMessage() and second.exc_info
    engine.shutdown()


def test_query_hook_failures_are_logged_with_traceback(edge_artifact, tmp_path, caplog):
    state, engine = _engine(edge_artifact, tmp_path)
    caplog.set_level(logging.ERROR, logger="llmrecall.serve.engine")
    answer = _ask(engine, state, ("test_text_broken",), query_text="star wars")
    assert "test_text_broken:query" in answer.degraded
    (record,) = _failures(caplog, "test_text_broken:query")
    assert "this query hook always fails" in str(record.exc_info[1])
    engine.shutdown()


def test_text_query_channels_share_the_request_deadline(edge_artifact, tmp_path):
    # regression: after the channels had spent the whole budget, each text channel's query
    # hook still got a fresh channel_budget_ms of its own
    state, engine = _engine(edge_artifact, tmp_path, channel_budget_ms=100)
    answer = _ask(engine, state, ("test_slow", "test_text"), query_text="star wars")
    assert "test_slow" in answer.degraded
    assert "test_text:query" in answer.degraded  # the deadline had passed: not asked
    answer = _ask(engine, state, ("test_text",), query_text="star wars")
    assert "test_text:query" not in answer.degraded  # with time left it answers
    from prometheus_client import generate_latest

    text = generate_latest(engine.metrics.registry).decode()
    assert metric(text, "llmrecall_channel_errors_total", channel="test_text",
                  reason="query_timeout") == 1
    engine.shutdown()
