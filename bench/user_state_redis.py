"""Per-recall cost of a per-user state answered by Redis vs computed, for SASRec on ml-100k.

Fits an ID-only SASRec on ml-100k (a few seconds of training: the cost of a recall depends
on the model's size, not its quality), starts a throwaway Redis on loopback
(tests/serve/redis_server.py) and times one channel recall (batch 1, ``k`` = 200) per user
for a few hundred random users, three ways:

- ``computed``: no cache (what every recall of a replica that has not seen the user costs
  without Redis, and every recall offline);
- ``redis miss``: a cache attached, the state neither in process nor in Redis: computed,
  after an ``MGET`` that finds nothing, then written (``SET``);
- ``redis hit``: the in-process cache emptied before each recall, the user's state in
  Redis (what a replica that has not seen the user costs when another one has: one ``MGET``
  round trip, a history digest and a decode instead of the transformer pass);
- ``in-process hit``: the state in the process's own cache (every later recall).

The four are timed one after the other for each user (miss, computed, hit, in-process
hit). Prints the median and p90 per way
(ms per recall) and the states' size in Redis. One run, one process.

    PYTHONPATH=src python bench/user_state_redis.py          # --users 300 --dim 64 --max-len 50
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("LLMRECALL_THREADS", "1")  # what ``llmrecall.serve serve`` runs with

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "serve"))
import redis_server  # noqa: E402

WAYS = ("computed", "redis miss", "redis hit", "in-process hit")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=300)
    parser.add_argument("--k", type=int, default=200)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--max-len", type=int, default=50)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from llmrecall.channels.sequential import SASRec
    from llmrecall.channels.user_cache import UserStateCache
    from llmrecall.data.builtin import load_builtin
    from llmrecall.serve.shared_states import SharedUserStates
    from llmrecall.threads import pin_blas_threads

    pin_blas_threads()
    data = load_builtin("ml-100k")
    t = time.perf_counter()
    channel = SASRec(text_init="none", dim=args.dim, max_len=args.max_len, epochs=args.epochs,
                     seed=args.seed).fit(data)
    print(f"fit sasrec (dim {args.dim}, max_len {args.max_len}, {args.epochs} epochs): "
          f"{time.perf_counter() - t:.1f} s")
    plain = data.histories()
    versioned = replace(plain, versions=np.zeros(plain.n_users, np.int64))
    users = np.random.default_rng(args.seed).choice(
        plain.n_users, min(args.users, plain.n_users), replace=False).astype(np.int32)
    server = redis_server.RedisServer()
    try:
        shared = SharedUserStates(server.url, "bench", timeout_s=0.05)
        cache = UserStateCache(10_000)
        client = shared._client

        def one(u, history) -> float:
            t = time.perf_counter()
            channel.recall(np.array([u]), args.k, history)
            return (time.perf_counter() - t) * 1000

        for u in users[:20]:  # warm-up: lazy tables, the model digest, first allocations
            channel.recall(np.array([u]), args.k, plain)
        channel.user_cache = cache
        shared.attach([("sasrec", channel)], "bench", plain.n_users)
        for u in users[:20]:
            channel.recall(np.array([u]), args.k, versioned)
        client.flushdb()
        # the four ways one after the other for each user, so that the machine's load, which
        # drifts over a run, weighs on all of them alike
        ms: dict[str, list[float]] = {w: [] for w in WAYS}
        for u in users:
            cache.clear()
            ms["redis miss"].append(one(u, versioned))  # MGET finds nothing; computed; SET
            channel.user_cache = None
            ms["computed"].append(one(u, plain))  # no cache attached: the offline path
            channel.user_cache = cache
            cache.clear()
            ms["redis hit"].append(one(u, versioned))
            ms["in-process hit"].append(one(u, versioned))
        assert cache.shared_hits == len(users), "every third recall must be a Redis hit"
        stored = len(users)
        info = client.info("memory")
        memory = info["used_memory"] - info.get("used_memory_startup", 0)
        print(f"{len(users)} users, k={args.k}, batch 1; {stored} states stored, Redis "
              f"memory used above start: {memory / max(stored, 1):.0f} bytes per state")
        print(f"{'way':16s} {'median ms':>10s} {'p90 ms':>8s}")
        for name in WAYS:
            print(f"{name:16s} {np.median(ms[name]):10.3f} {np.percentile(ms[name], 90):8.3f}")
        shared.close()
    finally:
        channel.user_cache = None
        server.close()


if __name__ == "__main__":
    main()
