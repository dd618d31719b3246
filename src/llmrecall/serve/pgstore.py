"""Durable service state in PostgreSQL: the store of replicas (``[state] postgres_dsn``).

The same tables, change log and guarantees as the SQLite :class:`~llmrecall.serve.store.Store`,
for several service processes on several machines:

- **Group commit.** One writer thread per process drains every write queued meanwhile and
  runs it in ONE transaction (one commit, one WAL flush); a resolved future is a committed
  transaction (PostgreSQL's default ``synchronous_commit = on``: flushed to its WAL).
- **One writer at a time across replicas.** Each write transaction first takes a
  transaction-level advisory lock, as SQLite's write lock serialises processes on one file.
  So change-log sequence numbers are handed out in commit order (a reader that has applied
  up to ``seq`` never later finds a smaller one committed behind it), and an event batch's
  sequence numbers are consecutive.
- **Change fan-out by LISTEN/NOTIFY.** Every write transaction ends with ``NOTIFY``; a
  listener thread counts notifications from other processes into :meth:`data_version` and
  calls the :meth:`watch` callback, so a replica applies another's change at once instead of
  polling. While the listener is disconnected nothing is counted; when it reconnects it
  counts one (changes committed meanwhile are then read from the log).
- **Database down.** A write fails with :class:`~llmrecall.serve.store.StoreUnavailable`
  (the service answers 503); the next write reconnects.
- **Schema migrations**: ``schema_version`` holds the version; :data:`MIGRATIONS` after it
  are applied at start, under an advisory lock (replicas starting together apply them once).
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Collection, Iterator
from concurrent.futures import Future
from contextlib import contextmanager

import numpy as np
import psycopg

from llmrecall.serve.store import (
    Change,
    EventRows,
    ItemRow,
    Job,
    StoredState,
    StoreUnavailable,
    next_group,
)

log = logging.getLogger(__name__)

#: the NOTIFY channel every write transaction signals
CHANNEL = "llmrecall_changes"

#: advisory lock keys: one writer at a time; one process migrating at a time
WRITE_LOCK, MIGRATE_LOCK = 0x6C6D7263_01, 0x6C6D7263_02

#: the schema, one entry per version (applied in order, each in the migrating transaction)
MIGRATIONS: list[str] = [
    """
    CREATE TABLE events (
        seq BIGSERIAL PRIMARY KEY,
        user_id TEXT NOT NULL,
        item_id TEXT NOT NULL,
        event TEXT NOT NULL,
        ts DOUBLE PRECISION NOT NULL,
        weight DOUBLE PRECISION NOT NULL,
        received DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX events_user ON events(user_id);
    CREATE TABLE users (user_id TEXT PRIMARY KEY, first_seen DOUBLE PRECISION NOT NULL);
    CREATE TABLE erasures (user_id TEXT PRIMARY KEY, erased_at DOUBLE PRECISION NOT NULL);
    CREATE TABLE changes (
        seq BIGSERIAL PRIMARY KEY,
        kind TEXT NOT NULL,
        lo BIGINT NOT NULL DEFAULT 0,
        hi BIGINT NOT NULL DEFAULT 0,
        key TEXT NOT NULL DEFAULT ''
    );
    CREATE TABLE items (
        item_id TEXT PRIMARY KEY,
        ord BIGINT NOT NULL,
        title TEXT NOT NULL,
        text TEXT NOT NULL,
        categories TEXT NOT NULL,
        deleted BOOLEAN NOT NULL DEFAULT false,
        updated DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE jobs (
        job_id TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        items BIGINT NOT NULL,
        added BIGINT NOT NULL,
        updated BIGINT NOT NULL,
        indexed BIGINT NOT NULL DEFAULT 0,
        status TEXT NOT NULL,
        owner TEXT NOT NULL,
        created DOUBLE PRECISION NOT NULL,
        finished DOUBLE PRECISION,
        channel_errors TEXT NOT NULL DEFAULT '[]',
        change_seq BIGINT NOT NULL DEFAULT 0
    );
    CREATE INDEX jobs_change ON jobs(change_seq);
    """,
    # the state's identity: caches outside the database (Redis) are keyed by it, so a
    # recreated database never meets the previous one's sequence numbers
    """
    CREATE TABLE state_identity (id TEXT NOT NULL);
    INSERT INTO state_identity(id) SELECT md5(random()::text || clock_timestamp()::text);
    """,
]

#: seconds between reconnection attempts of the listener while the database is down
LISTEN_RETRY_S = 0.5


def migrate(con: psycopg.Connection) -> int:
    """Bring the schema to the last version of :data:`MIGRATIONS`; returns that version."""
    with con.transaction():
        con.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATE_LOCK,))
        con.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = con.execute("SELECT version FROM schema_version").fetchone()
        if row is None:
            con.execute("INSERT INTO schema_version(version) VALUES (0)")
            current = 0
        else:
            current = row[0]
        for version in range(current + 1, len(MIGRATIONS) + 1):
            con.execute(MIGRATIONS[version - 1])
            con.execute("UPDATE schema_version SET version = %s", (version,))
    return len(MIGRATIONS)


@contextmanager
def _unavailable() -> Iterator[None]:
    """Connection-level failures (server down, connection lost) as StoreUnavailable."""
    try:
        yield
    except psycopg.OperationalError as exc:
        raise StoreUnavailable(f"PostgreSQL unavailable: {exc}".strip()) from exc


class PostgresStore:
    """The PostgreSQL state, its writer thread and its change listener; see the module
    docstring. ``dsn`` is a libpq connection string (its password may come from
    ``PGPASSWORD`` or ``~/.pgpass`` instead)."""

    def __init__(self, dsn: str, connect_timeout_s: float = 3.0):
        self.dsn = dsn
        self.connect_timeout_s = connect_timeout_s
        self.commits = 0  # transactions committed (group commits)
        with _unavailable():
            self._con: psycopg.Connection | None = self._connect()
            self.schema_version = migrate(self._con)
            row = self._con.execute("SELECT id FROM state_identity").fetchone()
        assert row is not None
        self.state_id: str = row[0]
        self._writer_pid = self._con.info.backend_pid
        self._read_con: psycopg.Connection | None = None
        self._version = 0  # data_version(): own commits + others' notifications
        self._version_lock = threading.Lock()
        self._callbacks: list[Callable[[], None]] = []
        self.listening = threading.Event()
        self._queue: queue.Queue = queue.Queue()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="llmrecall-pgstore", daemon=True)
        self._thread.start()
        self._listener = threading.Thread(target=self._listen, name="llmrecall-pglisten",
                                          daemon=True)
        self._listener.start()

    def _connect(self) -> psycopg.Connection:
        return psycopg.connect(self.dsn, autocommit=True,
                               connect_timeout=max(2, int(round(self.connect_timeout_s))))

    # ---- writes (durable when the returned future resolves) -------------------------
    def append_events(self, rows: EventRows) -> Future:
        """Insert a batch; the future yields ``(first_seq, last_seq)``."""
        return self._submit(lambda cur: _insert_events(cur, rows))

    def upsert_items(self, items: list[ItemRow], job: Job | None = None) -> Future:
        def op(cur: psycopg.Cursor) -> int:
            _upsert_items(cur, items)
            seq = _log_change(cur, "items", key=json.dumps([it.item_id for it in items]))
            if job is not None:
                cur.execute("INSERT INTO jobs(job_id, kind, items, added, updated, status, owner, "
                            "created, change_seq) VALUES (%s, 'items', %s, %s, %s, 'indexing', "
                            "%s, %s, %s)", (job.job_id, job.items, job.added, job.updated,
                                            job.owner, time.time(), seq))
            return seq
        return self._submit(op)

    def update_job(self, job_id: str, indexed: int, status: str = "indexing",
                   channel_errors: Collection[str] = ()) -> Future:
        def op(cur: psycopg.Cursor) -> None:
            cur.execute("UPDATE jobs SET indexed = %s, status = %s, channel_errors = %s, "
                        "finished = %s WHERE job_id = %s",
                        (indexed, status, json.dumps(sorted(channel_errors)),
                         None if status == "indexing" else time.time(), job_id))
        return self._submit(op)

    def request_reload(self, version: str) -> Future:
        return self._submit(lambda cur: _log_change(cur, "reload", key=version))

    def delete_item(self, item_id: str, known_title: str = "") -> Future:
        def op(cur: psycopg.Cursor) -> None:
            cur.execute("INSERT INTO items(item_id, ord, title, text, categories, deleted, updated)"
                        " VALUES (%s, (SELECT COALESCE(MAX(ord), -1) + 1 FROM items), %s, '', "
                        "'[]', true, %s) ON CONFLICT(item_id) DO UPDATE SET deleted = true, "
                        "updated = excluded.updated", (item_id, known_title, time.time()))
            _log_change(cur, "delete_item", key=item_id)
        return self._submit(op)

    def erase_user(self, user_id: str) -> Future:
        def op(cur: psycopg.Cursor) -> int:
            cur.execute("DELETE FROM events WHERE user_id = %s", (user_id,))
            n = cur.rowcount
            cur.execute("DELETE FROM users WHERE user_id = %s", (user_id,))
            cur.execute("INSERT INTO erasures(user_id, erased_at) VALUES (%s, %s) ON CONFLICT "
                        "(user_id) DO UPDATE SET erased_at = excluded.erased_at",
                        (user_id, time.time()))
            _log_change(cur, "erase_user", key=user_id)
            return n
        return self._submit(op)

    def _submit(self, op: Callable[[psycopg.Cursor], object]) -> Future:
        if self._closed:
            raise RuntimeError("the state store is closed")
        fut: Future = Future()
        self._queue.put((op, fut))
        return fut

    def _run(self) -> None:
        while (group := next_group(self._queue)) is not None:
            try:
                results = self._commit(group)
            except Exception as exc:  # the whole group failed: nobody is acknowledged
                for _op, fut in group:
                    fut.set_exception(exc)
                continue
            self.commits += 1
            self._bump(notify=False)  # before acknowledging: the writer's sync() sees it
            for (_op, fut), result in zip(group, results):
                fut.set_result(result)

    def _commit(self, group: list) -> list:
        """Run ``group`` in one transaction; a broken connection is dropped (the next group
        reconnects) and reported as StoreUnavailable."""
        try:
            if self._con is None or self._con.closed:
                self._con = self._connect()
                self._writer_pid = self._con.info.backend_pid
            results: list = []
            with self._con.transaction(), self._con.cursor() as cur:
                cur.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK,))
                for op, _fut in group:
                    results.append(op(cur))
                cur.execute("SELECT pg_notify(%s, '')", (CHANNEL,))
            return results
        except psycopg.OperationalError as exc:
            if self._con is not None:
                try:
                    self._con.close()
                except Exception:  # already broken
                    pass
                self._con = None
            raise StoreUnavailable(f"PostgreSQL unavailable: {exc}".strip()) from exc

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._queue.put(None)
            self._thread.join(timeout=30)
            self._listener.join(timeout=5)
            for con in (self._con, self._read_con):
                if con is not None:
                    con.close()

    # ---- change notifications -------------------------------------------------------
    def watch(self, callback: Callable[[], None]) -> None:
        self._callbacks.append(callback)

    def _bump(self, notify: bool = True) -> None:
        with self._version_lock:
            self._version += 1
        if notify:
            for callback in self._callbacks:
                try:
                    callback()
                except Exception:  # e.g. the event loop closed during shutdown
                    log.debug("change callback failed", exc_info=True)

    def _listen(self) -> None:
        """LISTEN on :data:`CHANNEL`, reconnecting while the store is open."""
        down_since: float | None = None
        while not self._closed:
            try:
                con = self._connect()
            except psycopg.OperationalError:
                down_since = down_since or time.monotonic()
                time.sleep(LISTEN_RETRY_S)
                continue
            try:
                with con:
                    con.execute(f"LISTEN {CHANNEL}")
                    self.listening.set()
                    if down_since is not None:
                        log.warning("change listener reconnected after %.1fs",
                                    time.monotonic() - down_since)
                    down_since = None
                    self._bump()  # whatever was committed while nobody listened
                    while not self._closed:
                        for note in con.notifies(timeout=0.5):
                            if note.pid != self._writer_pid:
                                self._bump()
            except psycopg.OperationalError:
                log.warning("change listener lost its connection; reconnecting")
            finally:
                self.listening.clear()
            down_since = down_since or time.monotonic()

    def describe(self) -> dict:
        return {"kind": "postgres", "available": self.listening.is_set()}

    # ---- reads ----------------------------------------------------------------------
    def read_all(self) -> StoredState:
        """A consistent snapshot of the whole state (one repeatable-read transaction)."""
        with _unavailable(), self._connect() as con:
            con.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            con.autocommit = False
            ev = con.execute("SELECT seq, user_id, item_id, ts, weight FROM events "
                             "ORDER BY seq").fetchall()
            items = con.execute("SELECT item_id, title, text, categories, deleted FROM items "
                                "ORDER BY ord").fetchall()
            erased = {r[0] for r in con.execute("SELECT user_id FROM erasures")}
            change_seq = con.execute("SELECT COALESCE(MAX(seq), 0) FROM changes").fetchone()
            events_hi = con.execute("SELECT COALESCE(MAX(hi), 0) FROM changes "
                                    "WHERE kind = 'events'").fetchone()
            con.commit()
        assert change_seq is not None and events_hi is not None
        return StoredState(
            event_seq=np.fromiter((r[0] for r in ev), np.int64, len(ev)),
            event_user=[r[1] for r in ev], event_item=[r[2] for r in ev],
            event_ts=np.fromiter((r[3] for r in ev), np.float64, len(ev)),
            event_weight=np.fromiter((r[4] for r in ev), np.float32, len(ev)),
            items=[(r[0], r[1], r[2], json.loads(r[3]), bool(r[4])) for r in items],
            erased=erased, change_seq=int(change_seq[0]), events_hi=int(events_hi[0]))

    @contextmanager
    def _reading(self) -> Iterator[psycopg.Connection]:
        """The shared read connection (one thread at a time), reopened after a failure."""
        try:
            if self._read_con is None or self._read_con.closed:
                self._read_con = self._connect()
            yield self._read_con
        except psycopg.OperationalError as exc:
            if self._read_con is not None:
                self._read_con.close()
                self._read_con = None
            raise StoreUnavailable(f"PostgreSQL unavailable: {exc}".strip()) from exc

    def data_version(self) -> int:
        """Changes whenever this process commits or another process's change is notified."""
        return self._version

    def changes_since(self, seq: int) -> list[Change]:
        with self._reading() as con:
            rows = con.execute("SELECT seq, kind, lo, hi, key FROM changes WHERE seq > %s "
                               "ORDER BY seq", (seq,)).fetchall()
        return [Change(*r) for r in rows]

    def events_between(self, lo: int, hi: int) -> tuple[np.ndarray, EventRows]:
        with self._reading() as con:
            rows = con.execute("SELECT seq, user_id, item_id, event, ts, weight FROM events "
                               "WHERE seq BETWEEN %s AND %s ORDER BY seq", (lo, hi)).fetchall()
        return (np.fromiter((r[0] for r in rows), np.int64, len(rows)),
                EventRows([r[1] for r in rows], [r[2] for r in rows], [r[3] for r in rows],
                          [r[4] for r in rows], [r[5] for r in rows]))

    def items_by_id(self, item_ids: list[str]) -> list[ItemRow]:
        with self._reading() as con:
            rows = con.execute("SELECT item_id, title, text, categories FROM items "
                               "WHERE item_id = ANY(%s) AND NOT deleted", (item_ids,)).fetchall()
        found = {r[0]: ItemRow(r[0], r[1], r[2], json.loads(r[3])) for r in rows}
        return [found[i] for i in item_ids if i in found]

    def job(self, job_id: str) -> dict | None:
        with self._reading() as con:
            row = con.execute(
                "SELECT job_id, kind, items, added, updated, indexed, status, owner, created, "
                "finished, channel_errors FROM jobs WHERE job_id = %s", (job_id,)).fetchone()
        if row is None:
            return None
        keys = ("job_id", "kind", "items", "added", "updated", "indexed", "status", "owner",
                "created", "finished", "channel_errors")
        out = dict(zip(keys, row))
        out["channel_errors"] = json.loads(out["channel_errors"])
        return out

    def job_of_change(self, seq: int) -> tuple[str, str] | None:
        with self._reading() as con:
            row = con.execute("SELECT job_id, owner FROM jobs WHERE change_seq = %s",
                              (seq,)).fetchone()
        return (row[0], row[1]) if row else None

    def count_events(self) -> int:
        with _unavailable(), self._connect() as con:
            row = con.execute("SELECT COUNT(*) FROM events").fetchone()
        assert row is not None
        return int(row[0])

    def event_types(self, user_id: str) -> dict[tuple[str, float], str]:
        try:
            with self._connect() as con:
                rows = con.execute("SELECT item_id, ts, event FROM events WHERE user_id = %s "
                                   "ORDER BY seq", (user_id,)).fetchall()
        except psycopg.Error:
            return {}
        return {(item, float(ts)): event for item, ts, event in rows}


def _insert_events(cur: psycopg.Cursor, rows: EventRows) -> tuple[int, int]:
    now = time.time()
    # in batch order (ORDINALITY): the sequence numbers follow the order events were sent
    cur.execute(
        "INSERT INTO events(user_id, item_id, event, ts, weight, received) "
        "SELECT u, i, e, t, w, %s FROM unnest(%s::text[], %s::text[], %s::text[], "
        "%s::float8[], %s::float8[]) WITH ORDINALITY AS x(u, i, e, t, w, n) ORDER BY n "
        "RETURNING seq",
        (now, list(rows.user_id), list(rows.item_id), list(rows.event), list(rows.ts),
         list(rows.weight)))
    seqs = [r[0] for r in cur.fetchall()]
    cur.execute("INSERT INTO users(user_id, first_seen) SELECT u, %s FROM unnest(%s::text[]) "
                "AS x(u) ON CONFLICT DO NOTHING", (now, list(dict.fromkeys(rows.user_id))))
    # the write lock is held: nobody else draws from the sequence, so the batch's numbers
    # are consecutive
    first, last = min(seqs), max(seqs)
    _log_change(cur, "events", lo=first, hi=last)
    return first, last


def _log_change(cur: psycopg.Cursor, kind: str, lo: int = 0, hi: int = 0, key: str = "") -> int:
    cur.execute("INSERT INTO changes(kind, lo, hi, key) VALUES (%s, %s, %s, %s) RETURNING seq",
                (kind, lo, hi, key))
    row = cur.fetchone()
    assert row is not None
    return int(row[0])


def _upsert_items(cur: psycopg.Cursor, items: list[ItemRow]) -> None:
    now = time.time()
    row = cur.execute("SELECT COALESCE(MAX(ord), -1) + 1 FROM items").fetchone()
    assert row is not None
    base = row[0]
    cur.executemany(
        "INSERT INTO items(item_id, ord, title, text, categories, deleted, updated) "
        "VALUES (%s, %s, %s, %s, %s, false, %s) ON CONFLICT(item_id) DO UPDATE SET "
        "title = excluded.title, text = excluded.text, categories = excluded.categories, "
        "deleted = false, updated = excluded.updated",
        [(it.item_id, base + i, it.title, it.text, json.dumps(it.categories), now)
         for i, it in enumerate(items)])
