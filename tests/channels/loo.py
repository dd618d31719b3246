"""Chronological leave-one-out (protocol ``loo`` in the evaluation design) and Recall@K.

Per user, interactions sorted by time (stable): last -> test, second to last -> validation,
the rest -> train; users with fewer than 3 interactions keep everything in train and are not
evaluated. Models fit on train; the test history is train + validation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from llmrecall.data.dataset import Dataset, Histories


@dataclass(frozen=True)
class LeaveOneOut:
    """train: the dataset to fit on; users: int32[u] evaluated users;
    valid_history / test_history: histories to recall from; valid_target / test_target:
    int32[u] the held-out item of each evaluated user."""

    train: Dataset
    users: np.ndarray
    valid_history: Histories
    valid_target: np.ndarray
    test_history: Histories
    test_target: np.ndarray


def leave_one_out(dataset: Dataset) -> LeaveOneOut:
    log = dataset.interactions
    order = log.chronological_order()
    user = log.user[order]
    counts = np.bincount(user, minlength=dataset.n_users)
    ends = np.cumsum(counts)
    back = ends[user] - np.arange(len(user))  # 1 = last interaction of its user
    evaluated = counts[user] >= 3
    test_rows = order[evaluated & (back == 1)]
    valid_rows = order[evaluated & (back == 2)]
    train_rows = order[~evaluated | (back > 2)]
    train = dataset.with_interactions(log.take(np.sort(train_rows)))
    with_valid = dataset.with_interactions(log.take(np.sort(np.concatenate([train_rows,
                                                                            valid_rows]))))
    users = np.flatnonzero(counts >= 3).astype(np.int32)
    valid_target = np.empty(dataset.n_users, np.int32)
    valid_target[log.user[valid_rows]] = log.item[valid_rows]
    test_target = np.empty(dataset.n_users, np.int32)
    test_target[log.user[test_rows]] = log.item[test_rows]
    return LeaveOneOut(train, users, train.histories(), valid_target[users],
                       with_valid.histories(), test_target[users])


def recall_at(ids: np.ndarray, target: np.ndarray, ks) -> dict[int, float]:
    """Recall@K (= hit rate, one target per user) for ids int32[u, >=K], target int32[u]."""
    hits = ids == target[:, None]
    return {k: float(hits[:, :k].any(axis=1).mean()) for k in ks}
