"""A sharded ``evaluate`` whose driver is SIGKILLed half-way through recall, started again
in the same ``work_dir``: what the rerun costs against a run from scratch.

    PYTHONPATH=src python bench/sharded_resume.py --events 4000000 --out results/sharded_resume.json

On ``llmrecall synth`` data (``events / 40`` users, ``--items`` items; the pipeline
popularity + ItemCF + Swing, ``loo``, test split), each run a fresh process with the local
engine (the resume logic does not depend on the engine):

1. from scratch in an empty work folder (the reference report);
2. from scratch in a second folder, SIGKILLed as soon as half the shards' metrics are
   written;
3. the same command again in that folder: it reads the kept shards, similarities and
   metrics and recalls the rest;
4. once more: everything is kept, nothing is computed.

Prints the wall times, each run's ``engine.resumed`` and the largest metric difference
from the reference.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = {"channels": [{"kind": "popularity"},
                       {"kind": "itemcf", "params": {"neighbors": 100}},
                       {"kind": "swing", "params": {"max_users_per_item": 100}}]}
CHILD = r"""
import json, sys
from llmrecall.config import PipelineConfig
from llmrecall.data.spec import DataSpec
from llmrecall.engine.local import Engine
from llmrecall.engine.sharded import evaluate_sharded
spec, work, config = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
report = evaluate_sharded(DataSpec.from_toml(spec), PipelineConfig.model_validate(config),
                          engine=Engine(), work_dir=work)
print(json.dumps(report))
"""


def run(spec: Path, work: Path, kill_at_parts: int | None = None) -> tuple[float, dict | None]:
    """Seconds and report of one child; with ``kill_at_parts``, SIGKILLed once that many
    recall parts exist (report None)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    start = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(spec), str(work),
                              json.dumps(CONFIG)], env=env, stdout=subprocess.PIPE, text=True)
    if kill_at_parts is not None:
        while child.poll() is None:
            if len(list(work.glob("log-*/recall-*/part-*.npz"))) >= kill_at_parts:
                os.kill(child.pid, signal.SIGKILL)
                break
            time.sleep(0.05)
        child.wait()
        if child.returncode != -signal.SIGKILL:
            raise SystemExit(f"the child was not killed (exit {child.returncode}): "
                             "use a larger log")
        return time.perf_counter() - start, None
    out, _ = child.communicate()
    if child.returncode:
        raise SystemExit(f"child failed with {child.returncode}")
    return time.perf_counter() - start, json.loads(out.strip().splitlines()[-1])


def largest_difference(a: dict, b: dict) -> float:
    return max(abs(a["results"][n][m] - b["results"][n][m])
               for n in a["results"] for m in a["results"][n])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=4_000_000)
    parser.add_argument("--items", type=int, default=5000)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="sharded-resume-"))
    try:
        measure(args, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def measure(args, root: Path) -> None:
    data = root / "data"
    sys.path.insert(0, str(ROOT / "src"))
    from llmrecall.data.synth import synthesize

    synthesize(data, users=args.events // 40, items=args.items, events=args.events, seed=0)
    spec = data / "data.toml"
    whole_s, whole = run(spec, root / "whole")
    assert whole is not None
    shards = whole["engine"]["shards"]
    if shards < 2:
        raise SystemExit(f"{shards} shard: use a log of 2M events or more")
    killed_s, _ = run(spec, root / "work", kill_at_parts=shards // 2)
    resumed_s, resumed = run(spec, root / "work")
    kept_s, kept = run(spec, root / "work")
    assert resumed is not None and kept is not None
    rows = [("from scratch", whole_s, whole), ("killed at half the recall", killed_s, None),
            ("started again", resumed_s, resumed), ("started once more", kept_s, kept)]
    print(f"{args.events:,} events, {args.items:,} items, {shards} shards, local engine\n")
    print("| run | seconds | resumed | largest metric difference |")
    print("|---|---|---|---|")
    for name, seconds, report in rows:
        found = json.dumps(report["engine"]["resumed"]) if report else "—"
        diff = f"{largest_difference(report, whole):.1e}" if report else "—"
        print(f"| {name} | {seconds:.1f} | `{found}` | {diff} |")
    if args.out:
        args.out.write_text(json.dumps({"events": args.events, "items": args.items,
                                        "shards": shards, "rows": [
                                            {"run": n, "seconds": s,
                                             "resumed": r["engine"]["resumed"] if r else None,
                                             "timings": r["timings"] if r else None}
                                            for n, s, r in rows]}, indent=2))


if __name__ == "__main__":
    main()
