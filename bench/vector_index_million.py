"""The semantic channels over a 1,000,000-item catalog: HNSW (and IVF) latency and recall.

The catalog is SYNTHETIC: embedding a million texts with a real model is out of reach on a
CPU, so item vectors are drawn from a mixture of Gaussian clusters of varying size and
spread (dimension 384, the width of the default embedder), L2-normalised, float32, seeded.
User histories are synthetic too: each user's items come from one to three clusters.

Measured, for each approximate index kind and each search breadth (HNSW ``ef_search``, IVF
``nprobe``):

* build time, index size, process RSS;
* raw ``VectorIndex.search`` (k=200) latency for one query, p50/p99, and batch throughput;
* recall@10 and recall@200 of the index against exact (flat) search on held-out queries
  drawn from the same mixture;
* ``semantic_i2i.recall`` and ``semantic_user.recall`` (k=200, history excluded) latency for
  one user and for batches of 32, p50/p99, users/s, and how many of the channel's top 200
  the exact index would also return (the channel's own recall path on both indexes).

    PYTHONPATH=src python bench/vector_index_million.py --json results/vector_index_1m.json
    PYTHONPATH=src python bench/vector_index_million.py --items 100000 --ivf   # smaller, + IVF
"""

from __future__ import annotations

import os

# the machine is shared: cap BLAS / OpenMP threads before numpy and faiss load
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("OPENBLAS_NUM_THREADS", os.environ["OMP_NUM_THREADS"])
os.environ.setdefault("MKL_NUM_THREADS", os.environ["OMP_NUM_THREADS"])

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from llmrecall.channels.semantic import SemanticItemToItem, SemanticUserInterest
from llmrecall.data.dataset import Histories, Interactions
from llmrecall.index import VectorIndex

DIM = 384


# ---- synthetic catalog and users ----------------------------------------------------------
@dataclass
class Mixture:
    """Gaussian clusters on the unit sphere.

    Attributes:
        centers: float32[C, d] unit cluster centres.
        spread: float32[C] per-cluster noise scale (norm of the noise relative to the centre).
        weights: float64[C] cluster probabilities (uneven: a few large clusters, many small).
    """

    centers: np.ndarray
    spread: np.ndarray
    weights: np.ndarray

    @classmethod
    def make(cls, n_clusters: int, dim: int = DIM, seed: int = 0) -> Mixture:
        rng = np.random.default_rng(seed)
        centers = rng.standard_normal((n_clusters, dim), dtype=np.float32)
        centers /= np.linalg.norm(centers, axis=1, keepdims=True)
        # noise norm 0.4..1.6 x the centre: tight clusters next to diffuse ones
        spread = rng.uniform(0.4, 1.6, n_clusters).astype(np.float32)
        weights = rng.dirichlet(np.full(n_clusters, 0.7))
        return cls(centers, spread, weights)

    def sample(self, n: int, seed: int, chunk: int = 100_000) -> tuple[np.ndarray, np.ndarray]:
        """``vectors float32[n, d]`` unit rows and ``cluster int32[n]``; built in chunks so
        the float32 noise never needs more than one chunk of extra memory."""
        rng = np.random.default_rng(seed)
        cluster = rng.choice(len(self.weights), size=n, p=self.weights).astype(np.int32)
        d = self.centers.shape[1]
        out = np.empty((n, d), np.float32)
        for s in range(0, n, chunk):
            c = cluster[s:s + chunk]
            noise = rng.standard_normal((len(c), d), dtype=np.float32)
            noise *= (self.spread[c] / np.sqrt(d))[:, None]
            x = self.centers[c] + noise
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            out[s:s + chunk] = x
        return out, cluster


def make_histories(cluster: np.ndarray, n_users: int, seed: int, min_len: int = 20,
                   max_len: int = 50, max_interests: int = 3) -> Histories:
    """Each user: ``min_len..max_len`` events over items of 1..``max_interests`` clusters
    (uniform within a cluster), times increasing. Vectorised over all events."""
    rng = np.random.default_rng(seed)
    n_items = len(cluster)
    by_cluster = np.argsort(cluster, kind="stable")  # items grouped by cluster
    n_clusters = int(cluster.max()) + 1
    size = np.bincount(cluster, minlength=n_clusters)
    start = np.concatenate([[0], np.cumsum(size)[:-1]])
    populated = np.flatnonzero(size > 0)
    interests = rng.choice(populated, size=(n_users, max_interests))
    n_int = rng.integers(1, max_interests + 1, n_users)
    lengths = rng.integers(min_len, max_len + 1, n_users)
    user = np.repeat(np.arange(n_users), lengths)
    pick = interests[user, (rng.random(len(user)) * n_int[user]).astype(np.int64)]
    item = by_cluster[start[pick] + (rng.random(len(user)) * size[pick]).astype(np.int64)]
    log = Interactions.build(user=user, item=item, time=np.arange(len(user), dtype=np.float64))
    return Histories.from_interactions(log, n_users, n_items)


# ---- measurement helpers ------------------------------------------------------------------
def rss_mb() -> tuple[float, float]:
    """(current RSS, peak RSS) of this process in MiB, from /proc/self/status."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines()
                  if line.startswith(("VmRSS", "VmHWM")))
    return (int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024)


def index_bytes(index: VectorIndex) -> int:
    """Bytes the faiss structure holds: vectors plus the HNSW graph or IVF id lists."""
    inner = index._index  # the faiss object (IndexIDMap2 around flat/HNSW, or IVF)
    if index.kind == "ivf":
        ivf = faiss.extract_index_ivf(inner)
        return ivf.ntotal * (index.dim * 4 + 8) + ivf.quantizer.ntotal * index.dim * 4
    base = faiss.downcast_index(inner.index)
    size = base.ntotal * (index.dim * 4 + 8)  # vectors + id map
    if index.kind == "hnsw":
        h = base.hnsw
        size += h.neighbors.size() * 4 + h.offsets.size() * 8 + h.levels.size() * 4
    return int(size)


def one_thread(fn, *args, **kwargs) -> tuple[object, float]:
    """:func:`timed` with faiss on one thread: a server answers one request per worker, and
    a lone query gains nothing from a second thread but waits for it on a busy machine."""
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        return timed(fn, *args, **kwargs)
    finally:
        faiss.omp_set_num_threads(threads)


def percentiles(seconds: list[float]) -> dict:
    ms = np.asarray(seconds) * 1000
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "mean_ms": float(ms.mean()), "n": len(ms)}


def timed(fn, *args, **kwargs) -> tuple[object, float]:
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t


def overlap(got: np.ndarray, truth: np.ndarray) -> float:
    """Mean over rows of |got ∩ truth| / |truth| (ids int[q, k], -1 = padding ignored)."""
    row = np.arange(len(truth), dtype=np.int64)[:, None]
    # one int64 key per (row, id): membership of every truth id in its row of ``got``
    got_keys = ((row << 40) | np.maximum(got, 0))[got >= 0]
    valid = truth >= 0
    hit = np.isin((row << 40) | np.maximum(truth, 0), got_keys) & valid
    return float((hit.sum(axis=1) / np.maximum(valid.sum(axis=1), 1)).mean())


def index_search_stats(index: VectorIndex, queries: np.ndarray, truth10: np.ndarray,
                       truth200: np.ndarray, n_latency: int, k: int = 200) -> dict:
    """Recall of ``index`` against exact top-10/top-200, single-query latency and throughput."""
    ids10, _ = index.search(queries, 10)
    (ids200, _), batch_s = timed(index.search, queries, k)
    lat = [one_thread(index.search, queries[i:i + 1], k)[1] for i in range(min(n_latency, len(queries)))]
    return {"recall@10": overlap(ids10, truth10), "recall@200": overlap(ids200, truth200),
            "search_k200_batch1": percentiles(lat),
            "queries_per_s_batched": len(queries) / batch_s}


def channel_stats(channel, users: np.ndarray, history: Histories, n_single: int,
                  n_batches: int, k: int = 200, batch: int = 32) -> tuple[dict, np.ndarray]:
    """Latency of ``channel.recall`` for one user and for batches of ``batch``; returns the
    stats and the top-``k`` ids of ``users[:n_batches * batch]`` (for the exact comparison)."""
    single = [one_thread(channel.recall, users[i:i + 1], k, history)[1] for i in range(n_single)]
    blocks, ids = [], []
    for b in range(n_batches):
        cands, s = timed(channel.recall, users[b * batch:(b + 1) * batch], k, history)
        blocks.append(s)
        ids.append(cands.ids)
    return ({"batch1": percentiles(single), f"batch{batch}": percentiles(blocks),
             "users_per_s_batch": batch * len(blocks) / sum(blocks)}, np.concatenate(ids))


# ---- the benchmark ------------------------------------------------------------------------
def run(n_items: int = 1_000_000, n_clusters: int = 3000, n_users: int = 10_000,
        n_queries: int = 1000, n_latency: int = 300, n_single: int = 100, n_batches: int = 10,
        hnsw_m: int = 32, ef_construction: int = 80, ef_search: tuple = (64, 256, 1024),
        ivf: bool = False, nlist: int = 1024, nprobe: tuple = (8, 32, 128), seed: int = 0,
        log=print, checkpoint: Path | None = None) -> dict:
    """Every measurement described in the module docstring; returns them as a dict, also
    written to ``checkpoint`` (JSON) after every stage so a long run that is stopped early
    keeps what it measured."""
    result: dict = {"items": n_items, "dim": DIM, "clusters": n_clusters, "users": n_users,
                    "queries": n_queries, "threads": faiss.omp_get_max_threads(),
                    "loadavg_start": list(os.getloadavg()), "vectors": "synthetic"}
    mixture = Mixture.make(n_clusters, DIM, seed)
    (vectors, cluster), gen_s = timed(mixture.sample, n_items, seed + 1)
    queries, _ = mixture.sample(n_queries, seed + 2)
    history = make_histories(cluster, n_users, seed + 3)
    popularity = np.bincount(history.items, minlength=n_items).astype(np.float32)
    users = np.random.default_rng(seed + 4).permutation(n_users).astype(np.int32)
    n_cmp = n_batches * 32
    result["generate_s"] = gen_s
    result["rss_after_data_mb"] = rss_mb()[0]
    log(f"catalog {n_items:,} x {DIM} in {gen_s:.1f}s; {n_users:,} users, "
        f"{len(history.items):,} events")

    # exact answers: flat index, then the channels' own recall path over it
    flat = VectorIndex(DIM, "flat")
    flat.add(np.arange(n_items, dtype=np.int64), vectors)
    truth, exact_s = timed(flat.search, queries, 200)
    truth200 = truth[0]
    truth10 = truth200[:, :10]
    exact_lat = [one_thread(flat.search, queries[i:i + 1], 200)[1] for i in range(min(20, n_queries))]
    result["flat"] = {"search_k200_batch1": percentiles(exact_lat),
                      "queries_per_s_batched": n_queries / exact_s, "bytes": index_bytes(flat)}
    exact_ids = {}
    for cls in (SemanticItemToItem, SemanticUserInterest):
        ch = cls(index_kind="flat").fit_vectors(vectors, popularity, index=flat)
        exact_ids[cls.kind] = ch.recall(users[:n_cmp], 200, history).ids
    log(f"flat: {result['flat']['search_k200_batch1']['p50_ms']:.1f} ms/query, exact answers ready")
    del flat, ch

    kinds = [("hnsw", {"hnsw_m": hnsw_m, "ef_construction": ef_construction}, "ef_search",
              ef_search)]
    if ivf:
        kinds.append(("ivf", {"nlist": nlist}, "nprobe", nprobe))
    for kind, params, knob, settings in kinds:
        rss0 = rss_mb()[0]
        i2i = SemanticItemToItem(index_kind=kind, index_params=params)
        _, build_s = timed(i2i.fit_vectors, vectors, popularity)
        # both channels would build the same index over the same vectors: share one
        user_ch = SemanticUserInterest(index_kind=kind, index_params=params).fit_vectors(
            vectors, popularity, index=i2i.index)
        rss1, peak = rss_mb()
        entry = {"params": params, "build_s": build_s, "bytes": index_bytes(i2i.index),
                 "rss_mb": rss1, "rss_growth_mb": rss1 - rss0, "peak_rss_mb": peak,
                 "loadavg_after_build": list(os.getloadavg()), "settings": []}
        log(f"{kind} {params}: built in {build_s:.1f}s, {entry['bytes'] / 2**20:.0f} MiB, "
            f"RSS {rss1:.0f} MiB")
        for value in settings:
            setattr(i2i.index, knob, value)  # the one index both channels search
            row = {knob: value, **index_search_stats(i2i.index, queries, truth10, truth200,
                                                     n_latency)}
            for ch in (i2i, user_ch):
                stats, ids = channel_stats(ch, users, history, n_single, n_batches)
                stats["top200_overlap_with_exact"] = overlap(ids, exact_ids[ch.kind])
                row[ch.kind] = stats
            entry["settings"].append(row)
            log(format_row(kind, knob, row))
            result[kind] = entry
            _save(result, checkpoint)
        del i2i, user_ch, ch  # ``ch`` too: it would keep this index alive into the next kind
    result["loadavg_end"] = list(os.getloadavg())
    result["peak_rss_mb"] = rss_mb()[1]
    _save(result, checkpoint)
    return result


def _save(result: dict, path: Path | None) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2))


def format_row(kind: str, knob: str, row: dict) -> str:
    s = row["search_k200_batch1"]
    i, u = row["semantic_i2i"], row["semantic_user"]
    return (f"| {kind} | {knob}={row[knob]} | {row['recall@10']:.3f} | {row['recall@200']:.3f} | "
            f"{s['p50_ms']:.2f} / {s['p99_ms']:.2f} | {row['queries_per_s_batched']:.0f} | "
            f"{i['batch1']['p50_ms']:.1f} / {i['batch1']['p99_ms']:.1f} | "
            f"{i['batch32']['p50_ms']:.0f} / {i['batch32']['p99_ms']:.0f} | "
            f"{i['users_per_s_batch']:.0f} | {i['top200_overlap_with_exact']:.3f} | "
            f"{u['batch1']['p50_ms']:.1f} / {u['batch1']['p99_ms']:.1f} | "
            f"{u['batch32']['p50_ms']:.0f} / {u['batch32']['p99_ms']:.0f} | "
            f"{u['users_per_s_batch']:.0f} | {u['top200_overlap_with_exact']:.3f} |")


HEADER = ("| index | setting | recall@10 | recall@200 | search k=200 p50 / p99 ms | search q/s "
          "(batched) | i2i 1 user p50 / p99 ms | i2i 32 users p50 / p99 ms | i2i users/s | "
          "i2i top-200 vs exact | user 1 user p50 / p99 ms | user 32 users p50 / p99 ms | "
          "user users/s | user top-200 vs exact |\n" + "|---" * 14 + "|")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--items", type=int, default=1_000_000)
    p.add_argument("--clusters", type=int, default=3000)
    p.add_argument("--users", type=int, default=10_000)
    p.add_argument("--queries", type=int, default=1000, help="held-out queries for recall")
    p.add_argument("--hnsw-m", type=int, default=32)
    p.add_argument("--ef-construction", type=int, default=80)
    p.add_argument("--ef-search", type=int, nargs="+", default=[64, 256, 1024])
    p.add_argument("--ivf", action="store_true", help="also measure an IVF index")
    p.add_argument("--nlist", type=int, default=1024)
    p.add_argument("--nprobe", type=int, nargs="+", default=[8, 32, 128])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="write every number here")
    a = p.parse_args()
    faiss.omp_set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    out = run(a.items, a.clusters, a.users, a.queries, hnsw_m=a.hnsw_m,
              ef_construction=a.ef_construction, ef_search=tuple(a.ef_search), ivf=a.ivf,
              nlist=a.nlist, nprobe=tuple(a.nprobe), seed=a.seed, checkpoint=a.json)
    print()
    print(f"{a.items:,} synthetic items x {DIM}, {out['threads']} threads, load average "
          f"{out['loadavg_start'][0]:.2f} at start / {out['loadavg_end'][0]:.2f} at end; "
          f"exact flat k=200: {out['flat']['search_k200_batch1']['p50_ms']:.0f} ms/query")
    for kind in ("hnsw", "ivf"):
        if kind in out:
            e = out[kind]
            print(f"{kind} {e['params']}: build {e['build_s']:.0f}s, index "
                  f"{e['bytes'] / 2**20:.0f} MiB, RSS {e['rss_mb']:.0f} MiB "
                  f"(peak {e['peak_rss_mb']:.0f})")
    print(HEADER)
    for kind in ("hnsw", "ivf"):
        for row in out.get(kind, {}).get("settings", []):
            print(format_row(kind, "ef_search" if kind == "hnsw" else "nprobe", row))


if __name__ == "__main__":
    main()
