"""In-process channels run inline on the engine thread: same answers as on their pools."""

from __future__ import annotations

import time

import pytest

from llmrecall.serve.engine import _run_inline


def _candidates(client, user: str) -> list[tuple[str, tuple[str, ...]]]:
    body = client.post("/v1/recall", json={"user_id": user, "k": 50}).json()
    assert body["degraded"] == []
    return [(c["item_id"], tuple(c["channels"])) for c in body["candidates"]]


def test_inline_and_pooled_channels_give_the_same_answer(make_server, artifact, tmp_path):
    pooled_settings = tmp_path / "pooled.toml"
    pooled_settings.write_text("[serve]\ninline_channels = false\n")
    inline = make_server(artifact).client
    pooled = make_server(artifact, "--settings", str(pooled_settings)).client
    for user in ("1", "2", "10", "200", "no-such-user"):
        assert _candidates(inline, user) == _candidates(pooled, user)


def test_run_inline_reports_result_error_and_spent_budget():
    start = time.perf_counter()
    done = _run_inline(start, 1000.0, lambda x: x + 1, 41)
    assert done.done() and done.result() == 42
    failed = _run_inline(start, 1000.0, lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        failed.result()
    late = _run_inline(start - 1.0, 10.0, lambda: pytest.fail("must not run"))
    assert not late.done()  # the caller treats it as a timeout
