"""Per-request cost of learned against RRF fusion in the service's request path, in-process.

Builds (or reuses) an artifact of a learned-fusion config, then answers the same single-user
requests through the service's engine (:class:`~llmrecall.serve.engine.RecallEngine`, the
default :class:`~llmrecall.serve.settings.ServeSettings`) with ``[fusion] method`` set to
"learned" and to "rrf" on the same loaded pipeline, alternating request by request so both
see the same machine load. Prints the median and p90 of the fuse stage
(``RecallAnswer.seconds["fusion"]``) and of the whole ``engine.recall`` call, per method.

    PYTHONPATH=src python bench/fusion_serve.py --dataset ml-100k \
        --config configs/default-learned.toml --artifact results/artifact-ml100k-learned \
        --requests 1000 --k 100 [--explain]

As served, RRF also fuses the live sources (``live_popularity``, ``live_covisit``), which the
learned fusion leaves out (docs/serving.md), so RRF's fuse stage sees two more lists.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--config", default="configs/default-learned.toml")
    parser.add_argument("--artifact", type=Path, default=None,
                        help="artifact root: built here if it has no CURRENT yet")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--explain", action="store_true")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    from llmrecall.config import load_config
    from llmrecall.data.builtin import load_builtin
    from llmrecall.serve.artifacts import build, load_artifact
    from llmrecall.serve.engine import RecallEngine, RecallQuery
    from llmrecall.serve.live import LiveState
    from llmrecall.serve.metrics import Metrics
    from llmrecall.serve.settings import ServeSettings
    from llmrecall.serve.store import Store

    root = args.artifact or Path(tempfile.mkdtemp(prefix="fusion-serve-"))
    build_seconds = None
    if not (root / "CURRENT").is_file():
        start = time.perf_counter()
        build(load_builtin(args.dataset), load_config(args.config), root)
        build_seconds = time.perf_counter() - start
    art = load_artifact(root)
    assert art.config.fusion.method == "learned", "the config must say method = \"learned\""
    with tempfile.TemporaryDirectory() as tmp:
        state = LiveState(art, Store(Path(tmp) / "s.sqlite").read_all())
        engine = RecallEngine(ServeSettings(artifact_dir=root, channel_budget_ms=60_000),
                              Metrics())
        fusion = art.config.fusion
        users = art.users.raw(np.arange(len(art.users)))
        rows = {m: {"fusion": [], "request": []} for m in ("learned", "rrf")}
        try:
            for i in range(args.requests * 2 + 20):  # the first 20: warm-up, not counted
                method = ("learned", "rrf")[i % 2]
                fusion.method = method
                row = state.row_for(users[(i // 2) % len(users)])
                query = RecallQuery(state, row, state.history(row), args.k,
                                    explain=args.explain)
                start = time.perf_counter()
                (answer,) = engine.recall([query])
                took = time.perf_counter() - start
                if i >= 20:
                    rows[method]["fusion"].append(answer.seconds["fusion"])
                    rows[method]["request"].append(took)
        finally:
            fusion.method = "learned"
            engine.shutdown()
    out = {"dataset": art.manifest["dataset"], "channels": list(art.pipeline.channels),
           "requests_per_method": args.requests, "k": args.k, "explain": args.explain,
           "build_seconds": build_seconds,
           "fusion_fit_seconds": art.manifest.get("fusion", {}).get("fit_seconds")}
    print(f"{args.requests} single-user requests per method, k={args.k}, "
          f"explain={args.explain}, channels {out['channels']}")
    print(f"{'method':8} {'fuse median ms':>15} {'fuse p90 ms':>12} {'request median ms':>18}"
          f" {'request p90 ms':>15}")
    for method, r in rows.items():
        f, q = np.asarray(r["fusion"]) * 1e3, np.asarray(r["request"]) * 1e3
        out[method] = {"fusion_median_ms": float(np.median(f)),
                       "fusion_p90_ms": float(np.percentile(f, 90)),
                       "request_median_ms": float(np.median(q)),
                       "request_p90_ms": float(np.percentile(q, 90))}
        print(f"{method:8} {np.median(f):15.3f} {np.percentile(f, 90):12.3f} "
              f"{np.median(q):18.3f} {np.percentile(q, 90):15.3f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
