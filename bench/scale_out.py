"""Scale-out numbers on one machine: events/s and recall latency for the SQLite default vs
replicas over PostgreSQL (+ Redis).

Starts a throwaway PostgreSQL (tests/serve/pg.py) and Redis (tests/serve/redis_server.py) on
127.0.0.1, builds (or reuses) a small ml-100k artifact (popularity + ItemCF), and measures,
each for ``--duration`` seconds with the load generator in this process (httpx, asyncio):

1. events/s acknowledged: ``--event-concurrency`` clients posting batches of
   ``--event-batch`` events, spread round-robin over the servers, for: one SQLite process;
   two ``--shared-state`` processes over one SQLite file; one PostgreSQL replica; two
   PostgreSQL replicas (each with group commit: one transaction per writer-thread drain).
2. recall req/s and p50/p99 at each ``--concurrency``: one process on SQLite vs two
   replicas on PostgreSQL + Redis (requests alternate between the two ports).

    PYTHONPATH=src python bench/scale_out.py                       # 10 s per measurement
    PYTHONPATH=src python bench/scale_out.py --duration 5 --artifact DIR
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "serve"))
sys.path.insert(0, str(ROOT / "bench"))
import pg  # noqa: E402
import redis_server  # noqa: E402
from replica_servers import CONFIG, KEY, serve  # noqa: E402

ITEMS = [str(i) for i in range(1, 1001)]


async def _events(urls: list[str], concurrency: int, batch: int, duration: float) -> dict:
    acked, failed = 0, 0
    seq = itertools.count()
    limits = httpx.Limits(max_connections=concurrency * 2)
    async with httpx.AsyncClient(limits=limits, timeout=60, headers={"X-API-Key": KEY}) as client:
        end = time.perf_counter() + duration

        async def worker(w: int) -> None:
            nonlocal acked, failed
            while time.perf_counter() < end:
                n = next(seq)
                events = [{"user_id": f"ev-{w}-{(n + j) % 50}", "item_id": ITEMS[(n * 7 + j) % 1000],
                           "timestamp": 1e9 + n * batch + j} for j in range(batch)]
                r = await client.post(urls[n % len(urls)] + "/v1/events", json={"events": events})
                if r.status_code == 200:
                    acked += batch
                else:
                    failed += 1

        start = time.perf_counter()
        await asyncio.gather(*(worker(w) for w in range(concurrency)))
        elapsed = time.perf_counter() - start
    return {"events_per_s": acked / elapsed, "failed_batches": failed}


async def _recall(urls: list[str], concurrency: int, duration: float) -> dict:
    latencies: list[float] = []
    failed = 0
    turn = itertools.count()
    limits = httpx.Limits(max_connections=concurrency * 2)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        end = time.perf_counter() + duration

        async def worker(w: int) -> None:
            nonlocal failed
            n = w
            while time.perf_counter() < end:
                t0 = time.perf_counter()
                r = await client.post(urls[next(turn) % len(urls)] + "/v1/recall",
                                      json={"user_id": str(1 + n % 943), "k": 200})
                if r.status_code == 200:
                    latencies.append(time.perf_counter() - t0)
                else:
                    failed += 1
                n += 17

        start = time.perf_counter()
        await asyncio.gather(*(worker(w) for w in range(concurrency)))
        elapsed = time.perf_counter() - start
    ms = sorted(x * 1000 for x in latencies)
    return {"req_per_s": len(ms) / elapsed, "p50_ms": ms[len(ms) // 2],
            "p99_ms": ms[int(0.99 * (len(ms) - 1))], "failed": failed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument("--event-batch", type=int, default=100)
    parser.add_argument("--event-concurrency", type=int, default=8)
    parser.add_argument("--artifact", type=Path, default=None, help="reuse this artifact root")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="llmrecall-scale-"))
    env = {**os.environ, "LLMRECALL_API_KEY": KEY, "OMP_NUM_THREADS": "1"}
    artifact = args.artifact or work / "artifact"
    if not (artifact / "CURRENT").exists():
        (work / "config.toml").write_text(CONFIG)
        subprocess.run([sys.executable, "-m", "llmrecall.serve", "build", "--dataset", "ml-100k",
                        "--config", str(work / "config.toml"), "--out", str(artifact)],
                       check=True, env=env)
    print(f"load average before: {os.getloadavg()[0]:.2f}", flush=True)
    pg_server, redis = pg.PostgresServer(), redis_server.RedisServer()
    procs: list[subprocess.Popen] = []

    def start(n: int, state: str, *extra: str) -> list[str]:
        urls = []
        for _ in range(n):
            proc, url = serve(artifact, state, env, *extra)
            procs.append(proc)
            urls.append(url)
        return urls

    def stop_all() -> None:
        for proc in procs:
            proc.terminate()
            proc.wait(30)
        procs.clear()

    try:
        print("| state | servers | events/s | failed batches |\n|---|---|---|---|", flush=True)
        setups = [("SQLite file", 1, lambda: start(1, str(work / "s1.sqlite"))),
                  ("SQLite file, --shared-state", 2,
                   lambda: start(2, str(work / "s2.sqlite"), "--shared-state")),
                  ("PostgreSQL", 1, lambda: start(1, pg_server.create_database())),
                  ("PostgreSQL", 2, lambda: start(2, pg_server.create_database()))]
        for name, n, launch in setups:
            urls = launch()
            got = asyncio.run(_events(urls, args.event_concurrency, args.event_batch,
                                      args.duration))
            print(f"| {name} | {n} | {got['events_per_s']:,.0f} | {got['failed_batches']} |",
                  flush=True)
            stop_all()
        print("\n| setup | concurrency | req/s | p50 ms | p99 ms | failed |\n|---|---|---|---|---|---|",
              flush=True)
        for name, launch in [
                ("1 process, SQLite", lambda: start(1, str(work / "r1.sqlite"))),
                ("2 replicas, PostgreSQL + Redis",
                 lambda: start(2, pg_server.create_database(), "--redis", redis.url))]:
            urls = launch()
            for c in [int(x) for x in args.concurrency.split(",")]:
                asyncio.run(_recall(urls, c, 1.0))  # warm-up
                got = asyncio.run(_recall(urls, c, args.duration))
                print(f"| {name} | {c} | {got['req_per_s']:,.0f} | {got['p50_ms']:.1f} | "
                      f"{got['p99_ms']:.1f} | {got['failed']} |", flush=True)
            stop_all()
    finally:
        stop_all()
        redis.close()
        pg_server.close()
        shutil.rmtree(work, ignore_errors=True)
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
