"""Semantic channels fitted from precomputed item vectors, with index parameters."""

from __future__ import annotations

import numpy as np
import pytest

from llmrecall.channels.registry import load_channel
from llmrecall.channels.semantic import SemanticItemToItem, SemanticUserInterest
from llmrecall.data.dataset import Histories, Interactions
from llmrecall.errors import ConfigError, DataError
from llmrecall.index import VectorIndex


def _catalog(n=3000, d=32, topics=30, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((topics, d)).astype(np.float32)
    topic = rng.integers(0, topics, n)
    x = centers[topic] + 0.3 * rng.standard_normal((n, d)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), topic


def _history(topic, n_users=40, length=12, seed=1):
    """User u reads ``length`` items of topic u % 30."""
    rng = np.random.default_rng(seed)
    items = [rng.choice(np.flatnonzero(topic == u % 30), length, replace=False)
             for u in range(n_users)]
    log = Interactions.build(user=np.repeat(np.arange(n_users), length),
                             item=np.concatenate(items), time=np.arange(n_users * length))
    return Histories.from_interactions(log, n_users, len(topic))


@pytest.mark.parametrize("cls", [SemanticItemToItem, SemanticUserInterest])
def test_fit_vectors_with_index_params(cls, tmp_path):
    x, topic = _catalog()
    h = _history(topic)
    params = {"hnsw_m": 12, "ef_construction": 40, "ef_search": 64}
    channel = cls(index_kind="hnsw", index_params=params).fit_vectors(x, np.ones(len(x), np.float32))
    assert (channel.index.kind, channel.index.hnsw_m, channel.index.ef_construction) == \
        ("hnsw", 12, 40)
    users = np.arange(40, dtype=np.int32)
    got = channel.recall(users, 10, h)
    assert (topic[got.ids] == (users % 30)[:, None]).mean() >= 0.95
    assert not any(np.isin(got.ids[u], h.of(u)).any() for u in users)
    loaded = load_channel(channel.save(tmp_path / "ch"))
    assert loaded.index_params == params and loaded.index.hnsw_m == 12
    np.testing.assert_array_equal(loaded.recall(users, 10, h).ids, got.ids)


def test_channels_share_one_index():
    x, topic = _catalog()
    h = _history(topic)
    flat = VectorIndex(x.shape[1], "flat")
    flat.add(np.arange(len(x)), x)
    pop = np.ones(len(x), np.float32)
    shared = SemanticUserInterest().fit_vectors(x, pop, index=flat)
    own = SemanticUserInterest(index_kind="flat").fit_vectors(x, pop)
    assert shared.index is flat
    users = np.arange(40, dtype=np.int32)
    np.testing.assert_array_equal(shared.recall(users, 20, h).ids, own.recall(users, 20, h).ids)


def test_bad_vectors_and_params():
    x, _ = _catalog(n=200)
    with pytest.raises(ConfigError, match="unknown index_params.*'efsearch'"):
        SemanticItemToItem(index_params={"efsearch": 10})
    with pytest.raises(DataError, match="float32"):
        SemanticItemToItem().fit_vectors(x.astype(np.float64), np.ones(200, np.float32))
    with pytest.raises(DataError, match="item_popularity"):
        SemanticItemToItem().fit_vectors(x, np.ones(199, np.float32))
    small = VectorIndex(x.shape[1], "flat")
    small.add(np.arange(100), x[:100])
    with pytest.raises(DataError, match="index holds 100"):
        SemanticItemToItem().fit_vectors(x, np.ones(200, np.float32), index=small)


@pytest.mark.parametrize("cls", [SemanticItemToItem, SemanticUserInterest])
def test_dense_search_equals_the_exact_index(cls, monkeypatch):
    """Small flat catalogs are searched by a matrix product; the answer must be FAISS's."""
    import llmrecall.channels.semantic as semantic

    x, topic = _catalog()
    h = _history(topic)
    allowed = np.random.default_rng(3).random(len(x) - 100) < 0.8  # shorter than the catalog
    # semantic_i2i without its neighbour table, which would answer both calls
    extra = {"table_width": 0} if cls is SemanticItemToItem else {}
    channel = cls(index_kind="flat", **extra).fit_vectors(x, np.ones(len(x), np.float32))
    users = np.arange(40, dtype=np.int32)
    dense = channel.recall(users, 50, h, allowed=allowed, explain=True)
    monkeypatch.setattr(semantic, "DENSE_SEARCH_LIMIT", 0)
    exact = channel.recall(users, 50, h, allowed=allowed, explain=True)
    np.testing.assert_allclose(dense.scores, exact.scores, rtol=1e-5, atol=1e-6)
    # the products are summed in another order than FAISS's, so a near-tie (within float
    # rounding) may swap; everything else is identical
    differ = dense.ids != exact.ids
    assert differ.mean() < 0.005
    tie = np.abs(dense.scores - exact.scores[:, -1:]) < 1e-5
    assert (tie | ~differ).all()
    same = ~differ
    np.testing.assert_array_equal(dense.evidence[same], exact.evidence[same])
    assert (dense.ids < len(allowed)).all() and allowed[dense.ids[dense.ids >= 0]].all()
