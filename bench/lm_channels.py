"""Recall of the language-model channels on MovieLens.

Chronological leave-one-out: each user's last interaction is the test target, the one before
it the validation target; channels train on the rest and recall from the training history.
Cold items: 10% of items (seeded) lose every interaction from training; for each user who
interacted with them, only those items are ranked, with the user's warm history as input.

    PYTHONPATH=src python bench/lm_channels.py --dataset ml-100k [--ml1m] [--fast]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from llmrecall.channels import channel_class  # noqa: E402
from llmrecall.data.builtin import load_builtin  # noqa: E402
from llmrecall.data.dataset import Dataset, Histories  # noqa: E402

KS = (10, 50, 200)


def leave_last_out(dataset: Dataset, n_last: int = 1) -> tuple[Dataset, np.ndarray, np.ndarray]:
    """Train = every user's log without its last ``n_last`` events; target = the event
    ``n_last`` from the end. Returns (train dataset, target users int32, target items int32)."""
    log = dataset.interactions
    order = log.chronological_order()
    user = log.user[order]
    counts = np.bincount(user, minlength=dataset.n_users)
    ends = np.cumsum(counts)
    rank_from_end = np.repeat(ends, counts) - 1 - np.arange(len(order))  # 0 = newest
    eligible = counts[user] > n_last
    target = order[(rank_from_end == n_last - 1) & eligible]
    train = order[(rank_from_end >= n_last) | ~eligible]
    return (dataset.with_interactions(log.take(np.sort(train))),
            log.user[target].astype(np.int32), log.item[target].astype(np.int32))


def hit_rates(ids: np.ndarray, targets: np.ndarray) -> dict[int, float]:
    """Recall@K with one target per user (= hit rate)."""
    hit = ids == targets[:, None]
    return {k: float(hit[:, :k].any(axis=1).mean()) for k in KS}


def evaluate_loo(dataset: Dataset, specs: dict[str, tuple[str, dict]],
                 validation: bool = False) -> dict[str, dict]:
    train, users, items = leave_last_out(dataset, 1)
    if validation:  # tune on the second-to-last event, never seeing the test target
        train, users, items = leave_last_out(train, 1)
    history = train.histories()
    out = {}
    for label, (kind, params) in specs.items():
        t0 = time.time()
        channel = channel_class(kind)(**params).fit(train)
        t1 = time.time()
        cands = channel.recall(users, max(KS), history)
        out[label] = {**{f"R@{k}": v for k, v in hit_rates(cands.ids, items).items()},
                      "fit_s": t1 - t0, "recall_s": time.time() - t1}
        print(f"  {label:28s} " + "  ".join(f"{k}={v:.4f}" for k, v in out[label].items()),
              flush=True)
    return out


def cold_items_split(dataset: Dataset, share: float = 0.1, seed: int = 0):
    """(train dataset without the cold items' events, cold bool[n_items], test Histories of
    the cold events)."""
    rng = np.random.default_rng(seed)
    cold = np.zeros(dataset.n_items, bool)
    cold[rng.choice(dataset.n_items, int(round(share * dataset.n_items)), replace=False)] = True
    log = dataset.interactions
    is_cold = cold[log.item]
    train = dataset.with_interactions(log.take(~is_cold))
    test = Histories.from_interactions(log.take(is_cold), dataset.n_users, dataset.n_items)
    return train, cold, test


def evaluate_cold(dataset: Dataset, specs: dict[str, tuple[str, dict]], seed: int = 0) -> dict:
    """Recall@10 over cold items only, per user with cold interactions (macro average):
    |top-10 ∩ user's cold items| / min(10, |user's cold items|)."""
    train, cold, test = cold_items_split(dataset, seed=seed)
    history = train.histories()
    users = np.flatnonzero(test.lengths() > 0).astype(np.int32)
    truth = test.matrix(users)
    n_true = np.asarray(truth.sum(axis=1)).ravel()
    out = {}

    def score(ids: np.ndarray) -> float:
        rows = np.repeat(np.arange(len(users)), ids.shape[1])
        hits = np.asarray(truth[rows, np.maximum(ids.ravel(), 0)]).ravel().reshape(ids.shape)
        hits[ids < 0] = 0
        return float((hits[:, :10].sum(axis=1) / np.minimum(10, n_true)).mean())

    rng = np.random.default_rng(seed)
    cold_ids = np.flatnonzero(cold)
    rand = np.stack([rng.permutation(cold_ids)[:10] for _ in users])
    out["random"] = score(rand)
    print(f"  {'random':28s} R@10={out['random']:.4f}", flush=True)
    for label, (kind, params) in specs.items():
        channel = channel_class(kind)(**params).fit(train)
        cands = channel.recall(users, 10, history, allowed=cold)
        out[label] = score(cands.ids)
        print(f"  {label:28s} R@10={out[label]:.4f}", flush=True)
    return out


def specs(fast: bool) -> dict[str, tuple[str, dict]]:
    """The channels compared; the same settings for the three SASRec variants."""
    sasrec = {"epochs": 3 if fast else 30, "lr": 2e-3}
    return {
        "semantic_i2i": ("semantic_i2i", {}),
        "semantic_user": ("semantic_user", {}),
        "semantic_user (1 interest)": ("semantic_user", {"n_interests": 1}),
        "textcf": ("textcf", {"epochs": 2 if fast else 10}),
        "sasrec id-only": ("sasrec", {"text_init": "none", **sasrec}),
        "sasrec text-init": ("sasrec", {"text_init": "init", **sasrec}),
        "sasrec text-fuse": ("sasrec", {"text_init": "fuse", **sasrec}),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--only", nargs="*", help="labels to run (default: all)")
    parser.add_argument("--validation", action="store_true", help="score on the validation target")
    parser.add_argument("--fast", action="store_true", help="few epochs (smoke run)")
    parser.add_argument("--no-cold", action="store_true", help="skip the cold-items check")
    parser.add_argument("--no-loo", action="store_true", help="skip leave-one-out")
    parser.add_argument("--out", help="also write the results as JSON here")
    args = parser.parse_args()
    dataset = load_builtin(args.dataset)
    chosen = {k: v for k, v in specs(args.fast).items() if not args.only or k in args.only}
    print(f"{args.dataset}: chronological leave-one-out"
          f"{' (validation target)' if args.validation else ''}, Recall@{list(KS)}")
    results: dict = {"dataset": args.dataset, "specs": chosen}
    if not args.no_loo:
        results["loo"] = evaluate_loo(dataset, chosen, validation=args.validation)
    if not args.no_cold:
        print(f"{args.dataset}: cold items (10%, seed 0), Recall@10 among cold items")
        # the id-only model has nothing to say about items it never trained on
        cold_specs = {k: v for k, v in chosen.items()
                      if v[0] != "sasrec" or v[1].get("text_init") == "fuse"}
        results["cold"] = evaluate_cold(dataset, cold_specs)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
