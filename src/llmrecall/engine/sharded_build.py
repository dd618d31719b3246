"""``build`` from a sharded log: a serving artifact written without the log in one process.

With ``[engine] log = "sharded"``, ``llmrecall build --data SPEC.toml`` writes the artifact
``build`` writes from a loaded :class:`~llmrecall.data.dataset.Dataset`
(:mod:`llmrecall.serve.artifacts`), from the history shards instead
(:mod:`llmrecall.engine.sharded`):

1. the log's files shuffled into per-user history shards (reused from ``work_dir``);
2. the channels (those :data:`~llmrecall.engine.sharded.SHARDED_KINDS` names) fitted from
   the shards' every row (BPR's user factors, kept per shard, put into the artifact in
   its user order) (as ``build`` fits on all data), on the engine's tasks, their
   results kept in ``work_dir`` as for a sharded ``evaluate``; with ``[fusion] method =
   "learned"`` the fusion is fitted first, as the driver path fits it: the channels on the
   ``loo`` train part, the fusion on a sample of validation users from every shard
   (:mod:`llmrecall.engine.sharded_fusion`);
3. the data files written shard after shard: ``users.json`` (users numbered shard after
   shard, each shard's in the order its file keeps them), ``histories.npz`` (each user's
   items, times and weights, oldest first, as ``Dataset.histories`` gives them), streamed
   into the archive member by member, so the driver holds one shard at a time;
   ``items.json`` and ``catalog.parquet`` from the item vocabulary (the loader's order) and
   the item file.

The service loads the artifact whole (every history in memory), as it loads any artifact:
this moves the log out of the builder, not out of the service. Users are numbered shard
after shard, not in first-seen order as the loader numbers them: the artifact holds the
same users, histories and fitted channels under other dense user ids (dense ids never leave
an artifact; the service speaks raw ids).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
import zipfile
from pathlib import Path
from typing import IO, Any

import numpy as np
import polars as pl

from llmrecall.config import PipelineConfig
from llmrecall.data.spec import DataSpec
from llmrecall.engine.sharded import (
    REDUCER_BYTES,
    SHARD_EVENTS,
    check_sharded,
    fit_from_shards,
    open_sharded_log,
)
from llmrecall.engine.sharded_fusion import FUSION_USERS, fit_sharded_fusion

#: the histories.npz members, in the order they are written: (name, dtype)
_MEMBERS = (("indptr", np.int64), ("items", np.int32), ("times", np.float64),
            ("weights", np.float32))


def build_sharded(spec: DataSpec, config: PipelineConfig, out_dir: str | Path, *, engine,
                  work_dir: str | Path | None = None, shard_events: int = SHARD_EVENTS,
                  reducer_bytes: int = REDUCER_BYTES, fusion_users: int = FUSION_USERS,
                  name: str | None = None, progress=None) -> tuple[Path, dict[str, Any]]:
    """Write a new artifact version of ``config`` fitted on the log ``spec`` names, never
    loading the log (module docstring). Returns the version folder and what was run
    (``shards``, ``events``, ``users``, ``items``, ``resumed``, ``seconds``).

    ``work_dir`` as :func:`~llmrecall.engine.sharded.evaluate_sharded`'s: the shards and the
    fitted similarities are kept there, and a sharded ``evaluate`` of the same log reuses
    the shards (not the fits: those are on its training split).
    """
    from llmrecall.data.loaders import read_catalog
    from llmrecall.engine.shard_users import install_all_users
    from llmrecall.pipeline import RecallPipeline
    from llmrecall.serve.artifacts import write_version

    say = progress or (lambda _msg: None)
    check_sharded(spec, config, "loo", command="build")
    resumed: dict[str, Any] = {}
    begin = time.perf_counter()
    with open_sharded_log(spec, engine, work_dir, shard_events) as log:
        shards, items, n_shards = log.shards, log.items, len(log.shards.paths)
        resumed["histories"] = shards.reused
        say(f"sharded {shards.events:,} events of {shards.n_users:,} users into "
            f"{n_shards} shards")
        catalog = read_catalog(spec.items, len(items))
        model, fusion_seconds = None, 0.0
        if config.fusion.method == "learned":
            # as the driver path's fit_pipeline: channels on the loo train part, the fusion
            # on validation lists (a sample from every shard), then the channels on all data
            on_train = RecallPipeline(config)
            fit_from_shards(on_train.channels, shards.paths, items, engine, reducer_bytes,
                            log.run, resumed, catalog=lambda: catalog, searches=log.searches,
                            timed_searches=log.timed_searches)
            fusion = fit_sharded_fusion(on_train, shards.paths, items, engine, log.run,
                                        resumed, shards.n_users, k=config.fusion.k,
                                        max_users=fusion_users)
            model, fusion_seconds = on_train.fusion_model_, fusion["fit_seconds"]
        pipeline = RecallPipeline(config)
        pipeline.fit_seconds = fit_from_shards(pipeline.channels, shards.paths, items, engine,
                                               reducer_bytes, log.run, resumed, split=False,
                                               catalog=lambda: catalog,
                                               searches=log.searches,
                                               timed_searches=log.timed_searches)
        pipeline.fusion_model_, pipeline.fusion_seconds_ = model, fusion_seconds
        # per-user rows kept per shard (BPR's factors) into the artifact, in its user order
        install_all_users(pipeline.channels)

        def write_data(version: Path) -> None:
            (version / "items.json").write_text(json.dumps(items))
            catalog.frame.write_parquet(version / "catalog.parquet")
            write_users_and_histories(shards.paths, items, version)

        path = write_version(out_dir, config, pipeline, write_data, {
            "dataset": name or spec.name or "dataset", "n_users": shards.n_users,
            "n_items": len(items), "n_interactions": shards.events,
            "text_fields": list(catalog.text_fields), "log": "sharded"})
    return path, {"shards": n_shards, "events": shards.events, "users": shards.n_users,
                  "items": len(items), "resumed": resumed,
                  "seconds": time.perf_counter() - begin}


def write_users_and_histories(paths: list[str], items: list[str], version: Path) -> None:
    """``users.json`` and ``histories.npz`` from the shards, one shard in memory at a time:
    each array's values go to a scratch file as the shards are read, then into the
    archive as one ``.npy`` member (``np.load`` reads it as ``np.savez`` would write it)."""
    scratch = Path(tempfile.mkdtemp(prefix=".histories-", dir=version))
    try:
        outs = {key: open(scratch / key, "wb") for key, _ in _MEMBERS}
        np.zeros(1, np.int64).tofile(outs["indptr"])
        n_users, end = 0, 0  # users and events written so far
        with open(version / "users.json", "w") as users:
            users.write("[")
            first = True
            for path in paths:
                frame = pl.read_parquet(path, columns=["user", "items", "times"])
                if frame.height:
                    users.write(("" if first else ",")
                                + ",".join(json.dumps(u) for u in frame["user"].to_list()))
                    first = False
                lengths = frame["items"].list.len().to_numpy().astype(np.int64)
                item = frame["items"].explode().drop_nulls().replace_strict(
                    items, np.arange(len(items), dtype=np.int32),
                    return_dtype=pl.Int32).to_numpy()
                times = frame["times"].explode().drop_nulls().to_numpy().astype(np.float64)
                (end + np.cumsum(lengths)).astype(np.int64).tofile(outs["indptr"])
                end += int(lengths.sum())
                n_users += len(lengths)
                item.astype(np.int32).tofile(outs["items"])
                times.tofile(outs["times"])
                np.ones(len(item), np.float32).tofile(outs["weights"])
            users.write("]")
        for out in outs.values():
            out.close()
        lengths_of = {"indptr": n_users + 1, "items": end, "times": end, "weights": end}
        with zipfile.ZipFile(version / "histories.npz", "w", zipfile.ZIP_STORED,
                             allowZip64=True) as archive:
            for key, dtype in _MEMBERS:
                with archive.open(f"{key}.npy", "w", force_zip64=True) as member, \
                        open(scratch / key, "rb") as values:
                    _npy_header(member, np.dtype(dtype), lengths_of[key])
                    shutil.copyfileobj(values, member, 16 * 2**20)
            with archive.open("n_items.npy", "w") as member:
                np.lib.format.write_array(member, np.asarray(np.int64(len(items))))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _npy_header(stream: IO[bytes], dtype: np.dtype, length: int) -> None:
    """The ``.npy`` header of a 1-d C-order array of ``length`` values of ``dtype``."""
    np.lib.format.write_array_header_1_0(
        stream, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
                 "shape": (length,)})
