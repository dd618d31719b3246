"""Text-enhanced SASRec (kind ``sasrec``): a small causal transformer over the recent sequence.

Item representations come from ids, from text, or both (``text_init``):

* ``"none"``: learned id embeddings only (the ID-only ablation).
* ``"init"``: id embeddings initialised from the catalog's text embeddings reduced to ``dim``
  by PCA (as LLM-ESR does), then trained freely.
* ``"fuse"``: ``id embedding + W·text`` with the text embeddings frozen and the projection
  ``W`` (a linear adapter, as UniSRec's) trained; the id part starts at zero, so an item with
  no training interactions is represented by its text.

With ``"fuse"`` an item created at run time (the service's ``add_items`` hook) is given the
representation a never-interacted item has after training: id part zero, adapted text
``W·text``, so it is scored at once. The other modes cannot do this cheaply: ``"none"`` has
no text, and ``"init"`` ids were trained freely away from the (unsaved) PCA projection of the
text, so a projected new item would not live in the space the model learned; for those modes
``add_items`` leaves new items unknown, as they were before.

Trained with full softmax cross-entropy over all items (sampled softmax with shared uniform
negatives above ``full_softmax_limit`` items). ``epochs`` is a fixed count, or with
``patience`` > 0 the most epochs run: training stops when the ranking metric of held-out next
items stops improving and keeps the best epoch (:mod:`llmrecall.channels.early_stop`).
Seeded; torch threads capped at ``threads``.
Saved as ``params.json`` + ``state.npz`` (popularity fallback) + ``model.safetensors``
(the network); no pickle.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from llmrecall import progress
from llmrecall.channels.base import Channel
from llmrecall.channels.capabilities import AddsItems, CachesUsers
from llmrecall.channels.early_stop import HeldOutNext, parse_monitor
from llmrecall.channels.registry import register
from llmrecall.channels.text_features import (
    DEFAULT_EMBEDDER,
    added_texts,
    check_added,
    check_width,
    grown,
    item_text_vectors,
    popularity,
    text_vectors,
)
from llmrecall.channels.user_cache import cached_user_states
from llmrecall.data.dataset import Dataset, Histories
from llmrecall.errors import ConfigError, DataError
from llmrecall.scoring import dot_rows

TEXT_MODES = ("none", "init", "fuse")


def _torch():
    import torch

    return torch


def training_windows(history: Histories, max_len: int) -> np.ndarray:
    """Every user's sequence cut into windows of ``max_len + 1`` items, newest window first.

    Returns int64[w, max_len + 1] of item ids + 1 (0 = left padding). A sequence of n items
    gives ``ceil((n - 1) / max_len)`` windows that overlap by one item, so every transition
    (previous items -> next item) is a training target exactly once. Users with < 2 items
    give none.
    """
    lengths = history.lengths()
    n_win = np.where(lengths >= 2, -(-(lengths - 1) // max_len), 0)
    user = np.repeat(np.arange(len(lengths)), n_win)
    # window j (0 = newest) of a user ends right after position end - j * max_len
    j = np.arange(n_win.sum()) - np.repeat(np.cumsum(n_win) - n_win, n_win)
    end = history.indptr[user + 1] - j * max_len  # exclusive
    pos = end[:, None] + np.arange(-(max_len + 1), 0)[None, :]
    valid = pos >= history.indptr[user][:, None]
    return np.where(valid, history.items[np.where(valid, pos, 0)].astype(np.int64) + 1, 0)


def _build_model(n_items: int, dim: int, blocks: int, heads: int, max_len: int, dropout: float,
                 text: np.ndarray | None, text_mode: str):
    # imported here, not via _torch(): a base class must be a static name for type checking
    import torch
    from torch import nn

    class SASRecNet(nn.Module):
        """Item table (ids and/or text) + position embeddings + causal transformer blocks."""

        # buffers (register_buffer), declared so they type as tensors, not as submodules
        causal: torch.Tensor
        text: torch.Tensor

        def __init__(self):
            super().__init__()
            self.id_embedding = nn.Embedding(n_items + 1, dim, padding_idx=0)
            self.positions = nn.Embedding(max_len, dim)
            layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=dim, dropout=dropout,
                                               activation="gelu", batch_first=True,
                                               norm_first=True)
            self.encoder = nn.TransformerEncoder(layer, blocks, enable_nested_tensor=False)
            self.final_norm = nn.LayerNorm(dim)
            self.dropout = nn.Dropout(dropout)
            self.text_mode = text_mode
            if text_mode == "fuse":
                if text is None:
                    raise ConfigError("sasrec: text_mode 'fuse' needs the item text vectors")
                padded = np.zeros((n_items + 1, text.shape[1]), np.float32)
                padded[1:] = text
                self.register_buffer("text", torch.from_numpy(padded))
                self.text_adapter = nn.Linear(text.shape[1], dim)
            mask = torch.triu(torch.ones(max_len, max_len, dtype=torch.bool), diagonal=1)
            self.register_buffer("causal", mask, persistent=False)

        def items(self):
            """float32[n_items + 1, dim] representation of every item (row 0 = padding)."""
            table = self.id_embedding.weight
            if self.text_mode == "fuse":
                table = table + self.text_adapter(self.text)
            return table

        def forward(self, seq, table=None):
            """seq int64[b, L] (0 = pad) -> hidden states float32[b, L, dim]; ``table`` is
            :meth:`items` when already computed (inference reuses it between calls)."""
            table = self.items() if table is None else table
            length = seq.shape[1]
            x = table[seq] * math.sqrt(dim) + self.positions.weight[-length:]
            keep = (seq > 0).unsqueeze(-1)
            # padded positions are zeroed rather than masked, as in the original SASRec: a
            # fully-masked attention row would give NaN
            x = self.dropout(x) * keep
            x = self.encoder(x, mask=self.causal[:length, :length], is_causal=True)
            return self.final_norm(x) * keep

    return SASRecNet()


@register
class SASRec(Channel, AddsItems, CachesUsers):
    """Next-item transformer recalling all items for the user's recent sequence.

    Args:
        text_init: "none" (ids only), "init" (ids initialised from text) or "fuse" (ids +
            adapted frozen text).
        embedder: text embedding model (see :mod:`llmrecall.channels.text_features`).
        dim, blocks, heads, max_len, dropout: network shape.
        epochs, batch_size, lr, weight_decay: training (AdamW).
        full_softmax_limit / negatives: sampled softmax with this many shared negatives
            when the catalog is larger than the limit.
        patience: 0 trains exactly ``epochs``; above 0, ``epochs`` is the most, and training
            stops after ``patience`` epochs without a better ``monitor`` on the newest
            transition of ``holdout_users`` users (taken out of the loss), keeping the best
            epoch's weights. ``stopping_`` then holds the per-epoch metric.
        monitor: "ndcg@K" or "recall@K" of the held-out items (full catalog ranked, the
            user's other items excluded).
        seed, threads: reproducibility and torch threads (at most 2 are used; 1 is fastest
            on a shared machine, where OpenMP spin-waiting makes 2 threads slower).

    ``user_cache`` (set by the service, None offline) keeps each user's sequence vector
    (the last hidden state, float32[dim]) while the history version and the model are
    unchanged (:mod:`llmrecall.channels.user_cache`).
    """

    in_process = True  # see Channel.in_process
    stopping_: HeldOutNext | None  # set by fit (a fitted attribute: not before)

    kind: ClassVar[str] = "sasrec"
    evidence_template: ClassVar[str] = ("predicted from your recent sequence, in which it "
                                        "attends most to {evidence}")

    def explain(self, evidence_label: str | None) -> str:
        if evidence_label:
            return self.evidence_template.format(evidence=evidence_label)
        return "predicted from your recent sequence"

    def __init__(self, text_init: str = "fuse", embedder: str = DEFAULT_EMBEDDER, dim: int = 64,
                 blocks: int = 2, heads: int = 1, max_len: int = 50, dropout: float = 0.2,
                 epochs: int = 30, batch_size: int = 128, lr: float = 2e-3,
                 weight_decay: float = 0.0, full_softmax_limit: int = 50_000,
                 negatives: int = 1024, patience: int = 0, holdout_users: int = 1000,
                 monitor: str = "ndcg@10", seed: int = 0, threads: int = 1,
                 name: str | None = None):
        super().__init__(name)
        if text_init not in TEXT_MODES:
            raise ConfigError(f"sasrec: text_init must be one of {list(TEXT_MODES)}, got {text_init!r}")
        if dim % heads:
            raise ConfigError(f"sasrec: dim {dim} is not divisible by heads {heads}")
        if min(dim, blocks, heads, max_len, epochs, batch_size) < 1:
            raise ConfigError("sasrec: dim, blocks, heads, max_len, epochs, batch_size must be >= 1")
        if patience < 0 or holdout_users < 1:
            raise ConfigError(f"sasrec: patience must be >= 0 and holdout_users >= 1, got "
                              f"{patience} and {holdout_users}")
        parse_monitor(monitor)
        self.text_init, self.embedder, self.dim, self.blocks = text_init, embedder, dim, blocks
        self.heads, self.max_len, self.dropout, self.epochs = heads, max_len, dropout, epochs
        self.batch_size, self.lr, self.weight_decay = batch_size, lr, weight_decay
        self.full_softmax_limit, self.negatives = full_softmax_limit, negatives
        self.patience, self.holdout_users, self.monitor = patience, holdout_users, monitor
        self.seed, self.threads = seed, threads
        # add_items swaps (model_, n_items_, popularity_) together under this lock
        self._lock = threading.Lock()
        self._table_cache: tuple[Any, Any] | None = None  # (model, its item table), see _item_table

    def __getstate__(self) -> dict[str, Any]:
        # pickled to a task (the sharded log's recall tasks): the lock and the derived item
        # table stay behind and are made anew
        state = self.__dict__.copy()
        state.pop("_lock", None)
        state["_table_cache"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    # ---- training --------------------------------------------------------------------
    def fit(self, dataset: Dataset, train: Callable[..., Any] | None = None) -> SASRec:
        """Train on ``dataset``'s histories. ``train(channel, model, windows, n_items)``,
        when given, trains the initialised ``model`` elsewhere and returns the trained
        network (the Ray engine's data-parallel training, which runs
        :meth:`train_epochs` on each worker); None trains here."""
        histories = dataset.histories()
        windows = training_windows(histories, self.max_len)
        return self.fit_windows(dataset, windows, train=train, lengths=histories.lengths())

    def fit_windows(self, catalog: Dataset, windows: Any, popularity_counts: np.ndarray | None = None,
                    train: Callable[..., Any] | None = None,
                    lengths: np.ndarray | None = None,
                    stopping: HeldOutNext | None = None) -> SASRec:
        """Train on given ``windows`` (:func:`training_windows` rows of every training user):
        :meth:`fit` without the histories. ``catalog``: the items and their texts (its
        interactions are read only when ``popularity_counts`` is None); ``windows``: an
        int64[w, max_len + 1] array, or, with a ``train`` hook that can read it, any object
        with ``load()`` giving one and ``__len__`` (the sharded log's window files, read by
        the training workers, not here); ``popularity_counts`` float[n_items]: the training
        interactions per item (the fallback ranking; default counted from ``catalog``);
        ``lengths`` int[n_users]: each training user's history length, which early stopping
        (``patience`` > 0) needs to hold users' newest transitions out; or ``stopping``, the
        hold-out already taken out of ``windows`` (the sharded log's shards each take
        theirs, :meth:`HeldOutNext.concat`)."""
        torch = _torch()
        torch.set_num_threads(min(self.threads, 2))
        torch.manual_seed(self.seed)
        rng = np.random.default_rng(self.seed)
        n_items = catalog.n_items
        model = self.initial_model(catalog)
        if len(windows) == 0:
            raise DataError("sasrec: no user has two or more interactions to learn from")
        self.stopping_ = None
        if self.patience and stopping is not None:
            self.stopping_ = stopping
        elif self.patience:
            if lengths is None or not isinstance(windows, np.ndarray):
                raise ConfigError("sasrec: patience needs every user's windows and history "
                                  "length in this process")
            # its own random stream: the training order and negatives are those of a fit
            # without early stopping
            self.stopping_ = HeldOutNext.take(
                windows, lengths, self.max_len, self.holdout_users,
                np.random.default_rng([self.seed, 1]), self.monitor, self.patience)
        if train is None:
            rows = windows if isinstance(windows, np.ndarray) else windows.load()
            with progress.task(f"fit {self.name}", self.epochs, "epoch") as bar:
                self.train_epochs(model, rows, n_items, rng,
                                  on_epoch=lambda done, optimizer: bar.advance())
        else:
            model = train(self, model, windows, n_items)
        self.install(model, catalog, popularity_counts)
        return self

    def initial_model(self, dataset: Dataset):
        """The untrained network for ``dataset``'s catalog, its item ids initialised as
        ``text_init`` says (draws from torch's generator: seed it first)."""
        torch = _torch()
        text = item_text_vectors(dataset, self.embedder) if self.text_init != "none" else None
        model = _build_model(dataset.n_items, self.dim, self.blocks, self.heads, self.max_len,
                             self.dropout, text, self.text_init)
        with torch.no_grad():
            if self.text_init == "init":
                assert text is not None  # computed above whenever text_init != "none"
                model.id_embedding.weight[1:] = torch.from_numpy(_pca_init(text, self.dim))
            elif self.text_init == "fuse":
                model.id_embedding.weight.zero_()
            else:
                # the same scale as the text initialisation, so the ablation differs only in
                # where the starting vectors come from (torch's N(0, 1) default is 8x larger
                # and trains markedly worse)
                model.id_embedding.weight[1:].normal_(0.0, self.dim ** -0.5)
        return model

    def install(self, model, dataset: Dataset, popularity_counts: np.ndarray | None = None) -> None:
        """Serve ``model`` (put in eval mode) for ``dataset``'s catalog, the training
        popularity (``popularity_counts``, default counted from ``dataset``) as the
        fallback of users without a usable history."""
        model.eval()
        self.model_ = model
        self.n_items_ = dataset.n_items
        self.popularity_ = (popularity(dataset) if popularity_counts is None
                            else np.asarray(popularity_counts, np.float32))
        self._n_base = dataset.n_items

    def optimizer(self, model):
        """The AdamW optimizer :meth:`train_epochs` steps ``model``'s parameters with."""
        torch = _torch()
        return torch.optim.AdamW(model.parameters(), lr=self.lr, weight_decay=self.weight_decay)

    def train_epochs(self, model, windows: np.ndarray, n_items: int, rng: np.random.Generator,
                     rank: int = 0, world: int = 1,
                     on_epoch: Callable[[int, Any], None] | None = None,
                     optimizer: Any = None, start_epoch: int = 0,
                     rows_per_worker: int | None = None) -> None:
        """Epochs ``start_epoch + 1`` to ``epochs`` of AdamW on ``model`` (in place) over
        ``windows`` (int64[w, max_len + 1], :func:`training_windows`), batches in ``rng``'s
        order; ``on_epoch(epochs_done, optimizer)`` after each.

        Resuming (``start_epoch`` > 0): ``model``'s weights, ``optimizer``'s state (default
        a new :meth:`optimizer`), ``rng``'s state and torch's generator state must be those
        of the run after ``start_epoch`` epochs (the checkpoint of
        :mod:`llmrecall.channels.train_state`, written from ``on_epoch``); the epochs run
        then are the uninterrupted run's, bit for bit.

        Data-parallel (``world`` > 1 workers, ``model`` wrapped in DistributedDataParallel,
        every worker seeded alike so all draw the same order and negatives; DDP averages
        the gradients), in one of two ways:

        * every worker holds all the windows (``rows_per_worker`` None): worker ``rank``
          takes rows ``rank::world`` of each batch, so the workers' rows together are the
          one-process batch and there are as many optimizer steps. A last batch with fewer
          rows than workers is taken whole by each (equal gradients: their average is the
          batch's).
        * each worker holds its slice of them (``windows`` its 1 to ``rows_per_worker``
          rows, the largest slice's size): every epoch the workers draw one permutation of
          ``rows_per_worker`` positions (a position past a shorter slice wraps to its
          start) and each takes its slice's rows at the next ``ceil(batch_size / world)``
          positions. The workers' rows together are a batch of about ``batch_size`` and
          the epoch has about as many steps as one process's; with ``world`` 1 it is the
          one-process loop exactly.

        With early stopping (``stopping_``), every worker scores the same replica of the
        network after each epoch, so all stop at the same epoch; the best epoch's weights
        are put back before returning."""
        torch = _torch()
        optimizer = self.optimizer(model) if optimizer is None else optimizer
        sampled = n_items > self.full_softmax_limit
        net = getattr(model, "module", model)  # DDP wraps the network in .module
        sliced = rows_per_worker is not None
        positions = len(windows) if rows_per_worker is None else int(rows_per_worker)
        if sliced and not 0 < len(windows) <= positions:
            raise ValueError(f"a worker's slice of {len(windows)} windows is not 1 to "
                             f"rows_per_worker={rows_per_worker}")
        batch_size = -(-self.batch_size // world) if sliced else self.batch_size
        model.train()
        for epoch in range(start_epoch, self.epochs):
            if self.stopping_ is not None and self.stopping_.done:
                break  # a run resumed from the checkpoint of the epoch that stopped it
            order = rng.permutation(positions)
            for start in range(0, positions, batch_size):
                rows = order[start:start + batch_size]
                if sliced:
                    rows = rows % len(windows)
                elif len(rows) >= world:
                    rows = rows[rank::world]
                batch = torch.from_numpy(windows[rows])
                loss = self._loss(model, batch, n_items, sampled, rng)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            # scored before on_epoch, so a checkpoint written there holds this epoch's score
            stop = self.stopping_ is not None and self.stopping_.update(net)
            if on_epoch is not None:
                on_epoch(epoch + 1, optimizer)
            if stop:
                break
        if self.stopping_ is not None:
            self.stopping_.restore(net)

    def _loss(self, model, batch, n_items: int, sampled: bool, rng: np.random.Generator):
        """Next-item cross-entropy over every non-padded position of ``batch``
        (int64[b, max_len + 1], ids + 1)."""
        torch = _torch()
        inputs, targets = batch[:, :-1], batch[:, 1:]
        hidden = model(inputs)
        keep = (inputs > 0) & (targets > 0)
        hidden, targets = hidden[keep], targets[keep]
        table = getattr(model, "module", model).items()  # DDP wraps the network in .module
        if not sampled:
            logits = hidden @ table[1:].T  # [t, n_items]
            return torch.nn.functional.cross_entropy(logits, targets - 1)
        negatives = torch.from_numpy(rng.integers(1, n_items + 1, self.negatives))
        positive = (hidden * table[targets]).sum(-1, keepdim=True)
        negative = hidden @ table[negatives].T
        # a sampled negative equal to the target is not a negative
        negative = negative.masked_fill(negatives[None, :] == targets[:, None], -1e9)
        logits = torch.cat([positive, negative], dim=1)
        return torch.nn.functional.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long))

    # ---- recall ----------------------------------------------------------------------
    def score(self, users: np.ndarray, history: Histories) -> np.ndarray:
        """float32[n, history.n_items]: next-item logits for each user's last ``max_len``
        items (items the channel does not know are skipped and never scored); a user with no
        usable history gets the training popularity counts instead."""
        return self.scored(users, history)[0]

    def scored(self, users: np.ndarray, history: Histories) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`score`, and bool[n] the users given the popularity counts."""
        torch = _torch()
        torch.set_num_threads(min(self.threads, 2))
        with self._lock:  # one consistent group, even while add_items grows it
            model, known, popularity_ = self.model_, self.n_items_, self.popularity_
        width = check_width(history, self._n_base, self.name)
        n_items = min(known, width)  # items added while this request runs: next time
        items, _ = history.recent(users, self.max_len)
        items = np.where(items < n_items, items, -1)
        with torch.no_grad():
            table = self._item_table(model)

            def represent(pos: np.ndarray) -> tuple[np.ndarray]:
                seq = np.where(items[pos] >= 0, items[pos].astype(np.int64) + 1, 0)
                return (model(torch.from_numpy(seq), table)[:, -1].numpy(),)

            # the model (replaced as a whole by add_items, with n_items) is what the
            # sequence vector depends on besides the history
            (hidden,) = cached_user_states(self.user_cache, users, history, model, represent)
            # row by row: a user's logits must not depend on the batch (llmrecall.scoring)
            logits = dot_rows(hidden, table[1:n_items + 1].numpy())
        scores = np.full((len(users), width), -np.inf, np.float32)
        scores[:, :n_items] = logits
        empty = np.asarray((items < 0).all(axis=1), bool)
        scores[empty, :n_items] = popularity_[:n_items]
        return scores, empty

    def _item_table(self, model):
        """float32[n_items + 1, dim] ``model.items()`` of a fitted (eval-mode) model, computed
        once per model object. With ``fuse`` it is an [n_items, text dim] x [text dim, dim]
        product: most of a single user's recall time if redone on every call. ``fit``,
        ``load_state`` and ``add_items`` install new model objects, which invalidates it."""
        cached = self._table_cache
        if cached is None or cached[0] is not model:
            with _torch().no_grad():
                cached = self._table_cache = (model, model.items().detach())
        return cached[1]

    def add_items(self, ids: np.ndarray, texts: list[str]) -> None:
        """Score items created or edited after fit from their text (``text_init="fuse"``).

        Args:
            ids: int[n] distinct dense item ids; ids past the end grow the model's item
                table (rows of ids not given get a zero text and id: a neutral score).
            texts: one ``Catalog.texts``-form text per id, embedded as ``fit`` did.

        A new item gets id part 0 + ``W·text`` (what an item without interactions has after
        training); an updated item keeps its learned id part and gets the new text. The
        grown model is built aside and swapped in, so running recalls are not disturbed.
        With ``text_init`` "none" or "init" nothing changes (see the module docstring).
        """
        self._check_fitted()
        ids = check_added(ids, texts, self.name)
        if not len(ids) or self.text_init != "fuse":
            return
        torch = _torch()
        vectors = text_vectors(added_texts(ids, texts), self.embedder)
        with self._lock:
            old = self.model_.state_dict()
            n_items = max(self.n_items_, int(ids.max()) + 1)
            text = grown(old["text"][1:].numpy(), ids, vectors)
            id_table = grown(old["id_embedding.weight"][1:].numpy(),
                             ids[ids >= self.n_items_], 0.0)
            tensors = dict(old)
            tensors["text"] = torch.from_numpy(np.concatenate([np.zeros((1, text.shape[1]),
                                                                        np.float32), text]))
            tensors["id_embedding.weight"] = torch.from_numpy(np.concatenate(
                [old["id_embedding.weight"][:1].numpy(), id_table]))
            model = _build_model(n_items, self.dim, self.blocks, self.heads, self.max_len,
                                 self.dropout, text, self.text_init)
            model.load_state_dict(tensors)
            model.eval()
            popularity_ = grown(self.popularity_, ids[ids >= len(self.popularity_)], 0.0)
            self.model_, self.n_items_, self.popularity_ = model, n_items, popularity_

    def evidence(self, users: np.ndarray, ids: np.ndarray, history: Histories) -> np.ndarray:
        """int32[n, k]: the history item the sequence vector attends to most
        (:meth:`attention`), the same for every candidate of a user: the network scores
        every candidate from one vector, so no history item is more the reason for one
        candidate than for another. -1 for a user without usable history."""
        items, weights = self.attention(users, history)
        best = np.take_along_axis(items, np.argmax(weights, axis=1)[:, None], axis=1)
        has = np.asarray((weights > 0).any(axis=1))[:, None]
        return np.where((ids >= 0) & has, best, -1).astype(np.int32)

    def attention(self, users: np.ndarray, history: Histories) -> tuple[np.ndarray, np.ndarray]:
        """What the last position of the last block attends to.

        Returns ``items int32[n, max_len]`` (the recent sequence :meth:`score` reads,
        right-aligned, -1 padded) and ``weights float32[n, max_len]``: the last block's
        self-attention weights at the final position, averaged over heads, 0 at padding
        (padded positions are zero vectors the network may still attend to; they are not
        history). Computed with the layers of the fitted model in eval mode, as recall runs
        it.
        """
        torch = _torch()
        with self._lock:
            model, known = self.model_, self.n_items_
        n_items = min(known, history.n_items)
        items, _ = history.recent(users, self.max_len)
        items = np.where(items < n_items, items, -1).astype(np.int32)
        seq = torch.from_numpy(np.where(items >= 0, items.astype(np.int64) + 1, 0))
        length = seq.shape[1]
        causal = model.causal[:length, :length]
        with torch.no_grad():
            table = self._item_table(model)
            x = table[seq] * math.sqrt(self.dim) + model.positions.weight[-length:]
            x = x * (seq > 0).unsqueeze(-1)  # as forward(): dropout is off in eval mode
            layers = list(model.encoder.layers)
            for layer in layers[:-1]:
                x = layer(x, src_mask=causal, is_causal=True)
            last = layers[-1]
            h = last.norm1(x)  # norm_first: attention reads the normalised input
            _, attn = last.self_attn(h, h, h, attn_mask=causal, need_weights=True,
                                     average_attn_weights=True)
        weights = attn[:, -1, :].numpy().astype(np.float32)
        return items, np.where(items >= 0, weights, 0.0).astype(np.float32)

    # ---- persistence: state.npz for arrays, model.safetensors for the network ---------
    def state(self) -> dict[str, np.ndarray]:
        return {"popularity_": self.popularity_}

    def save_state(self, directory: Path) -> None:
        from safetensors.torch import save_file

        super().save_state(directory)  # state.npz: the numpy arrays (popularity_)
        tensors = {k: v.detach().contiguous() for k, v in self.model_.state_dict().items()}
        save_file(tensors, str(directory / "model.safetensors"),
                  metadata={"n_items": str(self.n_items_)})

    def load_state(self, directory: Path) -> None:
        from safetensors import safe_open

        super().load_state(directory)
        path = directory / "model.safetensors"
        if not path.is_file():
            raise DataError("sasrec model file missing", path=str(path))
        with safe_open(str(path), framework="pt") as f:
            n_items = int(f.metadata()["n_items"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        text = tensors["text"][1:].numpy() if "text" in tensors else None
        model = _build_model(n_items, self.dim, self.blocks, self.heads, self.max_len,
                             self.dropout, text, self.text_init)
        model.load_state_dict(tensors)
        model.eval()
        self.model_, self.n_items_ = model, n_items
        self._n_base = n_items


def _pca_init(text: np.ndarray, dim: int) -> np.ndarray:
    """float32[n, dim]: text vectors projected on their top ``dim`` principal directions,
    scaled to the spread of a standard id-embedding initialisation (std ~ dim**-0.5 per row
    norm 1) so the transformer starts in its usual regime."""
    centred = text - text.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    reduced = centred @ vt[:dim].T
    if reduced.shape[1] < dim:  # fewer text dimensions than model dimensions
        reduced = np.pad(reduced, ((0, 0), (0, dim - reduced.shape[1])))
    reduced /= max(float(reduced.std()), 1e-12)
    return (reduced * dim ** -0.5).astype(np.float32)
