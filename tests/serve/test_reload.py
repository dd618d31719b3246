"""New artifact versions are loaded fully and swapped atomically (admin endpoint, SIGHUP)."""

from __future__ import annotations

import signal
import threading
import time
import tomllib

import pytest

from .conftest import MAIN_CONFIG, WRITE


def _rebuild(root, ml100k, weight: float) -> str:
    from llmrecall.config import parse_config
    from llmrecall.serve import build

    raw = tomllib.loads(MAIN_CONFIG)
    raw["channels"][0]["weight"] = weight
    return build(ml100k, parse_config(raw), root).name


@pytest.mark.slow
def test_reload_swaps_atomically_and_keeps_live_state(make_server, tmp_path, ml100k):
    root = tmp_path / "artifact"
    first = _rebuild(root, ml100k, 0.3)
    server = make_server(root)
    assert server.client.get("/healthz").json()["artifact_version"] == first
    server.client.post("/v1/events", headers=WRITE,
                       json={"events": [{"user_id": "reload-user", "item_id": "50"}]})
    server.client.put("/v1/items", headers=WRITE,
                      json={"items": [{"item_id": "reload-item", "title": "Quuxian Nights"}]})
    second = _rebuild(root, ml100k, 0.9)

    seen_versions, failures = set(), []
    stop = threading.Event()

    def reader():
        while not stop.is_set():
            r = server.client.post("/v1/recall", json={"user_id": "196", "k": 20})
            if r.status_code != 200 or len(r.json()["candidates"]) != 20:
                failures.append(r.text)
            else:
                seen_versions.add(r.json()["artifact_version"])

    t = threading.Thread(target=reader)
    t.start()
    r = server.client.post("/v1/admin/reload", headers=WRITE)
    time.sleep(0.3)
    stop.set()
    t.join()
    assert r.status_code == 200 and r.json()["artifact_version"] == second
    assert r.json()["previous_version"] == first
    assert not failures and seen_versions <= {first, second}
    # events and items stored before the swap are part of the new state
    hist = server.client.get("/v1/users/reload-user/history").json()
    assert [h["item_id"] for h in hist["history"]] == ["50"]
    answer = server.client.post("/v1/recall", json={"query": "quuxian", "k": 3}).json()
    assert answer["candidates"][0]["item_id"] == "reload-item"
    assert answer["artifact_version"] == second


@pytest.mark.slow
def test_sighup_reloads(make_server, tmp_path, ml100k):
    root = tmp_path / "artifact"
    _rebuild(root, ml100k, 0.3)
    server = make_server(root)
    newer = _rebuild(root, ml100k, 0.5)
    server.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.client.get("/healthz").json()["artifact_version"] == newer:
            break
        time.sleep(0.1)
    assert server.client.get("/healthz").json()["artifact_version"] == newer


@pytest.mark.slow
@pytest.mark.parametrize("how", ["admin", "sighup"])
def test_every_process_reloads(make_server, tmp_path, ml100k, how):
    """``--workers 2``: a reload asked of one process (admin endpoint) reaches the other
    through the state file's change log; SIGHUP to the server replaces both processes. A
    write made before the reload is in every process's new state."""
    import httpx

    root = tmp_path / "artifact"
    _rebuild(root, ml100k, 0.3)
    server = make_server(root, "--workers", "2")
    server.client.post("/v1/events", headers=WRITE,
                       json={"events": [{"user_id": "reload-mp", "item_id": "50"}]})
    second = _rebuild(root, ml100k, 0.9)
    if how == "admin":
        assert server.client.post("/v1/admin/reload", headers=WRITE).json()[
            "artifact_version"] == second
    else:
        server.proc.send_signal(signal.SIGHUP)
    recent: list[tuple[str, str]] = []  # (process, version) of the latest answers
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:  # fresh connections reach both processes
        r = httpx.get(server.url + "/v1/users/reload-mp/history", timeout=30)
        assert [h["item_id"] for h in r.json()["history"]] == ["50"]
        health = httpx.get(server.url + "/healthz", timeout=30)
        recent = [*recent[-9:], (health.headers["x-llmrecall-process"],
                                 health.json()["artifact_version"])]
        if len(recent) == 10 and len({p for p, _ in recent}) == 2 and \
                {v for _, v in recent} == {second}:
            break
        time.sleep(0.05)
    assert len({p for p, _ in recent}) == 2 and {v for _, v in recent} == {second}, recent
