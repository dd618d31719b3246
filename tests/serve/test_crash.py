"""Durability: every acknowledged event survives SIGKILL, and recall reflects it after restart."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from .conftest import WRITE


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_acknowledged_events_survive_sigkill(make_server, artifact, tmp_path, workers):
    """With two processes the writers' connections land on both, which commit to one file."""
    state = tmp_path / "crash.sqlite"
    server = make_server(artifact, "--workers", str(workers), state=state)
    items = ["50", "181", "172", "1", "127", "100", "258", "286", "288", "294"]
    acked: list[list[dict]] = []
    sent: list[list[dict]] = []
    stop = threading.Event()

    def writer(worker: int) -> None:
        client = httpx.Client(base_url=server.url, timeout=10)
        n = 0
        while not stop.is_set():
            batch = [{"user_id": f"crash-{worker}-{(n + j) % 7}", "item_id": items[(n + j) % len(items)],
                      "timestamp": 1e9 + worker * 1e6 + n + j} for j in range(25)]
            n += 25
            sent.append(batch)
            try:
                r = client.post("/v1/events", json={"events": batch}, headers=WRITE)
            except httpx.HTTPError:
                break  # the server died mid-request: not acknowledged
            if r.status_code == 200:
                acked.append(batch)
        client.close()

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(3)]
    for t in threads:
        t.start()
    while len(acked) < 40:
        time.sleep(0.02)
    server.kill()  # mid-stream: the writers are still sending
    stop.set()
    for t in threads:
        t.join(30)

    restarted = make_server(artifact, "--workers", str(workers), state=state)
    stamps: dict[str, set[float]] = {}
    for batch in sent:
        for user in {e["user_id"] for e in batch}:
            if user not in stamps:
                hist = restarted.client.get(f"/v1/users/{user}/history").json()["history"]
                stamps[user] = {h["timestamp"] for h in hist}
    for batch in acked:
        for e in batch:
            assert e["timestamp"] in stamps[e["user_id"]], f"acknowledged event lost: {e}"
    for batch in sent:  # all or nothing: no batch is half stored
        present = [e["timestamp"] in stamps[e["user_id"]] for e in batch]
        assert all(present) or not any(present)
    user = acked[0][0]["user_id"]
    answer = restarted.client.post("/v1/recall", json={"user_id": user, "k": 50}).json()
    own = {e["item_id"] for b in acked for e in b if e["user_id"] == user}
    assert answer["known_user"] and answer["history_length"] >= len(stamps[user]) > 0
    assert not own & {c["item_id"] for c in answer["candidates"]}


@pytest.mark.slow
def test_erasure_and_catalog_changes_survive_restart(make_server, artifact, tmp_path):
    state = tmp_path / "erase.sqlite"
    server = make_server(artifact, state=state)
    assert server.client.delete("/v1/users/196", headers=WRITE).status_code == 200
    server.client.post("/v1/events", headers=WRITE,
                       json={"events": [{"user_id": "196", "item_id": "1", "timestamp": 1e9}]})
    server.client.put("/v1/items", headers=WRITE,
                      json={"items": [{"item_id": "kept-new", "title": "Plonkwise"}]})
    assert server.client.delete("/v1/items/50", headers=WRITE).status_code == 200
    server.kill()
    again = make_server(artifact, state=state)
    hist = again.client.get("/v1/users/196/history").json()
    assert hist["known_user"] and [h["item_id"] for h in hist["history"]] == ["1"]
    answer = again.client.post("/v1/recall", json={"query": "plonkwise", "k": 3}).json()
    assert answer["candidates"][0]["item_id"] == "kept-new"
    for body in ({"user_id": "13", "k": 300}, {"query": "star wars", "k": 50}):
        got = again.client.post("/v1/recall", json=body).json()["candidates"]
        assert "50" not in [c["item_id"] for c in got]


def _histories(server, users) -> dict[str, set[float]]:
    return {u: {h["timestamp"] for h in server.client.get(f"/v1/users/{u}/history").json()["history"]}
            for u in users}


@pytest.mark.slow
def test_replica_killed_under_load_loses_no_acknowledged_event_postgres(make_server, artifact,
                                                                        pg_dsn):
    """Two replicas over one PostgreSQL, writers on both; one replica is SIGKILLed mid-stream:
    the other keeps acknowledging, and every acknowledged event (through either) is in the
    survivor's answers and in those of the killed replica once restarted."""
    a = make_server(artifact, state=pg_dsn)
    b = make_server(artifact, state=pg_dsn)
    items = ["50", "181", "172", "1", "127", "100", "258", "286", "288", "294"]
    acked: list[list[dict]] = []
    acked_by_b: list[int] = [0]
    sent: list[list[dict]] = []
    stop = threading.Event()

    def writer(worker: int) -> None:
        server = (a, b)[worker % 2]
        client = httpx.Client(base_url=server.url, timeout=10)
        n = 0
        while not stop.is_set():
            batch = [{"user_id": f"pgcrash-{worker}-{(n + j) % 7}", "item_id": items[(n + j) % len(items)],
                      "timestamp": 1e9 + worker * 1e6 + n + j} for j in range(25)]
            n += 25
            sent.append(batch)
            try:
                r = client.post("/v1/events", json={"events": batch}, headers=WRITE)
            except httpx.HTTPError:
                break  # the replica died mid-request: not acknowledged
            if r.status_code == 200:
                acked.append(batch)
                if server is b:
                    acked_by_b[0] += 1
        client.close()

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    while len(acked) < 40:
        time.sleep(0.02)
    a.kill()  # mid-stream: its writers are still sending
    after_kill = acked_by_b[0]
    deadline = time.monotonic() + 60
    while acked_by_b[0] < after_kill + 20 and time.monotonic() < deadline:
        time.sleep(0.02)
    stop.set()
    for t in threads:
        t.join(30)
    assert acked_by_b[0] >= after_kill + 20, "the surviving replica stopped acknowledging"

    users = sorted({e["user_id"] for batch in sent for e in batch})
    restarted = make_server(artifact, state=pg_dsn)
    for server in (b, restarted):
        stamps = _histories(server, users)
        for batch in acked:
            for e in batch:
                assert e["timestamp"] in stamps[e["user_id"]], f"acknowledged event lost: {e}"
        for batch in sent:  # all or nothing: no batch is half stored
            present = [e["timestamp"] in stamps[e["user_id"]] for e in batch]
            assert all(present) or not any(present)
    user = acked[0][0]["user_id"]
    answer = b.client.post("/v1/recall", json={"user_id": user, "k": 50}).json()
    own = {e["item_id"] for batch in acked for e in batch if e["user_id"] == user}
    assert answer["known_user"] and not own & {c["item_id"] for c in answer["candidates"]}
