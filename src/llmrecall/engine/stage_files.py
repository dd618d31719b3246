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
import zipfile
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


def read_rows(path: str | Path, name: str, start: int, stop: int,
              out: np.ndarray | None = None) -> np.ndarray:
    """Rows ``start:stop`` of the C-ordered array ``name`` of a part written by
    :meth:`StageParts.save`, reading only those rows' bytes: a part is an uncompressed
    ``.npz`` (a zip of stored ``.npy`` members), so the rows are a byte range after the
    member's header. They are read into ``out`` when given (C-contiguous, exactly that
    many rows of the array's row shape and dtype: a caller gathering rows from several
    parts allocates once) and returned. Memory: the rows, and a 16 MB read buffer."""
    with zipfile.ZipFile(path) as archive, archive.open(f"{name}.npy") as member:
        shape, fortran, dtype = _npy_header(member)
        if fortran or not shape:
            raise ValueError(f"{path}: {name} is not a C-ordered array with rows")
        start, stop = max(0, start), min(int(shape[0]), stop)
        wanted = (max(0, stop - start), *shape[1:])
        if out is None:
            out = np.empty(wanted, dtype)
        elif out.shape != wanted or out.dtype != dtype or not out.flags.c_contiguous:
            raise ValueError(f"{path}: {name} rows {start}:{stop} are {dtype}{wanted}, "
                             f"not the {out.dtype}{out.shape} given")
        if out.size:
            member.seek(member.tell() + start * (out.nbytes // len(out)))
            view = memoryview(out.reshape(-1).view(np.uint8).data)
            # in pieces: a zip member's read() copies what it returns
            for at in range(0, len(view), _READ_CHUNK):
                piece = member.read(min(_READ_CHUNK, len(view) - at))
                view[at:at + len(piece)] = piece
    return out


def row_layout(path: str | Path, name: str) -> tuple[tuple[int, ...], np.dtype]:
    """``(shape, dtype)`` of the array ``name`` of a part, from its header alone."""
    with zipfile.ZipFile(path) as archive, archive.open(f"{name}.npy") as member:
        shape, _fortran, dtype = _npy_header(member)
    return tuple(int(v) for v in shape), dtype


def _npy_header(member) -> tuple[tuple[int, ...], bool, np.dtype]:
    """``(shape, fortran_order, dtype)`` of the ``.npy`` stream ``member``, which is left
    at the array's first byte."""
    version = np.lib.format.read_magic(member)
    read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                   else np.lib.format.read_array_header_2_0)
    return read_header(member)


#: bytes :func:`read_rows` reads at a time
_READ_CHUNK = 1 << 24
