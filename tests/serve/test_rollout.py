"""Rolling rollout: a newly built artifact loaded replica by replica (``POST
/v1/admin/reload?announce=false`` to one replica at a time) while a client alternates between
the replicas, with no failed request and every acknowledged event on both."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from .conftest import WRITE
from .test_reload import _rebuild

ITEMS = ["50", "181", "172", "1", "127", "100", "258", "286", "288", "294"]


def _version(server) -> str:
    return server.client.get("/healthz").json()["artifact_version"]


@pytest.mark.slow
def test_rolling_rollout_replica_by_replica_fails_no_request(make_server, tmp_path, ml100k,
                                                           pg_dsn):
    root = tmp_path / "artifact"
    first = _rebuild(root, ml100k, 0.3)
    a = make_server(root, state=pg_dsn)
    b = make_server(root, state=pg_dsn)
    failures: list[str] = []
    acked: list[tuple[str, float]] = []
    answered: dict[tuple[str, str], int] = {}  # (replica, artifact version) -> answers
    stop = threading.Event()

    def client_loop(w: int) -> None:
        clients = {"a": httpx.Client(base_url=a.url, timeout=30),
                   "b": httpx.Client(base_url=b.url, timeout=30)}
        n = 0
        while not stop.is_set():
            name = "ab"[(n + w) % 2]  # alternate between the replicas
            client = clients[name]
            try:
                if n % 3 == 0:
                    user, ts = f"roll-{w}-{n % 7}", 1e9 + w * 1e6 + n
                    r = client.post("/v1/events", headers=WRITE, json={"events": [
                        {"user_id": user, "item_id": ITEMS[n % len(ITEMS)], "timestamp": ts}]})
                    if r.status_code == 200:
                        acked.append((user, ts))
                else:
                    r = client.post("/v1/recall", json={"user_id": str(1 + n % 900), "k": 20})
                    if r.status_code == 200 and len(r.json()["candidates"]) == 20:
                        key = (name, r.json()["artifact_version"])
                        answered[key] = answered.get(key, 0) + 1
                if r.status_code != 200:
                    failures.append(f"{name} {r.request.url.path} {r.status_code} {r.text[:200]}")
            except httpx.HTTPError as exc:
                failures.append(f"{name}: {exc!r}")
            n += 1
        for c in clients.values():
            c.close()

    threads = [threading.Thread(target=client_loop, args=(w,)) for w in range(3)]
    for t in threads:
        t.start()
    try:
        second = _rebuild(root, ml100k, 0.9)  # a new version: CURRENT moves, nobody reloads
        time.sleep(0.5)
        assert _version(a) == _version(b) == first
        r = a.client.post("/v1/admin/reload", params={"announce": "false"}, headers=WRITE)
        assert r.status_code == 200 and r.json()["artifact_version"] == second
        time.sleep(1.0)  # b keeps serving the old version meanwhile: one replica at a time
        assert (_version(a), _version(b)) == (second, first)
        r = b.client.post("/v1/admin/reload", params={"announce": "false"}, headers=WRITE)
        assert r.status_code == 200 and r.json()["previous_version"] == first
        time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert not failures, failures[:5]
    assert _version(a) == _version(b) == second
    assert answered.get(("b", first), 0) > 0 and answered.get(("a", second), 0) > 0
    assert answered.get(("b", second), 0) > 0
    users = sorted({u for u, _ in acked})
    time.sleep(0.5)  # the last acknowledgements' change feed
    for server in (a, b):  # events acknowledged by either, before, during and after
        for user in users:
            got = {h["timestamp"] for h in server.client.get(
                f"/v1/users/{user}/history").json()["history"]}
            assert {ts for u, ts in acked if u == user} <= got
