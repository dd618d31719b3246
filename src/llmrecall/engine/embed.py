"""Catalog embedding in shards: a folder of per-shard vector files every worker and the
service can read, and a job that fills in only the shards still missing.

Layout (one folder per embedder fingerprint, so two models never mix)::

    <root>/<sha256(fingerprint)[:16]>/meta.json           fingerprint, n, shard size
    <root>/<sha256(fingerprint)[:16]>/shard-00000.npy      float32[shard, dim]
    <root>/<sha256(fingerprint)[:16]>/shard-00000.sha256   the shard's texts, hashed

A shard file is written under a temporary name and renamed into place, so a reader (or a
rerun after a killed job) sees whole shards or none; a shard counts as done only when its
texts' hash matches, so an edited catalog recomputes exactly the shards whose texts
changed. ``root`` must be a path every worker can reach (a shared file system: NFS, a
mounted bucket); on one machine any local folder is.

:func:`embed_catalog` runs the missing shards in this process; the Ray engine's
:func:`llmrecall.engine.ray_engine.embed_catalog` runs them on a pool of actors, each
holding one copy of the model.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

#: texts per shard: one task's work, and what a killed job may have to redo
SHARD_SIZE = 2048


class ShardedVectors:
    """The per-shard vector files of one embedder fingerprint under ``root``."""

    def __init__(self, root: str | Path, fingerprint: str, n: int,
                 shard_size: int = SHARD_SIZE):
        self.fingerprint = fingerprint
        self.n = n
        self.shard_size = shard_size
        digest = hashlib.sha256(fingerprint.encode()).hexdigest()[:16]
        self.folder = Path(root) / digest
        self.folder.mkdir(parents=True, exist_ok=True)
        meta = self.folder / "meta.json"
        if not meta.exists():
            _atomic_write(meta, json.dumps({"fingerprint": fingerprint}).encode())

    @property
    def n_shards(self) -> int:
        return -(-self.n // self.shard_size)

    def bounds(self, shard: int) -> tuple[int, int]:
        return shard * self.shard_size, min((shard + 1) * self.shard_size, self.n)

    def path(self, shard: int) -> Path:
        return self.folder / f"shard-{shard:05d}.npy"

    def missing(self, texts: Sequence[str]) -> list[int]:
        """Shards whose file is absent or was computed from other texts."""
        out = []
        for shard in range(self.n_shards):
            lo, hi = self.bounds(shard)
            stamp = self.path(shard).with_suffix(".sha256")
            if not (self.path(shard).exists() and stamp.exists()
                    and stamp.read_text() == texts_hash(texts[lo:hi])):
                out.append(shard)
        return out

    def write(self, shard: int, texts: Sequence[str], vectors: np.ndarray) -> None:
        """Store one shard (vectors first, then the stamp that marks it done)."""
        buffer = _npy_bytes(np.ascontiguousarray(vectors, dtype=np.float32))
        _atomic_write(self.path(shard), buffer)
        _atomic_write(self.path(shard).with_suffix(".sha256"), texts_hash(texts).encode())

    def load(self) -> np.ndarray:
        """float32[n, dim] every shard in order (all must be done)."""
        parts = [np.load(self.path(s), allow_pickle=False) for s in range(self.n_shards)]
        return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)


def texts_hash(texts: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode("utf-8"))
        digest.update(b"\x00")
    return digest.hexdigest()


def _npy_bytes(array: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def embed_shard(store: ShardedVectors, embedder, shard: int, texts: Sequence[str]) -> int:
    """Embed one shard's texts with ``embedder`` and store them; returns the shard."""
    lo, hi = store.bounds(shard)
    store.write(shard, texts[lo:hi], embedder.embed(list(texts[lo:hi]), "passage"))
    return shard


def embed_catalog(texts: Sequence[str], make_embedder: Callable, root: str | Path,
                  shard_size: int = SHARD_SIZE) -> tuple[np.ndarray, int]:
    """float32[n, dim] vectors of ``texts``, computing only the missing shards here.
    Returns the vectors and how many shards were computed now."""
    embedder = make_embedder()
    store = ShardedVectors(root, embedder.fingerprint, len(texts), shard_size)
    todo = store.missing(texts)
    for shard in todo:
        embed_shard(store, embedder, shard, texts)
    return store.load(), len(todo)
