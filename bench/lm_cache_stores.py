"""The LM cache's two stores side by side: a SQLite file and PostgreSQL (the cache a
cluster and every service replica share, src/llmrecall/lm/pgcache.py).

Starts a throwaway PostgreSQL (tests/serve/pg.py: initdb into a temporary folder, a free port
on 127.0.0.1) and, for each store, with random float32 vectors of ``--dim``:

* **write**: ``--rows`` vectors in groups of 256 (the group ``CachedEmbedder`` commits), one
  transaction a group; rows per second;
* **bulk read**: every key in one ``get_embeddings`` (what a warm catalog embedding asks);
  rows per second;
* **small reads**: ``--lookups`` reads of 8 random keys each (a query or a few new items in
  the service); median and p90 milliseconds;
* **readers at once**: ``--readers`` processes each reading every key once, started
  together; rows per second over all of them.

    PYTHONPATH=src python bench/lm_cache_stores.py                   # 100,000 x 384
    PYTHONPATH=src python bench/lm_cache_stores.py --rows 20000 --json results/x.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "serve"))
import pg  # noqa: E402

from llmrecall.lm.stores import open_cache  # noqa: E402

GROUP = 256

READER = r"""
import sys, time
from llmrecall.lm.stores import open_cache
target, n = sys.argv[1], int(sys.argv[2])
cache = open_cache(target)
keys = [f"k{i}" for i in range(n)]
start = time.perf_counter()
assert len(cache.get_embeddings(keys)) == n
print(time.perf_counter() - start)
"""


def measure(target: str, rows: int, dim: int, lookups: int, readers: int) -> dict:
    cache = open_cache(target)
    rng = np.random.default_rng(0)
    keys = [f"k{i}" for i in range(rows)]
    start = time.perf_counter()
    for s in range(0, rows, GROUP):
        block = rng.random((min(GROUP, rows - s), dim), dtype=np.float32)
        cache.put_embeddings("bench", zip(keys[s:s + GROUP], block))
    write_s = time.perf_counter() - start

    start = time.perf_counter()
    got = cache.get_embeddings(keys)
    bulk_s = time.perf_counter() - start
    assert len(got) == rows

    small = []
    for _ in range(lookups):
        sample = [keys[i] for i in rng.integers(0, rows, 8)]
        t = time.perf_counter()
        cache.get_embeddings(sample)
        small.append((time.perf_counter() - t) * 1000)
    small.sort()

    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    start = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-c", READER, target, str(rows)], env=env,
                              stdout=subprocess.PIPE, text=True) for _ in range(readers)]
    outs = [p.communicate()[0] for p in procs]
    parallel_s = time.perf_counter() - start
    assert all(p.returncode == 0 for p in procs)
    reader_s = [float(o.strip()) for o in outs]
    return {"write_rows_per_s": rows / write_s, "bulk_read_rows_per_s": rows / bulk_s,
            "small_read_ms_p50": statistics.median(small),
            "small_read_ms_p90": small[int(0.9 * (len(small) - 1))],
            "readers": readers, "readers_rows_per_s": readers * rows / parallel_s,
            "reader_seconds": reader_s, "size_mb": cache.size_bytes() / 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--lookups", type=int, default=2000)
    parser.add_argument("--readers", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    server = pg.PostgresServer()
    folder = Path(tempfile.mkdtemp(prefix="lm-cache-bench-"))
    try:
        results = {
            "sqlite": measure(str(folder / "lm.sqlite"), args.rows, args.dim, args.lookups,
                              args.readers),
            "postgres": measure(server.create_database(), args.rows, args.dim, args.lookups,
                                args.readers),
        }
    finally:
        server.close()
    print(f"{args.rows:,} vectors of {args.dim} float32, groups of {GROUP}, "
          f"{args.readers} reader processes\n")
    print("| store | write rows/s | bulk read rows/s | 8-key read p50 ms | p90 ms "
          f"| {args.readers} readers rows/s | size MB |")
    print("|---|---|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['write_rows_per_s']:,.0f} | {r['bulk_read_rows_per_s']:,.0f} | "
              f"{r['small_read_ms_p50']:.3f} | {r['small_read_ms_p90']:.3f} | "
              f"{r['readers_rows_per_s']:,.0f} | {r['size_mb']:.0f} |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                         "results": results}, indent=2))


if __name__ == "__main__":
    main()
