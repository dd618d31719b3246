"""Text-enhanced SASRec against its ID-only ablation, over several seeds.

For each dataset and model seed, ``sasrec`` is fitted on the ``loo`` split's train part
(split seed 0, the same for every run) with ``text_init`` = ``none`` (item ids only),
``init`` (ids initialised from the text embeddings) and/or ``fuse`` (ids plus a trained
adapter of the frozen text embeddings), and tested on each user's last interaction. Prints
Recall@K per run, the mean and standard deviation over seeds, and the paired difference of
each text mode against ``none`` (same seed), with how many seeds it was positive.

    PYTHONPATH=src python bench/sasrec_ablation.py --dataset ml-100k --seeds 0 1 2 \
        [--modes none init fuse] [--param epochs=10] --json results/sasrec_ablation.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from llmrecall.channels import channel_class  # noqa: E402
from llmrecall.data.builtin import load_builtin  # noqa: E402
from llmrecall.evaluate import evaluate_channel, make_split  # noqa: E402

KS = (10, 50, 200)
#: what each run records and the summary reports: Recall@K at KS, and NDCG@10
COLUMNS = ("R@10", "N@10", "R@50", "R@200")


def _value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def run(dataset_name: str, seeds: list[int], modes: list[str], params: dict) -> dict:
    dataset = load_builtin(dataset_name)
    split = make_split(dataset, "loo", seed=0)
    print(f"{dataset_name} loo test: {split.test.describe()}; params {params}", flush=True)
    runs = []
    for seed in seeds:
        for mode in modes:
            start = time.perf_counter()
            channel = channel_class("sasrec")(text_init=mode, seed=seed, **params).fit(split.train)
            fit_s = time.perf_counter() - start
            metrics = evaluate_channel(channel, split.test, k=max(KS), ks=KS)
            row = {"seed": seed, "mode": mode, "fit_s": round(fit_s, 1),
                   **{f"R@{k}": metrics[f"recall@{k}"] for k in KS},
                   "N@10": metrics["ndcg@10"]}
            if channel.stopping_ is not None:  # early stopping: epochs run, best epoch
                row["training"] = channel.stopping_.summary()
            runs.append(row)
            print("  " + "  ".join(f"{k}={v:.4f}" if isinstance(v, float) and k[:2] in ("R@", "N@")
                                   else f"{k}={v}" for k, v in row.items()), flush=True)
    return {"dataset": dataset_name, "params": params, "users": int(len(split.test.users)),
            "runs": runs, "summary": summarise(runs, modes)}


def summarise(runs: list[dict], modes: list[str]) -> dict:
    out = {}
    by = {(r["mode"], r["seed"]): r for r in runs}
    seeds = sorted({r["seed"] for r in runs})
    for mode in modes:
        row = {}
        for col in COLUMNS:
            vals = np.array([by[mode, s][col] for s in seeds])
            row[col] = {"mean": float(vals.mean()),
                        "sd": float(vals.std(ddof=1)) if len(vals) > 1 else 0.0}
            if mode != "none" and "none" in modes:
                diff = vals - np.array([by["none", s][col] for s in seeds])
                row[col]["vs_none"] = float(diff.mean())
                row[col]["wins"] = f"{int((diff > 0).sum())}/{len(diff)}"
        row["fit_s"] = float(np.median([by[mode, s]["fit_s"] for s in seeds]))
        out[mode] = row
    return out


def markdown(result: dict) -> str:
    lines = [f"{result['dataset']} · loo · {result['users']:,} users · "
             f"seeds {sorted({r['seed'] for r in result['runs']})}",
             "", "| text_init | " + " | ".join(f"{col} mean ± sd" for col in COLUMNS)
             + " | vs none (R@50) | fit s (median) |",
             "|---|" + "---|" * (len(COLUMNS) + 2)]
    for mode, row in result["summary"].items():
        cells = [f"{row[col]['mean']:.4f} ± {row[col]['sd']:.4f}" for col in COLUMNS]
        vs = row["R@50"].get("vs_none")
        vs_cell = "—" if vs is None else f"{vs:+.4f} ({row['R@50']['wins']} seeds)"
        lines.append(f"| {mode} | " + " | ".join(cells) + f" | {vs_cell} | {row['fit_s']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", nargs="+", default=["ml-100k"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--modes", nargs="+", default=["none", "init", "fuse"])
    parser.add_argument("--param", action="append", default=[],
                        help="extra sasrec parameter NAME=VALUE (e.g. epochs=10)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    params = {}
    for item in args.param:
        name, _, value = item.partition("=")
        params[name] = _value(value)
    results = [run(name, args.seeds, args.modes, params) for name in args.dataset]
    for result in results:
        print()
        print(markdown(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
