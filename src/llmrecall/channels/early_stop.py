"""Early stopping for the sequence model on held-out next items.

A sample of users has its newest training transition (last items -> last item) taken out of
the loss; after every epoch the model ranks the whole catalog for those users, as the
evaluator does (the user's earlier items excluded), and the ranking metric of the held-out
item is recorded. Training stops once the metric has not improved for ``patience`` epochs,
and the network is put back to its best epoch. This is "train to convergence" without a
hand-set epoch count, and without looking at the evaluation split: the held-out items come
from the training data the channel was given.

The held-out users keep their newest item as *input* at recall time (the history the
service or the evaluator passes in); only its role as a training target is lost, one target
of a user's whole sequence.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from llmrecall.errors import ConfigError

#: metrics the monitor can follow: ``"ndcg@K"`` or ``"recall@K"``
METRICS = ("ndcg", "recall")
#: what :meth:`HeldOutNext.save` writes into a training checkpoint's folder
SCORES_FILE = "early_stop.json"
BEST_FILE = "early_stop_best.safetensors"


def parse_monitor(text: str) -> tuple[str, int]:
    """``"ndcg@10"`` -> ``("ndcg", 10)``; a ConfigError names what is accepted."""
    name, _, cut = text.partition("@")
    if name not in METRICS or not cut.isdigit() or int(cut) < 1:
        raise ConfigError(f"sasrec: monitor must be 'ndcg@K' or 'recall@K' with K >= 1, "
                          f"got {text!r}")
    return name, int(cut)


def newest_window_rows(lengths: np.ndarray, max_len: int) -> np.ndarray:
    """int64[n_users]: the row of each user's newest window in
    :func:`llmrecall.channels.sequential.training_windows` (users with no window get -1)."""
    n_win = np.where(lengths >= 2, -(-(lengths - 1) // max_len), 0)
    first = np.cumsum(n_win) - n_win  # windows are grouped by user, newest first
    return np.where(n_win > 0, first, -1)


@dataclass
class HeldOutNext:
    """The newest transition of some users, kept out of training to decide when to stop.

    Attributes:
        sequences: int64[u, max_len], ids + 1, left-padded with 0: each user's items before
            the held-out one (the model's input).
        targets: int64[u] the held-out item (0-based id).
        seen_rows, seen_items: int64[s] coordinates (row of ``sequences``, item id) of the
            items each user already has, other than its target; never ranked.
        metric, k: what is followed (``"ndcg"`` or ``"recall"`` at ``k``).
        patience: epochs without improvement before stopping.
        scores: the metric after each epoch so far.
        best_epoch: 1-based epoch of the best metric (0 before any).
    """

    sequences: np.ndarray
    targets: np.ndarray
    seen_rows: np.ndarray
    seen_items: np.ndarray
    metric: str
    k: int
    patience: int
    scores: list[float] = field(default_factory=list)
    best_epoch: int = 0
    _best_state: dict[str, Any] | None = field(default=None, repr=False)

    @classmethod
    def take(cls, windows: np.ndarray, lengths: np.ndarray, max_len: int, n_users: int,
             rng: np.random.Generator, monitor: str, patience: int) -> HeldOutNext:
        """Hold out the newest transition of ``n_users`` users (drawn with ``rng`` among those
        with 3 or more items) from ``windows`` (int64[w, max_len + 1], changed in place: the
        held-out targets become padding, which the loss skips)."""
        metric, k = parse_monitor(monitor)
        eligible = np.flatnonzero(lengths >= 3)
        if len(eligible) == 0:
            raise ConfigError("sasrec: early stopping needs users with 3 or more items")
        users = np.sort(rng.choice(eligible, min(n_users, len(eligible)), replace=False))
        rows = newest_window_rows(lengths, max_len)[users]
        sequences = windows[rows, :max_len].copy()
        targets = windows[rows, max_len] - 1
        windows[rows, max_len] = 0
        seen_rows, seen_cols = np.nonzero(sequences)
        seen_items = sequences[seen_rows, seen_cols] - 1
        # an earlier copy of the target (a repeat consumption) stays rankable, as in the
        # evaluator, which excludes the history minus the targets
        other = seen_items != targets[seen_rows]
        return cls(sequences, targets, seen_rows[other], seen_items[other], metric, k, patience)

    @classmethod
    def concat(cls, parts: list[HeldOutNext], monitor: str, patience: int) -> HeldOutNext:
        """One hold-out of ``parts`` (each :meth:`take` from its own windows: the sharded
        log's shards), their users in order; ``seen_rows`` renumbered to match."""
        metric, k = parse_monitor(monitor)
        if not parts:
            raise ConfigError("sasrec: early stopping needs users with 3 or more items")
        offsets = np.cumsum([0] + [len(p.targets) for p in parts[:-1]])
        return cls(np.concatenate([p.sequences for p in parts]),
                   np.concatenate([p.targets for p in parts]),
                   np.concatenate([p.seen_rows + o for p, o in zip(parts, offsets)]),
                   np.concatenate([p.seen_items for p in parts]), metric, k, patience)

    def update(self, net) -> bool:
        """Score ``net`` (the unwrapped network) on the held-out users, keep its weights if it
        is the best so far, and say whether training should stop."""
        value = self._evaluate(net)
        self.scores.append(value)
        if self.best_epoch == 0 or value > self.scores[self.best_epoch - 1]:
            self.best_epoch = len(self.scores)
            self._best_state = copy.deepcopy(net.state_dict())
        return self.done

    @property
    def done(self) -> bool:
        """True once ``patience`` epochs in a row have not improved on the best."""
        return self.best_epoch > 0 and len(self.scores) - self.best_epoch >= self.patience

    def save(self, folder: str | Path) -> None:
        """Write the scores so far and the best weights into ``folder`` (a training
        checkpoint, :mod:`llmrecall.channels.train_state`; JSON and safetensors)."""
        from safetensors.torch import save_file

        folder = Path(folder)
        (folder / SCORES_FILE).write_text(json.dumps({"scores": self.scores,
                                                      "best_epoch": self.best_epoch}))
        if self._best_state is not None:
            save_file({k: v.contiguous() for k, v in self._best_state.items()},
                      str(folder / BEST_FILE))

    def load(self, folder: str | Path) -> None:
        """Continue from what :meth:`save` wrote in ``folder`` (a resumed training run)."""
        from safetensors.torch import load_file

        folder = Path(folder)
        meta = json.loads((folder / SCORES_FILE).read_text())
        self.scores, self.best_epoch = [float(v) for v in meta["scores"]], int(meta["best_epoch"])
        best = folder / BEST_FILE
        self._best_state = load_file(str(best)) if best.is_file() else None

    def restore(self, net) -> None:
        """Put the best epoch's weights back into ``net``."""
        if self._best_state is not None:
            net.load_state_dict(self._best_state)
        self._best_state = None  # the weights now live in the network

    def _evaluate(self, net) -> float:
        import torch

        was_training = net.training
        net.eval()
        with torch.no_grad():
            table = net.items()
            hidden = net(torch.from_numpy(self.sequences), table)[:, -1]
            logits = (hidden @ table[1:].T).numpy()
        if was_training:
            net.train()
        logits[self.seen_rows, self.seen_items] = -np.inf
        target = logits[np.arange(len(logits)), self.targets]
        rank = (logits > target[:, None]).sum(axis=1)  # 0 = first; ties count in its favour
        hit = rank < self.k
        if self.metric == "recall":
            return float(hit.mean())
        return float(np.where(hit, 1.0 / np.log2(rank + 2.0), 0.0).mean())

    def summary(self) -> dict:
        """What the fit's report shows: epochs run, the best one and its metric."""
        return {"monitor": f"{self.metric}@{self.k}", "held_out_users": int(len(self.targets)),
                "epochs_run": len(self.scores), "best_epoch": self.best_epoch,
                "best": round(self.scores[self.best_epoch - 1], 4) if self.best_epoch else None}
