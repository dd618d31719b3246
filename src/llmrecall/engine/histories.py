"""Per-user histories of a many-file log, built as map -> shuffle by user -> reduce, without
the log ever passing through one process.

Map (one task per file, or per range of at most :data:`MAP_ROWS` rows of a Parquet file):
read ``user``, ``item`` and ``time`` and tag each row with its place in the log, ``(file
number, row)`` (files in name order, as the loader reads a folder); send each row to the
shard of its user (a stable hash of the raw id). The maps are Ray tasks over row ranges,
not Ray Data's readers: those do not keep a row's place in its file, which the loader's
order of ties in time needs. Reduce
(one task per shard): sort the shard's rows by (user, time, file, row) — time order,
ties in log order, like :meth:`~llmrecall.data.dataset.Interactions.chronological_order`
— and write ``<out>/histories-<shard>.parquet`` with one row per user: ``user`` (raw
id), ``items`` (raw ids, oldest first), ``times`` and ``places`` (each row's place in the
log, ``file * 2**32 + row``: what breaks ties in time). Each reducer also returns its users'
first place in the log, so the driver can number the users in first-seen order (the
loader's vocabulary order) without reading the log: the driver holds one entry per user,
never one per event. With ``dedupe`` (the spec's, as the loader) a row repeating an
earlier row of its user in user, item and time is dropped, the first kept: a user's rows
all meet in one reducer, so this needs no other shard. Each reducer also returns its
items' first place, so the driver can number the items as the loader does (first seen in
the log) holding one entry per item. Without a time column, a row's ``time`` is its place
in the log as one number (``file * 2**32 + row``): the order the loader's row positions
give, not their values.

A shard file is written under a temporary name and renamed, then its summary (what the
reducer returns, ``histories-<shard>.json``) likewise, and a shard already present is not
recomputed: a killed job reruns only the missing shards' reduces (the maps of a rerun are
cheap reads; their outputs live in the object store), and a rerun that finds every shard
and summary does not read the log at all. ``out`` must therefore hold one log's shards:
name it after the log (:func:`llmrecall.engine.sharded.evaluate_sharded` names it by a
digest of the files' paths, sizes and modification times).

``shuffle`` is any ``shuffle(map_fn, inputs, reduce_fn, n_partitions)`` (the Ray engine's,
or :func:`llmrecall.engine.cooccurrence._shuffle_local` for one process).
"""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from llmrecall.data.spec import InteractionsSpec, table_files
from llmrecall.errors import DataError


def _shard_of(users: pl.Series, n_shards: int) -> np.ndarray:
    # crc32 of the raw id: the same shard in every process (Python's hash() is salted)
    return np.fromiter((zlib.crc32(u.encode()) % n_shards for u in users.to_list()),
                       np.int64, len(users))


#: the table formats the map tasks read (a log, a search log)
SHARDED_FORMATS = ("csv", "tsv", "parquet")

#: rows one map task reads at most from a Parquet file (a larger file is read in ranges)
MAP_ROWS = 2_000_000


def _is_parquet(path: str | Path) -> bool:
    return str(path).endswith((".parquet", ".pq"))


def file_ranges(path: str | Path, max_rows: int | None = None) -> list[tuple[int, int | None]]:
    """``(first row, rows)`` of each map task's part of one file: a Parquet file in ranges
    of at most ``max_rows`` (default :data:`MAP_ROWS`; its row count from the footer), any
    other file whole (``(0, None)``: a CSV's rows are only known by reading it)."""
    if not _is_parquet(path):
        return [(0, None)]
    max_rows = max_rows or MAP_ROWS
    rows = int(pl.scan_parquet(path).select(pl.len()).collect().item())
    return [(start, min(max_rows, rows - start))
            for start in range(0, max(rows, 1), max(1, max_rows))]


def read_rows(path: str, columns: list[str], first_row: int = 0, rows: int | None = None,
              separator: str = ",") -> pl.DataFrame:
    """``columns`` of one file's rows ``first_row`` to ``first_row + rows`` (all of it by
    default; a Parquet file's range is read alone; any other file is delimited text split
    on ``separator``, every column as text). A missing column raises :class:`DataError`
    naming the file."""
    if _is_parquet(path):
        scan = pl.scan_parquet(path).select(columns)
        return (scan.slice(first_row, rows) if rows is not None else scan).collect()
    try:
        return pl.read_csv(path, columns=columns, separator=separator, infer_schema=False)
    except pl.exceptions.ColumnNotFoundError as exc:
        raise DataError(f"{path}: a column of the log is missing ({exc})") from None


def split_by_shard(users: pl.Series, columns: dict[str, np.ndarray],
                   n_shards: int) -> list[dict[str, np.ndarray]]:
    """``columns`` (arrays of one length, a row each) cut into ``n_shards`` pieces by the
    shard of each row's raw user id (:func:`_shard_of`), rows in their order within each."""
    shard = _shard_of(users, n_shards)
    order = np.argsort(shard, kind="stable")
    bounds = np.searchsorted(shard[order], np.arange(n_shards + 1))
    return [{k: v[order[bounds[s]:bounds[s + 1]]] for k, v in columns.items()}
            for s in range(n_shards)]


def map_file(path: str, number: int, user: str, item: str, time: str | None,
             n_shards: int, first_row: int = 0, rows: int | None = None,
             separator: str = ",") -> list[dict[str, np.ndarray]]:
    """Read one file's rows ``first_row`` to ``first_row + rows`` (all of it by default;
    a Parquet file's range is read alone; any other file is delimited text split on
    ``separator``) and split them by user shard (numeric ``time`` columns only). Each row
    keeps its place in the log, ``(number, row in the file)``."""
    frame = read_rows(path, [user, item] + ([time] if time else []), first_row, rows,
                      separator)
    users = frame[user].cast(pl.String)
    row = first_row + np.arange(frame.height, dtype=np.int64)
    times = (frame[time].cast(pl.Float64).to_numpy() if time
             else (number * 2.0 ** 32 + row).astype(np.float64))
    return split_by_shard(users, {
        "user": users.to_numpy().astype(object),
        "item": frame[item].cast(pl.String).to_numpy().astype(object),
        "time": times, "file": np.full(frame.height, number, np.int64), "row": row}, n_shards)


def _first_places(frame: pl.DataFrame, key: str) -> pl.DataFrame:
    """Each distinct ``key``'s smallest (file, row); ``frame`` sorted by (file, row)."""
    return (frame.group_by(key, maintain_order=True)
            .agg(pl.col("file").first(), pl.col("row").first()))


def reduce_shard(shard: int, part: dict[str, np.ndarray], out: str,
                 dedupe: bool = False, with_users: bool = True) -> dict[str, Any]:
    """Sort one shard into per-user histories, write it, and return its items' and (with
    ``with_users``) its users' first place in the log (``item``/``user``, ``file``,
    ``row``), its ``events`` (rows written) and ``n_users``."""
    path = Path(out) / f"histories-{shard:05d}.parquet"
    frame = pl.DataFrame({k: part[k] for k in ("user", "item", "time", "file", "row")},
                         schema={"user": pl.String, "item": pl.String, "time": pl.Float64,
                                 "file": pl.Int64, "row": pl.Int64}).sort(["file", "row"])
    if dedupe:
        frame = frame.unique(subset=["user", "item", "time"], keep="first", maintain_order=True)
    items = _first_places(frame, "item")
    users = _first_places(frame, "user") if with_users else frame.head(0)
    if not path.exists():
        histories = (frame.sort(["user", "time", "file", "row"])
                     .group_by("user", maintain_order=True)
                     .agg(pl.col("item").alias("items"), pl.col("time").alias("times"),
                          (pl.col("file") * 2**32 + pl.col("row")).alias("places")))
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        histories.write_parquet(tmp)
        os.replace(tmp, path)
    firsts = {"user": users["user"].to_list(), "file": users["file"].to_list(),
              "row": users["row"].to_list(), "item": items["item"].to_list(),
              "item_file": items["file"].to_list(), "item_row": items["row"].to_list(),
              "events": frame.height, "n_users": int(frame["user"].n_unique())}
    # written after the shard: a shard with its summary is whole, and a rerun that finds
    # every summary needs not read the log again
    summary = _summary_path(path)
    tmp = summary.with_name(f".{summary.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(firsts))
    os.replace(tmp, summary)
    return firsts


def _summary_path(shard: Path) -> Path:
    return shard.with_suffix(".json")


@dataclass(frozen=True)
class HistoryShards:
    """What :func:`shard_histories` wrote: the shard files (``paths``, in shard order),
    the users (empty unless asked for) and the items in first-seen order (the loader's
    vocabulary order), the rows kept (``events``) and the number of users."""

    paths: list[str]
    users: list[str]
    items: list[str]
    events: int
    n_users: int
    #: every shard was found whole in ``out`` and the log was not read
    reused: bool = False


def _in_log_order(firsts: list[dict[str, Any]], key: str, file: str, row: str) -> list[str]:
    ids = [u for f in firsts for u in f[key]]
    place = np.array([(fi, r) for f in firsts for fi, r in zip(f[file], f[row])],
                     np.int64).reshape(-1, 2)
    order = np.lexsort((place[:, 1], place[:, 0])) if len(ids) else np.zeros(0, np.int64)
    if key == "user":  # a user is in one shard only
        return [ids[i] for i in order]
    # an item is in every shard that has a user of it: its first place wins
    return list(dict.fromkeys(ids[i] for i in order))


def shard_histories(spec: InteractionsSpec, out: str | Path, shuffle: Callable,
                    n_shards: int, with_users: bool = True) -> HistoryShards:
    """Write the per-user history shards of ``spec``'s files under ``out`` (see the module
    docstring); exact repeats are dropped when ``spec.dedupe`` is on and there is a time
    column, as the loader drops them. ``with_users=False`` leaves the user vocabulary out:
    the driver then holds one entry per item and per file, none per user or event."""
    files = table_files(spec.path) or [spec.path]
    Path(out).mkdir(parents=True, exist_ok=True)
    paths = [Path(out) / f"histories-{s:05d}.parquet" for s in range(n_shards)]
    summaries = [_summary_path(p) for p in paths]
    if all(p.exists() for p in paths) and all(s.exists() for s in summaries):
        # every shard is whole: the log is not read again (the caller names ``out`` after
        # the log's files, so these shards are theirs)
        firsts = [json.loads(s.read_text()) for s in summaries]
        if not with_users or all(f["user"] or not f["n_users"] for f in firsts):
            return _shards(paths, firsts, reused=True)
    # one map task per range of at most MAP_ROWS rows (a whole file unless Parquet): the
    # maps' memory is bounded however large one file is
    inputs = [(str(f), number, first, rows) for number, f in enumerate(files)
              for first, rows in file_ranges(f)]
    user, item, time = spec.user, spec.item, spec.time
    out_text, dedupe = str(out), bool(spec.dedupe and time is not None)
    separator = "\t" if spec.resolved_format == "tsv" else ","
    firsts = shuffle(lambda x: map_file(x[0], x[1], user, item, time, n_shards, x[2], x[3],
                                        separator),
                     inputs,
                     lambda s, part: reduce_shard(s, part, out_text, dedupe, with_users),
                     n_shards)
    return _shards(paths, firsts, reused=False)


def _shards(paths: list[Path], firsts: list[dict[str, Any]], reused: bool) -> HistoryShards:
    return HistoryShards([str(p) for p in paths],
                         _in_log_order(firsts, "user", "file", "row"),
                         _in_log_order(firsts, "item", "item_file", "item_row"),
                         sum(f["events"] for f in firsts), sum(f["n_users"] for f in firsts),
                         reused)


def build_histories(spec: InteractionsSpec, out: str | Path, shuffle: Callable,
                    n_shards: int) -> list[str]:
    """Write the per-user history shards of ``spec``'s files under ``out``; returns the user
    vocabulary in first-seen order (what the loader's vocabulary would be)."""
    return shard_histories(spec, out, shuffle, n_shards).users


def read_histories(out: str | Path) -> pl.DataFrame:
    """Every shard's histories (``user``, ``items``, ``times``): for checks and small logs;
    a large job reads one shard per task instead."""
    return pl.concat([pl.read_parquet(p) for p in sorted(Path(out).glob("histories-*.parquet"))])
