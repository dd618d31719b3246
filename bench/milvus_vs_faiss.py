"""FAISS HNSW in-process against Milvus (Lite) through MilvusIndex: recall@200 and latency.

The catalog is the synthetic one of ``bench/vector_index_million.py`` (Gaussian clusters on
the unit sphere, dimension 384, float32, seeded); queries are held-out draws from the same
mixture. For each backend: build time (FAISS: add into the HNSW graph; Milvus: upsert, flush
(seals segments and indexes them), first search), recall@200 against exact search, and the
latency of one k=200 query (p50/p99 over ``--queries`` queries, one at a time).

Milvus Lite runs Milvus in-process on a local file: its timings are an API stand-in for a
cluster (the same client calls, through gRPC to a local process), not a proxy for a
cluster's speed. Milvus is searched only once its index covers every row (``describe_index``
reports no pending rows, or ``--index-wait`` seconds passed), so every ``ef`` pass searches
the same, indexed collection.

``--no-faiss`` skips the FAISS HNSW build (741 s at 1,000,000 items on 2 cores; its 1M
figures come from ``bench/vector_index_million.py`` on the same catalog) and times exact
(flat) search instead. ``--query-pool 1000`` draws the held-out queries as that bench does
(1,000 draws, seed 2) and uses the first ``--queries`` of them.

    PYTHONPATH=src python bench/milvus_vs_faiss.py --items 200000 --json results/milvus_vs_faiss.json
    PYTHONPATH=src python bench/milvus_vs_faiss.py --items 1000000 --no-faiss --query-pool 1000 \\
        --json results/milvus_vs_faiss_1m.json
"""

from __future__ import annotations

import os

# the machine is shared: cap BLAS / OpenMP threads before numpy and faiss load
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("OPENBLAS_NUM_THREADS", os.environ["OMP_NUM_THREADS"])

import argparse
import importlib.util
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from llmrecall.index import VectorIndex
from llmrecall.topk import topk

_spec = importlib.util.spec_from_file_location(
    "vector_index_million", Path(__file__).resolve().parent / "vector_index_million.py")
assert _spec is not None and _spec.loader is not None
_million = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_million)
Mixture, DIM = _million.Mixture, _million.DIM


def exact_top(x: np.ndarray, queries: np.ndarray, k: int, chunk: int = 50_000) -> np.ndarray:
    """int64[q, k] the exact top-``k`` ids (row numbers of ``x``) by inner product."""
    best_ids = np.full((len(queries), 0), -1, np.int64)
    best = np.full((len(queries), 0), -np.inf, np.float32)
    for s in range(0, len(x), chunk):
        sims = queries @ x[s:s + chunk].T
        ids = np.concatenate([best_ids, np.broadcast_to(np.arange(s, s + len(sims[0])),
                                                        sims.shape)], axis=1)
        cols, best = topk(np.concatenate([best, sims], axis=1), k)
        best_ids = np.take_along_axis(ids, cols, axis=1)
    return best_ids


def recall_at(got: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of each row of ``truth`` found in the same row of ``got``."""
    return float(np.mean([len(set(g[g >= 0].tolist()) & set(t.tolist())) / len(t)
                          for g, t in zip(got, truth)]))


def latency(index, queries: np.ndarray, k: int) -> tuple[np.ndarray, dict]:
    """Each query searched alone: the answers int64[q, k] and p50/p99 in ms."""
    out, times = [], []
    for row in queries:
        t = time.perf_counter()
        ids, _ = index.search(row[None], k)
        times.append(time.perf_counter() - t)
        out.append(ids[0])
    ms = np.array(times) * 1000
    return np.stack(out), {"p50_ms": round(float(np.percentile(ms, 50)), 3),
                           "p99_ms": round(float(np.percentile(ms, 99)), 3)}


def wait_indexed(milvus, timeout_s: float) -> dict:
    """Poll ``describe_index`` until no row waits for the index (or ``timeout_s``); its
    last answer (total / indexed / pending rows, state)."""
    client, name = milvus._client, milvus.collection
    index_name = client.list_indexes(name)[0]
    deadline = time.perf_counter() + timeout_s
    while True:
        info = client.describe_index(name, index_name)
        done = (int(info.get("pending_index_rows", 0)) == 0
                and int(info.get("indexed_rows", 0)) >= int(info.get("total_rows", 0)))
        if done or time.perf_counter() > deadline:
            return {key: info.get(key) for key in
                    ("total_rows", "indexed_rows", "pending_index_rows", "state")}
        time.sleep(2)


def run(n_items: int = 1_000_000, n_clusters: int = 3000, n_queries: int = 200, k: int = 200,
        hnsw_m: int = 32, ef_construction: int = 80, ef_search: tuple[int, ...] = (64, 256),
        uri: str | None = None, faiss: bool = True, query_pool: int | None = None,
        index_wait_s: float = 1800, log=print, checkpoint: Path | None = None) -> dict:
    """Build both indexes over one catalog and measure them; returns the result dict, also
    written to ``checkpoint`` (JSON) after every stage.

    ``faiss=False``: no FAISS HNSW; exact (flat ``VectorIndex``) search is timed instead.
    ``query_pool``: draw that many held-out queries (seed 2) and keep the first
    ``n_queries`` (the draws of ``bench/vector_index_million.py`` at ``query_pool=1000``).
    """
    from llmrecall.index.milvus_index import MilvusIndex

    def save() -> None:
        if checkpoint is not None:
            checkpoint.parent.mkdir(parents=True, exist_ok=True)
            checkpoint.write_text(json.dumps(result, indent=2))

    mixture = Mixture.make(n_clusters, seed=0)
    x, _ = mixture.sample(n_items, seed=1)
    queries, _ = mixture.sample(max(n_queries, query_pool or 0), seed=2)
    queries = np.ascontiguousarray(queries[:n_queries])
    ids = np.arange(n_items, dtype=np.int64)
    log(f"catalog {n_items:,} x {DIM}; exact top-{k} of {n_queries} queries")
    truth = exact_top(x, queries, k)
    result: dict = {"n_items": n_items, "dim": DIM, "clusters": n_clusters, "k": k,
                    "n_queries": n_queries, "query_pool": query_pool, "hnsw_m": hnsw_m,
                    "ef_construction": ef_construction, "loadavg_start": list(os.getloadavg()),
                    "faiss": [], "milvus": []}

    if faiss:
        faiss_index = VectorIndex(DIM, "hnsw", hnsw_m=hnsw_m, ef_construction=ef_construction)
        t = time.perf_counter()
        faiss_index.add(ids, x)
        result["faiss_build_s"] = round(time.perf_counter() - t, 1)
        log(f"faiss hnsw build {result['faiss_build_s']} s")
        for ef in ef_search:
            faiss_index.ef_search = ef
            got, lat = latency(faiss_index, queries, k)
            result["faiss"].append({"ef": ef, "recall@200": round(recall_at(got, truth), 4),
                                    **lat})
            log(f"faiss ef={ef}: {result['faiss'][-1]}")
        del faiss_index
    else:
        flat = VectorIndex(DIM, "flat")
        flat.add(ids, x)
        got, lat = latency(flat, queries, k)
        result["exact"] = {"recall@200": round(recall_at(got, truth), 4), **lat}
        log(f"exact (flat): {result['exact']}")
        del flat
    save()

    with tempfile.TemporaryDirectory() as tmp:
        milvus = MilvusIndex(DIM, uri or f"milvus://{tmp}/bench.db", "bench_hnsw",
                             index_type="HNSW", replace=True,
                             build_params={"M": hnsw_m, "efConstruction": ef_construction})
        t = time.perf_counter()
        milvus.add(ids, x)
        result["milvus_insert_s"] = round(time.perf_counter() - t, 1)
        milvus.flush()  # seals the segments and builds their HNSW index
        milvus.search(queries[:1], k)
        result["milvus_build_s"] = round(time.perf_counter() - t, 1)
        log(f"milvus insert {result['milvus_insert_s']} s, searchable after "
            f"{result['milvus_build_s']} s")
        result["milvus_index_state"] = wait_indexed(milvus, index_wait_s)
        result["milvus_indexed_s"] = round(time.perf_counter() - t, 1)
        log(f"milvus index {result['milvus_index_state']} after {result['milvus_indexed_s']} s")
        save()
        for ef in ef_search:
            milvus.search_params = {"ef": ef}
            got, lat = latency(milvus, queries, k)
            result["milvus"].append({"ef": ef, "recall@200": round(recall_at(got, truth), 4),
                                     **lat})
            log(f"milvus ef={ef}: {result['milvus'][-1]}")
            save()
        milvus._client.drop_collection(milvus.collection)
    result["loadavg_end"] = list(os.getloadavg())
    save()
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--clusters", type=int, default=3000)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--ef", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--uri", default=None, help="Milvus URI (default: Milvus Lite in a temp dir)")
    ap.add_argument("--no-faiss", action="store_true",
                    help="skip the FAISS HNSW build; time exact (flat) search instead")
    ap.add_argument("--query-pool", type=int, default=None,
                    help="draw this many held-out queries and use the first --queries")
    ap.add_argument("--index-wait", type=float, default=1800,
                    help="seconds to wait for Milvus to index every row before searching")
    ap.add_argument("--json", type=Path, default=None,
                    help="write the results here (also after every stage)")
    args = ap.parse_args()
    out = run(args.items, args.clusters, args.queries, ef_search=tuple(args.ef), uri=args.uri,
              faiss=not args.no_faiss, query_pool=args.query_pool, index_wait_s=args.index_wait,
              checkpoint=args.json)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
