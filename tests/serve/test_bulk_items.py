"""Bulk item writes: a batch over ``items_sync_max`` is acknowledged (202) once stored, its
job reports when the channels have indexed it, and every item lands: recallable by its
text, in the state file, and again after a SIGKILL and a restart."""

from __future__ import annotations

import sqlite3
import time

import httpx
import pytest

from .conftest import WRITE

N = 300


def _settings(tmp_path, **values) -> str:
    path = tmp_path / "serve.toml"
    path.write_text("[serve]\n" + "".join(f"{k} = {v!r}\n" for k, v in values.items()))
    return str(path)


def _items(n: int) -> list[dict]:
    return [{"item_id": f"bulk-{i}", "title": f"Bulk item {i}",
             "text": f"a catalogue entry with the word zq{i}x in it", "categories": ["Drama"]}
            for i in range(n)]


def _job(server, job_id: str, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        r = httpx.get(f"{server.url}/v1/jobs/{job_id}", timeout=30)  # a fresh connection
        assert r.status_code == 200, r.text
        job = r.json()
        if job["status"] != "indexing" or time.monotonic() > deadline:
            return job
        time.sleep(0.1)


def _missing(server, n: int, patience: float) -> list[int]:
    """Items not yet recalled by their own word (each asked until ``patience`` runs out:
    with several processes the one answering may still be indexing)."""
    missing = list(range(n))
    deadline = time.monotonic() + patience
    while missing:
        missing = [i for i in missing if f"bulk-{i}" not in {
            c["item_id"] for c in server.client.post(
                "/v1/recall", json={"query": f"zq{i}x", "k": 5}).json()["candidates"]}]
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    return missing


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_a_bulk_item_write_lands_completely(make_server, text_artifact, tmp_path, workers):
    # regression: 1,000 items in one PUT took 34 s to answer: clients with ordinary
    # timeouts gave up on a write that was still landing
    state = tmp_path / "bulk.sqlite"
    args = ("--workers", str(workers), "--settings", _settings(tmp_path, items_sync_max=50))
    server = make_server(text_artifact, *args, state=state)
    r = server.client.put("/v1/items", json={"items": _items(N)}, headers=WRITE)
    assert r.status_code == 202, r.text
    ack = r.json()
    assert (ack["added"], ack["updated"], ack["items"], ack["status"]) == (N, 0, N, "indexing")
    assert r.headers["location"] == ack["status_url"] == f"/v1/jobs/{ack['job_id']}"
    # stored and in the vocabulary at the acknowledgement: events may name the items at once
    assert server.client.post("/v1/events", headers=WRITE, json={"events": [
        {"user_id": "bulk-fan", "item_id": f"bulk-{N - 1}", "timestamp": 1e9}]}).status_code == 200
    job = _job(server, ack["job_id"])
    assert job["status"] == "done" and job["indexed"] == N and job["channel_errors"] == []
    assert (job["items"], job["added"], job["updated"]) == (N, N, 0)
    assert job["finished"] >= job["created"]
    assert _missing(server, N, patience=0 if workers == 1 else 10) == []
    with sqlite3.connect(state) as con:
        stored = con.execute("SELECT COUNT(*) FROM items WHERE item_id LIKE 'bulk-%' "
                             "AND deleted = 0").fetchone()[0]
    assert stored == N

    server.kill()
    again = make_server(text_artifact, *args, state=state)
    assert _missing(again, N, patience=0) == []
    assert again.client.get(f"/v1/jobs/{ack['job_id']}").json()["status"] == "done"
    assert again.client.get("/v1/jobs/nope").status_code == 404
    # up to items_sync_max, the answer waits for the channels: 200, recallable at once
    small = again.client.put("/v1/items", headers=WRITE, json={"items": [
        {"item_id": "bulk-small", "title": "Small", "text": "word qq7zz here"}]})
    assert small.status_code == 200 and small.json() == {"added": 1, "updated": 0}
    if workers == 1:
        got = again.client.post("/v1/recall", json={"query": "qq7zz", "k": 5}).json()
        assert "bulk-small" in [c["item_id"] for c in got["candidates"]]


def test_a_job_whose_process_is_gone_reads_interrupted(tmp_path):
    from llmrecall.serve.service import Service, _process_tag
    from llmrecall.serve.settings import ServeSettings
    from llmrecall.serve.store import ItemRow, Job

    svc = Service(ServeSettings(artifact_dir=tmp_path, state_path=tmp_path / "s.sqlite"))
    try:
        rows = [ItemRow("a", "A", "", []), ItemRow("b", "B", "", [])]
        mine = _process_tag()
        gone = f"{mine.split(':')[0]}:1.000"  # this pid, another start time: a dead process
        svc.store.upsert_items(rows, Job("live", 2, 2, 0, mine)).result()
        svc.store.upsert_items(rows, Job("dead", 2, 0, 2, gone)).result()
        assert svc.job("live")["status"] == "indexing"
        dead = svc.job("dead")
        assert dead["status"] == "interrupted" and (dead["added"], dead["updated"]) == (0, 2)
        svc.store.update_job("live", 2, "done").result()
        assert svc.job("live")["status"] == "done" and svc.job("live")["finished"] is not None
        assert svc.job("other") is None
    finally:
        svc.engine.shutdown()
        svc.store.close()
