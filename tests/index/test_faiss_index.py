"""VectorIndex: exact search against numpy, HNSW/IVF recall, removal, filters, persistence."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from llmrecall.errors import ConfigError, DataError
from llmrecall.index import VectorIndex, merge_hits


def _data(n=3000, d=24, q=40, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    queries = rng.standard_normal((q, d)).astype(np.float32)
    ids = rng.permutation(10 * n)[:n].astype(np.int64)  # sparse, unordered ids
    return ids, x, queries


def _brute(ids, x, queries, k, keep=None):
    scores = queries @ x.T
    if keep is not None:
        scores = np.where(keep, scores, -np.inf)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return ids[order], np.take_along_axis(scores, order, axis=1)


def _recall(got, truth):
    return np.mean([len(set(g[g >= 0]) & set(t)) / len(t) for g, t in zip(got, truth)])


def test_flat_matches_brute_force():
    ids, x, q = _data()
    index = VectorIndex(x.shape[1], "flat")
    index.add(ids, x)
    got_ids, got_scores = index.search(q, 10)
    want_ids, want_scores = _brute(ids, x, q, 10)
    np.testing.assert_array_equal(got_ids, want_ids)
    np.testing.assert_allclose(got_scores, want_scores, rtol=1e-5, atol=1e-5)
    assert got_ids.dtype == np.int64 and got_scores.dtype == np.float32


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_approximate_recall_at_10(kind):
    ids, x, q = _data(n=5000, q=100)
    index = VectorIndex(x.shape[1], kind, nlist=64, nprobe=32)
    index.add(ids, x)
    got, _ = index.search(q, 10)
    truth, _ = _brute(ids, x, q, 10)
    assert _recall(got, truth) >= 0.9


def test_search_breadth_can_change_after_build():
    """ef_search / nprobe set on a built index take effect on the next search."""
    ids, x, q = _data(n=4000, q=100)
    truth, _ = _brute(ids, x, q, 10)
    ivf = VectorIndex(x.shape[1], "ivf", nlist=64, nprobe=1)
    ivf.add(ids, x)
    coarse = _recall(ivf.search(q, 10)[0], truth)
    ivf.nprobe = 64  # every cell: exact
    assert _recall(ivf.search(q, 10)[0], truth) == 1.0 > coarse
    hnsw = VectorIndex(x.shape[1], "hnsw", hnsw_m=4, ef_construction=8, ef_search=10)
    hnsw.add(ids, x)
    narrow = _recall(hnsw.search(q, 10)[0], truth)
    hnsw.ef_search = 400
    assert _recall(hnsw.search(q, 10)[0], truth) > narrow


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_remove_and_re_add(kind):
    ids, x, q = _data(n=2000)
    index = VectorIndex(x.shape[1], kind, nlist=32, nprobe=32, rebuild_fraction=0.5)
    index.add(ids, x)
    gone = ids[:300]
    assert index.remove(np.concatenate([gone, [10**9]])) == 300
    assert len(index) == 1700 and not np.isin(gone, index.ids).any()
    got, _ = index.search(q, 50)
    assert not np.isin(got, gone).any()
    truth, _ = _brute(ids[300:], x[300:], q, 10)
    assert _recall(got[:, :10], truth) >= 0.9
    # re-adding an id replaces its vector: it is found under its new vector only
    index.add(ids[:1], -q[:1] / np.linalg.norm(q[:1]))
    index.add(ids[300:301], q[:1] / np.linalg.norm(q[:1]))
    top, _ = index.search(q[:1], 1)
    assert top[0, 0] == ids[300] and len(index) == 1701
    assert index.remove(ids[300:301]) == 1
    assert ids[300] not in index.search(q[:1], 20)[0]


def test_hnsw_rebuilds_after_many_deletions():
    ids, x, q = _data(n=1000)
    index = VectorIndex(x.shape[1], "hnsw", rebuild_fraction=0.2)
    index.add(ids, x)
    index.remove(ids[:100])
    assert index._index.ntotal == 1000 and len(index) == 900  # masked, not yet rebuilt
    index.remove(ids[100:250])
    assert index._index.ntotal == 750 and len(index) == 750  # rebuilt: mask emptied
    got, _ = index.search(q, 10)
    truth, _ = _brute(ids[250:], x[250:], q, 10)
    assert _recall(got, truth) >= 0.9


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_exclusions_and_allow_mask_are_exact(kind):
    ids, x, q = _data(n=1500, q=20)
    index = VectorIndex(x.shape[1], kind, ef_search=256)
    index.add(ids, x)
    rng = np.random.default_rng(1)
    # per-query exclusions: each query loses its own true top-30 plus random ids
    top30, _ = _brute(ids, x, q, 30)
    exclude = [np.concatenate([t, rng.choice(ids, 50)]) for t in top30]
    allowed = np.zeros(ids.max() + 1, bool)
    allowed[rng.choice(ids, 200, replace=False)] = True
    got, scores = index.search(q, 10, exclude=exclude, allowed=allowed)
    keep = np.stack([allowed[ids] & ~np.isin(ids, e) for e in exclude])
    want, _ = _brute(ids, x, q, 10, keep)
    assert _recall(got, want) >= (1.0 if kind == "flat" else 0.9)
    for row, e in zip(got, exclude):
        assert allowed[row].all() and not np.isin(row, e).any()
    # the same exclusions as a sparse matrix give the same answer
    rows = np.repeat(np.arange(len(q)), [len(e) for e in exclude])
    m = sp.csr_matrix((np.ones(len(rows)), (rows, np.concatenate(exclude))),
                      shape=(len(q), ids.max() + 1))
    got_sp, _ = index.search(q, 10, exclude=m, allowed=allowed)
    np.testing.assert_array_equal(got_sp, got)


def test_filters_that_leave_few_hits_pad():
    ids, x, q = _data(n=500, q=3)
    index = VectorIndex(x.shape[1], "flat")
    index.add(ids, x)
    allowed = np.zeros(ids.max() + 1, bool)
    allowed[ids[:4]] = True
    got, scores = index.search(q, 10, allowed=allowed)
    assert ((got >= 0).sum(axis=1) == 4).all()
    assert (got[:, 4:] == -1).all() and np.isneginf(scores[:, 4:]).all()
    empty = VectorIndex(x.shape[1])
    e_ids, e_scores = empty.search(q, 5)
    assert (e_ids == -1).all() and np.isneginf(e_scores).all()


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_save_load_round_trip(kind, tmp_path):
    ids, x, q = _data(n=1000)
    index = VectorIndex(x.shape[1], kind, nlist=16)
    index.add(ids, x)
    index.remove(ids[:10])
    index.save(tmp_path / "ix")
    assert sorted(p.name for p in (tmp_path / "ix").iterdir()) == \
        ["deleted.npy", "index.faiss", "index.json"]
    loaded = VectorIndex.load(tmp_path / "ix")
    a, b = index.search(q, 10), loaded.search(q, 10)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_allclose(a[1], b[1])
    assert len(loaded) == 990


def test_bad_input_is_named():
    index = VectorIndex(8)
    with pytest.raises(DataError, match=r"shape \[n, 8\]"):
        index.add(np.arange(2), np.zeros((2, 7), np.float32))
    with pytest.raises(DataError, match="NaN"):
        index.add(np.arange(1), np.full((1, 8), np.nan, np.float32))
    with pytest.raises(DataError, match=">= 0"):
        index.add(np.array([-1]), np.zeros((1, 8), np.float32))
    with pytest.raises(DataError, match="repeat"):
        index.add(np.array([3, 3]), np.zeros((2, 8), np.float32))
    with pytest.raises(ConfigError, match="unknown index kind"):
        VectorIndex(8, "lsh")
    with pytest.raises(DataError, match="ivf index needs"):
        VectorIndex(8, "ivf", nlist=16).add(np.arange(3), np.zeros((3, 8), np.float32))
    with pytest.raises(DataError, match="missing"):
        VectorIndex.load("/nonexistent/index")


def test_merge_hits_matches_a_dictionary_merge():
    rng = np.random.default_rng(3)
    q, h, n_rows = 30, 6, 7
    owner = rng.integers(0, n_rows, q)
    ids = rng.integers(-1, 15, (q, h))
    scores = np.where(ids >= 0, rng.random((q, h)), -np.inf).astype(np.float32)
    evidence = np.arange(q) + 100
    top, vals, ev = merge_hits(owner, ids, scores, evidence, n_rows, 5)
    for r in range(n_rows):
        best: dict[int, tuple[float, int]] = {}
        for j in np.flatnonzero(owner == r):
            for i, s in zip(ids[j], scores[j]):
                if i >= 0 and (i not in best or s > best[i][0]):
                    best[int(i)] = (float(s), int(evidence[j]))
        want = sorted(best.items(), key=lambda kv: (-kv[1][0], kv[0]))[:5]
        got = [(int(i), (float(s), int(e))) for i, s, e in zip(top[r], vals[r], ev[r]) if i >= 0]
        assert [w[0] for w in want] == [g[0] for g in got]
        np.testing.assert_allclose([w[1][0] for w in want], [g[1][0] for g in got], rtol=1e-6)
        assert [w[1][1] for w in want] == [g[1][1] for g in got]
