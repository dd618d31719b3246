"""textcf from the sharded log: the training graph gathered by one reducer, trained there or
by Ray Train workers reading it from a file.

Every textcf step propagates over the whole user x item graph (LightGCN layers), so its
training needs the graph in one process (docs/scale-out.md, "What stays single-node");
what the shards take off the driver is the log. As ALS's fit
(:mod:`llmrecall.engine.sharded_als`), it is one streamed shuffle with one reducer:

* **map** (one task per history shard): the shard's binary training matrix, its users'
  history weights (:meth:`~llmrecall.channels.textcf.TextCF.history_weights`: a user's row
  reads that user's history alone, so a shard computes its users' rows of the whole), and
  each user's first place in the log;
* **reduce** (one task): the pieces gathered one at a time, the users numbered by their
  first place (the loader's numbering) and the two matrices built. On the local engine it
  runs the channel's own :meth:`~llmrecall.channels.textcf.TextCF.fit_matrices` on them
  and writes the item side (the item layers, unit item vectors, training users per item)
  and the trained MLP's weights to the run folder, so a rerun trains nothing.
* **on Ray** the reducer writes the two matrices to the run folder instead
  (:class:`GraphFile`); the Ray Train workers read the file themselves (never through the
  driver), build the training graph from it and train data-parallel
  (:func:`~llmrecall.engine.ray_engine.train_textcf`, as on the driver path: each worker
  its anchors of every batch); one more task reads the file and the trained weights and
  writes the item side.

The driver embeds the catalog's item texts on the engine's embedder (on the Ray engine
its actor pool, through the LM cache), which the reducer gets with its function; the
fallback ranking is the items' training counts the shards' statistics pass already
summed. With a popularity prior the driver fits it after installing the model (a ridge
regression over the items' text vectors and those counts: no event is read). textcf
recomputes a user's vector from the history it is given at recall, so the recall tasks
need only the item side: no per-user state leaves the reducer.

Same model as the in-process fit: the same matrices in the same order (so the same
training pairs, batches and seed), the same text vectors; bit for bit on the local
engine, to float summation on Ray Train (as the driver path's data-parallel fit).

Memory: a map holds its shard; the reducer (and on Ray each training worker and the item
side's task) holds the graph as the in-process fit does
(the binary matrix and the history weights, about 12 bytes a distinct training pair each,
the normalised bipartite adjacency, 24 more, and with ``user_init = "text"`` each user's
mean text, ``4 t`` bytes a user for the embedder's ``t`` dimensions), plus the text
vectors (``4 t`` bytes an item).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from llmrecall.engine.shard_split import read_shard
from llmrecall.engine.sharded_als import gathered_rows, pairs_piece
from llmrecall.engine.stage_files import StageParts, channel_params, digest, files_signature

#: channel kinds fitted here
TEXTCF_KINDS = ("textcf",)

#: the item side :meth:`~llmrecall.channels.textcf.TextCF.fit_matrices` returns
ITEM_SIDE = ("item_layers", "item_vectors", "item_degree")
#: the prefix of the trained MLP's weights among a kept part's arrays
MLP_PREFIX = "mlp."

Columns = dict[str, np.ndarray]


def textcf_shard_map(path: str, items: list[str], params: dict[str, Any], shard: int,
                     split: bool = True) -> list[Columns]:
    """One shard's part of textcf's training graph as one piece, users in the shard's
    numbering: ALS's piece (:func:`~llmrecall.engine.sharded_als.pairs_piece`: the
    distinct training pairs, each user's first place, the shard's index) and
    ``w_user``/``w_item`` int32, ``weight`` float32 the nonzero history weights.
    ``params``: the channel's parameters (the tasks get them, not the channel)."""
    from llmrecall.channels.textcf import TextCF
    from llmrecall.data.dataset import Histories

    data = read_shard(path, items, split)
    history = Histories.from_interactions(data.train, data.n_users, len(items))
    weights = TextCF(**params).history_weights(history, history.matrix()).tocoo()
    return [{**pairs_piece(data, path, len(items), shard),
             "w_user": weights.row.astype(np.int32), "w_item": weights.col.astype(np.int32),
             "weight": weights.data.astype(np.float32)}]


def gathered_graph(pieces: Iterator[Columns], n_items: int,
                   ) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """``(user_items, mean_rows)``: float32 CSR [users, n_items] each, the binary training
    matrix (:func:`~llmrecall.engine.sharded_als.gathered_rows`: users numbered by their
    first place in the log, the loader's order) and the history weights of the same rows."""
    weights: list[tuple[int, np.ndarray, np.ndarray, np.ndarray]] = []

    def keeping_weights(stream: Iterator[Columns]) -> Iterator[Columns]:
        for piece in stream:
            weights.append((int(piece["shard"][0]), piece["w_user"], piece["w_item"],
                            piece["weight"]))
            yield piece

    user_items, shard_rows = gathered_rows(keeping_weights(pieces), n_items)
    rows = [shard_rows[shard][users] for shard, users, _i, _w in weights]
    mean_rows = sp.csr_matrix(
        (np.concatenate([w for *_s, w in weights]) if weights else np.zeros(0, np.float32),
         (np.concatenate(rows) if rows else np.zeros(0, np.int64),
          np.concatenate([i for _s, _u, i, _w in weights]) if weights else np.zeros(0, np.int32))),
        shape=user_items.shape)
    return user_items, mean_rows


@dataclass(frozen=True)
class GraphFile:
    """textcf's training matrices as a file the Ray Train workers read themselves:
    ``path`` (one :class:`~llmrecall.engine.stage_files.StageParts` part, written by the
    reducer: the binary matrix's and the history weights' CSR arrays), its ``signature``
    (path, size, modification time: what a Ray Train run's resume digest reads instead of
    its bytes) and ``text`` float32[n_items, t], the catalog's text vectors."""

    path: str
    signature: tuple[tuple[str, int, int], ...]
    text: np.ndarray

    @classmethod
    def of(cls, path: Path, text: np.ndarray) -> GraphFile:
        signature = tuple((p, size, mtime) for p, size, mtime in files_signature([path]))
        return cls(str(path), signature, text)

    def load(self, channel):
        """The :class:`~llmrecall.channels.textcf.TrainingGraph` ``channel`` (a
        :class:`~llmrecall.channels.textcf.TextCF`) trains on."""
        return channel.training_graph(self.text, *read_graph(self.path, len(self.text)))


def save_graph(kept: StageParts, user_items: sp.csr_matrix, mean_rows: sp.csr_matrix) -> None:
    """Write :func:`gathered_graph`'s matrices as part 0 of ``kept``."""
    kept.save(0, {"user_indptr": user_items.indptr, "user_indices": user_items.indices,
                  "weight_indptr": mean_rows.indptr, "weight_indices": mean_rows.indices,
                  "weight_data": mean_rows.data},
              {"users": user_items.shape[0], "pairs": int(user_items.nnz)})


def read_graph(path: str, n_items: int) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """``(user_items, mean_rows)`` as :func:`save_graph` wrote them."""
    with np.load(path, allow_pickle=False) as npz:
        users = int(len(npz["user_indptr"]) - 1)
        user_items = sp.csr_matrix((np.ones(len(npz["user_indices"]), np.float32),
                                    npz["user_indices"], npz["user_indptr"]),
                                   shape=(users, n_items))
        mean_rows = sp.csr_matrix((npz["weight_data"], npz["weight_indices"],
                                   npz["weight_indptr"]), shape=(users, n_items))
    return user_items, mean_rows


def save_model(kept: StageParts, mlp, item_side: dict[str, np.ndarray], graph) -> None:
    """Write the trained ``mlp``'s weights and its ``item_side`` (trained on ``graph``, a
    :class:`~llmrecall.channels.textcf.TrainingGraph`) as part 0 of ``kept``."""
    weights = {MLP_PREFIX + k: v.detach().numpy() for k, v in mlp.state_dict().items()}
    kept.save(0, {**item_side, **weights}, {"users": graph.n_users, "pairs": len(graph.pairs_u)})


def mlp_of(channel, text_dim: int, weights: dict[str, np.ndarray]):
    """``channel``'s MLP for ``text_dim``-d text vectors holding ``weights`` (its state
    dict's names -> arrays)."""
    import torch

    from llmrecall.channels.textcf import _mlp

    mlp = _mlp(text_dim, channel.hidden, channel.dim)
    mlp.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in weights.items()})
    return mlp


def item_side_task(params: dict[str, Any], graph: GraphFile,
                   weights: dict[str, np.ndarray], kept: StageParts) -> int:
    """Write the item side of the MLP with ``weights`` trained on ``graph`` and those
    weights to ``kept`` (part 0, as the local reducer writes it); returns the items."""
    from llmrecall.channels.textcf import TextCF

    channel = TextCF(**params)
    loaded = graph.load(channel)
    mlp = mlp_of(channel, graph.text.shape[1], weights)
    save_model(kept, mlp, channel.item_side(mlp, loaded), loaded)
    return len(graph.text)


def fit_textcf(channel, paths: list[str], items: list[str], counts: np.ndarray, catalog: Any,
               engine, run: Path, resumed: dict[str, Any], name: str,
               split: bool = True) -> None:
    """Fit ``channel`` (an unfitted :class:`~llmrecall.channels.textcf.TextCF`) from the
    shards ``paths`` (module docstring). ``counts`` float64[n_items]: each item's training
    events summed over the shards (the fallback ranking); ``catalog``: the items'
    :class:`~llmrecall.data.dataset.Catalog`. The trained state is kept under ``run``;
    ``resumed[f"{name}_model"]`` says whether it was found there."""
    from llmrecall.channels.text_features import item_text_vectors
    from llmrecall.channels.textcf import TextCF
    from llmrecall.engine.local import use_engine
    from llmrecall.engine.shard_split import catalog_only

    if np.shape(counts) != (len(items),):
        raise ValueError(f"counts must have shape [{len(items)}], got {list(np.shape(counts))}")
    with use_engine(engine):  # the catalog embedded on the engine's embedder
        text = item_text_vectors(catalog_only(items, catalog), channel.embedder)
    params = channel.get_params()
    n_items = len(items)
    key = digest(channel_params(channel), split)
    kept = StageParts(run, channel.kind, key)
    resumed[f"{name}_model"] = kept.has(0)
    train = getattr(engine, "train_textcf", None)  # Ray Train: the graph goes to a file

    def shard_map(path: str) -> list[Columns]:
        return textcf_shard_map(path, items, params, paths.index(path), split)

    if not kept.has(0) and train is None:
        def reduce(_p: int, pieces: Iterator[Columns]) -> None:
            local = TextCF(**params)
            graph = local.training_graph(text, *gathered_graph(pieces, n_items))
            mlp = local.fit_graph(graph)
            save_model(kept, mlp, local.item_side(mlp, graph), graph)

        engine.shuffle_streamed(shard_map, paths, reduce, 1)
    elif not kept.has(0) and train is not None:
        graph_parts = StageParts(run, f"{channel.kind}-graph", key)
        if not graph_parts.has(0):
            engine.shuffle_streamed(
                shard_map, paths,
                lambda _p, pieces: save_graph(graph_parts, *gathered_graph(pieces, n_items)), 1)
        graph_file = GraphFile.of(graph_parts.path(0), text)
        mlp = train(channel, channel.initial_mlp(text.shape[1]), graph_file)
        weights = {k: v.detach().numpy() for k, v in mlp.state_dict().items()}
        engine.map_tasks(lambda _i: item_side_task(params, graph_file, weights, kept), [0])
    arrays = kept.load(0)[0]
    weights = {k[len(MLP_PREFIX):]: v for k, v in arrays.items() if k.startswith(MLP_PREFIX)}
    channel.install(text, mlp_of(channel, text.shape[1], weights),
                    {k: arrays[k] for k in ITEM_SIDE}, counts.astype(np.float32))
    if channel.popularity_prior:  # a ridge on the driver: items × text width, no events
        if channel.prior_text_embedder != channel.embedder:
            with use_engine(engine):
                text = item_text_vectors(catalog_only(items, catalog),
                                         channel.prior_text_embedder)
        channel.install_prior(text)
