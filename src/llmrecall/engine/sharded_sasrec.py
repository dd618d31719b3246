"""SASRec from the sharded log: training windows built per shard, read by the trainers.

The in-process fit cuts every training user's sequence into windows
(:func:`~llmrecall.channels.sequential.training_windows`) from the loaded log. Here:

1. **windows** (one task per history shard): the shard's training rows as histories, cut
   into windows by the same function, written to the run folder
   (:class:`~llmrecall.engine.stage_files.StageParts`; a rerun builds only the shards
   missing);
2. **training**: on the Ray engine the Ray Train workers read the window files themselves
   (:class:`WindowFiles`; every worker reads all of them in shard order, so the workers
   draw the same batches and each takes its rows of each, as they do from the driver's
   windows); the driver sends only the initial network. On the local engine the one
   process reads them and trains.

The driver holds the item vocabulary, the catalog (the item texts the ids are initialised
from) and the per-item training counts (the fallback ranking), nothing per event. A Ray
Train worker holds every window (``8 (max_len + 1)`` bytes each: about ``8 events (1 +
1 / max_len)`` bytes in all, 0.4 GB at 50M events), as it does on the driver path.

Same model as the in-process fit in distribution: the windows are the same rows in another
order (users shard after shard), so the batches differ. Early stopping (``patience`` > 0)
is refused: it holds every user's newest transition out of the windows on the driver.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llmrecall.engine.local import use_engine
from llmrecall.engine.shard_split import catalog_only, read_shard
from llmrecall.engine.stage_files import StageParts, digest, files_signature


@dataclass(frozen=True)
class WindowFiles:
    """The training windows of every shard, as files: ``paths`` in shard order and their
    ``signature`` (paths, sizes, modification times: what a Ray Train run's resume digest
    reads instead of the windows' bytes), ``rows`` the windows in all."""

    paths: tuple[str, ...]
    signature: tuple[tuple[str, int, int], ...]
    rows: int

    @classmethod
    def of(cls, paths: list[Path], rows: int) -> WindowFiles:
        """The window files ``paths`` (shard order) holding ``rows`` windows in all."""
        signature = tuple((p, size, mtime) for p, size, mtime in files_signature(paths))
        return cls(tuple(str(p) for p in paths), signature, rows)

    def __len__(self) -> int:
        return self.rows

    def load(self) -> np.ndarray:
        """int64[rows, max_len + 1] every shard's windows, in shard order."""
        parts = [np.load(p, allow_pickle=False)["windows"] for p in self.paths]
        return np.concatenate(parts) if parts else np.zeros((0, 1), np.int64)


def shard_windows(shard: int, path: str, items: list[str], max_len: int, split: bool,
                  kept: StageParts) -> int:
    """Write shard ``shard``'s training windows (int64[w, max_len + 1]) to ``kept``;
    returns ``w``."""
    from llmrecall.channels.sequential import training_windows
    from llmrecall.data.dataset import Histories

    data = read_shard(path, items, split)
    histories = Histories.from_interactions(data.train, data.n_users, len(items))
    windows = training_windows(histories, max_len)
    kept.save(shard, {"windows": windows}, {"rows": len(windows)})
    return len(windows)


def fit_sasrec(channel, paths: list[str], items: list[str], counts: np.ndarray, catalog,
               engine, run: Path, resumed: dict[str, Any], name: str,
               split: bool = True) -> None:
    """Fit ``channel`` (an unfitted SASRec, ``patience`` 0) from the shards ``paths``
    (module docstring). ``counts`` float64[n_items]: each item's training events summed
    over the shards; ``catalog``: the items' :class:`~llmrecall.data.dataset.Catalog`.
    ``resumed[f"{name}_windows"]`` says how many shards' windows were found."""
    max_len = int(channel.max_len)  # the tasks get the number, not the channel (its lock)
    kept = StageParts(run, "sasrec-windows", digest(max_len, split))
    todo = kept.missing(len(paths))
    resumed[f"{name}_windows"] = f"{len(paths) - len(todo)}/{len(paths)}"
    engine.map_tasks(lambda s: shard_windows(s, paths[s], items, max_len, split, kept), todo)
    rows = sum(int(kept.load_meta(s)["rows"]) for s in range(len(paths)))
    windows = WindowFiles.of([kept.path(s) for s in range(len(paths))], rows)
    with use_engine(engine):  # the text initialisation embeds on the engine's embedder
        channel.fit_windows(catalog_only(items, catalog), windows, counts,
                            train=getattr(engine, "train_sasrec", None))
