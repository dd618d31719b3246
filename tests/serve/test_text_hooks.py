"""Text-embedding channels plug in through ``add_items`` and ``recall_query``."""

from __future__ import annotations

import json
import time

from .conftest import WRITE


def test_new_items_reach_text_channels_and_queries_use_them(make_server, text_artifact, tmp_path):
    state = tmp_path / "text.sqlite"
    server = make_server(text_artifact, state=state)
    item = {"item_id": "blorp-1", "title": "Blorptastic voyage", "text": "deep sea"}
    assert server.client.put("/v1/items", json={"items": [item]}, headers=WRITE).status_code == 200
    answer = server.client.post("/v1/recall", json={"query": "blorptastic", "k": 5}).json()
    assert answer["candidates"][0]["item_id"] == "blorp-1"
    assert answer["candidates"][0]["channels"] == ["test_text:query"]
    assert "query_lexical" not in answer["channel_counts"]  # an embedder replaces BM25
    server.stop()
    # after a restart the stored item is handed to the channel again
    again = make_server(text_artifact, state=state)
    answer = again.client.post("/v1/recall", json={"query": "voyage blorptastic", "k": 5}).json()
    assert answer["candidates"][0]["item_id"] == "blorp-1"


def test_bm25_answers_when_every_text_channel_fails_the_query(make_server, text_broken_artifact):
    server = make_server(text_broken_artifact)
    item = {"item_id": "blorp-2", "title": "Blorptastic return", "text": "deep sea"}
    assert server.client.put("/v1/items", json={"items": [item]}, headers=WRITE).status_code == 200
    answer = server.client.post("/v1/recall", json={"query": "blorptastic", "k": 5}).json()
    assert answer["degraded"] == ["test_text_broken:query"]
    assert answer["candidates"][0]["item_id"] == "blorp-2"
    assert answer["candidates"][0]["channels"] == ["query_lexical"]
    metrics = server.client.get("/metrics").text
    # the start-up warm-up query failed too, and was counted like the request's
    assert 'llmrecall_channel_errors_total{channel="test_text_broken",reason="query"} 2.0' in metrics


def test_hooks_are_called_only_on_channels_that_declare_them(make_server, undeclared_artifact,
                                                            tmp_path):
    """Regression: the service found its hooks by method name, so any channel with an
    ``add_items`` / ``recall_query`` / ``refresh_interest`` method was called, declared or
    not. ``test_text_undeclared`` (configured first) has all three methods but declares no
    capability: only ``test_text``, which declares them, may be called."""
    log = tmp_path / "refresh.jsonl"
    server = make_server(undeclared_artifact, env={"SERVE_TEST_REFRESH_LOG": str(log)})
    item = {"item_id": "blorp-3", "title": "Blorptastic voyage", "text": "deep sea"}
    assert server.client.put("/v1/items", json={"items": [item]}, headers=WRITE).status_code == 200
    answer = server.client.post("/v1/recall", json={"query": "blorptastic", "k": 5}).json()
    assert answer["candidates"][0]["item_id"] == "blorp-3"
    assert answer["candidates"][0]["channels"] == ["test_text:query"]
    assert "test_text_undeclared:query" not in answer["channel_counts"]
    assert not answer["degraded"]
    assert 'reason="add_items"' not in server.client.get("/metrics").text
    events = [{"user_id": "196", "item_id": it} for it in ["50", "181", "172", "1", "127"]]
    assert server.client.post("/v1/events", json={"events": events}, headers=WRITE).status_code == 200
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not (log.exists() and log.read_text()):
        time.sleep(0.05)
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    assert [line["by"] for line in lines] == ["channel"]
