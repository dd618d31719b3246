"""Per-user state caches in the service: used while a history is unchanged, never stale
after an event (in process, and through a real server)."""

from __future__ import annotations

import numpy as np
import pytest

from llmrecall.channels.user_cache import UserStateCache
from llmrecall.data.dataset import Histories
from llmrecall.serve.artifacts import load_artifact
from llmrecall.serve.engine import RecallEngine, RecallQuery
from llmrecall.serve.live import LiveState, UserHistory
from llmrecall.serve.metrics import Metrics
from llmrecall.serve.settings import ServeSettings
from llmrecall.serve.store import Store

from .conftest import WRITE, _build

CACHE_CONFIG = """
seed = 0
[fusion]
k = 100
channel_k = 100
[[channels]]
kind = "popularity"
weight = 0.3
[[channels]]
kind = "als"
params = {factors = 32, iterations = 5}
[[channels]]
kind = "bpr"
params = {factors = 32, iterations = 5}
"""
K = 30
USER = "196"


@pytest.fixture(scope="module")
def cache_artifact(tmp_path_factory):
    return _build(tmp_path_factory, "usercache", CACHE_CONFIG)


def offline_ids(artifact_dir, row: int, new_items: list[int], new_time: float) -> list[int]:
    """ALS's own top-K for ``row`` with ``new_items`` appended, from a freshly loaded
    artifact: no service, no cache."""
    artifact = load_artifact(artifact_dir)
    h = artifact.histories
    e = h.indptr[row + 1]
    lengths = h.lengths()
    lengths[row] += len(new_items)
    indptr = np.zeros(len(lengths) + 1, np.int64)
    np.cumsum(lengths, out=indptr[1:])
    n = len(new_items)
    grown = Histories(indptr, np.insert(h.items, e, new_items).astype(np.int32),
                      np.insert(h.times, e, new_time + np.arange(n, dtype=np.float64)),
                      np.insert(h.weights, e, np.ones(n, np.float32)), h.n_items)
    channel = artifact.pipeline.channels["als"]
    assert channel.user_cache is None
    return channel.recall(np.array([row], np.int32), K, grown).ids[0].tolist()


def test_engine_reuses_user_state_until_an_event(cache_artifact, tmp_path):
    artifact = load_artifact(cache_artifact)
    state = LiveState(artifact, Store(tmp_path / "s.sqlite").read_all(), user_cache_users=100)
    engine = RecallEngine(ServeSettings(artifact_dir=cache_artifact), Metrics())
    als = artifact.pipeline.channels["als"]
    assert isinstance(als.user_cache, UserStateCache)
    assert isinstance(artifact.pipeline.channels["bpr"].user_cache, UserStateCache)
    row = state.row_for(USER)

    def ask(history: UserHistory | None = None, adhoc: bool = False) -> list[int]:
        q = RecallQuery(state, row, history or state.history(row), K, only=("als",), adhoc=adhoc)
        (answer,) = engine.recall([q])
        return state.items.lookup([c["item_id"] for c in answer.candidates]).tolist()

    first = ask()
    assert (als.user_cache.hits, als.user_cache.misses) == (0, 1)
    assert ask() == first
    assert als.user_cache.hits == 1

    # a request-extended history has no version of its own: computed, never cached
    old = state.history(row)
    extra = UserHistory(np.append(old.items, first[0]).astype(np.int32),
                        np.append(old.times, old.times[-1] + 1),
                        np.append(old.weights, np.float32(1)))
    adhoc = ask(extra, adhoc=True)
    assert als.user_cache.hits == 1 and len(als.user_cache) == 1
    assert first[0] not in adhoc

    # an event gives the row a new version: recomputed, equal to the offline answer
    t = float(old.times[-1]) + 1
    state.apply_events(1, [USER], np.array([first[0]], np.int32), np.array([t]),
                       np.ones(1, np.float32))
    assert state.history(row).version != old.version
    after = ask()
    assert als.user_cache.hits == 1
    assert after == adhoc == offline_ids(cache_artifact, row, [first[0]], t)
    assert ask() == after and als.user_cache.hits == 2

    # a new state (a reload) starts with new caches and new versions
    again = LiveState(load_artifact(cache_artifact), Store(tmp_path / "s.sqlite").read_all(),
                      user_cache_users=100)
    assert again.history(row).version not in (old.version, state.history(row).version)


def test_server_never_serves_a_stale_user_state(make_server, cache_artifact):
    srv = make_server(cache_artifact)
    body = {"user_id": USER, "k": K, "channels": ["als"]}
    first = srv.client.post("/v1/recall", json=body).json()
    second = srv.client.post("/v1/recall", json=body).json()
    assert first["candidates"] == second["candidates"]
    top = first["candidates"][0]["item_id"]

    artifact = load_artifact(cache_artifact)
    row = int(artifact.users.lookup([USER])[0])
    h = artifact.histories
    t = float(h.times[h.indptr[row + 1] - 1]) + 1
    r = srv.client.post("/v1/events", headers=WRITE, json={"events": [
        {"user_id": USER, "item_id": top, "timestamp": t}]})
    assert r.status_code == 200, r.text

    third = srv.client.post("/v1/recall", json=body).json()
    ids = [c["item_id"] for c in third["candidates"]]
    assert third["history_length"] == first["history_length"] + 1
    assert top not in ids and ids != [c["item_id"] for c in first["candidates"]]
    new_item = int(artifact.items.lookup([top])[0])
    expected = offline_ids(cache_artifact, row, [new_item], t)
    assert ids == artifact.items.raw(np.asarray(expected))
