"""Inner-product vector search in Milvus, through ``pymilvus``'s ``MilvusClient``.

:class:`MilvusIndex` has the API of :class:`~llmrecall.index.faiss_index.VectorIndex` (the
:class:`~llmrecall.index.base.VectorSearch` interface): int64 ids, ``search`` returning
``ids int64[q, k]`` / ``scores float32[q, k]`` padded with -1 / -inf, ``add`` (an existing id
is replaced: an upsert), ``remove``, ``len``. The collection lives in Milvus; ``save`` writes
only where it is (``index.json``: URI, collection name, dimension, index type), and ``load``
reconnects to it. The same code talks to Milvus Lite (a local ``.db`` file, run in-process by
the ``milvus-lite`` package) and to a Milvus server or cluster (``http://host:port``).

URIs (:func:`parse_uri`):

* ``milvus://PATH.db`` or a bare ``PATH.db``: Milvus Lite on that file (relative paths are
  made absolute, so a saved artifact names the same file from any working directory);
* ``http://host:port``, ``https://host:port``, or ``milvus://host:port`` (= ``http://``): a
  server;
* ``$NAME``: the URI is read from that environment variable (also at every load: an
  artifact saved with it names no machine).

A server's token (``user:password`` or an API key) comes from the environment variable
``LLMRECALL_MILVUS_TOKEN``, never from a file.

Metric: inner product ("IP"). On unit vectors it is the cosine, the score FAISS gives; a
``FLAT`` collection answers exactly like ``VectorIndex(kind="flat")`` (scores equal up to
float rounding). ``HNSW`` / ``IVF_FLAT`` take their build parameters from ``build_params``
and their search breadth from ``search_params`` (``{"ef": ...}`` / ``{"nprobe": ...}``).

Per-query exclusions and the allow mask are applied as in ``VectorIndex``: over-fetch, filter
here, search again with a larger fetch for queries that came back short. Milvus caps one
search at :data:`MAX_FETCH` hits; a query still short at that size is searched once more
with the exclusions written into a Milvus filter expression, so filtering never loses a
result exact search would return.

Consistency: collections are created with ``consistency_level="Strong"``, so an ``add`` or
``remove`` is visible to the next search, from this process or any other.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from llmrecall.errors import ConfigError, DataError
from llmrecall.index.faiss_index import VectorIndex, _pair_keys, check_additions, check_vectors

#: the environment variable holding the server token (never stored in an artifact)
TOKEN_ENV = "LLMRECALL_MILVUS_TOKEN"
#: Milvus's default cap on hits per query (``quotaAndLimits.limits.topK``)
MAX_FETCH = 16_384
#: rows per insert/upsert/get call: 2,048 x 384 float32 = 3 MB, well under gRPC's 64 MB
WRITE_BATCH = 2_048
#: queries per search call
SEARCH_BATCH = 256
INDEX_TYPES = ("FLAT", "HNSW", "IVF_FLAT", "AUTOINDEX")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,254}$")


def parse_uri(uri: str) -> str:
    """The ``MilvusClient`` URI of ``uri``: an absolute ``.db`` path (Milvus Lite) or an
    ``http(s)://host:port`` address; :class:`ConfigError` for anything else."""
    raw = str(uri).strip()
    rest = raw[len("milvus://"):] if raw.startswith("milvus://") else None
    if raw.startswith(("http://", "https://")):
        if not re.match(r"^https?://[^/:\s]+(:\d+)?/?$", raw):
            raise ConfigError(f"milvus URI {uri!r}: expected http(s)://host:port")
        return raw.rstrip("/")
    path = rest if rest is not None else raw
    if path.endswith(".db"):
        return str(Path(path).expanduser().resolve())
    if rest is not None and re.match(r"^[^/:\s]+:\d+$", rest):
        return f"http://{rest}"
    raise ConfigError(f"milvus URI {uri!r}: expected milvus://PATH.db or PATH.db (Milvus Lite), "
                      "or http(s)://host:port / milvus://host:port (a Milvus server)")


def _resolve(uri: str) -> str:
    """``uri``, or the value of the environment variable it names as ``$NAME``."""
    if not str(uri).startswith("$"):
        return str(uri)
    value = os.environ.get(str(uri)[1:])
    if not value:
        raise ConfigError(f"milvus URI {uri!r} names an environment variable that is not set")
    return value


def is_lite(uri: str) -> bool:
    """Whether a parsed URI names a Milvus Lite file."""
    return not uri.startswith(("http://", "https://"))


def _client(uri: str):
    """A connected ``MilvusClient``; a :class:`ConfigError` naming the URI if it cannot connect."""
    try:
        from pymilvus import MilvusClient
    except ImportError as e:  # the optional extra
        raise ConfigError("the Milvus index needs pymilvus: pip install 'llmrecall[milvus]'") from e
    if is_lite(uri):
        Path(uri).parent.mkdir(parents=True, exist_ok=True)
    token = os.environ.get(TOKEN_ENV, "")
    try:
        return MilvusClient(uri=uri, token=token, timeout=10)
    except Exception as e:  # pymilvus raises MilvusException or grpc errors
        raise ConfigError(f"cannot connect to Milvus at {uri}: {e}") from e


class MilvusIndex:
    """Maximum inner-product search over int64-id'd float32 vectors in a Milvus collection.

    Args:
        dim: vector dimension.
        uri: where Milvus is (see :func:`parse_uri`).
        collection: the collection's name (letters, digits, underscores; not starting with a
            digit). An existing collection of the same dimension is used as it is.
        index_type: "FLAT" (exact), "HNSW", "IVF_FLAT" or "AUTOINDEX".
        build_params: the index's build parameters (HNSW ``M``, ``efConstruction``; IVF
            ``nlist``).
        search_params: search breadth (HNSW ``ef``, IVF ``nprobe``); may be changed between
            searches.
        replace: drop an existing collection of that name first (a fit that owns it).
    """

    kind = "milvus"

    def __init__(self, dim: int, uri: str, collection: str, *, index_type: str = "FLAT",
                 build_params: dict | None = None, search_params: dict | None = None,
                 replace: bool = False, _create: bool = True):
        if dim <= 0:
            raise ConfigError(f"index dimension must be positive, got {dim}")
        if index_type not in INDEX_TYPES:
            raise ConfigError(f"unknown milvus index_type {index_type!r}; known: {list(INDEX_TYPES)}")
        if not _NAME.match(str(collection)):
            raise ConfigError(f"milvus collection name {collection!r}: letters, digits and "
                              "underscores, not starting with a digit")
        # "$NAME": the URI is read from that environment variable, here and at every load
        self.uri_setting = str(uri)
        self.dim, self.uri, self.collection = int(dim), parse_uri(_resolve(uri)), str(collection)
        self.index_type = index_type
        self.build_params = dict(build_params or {})
        self.search_params = dict(search_params or {})
        self._client = _client(self.uri)
        exists = self._client.has_collection(self.collection)
        if exists and replace:
            self._client.drop_collection(self.collection)
            exists = False
        if exists:
            self._check_existing()
        elif _create:
            self._create()
        else:
            raise DataError(f"milvus collection {self.collection!r} does not exist at {self.uri}")

    def _create(self) -> None:
        from pymilvus import DataType, MilvusClient
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=self.dim)
        params = self._client.prepare_index_params()
        params.add_index(field_name="vector", index_type=self.index_type, metric_type="IP",
                         params=self.build_params)
        self._client.create_collection(self.collection, schema=schema, index_params=params,
                                       consistency_level="Strong")

    def _check_existing(self) -> None:
        info = self._client.describe_collection(self.collection)
        fields = {f["name"]: f for f in info.get("fields", [])}
        dim = fields.get("vector", {}).get("params", {}).get("dim")
        if "id" not in fields or dim is None:
            raise DataError(f"milvus collection {self.collection!r} at {self.uri} has no "
                            "'id' / 'vector' fields: not a llmrecall vector index")
        if int(dim) != self.dim:
            raise DataError(f"milvus collection {self.collection!r} holds vectors of dim {dim}, "
                            f"expected {self.dim}")
        self._client.load_collection(self.collection)

    # ---- contents --------------------------------------------------------------------
    def __len__(self) -> int:
        """Number of live (searchable) vectors."""
        rows = self._client.query(self.collection, filter="", output_fields=["count(*)"])
        return int(rows[0]["count(*)"])

    @property
    def ids(self) -> np.ndarray:
        """int64[len(self)] the live ids, ascending."""
        it = self._client.query_iterator(self.collection, batch_size=10_000, filter="id >= 0",
                                         output_fields=["id"])
        parts = []
        try:
            while batch := it.next():
                parts.append(np.fromiter((r["id"] for r in batch), np.int64, len(batch)))
        finally:
            it.close()
        return np.sort(np.concatenate(parts)) if parts else np.zeros(0, np.int64)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Insert ``vectors`` float32[n, dim] under ``ids`` int64[n]; existing ids are replaced."""
        ids, vectors = check_additions(ids, vectors, self.dim)
        for s in range(0, len(ids), WRITE_BATCH):
            rows = [{"id": int(i), "vector": v} for i, v in
                    zip(ids[s:s + WRITE_BATCH].tolist(), vectors[s:s + WRITE_BATCH])]
            self._client.upsert(self.collection, rows)

    def flush(self) -> None:
        """Seal what was added so far into indexed segments. Until then Milvus searches new
        rows by brute force in growing segments (on Milvus Lite ~200 ms a query at 5,000 x
        384, ~30 ms after the flush); call after a bulk load, not after each small add."""
        self._client.flush(self.collection)

    def _present(self, ids: np.ndarray) -> np.ndarray:
        """The ``ids`` (distinct int64) that are in the collection."""
        found: list[int] = []
        for s in range(0, len(ids), WRITE_BATCH):
            part = ids[s:s + WRITE_BATCH].tolist()
            rows = self._client.query(self.collection, filter=f"id in {part}",
                                      output_fields=["id"], limit=len(part))
            found.extend(r["id"] for r in rows)
        return np.array(sorted(found), np.int64)

    def remove(self, ids: np.ndarray) -> int:
        """Remove ``ids`` (unknown ids are ignored). Returns how many were removed."""
        ids = np.unique(np.asarray(ids, dtype=np.int64).ravel())
        live = self._present(ids[ids >= 0])
        for s in range(0, len(live), WRITE_BATCH):
            self._client.delete(self.collection, ids=live[s:s + WRITE_BATCH].tolist())
        return len(live)

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        """float32[n, dim] the stored vectors of live ``ids``."""
        ids = np.asarray(ids, dtype=np.int64).ravel()
        got: dict[int, Any] = {}
        for s in range(0, len(ids), WRITE_BATCH):
            for row in self._client.get(self.collection, ids=ids[s:s + WRITE_BATCH].tolist(),
                                        output_fields=["vector"]):
                got[int(row["id"])] = row["vector"]
        missing = [int(i) for i in ids if int(i) not in got]
        if missing:
            raise DataError(f"vectors(): ids not in the index: {missing[:5]}")
        return (np.array([got[int(i)] for i in ids], np.float32) if len(ids)
                else np.zeros((0, self.dim), np.float32))

    # ---- search ----------------------------------------------------------------------
    def search(self, queries: np.ndarray, k: int, *, exclude: sp.spmatrix | list | None = None,
               allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` ids by inner product for each query; see :meth:`VectorIndex.search`.

        Args:
            queries: float32[q, dim].
            k: hits per query.
            exclude: ids never returned for a query (sparse [q, >max id] or q int arrays).
            allowed: bool mask over ids; ids past its end are not allowed.
        Returns:
            ``ids int64[q, k]`` (padded -1) and ``scores float32[q, k]`` (padded -inf), best
            first.
        """
        queries = check_vectors(queries, self.dim, "queries")
        q = len(queries)
        ids_out = np.full((q, max(k, 0)), -1, np.int64)
        scores_out = np.full((q, max(k, 0)), -np.inf, np.float32)
        if k <= 0 or q == 0:
            return ids_out, scores_out
        exclude_keys, n_excl = VectorIndex._exclusion_keys(exclude, q)
        allowed = None if allowed is None else np.asarray(allowed, dtype=bool)
        fetch = min(MAX_FETCH, k + int(n_excl.max() if len(n_excl) else 0))
        todo = np.arange(q)
        while len(todo):
            hit_ids, hit_scores = self._raw_search(queries[todo], fetch)
            # fewer hits than asked: the whole collection came back
            exhausted = (hit_ids >= 0).sum(axis=1) < fetch
            keep = _keep_mask(todo, hit_ids, exclude_keys, allowed)
            order = np.argsort(~keep, axis=1, kind="stable")[:, :k]
            got_ids = np.take_along_axis(hit_ids, order, axis=1)
            got_scores = np.take_along_axis(hit_scores, order, axis=1)
            got_keep = np.take_along_axis(keep, order, axis=1)
            got_ids[~got_keep] = -1
            got_scores[~got_keep] = -np.inf
            width = got_ids.shape[1]
            ids_out[todo, :width], scores_out[todo, :width] = got_ids, got_scores
            short = (got_keep.sum(axis=1) < k) & ~exhausted
            todo = todo[short]
            if fetch >= MAX_FETCH:
                for row in todo:  # past Milvus's cap: the filters go to Milvus itself
                    ids_out[row], scores_out[row] = self._filtered_search(
                        queries[row], k, exclude_keys, int(row), allowed)
                break
            fetch = min(MAX_FETCH, fetch * 4)
        return ids_out, scores_out

    def _params(self, fetch: int) -> dict:
        params = dict(self.search_params)
        if self.index_type == "HNSW":  # Milvus refuses an ef below the number of hits
            params["ef"] = max(int(params.get("ef", 0)), fetch)
        return {"metric_type": "IP", "params": params}

    def _raw_search(self, queries: np.ndarray, fetch: int) -> tuple[np.ndarray, np.ndarray]:
        ids = np.full((len(queries), fetch), -1, np.int64)
        scores = np.full((len(queries), fetch), -np.inf, np.float32)
        for s in range(0, len(queries), SEARCH_BATCH):
            hits = self._client.search(
                self.collection, data=list(queries[s:s + SEARCH_BATCH]), limit=fetch,
                output_fields=[], search_params=self._params(fetch))
            for r, row in enumerate(hits, start=s):
                n = len(row)
                ids[r, :n] = [h["id"] for h in row]
                scores[r, :n] = [h["distance"] for h in row]
        return ids, scores

    def _filtered_search(self, query: np.ndarray, k: int, exclude_keys: np.ndarray | None,
                         row: int, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """One query with its exclusions and the allow mask as a Milvus filter expression."""
        terms = []
        if exclude_keys is not None and len(exclude_keys):
            lo, hi = np.searchsorted(exclude_keys, _pair_keys(np.array([row, row + 1]), np.zeros(2)))
            banned = (exclude_keys[lo:hi] & ((1 << 40) - 1)).tolist()
            if banned:
                terms.append(f"id not in {banned}")
        if allowed is not None:
            yes = np.flatnonzero(allowed)
            terms.append(f"id in {yes.tolist()}" if 2 * len(yes) < len(allowed) else
                         f"id < {len(allowed)} and id not in {np.flatnonzero(~allowed).tolist()}")
        hits = self._client.search(
            self.collection, data=[query], limit=min(k, MAX_FETCH), output_fields=[],
            filter=" and ".join(f"({t})" for t in terms),
            search_params=self._params(min(k, MAX_FETCH)))[0]
        ids = np.full(k, -1, np.int64)
        scores = np.full(k, -np.inf, np.float32)
        ids[:len(hits)] = [h["id"] for h in hits]
        scores[:len(hits)] = [h["distance"] for h in hits]
        return ids, scores

    # ---- persistence -----------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """``index.json``: where the collection is. The vectors stay in Milvus."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        uri = self.uri_setting if self.uri_setting.startswith("$") else self.uri
        meta = {"kind": self.kind, "dim": self.dim, "uri": uri,
                "collection": self.collection, "index_type": self.index_type,
                "build_params": self.build_params, "search_params": self.search_params}
        (directory / "index.json").write_text(json.dumps(meta, indent=2))
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> MilvusIndex:
        """Reconnect to the collection a :meth:`save` names; :class:`DataError` if it is gone."""
        path = Path(directory) / "index.json"
        if not path.is_file():
            raise DataError("vector index file missing", path=str(path))
        meta = json.loads(path.read_text())
        if meta.get("kind") != cls.kind:
            raise DataError(f"not a milvus index (kind {meta.get('kind')!r})", path=str(path))
        return cls(meta["dim"], meta["uri"], meta["collection"], index_type=meta["index_type"],
                   build_params=meta["build_params"], search_params=meta["search_params"],
                   _create=False)


def _keep_mask(rows: np.ndarray, hit_ids: np.ndarray, exclude_keys: np.ndarray | None,
               allowed: np.ndarray | None) -> np.ndarray:
    """bool[q, h]: hits that are real, allowed and not excluded for their query row."""
    keep = hit_ids >= 0
    if allowed is not None:
        inside = (hit_ids >= 0) & (hit_ids < len(allowed))
        ok = np.zeros_like(keep)
        ok[inside] = allowed[hit_ids[inside]]
        keep &= ok
    if exclude_keys is not None and len(exclude_keys):
        keys = _pair_keys(np.broadcast_to(rows[:, None], hit_ids.shape), hit_ids)
        pos = np.minimum(np.searchsorted(exclude_keys, keys), len(exclude_keys) - 1)
        keep &= exclude_keys[pos] != keys
    return keep
