"""The vector search interface the channels use, and loading whichever backend was saved.

Two implementations: :class:`~llmrecall.index.faiss_index.VectorIndex` (FAISS in-process,
the default) and :class:`~llmrecall.index.milvus_index.MilvusIndex` (a Milvus collection,
Milvus Lite or a server/cluster; needs the ``milvus`` extra, imported only when used).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import scipy.sparse as sp

from llmrecall.index.faiss_index import VectorIndex


@runtime_checkable
class VectorSearch(Protocol):
    """Maximum inner-product search over int64-id'd float32 vectors.

    Guarantees shared by the implementations: ids are int64 >= 0; ``search`` returns
    ``ids int64[q, k]`` (padded -1) and ``scores float32[q, k]`` (padded -inf), best first,
    never an excluded or disallowed id; ``add`` replaces an existing id; an ``add`` or
    ``remove`` is visible to the next ``search``.
    """

    dim: int
    kind: str

    def __len__(self) -> int: ...

    @property
    def ids(self) -> np.ndarray: ...

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None: ...

    def remove(self, ids: np.ndarray) -> int: ...

    def vectors(self, ids: np.ndarray) -> np.ndarray: ...

    def search(self, queries: np.ndarray, k: int, *, exclude: sp.spmatrix | list | None = None,
               allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]: ...

    def save(self, directory: str | Path) -> Path: ...


def load_index(directory: str | Path) -> VectorSearch:
    """The index a ``save`` wrote into ``directory``: a Milvus one when its ``index.json``
    says ``"kind": "milvus"``, else FAISS (:meth:`VectorIndex.load`, which reports missing
    files)."""
    meta_path = Path(directory) / "index.json"
    if meta_path.is_file() and json.loads(meta_path.read_text()).get("kind") == "milvus":
        from llmrecall.index.milvus_index import MilvusIndex
        return MilvusIndex.load(directory)
    return VectorIndex.load(directory)
