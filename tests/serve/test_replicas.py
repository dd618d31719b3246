"""Replicas over one PostgreSQL (``--state postgresql://...``): a change acknowledged by one
replica reaches the other's answers (LISTEN/NOTIFY), the database going down (writes 503 with
Retry-After, recall keeps answering), and a restarted replica catching up before it is
healthy."""

from __future__ import annotations

import time

import httpx
import pytest

from .conftest import WRITE

pytestmark = pytest.mark.slow


def _until(fetch, check, timeout: float = 15.0):
    """``fetch()`` until ``check`` holds on its result (returned), or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        got = fetch()
        if check(got):
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"still {got!r} after {timeout}s")
        time.sleep(0.01)


def _history(server, user: str) -> list[str]:
    body = server.client.get(f"/v1/users/{user}/history").json()
    return [h["item_id"] for h in body["history"]]


def test_change_acknowledged_by_one_replica_reaches_the_other(make_server, artifact, pg_dsn):
    a = make_server(artifact, state=pg_dsn)
    b = make_server(artifact, state=pg_dsn)
    assert b.client.post("/v1/recall", json={"user_id": "rep-1", "k": 5}).json()["known_user"] is False
    events = [{"user_id": "rep-1", "item_id": i, "timestamp": 1e9 + n}
              for n, i in enumerate(["50", "181", "172"])]
    assert a.client.post("/v1/events", json={"events": events}, headers=WRITE).status_code == 200
    assert _until(lambda: _history(b, "rep-1"), lambda h: h == ["50", "181", "172"])
    answer = b.client.post("/v1/recall", json={"user_id": "rep-1", "k": 50}).json()
    assert answer["known_user"] and answer["history_length"] == 3
    assert not {"50", "181", "172"} & {c["item_id"] for c in answer["candidates"]}
    # items and deletions travel the same way
    put = a.client.put("/v1/items", headers=WRITE,
                       json={"items": [{"item_id": "rep-new", "title": "Zorbulon"}]})
    assert put.status_code == 200
    _until(lambda: b.client.post("/v1/recall", json={"query": "zorbulon", "k": 3}).json(),
           lambda r: [c["item_id"] for c in r["candidates"]][:1] == ["rep-new"])
    assert b.client.delete("/v1/items/rep-new", headers=WRITE).status_code == 200
    _until(lambda: a.client.post("/v1/recall", json={"query": "zorbulon", "k": 3}).json(),
           lambda r: "rep-new" not in [c["item_id"] for c in r["candidates"]])
    assert a.client.get("/healthz").json()["state_store"] == {"kind": "postgres", "available": True}


def test_database_down_writes_get_503_and_recall_keeps_answering(make_server, artifact,
                                                                 own_postgres):
    dsn = own_postgres.create_database()
    a = make_server(artifact, state=dsn)
    b = make_server(artifact, state=dsn)
    ok = [{"user_id": "down-1", "item_id": "50", "timestamp": 1e9}]
    assert a.client.post("/v1/events", json={"events": ok}, headers=WRITE).status_code == 200
    _until(lambda: _history(b, "down-1"), lambda h: h == ["50"])
    own_postgres.stop()
    late = [{"user_id": "down-1", "item_id": "181", "timestamp": 1e9 + 1}]
    for server in (a, b):
        r = server.client.post("/v1/events", json={"events": late}, headers=WRITE)
        assert r.status_code == 503 and r.json()["error"] == "state_unavailable"
        assert r.headers["retry-after"] == "1"
        answer = server.client.post("/v1/recall", json={"user_id": "down-1", "k": 20})
        assert answer.status_code == 200 and answer.json()["history_length"] == 1
        assert answer.json()["candidates"]
        assert _history(server, "down-1") == ["50"]  # the refused event counts nowhere
        _until(lambda s=server: s.client.get("/healthz").json()["state_store"]["available"],
               lambda available: available is False)
    own_postgres.start()
    # writes resume on the next try; the other replica's listener reconnects and follows
    _until(lambda: a.client.post("/v1/events", json={"events": late}, headers=WRITE).status_code,
           lambda status: status == 200, timeout=30)
    assert _until(lambda: _history(b, "down-1"), lambda h: h == ["50", "181"], timeout=30)


def test_restarted_replica_catches_up_before_it_is_healthy(make_server, artifact, pg_dsn):
    a = make_server(artifact, state=pg_dsn)
    b = make_server(artifact, state=pg_dsn)
    b.stop()
    events = [{"user_id": "late-1", "item_id": i, "timestamp": 1e9 + n}
              for n, i in enumerate(["1", "127"])]
    assert a.client.post("/v1/events", json={"events": events}, headers=WRITE).status_code == 200
    assert a.client.put("/v1/items", headers=WRITE, json={"items": [
        {"item_id": "late-new", "title": "Quaxflorp"}]}).status_code == 200
    assert a.client.delete("/v1/users/196", headers=WRITE).status_code == 200
    b.start()  # returns at its first 200 from /healthz
    health = b.client.get("/healthz").json()
    assert health["last_event_seq"] == a.client.get("/healthz").json()["last_event_seq"] > 0
    assert _history(b, "late-1") == ["1", "127"]
    assert _history(b, "196") == []
    got = b.client.post("/v1/recall", json={"query": "quaxflorp", "k": 3}).json()["candidates"]
    assert got[0]["item_id"] == "late-new"
    assert httpx.get(b.url + "/healthz").status_code == 200
