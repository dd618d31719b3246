"""Batch forming: a starting batch waits (briefly) for queries that recent concurrency says
are on their way, and never waits when requests come one at a time."""

from __future__ import annotations

import asyncio

import pytest

from llmrecall.serve.service import Service
from llmrecall.serve.settings import ServeSettings


@pytest.fixture
def service(tmp_path):
    def make(wait_ms: float) -> Service:
        svc = Service(ServeSettings(artifact_dir=tmp_path, state_path=tmp_path / "s.sqlite",
                                    batch_wait_ms=wait_ms, max_batch=8))
        svc._queue = asyncio.Queue()
        return svc

    made: list[Service] = []
    yield lambda wait_ms: made.append(make(wait_ms)) or made[-1]
    for svc in made:
        svc.store.close()


def _gather(svc: Service, peak: int, late: int, late_after_s: float) -> list:
    """One query queued now, ``late`` more ``late_after_s`` later; returns the batch formed."""
    async def run():
        svc._window_peak = peak
        await svc._queue.put("first")

        async def later():
            await asyncio.sleep(late_after_s)
            for i in range(late):
                await svc._queue.put(f"late-{i}")

        task = asyncio.create_task(later())
        batch = await svc._gather_batch()
        await task
        return batch

    return asyncio.run(run())


def test_waits_for_queries_recent_concurrency_expects(service):
    # four were in flight recently: the two answered a moment ago come back and join
    assert _gather(service(50.0), peak=4, late=3, late_after_s=0.002) == [
        "first", "late-0", "late-1", "late-2"]


def test_stops_waiting_once_the_expected_batch_is_full(service):
    batch = _gather(service(50.0), peak=2, late=3, late_after_s=0.002)
    assert batch[:2] == ["first", "late-0"] and len(batch) <= 4


def test_one_request_at_a_time_never_waits(service):
    assert _gather(service(50.0), peak=1, late=2, late_after_s=0.02) == ["first"]


def test_no_wait_when_disabled(service):
    assert _gather(service(0.0), peak=8, late=2, late_after_s=0.005) == ["first"]


def test_the_wait_is_bounded(service):
    # expected more, none came within the wait: the batch goes with what it has
    assert _gather(service(5.0), peak=6, late=1, late_after_s=0.5) == ["first"]
