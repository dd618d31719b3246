"""``evaluate`` from a sharded log: the interaction log never held by one process.

With ``[engine] log = "sharded"`` the evaluation does not load a
:class:`~llmrecall.data.dataset.Dataset`. The log's files are shuffled into per-user
history shards (:func:`llmrecall.engine.histories.shard_histories`: one Parquet file per
shard of users, each user's items in time order), and every later step reads one shard per
task:

1. **split** (in each task, never stored): ``loo`` per user, as
   :func:`llmrecall.evaluate.protocols.make_split` does it on the whole log: a user with at
   least 3 events keeps the last as the test target and the one before as the validation
   target; everything else is training data. A user's rows are all in one shard, so the
   split needs nothing from the others.
2. **statistics** (one task per shard, summed on the driver): each item's training users
   (ItemCF's norms and fallback) and popularity's (decayed) counts.
3. **ItemCF fit** (map -> shuffle by candidate range -> streamed reduce): each map turns its
   shard's training rows into that shard's co-occurrence ``(W X)^T X`` (float64, ``W`` the
   IUF weights of the shard's users) and sends each reducer the columns of its candidate
   range; each reducer adds the pieces it receives into one dense ``n_items x width`` block,
   **one piece at a time** (:meth:`~llmrecall.engine.local.Engine.shuffle_streamed`), then
   divides by the cosine denominator and keeps each column's top ``neighbors``
   (:func:`~llmrecall.channels.neighbors.prune_block`, the in-process fit's pruning).
   **Swing** runs the three shuffles of :mod:`llmrecall.engine.cooccurrence` with stage 1
   fed by the shards: users numbered shard after shard, ties in time broken by each row's
   place in the log (as the in-process fit breaks them by log position).
4. **recall and metrics** (one task per shard): the fitted pipeline (sent once) ranks the
   shard's users with the evaluator's own code (:func:`~llmrecall.evaluate.experiment.recall_task`,
   the fusion, :func:`~llmrecall.evaluate.metrics.ranking_metrics`); each task returns its
   metrics' sums and the items in its top-K lists; the driver adds them up.

Memory, per process: the driver holds the item vocabulary, per-item statistics, the pruned
similarity (``n_items x neighbors``) and the metric sums: nothing per event, and nothing per
user except Swing's user weights (8 bytes a user); Swing's stage outputs stay in the
object store between its shuffles (``shuffle(..., keep=True)``). A
history task holds one shard (about ``shard_events`` events) and its co-occurrence; a
reducer holds its dense block (at most ``reducer_bytes``: the candidate ranges are cut so)
and one piece. Pieces waiting for their reducer sit in the object store, which spills to
disk when full.

Same answers as the driver path, to float rounding: the co-occurrence sums are added per
shard in float64 and then across shards, where the in-process fit adds every user's term
in float32 in user order; a neighbour whose similarity ties another's to the last bits can
swap places; Swing's float32 pair sums are added in another pair order, with the same
effect. Metrics are averaged from per-shard sums (a different order of additions).

**EASE and EDLAE** sum one Gram matrix per shard in one reducer and solve it there
(:mod:`llmrecall.engine.sharded_ease`): the model itself is single-node. **SASRec** is
trained from training windows built per shard and read by the trainers themselves
(:mod:`llmrecall.engine.sharded_sasrec`; early stopping on a hold-out drawn in every
shard).

**ALS** and **BPR** are factorised by one reducer that gathers the training matrix
(:mod:`llmrecall.engine.sharded_als`; BPR's user factors are written back per shard and
read by each shard's task, :mod:`llmrecall.engine.shard_users`), **textcf** trained by
one reducer that gathers its training graph (:mod:`llmrecall.engine.sharded_textcf`).
**The catalog's channels** ``semantic_i2i``, ``semantic_user`` and ``llm_knowledge`` embed (and generate) the
catalog's texts on the driver (the engine's embedder and generator) and are recalled in
the shard tasks from a pickled copy (:mod:`llmrecall.engine.sharded_text`).
**``llm_interest``** generates its users' interests shard after shard on the engine's
generator, with the users and few-shot examples the driver path draws, and keeps each
shard's matched texts for that shard's tasks (:mod:`llmrecall.engine.sharded_interest`).
**``search_query``** reads the search log shuffled to the same shards as the histories
and keeps each shard's users' latest queries, matched, per shard
(:mod:`llmrecall.engine.sharded_search`).

What it covers: the ``loo`` protocol, the channels ``popularity``, ``itemcf``, ``swing``,
``ease``, ``edlae``, ``als``, ``bpr``, ``sasrec``, ``textcf``, ``semantic_i2i``,
``semantic_user`` (not on Milvus), ``llm_knowledge``, ``llm_interest`` and ``search_query``,
fusion by weights or
``learned`` (fitted on a sample of validation users from every shard:
:mod:`llmrecall.engine.sharded_fusion`), no item filters, logs with user, item and a
numeric time column in CSV, TSV or Parquet, and a search log (CSV, TSV or Parquet) with a numeric time
column or none. Anything else is refused with a
:class:`~llmrecall.errors.ConfigError` naming it. ``build`` and ``tune`` read the shards
too (:mod:`llmrecall.engine.sharded_build`, :mod:`llmrecall.engine.sharded_tune`; with
``learned`` fusion ``tune`` searches the weights of its RRF base, as the one-process tuner
does: the table is fitted, not tuned).

Resuming: with a ``work_dir`` every stage's results are kept there
(:mod:`llmrecall.engine.stage_files`) and the same evaluation started again computes only
what is missing (:func:`evaluate_sharded`).
"""

from __future__ import annotations

import functools
import math
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import scipy.sparse as sp

from llmrecall.channels.neighbors import BLOCK_ENTRIES, assemble_pruned, binary_matrix, prune_block
from llmrecall.config import PipelineConfig
from llmrecall.data.spec import DataSpec, table_files
from llmrecall.engine.cooccurrence import (
    check_itemcf,
    check_swing,
    column_ranges,
    swing_map_log,
    swing_map_pairs,
    swing_map_rows,
    swing_pair_weights,
    swing_recent_users,
    swing_reduce,
)
from llmrecall.engine.histories import SHARDED_FORMATS, HistoryShards, shard_histories
from llmrecall.engine.shard_split import read_shard, shard_task
from llmrecall.engine.sharded_als import FACTOR_KINDS, fit_factors
from llmrecall.engine.sharded_ease import LINEAR_KINDS, fit_linear
from llmrecall.engine.sharded_fusion import FUSION_USERS, fit_sharded_fusion, fusion_key
from llmrecall.engine.sharded_interest import INTEREST_KINDS, fit_interest
from llmrecall.engine.sharded_sasrec import fit_sasrec
from llmrecall.engine.sharded_search import (
    SEARCH_KINDS,
    fit_search,
    search_folder,
    shard_searches,
)
from llmrecall.engine.sharded_text import TEXT_KINDS, check_text, fit_text
from llmrecall.engine.sharded_textcf import TEXTCF_KINDS, fit_textcf
from llmrecall.engine.stage_files import StageParts, channel_params, digest, files_signature
from llmrecall.errors import ConfigError, DataError

#: channel kinds the sharded evaluation fits
SHARDED_KINDS = ("popularity", "itemcf", "swing", *LINEAR_KINDS, *FACTOR_KINDS, "sasrec",
                 *TEXT_KINDS, *TEXTCF_KINDS, *INTEREST_KINDS, *SEARCH_KINDS)
#: events per history shard, about (the shard count is the log's rows / this)
SHARD_EVENTS = 1_000_000
#: the most a co-occurrence reducer's dense block may take (its candidate range is cut so)
REDUCER_BYTES = 256 * 2**20

Columns = dict[str, np.ndarray]


# --- what it covers ---------------------------------------------------------------------


def check_sharded(spec: DataSpec, config: PipelineConfig, protocol: str,
                  command: str = "evaluate") -> None:
    """Raise :class:`ConfigError` naming everything the sharded ``command`` (``evaluate``,
    ``build`` or ``tune``) does not cover."""
    problems = []
    if protocol != "loo":
        problems.append(f"protocol {protocol!r} (only 'loo')")
    for c in config.enabled_channels:
        if c.kind not in SHARDED_KINDS:
            problems.append(f"channel {c.channel_name!r} of kind {c.kind!r} "
                            f"(only {', '.join(SHARDED_KINDS)})")
        elif c.kind in TEXT_KINDS:
            problems.extend(check_text(c.channel_name, c.params))
    f = config.filters
    if f.include_categories or f.exclude_categories or f.allow_items or f.deny_items:
        problems.append("[filters] (they read the catalog)")
    inter = spec.interactions
    try:
        if inter.resolved_format not in SHARDED_FORMATS:
            problems.append(f"a log in {inter.resolved_format!r} (only "
                            f"{', '.join(SHARDED_FORMATS)})")
    except ConfigError as exc:
        problems.append(str(exc))
    if inter.time is None:
        problems.append("a log without a time column")
    elif inter.time_format != "unix":
        problems.append(f"time_format {inter.time_format!r} (only numeric 'unix' times)")
    for column in ("event", "weight", "rating"):
        if getattr(inter, column) is not None:
            problems.append(f"the {column} column {getattr(inter, column)!r} (user, item and "
                            "time only)")
    searches = spec.searches
    if searches is not None:
        if searches.resolved_format not in SHARDED_FORMATS:
            problems.append(f"a search log in {searches.resolved_format!r} (only "
                            f"{', '.join(SHARDED_FORMATS)})")
        if searches.time is not None and searches.time_format != "unix":
            problems.append(f"the search log's time_format {searches.time_format!r} (only "
                            "numeric 'unix' times)")
    if problems:
        raise ConfigError(f'{command} with [engine] log = "sharded" does not cover: '
                          + "; ".join(problems))


# --- one shard --------------------------------------------------------------------------


def shard_statistics(path: str, items: list[str], half_lives: tuple[float, ...],
                     latest: float | None, split: bool = True) -> dict[str, Any]:
    """Per-item sums of one shard's training data: ``item_users`` (distinct users),
    ``counts`` (events) and, given the latest training time, ``decayed[h]`` (events
    weighted ``0.5 ** ((latest - t) / h)``, popularity's), all float64[n_items]; also
    ``latest`` (its own latest training time), ``user_items`` float64[users] (each user's
    distinct training items, in shard order), ``long_users`` (users with 3 or more
    training events), ``users`` and ``train_events``."""
    shard = read_shard(path, items, split)
    n_items, train = len(items), shard.train
    matrix = binary_matrix(train, shard.n_users, n_items, np.float64)
    out: dict[str, Any] = {
        "item_users": np.asarray(matrix.sum(axis=0)).ravel(),
        "counts": np.bincount(train.item, minlength=n_items).astype(np.float64),
        "latest": float(train.time.max()) if len(train) else -math.inf,
        "user_items": np.asarray(matrix.sum(axis=1)).ravel(),
        # SASRec's early stopping holds out users with 3 or more training events
        "long_users": int((np.bincount(train.user, minlength=shard.n_users) >= 3).sum()),
        "users": shard.n_users, "train_events": len(train), "decayed": {}}
    if latest is not None:
        for h in half_lives:
            weight = np.exp2(-(latest - train.time) / float(h))
            out["decayed"][h] = np.bincount(train.item, weights=weight, minlength=n_items)
    return out


# --- ItemCF: map -> shuffle by candidate range -> streamed reduce ------------------------


def candidate_ranges(n_items: int, workers: int, reducer_bytes: int = REDUCER_BYTES) -> np.ndarray:
    """int64[P+1] column bounds: at least ``workers`` ranges, and enough that a range's
    dense float64 block (``n_items x width``) stays under ``reducer_bytes``."""
    needed = math.ceil(n_items * n_items * 8 / max(reducer_bytes, 1))
    parts = max(1, min(n_items, max(workers, needed)))
    return np.linspace(0, n_items, parts + 1).round().astype(np.int64)


def itemcf_shard_map(path: str, items: list[str], iuf: bool, bounds: np.ndarray,
                     ranges: list[int] | None = None, split: bool = True) -> list[Columns]:
    """One shard's co-occurrence ``(W X)^T X`` (float64), cut into the candidate ranges
    ``ranges`` (default all): piece i holds ``row``, ``col`` (relative to the start of range
    ``ranges[i]``) and ``value`` of its columns' non-zero entries, each (row, col) once."""
    shard = read_shard(path, items, split)
    matrix = binary_matrix(shard.train, shard.n_users, len(items), np.float64)
    if iuf:  # as ItemCF.similarity: float32 weights 1 / log(1 + |I_u|)
        per_user = np.asarray(matrix.sum(axis=1), np.float64).ravel()
        weight = (1.0 / np.log1p(np.maximum(per_user, 1.0))).astype(np.float32)
        left = (sp.diags(weight.astype(np.float64)) @ matrix).T.tocsr()
    else:
        left = matrix.T.tocsr()
    co = (left @ matrix).tocsc()
    pieces = []
    for p in (range(len(bounds) - 1) if ranges is None else ranges):
        block = co[:, int(bounds[p]):int(bounds[p + 1])].tocoo()
        pieces.append({"row": block.row.astype(np.int32), "col": block.col.astype(np.int32),
                       "value": block.data})
    return pieces


def itemcf_range_reduce(pieces: Iterator[Columns], lo: int, hi: int, n_items: int,
                        norms: np.ndarray, shrink: float, neighbors: int,
                        ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The candidates ``lo:hi``'s top ``neighbors`` (``prune_block`` outputs): the pieces
    added into one dense float64 block as they come, then the cosine and the pruning."""
    block = np.zeros((n_items, hi - lo), np.float64)
    for piece in pieces:
        block[piece["row"], piece["col"]] += piece["value"]  # (row, col) unique in a piece
    width = max(1, BLOCK_ENTRIES // max(n_items, 1))
    out = []
    for start in range(lo, hi, width):
        cols = np.arange(start, min(start + width, hi))
        scaled = block[:, cols - lo] / (norms[:, None] * norms[None, cols] + shrink + 1e-6)
        out.append(prune_block(scaled, cols, neighbors))
    return out


# --- Swing: the three shuffles of engine/cooccurrence.py, stage 1 fed by the shards -----


def swing_shard_map_log(path: str, items: list[str], first_user: int,
                        n_partitions: int, split: bool = True) -> list[Columns]:
    """Stage 1 map from one shard: its training rows keyed by item, users numbered
    ``first_user + local number`` (every shard gets its own range), each row's place in the
    log breaking ties in time as the in-process fit's log position does."""
    shard = read_shard(path, items, split)
    train = shard.train
    return swing_map_log(train.item, train.user.astype(np.int64) + first_user, train.time,
                         shard.train_places, n_partitions)


def _swing_similarity(channel, paths: list[str], items: list[str], shard_users: list[int],
                      user_items: np.ndarray, engine, split: bool = True) -> sp.csr_matrix:
    """Swing's pruned similarity from the shards. ``shard_users``: each shard's users;
    ``user_items`` float64[users]: every user's distinct training items, shard after shard
    (the users' global numbering: a shard's first user follows the previous shard's last).
    The driver and each stage-2 reducer hold ``user_items``'s weights, 8 bytes a user."""
    check_swing(channel)
    n_items, n_users = len(items), len(user_items)
    parts = max(1, getattr(engine, "partitions", 1))
    firsts = np.concatenate([[0], np.cumsum(shard_users)[:-1]]).astype(np.int64)
    cap, alpha = int(channel.max_users_per_item), float(channel.alpha)
    user_weight = np.maximum(user_items, 1.0) ** -float(channel.user_power)
    # the first two stages' outputs stay on the workers (keep): the driver sees only the
    # pruned columns of the last
    recent = engine.shuffle(
        lambda x: swing_shard_map_log(x[0], items, x[1], parts, split),
        list(zip(paths, firsts.tolist())),
        lambda p, part: swing_recent_users(part, cap, n_users), parts, keep=True)
    pairs = engine.shuffle(
        lambda r: swing_map_pairs(r, n_users, parts), recent,
        lambda p, part: swing_pair_weights(part, user_weight, alpha, n_users), parts,
        keep=True)
    bounds = column_ranges(n_items, parts)
    neighbors = int(channel.neighbors)
    results = engine.shuffle(
        lambda x: swing_map_rows(x, bounds), pairs,
        lambda p, part: swing_reduce(part, int(bounds[p]), int(bounds[p + 1]), n_items,
                                     neighbors), parts)
    return assemble_pruned(n_items, [blk for r in results for blk in r])


# --- recall and metrics per shard -------------------------------------------------------


def shard_metrics(path: str, items: list[str], pipeline, on: str, ks) -> dict[str, Any]:
    """The pipeline's lists for one shard's ``on`` ("test" or "valid") users, scored:
    ``sums[list][metric]`` (the mean times the users), ``tops[list][k]`` (the distinct
    items in the users' top ``k``), ``users`` and ``recall_seconds`` per channel."""
    from llmrecall.engine.shard_users import for_shard
    from llmrecall.evaluate.experiment import recall_task, score_and_fuse

    n_items = len(items)
    task = shard_task(path, items, on)
    pipeline = for_shard(pipeline, path)  # per-user rows kept per shard (BPR's factors)
    n = len(task.users)
    if n == 0:
        return {"users": 0, "sums": {}, "tops": {}, "recall_seconds": {}}
    lists = recall_task(pipeline, task)
    results, _seconds, fused = score_and_fuse(pipeline, lists, n_items, ks)
    ids = {**{name: c.ids for name, c in lists.lists.items()}, "fused": fused}
    tops = {name: {k: np.unique(ids[name][:, :k][ids[name][:, :k] >= 0]) for k in ks}
            for name in results}
    sums = {name: {m: v * n for m, v in r.items()
                   if m != "users" and not m.startswith("coverage@")}
            for name, r in results.items()}
    return {"users": n, "sums": sums, "tops": tops, "recall_seconds": lists.recall_seconds}


def kept_shard_metrics(shard: int, path: str, items: list[str], pipeline, on: str, ks,
                       kept: StageParts) -> int:
    """:func:`shard_metrics` of shard ``shard``, written to ``kept`` as soon as it is
    computed (a rerun reads it instead of recalling the shard's users again)."""
    out = shard_metrics(path, items, pipeline, on, ks)
    kept.save(shard, {f"{name}/{k}": top for name, by_k in out["tops"].items()
                      for k, top in by_k.items()},
              {"users": out["users"], "sums": out["sums"],
               "recall_seconds": out["recall_seconds"]})
    return int(out["users"])  # the driver reads the part back: nothing else travels


def load_shard_metrics(kept: StageParts, shard: int) -> dict[str, Any]:
    """A shard's :func:`shard_metrics` as :func:`kept_shard_metrics` wrote it."""
    arrays, meta = kept.load(shard)
    tops: dict[str, dict[int, np.ndarray]] = {}
    for key, top in arrays.items():
        name, k = key.rsplit("/", 1)
        tops.setdefault(name, {})[int(k)] = top
    return {**meta, "tops": tops}


def combine_metrics(parts: list[dict[str, Any]], n_items: int, ks) -> dict[str, dict[str, float]]:
    """The per-shard sums as :func:`~llmrecall.evaluate.metrics.ranking_metrics` reports
    them for all users at once (coverage from the union of the shards' top items)."""
    parts = [p for p in parts if p["users"]]
    users = sum(p["users"] for p in parts)
    if not users:
        raise DataError("the sharded log has no user with 3 or more events to evaluate")
    out: dict[str, dict[str, float]] = {}
    for name, first in parts[0]["sums"].items():
        row = {m: sum(p["sums"][name][m] for p in parts) / users for m in first}
        for k in ks:
            seen = np.unique(np.concatenate([p["tops"][name][k] for p in parts]))
            row[f"coverage@{k}"] = float(seen.size / n_items)
        ordered = {}
        for k in sorted({int(k) for k in ks}):
            for m in ("recall", "hr", "ndcg", "mrr", "coverage"):
                ordered[f"{m}@{k}"] = float(row[f"{m}@{k}"])
        out[name] = {**ordered, "users": int(users)}
    return out


# --- the whole evaluation ---------------------------------------------------------------


def _log_rows(files: list[Path]) -> int:
    """The log's rows, from the Parquet footers (other formats: about 16 bytes a row)."""
    rows = 0
    for f in files:
        if f.suffix in (".parquet", ".pq"):
            rows += int(pl.scan_parquet(f).select(pl.len()).collect().item())
        else:
            rows += f.stat().st_size // 16
    return rows


def _log_key(spec: DataSpec, files: list[Path], item_files: list[Path], n_shards: int) -> str:
    """What the history shards and item numbering depend on: the log's and the item
    file's paths, sizes and modification times, the columns read, de-duplication and the
    shard count (a stored shard is trusted without reading the log again)."""
    columns = spec.interactions.model_dump(mode="json")
    item_columns = spec.items.model_dump(mode="json") if spec.items else None
    return digest(files_signature(files), columns, files_signature(item_files), item_columns,
                  n_shards)


def _vocabulary(spec: DataSpec, shards: HistoryShards) -> list[str]:
    """Items as the loader numbers them: the item file's order, then the log's first-seen
    (the item file is read whole: it is the catalog, not the log)."""
    if spec.items is None:
        return shards.items
    from llmrecall.data.loaders import read_item_ids

    file_items = read_item_ids(spec.items)
    present = set(file_items)
    return file_items + [i for i in shards.items if i not in present]


@dataclass
class OpenLog:
    """A log opened as history shards (:func:`open_sharded_log`): the ``shards``, the
    item vocabulary ``items`` (the loader's numbering), the ``run`` folder every stage's
    results go to, and the seconds it took. ``searches()`` shuffles the search log to the
    same shards the first time it is called (None without a search log);
    ``timed_searches``: the search log has a time column."""

    shards: HistoryShards
    items: list[str]
    run: Path
    seconds: float
    searches: Callable[[], list[str] | None] = lambda: None
    timed_searches: bool = True


@contextmanager
def open_sharded_log(spec: DataSpec, engine, work_dir: str | Path | None,
                     shard_events: int = SHARD_EVENTS) -> Iterator[OpenLog]:
    """The log of ``spec`` as history shards under ``work_dir`` (default a temporary
    folder, removed when the block ends): ``ceil(rows / shard_events)`` shards, at least
    one per engine partition, written unless a run folder of this log already holds them
    (see :func:`evaluate_sharded`)."""
    files = table_files(spec.interactions.path) or [spec.interactions.path]
    n_shards = max(getattr(engine, "partitions", 1), math.ceil(_log_rows(files) / shard_events))
    own = work_dir is None
    folder = Path(work_dir) if work_dir is not None else \
        Path(tempfile.mkdtemp(prefix="llmrecall-shards-"))
    item_files = (table_files(spec.items.path) or [spec.items.path]) if spec.items else []
    run = folder / f"log-{_log_key(spec, files, item_files, n_shards)}"
    begin = time.perf_counter()
    try:
        shards = shard_histories(spec.interactions, run, engine.shuffle, n_shards,
                                 with_users=False)
        search_spec = spec.searches
        searches: Callable[[], list[str] | None] = (
            (lambda: None) if search_spec is None else functools.cache(
                lambda: shard_searches(search_spec, search_folder(run, search_spec, n_shards),
                                       engine.shuffle, n_shards)))
        yield OpenLog(shards, _vocabulary(spec, shards), run, time.perf_counter() - begin,
                      searches, search_spec is None or search_spec.time is not None)
    finally:
        if own:
            shutil.rmtree(folder, ignore_errors=True)


def evaluate_sharded(spec: DataSpec, config: PipelineConfig, protocol: str = "loo", *,
                     engine, on: str = "test", seed: int = 0, ks=None, work_dir: str | Path | None = None,
                     shard_events: int = SHARD_EVENTS, reducer_bytes: int = REDUCER_BYTES,
                     fusion_users: int = FUSION_USERS, name: str | None = None,
                     progress=None) -> dict[str, Any]:
    """Evaluate ``config`` on the log ``spec`` names without loading it (module docstring);
    returns the report ``evaluate`` writes, with an ``engine`` entry saying how it ran.

    ``engine``: the :class:`~llmrecall.engine.local.Engine` whose tasks do the work (the
    Ray engine on a cluster); ``work_dir``: where the history shards and every stage's
    results go (a path every worker reaches; default a temporary folder removed after).
    A ``work_dir`` is kept: the same evaluation started again (after its driver was
    killed, say) reads the shards, the fitted similarities' candidate ranges and the
    shards' metrics found there and computes only what is missing; the report's
    ``engine.resumed`` says what was found. Everything is kept under a folder named by a
    digest of the log's files (paths, sizes, modification times) and how they are read,
    and each stage under one named by what it depends on, so a changed log or config
    recomputes.

    ``[fusion] method = "learned"`` is fitted on at most about ``fusion_users`` validation
    users sampled from every shard (:mod:`llmrecall.engine.sharded_fusion`); the report's
    ``fusion`` entry says on how many and what its guard chose.
    """
    from llmrecall.data.loaders import read_catalog
    from llmrecall.evaluate.experiment import generation_report, training_report
    from llmrecall.evaluate.metrics import DEFAULT_KS
    from llmrecall.pipeline import RecallPipeline

    ks = tuple(ks or DEFAULT_KS)
    say = progress or (lambda _msg: None)
    check_sharded(spec, config, protocol)
    config.check_cutoffs(ks)
    resumed: dict[str, Any] = {}
    begin = time.perf_counter()
    with open_sharded_log(spec, engine, work_dir, shard_events) as log:
        shards, items, run = log.shards, log.items, log.run
        n_shards = len(shards.paths)
        resumed["histories"] = shards.reused
        split_seconds = log.seconds
        say(f"sharded {shards.events:,} events of {shards.n_users:,} users into "
            f"{n_shards} shards ({split_seconds:.1f}s)")
        pipeline = RecallPipeline(config)
        fit_seconds = fit_from_shards(pipeline.channels, shards.paths, items, engine,
                                      reducer_bytes, run, resumed,
                                      catalog=lambda: read_catalog(spec.items, len(items)),
                                      searches=log.searches,
                                      timed_searches=log.timed_searches)
        fusion = None
        if config.fusion.method == "learned":
            fusion = fit_sharded_fusion(pipeline, shards.paths, items, engine, run, resumed,
                                        shards.n_users, k=max(ks), max_users=fusion_users)
            say(f"learned fusion on {fusion['users']:,} validation users: "
                f"{fusion['reference']} first {fusion['prefix']}, then the learned list "
                f"({fusion['fit_seconds']:.1f}s)")
        start = time.perf_counter()
        kept = StageParts(run, "recall", digest(config.config_hash(), on, list(ks),
                                                fusion_key(pipeline.fusion_model_)))
        todo = kept.missing(n_shards)
        resumed["recall_shards"] = f"{n_shards - len(todo)}/{n_shards}"
        engine.map_tasks(lambda s: kept_shard_metrics(s, shards.paths[s], items, pipeline, on,
                                                      ks, kept), todo)
        # every shard's metrics from the files, computed now or by an earlier run alike
        parts = [load_shard_metrics(kept, s) for s in range(n_shards)]
        recall_wall = time.perf_counter() - start
    results = combine_metrics(parts, len(items), ks)
    recall_seconds = {c: sum(p["recall_seconds"].get(c, 0.0) for p in parts)
                      for c in pipeline.channels}
    return {
        "dataset": name or spec.name or "dataset",
        "protocol": protocol,
        "seed": seed,  # loo draws nothing: reported as given
        "split": on,
        "config_hash": config.config_hash(),
        "users_evaluated": next(iter(results.values()))["users"],
        "results": results,
        **({"fusion": fusion} if fusion is not None else {}),
        **({"generation": generation} if (generation := generation_report(pipeline)) else {}),
        **({"training": training} if (training := training_report(pipeline)) else {}),
        "engine": {"kind": engine.kind, "log": "sharded", "shards": n_shards,
                   "events": shards.events, "users": shards.n_users, "items": len(items),
                   "resumed": resumed},
        "timings": {"split_seconds": split_seconds, "fit_seconds": fit_seconds,
                    "recall_seconds": recall_seconds, "recall_wall_seconds": recall_wall,
                    "total_seconds": time.perf_counter() - begin},
    }


def fit_from_shards(channels: dict[str, Any], paths: list[str], items: list[str], engine,
                    reducer_bytes: int, run: Path, resumed: dict[str, Any],
                    split: bool = True, catalog: Callable[[], Any] | None = None,
                    searches: Callable[[], list[str] | None] = lambda: None,
                    timed_searches: bool = True) -> dict[str, float]:
    """Fit ``channels`` (name -> unfitted channel, a pipeline's) from the shards (their
    ``loo`` training part, or with ``split=False`` every row); returns each channel's
    seconds (the shared statistics pass counted in each). ``catalog()`` gives the items'
    :class:`~llmrecall.data.dataset.Catalog` (read only for a channel that needs the item
    texts: SASRec, textcf and the text channels; read once). Fitted similarities are kept under ``run``
    (:class:`~llmrecall.engine.stage_files.StageParts`); ``resumed`` records what was
    found there. ``searches()`` gives the search log's shards (None without a search log;
    called only for ``search_query``), ``timed_searches`` whether it has a time column."""
    start = time.perf_counter()
    catalog = functools.cache(catalog) if catalog is not None else None
    half_lives = tuple(sorted({float(c.half_life) for c in channels.values()
                               if c.kind == "popularity" and c.half_life is not None}))
    stats = engine.map_tasks(lambda path: shard_statistics(path, items, (), None, split), paths)
    latest = max(s["latest"] for s in stats)
    if half_lives:
        decayed = engine.map_tasks(
            lambda path: shard_statistics(path, items, half_lives, latest, split), paths)
    item_users = np.sum([s["item_users"] for s in stats], axis=0)
    counts = np.sum([s["counts"] for s in stats], axis=0)  # training events per item
    shared = time.perf_counter() - start
    seconds = {}
    for name, channel in channels.items():
        began = time.perf_counter()
        if channel.kind == "popularity":
            channel.check_params()
            scores = (counts if channel.half_life is None
                      else np.sum([d["decayed"][float(channel.half_life)] for d in decayed], axis=0))
            channel.install(scores)
        elif channel.kind == "swing":
            kept = StageParts(run, "swing", digest(channel_params(channel), split))
            resumed[f"{name}_similarity"] = kept.has(0)
            if kept.has(0):
                similarity = _csr_from(kept.load(0)[0], len(items))
            else:
                user_items = np.concatenate([s["user_items"] for s in stats])
                similarity = _swing_similarity(channel, paths, items,
                                               [s["users"] for s in stats], user_items, engine,
                                               split)
                kept.save(0, {"data": similarity.data, "indices": similarity.indices,
                              "indptr": similarity.indptr}, {})
            channel.install(similarity, item_users)
        elif channel.kind in LINEAR_KINDS:
            fit_linear(channel, paths, items, item_users, engine, run, resumed, name, split)
        elif channel.kind in FACTOR_KINDS:
            fit_factors(channel, paths, items, item_users, engine, run, resumed, name, split)
        elif channel.kind == "sasrec":
            if catalog is None:
                raise ConfigError("sasrec from the sharded log needs the catalog (its item "
                                  "texts)")
            fit_sasrec(channel, paths, items, counts, catalog(), engine, run, resumed, name, split,
                       long_users=[s["long_users"] for s in stats])
        elif channel.kind in TEXT_KINDS:
            if catalog is None:
                raise ConfigError(f"{channel.kind} from the sharded log needs the catalog (its "
                                  "item texts)")
            fit_text(channel, items, counts, catalog(), engine)
        elif channel.kind in INTEREST_KINDS:
            if catalog is None:
                raise ConfigError("llm_interest from the sharded log needs the catalog (its "
                                  "item texts)")
            fit_interest(channel, paths, items, catalog(), engine, run, resumed, name, split)
        elif channel.kind in SEARCH_KINDS:
            if catalog is None:
                raise ConfigError("search_query from the sharded log needs the catalog (its "
                                  "item texts)")
            fit_search(channel, paths, searches(), items, catalog(), run, resumed, name, split,
                       timed_searches)
        elif channel.kind in TEXTCF_KINDS:
            if catalog is None:
                raise ConfigError("textcf from the sharded log needs the catalog (its item "
                                  "texts)")
            fit_textcf(channel, paths, items, counts, catalog(), engine, run, resumed, name,
                       split)
        else:
            channel.install(_itemcf_similarity(channel, paths, items, item_users, engine,
                                               reducer_bytes, run, resumed, name, split),
                            item_users)
        seconds[name] = shared + time.perf_counter() - began
    return seconds


def _itemcf_similarity(channel, paths: list[str], items: list[str], item_users: np.ndarray,
                       engine, reducer_bytes: int, run: Path, resumed: dict[str, Any],
                       name: str, split: bool = True) -> sp.csr_matrix:
    """ItemCF's pruned similarity; each candidate range's pruned columns are kept under
    ``run`` by the reducer that computed them, and a rerun reduces only the ranges missing
    (its maps cut only those ranges' columns)."""
    check_itemcf(channel)
    if channel.neighbors < 1:
        raise ConfigError(f"neighbors must be >= 1, got {channel.neighbors}")
    n_items = len(items)
    bounds = candidate_ranges(n_items, getattr(engine, "partitions", 1), reducer_bytes)
    norms = np.sqrt(item_users)
    iuf, shrink, neighbors = bool(channel.iuf), float(channel.shrink), int(channel.neighbors)
    kept = StageParts(run, "itemcf", digest(channel_params(channel), bounds.tolist(), split))
    todo = kept.missing(len(bounds) - 1)
    resumed[f"{name}_ranges"] = f"{len(bounds) - 1 - len(todo)}/{len(bounds) - 1}"

    def reduce(i: int, pieces: Iterator[Columns]) -> None:
        r = todo[i]
        blocks = itemcf_range_reduce(pieces, int(bounds[r]), int(bounds[r + 1]), n_items,
                                     norms, shrink, neighbors)
        kept.save(r, {"rows": np.concatenate([b[0] for b in blocks]),
                      "cols": np.concatenate([b[1] for b in blocks]),
                      "values": np.concatenate([b[2] for b in blocks])}, {})

    if todo:
        engine.shuffle_streamed(
            lambda path: itemcf_shard_map(path, items, iuf, bounds, todo, split),
            paths, reduce, len(todo))
    parts = [kept.load(r)[0] for r in range(len(bounds) - 1)]
    return assemble_pruned(n_items, [(p["rows"], p["cols"], p["values"]) for p in parts])


def _csr_from(arrays: dict[str, np.ndarray], n_items: int) -> sp.csr_matrix:
    return sp.csr_matrix((arrays["data"], arrays["indices"], arrays["indptr"]),
                         shape=(n_items, n_items))
