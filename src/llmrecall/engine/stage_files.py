"""Stage results of a sharded job kept in its work folder, so that the job started again
after its driver was killed redoes only the parts that are missing.

A stage's parts live in one folder named by a digest of everything they depend on::

    <work_dir>/<stage>-<digest>/part-00003.npz

so a changed input (another log, other channel parameters, other cut-offs) finds an
empty folder and recomputes, and equal inputs find the parts written before. A part is
one ``.npz`` holding its arrays and a JSON ``meta`` entry, written under a temporary name
and renamed into place by whichever process computed it (a task on a worker: the work
folder must then be a path every worker reaches, as the history shards' is), so a part is
whole or absent.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Collection
from pathlib import Path
from typing import Any

import numpy as np


def digest(*parts: Any) -> str:
    """16 hex digits of the SHA-256 of ``parts`` as JSON (sorted keys; anything else as
    ``str``)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def channel_params(channel: Any) -> dict[str, Any]:
    """What a fitted channel's kept state depends on besides the log: its kind and
    parameters (a part of a stage's key)."""
    return {"kind": channel.kind, **channel.get_params()}


def files_signature(paths: list[Path]) -> list[tuple[str, int, int]]:
    """``(absolute path, bytes, modification time in ns)`` of each file: what says that a
    log's files are the ones a folder's parts were computed from, without reading them."""
    out = []
    for path in paths:
        stat = Path(path).stat()
        out.append((str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns))
    return out


class StageParts:
    """The parts of one stage under ``root / f"{stage}-{key}"`` (see the module docstring)."""

    def __init__(self, root: str | Path, stage: str, key: str):
        self.folder = Path(root) / f"{stage}-{key}"

    def path(self, part: int) -> Path:
        return self.folder / f"part-{part:05d}.npz"

    def has(self, part: int) -> bool:
        return self.path(part).exists()

    def missing(self, parts: int) -> list[int]:
        """The parts ``0..parts-1`` not written yet."""
        return [p for p in range(parts) if not self.has(p)]

    def save(self, part: int, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        """Write one part atomically (a temporary file renamed into place)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        payload: dict[str, Any] = {
            "__meta__": np.frombuffer(json.dumps(meta).encode(), np.uint8), **arrays}
        np.savez(buffer, **payload)
        target = self.path(part)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        tmp.write_bytes(buffer.getvalue())
        os.replace(tmp, target)

    def load_meta(self, part: int) -> dict[str, Any]:
        """The ``meta`` of a part, without reading its arrays."""
        with np.load(self.path(part), allow_pickle=False) as npz:
            return json.loads(npz["__meta__"].tobytes().decode())

    def load(self, part: int, names: Collection[str] | None = None,
             ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """``(arrays, meta)`` of a part written by :meth:`save`; with ``names``, only the
        arrays of those names that the part holds (the others are not read)."""
        with np.load(self.path(part), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files
                      if k != "__meta__" and (names is None or k in names)}
            meta = json.loads(npz["__meta__"].tobytes().decode())
        return arrays, meta
