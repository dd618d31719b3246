"""Collaboratively trained mapping of frozen text embeddings (kind ``textcf``, AlphaRec-style).

A small MLP maps every item's frozen text embedding into a collaborative space; a user starts
as the MLP image of the mean text embedding of their history (``user_init="text"``) or as the
mean of their history items' MLP images (``"items"``, cheaper when users outnumber items), the
mean optionally recency-weighted (``recency_decay``); LightGCN-style propagation (``layers``
rounds over the symmetric-normalised train user-item graph, layer outputs averaged) mixes the
two; training pulls each (user, item) pair together against the other items of the batch
(InfoNCE on cosine similarity, temperature ``tau``). With ``propagate_items=False`` the item
side stays the MLP image of its text, in training as in scoring, which is exactly what a new
item (no edges in the graph) gets, so the training objective is the cold-item one.

Cost: every optimiser step propagates over the whole graph, so a step costs O(nnz + nodes)
whatever the batch; ``max_steps`` bounds the total number of steps (and so the fit time) on
large data. Large batches (AlphaRec uses 4096) cover an epoch in fewer steps, but the
in-batch logits cost batch² per step: on ml-100k, 400 steps at 4096 took ~5× the time of 400
steps at 2048 on CPU.
The Ray engine trains it data-parallel (``fit``'s ``train`` hook: every worker runs
:meth:`TextCF.train_steps` on its anchors of each batch, over the whole graph; see
docs/scale-out.md).

At recall time the user's representation is recomputed from the history passed in (fresh
events count, new users work) using the fitted item layers; items are scored by cosine.
Because item vectors come from text, an item with no interactions at all is still scored.

In-batch negatives teach the model how much more a user likes an item than its popularity
predicts; ``popularity_prior`` adds the items' log-popularity back to the logits (observed
for items with training events, predicted from the text for items without: new items,
:mod:`llmrecall.channels.popularity_prior`). On new items that is the signal the cosine
alone lacks: which of them will be popular at all.

Items created at run time (the service's ``add_items`` hook) are mapped the same way: their
text embedding through the fitted MLP. They have no edges in the training graph, so there is
nothing to propagate; every layer slot of such an item holds its MLP image (see
:meth:`TextCF.add_items` for why), which makes its item vector the unit MLP image.
"""

from __future__ import annotations

import functools
import math
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, cast

import numpy as np
import scipy.sparse as sp

from llmrecall import progress
from llmrecall.channels.base import Channel
from llmrecall.channels.capabilities import AddsItems, CachesUsers
from llmrecall.channels.popularity_prior import TextPopularityPrior
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
    unit_rows,
)
from llmrecall.channels.user_cache import cached_user_states
from llmrecall.data.dataset import Dataset, Histories
from llmrecall.errors import ConfigError, DataError
from llmrecall.scoring import dot_rows

#: how a user's layer-0 vector is formed (see :class:`TextCF`)
USER_INITS = ("text", "items")
#: the learning rate over the optimiser steps (see :meth:`TextCF.lr_at`)
LR_SCHEDULES = ("constant", "cosine")


def _torch():
    import torch

    return torch


def _mlp(in_dim: int, hidden: int, out_dim: int):
    nn = _torch().nn
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.LeakyReLU(), nn.Linear(hidden, out_dim))


def _mlp_rows(mlp, x: np.ndarray) -> np.ndarray:
    """float32[n, out_dim] ``mlp(x)`` of a fitted :func:`_mlp`, each row on its own.

    A user's vector must not depend on the users it is computed with: torch's Linear takes a
    matrix-vector kernel for one row and a matrix-matrix kernel for several, which round
    differently (textcf's batch == single contract failed on AVX-512). Each layer here is
    :func:`llmrecall.scoring.dot_rows` plus the bias, then LeakyReLU as torch defines it.
    """
    first, act, second = mlp
    h = dot_rows(x, first.weight.detach().numpy()) + first.bias.detach().numpy()
    h = np.where(h > 0, h, np.float32(act.negative_slope) * h)
    return dot_rows(h, second.weight.detach().numpy()) + second.bias.detach().numpy()


def _normalised(user_items: sp.csr_matrix) -> sp.csr_matrix:
    """float32 CSR ``D_u^-1/2 R D_i^-1/2`` of the [n_users, n_items] interaction matrix."""
    deg_u = np.asarray(user_items.sum(axis=1)).ravel()
    deg_i = np.asarray(user_items.sum(axis=0)).ravel()
    du = np.where(deg_u > 0, deg_u, 1.0) ** -0.5
    di = np.where(deg_i > 0, deg_i, 1.0) ** -0.5
    norm = sp.diags(du.astype(np.float32)) @ user_items @ sp.diags(di.astype(np.float32))
    return norm.tocsr().astype(np.float32)


def _bipartite(user_side: sp.csr_matrix) -> sp.csr_matrix:
    """float32 CSR [n_users + n_items]^2: the symmetric normalised adjacency
    ``[[0, R̂], [R̂ᵀ, 0]]`` with ``R̂ = D_u^-1/2 R D_i^-1/2``."""
    # cast: bmat's stub does not narrow on format; format="csr" over matrices gives csr_matrix
    return cast(sp.csr_matrix, sp.bmat([[None, user_side], [user_side.T, None]], format="csr",
                                       dtype=np.float32))


def _light_propagation(adjacency: sp.csr_matrix, z: np.ndarray, layers: int) -> np.ndarray:
    """LightGCN output ``mean(z, Âz, Â²z, ...)`` for ``layers`` rounds; float32 like ``z``."""
    out, current = z.copy(), z
    for _ in range(layers):
        current = adjacency @ current
        out += current
    return (out / (layers + 1)).astype(np.float32)


@functools.cache
def _sparse_matmul_fn():
    """Autograd ``A @ x`` for a constant scipy CSR ``A`` (backward ``Aᵀ @ grad``)."""
    import torch  # not via _torch(): a base class must be a static name

    class SparseMatmul(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, matrix, transposed):
            ctx.transposed = transposed
            return torch.from_numpy(np.asarray(matrix @ x.detach().numpy(), dtype=np.float32))

        @staticmethod
        def backward(ctx, grad):
            g = ctx.transposed @ grad.contiguous().numpy()
            return torch.from_numpy(np.asarray(g, dtype=np.float32)), None, None

    return SparseMatmul


@functools.cache
def _propagate_fn():
    """Autograd wrapper of :func:`_light_propagation`. Â is symmetric, so the propagation
    operator is too and its backward is the same propagation of the gradient; doing it
    with scipy is much faster than torch's sparse backward on CPU."""
    import torch  # not via _torch(): a base class must be a static name

    class Propagate(torch.autograd.Function):
        @staticmethod
        def forward(ctx, z, adjacency, layers):
            ctx.adjacency, ctx.layers = adjacency, layers
            return torch.from_numpy(_light_propagation(adjacency, z.detach().numpy(), layers))

        @staticmethod
        def backward(ctx, grad):
            g = _light_propagation(ctx.adjacency, grad.contiguous().numpy(), ctx.layers)
            return torch.from_numpy(g), None, None

    return Propagate


@dataclass
class TrainingGraph:
    """What textcf's training steps read (built by :meth:`TextCF.fit` on the driver; the
    Ray engine ships it whole to every worker, since every step propagates over all of it).

    Attributes:
        text: float32[n_items, t] frozen item text embeddings.
        user_text: float32[n_users, t] each user's history-weighted mean text
            (``user_init="text"``), else None.
        mean_rows: float32 CSR [n_users, n_items] the history weights
            (:meth:`TextCF._history_weights`).
        adjacency: float32 CSR [n_users + n_items]^2, the normalised bipartite graph.
        pairs_u, pairs_i: int64[nnz] the training (user, item) pairs, in CSR order.
    """

    text: np.ndarray
    user_text: np.ndarray | None
    mean_rows: sp.csr_matrix
    adjacency: sp.csr_matrix
    pairs_u: np.ndarray
    pairs_i: np.ndarray

    @property
    def n_users(self) -> int:
        return self.mean_rows.shape[0]


def _layer0(mlp, graph: TrainingGraph, user_init: str):
    """A module whose ``forward()`` is layer 0 of every node: ``(z0, items)`` with
    z0 float32[n_users + n_items, dim] (users first) and items float32[n_items, dim] (the
    MLP image of the text). One forward a step, so that DistributedDataParallel can wrap it;
    the graph's arrays are plain attributes, not buffers (DDP would broadcast buffers every
    step)."""
    import torch  # not via _torch(): a base class must be a static name

    matmul = _sparse_matmul_fn()
    text_t = torch.from_numpy(graph.text)
    user_text = None if graph.user_text is None else torch.from_numpy(graph.user_text)
    mean_rows = graph.mean_rows
    mean_rows_t = mean_rows.T.tocsr() if user_init != "text" else None

    class Layer0(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.mlp = mlp

        def forward(self):
            items = self.mlp(text_t)
            users = self.mlp(user_text) if user_init == "text" \
                else matmul.apply(items, mean_rows, mean_rows_t)
            return torch.cat([users, items]), items

    return Layer0()


@register
class TextCF(Channel, AddsItems, CachesUsers):
    """Frozen item text embeddings -> MLP -> light graph propagation, trained with InfoNCE.

    Args:
        embedder: text embedding model.
        dim, hidden: output and hidden width of the MLP.
        layers: propagation rounds (LightGCN layers).
        tau: InfoNCE temperature.
        epochs, batch_size, lr: training (Adam over (user, item) pairs, in-batch negatives).
        lr_schedule: ``"constant"`` keeps ``lr`` for every step; ``"cosine"`` anneals it
            from ``lr`` towards 0 over the fit's steps (:meth:`lr_at`). Where the steps
            cover the data several times it helps (ml-100k's new items: a two- to sixfold
            smaller seed-to-seed spread, better validation recall); where they do not, the
            annealing takes training the model still needs (level on ml-1m, worse on
            amazon-games-6k at 400 steps; docs/lm_channels.md).
        max_steps: at most this many optimiser steps in all (0 = no bound: ``epochs`` full
            passes). Each step propagates over the whole graph (and, with
            ``user_init="text"``, runs the MLP over every user), so this bounds the fit time
            on large data. The default, 400, equals 10 epochs of ml-100k at batch 2048, so
            there it changes nothing; ml-1m's 10 epochs would be ~4,800 steps.
        user_init: a user's layer 0: ``"text"`` = MLP(mean history text), ``"items"`` =
            mean of the history items' MLP vectors (no MLP pass over the users).
        recency_decay, recent: the history mean of layer 0 weights the last ``recent``
            events by ``recency_decay ** age`` (age 0 = newest); 1.0 = the plain mean of the
            whole (de-duplicated) history.
        propagate_items: False keeps items at their MLP text image (no graph mixing on the
            item side), in training and scoring alike.
        popularity_prior: weight of the items' log-popularity added to the logits
            (``cos / tau + popularity_prior * prior``; :mod:`.popularity_prior`). 0 (the
            default) scores by the plain cosine; 1 is the exact correction of the in-batch
            sampling bias; more trusts the text-predicted popularity of new items more.
        prior_embedder: the text embedder whose vectors predict a new item's popularity
            (None: ``embedder``). Embedders differ more here than in the matching itself.
        seed, threads: reproducibility and torch threads (at most 2 are used; 1 is fastest
            on a shared machine, where OpenMP spin-waiting makes 2 threads slower).

    ``user_cache`` (set by the service, None offline) keeps each user's unit vector
    (float32[dim]) while the history version and the item arrays are unchanged
    (:mod:`llmrecall.channels.user_cache`).
    """

    in_process = True  # see Channel.in_process

    kind: ClassVar[str] = "textcf"
    evidence_template: ClassVar[str] = "liked by people who liked {evidence}"

    def __init__(self, embedder: str = DEFAULT_EMBEDDER, dim: int = 64, hidden: int = 256,
                 layers: int = 2, tau: float = 0.15, epochs: int = 10, batch_size: int = 2048,
                 lr: float = 1e-3, lr_schedule: str = "constant", max_steps: int = 400,
                 user_init: str = "text",
                 recency_decay: float = 1.0, recent: int = 50, propagate_items: bool = True,
                 popularity_prior: float = 0.0, prior_embedder: str | None = None,
                 seed: int = 0, threads: int = 1, name: str | None = None):
        super().__init__(name)
        if min(dim, hidden, epochs, batch_size, recent) < 1 or layers < 0 or tau <= 0 \
                or max_steps < 0:
            raise ConfigError("textcf: dim, hidden, epochs, batch_size, recent must be >= 1, "
                              "layers >= 0, max_steps >= 0, tau > 0")
        if user_init not in USER_INITS:
            raise ConfigError(f"textcf: user_init must be one of {list(USER_INITS)}, "
                              f"got {user_init!r}")
        if lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"textcf: lr_schedule must be one of {list(LR_SCHEDULES)}, "
                              f"got {lr_schedule!r}")
        if not 0 < recency_decay <= 1:
            raise ConfigError(f"textcf: recency_decay must be in (0, 1], got {recency_decay}")
        if not popularity_prior >= 0:  # also refuses NaN
            raise ConfigError(f"textcf: popularity_prior must be >= 0, got {popularity_prior}")
        self.embedder, self.dim, self.hidden, self.layers, self.tau = embedder, dim, hidden, layers, tau
        self.epochs, self.batch_size, self.lr, self.max_steps = epochs, batch_size, lr, max_steps
        self.lr_schedule = lr_schedule
        self.user_init, self.recency_decay, self.recent = user_init, recency_decay, recent
        self.propagate_items = propagate_items
        self.popularity_prior, self.prior_embedder = popularity_prior, prior_embedder
        self.seed, self.threads = seed, threads
        # add_items swaps the item arrays as one group under this lock; readers take the
        # group with _arrays(), so one recall never mixes old and grown arrays
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        # pickled to a task (the sharded log's recall tasks): the lock stays behind and is
        # made anew
        state = self.__dict__.copy()
        state.pop("_lock", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def fit(self, dataset: Dataset, train: Callable[..., Any] | None = None) -> TextCF:
        """Train on ``dataset``'s interactions. ``train(channel, mlp, graph)``, when given,
        trains the initialised ``mlp`` elsewhere on ``graph`` (:class:`TrainingGraph`) and
        returns the trained network (the Ray engine's data-parallel training, which runs
        :meth:`train_steps` on each worker); None trains here."""
        text = item_text_vectors(dataset, self.embedder)
        history = dataset.histories()
        user_items = history.matrix()
        mlp, item_side = self.fit_matrices(text, user_items,
                                           self.history_weights(history, user_items), train)
        self.install(text, mlp, item_side, popularity(dataset))
        if self.popularity_prior:  # the catalog embedded again only for another embedder
            self.install_prior(text if self.prior_text_embedder == self.embedder
                               else item_text_vectors(dataset, self.prior_text_embedder))
        return self

    @property
    def prior_text_embedder(self) -> str:
        """The embedder of the popularity prior's text vectors."""
        return self.prior_embedder or self.embedder

    def install_prior(self, prior_text: np.ndarray) -> None:
        """Fit the popularity prior on ``prior_text`` float32[n_items, d] (the items' vectors
        from :attr:`prior_text_embedder`) and the training counts :meth:`install` kept
        (``popularity_``; so call it after :meth:`install`); keeps ``item_prior_``
        float32[n_items] and the regression (``prior_coef_``, ``prior_intercept_``) that
        :meth:`add_items` predicts with."""
        counts = self.popularity_
        prior = TextPopularityPrior().fit(prior_text, counts)
        with self._lock:
            self.prior_coef_, self.prior_intercept_ = prior.coef_, prior.intercept_
            self.item_prior_ = prior.item_prior(prior_text, counts)

    def history_weights(self, history: Histories, user_items: sp.csr_matrix) -> sp.csr_matrix:
        """float32 CSR [n_users, n_items]: every user's history weights
        (:meth:`_history_weights`), ``user_items`` the binary ``history.matrix()``. A
        user's row reads that user's history alone, so the rows of a shard of users are
        those users' rows of the whole."""
        return self._history_weights(history, np.arange(history.n_users),
                                     user_items.shape[1], user_items)

    def fit_matrices(self, text: np.ndarray, user_items: sp.csr_matrix,
                     mean_rows: sp.csr_matrix, train: Callable[..., Any] | None = None,
                     ) -> tuple[Any, dict[str, np.ndarray]]:
        """Train on the training matrices alone (what :meth:`fit` does after reading the
        dataset; the sharded log's reducer calls it with the matrices it gathered) and
        return the trained MLP (eval mode) and the item side recall reads.

        Args:
            text: float32[n_items, t] the items' frozen text embeddings.
            user_items: float32 CSR [n_users, n_items] the binary training matrix.
            mean_rows: float32 CSR [n_users, n_items] the users' history weights
                (:meth:`history_weights`).
            train: see :meth:`fit`.

        Returns ``(mlp, {"item_layers": float32[layers + 1, n_items, dim], "item_vectors":
        float32[n_items, dim] unit rows, "item_degree": float32[n_items] training users per
        item})``. Equal matrices (as sets of entries: the order of the columns within a row
        does not matter) give equal results (the torch and numpy generators are seeded here
        from ``seed``)."""
        graph = self.training_graph(text, user_items, mean_rows)
        mlp = self.fit_graph(graph, train)
        return mlp, self.item_side(mlp, graph)

    def fit_graph(self, graph: TrainingGraph, train: Callable[..., Any] | None = None):
        """The MLP trained on ``graph`` (:meth:`training_graph`): :meth:`initial_mlp` trained
        here by :meth:`train_steps`, or by ``train`` (see :meth:`fit`)."""
        _torch().set_num_threads(min(self.threads, 2))
        mlp = self.initial_mlp(graph.text.shape[1])
        if train is not None:
            return train(self, mlp, graph)
        rng = np.random.default_rng(self.seed)
        with progress.task(f"fit {self.name}", self.total_steps(graph), "step") as bar:
            self.train_steps(_layer0(mlp, graph, self.user_init), graph, rng,
                             on_step=lambda *_: bar.advance())
        return mlp

    def initial_mlp(self, text_dim: int):
        """The untrained MLP for ``text_dim``-d text vectors, drawn from torch's generator
        seeded from ``seed`` here (the same network wherever it is made)."""
        _torch().manual_seed(self.seed)
        return _mlp(text_dim, self.hidden, self.dim)

    def training_graph(self, text: np.ndarray, user_items: sp.csr_matrix,
                       mean_rows: sp.csr_matrix) -> TrainingGraph:
        """The :class:`TrainingGraph` of :meth:`fit_matrices`' arguments (the same for
        equal entries in any column order within a row)."""
        coo = user_items.tocoo()
        if coo.nnz == 0:
            raise DataError("textcf: the training data has no interactions")
        adjacency = _bipartite(_normalised(user_items))
        # canonical column order: a sparse product's rows come out in whatever order it
        # made them, and the float sums of mean_rows @ text follow it; sorted, equal
        # weights give equal sums however they were computed (here or gathered from shards)
        mean_rows = mean_rows.sorted_indices()
        # the same history weights recall uses (user_vectors), so training and recall agree
        user_text = np.asarray(mean_rows @ text, dtype=np.float32) \
            if self.user_init == "text" else None
        return TrainingGraph(text, user_text, mean_rows, adjacency,
                             coo.row.astype(np.int64), coo.col.astype(np.int64))

    def item_side(self, mlp, graph: TrainingGraph) -> dict[str, np.ndarray]:
        """What recall reads of the item side after training ``mlp`` on ``graph`` (see
        :meth:`fit_matrices`); puts ``mlp`` in eval mode."""
        torch = _torch()
        n_users, adjacency = graph.n_users, graph.adjacency
        layer0 = _layer0(mlp, graph, self.user_init)
        mlp.eval()
        with torch.no_grad():
            z0 = layer0()[0].numpy()
        # item layers kept so that recall can redo the user update for any history
        layer_list, current = [z0[n_users:]], z0
        for _ in range(self.layers):
            current = adjacency @ current
            layer_list.append(current[n_users:])
        item_final = _light_propagation(adjacency, z0, self.layers)[n_users:] \
            if self.propagate_items else z0[n_users:]
        # a pair per (user, item) of the binary matrix: its column sums
        degree = np.bincount(graph.pairs_i, minlength=len(graph.text))
        return {"item_layers": np.stack(layer_list).astype(np.float32),
                "item_vectors": unit_rows(item_final),
                "item_degree": degree.astype(np.float32)}

    def install(self, text: np.ndarray, mlp: Any, item_side: Mapping[str, np.ndarray],
                popularity_counts: np.ndarray) -> None:
        """Serve the trained ``mlp`` with ``item_side`` (:meth:`fit_matrices`' arrays) for
        the items whose text embeddings are ``text`` (float32[n_items, t]);
        ``popularity_counts`` float[n_items], the training events per item, ranks the
        items for a user with no usable history."""
        self.text_vectors_ = text
        self.item_layers_ = np.asarray(item_side["item_layers"], np.float32)
        self.item_vectors_ = np.asarray(item_side["item_vectors"], np.float32)
        self.item_degree_ = np.asarray(item_side["item_degree"], np.float32)
        self.popularity_ = np.asarray(popularity_counts, np.float32)
        self.mlp_ = mlp.eval()
        self._n_base = len(text)

    def total_steps(self, graph: TrainingGraph) -> int:
        """Optimiser steps of a fit: ``epochs`` passes over the pairs in batches of
        ``batch_size``, at most ``max_steps`` (when > 0)."""
        steps = self.epochs * -(-len(graph.pairs_u) // self.batch_size)
        return min(steps, self.max_steps) if self.max_steps else steps

    def optimizer(self, layer0):
        """The Adam optimizer :meth:`train_steps` steps ``layer0``'s parameters with."""
        return _torch().optim.Adam(layer0.parameters(), lr=self.lr)

    def lr_at(self, step: int, total: int) -> float:
        """The learning rate of step ``step`` (0-based) of ``total``: ``lr`` throughout
        (``"constant"``), or ``lr * (1 + cos(pi * step / total)) / 2`` (``"cosine"``: ``lr``
        at the first step, close to 0 at the last). A function of the step alone, so a run
        resumed from a checkpoint at any step goes on with the rates of the uninterrupted
        run."""
        if self.lr_schedule == "constant":
            return self.lr
        return self.lr * 0.5 * (1.0 + math.cos(math.pi * step / total))

    def train_steps(self, layer0, graph: TrainingGraph, rng: np.random.Generator,
                    rank: int = 0, world: int = 1,
                    on_step: Callable[[int, Any, Mapping[str, Any]], None] | None = None,
                    optimizer: Any = None, start_step: int = 0) -> None:
        """Steps ``start_step + 1`` to :meth:`total_steps` of Adam on ``layer0``
        (:func:`_layer0`, its MLP trained in place), batches of pairs in ``rng``'s order
        (:class:`_BatchOrder`); ``on_step(steps_done, optimizer, rng_state)`` after each,
        ``rng_state`` the numpy generator state a run resuming there starts from.

        Resuming (``start_step`` > 0): the MLP's weights, ``optimizer``'s state (default a
        new :meth:`optimizer`) and ``rng``'s state must be the ones ``on_step`` saw after
        ``start_step`` steps (the checkpoint of :mod:`llmrecall.channels.train_state`);
        the steps run then are the uninterrupted run's, bit for bit (no dropout: torch's
        generator is not read).

        Data-parallel (``world`` > 1 workers, ``layer0`` wrapped in DistributedDataParallel,
        every worker seeded alike so all draw the same batches): worker ``rank`` takes the
        anchors ``rank::world`` of each batch, each against every item of the batch (the
        one-process negatives), so the workers' anchors together are the one-process batch
        and there are as many optimizer steps; DDP averages the workers' mean losses'
        gradients, which is the batch's when the anchors split evenly. A last batch with
        fewer pairs than workers is taken whole by each (equal gradients)."""
        optimizer = self.optimizer(layer0) if optimizer is None else optimizer
        batches = _BatchOrder(rng, len(graph.pairs_u), self.batch_size)
        total = self.total_steps(graph)
        for step in range(start_step, total):
            for group in optimizer.param_groups:
                group["lr"] = self.lr_at(step, total)
            loss = self._loss(layer0, graph, batches.take(step), rank, world)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if on_step is not None:
                on_step(step + 1, optimizer, batches.resume_state(step + 1))

    def _loss(self, layer0, graph: TrainingGraph, take: np.ndarray, rank: int = 0,
              world: int = 1):
        """InfoNCE of the batch ``take`` (int64[b] indices of pairs) over worker ``rank``'s
        anchors (all ``b`` when ``world`` is 1): each anchor user's cosine logits against
        every item of the batch, the anchor's own item the target."""
        torch = _torch()
        z0, items0 = layer0()
        z = _propagate_fn().apply(z0, graph.adjacency, self.layers)
        anchors = np.arange(len(take))
        if len(take) >= world:
            anchors = anchors[rank::world]
        batch_items = graph.pairs_i[take]
        u = torch.nn.functional.normalize(z[graph.pairs_u[take[anchors]]], dim=1)
        item_side = z[graph.n_users:] if self.propagate_items else items0
        i = torch.nn.functional.normalize(item_side[batch_items], dim=1)
        logits = u @ i.T / self.tau
        # the same item twice in a batch is not a negative of itself
        same = torch.from_numpy(batch_items[anchors][:, None] == batch_items[None, :])
        target = torch.from_numpy(anchors)
        same[torch.arange(len(anchors)), target] = False
        logits = logits.masked_fill(same, -1e9)
        return torch.nn.functional.cross_entropy(logits, target)

    def _arrays(self) -> tuple[Any, ...]:
        """One consistent group ``(text_vectors_, item_layers_, item_vectors_, item_degree_,
        popularity_, item_prior_)``, all covering the same items (``item_prior_`` is None
        without a popularity prior)."""
        with self._lock:
            return (self.text_vectors_, self.item_layers_, self.item_vectors_,
                    self.item_degree_, self.popularity_, self._item_prior())

    def _item_prior(self) -> np.ndarray | None:
        """``item_prior_`` when the prior is on and fitted, else None."""
        return getattr(self, "item_prior_", None) if self.popularity_prior else None

    def add_items(self, ids: np.ndarray, texts: list[str]) -> None:
        """Give items created or edited after fit a collaborative vector from their text.

        Args:
            ids: int[n] distinct dense item ids; ids past the end grow every item array
                (rows of ids not given stay zero: never scored above a real item).
            texts: one text per id in the ``Catalog.texts`` form, embedded as passages with
                the channel's embedder, as ``fit`` embedded the catalog.

        An item without training interactions (a new one, or a fitted item with degree 0)
        gets its MLP image in *every* layer slot. LightGCN would give it zero in layers >= 1
        (no neighbours), which changes nothing for its own vector (the mean of the layers
        is normalised, so only the direction counts) but would make it count only in layer 1
        of a user who has it in their history; the MLP image is what training pulled those
        propagated vectors towards, so it is the best stand-in for them. A fitted item with
        interactions keeps its propagated layers (its neighbours have not changed) and gets
        the new text's image in layer 0.

        With a popularity prior, an item without training interactions gets its predicted
        log-popularity (from its text on :attr:`prior_text_embedder`); a fitted item with
        interactions keeps its observed one.
        """
        self._check_fitted()
        ids = check_added(ids, texts, self.name)
        if not len(ids):
            return
        torch = _torch()
        torch.set_num_threads(min(self.threads, 2))
        text = text_vectors(added_texts(ids, texts), self.embedder)
        with torch.no_grad():  # each row alone: an item's image does not depend on the others
            image = _mlp_rows(self.mlp_, text).astype(np.float32)
        predicted = self._predicted_prior(ids, texts, text)
        with self._lock:
            degree = grown(self.item_degree_, ids[ids >= len(self.item_degree_)], 0.0)
            cold = degree[ids] == 0
            old = self.item_layers_
            layers = np.zeros((old.shape[0], len(degree), old.shape[2]), np.float32)
            layers[:, :old.shape[1]] = old
            layers[:, ids[cold]] = image[cold][None]
            layers[0, ids[~cold]] = image[~cold]
            vectors = grown(self.item_vectors_, ids, unit_rows(layers[:, ids].mean(axis=0)))
            self.text_vectors_ = grown(self.text_vectors_, ids, text)
            self.item_layers_, self.item_vectors_, self.item_degree_ = layers, vectors, degree
            self.popularity_ = grown(self.popularity_, ids[ids >= len(self.popularity_)], 0.0)
            if predicted is not None:
                prior = np.full(len(degree), -np.inf, np.float32)  # ids not given: never above
                prior[:len(self.item_prior_)] = self.item_prior_
                prior[ids[cold]] = predicted[cold]
                self.item_prior_ = prior

    def _predicted_prior(self, ids: np.ndarray, texts: list[str],
                         text: np.ndarray) -> np.ndarray | None:
        """float32[len(ids)] the popularity prior's predictions for added items (``text``:
        their vectors on the channel's embedder), or None without a prior."""
        if self._item_prior() is None:
            return None
        vectors = text if self.prior_text_embedder == self.embedder else text_vectors(
            added_texts(ids, texts), self.prior_text_embedder)
        return TextPopularityPrior.from_arrays(self.prior_coef_,
                                               self.prior_intercept_).predict(vectors)

    def _history_weights(self, history: Histories, users: np.ndarray, n_items: int,
                         rows: sp.csr_matrix) -> sp.csr_matrix:
        """float32 CSR [len(users), n_items] whose rows average a user's history (rows sum to
        1; empty history -> empty row): the de-duplicated history with equal weights when
        ``recency_decay == 1``, else the last ``recent`` events weighted by
        ``recency_decay ** age`` (a repeated item sums its weights). Items >= ``n_items``
        (added after fit) are dropped. ``rows`` is the users' binary history matrix already
        cut or padded to ``n_items`` columns."""
        if self.recency_decay == 1.0:
            counts = np.asarray(rows.sum(axis=1)).ravel()
            return (sp.diags((1.0 / np.maximum(counts, 1.0)).astype(np.float32)) @ rows).tocsr()
        items, _ = history.recent(users, self.recent)
        items = np.where(items < n_items, items, -1)
        age = np.cumsum(items[:, ::-1] >= 0, axis=1)[:, ::-1] - 1  # 0 = newest
        weights = np.where(items >= 0, self.recency_decay ** age, 0.0)
        weights /= np.maximum(weights.sum(axis=1, keepdims=True), 1e-12)
        keep = items >= 0
        row = np.broadcast_to(np.arange(len(users))[:, None], items.shape)
        out = sp.csr_matrix((weights[keep].astype(np.float32), (row[keep], items[keep])),
                            shape=(len(users), n_items))
        out.sum_duplicates()
        return out

    def user_vectors(self, users: np.ndarray, history: Histories,
                     arrays: tuple[np.ndarray, ...] | None = None) -> np.ndarray:
        """float32[n, dim] unit user vectors from the given histories.

        Layer 0 is the MLP image of the (recency-weighted) mean history text, or the mean of
        the history items' MLP vectors (``user_init="items"``); layer l >= 1 is the normalised
        sum of the history items' layer l-1 vectors (exactly LightGCN's user update, with
        the fitted item layers and the history passed in). Empty history -> zero vector.
        ``arrays`` is a group from :meth:`_arrays` (taken here when not given).
        """
        torch = _torch()
        torch.set_num_threads(min(self.threads, 2))
        text, item_layers, _, degree = (arrays or self._arrays())[:4]
        rows = history.matrix(users)[:, :len(degree)]  # items unknown to the channel: dropped
        if rows.shape[1] < len(degree):  # the channel knows items this history does not
            rows = sp.hstack([rows, sp.csr_matrix((rows.shape[0], len(degree) - rows.shape[1]),
                                                  dtype=rows.dtype)]).tocsr()
        deg_u = np.asarray(rows.sum(axis=1)).ravel()
        di = np.where(degree > 0, degree, 1.0) ** -0.5
        norm = sp.diags((np.where(deg_u > 0, deg_u, 1.0) ** -0.5).astype(np.float32)) @ rows \
            @ sp.diags(di.astype(np.float32))
        mean_rows = self._history_weights(history, users, len(degree), rows)
        if self.user_init == "text":
            with torch.no_grad():  # row by row: independent of the batch (see _mlp_rows)
                layers = [_mlp_rows(self.mlp_, np.asarray(mean_rows @ text, dtype=np.float32))]
        else:
            layers = [np.asarray(mean_rows @ item_layers[0], dtype=np.float32)]
        for layer in range(self.layers):
            layers.append(np.asarray(norm @ item_layers[layer]))
        out = np.mean(layers, axis=0)
        out[deg_u == 0] = 0.0
        return unit_rows(out)

    def score(self, users: np.ndarray, history: Histories) -> np.ndarray:
        """float32[n, history.n_items] cosine between user and item vectors, or with a
        popularity prior ``cos / tau + popularity_prior * item_prior_`` (-inf for items the
        channel does not know); a user with no usable history gets the popularity counts."""
        return self.scored(users, history)[0]

    def scored(self, users: np.ndarray, history: Histories) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`score`, and bool[n] the users given the popularity counts."""
        arrays = self._arrays()
        item_vectors, popularity_, prior = arrays[2], arrays[4], arrays[5]
        # the vocabulary the channel was fitted or loaded with; items added since (here or
        # in the service) may run ahead of or behind the history's width
        width = check_width(history, self._n_base, self.name)
        n_items = min(len(item_vectors), width)  # items added while this request runs: later
        # arrays (one group, replaced as a whole by add_items) is what user_vectors reads
        # besides the history; item_layers_ identifies the group
        (vectors,) = cached_user_states(
            self.user_cache, users, history, arrays[1],
            lambda pos: (self.user_vectors(users[pos], history, arrays),))
        scores = np.full((len(users), width), -np.inf, np.float32)
        # row by row: a user's scores must not depend on the batch (llmrecall.scoring)
        scores[:, :n_items] = dot_rows(vectors, item_vectors[:n_items])
        if prior is not None:  # logits plus the log-popularity (see the module docstring)
            scores[:, :n_items] = scores[:, :n_items] / self.tau \
                + self.popularity_prior * prior[:n_items]
        no_signal = np.asarray(~vectors.any(axis=1), bool)
        scores[no_signal, :n_items] = popularity_[:n_items]
        return scores, no_signal

    def evidence(self, users: np.ndarray, ids: np.ndarray, history: Histories) -> np.ndarray:
        """int32[n, k]: the history item (of the last 50) most similar to each candidate."""
        item_vectors = self._arrays()[2]
        recent, _ = history.recent(users, 50)
        recent = np.where(recent < len(item_vectors), recent, -1)
        ids = np.where(ids < len(item_vectors), ids, -1)
        vec = item_vectors[np.maximum(recent, 0)]  # [n, L, d]
        cand = item_vectors[np.maximum(ids, 0)]  # [n, k, d]
        sims = np.einsum("nkd,nld->nkl", cand, vec)
        sims[np.broadcast_to((recent < 0)[:, None, :], sims.shape)] = -np.inf
        best = np.take_along_axis(recent, np.argmax(sims, axis=2), axis=1)
        # asarray: numpy's stub types any(axis=...) as "scalar or array"
        has_recent = np.asarray((recent >= 0).any(axis=1))
        return np.where((ids >= 0) & has_recent[:, None], best, -1).astype(np.int32)

    # ---- persistence: safetensors for the MLP, npz for the arrays --------------------
    def state(self) -> dict[str, np.ndarray]:
        arrays = {"text_vectors_": self.text_vectors_, "item_layers_": self.item_layers_,
                  "item_vectors_": self.item_vectors_, "item_degree_": self.item_degree_,
                  "popularity_": self.popularity_}
        if self._item_prior() is not None:
            arrays.update(item_prior_=self.item_prior_, prior_coef_=self.prior_coef_,
                          prior_intercept_=self.prior_intercept_)
        return arrays

    def save_state(self, directory: Path) -> None:
        from safetensors.torch import save_file

        super().save_state(directory)
        save_file({k: v.detach().contiguous() for k, v in self.mlp_.state_dict().items()},
                  str(directory / "mlp.safetensors"))

    def load_state(self, directory: Path) -> None:
        from safetensors.torch import load_file

        super().load_state(directory)
        path = directory / "mlp.safetensors"
        if not path.is_file():
            raise DataError("textcf model file missing", path=str(path))
        mlp = _mlp(self.text_vectors_.shape[1], self.hidden, self.dim)
        mlp.load_state_dict(load_file(str(path)))
        self.mlp_ = mlp.eval()
        self._n_base = len(self.item_vectors_)


class _BatchOrder:
    """int64 index batches of ``size``: consecutive slices of fresh permutations of
    ``range(n)`` drawn from ``rng`` (the last slice of a permutation may be shorter), so
    batch ``s`` is slice ``s % per_pass`` of the ``s // per_pass``-th permutation.

    :meth:`take` is called with consecutive steps from any start; at a start inside a
    pass, ``rng`` must be in the state that pass's permutation was drawn from
    (:meth:`resume_state`): it is drawn again and the batches before ``start`` skipped."""

    def __init__(self, rng: np.random.Generator, n: int, size: int):
        self.rng, self.n, self.size = rng, n, size
        self.per_pass = -(-n // size)
        self._order: np.ndarray | None = None
        self._drawn_from: Mapping[str, Any] = rng.bit_generator.state

    def take(self, step: int) -> np.ndarray:
        """The indices of batch ``step`` (int64[size], or fewer at a pass's end)."""
        slot = step % self.per_pass
        if self._order is None or slot == 0:
            self._drawn_from = self.rng.bit_generator.state
            self._order = self.rng.permutation(self.n)
        return self._order[slot * self.size:(slot + 1) * self.size]

    def resume_state(self, step: int) -> Mapping[str, Any]:
        """The generator state to resume at batch ``step`` (the next one :meth:`take`
        is asked for): the current pass's, inside a pass; the current one, at a pass's
        start (its permutation is not drawn yet)."""
        if step % self.per_pass == 0:
            return self.rng.bit_generator.state
        return self._drawn_from
