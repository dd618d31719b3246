"""The LM cache's two stores behind one interface: :class:`LMStore` (what every user of the
cache calls) and :func:`open_cache` (a SQLite file, or a PostgreSQL database for a
``postgresql://`` target)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from llmrecall.lm.cache import LMCache
from llmrecall.lm.pgcache import PgLMCache, is_postgres_target


class LMStore(Protocol):
    """What every user of the cache calls: :class:`LMCache` (a SQLite file) and
    :class:`~llmrecall.lm.pgcache.PgLMCache` (a PostgreSQL database) both provide it."""

    def get_embeddings(self, keys: Sequence[str]) -> dict[str, np.ndarray]: ...
    def put_embeddings(self, fingerprint: str,
                       items: Iterable[tuple[str, np.ndarray]]) -> int: ...
    def get_generations(self, keys: Sequence[str]) -> dict[str, str]: ...
    def put_generations(self, fingerprint: str, template: str,
                        items: Iterable[tuple[str, str]]) -> int: ...
    def get_text_lists(self, keys: Sequence[str]) -> dict[str, list[str]]: ...
    def put_text_lists(self, items: Iterable[tuple[str, list[str]]], fingerprint: str = "",
                       template: str = "") -> int: ...
    def get_subjects(self, scope: str) -> dict[str, tuple[list[int], list[str]]]: ...
    def put_subjects(self, scope: str,
                     rows: Iterable[tuple[str, list[int], list[str]]]) -> int: ...
    def counts(self) -> dict[str, int]: ...
    def size_bytes(self) -> int: ...
    def close(self) -> None: ...


def open_cache(target: str | Path) -> LMStore:
    """The cache at ``target``: a PostgreSQL database for a ``postgresql://`` (or
    ``postgres://``) URI, shared by every machine that reaches it
    (:class:`~llmrecall.lm.pgcache.PgLMCache`); else a SQLite file on this machine, or
    ``":memory:"`` (:class:`LMCache`)."""
    if is_postgres_target(target):
        return PgLMCache(str(target))
    return LMCache(target)
