"""What a Ray Train worker holds of the sharded log's SASRec windows: every file, or its slice.

    python bench/window_slices.py --log /tmp/synth/e50000000-i20000 --shards 32 \
        --worlds 1 2 4 --out results/window_slices.json

The windows are sized from a real log: each user's events in ``--log`` (a ``llmrecall
synth`` folder) less the held-out newest give ``ceil((n - 1) / max_len)`` windows of
``max_len + 1`` ids (``training_windows``), the users hashed over ``--shards`` shards as
the history shards are. Each shard's file is written as the windows task writes it
(:class:`~llmrecall.engine.stage_files.StageParts`, random item ids: what is measured does
not depend on them). Then, for each number of workers, one fresh process per measured rank
reads what a Ray Train worker reads before it trains: every file whole, joined (what each
worker read before slicing: ``np.load`` of each file's windows, then one concatenation)
or ``WindowFiles.load_slice(rank, world)``. Reported: the rows held, their bytes, the
process's resident set before reading (the interpreter, numpy and llmrecall's modules),
what reading added to it, its peak resident set while reading (``VmHWM``, reset through
``/proc/self/clear_refs`` just before: the transient copies included) less the resident
set before, and the seconds to read. Linux only.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = """
import json, sys, time
import psutil
from llmrecall.engine.sharded_sasrec import WindowFiles
files = WindowFiles(**json.loads(sys.argv[1]))
rank, world = int(sys.argv[2]), int(sys.argv[3])
before = psutil.Process().memory_info().rss
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # Linux: the peak resident set (VmHWM) starts again from the current one
start = time.perf_counter()
if world == 0:  # what every worker read before slicing: each file whole, then joined
    import numpy as np
    rows = np.concatenate([np.load(p, allow_pickle=False)["windows"] for p in files.paths])
else:
    rows = files.load_slice(rank, world)
seconds = time.perf_counter() - start
after = psutil.Process().memory_info().rss
peak = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status")
            if line.startswith("VmHWM:"))
print(json.dumps({"rows": len(rows), "bytes": int(rows.nbytes), "seconds": seconds,
                  "before_mb": before / 2**20, "added_mb": (after - before) / 2**20,
                  "peak_added_mb": (peak - before) / 2**20}))
"""


def window_counts(log: Path, shards: int, max_len: int) -> list[int]:
    """The training windows of each shard: users hashed over ``shards``, each giving
    ``ceil((n - 2) / max_len)`` windows for its ``n`` events less the held-out newest
    (none below 3 events)."""
    import polars as pl

    users = (pl.scan_parquet(str(log / "interactions" / "*.parquet"))
             .group_by("user").len()
             .with_columns(shard=(pl.col("user").hash(seed=0) % shards).cast(pl.Int64),
                           train=pl.col("len") - 1)
             .with_columns(windows=pl.when(pl.col("train") >= 2)
                           .then((pl.col("train") - 1 + max_len - 1) // max_len)
                           .otherwise(0))
             .group_by("shard").agg(pl.col("windows").sum())
             .collect())
    per_shard = dict(zip(users["shard"].to_list(), users["windows"].to_list()))
    return [int(per_shard.get(s, 0)) for s in range(shards)]


def write_files(folder: Path, counts: list[int], max_len: int, seed: int = 0):
    """One windows file per shard, as the windows task writes them; their WindowFiles."""
    import numpy as np

    from llmrecall.engine.sharded_sasrec import WindowFiles
    from llmrecall.engine.stage_files import StageParts

    kept = StageParts(folder, "sasrec-windows", "bench")
    rng = np.random.default_rng(seed)
    for shard, count in enumerate(counts):
        kept.save(shard, {"windows": rng.integers(0, 20_000, (count, max_len + 1))},
                  {"rows": count})
    return WindowFiles.of([kept.path(s) for s in range(len(counts))], counts)


def measure(files, rank: int, world: int) -> dict:
    """One fresh process reading every file (``world`` 0) or rank ``rank``'s slice."""
    spec = json.dumps({"paths": files.paths, "counts": files.counts,
                       "signature": files.signature})
    out = subprocess.run([sys.executable, "-c", CHILD, spec, str(rank), str(world)],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--log", type=Path, required=True, help="a llmrecall synth folder")
    parser.add_argument("--shards", type=int, default=32)
    parser.add_argument("--max-len", type=int, default=50)
    parser.add_argument("--worlds", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    counts = window_counts(args.log, args.shards, args.max_len)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        files = write_files(Path(folder), counts, args.max_len)
        rows.append({"read": "every file whole, joined (before)", "world": 1, "rank": 0,
                     **measure(files, 0, 0)})
        for world in args.worlds:
            for rank in sorted({0, world - 1}):
                rows.append({"read": "its slice (load_slice)", "world": world, "rank": rank,
                             **measure(files, rank, world)})
    print(f"{args.log.name}: {sum(counts):,} windows of {args.max_len + 1} ids "
          f"in {args.shards} shard files")
    print("| read | workers | rank | windows held | MB held | RSS before MB | RSS added MB "
          "| peak RSS added MB | seconds |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['read']} | {r['world']} | {r['rank']} | {r['rows']:,} | "
              f"{r['bytes'] / 2**20:,.0f} | {r['before_mb']:,.0f} | {r['added_mb']:,.0f} | "
              f"{r['peak_added_mb']:,.0f} | {r['seconds']:.2f} |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"log": str(args.log), "counts": counts,
                                        "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
