"""``[state] vectors``: the semantic channels of a running service search a Milvus collection
(Milvus Lite in a temp dir here) instead of the artifact's FAISS index, with no rebuild.

Pinned: the same candidates as FAISS with an exact collection; a second replica of the same
artifact reuses the collection the first one filled (no second fill); an item added through
one replica is in the collection the other one searches; a bad URI or an unreachable Milvus
is a ConfigError naming the setting at start-up.
"""

from __future__ import annotations

import asyncio
import socket

import numpy as np
import pytest
from fastapi.testclient import TestClient

pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")

from llmrecall.errors import ConfigError  # noqa: E402
from llmrecall.index import VectorIndex  # noqa: E402
from llmrecall.serve.app import create_app  # noqa: E402
from llmrecall.serve.service import Service  # noqa: E402
from llmrecall.serve.settings import ServeSettings, load_settings  # noqa: E402

from .conftest import API_KEY, WRITE, _build  # noqa: E402

pytestmark = pytest.mark.slow

#: both channels that search a vector index; semantic_i2i without its neighbour table, so
#: its user recall searches the index too (the table is an in-process structure)
VECTORS_CONFIG = """
seed = 0
[fusion]
k = 200
channel_k = 300
[[channels]]
kind = "popularity"
weight = 0.3
[[channels]]
kind = "semantic_i2i"
params = {table_width = 0}
[[channels]]
kind = "semantic_user"
"""

#: few users: Milvus Lite answers each search over gRPC in tens of ms or more on 2 cores
USERS = [str(u) for u in range(1, 7)]
#: generous: the point is the answers, not Milvus Lite's latency on a busy machine
BUDGET_MS = 60_000.0
NEW = {"item_id": "vec-new", "title": "Quantum Badger Detective",
       "text": "A badger solves crimes with quantum physics in a steampunk city"}
SEMANTIC = ("semantic_i2i", "semantic_user")


@pytest.fixture(scope="module")
def vectors_artifact(tmp_path_factory):
    return _build(tmp_path_factory, "vectors", VECTORS_CONFIG)


def _settings(artifact, state, vectors=None, **extra) -> ServeSettings:
    return load_settings(None, artifact_dir=artifact, state_path=state, vectors=vectors,
                         channel_budget_ms=BUDGET_MS, **extra)


def _service(client) -> Service:
    return client.app.state.service


def _recalls(client) -> dict:
    """Each semantic channel's own answer for ``USERS`` (k = 50, the artifact's histories),
    the service's fused answers (candidate ids in order) and a query's answer."""
    svc = _service(client)
    artifact = svc.live.artifact
    rows = artifact.users.lookup(USERS, strict=True).astype(np.int32)
    out: dict = {name: artifact.pipeline.channels[name].recall(rows, 50, artifact.histories)
                 for name in SEMANTIC}
    for user in USERS:
        body = client.post("/v1/recall", json={"user_id": user, "k": 50}).json()
        assert body["degraded"] == [], body["degraded"]
        out[user] = [c["item_id"] for c in body["candidates"]]
    body = client.post("/v1/recall", json={"query": "space adventure with robots", "k": 20}).json()
    assert body["degraded"] == [] and "semantic_i2i:query" in body["channel_counts"]
    out["query"] = [c["item_id"] for c in body["candidates"]]
    out["query_channel"] = artifact.pipeline.channels["semantic_i2i"].recall_query(
        ["space adventure with robots", "a quiet family drama"], 50)
    return out


def _same_ids(got, want, tie: float = 2e-6) -> None:
    """Scores equal up to float rounding (Milvus and numpy round the inner product
    differently, by ~1e-7) and ids equal wherever the score is not tied within ``tie`` with
    a neighbour, where either order is right."""
    np.testing.assert_allclose(got.scores, want.scores, atol=1e-5, rtol=0)
    gap = np.abs(np.diff(want.scores.astype(np.float64), axis=1))
    tied = np.zeros(want.ids.shape, bool)
    tied[:, 1:] |= gap < tie
    tied[:, :-1] |= gap < tie
    tied[:, -1] = True  # the last one may tie with the first left out
    assert (~tied).mean() > 0.6  # the comparison compares something
    np.testing.assert_array_equal(got.ids[~tied], want.ids[~tied])
    for g, w in zip(got.ids, want.ids):
        assert len(set(g[:-1]) ^ set(w[:-1])) <= 2  # at most a tie across the last place


def test_milvus_vectors_answer_as_faiss(vectors_artifact, tmp_path):
    with TestClient(create_app(_settings(vectors_artifact, tmp_path / "a.sqlite"))) as plain:
        svc = _service(plain)
        assert svc.vectors == []  # unset: FAISS in-process, as before
        channels = svc.live.artifact.pipeline.channels
        assert all(isinstance(channels[name].index, VectorIndex) for name in SEMANTIC)
        want = _recalls(plain)
    uri = f"milvus://{tmp_path / 'vectors.db'}"
    with TestClient(create_app(_settings(vectors_artifact, tmp_path / "b.sqlite", uri))) as moved:
        svc = _service(moved)
        assert {a.channel: a.filled for a in svc.vectors} == {name: True for name in SEMANTIC}
        channels = svc.live.artifact.pipeline.channels
        for name in SEMANTIC:
            index = channels[name].index
            assert index.kind == "milvus" and index.index_type == "FLAT"
            assert len(index) == len(svc.live.artifact.items)
        got = _recalls(moved)
    for name in SEMANTIC:
        _same_ids(got[name], want[name])
    _same_ids(got["query_channel"], want["query_channel"])
    # fused by rank: the same candidates, up to an order swap of two tied items
    for key in (*USERS, "query"):
        assert len(set(got[key]) ^ set(want[key])) <= 2, key
        assert np.mean(np.array(got[key]) == np.array(want[key])) > 0.8, key


def test_second_replica_reuses_the_collection_and_sees_added_items(vectors_artifact, tmp_path,
                                                                   monkeypatch):
    monkeypatch.setenv("LLMRECALL_API_KEY", API_KEY)
    uri = f"milvus://{tmp_path / 'vectors.db'}"
    state = tmp_path / "shared.sqlite"
    with TestClient(create_app(_settings(vectors_artifact, state, uri, shared_state=True))) as a, \
            TestClient(create_app(_settings(vectors_artifact, state, uri,
                                            shared_state=True))) as b:  # noqa: E127
        first, second = _service(a), _service(b)
        assert [x.filled for x in first.vectors] == [True, True]
        assert [x.filled for x in second.vectors] == [False, False]  # reused, not refilled
        assert [x.collection for x in first.vectors] == [x.collection for x in second.vectors]
        n_items = len(first.live.artifact.items)

        put = a.put("/v1/items", json={"items": [NEW]}, headers=WRITE)
        assert put.status_code == 200 and put.json() == {"added": 1, "updated": 0}
        # before b has applied the change: the collection b searches already holds it
        index = second.live.artifact.pipeline.channels["semantic_user"].index
        assert len(index) == n_items + 1 and n_items in index.ids
        vector = index.vectors(np.array([n_items]))
        hits, _ = index.search(vector, 1)
        assert hits[0, 0] == n_items
        # and b's answers have it (its vocabulary learns the id from the change log)
        body = b.post("/v1/recall", json={"query": "badger detective quantum physics",
                                          "k": 5}).json()
        assert [c["item_id"] for c in body["candidates"]][:1] == ["vec-new"]


def _start(settings: ServeSettings) -> None:
    svc = Service(settings)
    try:
        asyncio.run(svc.start())
    finally:
        svc.engine.shutdown()
        svc.store.close()


def test_bad_or_unreachable_vectors_is_a_config_error(vectors_artifact, tmp_path, monkeypatch):
    for bad in ("ftp://host:1", "vectors.sqlite", "milvus://"):
        with pytest.raises(ConfigError, match=r"vectors.*milvus URI"):
            _settings(vectors_artifact, tmp_path / "s.sqlite", bad)
    with pytest.raises(ConfigError, match="Milvus Lite file"):
        _settings(vectors_artifact, tmp_path / "s.sqlite", f"{tmp_path}/v.db", workers=2)
    monkeypatch.delenv("LLMRECALL_TEST_UNSET_VECTORS", raising=False)
    with pytest.raises(ConfigError, match=r"\[state\] vectors names the environment variable"):
        _start(_settings(vectors_artifact, tmp_path / "s.sqlite", "$LLMRECALL_TEST_UNSET_VECTORS"))
    with socket.socket() as s:  # a loopback port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ConfigError, match=r"\[state\] vectors: cannot connect to Milvus"):
        _start(_settings(vectors_artifact, tmp_path / "s.sqlite", f"milvus://127.0.0.1:{port}"))


def test_replicas_filling_together_share_the_first_complete_collection(tmp_path, monkeypatch):
    """Replica A is still filling its copy when replica B completes and names its own: A's
    alias is refused, A drops its copy and searches B's; nothing half-filled is ever named."""
    from types import SimpleNamespace

    from llmrecall.channels.semantic import SemanticUserInterest
    from llmrecall.index.milvus_index import MilvusIndex, _client
    from llmrecall.serve import vectors as vectors_module
    from llmrecall.serve.settings import StateSettings

    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)

    def replica():
        channel = SemanticUserInterest(index_kind="flat").fit_vectors(x, np.ones(300, np.float32))
        channel.name = "semantic_user"
        return SimpleNamespace(version="v1", pipeline=SimpleNamespace(
            channels={"semantic_user": channel}))

    state = StateSettings(vectors=f"milvus://{tmp_path / 'race.db'}")
    a, b = replica(), replica()
    flush = MilvusIndex.flush
    order: list[str] = []

    def flush_while_b_completes(self):
        if not order:  # A's fill: B starts, fills and names its copy meanwhile
            order.append("a-filling")
            order.append(("b", vectors_module.attach_vectors(b, state)))
        flush(self)

    monkeypatch.setattr(MilvusIndex, "flush", flush_while_b_completes)
    got_a = vectors_module.attach_vectors(a, state)
    (_, got_b), = [o for o in order if isinstance(o, tuple)]
    assert [g.filled for g in got_b] == [True] and [g.filled for g in got_a] == [False]
    assert got_a[0].collection == got_b[0].collection
    # A's copy is gone; the one collection left is B's, named by the alias
    client = _client(state.resolved_vectors())
    assert len(client.list_collections()) == 1
    assert client.describe_alias(got_a[0].collection)["collection_name"] == \
        client.list_collections()[0]
    index_a = a.pipeline.channels["semantic_user"].index
    assert index_a.kind == "milvus" and len(index_a) == 300
