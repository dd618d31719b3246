"""SQLite store of generated text: interest texts per user and knowledge per item.

Two tables:

* ``generations(key, texts)`` — content-addressed: ``key`` hashes the generator fingerprint,
  the settings and the prompt inputs, so identical requests are never generated twice.
* ``subjects(scope, subject, history, texts)`` — the latest texts per user (or item) under a
  settings hash (``scope``), with the history they were generated from, so a service can
  decide with :func:`llmrecall.interest.jobs.needs_refresh` whether new events warrant
  regenerating or the stored text is still good.

Writes are batched into one transaction per :meth:`GenerationStore.put_many` call (durable
commits are the slow part of SQLite writes). ``":memory:"`` gives a throw-away store.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from collections.abc import Iterable
from pathlib import Path

from llmrecall.errors import DataError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS generations (key TEXT PRIMARY KEY, texts TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS subjects (
    scope TEXT NOT NULL, subject TEXT NOT NULL, history TEXT NOT NULL, texts TEXT NOT NULL,
    PRIMARY KEY (scope, subject));
"""


def content_key(*parts: object) -> str:
    """sha256 over the JSON of ``parts`` (sorted keys): a stable cache key."""
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class GenerationStore:
    """Generated texts on disk (or in memory). Thread-safe; one connection per store."""

    def __init__(self, path: str | Path = ":memory:"):
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise DataError(f"cannot open the generation store: {exc}", path=self.path) from exc
        self._lock = threading.Lock()

    def get_many(self, keys: list[str]) -> dict[str, list[str]]:
        """Stored texts for the keys that are present."""
        out: dict[str, list[str]] = {}
        with self._lock:
            for start in range(0, len(keys), 500):
                chunk = keys[start:start + 500]
                marks = ",".join("?" * len(chunk))
                for key, texts in self._db.execute(
                        f"SELECT key, texts FROM generations WHERE key IN ({marks})", chunk):
                    out[key] = json.loads(texts)
        return out

    def put_many(self, items: Iterable[tuple[str, list[str]]]) -> None:
        """Insert or replace (key, texts) pairs in one transaction."""
        rows = [(k, json.dumps(list(v), ensure_ascii=False)) for k, v in items]
        if not rows:
            return
        with self._lock, self._db:
            self._db.executemany("INSERT OR REPLACE INTO generations VALUES (?, ?)", rows)

    def get_subjects(self, scope: str) -> dict[str, tuple[list[int], list[str]]]:
        """``subject -> (history item ids, texts)`` stored under ``scope``."""
        with self._lock:
            rows = self._db.execute(
                "SELECT subject, history, texts FROM subjects WHERE scope = ?", (scope,)).fetchall()
        return {s: (json.loads(h), json.loads(t)) for s, h, t in rows}

    def put_subjects(self, scope: str, rows: Iterable[tuple[str, list[int], list[str]]]) -> None:
        """Insert or replace (subject, history, texts) under ``scope`` in one transaction."""
        data = [(scope, s, json.dumps([int(i) for i in h]), json.dumps(list(t), ensure_ascii=False))
                for s, h, t in rows]
        if not data:
            return
        with self._lock, self._db:
            self._db.executemany("INSERT OR REPLACE INTO subjects VALUES (?, ?, ?, ?)", data)

    def size_bytes(self) -> int:
        """Bytes of the database (page count x page size), also for in-memory stores."""
        with self._lock:
            pages = self._db.execute("PRAGMA page_count").fetchone()[0]
            size = self._db.execute("PRAGMA page_size").fetchone()[0]
        return int(pages * size)

    def close(self) -> None:
        with self._lock:
            self._db.close()
