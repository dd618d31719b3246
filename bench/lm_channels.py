"""Recall of the language-model channels on MovieLens, under the project's protocols.

``loo`` (chronological leave-one-out, see llmrecall.evaluate): Recall@10/50/200 of every
channel, fitted on the split's train part, tested on each user's last interaction.
``cold-items``: 10% of items (seeded) lose every interaction from training; only they are
ranked, for the users who interacted with them; every text channel against random ranking
and against the "recency-weighted mean of history embeddings" baseline (semantic_user with
one interest).

    PYTHONPATH=src python bench/lm_channels.py --dataset ml-100k [--only LABEL ...] [--fast]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

from llmrecall.channels import channel_class  # noqa: E402
from llmrecall.data.builtin import load_builtin  # noqa: E402
from llmrecall.evaluate import RandomRanking, evaluate_channel, make_split  # noqa: E402

KS = (10, 50, 200)


def run(protocol: str, dataset, specs: dict[str, tuple[str, dict]], validation: bool,
        with_random: bool) -> dict[str, dict]:
    split = make_split(dataset, protocol, seed=0)
    task = split.valid if validation else split.test
    print(f"{dataset.name} {protocol} ({'validation' if validation else 'test'}): "
          f"{task.describe()}", flush=True)
    channels = dict(specs)
    out = {}
    if with_random:
        channels = {"random": None, **channels}
    for label, spec in channels.items():
        t0 = time.time()
        channel = RandomRanking(seed=0) if spec is None else channel_class(spec[0])(**spec[1])
        channel.fit(split.train)
        t1 = time.time()
        metrics = evaluate_channel(channel, task, k=max(KS), ks=KS)
        row = {f"R@{k}": metrics[f"recall@{k}"] for k in KS}
        out[label] = {**row, "fit_s": round(t1 - t0, 1), "eval_s": round(time.time() - t1, 1)}
        print(f"  {label:28s} " + "  ".join(f"{k}={v:.4f}" if isinstance(v, float) and k[0] == "R"
                                            else f"{k}={v}" for k, v in out[label].items()),
              flush=True)
    return out


def specs(fast: bool) -> dict[str, tuple[str, dict]]:
    """The channels compared, at their default hyperparameters (``fast``: few epochs)."""
    sasrec = {"epochs": 3} if fast else {}
    return {
        "semantic_i2i": ("semantic_i2i", {}),
        "semantic_user": ("semantic_user", {}),
        "semantic_user (1 interest)": ("semantic_user", {"n_interests": 1}),
        "textcf": ("textcf", {"epochs": 2} if fast else {}),
        # the setting configs/cold-text.toml uses: items = their MLP text image
        "textcf cold": ("textcf", {"propagate_items": False,
                                   **({"epochs": 2} if fast else {})}),
        "sasrec id-only": ("sasrec", {"text_init": "none", **sasrec}),
        "sasrec text-init": ("sasrec", {"text_init": "init", **sasrec}),
        "sasrec text-fuse": ("sasrec", {"text_init": "fuse", **sasrec}),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--only", nargs="*", help="labels to run (default: all)")
    parser.add_argument("--validation", action="store_true", help="score the validation task")
    parser.add_argument("--fast", action="store_true", help="few epochs (smoke run)")
    parser.add_argument("--no-cold", action="store_true", help="skip the cold-items check")
    parser.add_argument("--no-loo", action="store_true", help="skip leave-one-out")
    parser.add_argument("--out", help="also write the results as JSON here")
    args = parser.parse_args()
    dataset = load_builtin(args.dataset)
    chosen = {k: v for k, v in specs(args.fast).items() if not args.only or k in args.only}
    results: dict = {"dataset": args.dataset, "specs": chosen}
    if not args.no_loo:
        results["loo"] = run("loo", dataset, chosen, args.validation, with_random=False)
    if not args.no_cold:
        # the id-only and text-init models have nothing learned about items never trained on
        cold = {k: v for k, v in chosen.items()
                if v[0] != "sasrec" or v[1].get("text_init") == "fuse"}
        results["cold-items"] = run("cold-items", dataset, cold, args.validation,
                                    with_random=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
