"""Overload is visible: recall requests beyond ``max_inflight_recalls`` get 503 with
Retry-After, answers that left a channel out are counted, and /healthz says ``degraded``
while too many recent answers did (and ``ok`` again once they stop)."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from .test_degraded import metric

pytestmark = pytest.mark.slow

GOOD = ["test_popularity", "test_cooc"]  # the channels of the degraded artifact that work


def _settings(tmp_path, **values) -> str:
    path = tmp_path / "serve.toml"
    path.write_text("[serve]\n" + "".join(f"{k} = {v!r}\n" for k, v in values.items()))
    return str(path)


def _burst(url: str, n: int, body: dict) -> list[httpx.Response]:
    """``n`` requests sent at once, each on its own connection."""
    out: list[httpx.Response] = []
    barrier = threading.Barrier(n)
    lock = threading.Lock()

    def one() -> None:
        with httpx.Client(base_url=url, timeout=60) as client:
            client.get("/healthz")  # connected before the barrier: the posts start together
            barrier.wait()
            r = client.post("/v1/recall", json=body)
        with lock:
            out.append(r)

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return out


def test_requests_beyond_the_inflight_limit_get_503_with_retry_after(make_server,
                                                                      degraded_artifact, tmp_path):
    # regression: under overload every request was queued and answered 200 with channels
    # silently left out; the caller could not tell overload from a normal answer
    server = make_server(degraded_artifact, "--settings", _settings(
        tmp_path, max_inflight_recalls=4, channel_budget_ms=1000.0, breaker_failures=1000,
        overload_retry_after_s=2))
    answers = _burst(server.url, 24, {"user_id": "196", "k": 10, "channels": ["test_slow", *GOOD]})
    codes = sorted(r.status_code for r in answers)
    assert set(codes) <= {200, 503}, codes
    rejected = [r for r in answers if r.status_code == 503]
    assert rejected and codes.count(200) >= 4, codes
    for r in rejected:
        assert r.headers["retry-after"] == "2"
        assert r.json()["error"] == "overloaded"
    for r in answers:
        if r.status_code == 200:
            assert "test_slow" in r.json()["degraded"] and len(r.json()["candidates"]) == 10
    text = server.client.get("/metrics").text
    assert metric(text, "llmrecall_recall_rejected_total", reason="overload") == len(rejected)
    # below the limit nothing is refused
    for _ in range(3):
        assert server.client.post("/v1/recall", json={"user_id": "1", "channels": GOOD}
                                  ).status_code == 200


def _plain(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def test_degraded_answers_are_counted_and_health_flips_and_recovers(make_server,
                                                                     degraded_artifact, tmp_path):
    # regression: 58 % of answers left a channel out under load, all of them 200, with no
    # ratio to alert on and /healthz saying "ok"
    window = 3.0
    server = make_server(degraded_artifact, "--settings", _settings(
        tmp_path, health_window_s=window, health_degraded_ratio=0.5, channel_budget_ms=300.0))
    c = server.client
    assert c.get("/healthz").json()["status"] == "ok"
    for i in range(12):  # test_failing fails every call: each answer is degraded
        body = c.post("/v1/recall", json={"user_id": str(i + 1), "k": 5,
                                           "channels": ["test_failing", *GOOD]}).json()
        assert body["degraded"] == ["test_failing"]
    for i in range(4):
        assert c.post("/v1/recall", json={"user_id": str(i + 1), "channels": GOOD}
                      ).json()["degraded"] == []
    text = c.get("/metrics").text
    assert _plain(text, "llmrecall_recall_answers_total") == 16
    assert _plain(text, "llmrecall_recall_degraded_answers_total") == 12
    assert _plain(text, "llmrecall_recall_degraded_ratio") == pytest.approx(12 / 16)
    health = c.get("/healthz").json()
    assert health["status"] == "degraded"
    assert health["recent_answers"] == 16
    assert health["recent_degraded_ratio"] == pytest.approx(12 / 16)
    time.sleep(window + 1.1)  # the degraded answers leave the window
    for i in range(12):
        assert c.post("/v1/recall", json={"user_id": str(i + 1), "channels": GOOD}
                      ).json()["degraded"] == []
    health = c.get("/healthz").json()
    assert health["status"] == "ok" and health["recent_degraded_ratio"] == 0
    assert _plain(c.get("/metrics").text, "llmrecall_recall_degraded_ratio") == 0
