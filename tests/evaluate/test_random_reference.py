"""The random-ranking reference of ``cold-items``: exact expectations, in the report and the
table (docs/evaluation.md says to read ``cold-items`` results next to it)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import scipy.sparse as sp

from llmrecall.config import parse_config
from llmrecall.data.builtin import load_builtin
from llmrecall.data.dataset import Histories
from llmrecall.evaluate.baselines import random_ranking_metrics
from llmrecall.evaluate.experiment import evaluate
from llmrecall.evaluate.metrics import ranking_metrics
from llmrecall.evaluate.protocols import EvalTask
from llmrecall.report import markdown_table, rich_table


def _csr(rows: list[list[int]], n_items: int) -> sp.csr_matrix:
    r = [i for i, row in enumerate(rows) for _ in row]
    c = [x for row in rows for x in row]
    return sp.csr_matrix((np.ones(len(c), np.float32), (r, c)), shape=(len(rows), n_items))


def test_expected_metrics_equal_the_mean_over_every_ranking():
    # 7 items, candidates 0..5 (item 6 is not one); user 0 has items 4 and 5 masked
    # (consumed), so it ranks 4 candidates; user 1 ranks all 6
    n_items = 7
    mask = np.array([True] * 6 + [False])
    targets = _csr([[0, 2], [1, 3, 5]], n_items)
    exclude = _csr([[4, 5], []], n_items)
    empty = Histories(np.zeros(3, np.int64), np.zeros(0, np.int32), np.zeros(0),
                      np.zeros(0, np.float32), n_items)
    task = EvalTask(np.array([0, 1], np.int32), targets, empty, mask, exclude)
    ks = (1, 2, 3, 6)
    got = random_ranking_metrics(task, ks)

    # brute force: every ordering of each user's candidates, equally likely
    per_user = []
    for u, candidates in enumerate(([0, 1, 2, 3], [0, 1, 2, 3, 4, 5])):
        lists = np.array([list(p) + [-1] * (6 - len(p))
                          for p in itertools.permutations(candidates)], np.int32)
        rows = sp.vstack([targets[u]] * len(lists)).tocsr()
        per_user.append(ranking_metrics(lists, rows, ks, n_items))
    for k in ks:
        for name in ("recall", "hr", "ndcg", "mrr"):
            want = np.mean([m[f"{name}@{k}"] for m in per_user])
            assert got[f"{name}@{k}"] == pytest.approx(want, abs=1e-12), (name, k)
    assert got["users"] == 2
    # coverage: item i is missed by both lists with probability prod (1 - k_u / C_u)
    k = 2
    missed = np.array([(1 - 2 / 4) * (1 - 2 / 6)] * 4 + [1 - 2 / 6] * 2)
    assert got[f"coverage@{k}"] == pytest.approx((1 - missed).sum() / n_items)


def test_cold_items_report_and_table_carry_the_random_row():
    # regression: docs/evaluation.md says to read cold-items results next to a random
    # ranking, but neither the report nor the table had one
    cfg = parse_config({"fusion": {"k": 200, "channel_k": 200},
                        "channels": [{"kind": "popularity"}]})
    report = evaluate(load_builtin("ml-100k"), "cold-items", cfg)
    random = report["reference"]["random"]
    assert random["recall@10"] == pytest.approx(10 / 168)  # K / C, C = 168 new items
    assert random["recall@200"] == pytest.approx(1.0)
    assert random["users"] == report["users_evaluated"]
    assert "random" not in report["results"]  # results stay channels + fused
    assert report["reference"]["method"].startswith("exact expectation")
    assert "random (expected)" in markdown_table(report)
    assert "random (expected)" in [str(c) for c in rich_table(report).columns[0]._cells]
    # other protocols are read against their own baselines: no row there
    assert "reference" not in evaluate(load_builtin("ml-100k"), "loo", cfg)
