"""Content-addressed SQLite cache of every embedding and generation (the same cache in
PostgreSQL is :mod:`llmrecall.lm.pgcache`; :func:`llmrecall.lm.stores.open_cache` opens
either).

A key is the SHA-256 of a canonical JSON list: entry kind, backend fingerprint (backend, model
and anything else that changes outputs), prompt-template hash (or ""), the input text and the
call parameters (:func:`cache_key`). Equal keys mean equal requests, so a value computed once
is never paid for again, by any process.

The same file also holds what the interest and item-knowledge jobs write: lists of generated
texts under a :func:`content_key` (:meth:`LMCache.get_text_lists`), and the latest texts per
user or item with the history they came from (:meth:`LMCache.get_subjects`). A generation
store written before the two stores became one (tables ``generations(key, texts)`` and
``subjects``) is converted in place the first time it is opened; its keys stay valid.

Storage choices (see docs/lm.md, "Cache"): WAL journal so readers never block the writer;
``synchronous=NORMAL`` (durable at checkpoints, and a cache can lose its last transaction in a
power cut without harm); group commit, i.e. one transaction per batch of rows, never one per
row; ``INSERT OR IGNORE`` so two processes that computed the same key race harmlessly; a busy
timeout so concurrent writers wait instead of failing. ``":memory:"`` gives a throw-away cache
(one connection, shared by the threads that use it).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np

from llmrecall.errors import ConfigError, DataError

SCHEMA_VERSION = 1
_IN_CHUNK = 500  # keys per SELECT ... IN (...); below SQLite's variable limit

_GENERATIONS = """
CREATE TABLE IF NOT EXISTS generations (
    key TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    template TEXT NOT NULL,        -- template hash, '' for free-form prompts and text lists
    output TEXT NOT NULL,          -- the text; a JSON array for text lists
    created REAL NOT NULL
) WITHOUT ROWID"""

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS embeddings (
    key TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    dim INTEGER NOT NULL,
    vector BLOB NOT NULL,          -- little-endian float32[dim]
    created REAL NOT NULL
) WITHOUT ROWID;
{_GENERATIONS};
CREATE TABLE IF NOT EXISTS subjects (
    scope TEXT NOT NULL,           -- settings and generator the texts were written under
    subject TEXT NOT NULL,         -- raw user (or item) id
    history TEXT NOT NULL,         -- JSON list of the item ids the texts were written from
    texts TEXT NOT NULL,           -- JSON list of strings
    PRIMARY KEY (scope, subject));
"""

MEMORY = ":memory:"


def cache_key(entry: str, fingerprint: str, template: str, text: str, params: Any) -> str:
    """Hex SHA-256 of the canonical JSON of everything that determines a cached value."""
    payload = json.dumps([entry, fingerprint, template, text, params], sort_keys=True,
                         ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def content_key(*parts: object) -> str:
    """Hex SHA-256 of the JSON of ``parts`` (sorted keys, anything else as ``str``): the key
    of the interest and item-knowledge jobs' text lists. Spelled as their stores always
    spelled it, so text generated before is found again."""
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class LMCache:
    """A SQLite file holding embeddings (float32 vectors) and generations (text) by key, and
    the latest generated texts per subject.

    Safe to share between threads (one connection per thread; one shared, locked connection
    for ``":memory:"``) and processes (SQLite locking, WAL). Writes are grouped:
    :meth:`put_embeddings` / :meth:`put_generations` / :meth:`put_text_lists` /
    :meth:`put_subjects` commit all the rows they are given in one transaction.

    Raises:
        ConfigError: the path is a directory, or the file has another schema version.
        DataError: the file is not a SQLite database.
    """

    def __init__(self, path: str | Path, busy_timeout_s: float = 60.0):
        self.memory = str(path) == MEMORY
        self.path = Path(path)
        self.busy_timeout_s = busy_timeout_s
        self._local = threading.local()
        self._memory_lock = threading.RLock()
        self._memory_con: sqlite3.Connection | None = None
        if not self.memory:
            if self.path.exists() and self.path.is_dir():
                raise ConfigError(f"cache path {self.path} is a directory, expected a file")
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with self._use() as con:
                _convert_generation_store(con)
                con.executescript(_SCHEMA)
            self._write("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)",
                        [(str(SCHEMA_VERSION),)])
            with self._use() as con:
                found = con.execute(
                    "SELECT value FROM meta WHERE name='schema_version'").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            self.close()
            raise DataError(f"cannot open the cache: {exc}", path=str(self.path)) from exc
        if int(found) != SCHEMA_VERSION:
            raise ConfigError(f"cache {self.path} has schema version {found}, "
                              f"this llmrecall reads {SCHEMA_VERSION}")

    def _connect(self, target: str | Path, **kwargs: Any) -> sqlite3.Connection:
        # autocommit mode: transactions are opened explicitly in _write (group commit)
        con = sqlite3.connect(target, timeout=self.busy_timeout_s, isolation_level=None, **kwargs)
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=NORMAL")
        con.execute(f"PRAGMA busy_timeout={int(self.busy_timeout_s * 1000)}")
        return con

    def _con(self) -> sqlite3.Connection:
        if self.memory:
            if self._memory_con is None:
                self._memory_con = self._connect(MEMORY, check_same_thread=False)
            return self._memory_con
        con = getattr(self._local, "con", None)
        if con is None:
            con = self._local.con = self._connect(self.path)
        return con

    @contextmanager
    def _use(self) -> Iterator[sqlite3.Connection]:
        """The connection to use now; for ``":memory:"`` the one shared connection, held
        under a lock (a second connection would open a second, empty database)."""
        with self._memory_lock if self.memory else nullcontext():
            yield self._con()

    # -- embeddings ---------------------------------------------------------------------------
    def get_embeddings(self, keys: Sequence[str]) -> dict[str, np.ndarray]:
        """Vectors (float32[dim]) for the keys that are present; missing keys are absent."""
        out: dict[str, np.ndarray] = {}
        for key, dim, blob in self._select("SELECT key, dim, vector FROM embeddings", keys):
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
        """Generated text for the keys that are present; missing keys are absent."""
        return dict(self._select("SELECT key, output FROM generations", keys))

    def put_generations(self, fingerprint: str, template: str,
                        items: Iterable[tuple[str, str]]) -> int:
        """Store (key, text) pairs in one transaction; returns rows offered."""
        now = time.time()
        rows = [(k, fingerprint, template, text, now) for k, text in items]
        self._write("INSERT OR IGNORE INTO generations VALUES (?, ?, ?, ?, ?)", rows)
        return len(rows)

    # -- text lists and subjects (interest and item-knowledge jobs) ---------------------------
    def get_text_lists(self, keys: Sequence[str]) -> dict[str, list[str]]:
        """Lists of texts (:meth:`put_text_lists`) for the keys that are present."""
        return {k: json.loads(v) for k, v in self.get_generations(keys).items()}

    def put_text_lists(self, items: Iterable[tuple[str, list[str]]], fingerprint: str = "",
                       template: str = "") -> int:
        """Store (key, list of texts) pairs in one transaction, each list as a JSON array in
        the ``generations`` table; returns rows offered."""
        return self.put_generations(fingerprint, template, (
            (k, json.dumps(list(v), ensure_ascii=False)) for k, v in items))

    def get_subjects(self, scope: str) -> dict[str, tuple[list[int], list[str]]]:
        """``subject -> (history item ids, texts)`` stored under ``scope``."""
        with self._use() as con:
            rows = con.execute("SELECT subject, history, texts FROM subjects WHERE scope = ?",
                               (scope,)).fetchall()
        return {s: (json.loads(h), json.loads(t)) for s, h, t in rows}

    def put_subjects(self, scope: str, rows: Iterable[tuple[str, list[int], list[str]]]) -> int:
        """Insert or replace (subject, history, texts) under ``scope`` in one transaction:
        a subject keeps only its latest texts. Returns rows offered."""
        data = [(scope, s, json.dumps([int(i) for i in h]), json.dumps(list(t), ensure_ascii=False))
                for s, h, t in rows]
        self._write("INSERT OR REPLACE INTO subjects VALUES (?, ?, ?, ?)", data)
        return len(data)

    # -- shared -------------------------------------------------------------------------------
    def _select(self, sql: str, keys: Sequence[str]) -> list[tuple]:
        """Rows of ``sql WHERE key IN (...)`` over the distinct ``keys``, in chunks."""
        unique = list(dict.fromkeys(keys))
        out: list[tuple] = []
        with self._use() as con:
            for s in range(0, len(unique), _IN_CHUNK):
                chunk = unique[s:s + _IN_CHUNK]
                out += con.execute(f"{sql} WHERE key IN ({','.join('?' * len(chunk))})",
                                   chunk).fetchall()
        return out

    def _write(self, sql: str, rows: list[tuple]) -> None:
        if not rows:
            return
        with self._use() as con:
            # BEGIN IMMEDIATE takes the write lock up front, so a concurrent writer waits on
            # the busy timeout here rather than failing with "database is locked" at COMMIT.
            con.execute("BEGIN IMMEDIATE")
            try:
                con.executemany(sql, rows)
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")

    def counts(self) -> dict[str, int]:
        with self._use() as con:
            return {table: con.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
                    for table in ("embeddings", "generations")}

    def size_bytes(self) -> int:
        """Bytes of the database (page count x page size), also for ``":memory:"``."""
        with self._use() as con:
            pages = con.execute("PRAGMA page_count").fetchone()[0]
            size = con.execute("PRAGMA page_size").fetchone()[0]
        return int(pages * size)

    def close(self) -> None:
        """Close this thread's connection (for ``":memory:"``: the cache, which is then gone)."""
        if self.memory:
            with self._memory_lock:
                if self._memory_con is not None:
                    self._memory_con.close()
                    self._memory_con = None
            return
        con = getattr(self._local, "con", None)
        if con is not None:
            con.close()
            self._local.con = None


def _convert_generation_store(con: sqlite3.Connection) -> None:
    """Convert a generation store of the interest jobs as written before it became this
    cache (``generations(key, texts)`` beside ``subjects``) in place: its rows move into this
    cache's ``generations`` table under the same keys (the JSON text lists as ``output``,
    fingerprint and template empty); ``subjects`` already has this cache's layout.

    Checked again inside the write transaction, so two processes opening the same old file
    convert it once.
    """
    def old_layout() -> bool:
        columns = [row[1] for row in con.execute("PRAGMA table_info(generations)")]
        return columns == ["key", "texts"]

    if not old_layout():
        return
    con.execute("BEGIN IMMEDIATE")
    try:
        if old_layout():
            con.execute("ALTER TABLE generations RENAME TO generations_before_lm_cache")
            con.execute(_GENERATIONS)  # not executescript: it would commit half-way
            con.execute("INSERT INTO generations (key, fingerprint, template, output, created) "
                        "SELECT key, '', '', texts, ? FROM generations_before_lm_cache",
                        (time.time(),))
            con.execute("DROP TABLE generations_before_lm_cache")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")
