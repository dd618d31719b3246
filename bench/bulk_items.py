"""Bulk item write benchmark: one ``PUT /v1/items`` of N new items against a real server.

Starts ``llmrecall.serve serve ARTIFACT`` on 127.0.0.1 with a fresh state file, sends N new
items (texts salted per run, so the LM cache holds none of them) while a second thread
recalls known users one request at a time, and prints one JSON line: seconds until the PUT
was answered (and its status), seconds until the items were indexed by every channel (the
job's ``done``; the same as the answer for a 200), and the recall latencies meanwhile.

    PYTHONPATH=src python bench/bulk_items.py ARTIFACT [--items 1000] [--settings serve.toml]

ARTIFACT: an artifact root, e.g. one built from ``configs/serve-all.toml`` on ml-100k with
``python -m llmrecall.serve build --dataset ml-100k --config configs/serve-all.toml --out DIR``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
WORDS = ("river castle night engine garden silver storm harbor comet lantern violin desert "
         "orchard canyon meadow glacier").split()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("artifact")
    ap.add_argument("--items", type=int, default=1000)
    ap.add_argument("--settings", help="TOML with a [serve] table")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bulk-items-"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "LLMRECALL_API_KEY": "bench"}
    cmd = [sys.executable, "-m", "llmrecall.serve", "serve", args.artifact, "--port", str(port),
           "--state", str(tmp / "state.sqlite"), "--channel-budget-ms", "10000"]
    if args.settings:
        cmd += ["--settings", args.settings]
    log = open(tmp / "server.log", "wb")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                if proc.poll() is not None:
                    raise SystemExit((tmp / "server.log").read_text()[-2000:]) from None
                time.sleep(0.2)
        salt = uuid.uuid4().hex[:8]
        items = [{"item_id": f"bulk-{salt}-{i}",
                  "title": f"{WORDS[i % 16].title()} {WORDS[(i * 7) % 16]} {i}",
                  "text": f"A {salt} story about the {WORDS[(i * 5) % 16]} and the "
                          f"{WORDS[(i * 3) % 16]}, part {i}",
                  "categories": ["Drama"] if i % 2 else ["Comedy"]} for i in range(args.items)]
        latencies: list[float] = []
        stop = threading.Event()

        def recall_loop() -> None:
            with httpx.Client(base_url=url, timeout=120) as client:
                user = 1
                while not stop.is_set():
                    t = time.perf_counter()
                    client.post("/v1/recall", json={"user_id": str(user), "k": 100})
                    latencies.append(time.perf_counter() - t)
                    user = user % 900 + 1

        reader = threading.Thread(target=recall_loop)
        reader.start()
        time.sleep(1.0)
        before = len(latencies)
        start = time.perf_counter()
        r = httpx.put(url + "/v1/items", json={"items": items}, headers={"X-API-Key": "bench"},
                      timeout=600)
        answered = time.perf_counter() - start
        indexed = answered
        if r.status_code == 202:
            job_id = r.json()["job_id"]
            while httpx.get(f"{url}/v1/jobs/{job_id}", timeout=30).json()["status"] == "indexing":
                time.sleep(0.1)
            indexed = time.perf_counter() - start
        stop.set()
        reader.join()
        during = sorted(latencies[before:])
        print(json.dumps({
            "items": args.items, "status": r.status_code, "answered_s": round(answered, 2),
            "indexed_s": round(indexed, 2), "recalls_meanwhile": len(during),
            "recall_p50_ms": round(1000 * during[len(during) // 2], 1) if during else None,
            "recall_max_ms": round(1000 * during[-1], 1) if during else None}))
    finally:
        proc.terminate()
        proc.wait(30)


if __name__ == "__main__":
    main()
