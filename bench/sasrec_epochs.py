"""How SASRec's recall grows with training epochs, on the ``loo`` split.

Trains ``sasrec`` (its own epoch loop, :meth:`SASRec.train_epochs`, one epoch per call, one
optimizer for the whole run) on the split's train part and, every ``--every`` epochs, prints
one JSON line: seconds for the last epoch, validation (v*) and test (t*) Recall@10, NDCG@10,
Recall@50 and test Recall@200. The test columns are for reading the curve only; choosing an
epoch count from them would be tuning on test (early stopping, ``patience``, chooses from
held-out training items instead).

    PYTHONPATH=src python bench/sasrec_epochs.py --dataset ml-1m --epochs 16 --every 2 \
        --param text_init=init
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from llmrecall.channels.sequential import SASRec, training_windows  # noqa: E402
from llmrecall.data.builtin import load_builtin  # noqa: E402
from llmrecall.evaluate import evaluate_channel, make_split  # noqa: E402


def _value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ml-1m")
    parser.add_argument("--epochs", type=int, default=16)
    parser.add_argument("--every", type=int, default=2)
    parser.add_argument("--param", action="append", default=[],
                        help="sasrec parameter NAME=VALUE (text_init=init, max_len=50, ...)")
    args = parser.parse_args()
    params = {name: _value(value) for name, _, value in (p.partition("=") for p in args.param)}
    split = make_split(load_builtin(args.dataset), "loo", seed=0)
    train = split.train
    channel = SASRec(**{**params, "epochs": 1})  # one epoch per train_epochs call
    torch.set_num_threads(min(channel.threads, 2))
    torch.manual_seed(channel.seed)
    rng = np.random.default_rng(channel.seed)
    model = channel.initial_model(train)  # SASRec.fit's network and initialisation
    windows = training_windows(train.histories(), channel.max_len)
    channel.stopping_ = None
    channel.install(model, train)
    model.train()
    optimizer = channel.optimizer(model)
    print(f"{args.dataset}: {len(windows):,} training windows; params {params}", flush=True)
    for epoch in range(1, args.epochs + 1):
        start = time.perf_counter()
        channel.train_epochs(model, windows, train.n_items, rng, optimizer=optimizer)
        seconds = time.perf_counter() - start
        if epoch % args.every and epoch != args.epochs:
            continue
        model.eval()
        valid = evaluate_channel(channel, split.valid, k=200, ks=(10, 50, 200))
        test = evaluate_channel(channel, split.test, k=200, ks=(10, 50, 200))
        model.train()
        print(json.dumps({"epoch": epoch, "epoch_s": round(seconds, 1),
                          **{f"v{k}": round(valid[m], 4) for k, m in
                             (("R10", "recall@10"), ("N10", "ndcg@10"), ("R50", "recall@50"))},
                          **{f"t{k}": round(test[m], 4) for k, m in
                             (("R10", "recall@10"), ("N10", "ndcg@10"), ("R50", "recall@50"),
                              ("R200", "recall@200"))}}), flush=True)


if __name__ == "__main__":
    main()
