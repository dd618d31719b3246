"""Per-user histories of a many-file log, built as map -> shuffle by user -> reduce, without
the log ever passing through one process.

Map (one task per file): read ``user``, ``item`` and ``time`` and tag each row with its
place in the log, ``(file number, row)`` (files in name order, as the loader reads a
folder); send each row to the shard of its user (a stable hash of the raw id). Reduce
(one task per shard): sort the shard's rows by (user, time, file, row) — time order,
ties in log order, like :meth:`~llmrecall.data.dataset.Interactions.chronological_order`
— and write ``<out>/histories-<shard>.parquet`` with one row per user: ``user`` (raw
id), ``items`` (raw ids, oldest first), ``times``. Each reducer also returns its users'
first place in the log, so the driver can number the users in first-seen order (the
loader's vocabulary order) without reading the log: the driver holds one entry per user,
never one per event. Rows are kept as they are: the loader's ``dedupe`` of exact repeats
is not applied here.

A shard file is written under a temporary name and renamed, and a shard already present
is not recomputed: a killed job reruns only the missing shards' reduces (the maps of a
rerun are cheap reads; their outputs live in the object store).

``shuffle`` is any ``shuffle(map_fn, inputs, reduce_fn, n_partitions)`` (the Ray engine's,
or :func:`llmrecall.engine.cooccurrence._shuffle_local` for one process).
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl

from llmrecall.data.spec import InteractionsSpec, table_files


def _shard_of(users: pl.Series, n_shards: int) -> np.ndarray:
    # crc32 of the raw id: the same shard in every process (Python's hash() is salted)
    return np.fromiter((zlib.crc32(u.encode()) % n_shards for u in users.to_list()),
                       np.int64, len(users))


def map_file(path: str, number: int, user: str, item: str, time: str | None,
             n_shards: int) -> list[dict[str, np.ndarray]]:
    """Read one file and split its rows by user shard (numeric ``time`` columns only)."""
    columns = [user, item] + ([time] if time else [])
    frame = pl.read_parquet(path, columns=columns) if path.endswith((".parquet", ".pq")) \
        else pl.read_csv(path, columns=columns, infer_schema=False)
    users = frame[user].cast(pl.String)
    row = np.arange(frame.height, dtype=np.int64)
    times = (frame[time].cast(pl.Float64).to_numpy() if time
             else row.astype(np.float64))
    shard = _shard_of(users, n_shards)
    base = {"user": users.to_numpy().astype(object),
            "item": frame[item].cast(pl.String).to_numpy().astype(object),
            "time": times, "file": np.full(frame.height, number, np.int64), "row": row}
    order = np.argsort(shard, kind="stable")
    bounds = np.searchsorted(shard[order], np.arange(n_shards + 1))
    return [{k: v[order[bounds[s]:bounds[s + 1]]] for k, v in base.items()}
            for s in range(n_shards)]


def reduce_shard(shard: int, part: dict[str, np.ndarray], out: str) -> dict[str, list]:
    """Sort one shard into per-user histories, write it, and return its users' first place
    in the log (``user``, ``file``, ``row``)."""
    path = Path(out) / f"histories-{shard:05d}.parquet"
    frame = pl.DataFrame({k: part[k] for k in ("user", "item", "time", "file", "row")},
                         schema={"user": pl.String, "item": pl.String, "time": pl.Float64,
                                 "file": pl.Int64, "row": pl.Int64})
    # first place: the smallest (file, row) of each user
    first = (frame.sort(["file", "row"]).group_by("user", maintain_order=True)
             .agg(pl.col("file").first(), pl.col("row").first()))
    if not path.exists():
        histories = (frame.sort(["user", "time", "file", "row"])
                     .group_by("user", maintain_order=True)
                     .agg(pl.col("item").alias("items"), pl.col("time").alias("times")))
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        histories.write_parquet(tmp)
        os.replace(tmp, path)
    return {"user": first["user"].to_list(), "file": first["file"].to_list(),
            "row": first["row"].to_list()}


def build_histories(spec: InteractionsSpec, out: str | Path, shuffle: Callable,
                    n_shards: int) -> list[str]:
    """Write the per-user history shards of ``spec``'s files under ``out``; returns the user
    vocabulary in first-seen order (what the loader's vocabulary would be)."""
    files = table_files(spec.path) or [spec.path]
    Path(out).mkdir(parents=True, exist_ok=True)
    inputs = [(str(f), number) for number, f in enumerate(files)]
    user, item, time = spec.user, spec.item, spec.time
    out_text = str(out)
    firsts = shuffle(lambda x: map_file(x[0], x[1], user, item, time, n_shards), inputs,
                     lambda s, part: reduce_shard(s, part, out_text), n_shards)
    users = [u for f in firsts for u in f["user"]]
    place = np.array([(fi, r) for f in firsts for fi, r in zip(f["file"], f["row"])],
                     np.int64).reshape(-1, 2)
    order = np.lexsort((place[:, 1], place[:, 0])) if len(users) else np.zeros(0, np.int64)
    return [users[i] for i in order]


def read_histories(out: str | Path) -> pl.DataFrame:
    """Every shard's histories (``user``, ``items``, ``times``): for checks and small logs;
    a large job reads one shard per task instead."""
    return pl.concat([pl.read_parquet(p) for p in sorted(Path(out).glob("histories-*.parquet"))])
