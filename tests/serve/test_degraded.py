"""A channel that raises or overruns its time budget never fails a recall request."""

from __future__ import annotations

import re


def metric(text: str, name: str, **labels) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        m = re.match(rf"{name}\{{(.*)\}} (\S+)$", line)
        if m and ",".join(sorted(m.group(1).split(","))) == want:
            return float(m.group(2))
    return 0.0


def test_broken_and_slow_channels_degrade_not_fail(make_server, degraded_artifact):
    server = make_server(degraded_artifact, "--channel-budget-ms", "300")
    for _ in range(4):  # enough failures to open both breakers
        r = server.client.post("/v1/recall", json={"user_id": "196", "k": 20, "explain": True})
        assert r.status_code == 200, r.text
        body = r.json()
        assert len(body["candidates"]) == 20
        assert {"test_failing", "test_slow"} <= set(body["degraded"])
        proposed = {ch for c in body["candidates"] for ch in c["channels"]}
        assert "test_cooc" in proposed and not proposed & {"test_failing", "test_slow"}
    text = server.client.get("/metrics").text
    assert metric(text, "llmrecall_channel_errors_total", channel="test_failing", reason="error") >= 3
    assert metric(text, "llmrecall_channel_errors_total", channel="test_slow", reason="timeout") >= 1
    assert metric(text, "llmrecall_channel_errors_total", channel="test_slow", reason="circuit_open") >= 1
    assert metric(text, "llmrecall_channel_degraded", channel="test_failing") == 1
    assert metric(text, "llmrecall_channel_degraded", channel="test_slow") == 1
    assert metric(text, "llmrecall_channel_degraded", channel="test_cooc") == 0
    health = server.client.get("/healthz").json()
    assert {"test_failing", "test_slow"} <= set(health["degraded_channels"])
