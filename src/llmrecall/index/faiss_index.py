"""Inner-product vector search over FAISS, in-process.

One class, three backends chosen by ``kind``:

* ``"flat"``: exact search, ``IndexFlatIP`` inside ``IndexIDMap2`` (native add/remove by id).
  The right choice below a few hundred thousand vectors.
* ``"hnsw"``: ``IndexHNSWFlat`` (inner product) inside ``IndexIDMap2``. FAISS cannot remove
  from an HNSW graph, so removed ids go into a deleted-id set that search filters out; the
  graph is rebuilt from the surviving vectors once deleted entries exceed
  ``rebuild_fraction`` of the index (and whenever an id is added again).
* ``"ivf"``: ``IndexIVFFlat`` (inner product) with ``add_with_ids``; trained on the first
  batch added, so that batch must hold at least ``nlist`` vectors.

Ids are arbitrary int64 >= 0. Per-query exclusions and a global allow mask are applied by
over-fetching and filtering; a query that comes back short is searched again with a larger
fetch until it has ``k`` hits or the whole index has been fetched, so filtering never loses
results that exact search would have returned.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import cast

import faiss
import numpy as np
import scipy.sparse as sp

from llmrecall.errors import ConfigError, DataError

KINDS = ("flat", "hnsw", "ivf")
#: catalogs below this size get exact search from :func:`choose_kind`
EXACT_LIMIT = 200_000


def choose_kind(n_vectors: int) -> str:
    """``"flat"`` (exact) for small collections, ``"hnsw"`` above :data:`EXACT_LIMIT`."""
    return "flat" if n_vectors < EXACT_LIMIT else "hnsw"


class VectorIndex:
    """Maximum inner-product search over int64-id'd float32 vectors.

    Args:
        dim: vector dimension.
        kind: "flat" (exact), "hnsw" or "ivf".
        hnsw_m: HNSW graph degree.
        ef_construction / ef_search: HNSW build and search breadth.
        nlist / nprobe: IVF cells and cells visited per query.
        rebuild_fraction: HNSW rebuilds once this share of its entries is deleted.
    """

    def __init__(self, dim: int, kind: str = "flat", *, hnsw_m: int = 32,
                 ef_construction: int = 200, ef_search: int = 128, nlist: int = 256,
                 nprobe: int = 16, rebuild_fraction: float = 0.2):
        if kind not in KINDS:
            raise ConfigError(f"unknown index kind {kind!r}; known: {list(KINDS)}")
        if dim <= 0:
            raise ConfigError(f"index dimension must be positive, got {dim}")
        self.dim, self.kind = int(dim), kind
        self.hnsw_m, self.ef_construction, self.ef_search = hnsw_m, ef_construction, ef_search
        self.nlist, self.nprobe, self.rebuild_fraction = nlist, nprobe, rebuild_fraction
        self._index = self._new_index()
        self._deleted = np.zeros(0, np.int64)  # sorted ids hidden from search (hnsw only)

    # ---- construction ----------------------------------------------------------------
    # The concrete class of _index follows from kind (faiss.read_index returns the concrete
    # class too): IndexIDMap2 for "flat" and "hnsw", IndexIVFFlat for "ivf". The casts below
    # rely on that; faiss's stubs type every index as the base faiss.Index.
    def _new_index(self) -> faiss.Index:
        if self.kind == "flat":
            return faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))
        if self.kind == "hnsw":
            inner = faiss.IndexHNSWFlat(self.dim, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            inner.hnsw.efConstruction = self.ef_construction
            inner.hnsw.efSearch = self.ef_search
            return faiss.IndexIDMap2(inner)
        quantizer = faiss.IndexFlatIP(self.dim)
        index = faiss.IndexIVFFlat(quantizer, self.dim, self.nlist, faiss.METRIC_INNER_PRODUCT)
        index.nprobe = self.nprobe
        return index

    def __len__(self) -> int:
        """Number of live (searchable) vectors."""
        return int(self._index.ntotal) - len(self._deleted)

    @property
    def ids(self) -> np.ndarray:
        """int64[len(self)] the live ids, in storage order."""
        stored = self._stored_ids()
        return stored[~np.isin(stored, self._deleted)]

    def _stored_ids(self) -> np.ndarray:
        if self.kind == "ivf":
            inv = cast(faiss.IndexIVFFlat, self._index).invlists
            assert inv is not None  # an IVF index always has its inverted lists
            parts = [faiss.rev_swig_ptr(inv.get_ids(c), inv.list_size(c)).copy()
                     for c in range(inv.nlist) if inv.list_size(c)]
            return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)
        return faiss.vector_to_array(cast(faiss.IndexIDMap2, self._index).id_map).astype(np.int64)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Insert ``vectors`` float32[n, dim] under ``ids`` int64[n]; existing ids are replaced."""
        ids, vectors = check_additions(ids, vectors, self.dim)
        if len(ids) == 0:
            return
        if self._index.ntotal:
            present = np.isin(ids, self._stored_ids())
            if present.any():
                self._drop_stored(ids[present])
        if self.kind == "ivf" and not self._index.is_trained:
            if len(vectors) < self.nlist:
                raise DataError(f"ivf index needs >= nlist={self.nlist} vectors in its first add, "
                                f"got {len(vectors)}")
            self._index.train(vectors)
        self._index.add_with_ids(vectors, ids)

    def _drop_stored(self, ids: np.ndarray) -> None:
        """Physically remove ``ids`` (replacement on add)."""
        if self.kind == "hnsw":
            self._deleted = np.union1d(self._deleted, ids)
            self._rebuild()
        else:
            self._index.remove_ids(faiss.IDSelectorBatch(ids))

    def remove(self, ids: np.ndarray) -> int:
        """Remove ``ids`` (unknown ids are ignored). Returns how many were removed."""
        ids = np.unique(np.asarray(ids, dtype=np.int64).ravel())
        live = ids[np.isin(ids, self.ids)]
        if len(live) == 0:
            return 0
        if self.kind == "hnsw":
            self._deleted = np.union1d(self._deleted, live)
            if len(self._deleted) > self.rebuild_fraction * self._index.ntotal:
                self._rebuild()
        else:
            self._index.remove_ids(faiss.IDSelectorBatch(live))
        return len(live)

    def _rebuild(self) -> None:
        """HNSW only: a fresh graph over the vectors whose ids are not deleted."""
        stored = self._stored_ids()
        keep = ~np.isin(stored, self._deleted)
        vectors = cast(faiss.IndexIDMap2, self._index).index.reconstruct_n(
            0, self._index.ntotal)[keep]
        self._index = self._new_index()
        self._deleted = np.zeros(0, np.int64)
        if keep.any():
            self._index.add_with_ids(np.ascontiguousarray(vectors), stored[keep])

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        """float32[n, dim] the stored vectors of live ``ids`` (flat and hnsw kinds)."""
        ids = np.asarray(ids, dtype=np.int64).ravel()
        if self.kind == "ivf":
            raise ConfigError("vectors() needs a flat or hnsw index")
        missing = ids[~np.isin(ids, self.ids)]
        if len(missing):
            raise DataError(f"vectors(): ids not in the index: {missing[:5].tolist()}")
        return np.stack([self._index.reconstruct(int(i)) for i in ids]) if len(ids) else \
            np.zeros((0, self.dim), np.float32)

    # ---- search ----------------------------------------------------------------------
    def search(self, queries: np.ndarray, k: int, *, exclude: sp.spmatrix | list | None = None,
               allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` ids by inner product for each query.

        Args:
            queries: float32[q, dim].
            k: hits per query.
            exclude: ids never returned for a query: a sparse matrix [q, >max id] whose
                nonzero columns are the excluded ids, or a list of q int arrays.
            allowed: bool[>= max id + 1]; only ids with True may be returned (ids past the
                end of the mask are not allowed).
        Returns:
            ``ids int64[q, k]`` (padded -1) and ``scores float32[q, k]`` (padded -inf),
            best first.
        """
        queries = check_vectors(queries, self.dim, "queries")
        q = len(queries)
        ids_out = np.full((q, max(k, 0)), -1, np.int64)
        scores_out = np.full((q, max(k, 0)), -np.inf, np.float32)
        if k <= 0 or q == 0 or len(self) == 0:
            return ids_out, scores_out
        exclude_keys, n_excl = self._exclusion_keys(exclude, q)
        allowed = None if allowed is None else np.asarray(allowed, dtype=bool)
        total = int(self._index.ntotal)
        fetch = min(total, k + len(self._deleted) + int(n_excl.max() if len(n_excl) else 0))
        todo = np.arange(q)
        while len(todo):
            hit_ids, hit_scores = self._raw_search(queries[todo], fetch)
            keep = self._keep_mask(todo, hit_ids, exclude_keys, allowed)
            # stable partition: kept hits first, in the order faiss ranked them
            order = np.argsort(~keep, axis=1, kind="stable")[:, :k]
            got_ids = np.take_along_axis(hit_ids, order, axis=1)
            got_scores = np.take_along_axis(hit_scores, order, axis=1)
            got_keep = np.take_along_axis(keep, order, axis=1)
            got_ids[~got_keep] = -1
            got_scores[~got_keep] = -np.inf
            width = got_ids.shape[1]
            ids_out[todo, :width], scores_out[todo, :width] = got_ids, got_scores
            short = got_keep.sum(axis=1) < k
            if fetch >= total or not short.any():
                break
            todo = todo[short]
            fetch = min(total, fetch * 4)
        return ids_out, scores_out

    def _raw_search(self, queries: np.ndarray, fetch: int) -> tuple[np.ndarray, np.ndarray]:
        if self.kind == "hnsw":
            # efSearch below the fetch size would cap the number of hits
            inner = cast(faiss.IndexHNSWFlat,
                         faiss.downcast_index(cast(faiss.IndexIDMap2, self._index).index))
            inner.hnsw.efSearch = max(self.ef_search, fetch)
        elif self.kind == "ivf":
            # may have been changed since construction
            cast(faiss.IndexIVFFlat, self._index).nprobe = self.nprobe
        scores, ids = self._index.search(queries, fetch)
        return ids.astype(np.int64), scores.astype(np.float32)

    def _keep_mask(self, rows: np.ndarray, hit_ids: np.ndarray, exclude_keys: np.ndarray | None,
                   allowed: np.ndarray | None) -> np.ndarray:
        keep = hit_ids >= 0
        if len(self._deleted):
            keep &= ~np.isin(hit_ids, self._deleted)
        if allowed is not None:
            inside = (hit_ids >= 0) & (hit_ids < len(allowed))
            ok = np.zeros_like(keep)
            ok[inside] = allowed[hit_ids[inside]]
            keep &= ok
        if exclude_keys is not None and len(exclude_keys):
            keys = _pair_keys(np.broadcast_to(rows[:, None], hit_ids.shape), hit_ids)
            # binary search in the sorted exclusion keys: cheaper than isin, which sorts both
            pos = np.minimum(np.searchsorted(exclude_keys, keys), len(exclude_keys) - 1)
            keep &= exclude_keys[pos] != keys
        return keep

    @staticmethod
    def _exclusion_keys(exclude, q: int) -> tuple[np.ndarray | None, np.ndarray]:
        """Sorted (query row, id) keys of every exclusion, and the count per query."""
        if exclude is None:
            return None, np.zeros(q, np.int64)
        if sp.issparse(exclude):
            # scipy-stubs: issparse() narrows to SparseABC, a base without the methods
            coo = exclude.tocoo()  # type: ignore[attr-defined]
            if coo.shape[0] != q:
                raise DataError(f"exclude has {coo.shape[0]} rows for {q} queries")
            rows, cols = coo.row.astype(np.int64), coo.col.astype(np.int64)
        else:
            if len(exclude) != q:
                raise DataError(f"exclude has {len(exclude)} entries for {q} queries")
            lens = np.array([len(e) for e in exclude], np.int64)
            rows = np.repeat(np.arange(q, dtype=np.int64), lens)
            cols = (np.concatenate([np.asarray(e, np.int64) for e in exclude])
                    if lens.sum() else np.zeros(0, np.int64))
        keys = _pair_keys(rows, cols)
        if len(keys) > 1 and not (keys[1:] >= keys[:-1]).all():  # CSR input is already sorted
            keys = np.sort(keys)
        return keys, np.bincount(rows, minlength=q)

    # ---- persistence -----------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """``index.faiss`` (faiss.write_index), ``index.json`` and ``deleted.npy``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        faiss.write_index(self._index, str(directory / "index.faiss"))
        meta = {"dim": self.dim, "kind": self.kind, "hnsw_m": self.hnsw_m,
                "ef_construction": self.ef_construction, "ef_search": self.ef_search,
                "nlist": self.nlist, "nprobe": self.nprobe,
                "rebuild_fraction": self.rebuild_fraction}
        (directory / "index.json").write_text(json.dumps(meta, indent=2))
        np.save(directory / "deleted.npy", self._deleted)
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> VectorIndex:
        directory = Path(directory)
        for name in ("index.faiss", "index.json", "deleted.npy"):
            if not (directory / name).is_file():
                raise DataError("vector index file missing", path=str(directory / name))
        meta = json.loads((directory / "index.json").read_text())
        dim, kind = meta.pop("dim"), meta.pop("kind")
        self = cls(dim, kind, **meta)
        self._index = faiss.read_index(str(directory / "index.faiss"))
        self._deleted = np.load(directory / "deleted.npy", allow_pickle=False).astype(np.int64)
        return self


def check_vectors(x: np.ndarray, dim: int, what: str) -> np.ndarray:
    """``x`` as C-contiguous float32[n, dim]; a DataError naming ``what`` for another shape or
    a NaN / infinite value (every vector index checks its input with this)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != dim:
        raise DataError(f"{what} must have shape [n, {dim}], got {list(x.shape)}")
    if not np.isfinite(x).all():
        raise DataError(f"{what} contain NaN or infinite values")
    return x


def check_additions(ids: np.ndarray, vectors: np.ndarray,
                    dim: int) -> tuple[np.ndarray, np.ndarray]:
    """``(ids int64[n], vectors float32[n, dim])`` of one ``add`` call, checked alike by every
    vector index: a DataError for mismatched lengths, a negative id (-1 is the padding id),
    an id repeated within the call, or what :func:`check_vectors` refuses."""
    ids = np.ascontiguousarray(ids, dtype=np.int64).ravel()
    vectors = check_vectors(vectors, dim, "vectors")
    if len(ids) != len(vectors):
        raise DataError(f"add: {len(ids)} ids for {len(vectors)} vectors")
    if (ids < 0).any():
        raise DataError("add: ids must be >= 0 (-1 is the padding id)")
    if len(np.unique(ids)) != len(ids):
        raise DataError("add: ids repeat within one call")
    return ids, vectors


def _pair_keys(rows: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """One int64 key per (row, id) pair; ids below 2**40 and rows below 2**23 keep it exact."""
    return (np.asarray(rows, np.int64) << 40) | np.asarray(ids, np.int64)
