"""Change propagation between two replicas over one PostgreSQL (LISTEN/NOTIFY).

Starts a throwaway PostgreSQL (tests/serve/pg.py: initdb into a temporary folder, a free port
on 127.0.0.1), builds (or reuses) a small ml-100k artifact, starts two ``llmrecall serve
--state postgresql://...`` replicas A and B on their own ports, then N times: one event for a
new user is acknowledged by A, and B's ``GET /v1/users/{id}/history`` is asked in a tight
loop until it lists the event. Prints p50/p99/max of the delay from A's acknowledgement to
the first answer of B that has the event, and the share of events B's very first answer
already had. For comparison, the same with one SQLite file shared by two ``--shared-state``
processes (``--sqlite``).

    PYTHONPATH=src python bench/pg_propagation.py                 # 1,000 events
    PYTHONPATH=src python bench/pg_propagation.py --events 200 --artifact DIR
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
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
from replica_servers import CONFIG, KEY, serve  # noqa: E402


def measure(a_url: str, b_url: str, n: int, tag: str) -> list[float]:
    """Seconds from A's acknowledgement to B's first answer with the event, per event."""
    delays, first_try = [], 0
    with httpx.Client(base_url=a_url, headers={"X-API-Key": KEY}) as a, \
            httpx.Client(base_url=b_url) as b:
        for i in range(n):
            user = f"{tag}-{i}"
            r = a.post("/v1/events", json={"events": [
                {"user_id": user, "item_id": "50", "timestamp": 1e9 + i}]})
            r.raise_for_status()
            acked = time.perf_counter()
            tries = 0
            while True:
                tries += 1
                if b.get(f"/v1/users/{user}/history").json()["history"]:
                    break
            delays.append(time.perf_counter() - acked)
            first_try += tries == 1
    ms = sorted(d * 1000 for d in delays)
    print(f"{tag}: {n} events, delay A ack -> B answer: p50 {statistics.median(ms):.2f} ms, "
          f"p99 {ms[int(0.99 * (n - 1))]:.2f} ms, max {ms[-1]:.2f} ms; "
          f"B's first answer had it for {first_try / n:.1%}")
    return delays


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--artifact", type=Path, default=None, help="reuse this artifact root")
    parser.add_argument("--sqlite", action="store_true", help="also measure a shared SQLite file")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="llmrecall-prop-"))
    env = {**os.environ, "LLMRECALL_API_KEY": KEY, "OMP_NUM_THREADS": "1"}
    artifact = args.artifact or work / "artifact"
    if not (artifact / "CURRENT").exists():
        (work / "config.toml").write_text(CONFIG)
        subprocess.run([sys.executable, "-m", "llmrecall.serve", "build", "--dataset", "ml-100k",
                        "--config", str(work / "config.toml"), "--out", str(artifact)],
                       check=True, env=env)
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    server = pg.PostgresServer()
    procs: list[subprocess.Popen] = []
    try:
        dsn = server.create_database()
        a, a_url = serve(artifact, dsn, env)
        b, b_url = serve(artifact, dsn, env)
        procs += [a, b]
        measure(a_url, b_url, args.events, "postgres")
        if args.sqlite:
            state = str(work / "state.sqlite")
            c, c_url = serve(artifact, state, env, "--shared-state")
            d, d_url = serve(artifact, state, env, "--shared-state")
            procs += [c, d]
            measure(c_url, d_url, args.events, "sqlite")
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(30)
        server.close()
        shutil.rmtree(work, ignore_errors=True)  # state, and the artifact unless reused
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
