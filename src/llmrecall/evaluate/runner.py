"""Run a fitted channel on an :class:`EvalTask` and score its candidates."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import scipy.sparse as sp

from llmrecall.channels.base import Candidates, Channel
from llmrecall.evaluate.metrics import DEFAULT_KS, ranking_metrics
from llmrecall.evaluate.protocols import EvalTask, and_not

#: users per recall call; bounds the dense score block a scoring channel allocates
EVAL_BATCH = 1024


def rank_task(channel: Channel, task: EvalTask, k: int = 200,
              batch: int = EVAL_BATCH,
              on_batch: Callable[[int], None] | None = None) -> np.ndarray:
    """int32[u, k]: the ids of :func:`recall_lists`, best first, padded with -1."""
    return recall_lists(channel, task, k, batch, on_batch).ids


def recall_lists(channel: Channel, task: EvalTask, k: int = 200,
                 batch: int = EVAL_BATCH,
                 on_batch: Callable[[int], None] | None = None) -> Candidates:
    """The channel's top-``k`` list for every user of ``task``, with the task's masking.

    The channel recalls from ``task.history`` restricted to ``task.candidate_mask``; the items
    to mask are ``task.excluded()`` (consumed items minus the user's targets, as RecBole masks
    them), which need not equal the recall history: ``recbole-general`` test masks train +
    valid while recalling from train, and a repeated item that is a target stays rankable
    although it is in the history. Per batch, the channel masks its history itself when
    every history item is to be masked (the usual case); otherwise it is asked with
    ``exclude_seen=False``. Either way it returns ``k`` plus the batch's largest number of
    remaining masked candidates, and those are dropped here, so the result equals the top-``k``
    over the unmasked candidates. ``on_batch(n)`` is called after each batch of ``n`` users.

    Returns:
        :class:`Candidates`: ``ids`` int32[u, k] dense item ids, best first, padded with -1
        (row i is ``task.users[i]``), and ``scores`` float32[u, k] the channel's own scores
        of them (-inf at padding).
    """
    excluded = _within(task.excluded(), task.candidate_mask)
    n_items = np.int64(task.n_items)
    out = np.full((len(task.users), k), -1, np.int32)
    out_scores = np.full((len(task.users), k), -np.inf, np.float32)
    for start in range(0, len(task.users), batch):
        rows = slice(start, start + batch)
        users = task.users[rows]
        masked = excluded[rows]
        history = _within(task.history.matrix(users), task.candidate_mask)
        history_masked = history.multiply(masked)
        # the channel may mask its own history only if no history item is rankable
        channel_masks = history_masked.nnz == history.nnz
        left = and_not(masked, history_masked) if channel_masks else masked
        extra = int(left.getnnz(axis=1).max()) if left.nnz else 0
        got = channel.recall(users, k + extra, task.history, allowed=task.candidate_mask,
                             exclude_seen=channel_masks)
        ids, scores = got.ids, got.scores
        if left.nnz:  # drop the left-over masked (row, item) pairs, survivors to the front
            left.sort_indices()
            row_keys = np.repeat(np.arange(len(users), dtype=np.int64), np.diff(left.indptr))
            keys = np.arange(len(users), dtype=np.int64)[:, None] * n_items + ids
            keep = (ids >= 0) & ~np.isin(keys, row_keys * n_items + left.indices)
            order = np.argsort(~keep, axis=1, kind="stable")
            ids = np.take_along_axis(np.where(keep, ids, -1), order, axis=1)
            scores = np.take_along_axis(np.where(keep, scores, -np.inf), order, axis=1)
        out[rows] = ids[:, :k]
        out_scores[rows] = np.where(ids[:, :k] >= 0, scores[:, :k], -np.inf)
        if on_batch is not None:
            on_batch(len(users))
    return Candidates(out, out_scores)


def _within(matrix: sp.csr_matrix, candidate_mask: np.ndarray | None) -> sp.csr_matrix:
    """``matrix`` (binary CSR) with columns outside ``candidate_mask`` cleared: a masked item
    that cannot be a candidate is never returned anyway, so it needs no over-fetching."""
    if candidate_mask is None:
        return matrix.tocsr()
    # scipy-stubs types spmatrix.multiply as the matrix product (dense for a dense operand);
    # the element-wise product with a row vector is sparse (a coo_matrix)
    masked = matrix.multiply(candidate_mask[None, :].astype(np.float32))
    out = masked.tocsr()  # type: ignore[attr-defined]
    out.eliminate_zeros()
    return out


def evaluate_channel(channel: Channel, task: EvalTask, k: int = 200, ks=DEFAULT_KS,
                     batch: int = EVAL_BATCH) -> dict[str, float]:
    """Metrics of a fitted channel on ``task`` at every cut-off in ``ks`` up to ``k``.

    Returns ``ranking_metrics`` of :func:`rank_task`'s lists (coverage over the whole
    catalog, ``task.n_items``).
    """
    ks = [c for c in ks if c <= k] or [k]
    ranked = rank_task(channel, task, k, batch)
    return ranking_metrics(ranked, task.targets, ks, n_items=task.n_items)
