"""Peak memory and time of fitting the learned fusion, by validation users.

    PYTHONPATH=src python bench/fusion_memory.py --users 20000 50000 --k 200 --channels 3

Each size runs in a fresh process: random channel lists (``--channels`` lists of ``--k``
distinct items from ``--items``), one random target and a random history length per user;
``fit_learned_fusion`` (table, out-of-fold guard) is timed and the process's peak resident
set is read before and after. Random lists make the fit's arithmetic meaningless but its
array sizes real: what the sharded path's driver holds for its sample of validation users
(``engine/sharded_fusion.py``).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def measure(users: int, k: int, channels: int, items: int) -> dict:
    import numpy as np
    import scipy.sparse as sp

    from llmrecall.fusion_learn import fit_learned_fusion

    rng = np.random.default_rng(0)
    # one user at a time: a users x items draw would set the peak itself
    lists = {f"c{c}": np.stack([rng.choice(items, k, replace=False) for _ in range(users)])
             .astype(np.int32) for c in range(channels)}
    targets = sp.csr_matrix((np.ones(users, np.float32),
                             (np.arange(users), rng.integers(0, items, users))),
                            shape=(users, items))
    lengths = rng.integers(3, 200, users)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    fit_learned_fusion(lists, targets, lengths, items, k=k)
    return {"users": users, "k": k, "channels": channels,
            "lists_mb": sum(a.nbytes for a in lists.values()) / 2**20,
            "peak_before_mb": before,
            "peak_after_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "seconds": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, nargs="+", default=[20_000, 50_000])
    parser.add_argument("--k", type=int, default=200)
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--items", type=int, default=5000)
    parser.add_argument("--child", type=int, default=None)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(measure(args.child, args.k, args.channels, args.items)))
        return
    print("| users | lists MB | peak before MB | peak after MB | added MB | seconds |")
    print("|---|---|---|---|---|---|")
    for users in args.users:
        out = subprocess.run([sys.executable, __file__, "--child", str(users), "--k",
                              str(args.k), "--channels", str(args.channels), "--items",
                              str(args.items)], capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"| {users:,} | {r['lists_mb']:.0f} | {r['peak_before_mb']:,.0f} | "
              f"{r['peak_after_mb']:,.0f} | {r['peak_after_mb'] - r['peak_before_mb']:,.0f} | "
              f"{r['seconds']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
