"""Text-embedding channels plug in through ``add_items`` and ``recall_query``."""

from __future__ import annotations

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
