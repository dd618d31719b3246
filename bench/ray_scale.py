"""Local vs Ray engine on synthetic logs: wall time and peak memory per job.

    python bench/ray_scale.py --events 1000000 10000000 --items 20000 --workers 2 \
        --out results/ray_scale.json

For each log size (``llmrecall synth`` data: ``events / 20`` users, a fixed catalog of
``--items`` items) and each job, one fresh process runs the job on the local engine and
one on a Ray instance with ``--workers`` CPUs started on this machine. Jobs:

* ``itemcf`` / ``swing``: fit (``neighbors=100``; Swing ``max_users_per_item=50``);
* ``recall``: ItemCF's top-100 for every user (``loo`` test task: one held-out item each);
* ``embed``: the titles of the first ``--embed-items`` items with the ``--embedder`` model
  (the sharded cache starts empty; Ray: one actor, one model, per worker);
* ``sasrec``: one epoch of SASRec (ids only, ``dim=64``, ``max_len=50``, batch 128, full
  softmax); Ray: ``TorchTrainer`` with ``--workers`` DDP workers (gloo), one CPU each.
  ``--sasrec-fraction f`` (< 1) builds every training window, as the epoch does, then
  trains on a seeded random ``f`` of them: the row reports the windows' build time, the
  windows built and trained, and ``epoch_seconds_estimate``, the build time plus the rest
  divided by ``f`` (an epoch too long to run whole, estimated from a measured part).

``--builtin ml-1m`` runs the jobs on a built-in dataset instead of synthetic logs:

    python bench/ray_scale.py --builtin ml-1m --jobs sasrec

Memory: the largest resident set of the driver process alone, and the largest sum over the
driver and every process it started (Ray's raylet, GCS, object store and workers), sampled
every 0.1 s with psutil. The log is loaded (and split, for ``recall``) before the clock
starts; loading is reported on its own. Growth exponents: the slope of log(time) and
log(memory) against log(events) between the sizes run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


def _sampler(stop: threading.Event, peaks: dict) -> None:
    import psutil

    me = psutil.Process()
    while not stop.is_set():
        try:
            procs = [me, *me.children(recursive=True)]
            rss = {}
            for p in procs:
                try:
                    rss[p.pid] = p.memory_info().rss
                except psutil.Error:
                    pass
            peaks["driver"] = max(peaks.get("driver", 0), rss.get(me.pid, 0))
            peaks["tree"] = max(peaks.get("tree", 0), sum(rss.values()))
            others = [v for pid, v in rss.items() if pid != me.pid]
            peaks["largest_other"] = max(peaks.get("largest_other", 0), max(others, default=0))
        except psutil.Error:
            pass
        stop.wait(0.1)


def part_of_the_windows(fraction: float, record: dict) -> None:
    """Make SASRec train on a seeded random ``fraction`` of its training windows: every
    window is still built (timed into ``record``), then a sorted sample is kept."""
    import numpy as np

    from llmrecall.channels import sequential

    build = sequential.training_windows

    def sampled(history, max_len):
        start = time.perf_counter()
        windows = build(history, max_len)
        record["windows_build_seconds"] = time.perf_counter() - start
        record["windows_built"] = int(len(windows))
        keep = np.sort(np.random.default_rng(0).choice(
            len(windows), size=max(1, int(round(fraction * len(windows)))), replace=False))
        record["windows_trained"] = int(len(keep))
        return windows[keep]

    sequential.training_windows = sampled


def run_job(data: str, job: str, engine_kind: str, workers: int, embed_items: int,
            embedder: str, sasrec_fraction: float = 1.0) -> dict:
    """One job in this process; prints a JSON line."""
    import numpy as np

    from llmrecall.channels.itemcf import ItemCF
    from llmrecall.channels.swing import Swing
    from llmrecall.data.loaders import load_dataset_toml
    from llmrecall.engine import make_engine

    start = time.perf_counter()
    if (Path(data) / "data.toml").exists():
        dataset = load_dataset_toml(Path(data) / "data.toml")
    else:
        from llmrecall.data.builtin import load_builtin

        dataset = load_builtin(data)
    load_seconds = time.perf_counter() - start
    task = None
    if job == "recall":
        from llmrecall.evaluate.protocols import make_split

        split = make_split(dataset, "loo", 0)
        channel = ItemCF(neighbors=100)
        channel.fit(split.train)
        task = split.test
    stop, peaks = threading.Event(), {}
    thread = threading.Thread(target=_sampler, args=(stop, peaks), daemon=True)
    thread.start()
    start = time.perf_counter()
    engine = make_engine(engine_kind, num_cpus=workers) if engine_kind == "ray" else \
        make_engine("local")
    init_seconds = time.perf_counter() - start
    start = time.perf_counter()
    detail: dict = {}
    if job in ("itemcf", "swing"):
        channel = ItemCF(neighbors=100) if job == "itemcf" else Swing(neighbors=100,
                                                                      max_users_per_item=50)
        engine.fit_channel(channel, dataset)
        detail["similarity_nnz"] = int(channel.similarity_.nnz)
    elif job == "recall":
        ids = engine.rank_task(channel, task, 100)
        detail["users"] = int(len(ids))
        detail["checksum"] = int(np.asarray(ids, np.int64).sum() % 1_000_003)
    elif job == "sasrec":
        from llmrecall.channels.sequential import SASRec

        sasrec = SASRec(text_init="none", epochs=1)
        if sasrec_fraction < 1:
            part_of_the_windows(sasrec_fraction, detail)
        engine.fit_channel(sasrec, dataset)
        detail["epochs"] = 1
    elif job == "embed":
        from functools import partial

        from llmrecall.lm.embedders import get_embedder

        texts = dataset.catalog.texts()[:embed_items]
        make = partial(get_embedder, embedder)
        with tempfile.TemporaryDirectory() as cache:
            if engine_kind == "ray":
                from llmrecall.engine.ray_engine import embed_catalog

                vectors, _ = embed_catalog(texts, make, cache, shard_size=256, actors=workers)
            else:
                from llmrecall.engine.embed import embed_catalog as embed_local

                vectors, _ = embed_local(texts, make, cache, shard_size=256)
        detail["texts"] = len(texts)
        detail["dim"] = int(vectors.shape[1])
    seconds = time.perf_counter() - start
    if "windows_trained" in detail:  # a measured part of the epoch: the whole, estimated
        share = detail["windows_trained"] / detail["windows_built"]
        build = detail["windows_build_seconds"]
        detail["epoch_seconds_estimate"] = build + (seconds - build) / share
    stop.set()
    thread.join()
    engine.close()
    return {"job": job, "engine": engine_kind, "events": len(dataset.interactions),
            "users": dataset.n_users, "items": dataset.n_items, "seconds": seconds,
            "engine_start_seconds": init_seconds, "load_seconds": load_seconds,
            "peak_rss_driver_mb": peaks.get("driver", 0) / 2**20,
            "peak_rss_all_mb": peaks.get("tree", 0) / 2**20, **detail}


def exponent(rows: list[dict], key: str) -> float | None:
    if len(rows) < 2:
        return None
    a, b = rows[0], rows[-1]
    if a[key] <= 0 or b[key] <= 0 or a["events"] == b["events"]:
        return None
    return math.log(b[key] / a[key]) / math.log(b["events"] / a["events"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, nargs="+", default=[1_000_000])
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--jobs", nargs="+", default=["itemcf", "swing", "recall", "embed"])
    parser.add_argument("--engines", nargs="+", default=["local", "ray"])
    parser.add_argument("--embed-items", type=int, default=2000)
    parser.add_argument("--embedder", default="default")
    parser.add_argument("--builtin", default=None, help="a built-in dataset (ml-1m)")
    parser.add_argument("--data-root", default=os.path.join(tempfile.gettempdir(), "synth"))
    parser.add_argument("--sasrec-fraction", type=float, default=1.0,
                        help="train SASRec's epoch on this share of its windows")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--one", nargs=3, metavar=("DATA", "JOB", "ENGINE"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        data, job, engine = args.one
        print(json.dumps(run_job(data, job, engine, args.workers, args.embed_items,
                                 args.embedder, args.sasrec_fraction)), flush=True)
        return
    from llmrecall.data.synth import synthesize

    rows = []
    for events in [0] if args.builtin else args.events:
        data = Path(args.builtin or Path(args.data_root) / f"e{events}-i{args.items}")
        if not args.builtin and not (data / "data.toml").exists():
            start = time.perf_counter()
            synthesize(data, users=max(1, events // 20), items=args.items, events=events, seed=0)
            print(f"synth {events:,} events: {time.perf_counter() - start:.1f}s", file=sys.stderr)
        for job in args.jobs:
            for engine in args.engines:
                out = subprocess.run(
                    [sys.executable, __file__, "--one", str(data), job, engine,
                     "--workers", str(args.workers), "--embed-items", str(args.embed_items),
                     "--embedder", args.embedder, "--sasrec-fraction",
                     str(args.sasrec_fraction)],
                    capture_output=True, text=True)
                lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
                if out.returncode != 0 or not lines:
                    row = {"job": job, "engine": engine, "events": events, "error":
                           out.stderr.strip().splitlines()[-1:] or [f"exit {out.returncode}"]}
                else:
                    row = json.loads(lines[-1])
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
    summary = []
    for job in args.jobs:
        for engine in args.engines:
            mine = [r for r in rows if r["job"] == job and r["engine"] == engine and "error" not in r]
            summary.append({"job": job, "engine": engine,
                            "time_exponent": exponent(mine, "seconds"),
                            "memory_exponent": exponent(mine, "peak_rss_all_mb")})
    result = {"rows": rows, "growth": summary, "cpus": os.cpu_count(),
              "command": " ".join(sys.argv)}
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
