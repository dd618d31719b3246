"""MilvusIndex on Milvus Lite (a temp file): the answers of FAISS's exact index, add/remove
seen by the next search, filters past Milvus's fetch cap, persistence, semantic channels
served through it, and the errors for a bad URI or a missing collection."""

from __future__ import annotations

import socket

import numpy as np
import pytest
import scipy.sparse as sp

pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")

from llmrecall.channels.registry import load_channel  # noqa: E402
from llmrecall.channels.semantic import SemanticItemToItem, SemanticUserInterest  # noqa: E402
from llmrecall.data.dataset import Histories, Interactions  # noqa: E402
from llmrecall.errors import ConfigError, DataError  # noqa: E402
from llmrecall.index import VectorIndex, VectorSearch, load_index, milvus_index  # noqa: E402
from llmrecall.index.milvus_index import MilvusIndex, parse_uri  # noqa: E402


def _data(n=2000, d=24, q=30, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    queries = rng.standard_normal((q, d)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    ids = rng.permutation(10 * n)[:n].astype(np.int64)  # sparse, unordered ids
    return ids, x, queries


def _same_answer(got, want, tol=1e-5):
    """Scores within ``tol``; ids equal wherever the score is not tied (within ``tol``) with
    a neighbour in the ranking, where either order is right."""
    (gi, gs), (wi, ws) = got, want
    assert gi.shape == wi.shape and gi.dtype == np.int64 and gs.dtype == np.float32
    np.testing.assert_array_equal(gi < 0, wi < 0)
    real = wi >= 0
    np.testing.assert_allclose(gs[real], ws[real], atol=tol, rtol=0)
    assert np.isneginf(gs[~real]).all()
    padded = np.where(real, ws, -1e9).astype(np.float64)
    gap = np.abs(np.diff(padded, axis=1))
    tied = np.zeros(wi.shape, bool)
    tied[:, 1:] |= gap < tol
    tied[:, :-1] |= gap < tol
    assert (~tied).sum() > 0.9 * real.sum()  # the comparison compares something
    np.testing.assert_array_equal(gi[~tied], wi[~tied])


@pytest.fixture
def uri(tmp_path):
    return f"milvus://{tmp_path / 'vectors.db'}"


def _pair(uri, ids, x, name="items"):
    flat = VectorIndex(x.shape[1], "flat")
    flat.add(ids, x)
    milvus = MilvusIndex(x.shape[1], uri, name)
    milvus.add(ids, x)
    return flat, milvus


def test_flat_collection_answers_as_faiss_flat(uri):
    ids, x, q = _data()
    flat, milvus = _pair(uri, ids, x)
    assert isinstance(milvus, VectorSearch) and isinstance(flat, VectorSearch)
    assert len(milvus) == len(flat) == len(ids)
    np.testing.assert_array_equal(milvus.ids, np.sort(ids))
    _same_answer(milvus.search(q, 50), flat.search(q, 50))
    # per-query exclusions (both forms) and an allow mask
    rng = np.random.default_rng(3)
    banned = [rng.choice(ids, 40, replace=False) for _ in range(len(q))]
    _same_answer(milvus.search(q, 20, exclude=banned), flat.search(q, 20, exclude=banned))
    matrix = sp.csr_matrix((np.ones(40 * len(q)), (np.repeat(np.arange(len(q)), 40),
                                                   np.concatenate(banned))),
                           shape=(len(q), int(ids.max()) + 1))
    _same_answer(milvus.search(q, 20, exclude=matrix), flat.search(q, 20, exclude=matrix))
    allowed = rng.random(int(ids.max()) - 100) < 0.3  # the top 100 ids are past its end
    _same_answer(milvus.search(q, 20, allowed=allowed), flat.search(q, 20, allowed=allowed))
    # more than the collection holds: padded -1 / -inf like FAISS
    small = np.zeros(int(ids.max()) + 1, bool)
    small[ids[:5]] = True
    got = milvus.search(q, 8, allowed=small)
    _same_answer(got, flat.search(q, 8, allowed=small))
    assert (got[0][:, 5:] == -1).all()


def test_filters_past_the_fetch_cap_lose_nothing(uri, monkeypatch):
    """A query whose exclusions outnumber what one Milvus search may return is searched
    with the exclusions as a Milvus filter expression."""
    monkeypatch.setattr(milvus_index, "MAX_FETCH", 64)
    ids, x, q = _data(n=1000, q=6)
    flat, milvus = _pair(uri, ids, x)
    truth = flat.search(q, 30)[0]
    banned = [row[:25] for row in truth]  # 25 excluded among the 30 nearest
    banned[0] = np.concatenate([truth[0], ids[:200]])  # more exclusions than the cap
    _same_answer(milvus.search(q, 10, exclude=banned), flat.search(q, 10, exclude=banned))
    allowed = np.zeros(int(ids.max()) + 1, bool)
    allowed[ids[::7]] = True  # the nearest hits are mostly not allowed
    _same_answer(milvus.search(q, 10, allowed=allowed), flat.search(q, 10, allowed=allowed))


def test_add_replace_and_remove_are_seen_by_the_next_search(uri):
    ids, x, q = _data(n=800)
    flat, milvus = _pair(uri, ids, x)
    # a new id placed on the first query: found first
    new_id = int(ids.max()) + 1
    for index in (flat, milvus):
        index.add(np.array([new_id]), q[:1])
    got = milvus.search(q[:1], 3)
    assert got[0][0, 0] == new_id and got[1][0, 0] == pytest.approx(1.0, abs=1e-5)
    # replace an existing id's vector with the second query: same count, found first
    for index in (flat, milvus):
        index.add(ids[:1], q[1:2])
    assert len(milvus) == len(flat) == len(ids) + 1
    assert milvus.search(q[1:2], 1)[0][0, 0] == ids[0]
    np.testing.assert_allclose(milvus.vectors(ids[:1]), q[1:2], atol=1e-6)
    # remove: the count of those that were there, and gone from the next search
    gone = np.concatenate([flat.search(q, 5)[0].ravel(), [10**9]])
    removed = milvus.remove(gone)
    assert removed == flat.remove(gone) == len(np.unique(gone)) - 1
    assert len(milvus) == len(flat) and not np.isin(milvus.search(q, 50)[0], gone).any()
    _same_answer(milvus.search(q, 50), flat.search(q, 50))
    assert milvus.remove(gone) == 0


def test_save_names_the_collection_and_load_reconnects(uri, tmp_path):
    ids, x, q = _data(n=500)
    _, milvus = _pair(uri, ids, x)
    milvus.search_params = {"nprobe": 4}
    saved = milvus.save(tmp_path / "artifact" / "index")
    assert [p.name for p in saved.iterdir()] == ["index.json"]  # the vectors stay in Milvus
    loaded = load_index(saved)
    assert isinstance(loaded, MilvusIndex)
    assert (loaded.collection, loaded.dim, loaded.search_params) == ("items", 24, {"nprobe": 4})
    np.testing.assert_array_equal(loaded.search(q, 10)[0], milvus.search(q, 10)[0])
    # a FAISS index saved beside it still loads as FAISS
    flat = VectorIndex(24, "flat")
    flat.add(ids, x)
    assert isinstance(load_index(flat.save(tmp_path / "faiss")), VectorIndex)
    # the collection dropped since: the load says which one is missing
    milvus._client.drop_collection("items")
    with pytest.raises(DataError, match="collection 'items' does not exist"):
        load_index(saved)


def test_bad_uri_and_collection_errors(uri, tmp_path, monkeypatch):
    for bad in ("postgres://x", "milvus://", "ftp://h:1", "http://host:port/extra/path", "x.sqlite"):
        with pytest.raises(ConfigError, match="milvus URI"):
            MilvusIndex(4, bad, "c")
    assert parse_uri("milvus://db.example:19530") == "http://db.example:19530"
    assert parse_uri(f"{tmp_path}/v.db") == str(tmp_path / "v.db")
    with pytest.raises(ConfigError, match="environment variable"):
        MilvusIndex(4, "$LLMRECALL_TEST_UNSET_MILVUS", "c")
    monkeypatch.setenv("LLMRECALL_TEST_MILVUS", uri)
    from_env = MilvusIndex(4, "$LLMRECALL_TEST_MILVUS", "from_env")
    meta = (from_env.save(tmp_path / "env") / "index.json").read_text()
    assert "$LLMRECALL_TEST_MILVUS" in meta and "vectors.db" not in meta
    with pytest.raises(ConfigError, match="collection name"):
        MilvusIndex(4, uri, "1-bad name")
    with pytest.raises(DataError, match="dim 4, expected 8"):
        MilvusIndex(8, uri, "from_env")
    with socket.socket() as s:  # a loopback port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ConfigError, match=f"cannot connect to Milvus at http://127.0.0.1:{port}"):
        MilvusIndex(4, f"http://127.0.0.1:{port}", "c")


def _catalog(n=1500, d=32, topics=30, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((topics, d)).astype(np.float32)
    topic = rng.integers(0, topics, n)
    x = centers[topic] + 0.3 * rng.standard_normal((n, d)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), topic


def _history(topic, n_users=40, length=12, seed=1):
    rng = np.random.default_rng(seed)
    items = [rng.choice(np.flatnonzero(topic == u % 30), length, replace=False)
             for u in range(n_users)]
    log = Interactions.build(user=np.repeat(np.arange(n_users), length),
                             item=np.concatenate(items), time=np.arange(n_users * length))
    return Histories.from_interactions(log, n_users, len(topic))


@pytest.mark.parametrize("cls", [SemanticItemToItem, SemanticUserInterest])
def test_semantic_channel_through_milvus_answers_as_through_faiss(cls, uri, tmp_path):
    x, topic = _catalog()
    h = _history(topic)
    pop = np.ones(len(x), np.float32)
    extra = {"table_width": 0} if cls is SemanticItemToItem else {}  # search per history item
    faiss = cls(index_kind="flat", **extra).fit_vectors(x, pop)
    milvus = cls(index_kind="milvus", index_params={"uri": uri}, **extra).fit_vectors(x, pop)
    assert milvus.index.kind == "milvus" and len(milvus.index) == len(x)
    users = np.arange(40, dtype=np.int32)
    allowed = np.arange(len(x)) % 5 != 0
    for kw in ({}, {"allowed": allowed}, {"exclude_seen": False}):
        want = faiss.recall(users, 50, h, explain=True, **kw)
        got = milvus.recall(users, 50, h, explain=True, **kw)
        overlap = np.mean([len(set(g) & set(w)) / len(w) for g, w in zip(got.ids, want.ids)])
        assert overlap == 1.0
        np.testing.assert_allclose(np.sort(got.scores, axis=1), np.sort(want.scores, axis=1),
                                   atol=1e-5)
    # the artifact names the collection; the loaded channel searches it
    loaded = load_channel(milvus.save(tmp_path / "channel"))
    assert loaded.index.collection == milvus.index.collection
    np.testing.assert_array_equal(loaded.recall(users, 50, h).ids, milvus.recall(users, 50, h).ids)
    # a second fit makes its own collection: the first stays for whoever still serves it
    refit = cls(index_kind="milvus", index_params={"uri": uri}, **extra).fit_vectors(x, pop)
    assert refit.index.collection != milvus.index.collection and len(milvus.index) == len(x)


def test_milvus_index_params_are_checked(uri):
    with pytest.raises(ConfigError, match="needs index_params.uri"):
        SemanticUserInterest(index_kind="milvus")
    with pytest.raises(ConfigError, match="unknown index_params"):
        SemanticUserInterest(index_kind="milvus", index_params={"uri": uri, "hnsw_m": 8})
    with pytest.raises(ConfigError, match="unknown index_params"):
        SemanticUserInterest(index_kind="flat", index_params={"uri": uri})
