"""Vector search in Milvus at serve time (``[state] vectors``), without rebuilding the artifact.

With ``[state] vectors = "milvus://host:port"`` every channel that declares
:class:`~llmrecall.channels.capabilities.SearchesVectors` (``semantic_i2i``,
``semantic_user``) searches a Milvus collection instead of the FAISS index its artifact
holds. :func:`attach_vectors` runs on every artifact load (start-up and reload), before the
items added at run time are replayed into the channels, so those go into the collection too.

Which collection: one per artifact version, channel and contents, named
``llmrecall_<channel>_<fingerprint>`` where the fingerprint is a hash of the artifact
version, the channel's name, the Milvus index settings and the channel's indexed ids and
vectors (:func:`fingerprint`). Replicas of one artifact compute the same name and share the
collection; a new artifact (or other index settings) gets a new one, so replicas still
serving the previous artifact keep theirs while the new one rolls out. Old collections are
left in place (drop them once no replica serves their artifact).

Filling, and replicas starting together. The name is a Milvus *alias*, created only once a
collection is whole:

1. if the alias exists, the collection behind it is complete: use it (no fill);
2. else fill a collection of one's own (``<name>_fill_<random>``) with the channel's indexed
   vectors, flush it, and check that it holds exactly that many rows;
3. then create the alias on it. Milvus creates an alias atomically and refuses an existing
   one: the first replica to finish wins; a replica that loses drops its own copy and uses
   the winner's.

So a collection is searched only once it is complete, two replicas never write the artifact's
rows into the same half-filled collection, and a replica that dies while filling leaves only
an unnamed ``_fill_`` collection behind, never a partial one under the shared name (the next
replica fills again). Items added at run time are upserts by dense item id into the
collection behind the alias: every replica adds the same id with the same text, so
replaying them at each start is harmless.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import uuid
from dataclasses import dataclass

import numpy as np

from llmrecall.channels.capabilities import SearchesVectors
from llmrecall.errors import ConfigError
from llmrecall.index import VectorIndex

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Attached:
    """Where one channel's vectors live: the shared name (an alias), whether this process
    filled the collection (False: it reused a complete one), and the vectors it holds from
    the artifact."""

    channel: str
    collection: str
    filled: bool
    rows: int


def milvus_settings(index, state) -> tuple[str, dict, dict]:
    """``(index_type, build_params, search_params)`` of the collection for a channel whose
    artifact index is ``index``: copied from the FAISS index with ``vectors_index_type =
    "auto"``, else the settings' own."""
    if state.vectors_index_type != "auto":
        return (state.vectors_index_type, dict(state.vectors_build_params),
                dict(state.vectors_search_params))
    if isinstance(index, VectorIndex) and index.kind == "hnsw":
        return "HNSW", {"M": index.hnsw_m, "efConstruction": index.ef_construction}, \
            {"ef": index.ef_search}
    if isinstance(index, VectorIndex) and index.kind == "ivf":
        return "IVF_FLAT", {"nlist": index.nlist}, {"nprobe": index.nprobe}
    return "FLAT", {}, {}


def fingerprint(version: str, channel: str, index_type: str, build_params: dict,
                ids: np.ndarray, vectors: np.ndarray) -> str:
    """16 hex digits naming one artifact's channel contents under one index setting."""
    h = hashlib.sha256()
    h.update(json.dumps([version, channel, index_type, build_params], sort_keys=True).encode())
    h.update(np.ascontiguousarray(ids, np.int64).tobytes())
    h.update(np.ascontiguousarray(vectors, np.float32).tobytes())
    return h.hexdigest()[:16]


def collection_name(channel: str, digest: str) -> str:
    return f"llmrecall_{re.sub(r'[^A-Za-z0-9_]', '_', channel)}_{digest}"


def attach_vectors(artifact, state) -> list[Attached]:
    """Point every :class:`SearchesVectors` channel of ``artifact`` at its shared Milvus
    collection (see the module docstring), filling it when no complete one exists.

    Args:
        artifact: a loaded :class:`~llmrecall.serve.artifacts.Artifact`.
        state: the :class:`~llmrecall.serve.settings.StateSettings`; nothing happens when
            ``state.vectors`` is unset.
    Returns:
        One :class:`Attached` per channel moved. Channels whose artifact index already is a
        Milvus collection (built with ``index_kind="milvus"``) are left as they are.
    Raises:
        ConfigError: naming ``[state] vectors`` when the URI is wrong or Milvus cannot be
        reached.
    """
    uri = state.resolved_vectors()
    if uri is None:
        return []
    attached = []
    for name, channel in artifact.pipeline.channels.items():
        if not isinstance(channel, SearchesVectors) or channel.index.kind == "milvus":
            continue
        attached.append(_attach(artifact.version, name, channel, uri, state))
    return attached


def _attach(version: str, name: str, channel: SearchesVectors, uri: str, state) -> Attached:
    from llmrecall.index.milvus_index import MilvusIndex, _client

    index_type, build, search = milvus_settings(channel.index, state)
    ids, vectors = channel.indexed_vectors()
    shared = collection_name(name, fingerprint(version, name, index_type, build, ids, vectors))
    dim = vectors.shape[1]

    def open_shared() -> MilvusIndex:
        return MilvusIndex(dim, uri, shared, index_type=index_type, build_params=build,
                           search_params=search, _create=False)

    try:
        client = _client(uri)
        filled = False
        if client.has_collection(shared):
            index = open_shared()
        else:
            staging = f"{shared}_fill_{uuid.uuid4().hex[:12]}"
            own = MilvusIndex(dim, uri, staging, index_type=index_type, build_params=build,
                              search_params=search)
            own.add(ids, vectors)
            own.flush()
            if len(own) != len(ids):  # never named while short
                client.drop_collection(staging)
                raise ConfigError(f"the collection filled for {name!r} holds {len(own)} of "
                                  f"{len(ids)} vectors")
            try:
                client.create_alias(staging, shared)
                filled = True
            except Exception as exc:  # another replica named its copy first: use that one
                if not client.has_collection(shared):
                    raise
                log.info("collection %s was completed by another process first (%s); "
                         "dropping this one's copy", shared, exc)
                client.drop_collection(staging)
            index = open_shared()
    except ConfigError as exc:
        raise ConfigError(f"[state] vectors: {exc}") from None
    except Exception as exc:  # pymilvus's errors, a collection that is not an index
        raise ConfigError(f"[state] vectors: Milvus at {uri} failed for {name!r}: "
                          f"{exc}") from exc
    channel.use_index(index)
    log.info("%s searches Milvus collection %s (%s, %d vectors%s)", name, shared, index_type,
             len(ids), ", filled now" if filled else "")
    return Attached(name, shared, filled, len(ids))
