"""Vocabulary: the one place where raw ids become dense int32 indices and back.

Raw ids are always strings (a numeric id read from a file is kept as its text, so that
"007" and "7" stay different ids). Channels only ever see the dense indices.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from llmrecall.errors import UnknownIdError


class Vocabulary:
    """Bidirectional map between raw string ids and dense int32 indices ``0..len-1``.

    Guarantees: indices are assigned in first-seen order and never change once assigned;
    ``lookup`` of an unknown id returns -1 (or raises :class:`UnknownIdError` when strict).
    """

    __slots__ = ("_ids", "_index")

    def __init__(self, ids: Iterable[str] = ()):
        self._ids: list[str] = []
        self._index: dict[str, int] = {}
        for raw in ids:
            self.add(raw)

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, raw: object) -> bool:
        return str(raw) in self._index

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and self._ids == other._ids

    def __repr__(self) -> str:
        return f"Vocabulary({len(self)} ids)"

    @property
    def ids(self) -> list[str]:
        """Raw ids in index order (a copy)."""
        return list(self._ids)

    def add(self, raw: object) -> int:
        """Index of ``raw``, assigning the next free index if it is new."""
        key = str(raw)
        index = self._index.get(key)
        if index is None:
            index = len(self._ids)
            self._index[key] = index
            self._ids.append(key)
        return index

    def add_many(self, raws: Iterable[object]) -> np.ndarray:
        """Indices (int32[n]) of ``raws``, assigning new ones as needed."""
        return np.fromiter((self.add(r) for r in raws), dtype=np.int32)

    def index(self, raw: object) -> int:
        """Index of ``raw``; raises :class:`UnknownIdError` if it is unknown."""
        key = str(raw)
        try:
            return self._index[key]
        except KeyError:
            raise UnknownIdError(f"unknown id {key!r}") from None

    def lookup(self, raws: Sequence[object] | np.ndarray, strict: bool = False) -> np.ndarray:
        """Indices (int32[n]) of ``raws``; unknown ids map to -1 unless ``strict``."""
        get = self._index.get
        out = np.fromiter((get(str(r), -1) for r in raws), dtype=np.int32, count=len(raws))
        if strict and (out < 0).any():
            missing = [str(raws[i]) for i in np.flatnonzero(out < 0)[:5]]
            raise UnknownIdError(f"unknown ids: {missing}")
        return out

    def raw(self, indices: Sequence[int] | np.ndarray) -> list[str | None]:
        """Raw ids of ``indices``; -1 (padding) maps to None."""
        ids = self._ids
        return [ids[i] if 0 <= i < len(ids) else None for i in np.asarray(indices).tolist()]

    def copy(self) -> Vocabulary:
        return Vocabulary(self._ids)
