"""The search log on the sharded path: its rows shuffled to the users' history shards, and
``search_query`` fitted shard by shard.

**Shuffle** (:func:`shard_searches`, map -> shuffle by user -> reduce, as
:mod:`llmrecall.engine.histories` shards the interactions): one map task per file of the
search log (a Parquet file in ranges of at most
:data:`~llmrecall.engine.histories.MAP_ROWS` rows) reads ``user``, ``query`` and ``time``
and sends each row to its user's shard, by the same hash of the raw id as the interactions,
so a user's searches and history land in the same shard number. One reduce per shard
sorts its rows into log order (file, row) and writes ``searches-<shard>.parquet``
(``user``, ``query``, ``time``, ``place``). A shard already written is not recomputed.
Without a time column a row's time is its place in the log (``file * 2**32 + row``), as
the loader's file order.

**Fit** (:func:`fit_search`): the channel's state is per user (each user's latest queries
and their catalog matches), kept per shard as ``llm_interest``'s is
(:mod:`llmrecall.engine.shard_users`). For each shard the driver reads that shard's users
and searches (one shard at a time), keeps under ``loo`` only the searches made before
each user's first held-out target (:func:`~llmrecall.evaluate.protocols.held_out_times`,
the driver path's rule), takes each user's latest distinct queries
(:func:`~llmrecall.channels.search.recent_queries`, the same function on the same rows in
the same order) and matches them with the channel's matcher (built once). Each shard's
result is one part under the run folder; a rerun skips the parts it finds.

A user who only searched (no interaction) is in the loader's user vocabulary but in no
history shard: nothing is recalled for such a user under ``loo`` (nothing of theirs is
held out), and a sharded ``build``'s artifact, whose users are the history shards', does
not hold them (the service meets them as new users).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from llmrecall.data.dataset import SearchLog
from llmrecall.data.spec import SearchesSpec, table_files
from llmrecall.engine.histories import file_ranges, read_rows, split_by_shard
from llmrecall.engine.shard_split import catalog_only, read_shard
from llmrecall.engine.stage_files import StageParts, channel_params, digest, files_signature
from llmrecall.errors import DataError

#: channel kinds fitted here
SEARCH_KINDS = ("search_query",)

_SCHEMA = {"user": pl.String, "query": pl.String, "time": pl.Float64, "place": pl.Int64}


def search_folder(run: Path, spec: SearchesSpec, n_shards: int) -> Path:
    """Where the search shards of ``spec``'s files go under the log's ``run`` folder: named
    by the files (paths, sizes, modification times), the columns read and the shard count,
    so a changed search log is shuffled again."""
    files = table_files(spec.path) or [spec.path]
    return run / ("searches-" + digest(files_signature(files), spec.user, spec.query,
                                       spec.time, spec.resolved_format, n_shards))


def map_search_file(path: str, number: int, spec: SearchesSpec, n_shards: int,
                    first_row: int = 0, rows: int | None = None) -> list[dict[str, np.ndarray]]:
    """Rows ``first_row`` to ``first_row + rows`` of one search file (all of it by default),
    split by user shard: ``user``, ``query``, ``time`` and ``place`` arrays per shard.
    Raises :class:`DataError` naming the file and row of an empty user id or query, or of
    a time that is not a number."""
    frame = read_rows(path, [spec.user, spec.query] + ([spec.time] if spec.time else []),
                      first_row, rows, "\t" if spec.resolved_format == "tsv" else ",")
    row = first_row + np.arange(frame.height, dtype=np.int64)
    users = frame[spec.user].cast(pl.String)
    queries = frame[spec.query].cast(pl.String)
    for series, what in ((users, "user id"), (queries, "query")):
        blank = (series.is_null() | (series.str.strip_chars() == "")).to_numpy()
        if blank.any():
            raise DataError(f"{path}: row {int(row[np.argmax(blank)]) + 1}: missing {what} "
                            f"(empty cell in column {series.name!r})")
    place = number * 2**32 + row
    if spec.time:
        times = frame[spec.time].cast(pl.Float64, strict=False)
        bad = (times.is_null() | times.is_nan()).to_numpy()
        if bad.any():
            at = int(np.argmax(bad))
            raise DataError(f"{path}: row {int(row[at]) + 1}: time "
                            f"{frame[spec.time][at]!r} in column {spec.time!r} is not a "
                            f"number (the sharded log reads 'unix' seconds)")
        time = times.to_numpy().astype(np.float64)
    else:
        time = place.astype(np.float64)
    return split_by_shard(users, {"user": users.to_numpy().astype(object),
                                  "query": queries.to_numpy().astype(object),
                                  "time": time, "place": place}, n_shards)


def reduce_search_shard(shard: int, part: dict[str, np.ndarray], out: str) -> str:
    """Write one shard's searches in log order to ``<out>/searches-<shard>.parquet``
    (under a temporary name, then renamed); returns its path."""
    path = Path(out) / f"searches-{shard:05d}.parquet"
    if not path.exists():
        frame = pl.DataFrame({k: part[k] for k in _SCHEMA}, schema=_SCHEMA).sort("place")
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        frame.write_parquet(tmp)
        os.replace(tmp, path)
    return str(path)


def shard_searches(spec: SearchesSpec, out: str | Path, shuffle: Callable,
                   n_shards: int) -> list[str]:
    """The paths of the ``n_shards`` search shards of ``spec``'s files under ``out``
    (module docstring), written unless every one is there."""
    Path(out).mkdir(parents=True, exist_ok=True)
    paths = [str(Path(out) / f"searches-{s:05d}.parquet") for s in range(n_shards)]
    if all(Path(p).exists() for p in paths):
        return paths
    files = table_files(spec.path) or [spec.path]
    inputs = [(str(f), number, first, rows) for number, f in enumerate(files)
              for first, rows in file_ranges(f)]
    out_text = str(out)
    return shuffle(lambda x: map_search_file(x[0], x[1], spec, n_shards, x[2], x[3]), inputs,
                   lambda s, part: reduce_search_shard(s, part, out_text), n_shards)


def shard_search_log(history_path: str, search_path: str, items: list[str],
                     split: bool) -> tuple[int, SearchLog]:
    """``(users, searches)`` of one shard: its number of users and the searches of those
    users (the shard's numbering) in log order; under ``loo`` (``split``) only those made
    before each user's first held-out target. Searches of users the history shard does not
    hold (they only searched) are left out."""
    from llmrecall.evaluate.protocols import held_out_times

    raws = pl.read_parquet(history_path, columns=["user"])["user"]
    searches = pl.read_parquet(search_path)
    row_of = searches["user"].replace_strict(raws, np.arange(len(raws), dtype=np.int64),
                                             default=-1, return_dtype=pl.Int64).to_numpy()
    known = row_of >= 0
    log = SearchLog(row_of[known].astype(np.int32),
                    [q for q, k in zip(searches["query"].to_list(), known.tolist()) if k],
                    searches["time"].to_numpy()[known])
    if split:
        shard = read_shard(history_path, items, split)
        log = log.before(held_out_times(shard.valid, shard.n_users))
    return len(raws), log


def fit_search(channel, paths: list[str], search_paths: list[str] | None, items: list[str],
               catalog, run: Path, resumed: dict[str, Any], name: str, split: bool = True,
               timed: bool = True) -> None:
    """Fit ``channel`` (an unfitted :class:`~llmrecall.channels.search.SearchQueryChannel`)
    from the history shards ``paths`` and the search shards ``search_paths`` (None: the
    dataset has no search log, and no user gets a text, as on the driver path); the
    matched texts are kept under ``run``, one part per shard, and
    ``resumed[f"{name}_texts"]`` says how many were found there. ``timed``: the search log
    has a time column (without one no search can be placed before a target, and every
    search counts, as :func:`~llmrecall.evaluate.protocols.searches_comparable` rules)."""
    from llmrecall.channels.search import recent_queries
    from llmrecall.engine.shard_users import ShardUserRows, no_users

    kept = StageParts(run, "search_query",
                      digest(channel_params(channel), split, timed, search_paths))
    todo = kept.missing(len(paths))
    resumed[f"{name}_texts"] = f"{len(paths) - len(todo)}/{len(paths)}"
    if todo:
        matcher = channel.text_matcher(catalog_only(items, catalog))
        for s in todo:
            if search_paths is None:
                n_users = len(pl.read_parquet(paths[s], columns=["user"]))
                texts: dict[int, list[str]] = {}
            else:
                n_users, log = shard_search_log(paths[s], search_paths[s], items,
                                                split and timed)
                texts = recent_queries(log, n_users, channel.recent_queries)
            kept.save(s, channel.matched_texts(matcher, n_users, texts),
                      {"users_with_queries": len(texts)})
    channel.use_shard_users(no_users(min(int(channel.per_text_k), len(items))))
    channel.shard_rows_ = ShardUserRows(kept, tuple(paths))
