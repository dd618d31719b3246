"""Per-channel recall time of the service's engine, in process (no HTTP), with and without
the per-user state caches.

Loads a serving artifact, builds a :class:`LiveState` over an empty state file and a
:class:`RecallEngine` with default settings, and answers batches of random known users,
printing ms/query per channel (each channel's time for a batch / batch size) and in total.
``--cache`` attaches the caches the way the service does (``LiveState(...,
user_cache_users=N)``) and first recalls every user once, so the timed rounds measure a
warm cache (every user seen, no event since); ``--cache --no-warm`` leaves them cold (nearly
every timed user a miss: the cache's own overhead); without ``--cache`` nothing is cached
(what every recall cost before, and about what a user's first recall after an event costs).

    PYTHONPATH=src python bench/engine_profile.py /path/to/artifact --batch 8
    PYTHONPATH=src python bench/engine_profile.py /path/to/artifact --batch 8 --cache
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time

os.environ.setdefault("LLMRECALL_THREADS", "1")  # what ``llmrecall.serve serve`` runs with

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact", help="artifact root (with CURRENT) or a version folder")
    parser.add_argument("--batch", type=int, default=8, help="queries answered together")
    parser.add_argument("--rounds", type=int, default=60, help="timed batches")
    parser.add_argument("--k", type=int, default=200)
    parser.add_argument("--cache", action="store_true",
                        help="attach the user-state caches and warm them over every user first")
    parser.add_argument("--no-warm", action="store_true",
                        help="with --cache: skip the warm pass (caches attached but cold: "
                        "nearly every timed user is a miss, measuring the cache's overhead)")
    parser.add_argument("--cache-users", type=int, default=None,
                        help="cache size (default: ServeSettings.user_cache_users)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import faiss

    from llmrecall.serve.artifacts import load_artifact
    from llmrecall.serve.engine import RecallEngine, RecallQuery
    from llmrecall.serve.live import LiveState
    from llmrecall.serve.metrics import Metrics
    from llmrecall.serve.service import _freeze_heap
    from llmrecall.serve.settings import ServeSettings
    from llmrecall.serve.store import Store
    from llmrecall.threads import pin_blas_threads

    pin_blas_threads()
    faiss.omp_set_num_threads(1)
    settings = ServeSettings(artifact_dir=args.artifact)
    cache_users = settings.user_cache_users if args.cache_users is None else args.cache_users
    artifact = load_artifact(args.artifact)
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(os.path.join(tmp, "state.sqlite"))
        state = LiveState(artifact, store.read_all(), cache_users if args.cache else 0)
        store.close()
    engine = RecallEngine(settings, Metrics())
    _freeze_heap()  # as the service does after load: no full collections over the artifact
    n_users = state.next_row
    rng = np.random.default_rng(args.seed)

    def queries(rows) -> list[RecallQuery]:
        return [RecallQuery(state, int(r), state.history(int(r)), args.k) for r in rows]

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if args.cache and not args.no_warm:
        t = time.perf_counter()
        # no deadline for the warm pass: a channel skipped for time would stay uncached
        warm = RecallEngine(settings.model_copy(update={"channel_budget_ms": 600_000.0}),
                            Metrics())
        for start in range(0, n_users, 32):
            warm.recall(queries(range(start, min(start + 32, n_users))))
        grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - rss
        print(f"warm pass over {n_users} users: {time.perf_counter() - t:.1f} s; peak RSS "
              f"+{grown:.0f} MB")
        for name, channel in artifact.pipeline.channels.items():
            cache = getattr(channel, "user_cache", None)
            if cache is not None:
                print(f"  {name:14s} {len(cache)} users cached, "
                      f"{cache.nbytes() / max(len(cache), 1):.0f} bytes of arrays per user")
    for _ in range(5):  # warm-up: lazy tables, first-call allocations
        engine.recall(queries(rng.integers(0, n_users, args.batch)))
    totals: dict[str, float] = {}
    t0 = time.perf_counter()
    for _ in range(args.rounds):
        answers = engine.recall(queries(rng.integers(0, n_users, args.batch)))
        for name, seconds in answers[0].seconds.items():
            totals[name] = totals.get(name, 0.0) + seconds
    elapsed = time.perf_counter() - t0
    per_query = 1000.0 / (args.rounds * args.batch)
    label = ("no cache" if not args.cache else "cold cache" if args.no_warm else "warm cache")
    print(f"batch {args.batch}, {label}: {elapsed * per_query:.3f} ms/query in total")
    for name, seconds in sorted(totals.items(), key=lambda x: -x[1]):
        print(f"  {name:20s} {seconds * per_query:.3f} ms/query")


if __name__ == "__main__":
    main()
