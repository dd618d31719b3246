"""Redis hot per-user state (``--redis``): with two replicas over one PostgreSQL, an event
acknowledged by one replica is in the other's very next answer; Redis stopped under load
costs no request and no acknowledgement, and Redis is used again once it returns."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest

from llmrecall.errors import ConfigError
from llmrecall.serve.hotstate import with_recent
from llmrecall.serve.live import UserHistory
from llmrecall.serve.settings import load_settings

from .conftest import WRITE

ITEMS = ["50", "181", "172", "1", "127", "100", "258", "286", "288", "294"]


def _until(fetch, check, timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    while True:
        got = fetch()
        if check(got):
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"still {got!r} after {timeout}s")
        time.sleep(0.02)


def _next_answer_rate(a, b, tries: int, tag: str) -> float:
    """Share of ``tries`` events, each acknowledged by ``a`` for a new user, that ``b``'s
    very next answer for that user counted (history_length 1, the item not recalled)."""
    hits = 0
    for i in range(tries):
        user, item = f"{tag}-{i}", ITEMS[i % len(ITEMS)]
        r = a.client.post("/v1/events", headers=WRITE,
                          json={"events": [{"user_id": user, "item_id": item, "timestamp": 1e9 + i}]})
        assert r.status_code == 200
        answer = b.client.post("/v1/recall", json={"user_id": user, "k": 20}).json()
        hits += (answer["known_user"] and answer["history_length"] == 1
                 and item not in {c["item_id"] for c in answer["candidates"]})
    return hits / tries


@pytest.mark.slow
def test_event_acknowledged_by_one_replica_is_in_the_others_next_answer(make_server, artifact,
                                                                      pg_dsn, redis):
    a = make_server(artifact, "--redis", redis.url, state=pg_dsn)
    b = make_server(artifact, "--redis", redis.url, state=pg_dsn)
    plain = make_server(artifact, state=pg_dsn)  # the same database, no Redis: feed only
    with_redis = _next_answer_rate(a, b, 200, "hot")
    feed_only = _next_answer_rate(a, plain, 200, "feed")
    print(f"next answer had the event: with Redis {with_redis:.1%}, feed only {feed_only:.1%}")
    assert with_redis == 1.0
    health = b.client.get("/healthz").json()["state_store"]
    assert health["redis"] == {"kind": "redis", "available": True}
    assert "redis" not in plain.client.get("/healthz").json()["state_store"]
    # the history endpoint merges the same way, and an erasure is not undone by Redis
    r = a.client.post("/v1/events", headers=WRITE, json={"events": [
        {"user_id": "hot-erase", "item_id": "50", "timestamp": 1e9},
        {"user_id": "hot-erase", "item_id": "181", "timestamp": 1e9 + 1}]})
    assert r.status_code == 200
    hist = b.client.get("/v1/users/hot-erase/history").json()
    assert [h["item_id"] for h in hist["history"]] == ["50", "181"]
    assert a.client.delete("/v1/users/hot-erase", headers=WRITE).status_code == 200
    _until(lambda: b.client.get("/v1/users/hot-erase/history").json()["history"], lambda h: h == [])
    assert b.client.post("/v1/recall", json={"user_id": "hot-erase", "k": 5}).json()[
        "history_length"] == 0


@pytest.mark.slow
def test_redis_down_under_load_fails_no_request_and_is_used_again(make_server, artifact,
                                                                  pg_dsn, redis):
    a = make_server(artifact, "--redis", redis.url, state=pg_dsn)
    b = make_server(artifact, "--redis", redis.url, state=pg_dsn)
    failures: list[str] = []
    acked: list[tuple[str, float]] = []
    recalls = [0]
    phase = ["up"]
    acked_while_down = [0]
    stop = threading.Event()

    def writer(w: int) -> None:
        server, n = (a, b)[w % 2], 0
        while not stop.is_set():
            user, ts = f"load-{w}-{n % 5}", 1e9 + w * 1e6 + n
            r = server.client.post("/v1/events", headers=WRITE, json={"events": [
                {"user_id": user, "item_id": ITEMS[n % len(ITEMS)], "timestamp": ts}]})
            if r.status_code != 200:
                failures.append(f"event {r.status_code} {r.text[:200]}")
            else:
                acked.append((user, ts))
                if phase[0] == "down":
                    acked_while_down[0] += 1
            n += 1

    def reader(w: int) -> None:
        server, n = (b, a)[w % 2], 0
        while not stop.is_set():
            r = server.client.post("/v1/recall", json={"user_id": f"load-{w}-{n % 5}", "k": 20})
            if r.status_code != 200 or not r.json()["candidates"]:
                failures.append(f"recall {r.status_code} {r.text[:200]}")
            recalls[0] += 1
            n += 1

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(2)]
    threads += [threading.Thread(target=reader, args=(w,)) for w in range(2)]
    for t in threads:
        t.start()
    try:
        _until(lambda: len(acked), lambda n: n >= 20, timeout=60)
        redis.stop()
        phase[0] = "down"
        _until(lambda: b.client.get("/healthz").json()["state_store"]["redis"]["available"],
               lambda available: available is False)
        down_at = recalls[0]
        _until(lambda: (acked_while_down[0], recalls[0] - down_at),
               lambda got: got[0] >= 20 and got[1] >= 20, timeout=60)
        redis.start()
        phase[0] = "up again"
        for server in (a, b):  # the breaker's next try succeeds: Redis answers again
            _until(lambda s=server: s.client.get("/healthz").json()["state_store"]["redis"],
                   lambda got: got["available"] is True, timeout=30)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert not failures, failures[:5]
    assert acked_while_down[0] >= 20
    # every acknowledged event, including those of the outage, reached both replicas
    users = sorted({u for u, _ in acked})
    for server in (a, b):
        for user in users:
            want = {ts for u, ts in acked if u == user}
            _until(lambda s=server, u=user: {h["timestamp"] for h in s.client.get(
                f"/v1/users/{u}/history").json()["history"]}, lambda got, w=want: w <= got)
    # used again: the next answer of the other replica has each new event once more
    assert _next_answer_rate(a, b, 30, "back") == 1.0
    import redis as redis_py

    with redis_py.Redis.from_url(redis.url) as client:
        assert any(k.endswith(b":recent:back-0") for k in client.keys("llmrecall:*"))


def test_with_recent_counts_only_what_the_feed_has_not_applied():
    """Events at or below the applied sequence (the feed brought them, or they were erased)
    and events of items this replica does not know yet are left out; the rest join the
    history in time order, ties after the history's own entries."""
    lookup = {"a": 0, "b": 1, "c": 2}
    state = SimpleNamespace(last_seq=10, items=SimpleNamespace(
        lookup=lambda ids: np.asarray([lookup.get(i, -1) for i in ids], np.int64)))
    history = UserHistory(np.asarray([0, 1], np.int32), np.asarray([5.0, 7.0]),
                          np.ones(2, np.float32), version=3)
    recent = [(9, "c", 1.0, 1.0), (10, "c", 2.0, 1.0), (11, "c", 7.0, 2.0),
              (12, "new", 8.0, 1.0), (13, "a", 6.0, 1.0)]
    merged, added = with_recent(state, history, recent)  # type: ignore[arg-type]
    assert added == 2
    assert merged.items.tolist() == [0, 0, 1, 2] and merged.times.tolist() == [5, 6, 7, 7]
    assert merged.weights.tolist() == [1, 1, 1, 2] and merged.version == -1
    same, none = with_recent(state, history, recent[:2])  # type: ignore[arg-type]
    assert same is history and none == 0


def test_redis_url_settings(monkeypatch):
    with pytest.raises(ConfigError, match="needs postgres_dsn"):
        load_settings(artifact_dir="x", redis_url="redis://127.0.0.1:6379/0")
    monkeypatch.setenv("HOT_URL", "redis://secret@127.0.0.1:1/0")
    cfg = load_settings(artifact_dir="x", postgres_dsn="postgresql://u@h/db", redis_url="$HOT_URL")
    assert cfg.state.resolved_redis_url() == "redis://secret@127.0.0.1:1/0"
    monkeypatch.delenv("HOT_URL")
    with pytest.raises(ConfigError, match="HOT_URL"):
        cfg.state.resolved_redis_url()
