"""The interest refresh worker: queued off the request path, deduplicated, robust."""

from __future__ import annotations

import json
import threading
import time

from llmrecall.serve.refresh import InterestRefreshWorker

from .conftest import WRITE


class FakeRefresher:
    def __init__(self, fail_for: str | None = None, gate: threading.Event | None = None):
        self.calls: list[tuple[str, list[str]]] = []
        self.fail_for, self.gate = fail_for, gate

    def __call__(self, user_id, history_items):
        if self.gate is not None:
            self.gate.wait(10)
        if user_id == self.fail_for:
            raise RuntimeError("model endpoint down")
        self.calls.append((user_id, list(history_items)))


def test_refresh_after_enough_new_events_once_per_burst():
    histories = {"a": ["i1", "i2", "i3"], "b": ["i9"]}
    gate = threading.Event()
    fake = FakeRefresher(gate=gate)
    outcomes = []
    worker = InterestRefreshWorker(fake, histories.get, min_events=3, on_outcome=outcomes.append)
    try:
        assert worker.notify(["a", "b"], [2, 1]) == 0  # below the threshold
        assert worker.notify(["a"], [1]) == 1          # a reaches 3
        assert worker.notify(["a"], [5]) == 0          # already queued: not twice
        gate.set()
        assert worker.drain()
        assert fake.calls == [("a", ["i1", "i2", "i3"])]
        assert outcomes == ["ok"]
    finally:
        worker.stop()


def test_failing_refresher_does_not_stop_the_worker():
    fake = FakeRefresher(fail_for="bad")
    outcomes = []
    worker = InterestRefreshWorker(fake, lambda u: [u], min_events=1, on_outcome=outcomes.append)
    try:
        worker.notify(["bad", "good"], [1, 1])
        assert worker.drain()
        assert fake.calls == [("good", ["good"])] and sorted(outcomes) == ["error", "ok"]
    finally:
        worker.stop()


def test_no_refresher_means_nothing_queued():
    worker = InterestRefreshWorker(None, lambda u: [], min_events=1)
    assert not worker.enabled and worker.notify(["a"], [10]) == 0


def test_server_refreshes_off_the_request_path(make_server, artifact, tmp_path):
    log = tmp_path / "refresh.jsonl"
    server = make_server(artifact, "--refresher", "serve_plugins:FileRefresher",
                         env={"SERVE_TEST_REFRESH_LOG": str(log)})
    events = [{"user_id": "refresh-me", "item_id": it} for it in ["50", "181", "172", "1", "127"]]
    assert server.client.post("/v1/events", json={"events": events}, headers=WRITE).status_code == 200
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not (log.exists() and log.read_text()):
        time.sleep(0.05)
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    assert lines == [{"user": "refresh-me", "n": 5}]


def test_channel_refresh_hook_is_used_without_configuration(make_server, text_artifact, tmp_path):
    log = tmp_path / "refresh.jsonl"
    server = make_server(text_artifact, env={"SERVE_TEST_REFRESH_LOG": str(log)})
    events = [{"user_id": "196", "item_id": it} for it in ["50", "181", "172", "1", "127"]]
    assert server.client.post("/v1/events", json={"events": events}, headers=WRITE).status_code == 200
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not (log.exists() and log.read_text()):
        time.sleep(0.05)
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    assert len(lines) == 1 and lines[0]["user"] == "196" and lines[0]["by"] == "channel"
    assert lines[0]["n"] >= 5  # the artifact history plus the five new events
