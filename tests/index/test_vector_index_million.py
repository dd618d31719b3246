"""bench/vector_index_million.py on a 5,000-item catalog: the data it makes and what it measures."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

_PATH = Path(__file__).resolve().parents[2] / "bench" / "vector_index_million.py"
_spec = importlib.util.spec_from_file_location("vector_index_million", _PATH)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def test_synthetic_catalog_is_clustered_unit_vectors():
    mixture = bench.Mixture.make(40, seed=1)
    x, cluster = bench.Mixture.sample(mixture, 4000, seed=2)
    assert x.dtype == np.float32 and x.shape == (4000, bench.DIM)
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    same = cluster[:, None] == cluster[None, :500]
    sims = x @ x[:500].T
    # members of a cluster are far more alike than members of different clusters
    assert sims[same & (sims < 0.9999)].mean() > 0.2 > abs(sims[~same].mean()) * 10


def test_histories_draw_from_at_most_three_clusters():
    cluster = np.random.default_rng(0).integers(0, 60, 5000).astype(np.int32)
    h = bench.make_histories(cluster, 200, seed=3)
    assert h.n_users == 200 and h.n_items == 5000
    assert ((h.lengths() >= 20) & (h.lengths() <= 50)).all()
    assert max(len(np.unique(cluster[h.of(u)])) for u in range(200)) <= 3


def test_overlap_counts_shared_ids_per_row():
    truth = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    got = np.array([[4, 3, 9, -1], [5, 6, 7, 8]])
    assert bench.overlap(got, truth) == pytest.approx((2 / 4 + 1) / 2)


@pytest.mark.slow
def test_run_on_a_small_catalog(tmp_path):
    out = bench.run(n_items=5000, n_clusters=50, n_users=300, n_queries=200, n_latency=20,
                    n_single=5, n_batches=2, ef_search=(16, 512), ivf=True, nlist=32,
                    nprobe=(1, 32), log=lambda *_: None, checkpoint=tmp_path / "r.json")
    assert json.loads((tmp_path / "r.json").read_text()) == json.loads(json.dumps(out))
    hnsw, ivf = out["hnsw"], out["ivf"]
    assert hnsw["build_s"] > 0 and hnsw["bytes"] > 5000 * bench.DIM * 4
    low, high = hnsw["settings"]
    assert high["recall@10"] >= 0.9 and high["recall@200"] >= 0.9
    assert high["recall@200"] >= low["recall@200"] - 0.01
    for row in hnsw["settings"] + ivf["settings"]:
        assert row["search_k200_batch1"]["p50_ms"] > 0 and row["queries_per_s_batched"] > 0
        for kind in ("semantic_i2i", "semantic_user"):
            assert row[kind]["batch1"]["n"] == 5 and row[kind]["batch32"]["p99_ms"] > 0
    assert high["semantic_i2i"]["top200_overlap_with_exact"] >= 0.9
    assert high["semantic_user"]["top200_overlap_with_exact"] >= 0.9
    # IVF visiting every cell is exact search: the channels return the exact answers
    coarse, every_cell = ivf["settings"]
    assert every_cell["recall@10"] >= 0.999 and every_cell["recall@200"] >= 0.999
    assert every_cell["semantic_i2i"]["top200_overlap_with_exact"] >= 0.999
    assert coarse["recall@200"] < every_cell["recall@200"]
