"""Language-model channels over item text embeddings and a vector index.

* :class:`SemanticItemToItem` (``semantic_i2i``): nearest neighbours, in text-embedding space,
  of each of the user's last ``recent`` items, weighted by recency and merged. On catalogs up
  to :data:`TABLE_LIMIT` items the neighbours come from a precomputed item-to-item table
  (:class:`NeighbourTable`) instead of a search per history item.
* :class:`SemanticUserInterest` (``semantic_user``): the user's recent history embeddings,
  time-decayed, summarised as one vector, or as several interest vectors (weighted spherical
  k-means over the history) when the history is diverse; each interest retrieves on its own.

Both embed the whole catalog once at ``fit`` (see :mod:`llmrecall.channels.text_features`), so
items nobody has interacted with are retrievable. Both keep the top-``k`` exact: a candidate
in the merged top ``k`` is in the top ``k`` of the query that scored it best, so fetching ``k``
hits per query (after exclusions) loses nothing.

Serving capabilities (:mod:`llmrecall.channels.capabilities`, used by :mod:`llmrecall.serve`):
:meth:`~_TextIndexChannel.add_items` (``AddsItems``) embeds items created or edited at run
time and puts them in the index at once (so they are recalled, used as history evidence and
found as similar items before any retraining), and :meth:`~_TextIndexChannel.recall_query`
(``AnswersQueries``) answers free-text queries from the same index.
"""

from __future__ import annotations

import re
import threading
import uuid
from abc import abstractmethod
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import numpy as np

from llmrecall.channels.base import Candidates, Channel
from llmrecall.channels.capabilities import (
    AddsItems,
    AnswersQueries,
    CachesUsers,
    SearchesVectors,
)
from llmrecall.channels.registry import register
from llmrecall.channels.text_features import (
    DEFAULT_EMBEDDER,
    added_texts,
    check_added,
    grown,
    item_text_vectors,
    popular_rows,
    popularity,
    text_vectors,
    unit_rows,
)
from llmrecall.channels.user_cache import cached_user_states
from llmrecall.data.dataset import Dataset, Histories
from llmrecall.errors import ConfigError, DataError
from llmrecall.index import VectorIndex, VectorSearch, choose_kind, load_index, merge_hits
from llmrecall.scoring import dot_rows
from llmrecall.threads import limited_blas
from llmrecall.topk import topk

#: catalogs up to this size with an exact ("flat") index are searched by one matrix product
#: instead of FAISS (same answer; see ``_TextIndexChannel._dense_query``)
DENSE_SEARCH_LIMIT = 100_000
#: floats in one [queries, items] product of the dense path (64 MB)
DENSE_CHUNK = 1 << 24

#: catalogs up to this size get ``semantic_i2i``'s precomputed neighbour table; larger ones
#: search the index per history item (the table is n_items x table_width x 8 bytes). The
#: table is built at every load, in time quadratic in the items (one core: ~6 s at 20,000
#: items, ~41 s at 50,000, once per server process): the limit keeps start-up short
TABLE_LIMIT = 20_000
#: floats in one [rows, items] product while the neighbour table is built (16 MB)
TABLE_CHUNK = 1 << 22

#: the :class:`VectorIndex` keyword arguments a channel's ``index_params`` may set
INDEX_PARAMS = ("hnsw_m", "ef_construction", "ef_search", "nlist", "nprobe", "rebuild_fraction")
#: ``index_params`` of ``index_kind="milvus"`` (:class:`~llmrecall.index.milvus_index.MilvusIndex`);
#: ``uri`` is required, ``collection`` defaults to a fresh name per fit
MILVUS_PARAMS = ("uri", "collection", "index_type", "build_params", "search_params")


def _check_index_params(channel: str, params: dict | None, kind: str = "auto") -> dict | None:
    """``params`` unchanged, or a :class:`ConfigError` naming the unknown keys."""
    known = MILVUS_PARAMS if kind == "milvus" else INDEX_PARAMS
    if kind == "milvus" and not (params or {}).get("uri"):
        raise ConfigError(f"{channel}: index_kind 'milvus' needs index_params.uri "
                          "(milvus://PATH.db, http://host:port or $ENV_VAR)")
    if params is None:
        return None
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise ConfigError(f"{channel}: unknown index_params {unknown}; known: {list(known)}")
    return dict(params)


class _TextIndexChannel(Channel, AnswersQueries, AddsItems, SearchesVectors):
    """Shared parts: embed the catalog, index it (FAISS, or a Milvus collection with
    ``index_kind="milvus"``), save the index, run queries.

    Thread safety: a serving process calls :meth:`add_items` on one thread while recalls run
    on others. FAISS does not allow a search during an add, so every index access holds
    ``_lock``; the numpy arrays (``item_vectors_``, ``popularity_``) are replaced by grown
    copies, never changed in place, so a recall holding the old ones stays consistent.
    """

    in_process = True  # see Channel.in_process

    # hyperparameters the shared code reads; every subclass sets them in its __init__
    embedder: str
    recent: int
    recency_decay: float
    index_kind: str
    index_params: dict | None

    #: the channel's lock attributes: not pickled, made anew by :meth:`__setstate__`
    _locks: ClassVar[tuple[str, ...]] = ("_lock",)

    def __init__(self, name: str | None = None):
        super().__init__(name)
        self._lock = threading.Lock()
        self._known: np.ndarray | None = None  # bool[n]: rows holding a vector (see _known_rows)

    def __getstate__(self) -> dict[str, Any]:
        # pickled to a task (the sharded log's recall tasks): the locks stay behind and are
        # made anew; a FAISS index pickles itself (faiss serialises it), a Milvus
        # collection's client does not (the sharded path refuses index_kind "milvus")
        state = self.__dict__.copy()
        for name in self._locks:
            state.pop(name, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        for name in self._locks:
            setattr(self, name, threading.Lock())

    def fit(self, dataset: Dataset) -> _TextIndexChannel:
        # popularity: the fallback ranking for users with no history to go on
        return self.fit_vectors(item_text_vectors(dataset, self.embedder), popularity(dataset))

    def fit_vectors(self, item_vectors: np.ndarray, item_popularity: np.ndarray, *,
                    index: VectorSearch | None = None) -> _TextIndexChannel:
        """Fit from item vectors computed elsewhere instead of embedding the catalog's text.

        Args:
            item_vectors: float32[n_items, d], unit rows (inner product = cosine); row i is
                dense item i. Kept by reference, not copied.
            item_popularity: float32[n_items] the fallback ranking for users without history.
            index: an already-built :class:`VectorSearch` over exactly these vectors (id i =
                row i), e.g. one shared by both semantic channels; built here when None.
        Returns:
            self.
        """
        vectors = np.asarray(item_vectors)
        if vectors.ndim != 2 or vectors.dtype != np.float32:
            raise DataError(f"{self.name}: item_vectors must be float32[n_items, d], got "
                            f"{vectors.dtype}{list(vectors.shape)}")
        if np.shape(item_popularity) != (len(vectors),):
            raise DataError(f"{self.name}: item_popularity must have shape [{len(vectors)}], "
                            f"got {list(np.shape(item_popularity))}")
        if index is not None and (index.dim != vectors.shape[1] or len(index) != len(vectors)):
            raise DataError(f"{self.name}: index holds {len(index)} vectors of dim {index.dim}, "
                            f"item_vectors are {list(vectors.shape)}")
        self.item_vectors_ = vectors
        self.popularity_ = np.asarray(item_popularity, np.float32)
        self._known = None
        if index is None:
            self._build_index()
        else:
            self._index = index
        return self

    # ---- serving hooks ---------------------------------------------------------------
    @property
    def query_source(self) -> str:
        """What :meth:`recall_query` searches: channels with the same source give the same
        answer to a query, so a service asks only one of them."""
        return f"item-text:{self.embedder}"

    def add_items(self, ids: np.ndarray, texts: list[str]) -> None:
        """Embed and index items created or edited after fit.

        Args:
            ids: int[n] distinct dense item ids. An id already known is updated (its vector
                replaced in ``item_vectors_`` and in the index); an id past the end grows
                ``item_vectors_`` and ``popularity_`` (new items have popularity 0).
            texts: one text per id in the ``Catalog.texts`` form, embedded as passages with
                the channel's embedder: exactly what ``fit`` did for the catalog.
        Deleting an item is the caller's allow mask: the vector stays, the mask hides it.
        """
        self._check_fitted()
        ids = check_added(ids, texts, self.name)
        if not len(ids):
            return
        vectors = text_vectors(added_texts(ids, texts), self.embedder)  # outside the lock
        with self._lock:
            self._index.add(ids, vectors)
            self.item_vectors_ = grown(self.item_vectors_, ids, vectors)
            fresh = ids[ids >= len(self.popularity_)]
            if len(fresh):  # an updated item keeps its training popularity
                self.popularity_ = grown(self.popularity_, fresh, 0.0)
            self._known = None

    def recall_query(self, texts: list[str | None], k: int,
                     allowed: np.ndarray | None = None) -> Candidates:
        """Items whose text is nearest each free-text query.

        Args:
            texts: q query texts; None or blank = no query for that row.
            k: candidates per query.
            allowed: optional bool mask over item ids; items outside it (or past its end)
                are never returned.
        Returns:
            :class:`Candidates` ids int32[q, k] / scores float32[q, k] (cosine between the
            query, embedded with ``kind="query"``, and the item text), best first. Rows
            without a query are empty (-1 / -inf): no popularity filler, since the service
            fills those from its own sources.
        """
        self._check_fitted()
        k = max(int(k), 0)
        ids = np.full((len(texts), k), -1, np.int32)
        scores = np.full((len(texts), k), -np.inf, np.float32)
        asked = {r: t for r, t in enumerate(texts) if t is not None and t.strip()}
        rows = list(asked)
        if rows and k:
            queries = text_vectors(list(asked.values()), self.embedder, kind="query")
            with self._lock:
                hit, sims = self._index.search(queries, k, allowed=self._search_mask(allowed))
            ids[rows], scores[rows] = hit, np.where(hit >= 0, sims, -np.inf)
        return Candidates(ids, scores)

    def _build_index(self) -> None:
        vectors = self.item_vectors_
        kind = self.index_kind if self.index_kind != "auto" else choose_kind(len(vectors))
        index: VectorSearch
        if kind == "milvus":
            from llmrecall.index.milvus_index import MilvusIndex
            params = dict(self.index_params or {})
            # a fresh collection per fit by default: replicas still serving the previous
            # artifact keep searching theirs while this one is built and rolled out
            collection = params.pop("collection", None) or \
                f"llmrecall_{re.sub(r'[^A-Za-z0-9_]', '_', self.name)}_{uuid.uuid4().hex[:12]}"
            milvus = MilvusIndex(vectors.shape[1], params.pop("uri"), collection, replace=True,
                                 **params)
            milvus.add(np.arange(len(vectors), dtype=np.int64), vectors)
            milvus.flush()  # the bulk load: sealed and indexed before the first search
            index = milvus
        else:
            index = VectorIndex(vectors.shape[1], kind, **(self.index_params or {}))
            index.add(np.arange(len(vectors), dtype=np.int64), vectors)
        self._index = index

    @property
    def index(self) -> VectorSearch:
        """The fitted item index (ids = dense item ids); its ``ef_search`` / ``nprobe`` may be
        changed between queries to trade recall for speed."""
        self._check_fitted()
        return self._index

    def indexed_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """``ids int64[n]`` ascending and ``vectors float32[n, d]``: the index's contents,
        read from ``item_vectors_`` (row i = id i; :meth:`add_items` keeps both in step)
        instead of from the index (an IVF index cannot give its vectors back)."""
        self._check_fitted()
        with self._lock:
            ids = np.asarray(self._index.ids, np.int64)
            vectors = self.item_vectors_
        return ids, np.ascontiguousarray(vectors[ids], np.float32)

    def use_index(self, index: VectorSearch) -> None:
        """Search ``index`` from now on (see :class:`SearchesVectors`); it must hold the
        ids of :meth:`indexed_vectors` at the same dimension."""
        self._check_fitted()
        if index.dim != self.item_vectors_.shape[1]:
            raise DataError(f"{self.name}: the new index holds vectors of dim {index.dim}, "
                            f"the channel's are {self.item_vectors_.shape[1]}")
        with self._lock:
            # more is fine: a collection shared by replicas may already hold items added at
            # run time (they are added here too, idempotently, by the service's replay)
            if len(index) < len(self._index):
                raise DataError(f"{self.name}: the new index holds {len(index)} vectors, "
                                f"fewer than the channel's {len(self._index)}")
            self._index = index

    def _search_mask(self, allowed: np.ndarray | None) -> np.ndarray | None:
        """The ``allowed`` mask to search with. A Milvus collection may be shared with other
        processes (replicas with ``[state] vectors``, or serving one artifact built with
        ``index_kind="milvus"``), which add items this channel has not seen yet: their ids
        are past the end of ``item_vectors_`` and must not come back, so the mask is cut to
        the channel's items. A FAISS index holds only what this channel added: unchanged."""
        if self._index.kind != "milvus":
            return allowed
        n = len(self.item_vectors_)
        mask = np.ones(n, bool)
        if allowed is not None:
            m = min(n, len(allowed))
            mask[m:] = False
            mask[:m] = np.asarray(allowed, bool)[:m]
        return mask

    def save_state(self, directory: Path) -> None:
        super().save_state(directory)
        self._index.save(directory / "index")

    def load_state(self, directory: Path) -> None:
        super().load_state(directory)
        self._index = load_index(directory / "index")

    def _query(self, owner: np.ndarray, queries: np.ndarray, weights: np.ndarray,
               evidence: np.ndarray, batch: np.ndarray, k: int, history: Histories,
               allowed: np.ndarray | None, exclude_seen: bool) -> Candidates:
        """Search ``queries`` (float32[q, d], query j belongs to row ``owner[j]``), scale hit
        scores by ``weights[j]``, merge by max per row and keep the top ``k``."""
        if self._index.kind == "flat" and len(self.item_vectors_) <= DENSE_SEARCH_LIMIT:
            top, vals, ev = self._dense_query(owner, queries, weights, evidence, batch, k,
                                              history, allowed, exclude_seen)
        else:
            exclude = history.matrix(batch)[owner] if exclude_seen and len(owner) else None
            with self._lock:
                ids, sims = self._index.search(queries, k, exclude=exclude,
                                               allowed=self._search_mask(allowed))
            scored = np.where(ids >= 0, sims * weights[:, None], -np.inf).astype(np.float32)
            top, vals, ev = merge_hits(owner, ids, scored, evidence, len(batch), k)
        return self._with_fallback(owner, top, vals, ev, k, allowed)

    def _with_fallback(self, owner: np.ndarray, top: np.ndarray, vals: np.ndarray,
                       ev: np.ndarray, k: int, allowed: np.ndarray | None) -> Candidates:
        """Rows that issued no query (``owner`` never names them) get the popularity ranking,
        marked as the channel's fallback (``Candidates.fallback``)."""
        empty = np.bincount(owner, minlength=len(top)) == 0
        fallback = None
        if empty.any():  # no usable history: the popularity ranking, without evidence
            top[empty], vals[empty] = popular_rows(self.popularity_, int(empty.sum()), k, allowed)
            fallback = np.zeros(top.shape, bool)
            fallback[empty] = True
        return Candidates(top, vals, ev, "item", fallback=fallback)

    def _dense_query(self, owner: np.ndarray, queries: np.ndarray, weights: np.ndarray,
                     evidence: np.ndarray, batch: np.ndarray, k: int, history: Histories,
                     allowed: np.ndarray | None, exclude_seen: bool
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The exact (flat) index's answer computed directly: row r's score of item i is
        ``max_j weights[j] * <queries[j], item_vectors_[i]>`` over r's queries, then one
        top-``k`` per row. Same masking as :meth:`VectorIndex.search` (ids past the end of
        ``allowed`` are not allowed; rows without a vector are not in the index). On small
        catalogs this is several times faster than a top-k per query and a merge, and needs
        no lock.

        Returns:
            ``ids int32[rows, k]`` (-1 padded), ``scores float32[rows, k]`` (-inf padded),
            ``evidence int32[rows, k]``: the evidence of the query that scored the item best.
        """
        n_rows, k = len(batch), max(int(k), 0)
        vectors, known = self.item_vectors_, self._known_rows()  # one consistent snapshot
        n = min(len(vectors), len(known))
        columns = known[:n].copy()
        if allowed is not None:
            m = min(len(allowed), n)
            columns[m:] = False
            columns[:m] &= np.asarray(allowed, bool)[:m]
        # seen items as (row in batch, item) pairs, rows ascending
        seen = history.entries(batch) if exclude_seen else None
        owner = np.asarray(owner, np.int64)
        order = np.argsort(owner, kind="stable")  # each row's queries contiguous
        owner, queries = owner[order], queries[order]
        weights, evidence = weights[order], np.asarray(evidence)[order]
        top = np.full((n_rows, k), -1, np.int32)
        vals = np.full((n_rows, k), -np.inf, np.float32)
        ev = np.full((n_rows, k), -1, np.int32)
        if k == 0 or len(owner) == 0:
            return top, vals, ev
        # rows in chunks, so that the [queries, items] product stays near DENSE_CHUNK floats
        per_row = max(1, len(owner) // max(n_rows, 1))
        step = max(1, DENSE_CHUNK // max(n * per_row, 1))
        for lo in range(0, n_rows, step):
            hi = min(n_rows, lo + step)
            a, b = np.searchsorted(owner, [lo, hi])
            if a == b:
                continue
            with limited_blas():
                sims = dot_rows(queries[a:b], vectors[:n]) * weights[a:b, None]  # float32[q, n]
            rows = owner[a:b] - lo
            starts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
            scores = np.full((hi - lo, n), -np.inf, np.float32)
            scores[rows[starts]] = np.maximum.reduceat(sims, starts, axis=0)
            scores[:, ~columns] = -np.inf
            if seen is not None:
                s0, s1 = np.searchsorted(seen[0], [lo, hi])
                r, c = seen[0][s0:s1] - lo, seen[1][s0:s1]
                inside = c < n
                scores[r[inside], c[inside]] = -np.inf
            ids, best = topk(scores, k)
            # evidence: which of the row's queries attains each candidate's score
            counts = np.bincount(rows, minlength=hi - lo)
            slot = np.arange(b - a) - np.repeat(np.cumsum(counts) - counts, counts)
            grid = np.full((hi - lo, int(counts.max())), -1, np.int64)  # query index or -1
            grid[rows, slot] = np.arange(b - a)
            per_query = sims[np.maximum(grid, 0)[:, :, None], np.maximum(ids, 0)[:, None, :]]
            per_query[np.broadcast_to((grid < 0)[:, :, None], per_query.shape)] = -np.inf
            winner = np.take_along_axis(grid, per_query.argmax(axis=1), axis=1)  # [r, k]
            top[lo:hi], vals[lo:hi] = ids, best
            ev[lo:hi] = np.where(ids >= 0, evidence[a:b][np.maximum(winner, 0)], -1)
        return top, vals, ev

    def recall(self, users: np.ndarray, k: int, history: Histories, *,
               allowed: np.ndarray | None = None, exclude_seen: bool = True,
               explain: bool = False, block: int = 512) -> Candidates:
        """See :meth:`Channel.recall`; evidence is a history item (``evidence_kind="item"``)."""
        self._check_fitted()
        users = np.asarray(users, dtype=np.int32)
        parts = [self._recall_block(users[s:s + block], k, history, allowed, exclude_seen)
                 for s in range(0, len(users), block)]
        if not parts:
            empty = np.zeros((0, max(k, 0)), np.int32)
            return Candidates(empty, empty.astype(np.float32), empty if explain else None,
                              "item" if explain else "none")
        ids = np.concatenate([p.ids for p in parts])
        scores = np.concatenate([p.scores for p in parts])
        fallback = None
        if any(p.fallback is not None for p in parts):
            fallback = np.concatenate([np.zeros(p.ids.shape, bool) if p.fallback is None
                                       else p.fallback for p in parts])
        if not explain:
            return Candidates(ids, scores, fallback=fallback)
        return Candidates(ids, scores, np.concatenate([p.evidence for p in parts]), "item",
                          fallback=fallback)

    def _known_rows(self) -> np.ndarray:
        """bool[len(item_vectors_)]: rows holding a vector. Rows are zero only where
        :meth:`add_items` grew past ids it was not given (a gap in the service's calls)."""
        known = self._known
        if known is None or len(known) != len(self.item_vectors_):
            known = self._known = np.abs(self.item_vectors_).max(axis=1, initial=0.0) > 0
        return known

    @abstractmethod
    def _recall_block(self, batch: np.ndarray, k: int, history: Histories,
                      allowed: np.ndarray | None, exclude_seen: bool) -> Candidates:
        """Candidates for one block of users: each subclass turns them into queries."""

    def _recent(self, batch: np.ndarray, history: Histories) -> tuple[np.ndarray, np.ndarray]:
        """Last ``recent`` items (int32[n, L], -1 = none) and their recency weights
        float32[n, L]: ``recency_decay ** (events since)``, 0 where there is no item."""
        items, _ = history.recent(batch, self.recent)
        known = self._known_rows()
        # items this channel has no vector for (added to the service but not to the channel)
        items = np.where(items < len(known), items, -1)
        items = np.where(known[np.maximum(items, 0)], items, -1)
        age = np.cumsum(items[:, ::-1] >= 0, axis=1)[:, ::-1] - 1  # 0 = newest
        weights = np.where(items >= 0, self.recency_decay ** age, 0.0).astype(np.float32)
        return items, weights


class NeighbourTable(NamedTuple):
    """Each item's ``width`` most similar items in text space, best first.

    ``ids int32[n_items, width]`` / ``cos float32[n_items, width]`` (cosine of the item's text
    to the neighbour's), padded with -1 / -inf; an item is not its own neighbour, and rows of
    items without a vector are empty. ``known bool[n_items]``: the rows that held a vector
    when the table was made. The three arrays are never changed in place: an update builds
    new ones and swaps the whole tuple, so a reader holding one sees one consistent table.
    """

    ids: np.ndarray
    cos: np.ndarray
    known: np.ndarray


def neighbour_rows(vectors: np.ndarray, known: np.ndarray, rows: np.ndarray,
                   width: int) -> tuple[np.ndarray, np.ndarray]:
    """The neighbour-table rows of items ``rows``, computed exactly.

    Args:
        vectors: float32[n, d] unit item vectors (zero rows = no vector).
        known: bool[n] rows holding a vector; only those are neighbours.
        rows: int[r] item ids, all ``known``.
        width: neighbours per row.
    Returns:
        ``ids int32[r, width]`` and ``cos float32[r, width]``, best first (ties toward the
        lower id, as :func:`topk`), -1 / -inf padded; an item is never its own neighbour.
        Rows go through in chunks so the [chunk, n] product stays near ``TABLE_CHUNK``
        floats, whatever the catalog size.
    """
    rows = np.asarray(rows, np.int64)
    n = len(vectors)
    ids = np.full((len(rows), width), -1, np.int32)
    cos = np.full((len(rows), width), -np.inf, np.float32)
    unknown = ~np.asarray(known, bool)
    step = max(1, TABLE_CHUNK // max(n, 1))
    for lo in range(0, len(rows), step):
        part = rows[lo:lo + step]
        with limited_blas():
            sims = vectors[part] @ vectors.T  # float32[chunk, n]
        sims[:, unknown] = -np.inf
        sims[np.arange(len(part)), part] = -np.inf  # not its own neighbour
        ids[lo:lo + step], cos[lo:lo + step] = topk(sims, width)
    return ids, cos


def build_neighbour_table(vectors: np.ndarray, known: np.ndarray, width: int) -> NeighbourTable:
    """The :class:`NeighbourTable` of a whole catalog (float32[n, d] unit vectors)."""
    n = len(vectors)
    ids = np.full((n, width), -1, np.int32)
    cos = np.full((n, width), -np.inf, np.float32)
    rows = np.flatnonzero(known)
    ids[rows], cos[rows] = neighbour_rows(vectors, known, rows, width)
    return NeighbourTable(ids, cos, np.asarray(known, bool).copy())


def updated_neighbour_table(table: NeighbourTable, vectors: np.ndarray, known: np.ndarray,
                            changed: np.ndarray) -> NeighbourTable:
    """``table`` after the items ``changed`` got new vectors (new ids or new texts).

    Args:
        table: the table before the change.
        vectors: float32[n, d] all vectors after the change (n may have grown).
        known: bool[n] rows holding a vector after the change.
        changed: int[c] distinct ids whose vector is new.
    Returns:
        A new :class:`NeighbourTable` (``table`` is not modified) equal, up to ties, to
        :func:`build_neighbour_table` over ``vectors``:

        * the rows of changed items, and every row that listed a changed item (its cosine
          was to the old vector, and dropping it may pull in a neighbour the row did not
          keep), are recomputed exactly;
        * every other row keeps its entries and takes in the changed items whose cosine
          beats its worst entry (a top ``width`` of its old entries plus them).
    """
    n, width = len(vectors), table.ids.shape[1]
    changed = np.asarray(changed, np.int64)
    grow = n - len(table.ids)
    ids = np.pad(table.ids, ((0, grow), (0, 0)), constant_values=-1)  # copies
    cos = np.pad(table.cos, ((0, grow), (0, 0)), constant_values=-np.inf)
    redo = np.zeros(n, bool)
    redo[changed] = True
    redo[:len(table.ids)] |= np.isin(table.ids, changed).any(axis=1)
    redo &= known
    ids[~known], cos[~known] = -1, -np.inf
    rows = np.flatnonzero(redo)
    ids[rows], cos[rows] = neighbour_rows(vectors, known, rows, width)
    # the other rows: merge in the changed items that beat their worst entry
    incoming = changed[known[changed]]
    rest = np.flatnonzero(known & ~redo)
    step = max(1, TABLE_CHUNK // max(len(incoming), vectors.shape[1]))  # bounds the gather too
    for lo in range(0, len(rest) if len(incoming) else 0, step):
        part = rest[lo:lo + step]
        with limited_blas():
            sims = vectors[part] @ vectors[incoming].T  # float32[chunk, c]
        gain = (sims > cos[part, -1:]).any(axis=1)
        if not gain.any():
            continue
        part = part[gain]
        pool_ids = np.concatenate([ids[part], np.broadcast_to(incoming, (len(part), len(incoming)))],
                                  axis=1)
        pool_cos = np.concatenate([cos[part], sims[gain]], axis=1)
        pick, best = topk(pool_cos, width)
        ids[part] = np.where(pick >= 0, np.take_along_axis(pool_ids, np.maximum(pick, 0), axis=1), -1)
        cos[part] = best
    return NeighbourTable(ids, cos, np.asarray(known, bool).copy())


def _distinct_queries(items: np.ndarray, weights: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The queries of a block's recent items (int32[n, L], -1 = none) and their weights:
    ``row int64[q]`` (ascending), ``item int32[q]`` (ascending within a row) and
    ``weight float32[q]``. A repeated item queries once, at its largest (most recent) weight."""
    row, col = np.nonzero(items >= 0)
    order = np.lexsort((-weights[row, col], items[row, col], row))
    row, col = row[order], col[order]
    keep = np.ones(len(row), bool)
    keep[1:] = (row[1:] != row[:-1]) | (items[row[1:], col[1:]] != items[row[:-1], col[:-1]])
    row, col = row[keep], col[keep]
    return row, items[row, col], weights[row, col]


@register
class SemanticItemToItem(_TextIndexChannel):
    """Items whose text is closest to the user's recent items.

    Score of candidate c = max over the last ``recent`` history items h of
    ``recency_decay**age(h) * cos(text(h), text(c))``; evidence = the h that attains it.

    Neighbour table: with ``table_width = W > 0`` and at most :data:`TABLE_LIMIT` items, each
    item's ``W`` nearest items are computed once (at fit and load, not saved; n_items x W x 8
    bytes) and recall merges the table rows of the user's history items instead of scoring
    the catalog against each of them. Guarantee: when ``W >= k + e``, where e is the number
    of items excluded for the user (seen items when ``exclude_seen``, items outside
    ``allowed``), the answer is the exact one (same ids, scores up to float rounding, same
    evidence except between exact ties): a candidate in the user's merged top ``k`` is
    within the top ``k + e`` of the history item that scores it best, and so in that item's
    row. With a smaller ``W`` the answer is approximate but still valid: only allowed,
    unseen items, best first, -1 padded when fewer than ``k`` are found; an item's score is
    the best over the history items whose rows list it (at most its exact score).
    ``table_width=0`` searches per history item, as do catalogs above the limit.
    """

    kind: ClassVar[str] = "semantic_i2i"
    _locks: ClassVar[tuple[str, ...]] = ("_lock", "_adding")
    evidence_template: ClassVar[str] = "similar to {evidence}, which you interacted with"

    def __init__(self, embedder: str = DEFAULT_EMBEDDER, recent: int = 10,
                 recency_decay: float = 0.85, index_kind: str = "auto",
                 index_params: dict | None = None, table_width: int = 500,
                 name: str | None = None):
        super().__init__(name)
        if recent < 1:
            raise ConfigError(f"semantic_i2i: recent must be >= 1, got {recent}")
        if not 0 < recency_decay <= 1:
            raise ConfigError(f"semantic_i2i: recency_decay must be in (0, 1], got {recency_decay}")
        if isinstance(table_width, bool) or not isinstance(table_width, (int, np.integer)) \
                or table_width < 0:
            raise ConfigError(f"semantic_i2i: table_width must be an integer >= 0, got {table_width!r}")
        self.embedder, self.recent, self.recency_decay = embedder, recent, recency_decay
        self.index_kind = index_kind
        self.index_params = _check_index_params("semantic_i2i", index_params, index_kind)
        self.table_width = int(table_width)
        self._table: NeighbourTable | None = None
        self._adding = threading.Lock()  # one add_items at a time: each updates the table

    # ---- the neighbour table ---------------------------------------------------------
    def fit_vectors(self, item_vectors: np.ndarray, item_popularity: np.ndarray, *,
                    index: VectorSearch | None = None) -> SemanticItemToItem:
        super().fit_vectors(item_vectors, item_popularity, index=index)
        self._build_table()
        return self

    def load_state(self, directory: Path) -> None:
        super().load_state(directory)
        self._known = None  # the loaded vectors' rows, not those of any earlier state
        self._build_table()  # not part of the artifact: rebuilt from the saved vectors

    def _build_table(self) -> None:
        self._table = None
        if self.table_width and len(self.item_vectors_) <= TABLE_LIMIT:
            self._table = build_neighbour_table(self.item_vectors_, self._known_rows(),
                                                self.table_width)

    @property
    def neighbour_table(self) -> NeighbourTable | None:
        """The current :class:`NeighbourTable`, or None when recall searches the index."""
        return self._table

    def add_items(self, ids: np.ndarray, texts: list[str]) -> None:
        """See :meth:`_TextIndexChannel.add_items`; also updates the neighbour table (new
        rows, new entries in existing rows, rows that listed an edited item recomputed) and
        swaps it in whole, so a concurrent recall uses either the old table or the new."""
        with self._adding:
            super().add_items(ids, texts)
            table = self._table
            if table is None or not len(texts):
                return
            vectors, known = self.item_vectors_, self._known_rows()
            if len(vectors) > TABLE_LIMIT:
                self._table = None  # grown past the limit: search the index from now on
                return
            changed = np.unique(np.asarray(ids, np.int64).ravel())
            self._table = updated_neighbour_table(table, vectors, known, changed)

    # ---- recall --------------------------------------------------------------------
    def _recall_block(self, batch, k, history, allowed, exclude_seen) -> Candidates:
        table = self._table  # one snapshot for the whole block
        items, weights = self._recent(batch, history)
        row, query_items, w = _distinct_queries(items, weights)
        if table is None:
            return self._query(row, self.item_vectors_[query_items], w, query_items,
                               batch, k, history, allowed, exclude_seen)
        # items that got a vector after this table was made do not query it (a recall
        # racing add_items): as for items the channel has no vector for
        inside = query_items < len(table.known)
        inside[inside] = table.known[query_items[inside]]
        row, query_items, w = row[inside], query_items[inside], w[inside]
        top, vals, ev = self._table_query(table, row, query_items, w, batch, k, history,
                                          allowed, exclude_seen)
        return self._with_fallback(row, top, vals, ev, k, allowed)

    def _table_query(self, table: NeighbourTable, row: np.ndarray, query_items: np.ndarray,
                     weights: np.ndarray, batch: np.ndarray, k: int, history: Histories,
                     allowed: np.ndarray | None, exclude_seen: bool
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The dense path's answer from the table rows of the queries: each query's entries
        scored ``weight * cos``, merged per (row, item) by max, masked like
        :meth:`_dense_query` (unknown, not allowed, seen) and cut to the top ``k``.

        Args:
            row: int64[q] ascending; query_items: int32[q] ascending within a row (as
                :func:`_distinct_queries` gives them); weights: float32[q].
        Returns:
            ``ids int32[rows, k]``, ``scores float32[rows, k]``, ``evidence int32[rows, k]``
            (the query item attaining the score; on an exact tie one of the tied items).
        """
        n_rows, k = len(batch), max(int(k), 0)
        n = len(table.ids)
        top = np.full((n_rows, k), -1, np.int32)
        vals = np.full((n_rows, k), -np.inf, np.float32)
        ev = np.full((n_rows, k), -1, np.int32)
        if k == 0 or len(row) == 0:
            return top, vals, ev
        neighbours = table.ids[query_items]  # int32[q, W]
        scored = table.cos[query_items] * weights[:, None]  # float32[q, W]
        if not exclude_seen:  # the query item itself is a candidate (cos with itself)
            own = self.item_vectors_[query_items]  # known: query items are known rows
            neighbours = np.concatenate([neighbours, query_items[:, None].astype(np.int32)], axis=1)
            scored = np.concatenate([scored, (np.einsum("qd,qd->q", own, own) * weights)[:, None]],
                                    axis=1)
        # merge by max into a dense [rows, n + 1] block. Column n is a sink for the -1
        # padding: entry (r, -1) lands on flat index r * (n + 1) - 1, the sink of row r - 1
        # (row 0's wraps around to the last row's sink), and the sinks are dropped.
        width = n + 1
        flat = (row[:, None] * width + neighbours).ravel()
        scored = scored.ravel()
        scores = np.full(n_rows * width, -np.inf, np.float32)
        np.maximum.at(scores, flat, scored)
        # evidence: a query attaining the item's max. Written in reverse query order, so that
        # on an exact tie the lowest query item (the dense path's pick) normally stays.
        win = np.flatnonzero(scored == scores[flat])[::-1]
        source = np.full(n_rows * width, -1, np.int32)
        source[flat[win]] = query_items[win // neighbours.shape[1]]
        scores = scores.reshape(n_rows, width)[:, :n]
        if allowed is not None:
            columns = np.zeros(n, bool)
            given = np.asarray(allowed, bool)[:n]
            columns[:len(given)] = given
            scores[:, ~columns] = -np.inf
        if exclude_seen:
            r, c = history.entries(batch)
            inside = c < n
            scores[r[inside], c[inside]] = -np.inf
        top, vals = topk(scores, k)
        found = source.reshape(n_rows, width)[np.arange(n_rows)[:, None], np.maximum(top, 0)]
        ev = np.where(top >= 0, found, -1).astype(np.int32)
        return top, vals, ev


@register
class SemanticUserInterest(_TextIndexChannel, CachesUsers):
    """Items closest to the user's interest vectors in text-embedding space.

    The last ``recent`` history embeddings, weighted by ``recency_decay**age``, form one
    user vector (their weighted mean). When the history is diverse and long enough, weighted
    spherical
    k-means splits it into up to ``n_interests`` interest vectors; each retrieves its own
    neighbours, scored ``cos * share**share_power`` (share = the interest's weight share),
    and the lists are merged by max. Evidence = the history item nearest the interest.
    ``n_interests=1`` is the plain "recency-weighted mean of history embeddings" baseline.

    Diversity is ``1 - |weighted mean|`` of the history's unit vectors *relative to the same
    quantity over the whole catalog* (``catalog_spread_``): embedders differ several-fold in
    how spread out they place texts (all-MiniLM: 0.34 on ml-100k; multilingual-e5: 0.066), so
    an absolute threshold would mean something else for each. ``diversity_threshold = 0.7``
    splits a history at least 70% as spread out as the catalog itself.

    ``user_cache`` (set by the service, None offline) keeps each user's :meth:`interests`
    while the history version and ``item_vectors_`` are unchanged
    (:mod:`llmrecall.channels.user_cache`).
    """

    kind: ClassVar[str] = "semantic_user"
    evidence_template: ClassVar[str] = "matches your interest in things like {evidence}"

    def __init__(self, embedder: str = DEFAULT_EMBEDDER, recent: int = 50,
                 recency_decay: float = 0.95, n_interests: int = 3,
                 diversity_threshold: float = 0.7, share_power: float = 0.5,
                 kmeans_iters: int = 10, index_kind: str = "auto",
                 index_params: dict | None = None, name: str | None = None):
        super().__init__(name)
        if recent < 1 or n_interests < 1:
            raise ConfigError("semantic_user: recent and n_interests must be >= 1")
        if not 0 < recency_decay <= 1:
            raise ConfigError(f"semantic_user: recency_decay must be in (0, 1], got {recency_decay}")
        self.embedder, self.recent, self.recency_decay = embedder, recent, recency_decay
        self.n_interests, self.diversity_threshold = n_interests, diversity_threshold
        self.share_power, self.kmeans_iters, self.index_kind = share_power, kmeans_iters, index_kind
        self.index_params = _check_index_params("semantic_user", index_params, index_kind)

    def fit_vectors(self, item_vectors: np.ndarray, item_popularity: np.ndarray, *,
                    index: VectorSearch | None = None) -> SemanticUserInterest:
        super().fit_vectors(item_vectors, item_popularity, index=index)
        spread = 1.0 - float(np.linalg.norm(self.item_vectors_.mean(axis=0)))
        self.catalog_spread_ = np.array(max(spread, 1e-6), np.float32)  # 0-d: saved with the state
        return self

    def interests(self, batch: np.ndarray, history: Histories):
        """Interest vectors of a block of users.

        Returns ``centroids float32[n, C, d]`` (unit length), ``share float32[n, C]`` (weight
        share of each interest, 0 = unused slot) and ``evidence int32[n, C]`` (the history
        item nearest each interest, -1 for unused slots).
        """
        items, weights = self._recent(batch, history)
        n, length = items.shape
        emb = self.item_vectors_[np.maximum(items, 0)] * (items >= 0)[..., None]  # [n, L, d]
        total = weights.sum(axis=1)
        mean = np.einsum("nl,nld->nd", weights, emb) / np.maximum(total, 1e-12)[:, None]
        diversity = (1.0 - np.linalg.norm(mean, axis=1)) / float(self.catalog_spread_)
        distinct = _distinct_counts(items)
        c = self.n_interests
        multi = (c > 1) & (diversity > self.diversity_threshold) & (distinct >= 2 * c)
        centroids = np.zeros((n, c, emb.shape[2]), np.float32)
        share = np.zeros((n, c), np.float32)
        centroids[:, 0] = unit_rows(mean)
        share[:, 0] = (total > 0)
        if multi.any():
            cm, sm = _weighted_spherical_kmeans(emb[multi], weights[multi], c, self.kmeans_iters)
            centroids[multi], share[multi] = cm, sm
        sims = np.einsum("nld,ncd->nlc", emb, centroids)
        sims[items < 0] = -np.inf
        nearest = np.argmax(sims, axis=1)  # [n, C]
        evidence = np.where(share > 0, np.take_along_axis(items, nearest, axis=1), -1)
        return centroids, share, evidence.astype(np.int32)

    def _recall_block(self, batch, k, history, allowed, exclude_seen) -> Candidates:
        # item_vectors_ (replaced by add_items) is what interests reads besides the history
        centroids, share, evidence = cached_user_states(
            self.user_cache, batch, history, self.item_vectors_,
            lambda pos: self.interests(batch[pos], history))
        row, slot = np.nonzero(share > 0)
        weights = share[row, slot] ** self.share_power
        return self._query(row, centroids[row, slot], weights.astype(np.float32),
                           evidence[row, slot], batch, k, history, allowed, exclude_seen)

    def recall(self, users: np.ndarray, k: int, history: Histories, *,
               allowed: np.ndarray | None = None, exclude_seen: bool = True,
               explain: bool = False, block: int = 512) -> Candidates:
        """See :meth:`_TextIndexChannel.recall`; the evidence of each candidate is the history
        item that adds most to its score (:meth:`member_evidence`), not the one nearest the
        interest, which would be the same item for every candidate of that interest."""
        out = super().recall(users, k, history, allowed=allowed, exclude_seen=exclude_seen,
                             explain=explain, block=block)
        if explain and len(out.ids):
            users = np.asarray(users, dtype=np.int32)
            # rows per step: the [rows, k, d] candidate vectors stay near 16 MB
            step = max(1, 4_000_000 // max(out.ids.shape[1] * self.item_vectors_.shape[1], 1))
            out.evidence = np.concatenate([
                self.member_evidence(users[s:s + step], out.ids[s:s + step], history)
                for s in range(0, len(users), step)])
        return out

    def member_evidence(self, batch: np.ndarray, ids: np.ndarray,
                        history: Histories) -> np.ndarray:
        """int32[n, k]: for each candidate of ``ids`` (int32[n, k], -1 padded), the history
        item contributing most to its score, -1 where none is known.

        A candidate's score is ``share**share_power * cos(interest, e_c)`` for its best
        interest, and an interest is the weighted mean of its history items' unit vectors,
        so ``cos(interest, e_c)`` is proportional to ``sum_h w_h * (e_h . e_c)`` over the
        interest's items: the evidence is the argmax of ``w_h * (e_h . e_c)`` over the items
        of the interest that scores the candidate best (an item belongs to the interest it is
        nearest to; with one interest, the whole recent history).
        """
        vectors = self.item_vectors_
        # the states recall() just read or stored: a second read, not counted as a lookup
        centroids, share, _ = cached_user_states(
            self.user_cache, batch, history, vectors,
            lambda pos: self.interests(batch[pos], history), count=False)
        items, weights = self._recent(batch, history)
        known = (ids >= 0) & (ids < len(vectors))
        cand = vectors[np.where(known, ids, 0)]  # [n, k, d]
        emb = vectors[np.maximum(items, 0)]  # [n, L, d]
        # the interest scoring each candidate best (as the merge by max in _query)
        boost = np.where(share > 0, share ** self.share_power, 0.0)  # [n, C]
        per_interest = np.einsum("nkd,ncd->nkc", cand, centroids) * boost[:, None, :]
        per_interest[np.broadcast_to((share <= 0)[:, None, :], per_interest.shape)] = -np.inf
        best = np.argmax(per_interest, axis=2)  # [n, k]
        # each history item's interest: the nearest one in use
        near = np.einsum("nld,ncd->nlc", emb, centroids)
        near[np.broadcast_to((share <= 0)[:, None, :], near.shape)] = -np.inf
        member_of = np.argmax(near, axis=2)  # [n, L]
        gain = np.einsum("nkd,nld->nkl", cand, emb) * weights[:, None, :]
        usable = (items >= 0)[:, None, :] & (member_of[:, None, :] == best[:, :, None])
        gain = np.where(usable, gain, -np.inf)
        pick = np.argmax(gain, axis=2)
        found = np.take_along_axis(gain, pick[..., None], axis=2)[..., 0] > 0
        chosen = np.take_along_axis(items, pick, axis=1)
        return np.where(known & found, chosen, -1).astype(np.int32)


def _distinct_counts(items: np.ndarray) -> np.ndarray:
    """int64[n] number of distinct non-negative ids per row of int32[n, L]."""
    srt = np.sort(items, axis=1)
    new = np.ones_like(srt, bool)
    new[:, 1:] = srt[:, 1:] != srt[:, :-1]
    return (new & (srt >= 0)).sum(axis=1)


def _weighted_spherical_kmeans(emb: np.ndarray, weights: np.ndarray, c: int,
                               iters: int) -> tuple[np.ndarray, np.ndarray]:
    """Batched weighted spherical k-means, all users at once.

    Args:
        emb: float32[n, L, d] unit vectors (zero rows = padding, with weight 0).
        weights: float32[n, L].
        c: clusters per user.
    Returns:
        ``centroids float32[n, c, d]`` unit vectors and ``share float32[n, c]`` (cluster
        weight / total weight; 0 for a cluster that ended empty). Deterministic: seeded by
        farthest-point selection starting from the newest item.
    """
    n, length, d = emb.shape
    valid = weights > 0
    rows = np.arange(n)
    newest = length - 1 - np.argmax(valid[:, ::-1], axis=1)
    centroids = np.zeros((n, c, d), np.float32)
    centroids[:, 0] = emb[rows, newest]
    best = np.einsum("nld,nd->nl", emb, centroids[:, 0])
    for j in range(1, c):
        # farthest point from the centroids chosen so far
        pick = np.argmin(np.where(valid, best, np.inf), axis=1)
        centroids[:, j] = emb[rows, pick]
        best = np.maximum(best, np.einsum("nld,nd->nl", emb, centroids[:, j]))
    for _ in range(iters):
        assign = np.argmax(np.einsum("nld,ncd->nlc", emb, centroids), axis=2)  # [n, L]
        onehot = (assign[..., None] == np.arange(c)) * weights[..., None]  # [n, L, c]
        sums = np.einsum("nlc,nld->ncd", onehot, emb)
        centroids = np.where(np.linalg.norm(sums, axis=2, keepdims=True) > 0, unit_rows(sums), centroids)
    assign = np.argmax(np.einsum("nld,ncd->nlc", emb, centroids), axis=2)
    onehot = (assign[..., None] == np.arange(c)) * weights[..., None]
    share = onehot.sum(axis=1) / np.maximum(weights.sum(axis=1, keepdims=True), 1e-12)
    return centroids.astype(np.float32), share.astype(np.float32)
