"""SASRec from the sharded log: training windows built per shard, read by the trainers.

The in-process fit cuts every training user's sequence into windows
(:func:`~llmrecall.channels.sequential.training_windows`) from the loaded log. Here:

1. **windows** (one task per history shard): the shard's training rows as histories, cut
   into windows by the same function, written to the run folder
   (:class:`~llmrecall.engine.stage_files.StageParts`; a rerun builds only the shards
   missing);
2. **training**: on the Ray engine each Ray Train worker reads only its contiguous slice
   of the rows (:meth:`WindowFiles.load_slice`: the byte range of those rows in the files
   they lie in) and draws its rows of each batch from it (``rows_per_worker`` in
   :meth:`~llmrecall.channels.sequential.SASRec.train_epochs`); the driver sends only the
   initial network. On the local engine the one process reads every file and trains.

The driver holds the item vocabulary, the catalog (the item texts the ids are initialised
from) and the per-item training counts (the fallback ranking), nothing per event. A Ray
Train worker holds ``1 / world`` of the windows (``8 (max_len + 1)`` bytes each: about
``8 events (1 + 1 / max_len)`` bytes in all, 0.4 GB at 50M events), where on the driver
path every worker reads all of them from the object store.

**Early stopping** (``patience`` > 0): the in-process fit holds the newest training
transition of ``holdout_users`` users out of the windows and scores it after every epoch.
Here each shard's windows task holds out its share of them (the total apportioned over the
shards by their users with 3 or more training items, largest remainder first; drawn with
``default_rng([seed, 1, shard])``) with the same function
(:meth:`~llmrecall.channels.early_stop.HeldOutNext.take`), writes them beside its windows,
and the driver joins the shares into one hold-out (``holdout_users x max_len`` ids: 0.4 MB
at 1,000 users and ``max_len`` 50), which the trainers score as on the driver path.

Same model as the in-process fit in distribution: the windows are the same rows, drawn
in another order (on Ray each batch takes about ``batch_size / world`` rows from each
worker's slice), and the held-out users are another draw of as many.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llmrecall.engine.local import use_engine
from llmrecall.engine.shard_split import catalog_only, read_shard
from llmrecall.engine.stage_files import (
    StageParts,
    digest,
    files_signature,
    read_rows,
    row_layout,
)
from llmrecall.errors import ConfigError


@dataclass(frozen=True)
class WindowFiles:
    """The training windows of every shard, as files: ``paths`` in shard order, ``counts``
    the windows in each, and their ``signature`` (paths, sizes, modification times: what a
    Ray Train run's resume digest reads instead of the windows' bytes).

    Row ``i`` of the whole is row ``i - sum(counts[:f])`` of file ``f``; a data-parallel
    worker reads only its slice of the rows (:meth:`load_slice`)."""

    paths: tuple[str, ...]
    counts: tuple[int, ...]
    signature: tuple[tuple[str, int, int], ...]

    @classmethod
    def of(cls, paths: list[Path], counts: list[int]) -> WindowFiles:
        """The window files ``paths`` (shard order) holding ``counts`` windows each."""
        if len(paths) != len(counts):
            raise ValueError(f"{len(paths)} window files but {len(counts)} counts")
        signature = tuple((p, size, mtime) for p, size, mtime in files_signature(paths))
        return cls(tuple(str(p) for p in paths), tuple(int(c) for c in counts), signature)

    @property
    def rows(self) -> int:
        """The windows in all."""
        return sum(self.counts)

    def __len__(self) -> int:
        return self.rows

    def load(self) -> np.ndarray:
        """int64[rows, max_len + 1] every shard's windows, in shard order (one worker's
        slice of one: read into one array)."""
        return self.load_slice(0, 1)

    def slice_bounds(self, rank: int, world: int) -> tuple[int, int]:
        """Rows ``[start, stop)`` of worker ``rank`` of ``world``: contiguous, disjoint,
        covering every row, sizes ``rows // world`` or one more (none empty when
        ``rows >= world``)."""
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} is not one of {world} workers")
        return self.rows * rank // world, self.rows * (rank + 1) // world

    def load_slice(self, rank: int, world: int) -> np.ndarray:
        """int64[stop - start, max_len + 1] rows :meth:`slice_bounds` of the whole, read
        from the files they lie in and only those rows' bytes of each
        (:func:`~llmrecall.engine.stage_files.read_rows`): a worker holds ``1 / world``
        of the windows."""
        start, stop = self.slice_bounds(rank, world)
        pieces, offset = [], 0  # (file, its first row, its stop) of the files it lies in
        for path, count in zip(self.paths, self.counts):
            if count and offset < stop and start < offset + count:
                pieces.append((path, max(start - offset, 0), min(stop - offset, count)))
            offset += count
        if not pieces:
            return np.zeros((0, 1), np.int64)
        shape, dtype = row_layout(pieces[0][0], "windows")
        out = np.empty((stop - start, *shape[1:]), dtype)  # one allocation, filled in place
        at = 0
        for path, first, last in pieces:
            read_rows(path, "windows", first, last, out=out[at:at + last - first])
            at += last - first
        return out


#: what :func:`shard_windows` writes of a shard's hold-out (HeldOutNext's array fields)
HOLD_OUT_ARRAYS = ("sequences", "targets", "seen_rows", "seen_items")


@dataclass(frozen=True)
class HoldOut:
    """What a shard's windows task holds out for early stopping: ``users`` of its users
    with 3 or more training items (its share of ``holdout_users``), drawn with
    ``default_rng([seed, 1, shard])``, followed by ``monitor`` for ``patience`` epochs."""

    users: int
    seed: int
    monitor: str
    patience: int


def shard_windows(shard: int, path: str, items: list[str], max_len: int, split: bool,
                  kept: StageParts, hold_out: HoldOut | None = None) -> int:
    """Write shard ``shard``'s training windows (int64[w, max_len + 1]) to ``kept``, with
    ``hold_out.users`` users' newest transitions taken out (their targets set to padding)
    and written beside them (:class:`~llmrecall.channels.early_stop.HeldOutNext`'s
    arrays); returns ``w``."""
    from llmrecall.channels.early_stop import HeldOutNext
    from llmrecall.channels.sequential import training_windows
    from llmrecall.data.dataset import Histories

    data = read_shard(path, items, split)
    histories = Histories.from_interactions(data.train, data.n_users, len(items))
    windows = training_windows(histories, max_len)
    arrays = {"windows": windows}
    if hold_out is not None and hold_out.users:
        held = HeldOutNext.take(windows, histories.lengths(), max_len, hold_out.users,
                                np.random.default_rng([hold_out.seed, 1, shard]),
                                hold_out.monitor, hold_out.patience)
        arrays.update(sequences=held.sequences, targets=held.targets,
                      seen_rows=held.seen_rows, seen_items=held.seen_items)
    kept.save(shard, arrays, {"rows": len(windows)})
    return len(windows)


def apportion(total: int, weights: list[int]) -> list[int]:
    """``total`` (at most ``sum(weights)``) split over the ``weights`` in proportion, whole
    numbers, largest remainder first (ties to the earlier), none above its weight."""
    whole = sum(weights)
    total = min(int(total), whole)
    if whole == 0:
        return [0] * len(weights)
    exact = np.asarray(weights, np.float64) * total / whole
    share = np.floor(exact).astype(np.int64)
    order = np.argsort(-(exact - share), kind="stable")
    share[order[:total - int(share.sum())]] += 1
    return [int(v) for v in share]


def joined_hold_out(kept: StageParts, shards: int, monitor: str, patience: int):
    """The shards' held-out transitions (written by :func:`shard_windows`) as one
    :class:`~llmrecall.channels.early_stop.HeldOutNext`, shard after shard."""
    from llmrecall.channels.early_stop import HeldOutNext, parse_monitor

    metric, k = parse_monitor(monitor)
    parts = []
    for s in range(shards):
        # the hold-out only: the shard's windows stay on disk for the trainers
        arrays, _meta = kept.load(s, HOLD_OUT_ARRAYS)
        if arrays:
            parts.append(HeldOutNext(arrays["sequences"], arrays["targets"],
                                     arrays["seen_rows"], arrays["seen_items"], metric, k,
                                     patience))
    return HeldOutNext.concat(parts, monitor, patience)


def fit_sasrec(channel, paths: list[str], items: list[str], counts: np.ndarray, catalog,
               engine, run: Path, resumed: dict[str, Any], name: str,
               split: bool = True, long_users: list[int] | None = None) -> None:
    """Fit ``channel`` (an unfitted SASRec) from the shards ``paths`` (module docstring).
    ``counts`` float64[n_items]: each item's training events summed over the shards;
    ``catalog``: the items' :class:`~llmrecall.data.dataset.Catalog`; ``long_users``: each
    shard's users with 3 or more training items (what early stopping's hold-out is
    apportioned by; needed when ``patience`` > 0).
    ``resumed[f"{name}_windows"]`` says how many shards' windows were found."""
    from llmrecall.channels.early_stop import parse_monitor

    max_len = int(channel.max_len)  # the tasks get the number, not the channel (its lock)
    patience = int(channel.patience)
    shares: list[int | None] = [None] * len(paths)
    if patience:
        parse_monitor(channel.monitor)  # a bad monitor fails before any task runs
        if long_users is None or len(long_users) != len(paths):
            raise ValueError("sasrec with patience from the shards needs each shard's users "
                             "with 3 or more training items")
        if sum(long_users) == 0:
            raise ConfigError("sasrec: early stopping needs users with 3 or more items")
        shares = list(apportion(int(channel.holdout_users), long_users))
    holds = [None if share is None else
             HoldOut(share, int(channel.seed), str(channel.monitor), patience)
             for share in shares]
    kept = StageParts(run, "sasrec-windows", digest(max_len, split, [
        None if h is None else [h.users, h.seed] for h in holds]))
    todo = kept.missing(len(paths))
    resumed[f"{name}_windows"] = f"{len(paths) - len(todo)}/{len(paths)}"
    engine.map_tasks(lambda s: shard_windows(s, paths[s], items, max_len, split, kept,
                                             holds[s]), todo)
    windows = WindowFiles.of([kept.path(s) for s in range(len(paths))],
                             [int(kept.load_meta(s)["rows"]) for s in range(len(paths))])
    stopping = (joined_hold_out(kept, len(paths), str(channel.monitor), patience)
                if patience else None)
    with use_engine(engine):  # the text initialisation embeds on the engine's embedder
        channel.fit_windows(catalog_only(items, catalog), windows, counts,
                            train=getattr(engine, "train_sasrec", None), stopping=stopping)
