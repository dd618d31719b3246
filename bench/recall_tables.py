"""Evaluate pipelines on the built-in datasets and print markdown tables for docs/benchmarks.md.

Usage:
    python bench/recall_tables.py                       # classic default on all three, loo
    python bench/recall_tables.py --runs ml-1m:recbole-general:configs/recbole-ml1m.toml
Each run is DATASET:PROTOCOL[:CONFIG]; reports are written to results/<dataset>-<protocol>-<hash>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "2")

from llmrecall.config import load_config  # noqa: E402
from llmrecall.data.builtin import load_builtin  # noqa: E402
from llmrecall.evaluate.experiment import evaluate  # noqa: E402
from llmrecall.report import markdown_table  # noqa: E402

DEFAULT_RUNS = ["ml-100k:loo", "ml-1m:loo", "amazon-games-6k:loo"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="*", default=DEFAULT_RUNS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("results"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for run in args.runs:
        dataset, protocol, *rest = run.split(":")
        config = load_config(rest[0] if rest else None)
        report = evaluate(load_builtin(dataset), protocol, config, seed=args.seed)
        report["machine"] = f"{platform.machine()}, {os.cpu_count()} cores"
        path = args.out / f"{dataset}-{protocol}-{report['config_hash']}.json"
        path.write_text(json.dumps(report, indent=2))
        print(f"\n### {dataset} · {protocol} · config {rest[0] if rest else 'default'} "
              f"({report['config_hash']}) · seed {args.seed} · {report['users_evaluated']} users\n")
        print(markdown_table(report))
        print(f"\nTotal {report['timings']['total_seconds']:.0f} s; report {path}")


if __name__ == "__main__":
    main()
