"""Fit and recall time and Recall@10/50/200 of the classic channels.

Protocol: chronological leave-one-out (the project's ``loo``: fit on train, recall for the
test item from train + validation history, full ranking, seen items excluded).

    PYTHONPATH=src python bench/classic_channels.py ml-100k ml-1m
    PYTHONPATH=src python bench/classic_channels.py ml-1m --channel "itemcf:neighbors=100,iuf=False"

Times are wall-clock seconds on this machine; recall covers every evaluated user at k=200.
"""

from __future__ import annotations

import argparse
import json
import time

from llmrecall.channels import channel_class  # noqa: E402
from llmrecall.data.builtin import load_builtin  # noqa: E402
from llmrecall.evaluate import make_split, rank_task, ranking_metrics  # noqa: E402

DEFAULT_CHANNELS = ["popularity", "itemcf", "swing", "ease", "als", "bpr",
                    # RecBole ItemKNN configuration (cosine, k=100, no IUF, no decay)
                    "itemcf:name=itemknn,neighbors=100,iuf=False,history_length=None,"
                    "position_half_life=None"]
KS = (10, 50, 200)


def parse(spec: str):
    """``kind:key=value,...`` (values as JSON, bare words as strings) -> channel."""
    kind, _, rest = spec.partition(":")
    params = {}
    for pair in filter(None, rest.split(",")):
        key, _, raw = pair.partition("=")
        raw = {"None": "null", "True": "true", "False": "false"}.get(raw, raw)
        try:
            params[key] = json.loads(raw)
        except json.JSONDecodeError:
            params[key] = raw
    return channel_class(kind)(**params)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("datasets", nargs="+")
    parser.add_argument("--channel", action="append", help="kind:key=value,... (repeatable)")
    args = parser.parse_args()
    specs = args.channel or DEFAULT_CHANNELS
    header = "| dataset | channel | fit s | recall s | " + " | ".join(f"R@{k}" for k in KS) + " |"
    print(header)
    print("|" + " --- |" * (4 + len(KS)))
    for name in args.datasets:
        split = make_split(load_builtin(name), "loo")
        total = 0.0
        for spec in specs:
            channel = parse(spec)
            start = time.perf_counter()
            channel.fit(split.train)
            fit_s = time.perf_counter() - start
            start = time.perf_counter()
            ranked = rank_task(channel, split.test, max(KS))
            recall_s = time.perf_counter() - start
            total += fit_s + recall_s
            metrics = ranking_metrics(ranked, split.test.targets, KS, split.dataset.n_items)
            print(f"| {name} | {channel.name} | {fit_s:.1f} | {recall_s:.1f} | "
                  + " | ".join(f"{metrics[f'recall@{k}']:.4f}" for k in KS) + " |", flush=True)
        print(f"| {name} | total | {total:.1f} s | | " + " | " * (len(KS) - 1) + " |",
              flush=True)


if __name__ == "__main__":
    main()
