"""bench/milvus_vs_faiss.py on a 3,000-item catalog: what it measures and its exact top-k."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")

_PATH = Path(__file__).resolve().parents[2] / "bench" / "milvus_vs_faiss.py"
_spec = importlib.util.spec_from_file_location("milvus_vs_faiss", _PATH)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def test_exact_top_matches_a_full_sort():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((500, 8)).astype(np.float32)
    q = rng.standard_normal((5, 8)).astype(np.float32)
    want = np.argsort(-(q @ x.T), axis=1, kind="stable")[:, :20]
    np.testing.assert_array_equal(bench.exact_top(x, q, 20, chunk=64), want)
    assert bench.recall_at(want[:, ::-1], want) == 1.0
    assert bench.recall_at(np.full_like(want, -1), want) == 0.0


def test_run_on_a_small_catalog(tmp_path):
    out = bench.run(n_items=3000, n_clusters=30, n_queries=20, ef_search=(16, 256),
                    uri=f"milvus://{tmp_path}/b.db", log=lambda *_: None)
    assert out["n_items"] == 3000 and out["faiss_build_s"] >= 0 and out["milvus_build_s"] >= 0
    for backend in ("faiss", "milvus"):
        rows = out[backend]
        assert [r["ef"] for r in rows] == [16, 256]
        assert all(0 < r["p50_ms"] <= r["p99_ms"] for r in rows)
        assert rows[-1]["recall@200"] >= 0.9


def test_run_without_faiss_uses_the_million_bench_queries(tmp_path):
    """``--no-faiss`` (the 1M run): exact search is the reference and is timed, no FAISS
    HNSW is built; ``--query-pool`` keeps the first queries of the larger draw, the held-out
    queries of ``bench/vector_index_million.py``; the collection is searched once indexed."""
    out = bench.run(n_items=3000, n_clusters=30, n_queries=10, ef_search=(64,),
                    uri=f"milvus://{tmp_path}/b.db", faiss=False, query_pool=40,
                    checkpoint=tmp_path / "out.json", log=lambda *_: None)
    assert out["faiss"] == [] and "faiss_build_s" not in out
    assert out["exact"]["recall@200"] == 1.0 and out["exact"]["p50_ms"] > 0
    assert out["milvus_index_state"]["pending_index_rows"] == 0
    assert out["milvus_index_state"]["indexed_rows"] == 3000
    assert out["query_pool"] == 40 and out["milvus"][0]["recall@200"] >= 0.9
    assert (tmp_path / "out.json").is_file()
    mixture = bench.Mixture.make(30, seed=0)
    pool, _ = mixture.sample(40, seed=2)
    fewer, _ = mixture.sample(10, seed=2)
    assert not np.array_equal(pool[:10], fewer)  # why the pool matters: other draws
