"""The guard's margin against the test lists: for each kept list file (``bench/fusion_guard.py
lists``) and each margin z, the guard's choice and the fused list's Recall@K minus the best
single channel's, on test.

    PYTHONPATH=src python bench/fusion_guard_margin.py 0.5,1,1.5,2,3 ml100k-default ml1m-full

reads ``results/lists-<name>.npz`` for each name.
"""

import json
import sys
import tomllib
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fusion_guard as fg  # noqa: E402

from llmrecall import fusion_learn  # noqa: E402
from llmrecall.config import parse_config  # noqa: E402
from llmrecall.evaluate.metrics import ranking_metrics  # noqa: E402

KS = fg.KS


def main() -> None:
    print("| list file | z | guard | " + " | ".join(f"R@{k} − best" for k in KS) + " |")
    print("|---|---|---|" + "---|" * len(KS))
    for name in sys.argv[2:]:
        npz = np.load(f"results/lists-{name}.npz")
        meta = json.loads(bytes(npz["meta"]).decode())
        n = meta["n_items"]
        config = parse_config(tomllib.loads(meta["config_toml"]))
        weights = {c.channel_name: fg._weight(c) for c in config.enabled_channels}
        valid, test = fg._Task(npz, "valid", n), fg._Task(npz, "test", n)
        best = {k: max(ranking_metrics(ids[:, :200], test.targets, KS, n)[f"recall@{k}"]
                       for ids in test.lists.values()) for k in KS}
        for z in map(float, sys.argv[1].split(",")):
            fusion_learn.GUARD_Z = z
            model = fusion_learn.fit_learned_fusion(
                valid.lists, valid.targets, valid.history_lengths, n, k=200,
                rrf_weights=weights, rrf_k=config.fusion.rrf_k)
            ids = model.fuse(test.lists, 200, history_lengths=test.history_lengths,
                             weights=weights, n_items=n).ids
            got = ranking_metrics(ids, test.targets, KS, n)
            print(f"| {name} | {z} | {model.reference} {model.prefix}, {model.base} | "
                  + " | ".join(f"{got[f'recall@{k}'] - best[k]:+.4f}" for k in KS) + " |",
                  flush=True)


if __name__ == "__main__":
    main()
