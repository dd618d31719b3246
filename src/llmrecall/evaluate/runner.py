"""Run a fitted channel on an :class:`EvalTask` and score its candidates."""

from __future__ import annotations

import numpy as np

from llmrecall.channels.base import Channel
from llmrecall.evaluate.metrics import DEFAULT_KS, ranking_metrics
from llmrecall.evaluate.protocols import EvalTask

#: users per recall call; bounds the dense score block a scoring channel allocates
EVAL_BATCH = 1024


def rank_task(channel: Channel, task: EvalTask, k: int = 200,
              batch: int = EVAL_BATCH) -> np.ndarray:
    """The channel's top-``k`` list for every user of ``task``, with the task's masking.

    The channel recalls from ``task.history`` restricted to ``task.candidate_mask``. The
    items to mask are ``task.excluded()`` — the consumed items minus the user's targets, as
    RecBole masks them — which may differ from the recall history (``recbole-general`` test
    masks train + valid while the history is train), so the channel is asked with
    ``exclude_seen=False`` for ``k`` plus the batch's largest mask size, and masked items
    are dropped afterwards. The result equals top-``k`` over the unmasked candidates.

    Returns:
        int32[u, k] dense item ids, best first, padded with -1; row i is ``task.users[i]``.
    """
    excluded = task.excluded()
    if task.candidate_mask is not None:
        # masked items outside the candidates are never returned anyway: do not over-fetch
        excluded = excluded.multiply(task.candidate_mask[None, :].astype(np.float32)).tocsr()
        excluded.eliminate_zeros()
    excluded.sort_indices()
    n_items = np.int64(task.n_items)
    out = np.full((len(task.users), k), -1, np.int32)
    for start in range(0, len(task.users), batch):
        rows = slice(start, start + batch)
        users = task.users[rows]
        mask = excluded[rows]
        extra = int(mask.getnnz(axis=1).max()) if mask.nnz else 0
        ids = channel.recall(users, k + extra, task.history, allowed=task.candidate_mask,
                             exclude_seen=False).ids
        # drop masked (row, item) pairs by key lookup, then pull the survivors to the front
        row_keys = np.repeat(np.arange(len(users), dtype=np.int64), np.diff(mask.indptr))
        mask_keys = row_keys * n_items + mask.indices
        keys = np.arange(len(users), dtype=np.int64)[:, None] * n_items + ids
        keep = (ids >= 0) & ~np.isin(keys, mask_keys)
        order = np.argsort(~keep, axis=1, kind="stable")
        ids = np.take_along_axis(np.where(keep, ids, -1), order, axis=1)[:, :k]
        out[rows, :ids.shape[1]] = ids
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
