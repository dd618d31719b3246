"""semantic_i2i with its neighbour table against the dense path: recall cost and agreement.

Recall cost per user at batch sizes 1, 8 and 32 (k = 200, history excluded, evidence on),
table and dense calls interleaved so both see the same machine load; the median of
``--rounds`` rounds is reported. Agreement: the share of users whose candidate lists are
identical, and the share the exactness guarantee covers (k + seen items <= table_width).
``--build N``: table build time over N synthetic unit vectors (d = 384) as well, for the
cost at the size limit (TABLE_LIMIT = 50,000).

    PYTHONPATH=src python bench/semantic_i2i_table.py --dataset ml-1m \
        [--build 10000 20000] [--json results/i2i_table.json]

BLAS runs on one thread (``LLMRECALL_THREADS=1`` unless set): the cost of one core.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("LLMRECALL_THREADS", "1")

import numpy as np

from llmrecall.channels.semantic import SemanticItemToItem, build_neighbour_table
from llmrecall.data.builtin import load_builtin
from llmrecall.threads import pin_blas_threads

K = 200


def per_user_ms(channels: dict, users: np.ndarray, history, batch: int, rounds: int,
                seed: int = 0) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    calls = max(10, 1500 // batch)
    times = {label: [] for label in channels}
    for _ in range(rounds):
        batches = [rng.choice(users, batch) for _ in range(calls)]
        for label, channel in channels.items():
            channel.recall(batches[0], K, history, explain=True)  # warm
            start = time.perf_counter()
            for b in batches:
                channel.recall(b, K, history, explain=True)
            times[label].append((time.perf_counter() - start) / (calls * batch) * 1e3)
    return {label: float(np.median(t)) for label, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ml-1m")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--build", type=int, nargs="*", default=[])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    pin_blas_threads()

    data = load_builtin(args.dataset)
    history = data.histories()
    table = SemanticItemToItem().fit(data)
    dense = SemanticItemToItem(table_width=0).fit(data)
    start = time.perf_counter()
    table._build_table()
    build_s = time.perf_counter() - start
    n, width = len(table.item_vectors_), table.table_width
    out = {"dataset": args.dataset, "n_items": n, "table_width": width, "k": K,
           "table_build_s": build_s, "table_mb": n * width * 8 / 1e6, "per_user_ms": {}}
    print(f"{args.dataset}: {n} items, table {n} x {width} ({out['table_mb']:.1f} MB) "
          f"built in {build_s:.3f} s", flush=True)

    users = np.arange(data.n_users, dtype=np.int32)
    for batch in (1, 8, 32):
        ms = per_user_ms({"dense": dense, "table": table}, users, history, batch, args.rounds)
        out["per_user_ms"][batch] = ms
        print(f"batch {batch:2d}: dense {ms['dense']:.3f} ms/user, table {ms['table']:.3f} "
              f"ms/user ({ms['dense'] / ms['table']:.1f}x)", flush=True)

    a = table.recall(users, K, history, explain=True)
    b = dense.recall(users, K, history, explain=True)
    covered = history.lengths()[users] + K <= width  # seen items >= distinct ones: a bound
    same = (a.ids == b.ids).all(axis=1)
    out.update(identical_users=float(same.mean()), covered_users=float(covered.mean()),
               identical_covered=float(same[covered].mean()),
               max_score_diff=float(np.abs(np.where(b.ids >= 0, a.scores - b.scores, 0)).max()),
               identical_evidence=float((a.evidence == b.evidence)[a.ids == b.ids].mean()))
    print(f"identical lists: {out['identical_users']:.4f} of users "
          f"({out['identical_covered']:.4f} of the {out['covered_users']:.3f} the guarantee "
          f"covers); max score diff {out['max_score_diff']:.2e}; identical evidence "
          f"{out['identical_evidence']:.5f}", flush=True)

    out["build_s"] = {}
    for size in args.build:
        rng = np.random.default_rng(0)
        x = rng.standard_normal((size, 384)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        start = time.perf_counter()
        build_neighbour_table(x, np.ones(size, bool), width)
        out["build_s"][size] = time.perf_counter() - start
        print(f"build over {size} synthetic items: {out['build_s'][size]:.1f} s", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
