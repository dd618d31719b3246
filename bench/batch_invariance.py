"""Batch-independent dense scores (llmrecall.scoring.dot_rows): how often the plain product
flips near-ties, and what computing every row alone costs.

    python bench/batch_invariance.py [--threads 1] [--reps 3]

Part 1 scores random user and item vectors with ``users @ items.T`` as one batch and one
user at a time, and counts users whose top-20 ids differ (near-ties swapped by rounding);
the same for :func:`dot_rows`. Part 2 times, on ml-1m-sized matrices (6,040 users x 3,706
items) and on serving-sized batches (1-8 users): the plain float32 product, ``dot_rows``, and
a float64 product rounded to float32 (with how many of its scores still differ between a
batch and rows computed alone).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from threadpoolctl import threadpool_limits

from llmrecall.scoring import dot_rows
from llmrecall.topk import topk


def best_of(fn, reps: int) -> float:
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def flips(reps: int) -> None:
    print("| users x items x d | users whose top-20 differ: `@` batch vs alone | `dot_rows` |")
    print("|---|---|---|")
    for seed, (n_users, n_items, d) in enumerate([(500, 3706, 64), (500, 3706, 256),
                                                  (500, 1000, 32)]):
        rng = np.random.default_rng(seed)
        users = rng.standard_normal((n_users, d)).astype(np.float32)
        # items in pairs of near-duplicates, as popular look-alike items are
        base = rng.standard_normal((n_items // 2, d)).astype(np.float32)
        items = np.concatenate([base, base + 1e-7 * rng.standard_normal(base.shape)
                                .astype(np.float32)])
        plain = topk(users @ items.T, 20)[0]
        plain_alone = np.concatenate([topk(users[i:i + 1] @ items.T, 20)[0]
                                      for i in range(n_users)])
        ours = topk(dot_rows(users, items), 20)[0]
        ours_alone = np.concatenate([topk(dot_rows(users[i:i + 1], items), 20)[0]
                                     for i in range(n_users)])
        print(f"| {n_users} x {n_items} x {d} | {(plain != plain_alone).any(1).sum()} "
              f"| {(ours != ours_alone).any(1).sum()} |")


def cost(reps: int) -> None:
    rng = np.random.default_rng(0)
    print("\n| d | users | `@` float32 | `dot_rows` | float64 `@`, rounded | float64: scores "
          "differing batch vs alone |")
    print("|---|---|---|---|---|---|")
    for d in (64, 128, 256):
        items = rng.standard_normal((3706, d)).astype(np.float32)
        items64 = items.astype(np.float64)
        for n_users in (6040, 1, 2, 3, 8):
            users = rng.standard_normal((n_users, d)).astype(np.float32)
            r = reps if n_users > 8 else 50 * reps
            plain = best_of(lambda u=users, t=items: u @ t.T, r)
            ours = best_of(lambda u=users, t=items: dot_rows(u, t), r)
            wide = best_of(lambda u=users, t=items64: (u.astype(np.float64) @ t.T)
                           .astype(np.float32), r)
            differ = "-"
            if n_users > 8:
                batch = (users.astype(np.float64) @ items64.T).astype(np.float32)
                alone = np.empty_like(batch)
                for i in range(n_users):
                    alone[i] = (items64 @ users[i].astype(np.float64)).astype(np.float32)
                differ = f"{int((batch != alone).sum())} of {batch.size:,}"

            def fmt(s):
                return f"{s * 1e3:.1f} ms" if s >= 1e-3 else f"{s * 1e6:.0f} us"
            print(f"| {d} | {n_users} | {fmt(plain)} | {fmt(ours)} | {fmt(wide)} | {differ} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="BLAS threads")
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    with threadpool_limits(args.threads, user_api="blas"):
        flips(args.reps)
        cost(args.reps)


if __name__ == "__main__":
    main()
