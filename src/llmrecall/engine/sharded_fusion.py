"""``[fusion] method = "learned"`` on the sharded log: fitted on a seeded sample of
validation users drawn from every shard.

The one-process evaluation fits the learned fusion
(:func:`llmrecall.fusion_learn.fit_learned_fusion`) on every validation user's channel
lists: its table on at most :data:`~llmrecall.fusion_learn.MAX_FIT_USERS` of them, its
guard (the choice that keeps the fused list from falling below the best channel) out of
fold on all of them. No process here holds every validation user's lists, so:

1. **sample** (one task per history shard, channels fitted on the split's train part):
   each user of the shard's validation task is kept with probability
   ``rate = min(1, FUSION_USERS / users in the log)``, drawn from
   ``numpy.random.default_rng([seed, shard])``; the task recalls every channel's list for
   the kept users and writes the lists, the targets and the users' history lengths to the
   run folder (:class:`~llmrecall.engine.stage_files.StageParts`: a rerun recalls only the
   shards missing);
2. **fit** (the driver): the samples read and the fusion fitted by the one-process
   function, guard included, on all sampled users.

So the guard judges the fused list on up to :data:`FUSION_USERS` validation users (its
noise is that of a sample of that size, which the guard's margin already accounts for),
and the driver holds ``sampled users x channels x k`` int32 (200 MB at 50,000 users, 5
channels and k = 200), whatever the log's size. With fewer users than that every
validation user is used: the same users as the one-process fit, in shard order rather
than the loader's, so its folds and subsamples are drawn differently.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from llmrecall.engine.shard_split import shard_task
from llmrecall.engine.stage_files import StageParts, digest

#: validation users the learned fusion is fitted and guarded on, at most (about: each
#: user is drawn independently)
FUSION_USERS = 50_000


def shard_fusion_sample(shard: int, path: str, items: list[str], pipeline, rate: float,
                        seed: int, kept: StageParts) -> int:
    """Recall shard ``shard``'s sampled validation users (module docstring, step 1) and
    write ``ids/<channel>`` int32[s, k_c] (with ``[fusion] score_base`` also
    ``scores/<channel>`` float32[s, k_c], the channel's own scores), ``target_indptr`` / ``target_items`` (the
    targets' CSR rows) and ``lengths`` int64[s] to ``kept``; returns ``s``."""
    from llmrecall.engine.shard_users import for_shard
    from llmrecall.evaluate.experiment import recall_task

    task = shard_task(path, items, "valid")
    pipeline = for_shard(pipeline, path)  # per-user rows kept per shard (BPR's factors)
    keep = np.random.default_rng([seed, shard]).random(len(task.users)) < rate
    sample = task.take(np.flatnonzero(keep))
    lists = recall_task(pipeline, sample) if len(sample.users) else None
    arrays = {f"ids/{name}": (lists.lists[name].ids if lists is not None
                              else np.zeros((0, pipeline.channel_k(name)), np.int32))
              for name in pipeline.channels}
    if pipeline.config.fusion.score_base:  # only the score base reads them
        arrays.update({f"scores/{name}": (
            lists.lists[name].scores if lists is not None
            else np.zeros((0, pipeline.channel_k(name)), np.float32))
            for name in pipeline.channels})
    arrays.update(target_indptr=sample.targets.indptr.astype(np.int64),
                  target_items=sample.targets.indices.astype(np.int32),
                  lengths=sample.history.lengths()[sample.users].astype(np.int64))
    kept.save(shard, arrays, {"users": len(sample.users), "valid_users": len(task.users)})
    return len(sample.users)


def fit_sharded_fusion(pipeline, paths: list[str], items: list[str], engine, run: Path,
                       resumed: dict[str, Any], total_users: int, *, k: int,
                       max_users: int = FUSION_USERS) -> dict[str, Any]:
    """Fit ``pipeline``'s learned fusion (its channels fitted on the ``loo`` train part of
    the shards ``paths``) on a sample of at most about ``max_users`` of the
    ``total_users`` users' validation lists, and attach it (``pipeline.fusion_model_``).
    Returns the report's ``fusion`` entry: the fit's report plus ``fit_seconds``,
    ``users`` (sampled) and ``valid_users`` (in the shards)."""
    from llmrecall.channels.base import Candidates
    from llmrecall.errors import DataError
    from llmrecall.fusion_learn import fit_learned_fusion

    start = time.perf_counter()
    config = pipeline.config
    rate = min(1.0, max_users / max(total_users, 1))
    kept = StageParts(run, "fusion-sample", digest(config.config_hash(), rate, config.seed))
    todo = kept.missing(len(paths))
    resumed["fusion_sample"] = f"{len(paths) - len(todo)}/{len(paths)}"
    engine.map_tasks(lambda s: shard_fusion_sample(s, paths[s], items, pipeline, rate,
                                                   config.seed, kept), todo)
    parts = [kept.load(s) for s in range(len(paths))]
    users = sum(meta["users"] for _arrays, meta in parts)
    if users == 0:
        raise DataError("the sharded log has no validation user to fit the learned fusion on")
    lists: dict[str, Any] = {name: np.concatenate([a[f"ids/{name}"] for a, _m in parts])
                             for name in pipeline.channels}
    if config.fusion.score_base:
        lists = {name: Candidates(ids, np.concatenate([a[f"scores/{name}"] for a, _m in parts]))
                 for name, ids in lists.items()}
    targets = sp.vstack([sp.csr_matrix((np.ones(len(a["target_items"]), np.float32),
                                        a["target_items"], a["target_indptr"]),
                                       shape=(m["users"], len(items))) for a, m in parts],
                        format="csr")
    lengths = np.concatenate([a["lengths"] for a, _m in parts])
    model = fit_learned_fusion(lists, targets, lengths, len(items), k=k, seed=config.seed,
                               rrf_weights=pipeline.weights, rrf_k=config.fusion.rrf_k,
                               score_base=config.fusion.score_base)
    pipeline.fusion_model_ = model
    return {**model.report, "fit_seconds": time.perf_counter() - start, "users": int(users),
            "valid_users": int(sum(m["valid_users"] for _a, m in parts))}


def fusion_key(model) -> str | None:
    """A digest of a fitted :class:`~llmrecall.fusion.LearnedFusion` (its table, length
    edges, guard), or None: what a stage's results that used the fused list depend on
    besides the config (the same config fitted on another sample fuses differently)."""
    if model is None:
        return None
    table = hashlib.sha256(np.ascontiguousarray(model.table).tobytes()).hexdigest()
    weights = None if model.score_weights is None else np.asarray(model.score_weights).tolist()
    # a model without score weights digests as before they existed (kept stages stay valid)
    return digest(model.channels, table, model.length_edges.tolist(), model.reference,
                  model.prefix, model.step, model.base, model.rrf_k,
                  *([weights] if weights is not None else []))
