"""Content-addressed SQLite cache of every embedding and generation.

A key is the SHA-256 of a canonical JSON list: entry kind, backend fingerprint (backend, model
and anything else that changes outputs), prompt-template hash (or ""), the input text and the
call parameters. Equal keys mean equal requests, so a value computed once is never paid for
again, by any process.

Storage choices (see docs/architecture.md, "Facts about this machine"): WAL journal so readers
never block the writer; ``synchronous=NORMAL`` (durable at checkpoints, and a cache can lose
its last transaction in a power cut without harm); group commit, i.e. one transaction per
batch of rows, never one per row; ``INSERT OR IGNORE`` so two processes that computed the same
key race harmlessly; a busy timeout so concurrent writers wait instead of failing.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from llmrecall.errors import ConfigError

SCHEMA_VERSION = 1
_IN_CHUNK = 500  # keys per SELECT ... IN (...); below SQLite's variable limit

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS embeddings (
    key TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    dim INTEGER NOT NULL,
    vector BLOB NOT NULL,          -- little-endian float32[dim]
    created REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS generations (
    key TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    template TEXT NOT NULL,        -- template hash, '' for free-form prompts
    output TEXT NOT NULL,
    created REAL NOT NULL
) WITHOUT ROWID;
"""


def cache_key(entry: str, fingerprint: str, template: str, text: str, params: Any) -> str:
    """Hex SHA-256 of the canonical JSON of everything that determines a cached value."""
    payload = json.dumps([entry, fingerprint, template, text, params], sort_keys=True,
                         ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


class LMCache:
    """A SQLite file holding embeddings (float32 vectors) and generations (text) by key.

    Safe to share between threads (one connection per thread) and processes (SQLite locking,
    WAL). Writes are grouped: :meth:`put_embeddings` / :meth:`put_generations` commit all the
    rows they are given in one transaction.
    """

    def __init__(self, path: str | Path, busy_timeout_s: float = 60.0):
        self.path = Path(path)
        if self.path.exists() and self.path.is_dir():
            raise ConfigError(f"cache path {self.path} is a directory, expected a file")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.busy_timeout_s = busy_timeout_s
        self._local = threading.local()
        con = self._con()
        con.executescript(_SCHEMA)
        self._write("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)",
                    [(str(SCHEMA_VERSION),)])
        found = con.execute("SELECT value FROM meta WHERE name='schema_version'").fetchone()[0]
        if int(found) != SCHEMA_VERSION:
            raise ConfigError(f"cache {self.path} has schema version {found}, "
                              f"this llmrecall reads {SCHEMA_VERSION}")

    def _con(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is None:
            # autocommit mode: transactions are opened explicitly in _write (group commit)
            con = sqlite3.connect(self.path, timeout=self.busy_timeout_s, isolation_level=None)
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA synchronous=NORMAL")
            con.execute(f"PRAGMA busy_timeout={int(self.busy_timeout_s * 1000)}")
            self._local.con = con
        return con

    # -- embeddings ---------------------------------------------------------------------------
    def get_embeddings(self, keys: Sequence[str]) -> dict[str, np.ndarray]:
        """Vectors (float32[dim]) for the keys that are present; missing keys are absent."""
        out: dict[str, np.ndarray] = {}
        con = self._con()
        unique = list(dict.fromkeys(keys))
        for s in range(0, len(unique), _IN_CHUNK):
            chunk = unique[s:s + _IN_CHUNK]
            rows = con.execute(
                f"SELECT key, dim, vector FROM embeddings WHERE key IN ({','.join('?' * len(chunk))})",
                chunk).fetchall()
            for key, dim, blob in rows:
                out[key] = np.frombuffer(blob, dtype="<f4", count=dim).astype(np.float32)
        return out

    def put_embeddings(self, fingerprint: str, items: Iterable[tuple[str, np.ndarray]]) -> int:
        """Store (key, float32[dim]) pairs in one transaction; returns rows offered."""
        now = time.time()
        rows = [(k, fingerprint, int(v.shape[0]), np.asarray(v, "<f4").tobytes(), now)
                for k, v in items]
        self._write("INSERT OR IGNORE INTO embeddings VALUES (?, ?, ?, ?, ?)", rows)
        return len(rows)

    # -- generations --------------------------------------------------------------------------
    def get_generations(self, keys: Sequence[str]) -> dict[str, str]:
        out: dict[str, str] = {}
        con = self._con()
        unique = list(dict.fromkeys(keys))
        for s in range(0, len(unique), _IN_CHUNK):
            chunk = unique[s:s + _IN_CHUNK]
            out.update(con.execute(
                f"SELECT key, output FROM generations WHERE key IN ({','.join('?' * len(chunk))})",
                chunk).fetchall())
        return out

    def put_generations(self, fingerprint: str, template: str,
                        items: Iterable[tuple[str, str]]) -> int:
        now = time.time()
        rows = [(k, fingerprint, template, text, now) for k, text in items]
        self._write("INSERT OR IGNORE INTO generations VALUES (?, ?, ?, ?, ?)", rows)
        return len(rows)

    # -- shared -------------------------------------------------------------------------------
    def _write(self, sql: str, rows: list[tuple]) -> None:
        if not rows:
            return
        con = self._con()
        # BEGIN IMMEDIATE takes the write lock up front, so a concurrent writer waits on the
        # busy timeout here rather than failing with "database is locked" at COMMIT.
        con.execute("BEGIN IMMEDIATE")
        try:
            con.executemany(sql, rows)
        except BaseException:
            con.execute("ROLLBACK")
            raise
        con.execute("COMMIT")

    def counts(self) -> dict[str, int]:
        con = self._con()
        return {table: con.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
                for table in ("embeddings", "generations")}

    def close(self) -> None:
        con = getattr(self._local, "con", None)
        if con is not None:
            con.close()
            self._local.con = None
