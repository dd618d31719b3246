"""Learned, guarded fusion against hand-weighted RRF and every single channel.

Two steps, so that the channels are fitted once per dataset and config:

    # fit the config's channels on the loo split's train part (seed 0) and keep every
    # channel's validation and test lists (ids only) in one .npz
    PYTHONPATH=src python bench/fusion_guard.py lists --dataset ml-100k --config default \
        --out results/lists-ml100k-default.npz
    # then, from the kept lists: each channel, the config's hand-weighted RRF and the
    # learned fusion (fitted on the validation lists, guarded, applied to the test lists),
    # both as packaged (the guard fills from the learned list or the config's RRF) and with
    # the learned list as its only base; where the lists kept the channels' scores, also
    # with the score base offered (``[fusion] score_base = true``) and the score base alone
    PYTHONPATH=src python bench/fusion_guard.py score results/lists-ml100k-default.npz \
        [--json results/fusion-ml100k-default.json]

``score`` prints Recall@10/20/50/100/200 on test for every row, and the guard's choice.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from llmrecall.channels.base import Candidates

KS = (10, 20, 50, 100, 200)


def _save_task(out: dict, prefix: str, task, lists) -> None:
    targets = task.targets.tocsr()
    out[f"{prefix}/users"] = task.users
    out[f"{prefix}/targets_indptr"] = targets.indptr
    out[f"{prefix}/targets_indices"] = targets.indices
    out[f"{prefix}/history_lengths"] = np.diff(task.history.indptr)[task.users]
    for name, cand in lists.lists.items():
        out[f"{prefix}/ids/{name}"] = cand.ids
        out[f"{prefix}/scores/{name}"] = cand.scores


def make_lists(args) -> None:
    from llmrecall.config import load_config
    from llmrecall.data.builtin import load_builtin
    from llmrecall.evaluate.experiment import recall_task, training_report
    from llmrecall.evaluate.protocols import make_split
    from llmrecall.pipeline import RecallPipeline

    dataset = load_builtin(args.dataset)
    config = load_config(args.config)
    start = time.perf_counter()
    split = make_split(dataset, args.protocol, args.seed)
    pipeline = RecallPipeline(config).fit(
        split.train, progress=lambda name, s: print(f"fitted {name} in {s:.1f}s", flush=True))
    out: dict[str, np.ndarray] = {}
    for prefix, task in (("valid", split.valid), ("test", split.test)):
        lists = recall_task(pipeline, task)
        print(f"recalled {prefix}: " + ", ".join(f"{n} {s:.1f}s" for n, s in
                                                  lists.recall_seconds.items()), flush=True)
        _save_task(out, prefix, task, lists)
    meta = {"dataset": args.dataset, "config": str(args.config), "protocol": args.protocol,
            "seed": args.seed, "n_items": dataset.n_items, "config_toml": config.to_toml(),
            "fit_seconds": pipeline.fit_seconds, "training": training_report(pipeline),
            "seconds": time.perf_counter() - start}
    if meta["training"]:
        print(f"training: {meta['training']}", flush=True)
    out["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **out)
    print(f"wrote {args.out} ({meta['seconds']:.0f} s)", flush=True)


class _Task:
    """What the scorer needs of one task, read back from the .npz."""

    def __init__(self, npz, prefix: str, n_items: int):
        self.users = npz[f"{prefix}/users"]
        self.targets = sp.csr_matrix(
            (np.ones(len(npz[f"{prefix}/targets_indices"]), np.float32),
             npz[f"{prefix}/targets_indices"], npz[f"{prefix}/targets_indptr"]),
            shape=(len(self.users), n_items))
        self.history_lengths = npz[f"{prefix}/history_lengths"]
        names = [k.split("/", 2)[2] for k in npz.files if k.startswith(f"{prefix}/ids/")]
        self.lists = {name: npz[f"{prefix}/ids/{name}"] for name in names}
        # list files written before the lists kept their scores have ids only
        self.candidates = {name: Candidates(self.lists[name], npz[f"{prefix}/scores/{name}"])
                           for name in names if f"{prefix}/scores/{name}" in npz.files}
        if len(self.candidates) < len(names):
            self.candidates = {}


def score(args) -> None:
    import tomllib

    from llmrecall.config import parse_config
    from llmrecall.evaluate.metrics import ranking_metrics
    from llmrecall.fusion import LearnedFusion
    from llmrecall.fusion_learn import fit_learned_fusion
    from llmrecall.tune.fastfuse import fused_ids

    npz = np.load(args.lists, allow_pickle=False)
    meta = json.loads(bytes(npz["meta"]).decode())
    n_items = meta["n_items"]
    config = parse_config(tomllib.loads(meta["config_toml"]))
    weights = {c.channel_name: _weight(c) for c in config.enabled_channels}
    valid, test = _Task(npz, "valid", n_items), _Task(npz, "test", n_items)
    k = max(KS)
    rows: dict[str, dict[str, float]] = {}
    for name, ids in test.lists.items():
        rows[name] = _recalls(ranking_metrics(ids[:, :k], test.targets, KS, n_items))
    rrf = fused_ids(test.lists, k, n_items, weights=weights, rrf_k=config.fusion.rrf_k)
    rows["fused (rrf, hand weights)"] = _recalls(ranking_metrics(rrf, test.targets, KS, n_items))
    # the packaged fusion (the guard may fill from the learned list or the config's RRF),
    # and for comparison the guard with the learned list as its only base
    guards = {}
    variants = [("learned or rrf base", weights, False), ("learned base only", None, False)]
    if valid.candidates and test.candidates:  # the lists kept the channels' scores
        variants.insert(0, ("learned, rrf or score base", weights, True))
    for label, rrf_weights, score_base in variants:
        start = time.perf_counter()
        model = fit_learned_fusion(valid.candidates if score_base else valid.lists,
                                   valid.targets, valid.history_lengths, n_items,
                                   k=k, seed=args.seed, rrf_weights=rrf_weights,
                                   rrf_k=config.fusion.rrf_k, score_base=score_base)
        fit_s = time.perf_counter() - start
        start = time.perf_counter()
        test_lists = test.candidates if score_base else test.lists
        learned = model.fuse(test_lists, k, history_lengths=test.history_lengths,
                             weights=weights, n_items=n_items).ids
        fuse_s = time.perf_counter() - start
        rows[f"fused (guarded, {label})"] = _recalls(ranking_metrics(learned, test.targets, KS,
                                                                     n_items))
        guards[label] = model.report
        if score_base:  # the score base's own list, without the guard's prefix
            alone = dataclasses.replace(model, base="score", reference=None, prefix=0)
            ids = alone.fuse(test_lists, k, history_lengths=test.history_lengths,
                             weights=weights, n_items=n_items).ids
            rows["score base alone (no guard)"] = _recalls(ranking_metrics(ids, test.targets,
                                                                           KS, n_items))
    best = {col: max(rows[n][col] for n in test.lists) for col in (*(f"R@{c}" for c in KS), "N@10")}
    report = {"meta": {k_: v for k_, v in meta.items() if k_ != "config_toml"},
              "test": rows, "best_channel": best, "guard": guards,
              "fusion_fit_seconds": fit_s, "fusion_apply_seconds": fuse_s,
              "test_users": int(len(test.users))}
    _print(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    assert isinstance(model, LearnedFusion)


def _weight(c):
    from llmrecall.fusion import ChannelWeight

    return ChannelWeight(c.weight, c.quota, c.min_slots)


def _recalls(metrics: dict) -> dict[str, float]:
    """Recall@K at every K of KS, and NDCG@10."""
    return {**{f"R@{c}": metrics[f"recall@{c}"] for c in KS}, "N@10": metrics["ndcg@10"]}


def _print(report: dict) -> None:
    meta = report["meta"]
    print(f"\n{meta['dataset']} · {meta['protocol']} · {meta['config']} · "
          f"{report['test_users']} test users")
    columns = (*(f"R@{c}" for c in KS), "N@10")
    print("| list | " + " | ".join(columns) + " |")
    print("|---|" + "---|" * len(columns))
    for name, r in report["test"].items():
        print(f"| {name} | " + " | ".join(f"{r[col]:.4f}" for col in columns) + " |")
    print("| best single channel | " + " | ".join(
        f"{report['best_channel'][col]:.4f}" for col in columns) + " |")
    from llmrecall.evaluate.experiment import guard_choice

    for label, guard in report["guard"].items():
        print(f"guard ({label}): {guard_choice(guard)}; out of fold: "
              f"{json.dumps(guard['out_of_fold_recall'])}")
    print(f"fusion fit {report['fusion_fit_seconds']:.1f}s, "
          f"apply to test {report['fusion_apply_seconds']:.2f}s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="step", required=True)
    lists = sub.add_parser("lists")
    lists.add_argument("--dataset", required=True)
    lists.add_argument("--config", default="default")
    lists.add_argument("--protocol", default="loo")
    lists.add_argument("--seed", type=int, default=0)
    lists.add_argument("--out", required=True)
    scored = sub.add_parser("score")
    scored.add_argument("lists")
    scored.add_argument("--seed", type=int, default=0)
    scored.add_argument("--json")
    args = parser.parse_args()
    make_lists(args) if args.step == "lists" else score(args)


if __name__ == "__main__":
    main()
