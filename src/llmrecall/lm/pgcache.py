"""The language-model cache in PostgreSQL: one store every worker, driver and service
process reads, on any machine that reaches the server.

:class:`PgLMCache` has :class:`~llmrecall.lm.cache.LMCache`'s methods, keys and guarantees,
so :class:`~llmrecall.lm.cached.CachedEmbedder`, the interest and item-knowledge jobs and
the Ray engine's driver use it unchanged; :func:`~llmrecall.lm.stores.open_cache` picks it
for a ``postgresql://`` (or ``postgres://``) target. Where the SQLite file is one machine's,
this is the cache of a cluster: a Ray driver fills it, every node's workers and every
service replica read it.

- **Tables** ``lm_embeddings``, ``lm_generations``, ``lm_subjects``, ``lm_meta``: the SQLite
  file's columns (vectors as little-endian float32 ``bytea``), prefixed so the cache can
  share a database with the service's state (:mod:`llmrecall.serve.pgstore`).
- **Group commit.** Each ``put_*`` call is one transaction, as in SQLite.
- **Racing writers are harmless.** Embeddings and generations are ``INSERT ... ON CONFLICT
  DO NOTHING`` (equal keys mean equal values); a subject's texts are upserted, the last
  writer's kept, as SQLite's ``INSERT OR REPLACE``.
- **Lost connections.** Every call is idempotent, so a call whose connection broke
  reconnects and runs once more; a second failure raises :class:`CacheUnavailableError`
  naming the server (without its password). Nothing half-written is left: a failed
  transaction is rolled back by the server.
- **Schema.** Created at first open under an advisory lock (processes opening an empty
  database together create it once); ``lm_meta.schema_version`` must equal
  :data:`~llmrecall.lm.cache.SCHEMA_VERSION`.

psycopg (``pip install 'llmrecall[state]'``) is imported only when such a cache is opened.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import numpy as np

from llmrecall.errors import ConfigError
from llmrecall.lm.cache import SCHEMA_VERSION
from llmrecall.lm.errors import LMError

#: advisory lock key held while the schema is created (distinct from the service store's)
SCHEMA_LOCK = 0x6C6D7263_10
#: keys per ``= ANY(%s)`` lookup: bounds one statement's parameter size
_ANY_CHUNK = 10_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS lm_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS lm_embeddings (
    key TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    dim INTEGER NOT NULL,
    vector BYTEA NOT NULL,            -- little-endian float32[dim]
    created DOUBLE PRECISION NOT NULL);
CREATE TABLE IF NOT EXISTS lm_generations (
    key TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    template TEXT NOT NULL,
    output TEXT NOT NULL,
    created DOUBLE PRECISION NOT NULL);
CREATE TABLE IF NOT EXISTS lm_subjects (
    scope TEXT NOT NULL,
    subject TEXT NOT NULL,
    history TEXT NOT NULL,            -- JSON list of item ids
    texts TEXT NOT NULL,              -- JSON list of strings
    PRIMARY KEY (scope, subject));
"""

T = TypeVar("T")


class CacheUnavailableError(LMError):
    """The PostgreSQL server of an LM cache could not be reached, or the connection broke
    twice in one call."""


def is_postgres_target(target: object) -> bool:
    """True for a ``postgresql://`` or ``postgres://`` connection URI."""
    return str(target).startswith(("postgresql://", "postgres://"))


def redact(dsn: str) -> str:
    """``dsn`` without its password, for messages."""
    try:
        from psycopg.conninfo import conninfo_to_dict
        parts = conninfo_to_dict(dsn)
    except Exception:  # an unparsable DSN is reported by connect; never echo it whole
        return "postgresql://<unparsable>"
    host, port, db = parts.get("host", ""), parts.get("port", ""), parts.get("dbname", "")
    user = f"{parts['user']}@" if parts.get("user") else ""
    return f"postgresql://{user}{host}{':' + str(port) if port else ''}/{db}"


class PgLMCache:
    """Embeddings, generations and per-subject texts in a PostgreSQL database; the
    interface of :class:`~llmrecall.lm.cache.LMCache` (see the module docstring).

    Safe to share between threads (one connection per thread) and processes (the server's
    locking).

    Raises:
        ConfigError: psycopg is not installed, or the database holds another schema version.
        CacheUnavailableError: the server cannot be reached.
    """

    def __init__(self, dsn: str, connect_timeout_s: float = 10.0):
        try:
            import psycopg
        except ImportError as exc:
            raise ConfigError("an LM cache in PostgreSQL needs psycopg: "
                              "pip install 'llmrecall[state]'") from exc
        self._psycopg = psycopg
        self.dsn = dsn
        self.where = redact(dsn)
        self.connect_timeout_s = connect_timeout_s
        self._local = threading.local()
        self._call(self._create_schema)
        found = self._call(lambda con: con.execute(
            "SELECT value FROM lm_meta WHERE name = 'schema_version'").fetchone()[0])
        if int(found) != SCHEMA_VERSION:
            raise ConfigError(f"LM cache {self.where} has schema version {found}, "
                              f"this llmrecall reads {SCHEMA_VERSION}")

    # -- connections --------------------------------------------------------------------------
    def _con(self):
        con = getattr(self._local, "con", None)
        if con is None or con.closed:
            con = self._local.con = self._psycopg.connect(
                self.dsn, autocommit=True, connect_timeout=max(2, int(self.connect_timeout_s)))
        return con

    def _call(self, fn: Callable[[Any], T]) -> T:
        """``fn(connection)`` inside one transaction; on a broken connection, once more on a
        new one (every call of this class is idempotent)."""
        for attempt in (1, 2):
            try:
                con = self._con()
                with con.transaction():
                    return fn(con)
            except self._psycopg.OperationalError as exc:
                self._drop_connection()
                if attempt == 2:
                    raise CacheUnavailableError(
                        f"LM cache {self.where} unavailable: {str(exc).strip()}") from exc
        raise AssertionError("unreachable")

    def _drop_connection(self) -> None:
        con = getattr(self._local, "con", None)
        self._local.con = None
        if con is not None:
            try:
                con.close()
            except Exception:  # closing a broken connection may fail too; it is gone anyway
                pass

    def _create_schema(self, con) -> None:
        con.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
        con.execute(_SCHEMA)
        con.execute("INSERT INTO lm_meta VALUES ('schema_version', %s) ON CONFLICT DO NOTHING",
                    (str(SCHEMA_VERSION),))

    def _select(self, sql: str, keys: Sequence[str]) -> list[tuple]:
        unique = list(dict.fromkeys(keys))

        def run(con) -> list[tuple]:
            rows: list[tuple] = []
            for s in range(0, len(unique), _ANY_CHUNK):
                rows += con.execute(f"{sql} WHERE key = ANY(%s)",
                                    (unique[s:s + _ANY_CHUNK],)).fetchall()
            return rows

        return self._call(run) if unique else []

    def _write(self, sql: str, rows: list[tuple]) -> None:
        if rows:
            self._call(lambda con: con.cursor().executemany(sql, rows))

    # -- embeddings ---------------------------------------------------------------------------
    def get_embeddings(self, keys: Sequence[str]) -> dict[str, np.ndarray]:
        """Vectors (float32[dim]) for the keys that are present; missing keys are absent."""
        return {key: np.frombuffer(bytes(blob), dtype="<f4", count=dim).astype(np.float32)
                for key, dim, blob in self._select(
                    "SELECT key, dim, vector FROM lm_embeddings", keys)}

    def put_embeddings(self, fingerprint: str, items: Iterable[tuple[str, np.ndarray]]) -> int:
        """Store (key, float32[dim]) pairs in one transaction; returns rows offered."""
        now = time.time()
        rows = [(k, fingerprint, int(v.shape[0]), np.asarray(v, "<f4").tobytes(), now)
                for k, v in items]
        self._write("INSERT INTO lm_embeddings VALUES (%s, %s, %s, %s, %s) "
                    "ON CONFLICT (key) DO NOTHING", rows)
        return len(rows)

    # -- generations --------------------------------------------------------------------------
    def get_generations(self, keys: Sequence[str]) -> dict[str, str]:
        """Generated text for the keys that are present; missing keys are absent."""
        return dict(self._select("SELECT key, output FROM lm_generations", keys))

    def put_generations(self, fingerprint: str, template: str,
                        items: Iterable[tuple[str, str]]) -> int:
        """Store (key, text) pairs in one transaction; returns rows offered."""
        now = time.time()
        rows = [(k, fingerprint, template, text, now) for k, text in items]
        self._write("INSERT INTO lm_generations VALUES (%s, %s, %s, %s, %s) "
                    "ON CONFLICT (key) DO NOTHING", rows)
        return len(rows)

    # -- text lists and subjects --------------------------------------------------------------
    def get_text_lists(self, keys: Sequence[str]) -> dict[str, list[str]]:
        """Lists of texts (:meth:`put_text_lists`) for the keys that are present."""
        return {k: json.loads(v) for k, v in self.get_generations(keys).items()}

    def put_text_lists(self, items: Iterable[tuple[str, list[str]]], fingerprint: str = "",
                       template: str = "") -> int:
        """Store (key, list of texts) pairs in one transaction, each as a JSON array."""
        return self.put_generations(fingerprint, template, (
            (k, json.dumps(list(v), ensure_ascii=False)) for k, v in items))

    def get_subjects(self, scope: str) -> dict[str, tuple[list[int], list[str]]]:
        """``subject -> (history item ids, texts)`` stored under ``scope``."""
        rows = self._call(lambda con: con.execute(
            "SELECT subject, history, texts FROM lm_subjects WHERE scope = %s",
            (scope,)).fetchall())
        return {s: (json.loads(h), json.loads(t)) for s, h, t in rows}

    def put_subjects(self, scope: str, rows: Iterable[tuple[str, list[int], list[str]]]) -> int:
        """Insert or replace (subject, history, texts) under ``scope`` in one transaction."""
        data = [(scope, s, json.dumps([int(i) for i in h]), json.dumps(list(t), ensure_ascii=False))
                for s, h, t in rows]
        self._write("INSERT INTO lm_subjects VALUES (%s, %s, %s, %s) "
                    "ON CONFLICT (scope, subject) DO UPDATE "
                    "SET history = EXCLUDED.history, texts = EXCLUDED.texts", data)
        return len(data)

    # -- shared -------------------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        return self._call(lambda con: {
            table: con.execute(f"SELECT COUNT(*) FROM lm_{table}").fetchone()[0]
            for table in ("embeddings", "generations")})

    def size_bytes(self) -> int:
        """Bytes of the cache's tables, their indexes and TOAST data."""
        return int(self._call(lambda con: con.execute(
            "SELECT SUM(pg_total_relation_size(t)) FROM unnest(ARRAY['lm_meta', "
            "'lm_embeddings', 'lm_generations', 'lm_subjects']::regclass[]) AS t").fetchone()[0]))

    def close(self) -> None:
        """Close this thread's connection (the next call opens a new one)."""
        self._drop_connection()

    def __getstate__(self) -> dict:
        # a cache travels to Ray workers as its DSN; each process opens its own connections
        return {"dsn": self.dsn, "connect_timeout_s": self.connect_timeout_s}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["dsn"], state["connect_timeout_s"])  # type: ignore[misc]
