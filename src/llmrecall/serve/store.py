"""Durable service state in SQLite: events, users, items, erasures, and a change log.

One writer thread owns the write connection. Callers submit operations; the writer drains
everything queued, runs it in ONE transaction and commits once (group commit), then resolves
each operation's future. WAL mode with ``synchronous=FULL`` means a resolved future is an
fsync'ed commit: an acknowledged write survives a process kill or power loss.

Every write also appends one row to ``changes`` in the same transaction: the ordered log
that lets several server processes share one state file. A process that did not make a
change finds it with :meth:`Store.changes_since` and applies it (``serve.sync``); ``PRAGMA
data_version`` tells it, in microseconds, whether anything was committed since it last
looked.

:class:`StateStore` is what the service needs of a store; :class:`Store` (this module) and
:class:`~llmrecall.serve.pgstore.PostgresStore` (replicas over one PostgreSQL) implement it,
and :func:`llmrecall.serve.stores.open_store` picks one from the serve settings.
"""

from __future__ import annotations

import fcntl
import json
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id TEXT NOT NULL,
    item_id TEXT NOT NULL,
    event TEXT NOT NULL,
    ts REAL NOT NULL,
    weight REAL NOT NULL,
    received REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS events_user ON events(user_id);
CREATE TABLE IF NOT EXISTS users (
    user_id TEXT PRIMARY KEY,
    first_seen REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS erasures (
    user_id TEXT PRIMARY KEY,
    erased_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    lo INTEGER NOT NULL DEFAULT 0,
    hi INTEGER NOT NULL DEFAULT 0,
    key TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS items (
    item_id TEXT PRIMARY KEY,
    ord INTEGER NOT NULL,
    title TEXT NOT NULL,
    text TEXT NOT NULL,
    categories TEXT NOT NULL,
    deleted INTEGER NOT NULL DEFAULT 0,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    items INTEGER NOT NULL,
    added INTEGER NOT NULL,
    updated INTEGER NOT NULL,
    indexed INTEGER NOT NULL DEFAULT 0,
    status TEXT NOT NULL,
    owner TEXT NOT NULL,
    created REAL NOT NULL,
    finished REAL,
    channel_errors TEXT NOT NULL DEFAULT '[]',
    change_seq INTEGER NOT NULL DEFAULT 0
);
"""

#: ``changes.kind`` values: an event batch (``lo..hi`` = its event seqs), items put (``key``
#: = JSON list of item ids), an item deleted / a user erased (``key`` = the id), an artifact
#: reload asked of every process
CHANGE_KINDS = ("events", "items", "delete_item", "erase_user", "reload")

#: operations one transaction may hold; bounds the latency of the first one in a group
MAX_GROUP = 256


def next_group(writes: queue.Queue) -> list | None:
    """The next group of writes to commit in one transaction (group commit): the first
    queued one (waiting for it) and whatever else is queued already, up to ``MAX_GROUP``.
    None once ``close()`` has queued its stop mark (``None``) and no write is left before it.
    Shared by the SQLite and PostgreSQL stores' writer threads."""
    first = writes.get()
    if first is None:
        return None
    group = [first]
    while len(group) < MAX_GROUP:
        try:
            nxt = writes.get_nowait()
        except queue.Empty:
            break
        if nxt is None:
            writes.put(None)  # finish this group, then stop
            break
        group.append(nxt)
    return group


@dataclass(frozen=True)
class EventRows:
    """A validated batch of events (parallel lists, raw ids)."""

    user_id: Sequence[str]
    item_id: Sequence[str]
    event: Sequence[str]
    ts: Sequence[float]
    weight: Sequence[float]


@dataclass(frozen=True)
class ItemRow:
    item_id: str
    title: str
    text: str
    categories: list[str]


@dataclass(frozen=True)
class Job:
    """A bulk item write whose channel indexing runs after the acknowledgement: ``items``
    written (``added`` new, ``updated`` known), by the process ``owner`` (``"pid:start time"``,
    which tells a dead owner from a later process given the same pid)."""

    job_id: str
    items: int
    added: int
    updated: int
    owner: str


@dataclass(frozen=True)
class StoredState:
    """Everything replayed at start: events (ordered by seq), items, erased users."""

    event_seq: np.ndarray  # int64[m]
    event_user: list[str]
    event_item: list[str]
    event_ts: np.ndarray  # float64[m]
    event_weight: np.ndarray  # float32[m]
    items: list[tuple[str, str, str, list[str], bool]]  # id, title, text, categories, deleted
    erased: set[str]
    change_seq: int = 0  # the last change this snapshot includes
    # the highest event sequence number handed out up to this snapshot, erased events
    # included (0: not known; the PostgreSQL store fills it)
    events_hi: int = 0


@dataclass(frozen=True)
class Change:
    """One row of the change log (see :data:`CHANGE_KINDS`)."""

    seq: int
    kind: str
    lo: int
    hi: int
    key: str


class StoreUnavailable(Exception):
    """The store cannot be reached (its database is down or the connection broke): a write
    that fails with this was not acknowledged (answered 503 with ``Retry-After``), and a
    write whose commit was cut off may or may not be stored (the client retries)."""


class StateStore(Protocol):
    """What the service needs of a durable state store. Writes return a Future that resolves
    once the write is committed durably (and fails with the group's error otherwise, or
    :class:`StoreUnavailable`); the change-log reads are called from one thread."""

    commits: int

    def append_events(self, rows: EventRows) -> Future: ...
    def upsert_items(self, items: list[ItemRow], job: Job | None = None) -> Future: ...
    def update_job(self, job_id: str, indexed: int, status: str = "indexing",
                   channel_errors: Collection[str] = ()) -> Future: ...
    def request_reload(self, version: str) -> Future: ...
    def delete_item(self, item_id: str, known_title: str = "") -> Future: ...
    def erase_user(self, user_id: str) -> Future: ...
    def close(self) -> None: ...
    def read_all(self) -> StoredState: ...
    def data_version(self) -> int: ...
    def changes_since(self, seq: int) -> list[Change]: ...
    def events_between(self, lo: int, hi: int) -> tuple[np.ndarray, EventRows]: ...
    def items_by_id(self, item_ids: list[str]) -> list[ItemRow]: ...
    def job(self, job_id: str) -> dict | None: ...
    def job_of_change(self, seq: int) -> tuple[str, str] | None: ...
    def count_events(self) -> int: ...
    def event_types(self, user_id: str) -> dict[tuple[str, float], str]: ...

    def watch(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (from any thread) whenever another process may have committed a
        change; a store without notifications never calls it (readers poll
        :meth:`data_version`)."""

    def describe(self) -> dict:
        """``{"kind", "available"}`` for /healthz (no secrets)."""


#: how long a connection waits for another process's lock before failing (seconds)
BUSY_TIMEOUT_S = 10.0


def connect(path: Path) -> sqlite3.Connection:
    # the busy timeout is set when the connection opens, before anything asks for a lock
    con = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None,
                          check_same_thread=False)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=FULL")
    return con


@contextmanager
def _initialising(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``<path>.init-lock`` while one process creates or upgrades
    the state file. Processes starting together on one new file (separately started
    ``--shared-state`` servers, ``--workers``) otherwise race: switching to WAL and creating
    the tables upgrade a read lock to a write lock, and SQLite answers such an upgrade that
    could deadlock with an immediate "database is locked", without waiting."""
    with open(path.with_name(path.name + ".init-lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


class Store:
    """The SQLite state file and its writer thread. Methods returning a Future are durable
    once the future resolves; reads use a separate connection."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with _initialising(self.path):
            self._con = connect(self.path)
            self._con.executescript(SCHEMA)
        self._read_con: sqlite3.Connection | None = None  # opened on first shared read
        self._queue: queue.Queue = queue.Queue()
        self._closed = False
        self.commits = 0  # transactions committed (group commits)
        self._thread = threading.Thread(target=self._run, name="llmrecall-store", daemon=True)
        self._thread.start()

    # ---- writes (durable when the returned future resolves) -------------------------
    def append_events(self, rows: EventRows) -> Future:
        """Insert a batch; the future yields ``(first_seq, last_seq)``."""
        return self._submit(lambda cur: _insert_events(cur, rows))

    def upsert_items(self, items: list[ItemRow], job: Job | None = None) -> Future:
        """Add or update ``items``; with ``job``, record it (status ``indexing``) in the
        same transaction. The future yields the change-log seq of the write."""
        def op(cur: sqlite3.Cursor) -> int:
            _upsert_items(cur, items)
            seq = _log_change(cur, "items", key=json.dumps([it.item_id for it in items]))
            if job is not None:
                cur.execute("INSERT INTO jobs(job_id, kind, items, added, updated, status, owner, "
                            "created, change_seq) VALUES (?, 'items', ?, ?, ?, 'indexing', ?, ?, ?)",
                            (job.job_id, job.items, job.added, job.updated, job.owner, time.time(),
                             seq))
            return seq
        return self._submit(op)

    def update_job(self, job_id: str, indexed: int, status: str = "indexing",
                   channel_errors: Collection[str] = ()) -> Future:
        """Record a job's progress (``status`` ``done`` also records when it finished)."""
        def op(cur: sqlite3.Cursor) -> None:
            cur.execute("UPDATE jobs SET indexed = ?, status = ?, channel_errors = ?, "
                        "finished = CASE WHEN ? = 'indexing' THEN NULL ELSE ? END "
                        "WHERE job_id = ?", (indexed, status, json.dumps(sorted(channel_errors)),
                                             status, time.time(), job_id))
        return self._submit(op)

    def request_reload(self, version: str) -> Future:
        """Log that the artifact ``version`` was loaded: other processes reload too."""
        return self._submit(lambda cur: _log_change(cur, "reload", key=version))

    def delete_item(self, item_id: str, known_title: str = "") -> Future:
        def op(cur: sqlite3.Cursor) -> None:
            now = time.time()
            cur.execute("INSERT INTO items(item_id, ord, title, text, categories, deleted, updated)"
                        " VALUES (?, (SELECT COALESCE(MAX(ord), -1) + 1 FROM items), ?, '', '[]', 1, ?)"
                        " ON CONFLICT(item_id) DO UPDATE SET deleted=1, updated=excluded.updated",
                        (item_id, known_title, now))
            _log_change(cur, "delete_item", key=item_id)
        return self._submit(op)

    def erase_user(self, user_id: str) -> Future:
        """Delete the user's events and record the erasure; the future yields the count."""
        def op(cur: sqlite3.Cursor) -> int:
            n = cur.execute("DELETE FROM events WHERE user_id = ?", (user_id,)).rowcount
            cur.execute("DELETE FROM users WHERE user_id = ?", (user_id,))
            cur.execute("INSERT OR REPLACE INTO erasures(user_id, erased_at) VALUES (?, ?)",
                        (user_id, time.time()))
            _log_change(cur, "erase_user", key=user_id)
            return n
        return self._submit(op)

    def _submit(self, op: Callable[[sqlite3.Cursor], object]) -> Future:
        if self._closed:
            raise RuntimeError("the state store is closed")
        fut: Future = Future()
        self._queue.put((op, fut))
        return fut

    def _run(self) -> None:
        while (group := next_group(self._queue)) is not None:
            results: list = []
            cur = self._con.cursor()
            try:
                cur.execute("BEGIN IMMEDIATE")
                for op, _fut in group:
                    results.append(op(cur))
                cur.execute("COMMIT")
                self.commits += 1
            except Exception as exc:  # the whole group failed: nobody is acknowledged
                try:
                    cur.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
                for _op, fut in group:
                    fut.set_exception(exc)
                continue
            for (_op, fut), result in zip(group, results):
                fut.set_result(result)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._queue.put(None)
            self._thread.join(timeout=30)
            self._con.close()
            if self._read_con is not None:
                self._read_con.close()

    # ---- reads ----------------------------------------------------------------------
    def read_all(self) -> StoredState:
        """A consistent snapshot of the whole state (one read transaction)."""
        con = connect(self.path)
        try:
            con.execute("BEGIN")
            ev = con.execute("SELECT seq, user_id, item_id, ts, weight FROM events ORDER BY seq").fetchall()
            items = con.execute("SELECT item_id, title, text, categories, deleted FROM items "
                                "ORDER BY ord").fetchall()
            erased = {r[0] for r in con.execute("SELECT user_id FROM erasures")}
            change_seq = con.execute("SELECT COALESCE(MAX(seq), 0) FROM changes").fetchone()[0]
            con.execute("COMMIT")
        finally:
            con.close()
        return StoredState(
            event_seq=np.fromiter((r[0] for r in ev), np.int64, len(ev)),
            event_user=[r[1] for r in ev], event_item=[r[2] for r in ev],
            event_ts=np.fromiter((r[3] for r in ev), np.float64, len(ev)),
            event_weight=np.fromiter((r[4] for r in ev), np.float32, len(ev)),
            items=[(r[0], r[1], r[2], json.loads(r[3]), bool(r[4])) for r in items],
            erased=erased, change_seq=int(change_seq))

    # ---- reads for processes sharing the file (called from one thread) ----------------
    def _reader(self) -> sqlite3.Connection:
        con = self._read_con
        if con is None:
            con = self._read_con = connect(self.path)
        return con

    def data_version(self) -> int:
        """Changes whenever any other connection (another process, or this store's writer)
        commits: a cheap "is there anything new" probe."""
        return self._reader().execute("PRAGMA data_version").fetchone()[0]

    def changes_since(self, seq: int) -> list[Change]:
        """Change-log rows after ``seq``, oldest first."""
        rows = self._reader().execute(
            "SELECT seq, kind, lo, hi, key FROM changes WHERE seq > ? ORDER BY seq", (seq,))
        return [Change(*r) for r in rows]

    def events_between(self, lo: int, hi: int) -> tuple[np.ndarray, EventRows]:
        """The stored events with ``lo <= seq <= hi`` (an erased user's are gone), in seq order,
        as ``(seqs int64[m], rows)``."""
        rows = self._reader().execute(
            "SELECT seq, user_id, item_id, event, ts, weight FROM events "
            "WHERE seq BETWEEN ? AND ? ORDER BY seq", (lo, hi)).fetchall()
        return (np.fromiter((r[0] for r in rows), np.int64, len(rows)),
                EventRows([r[1] for r in rows], [r[2] for r in rows], [r[3] for r in rows],
                          [r[4] for r in rows], [r[5] for r in rows]))

    def items_by_id(self, item_ids: list[str]) -> list[ItemRow]:
        """The stored rows of these items that are not deleted (in the given order)."""
        con = self._reader()
        out = []
        for item_id in item_ids:
            r = con.execute("SELECT title, text, categories FROM items WHERE item_id = ? "
                            "AND deleted = 0", (item_id,)).fetchone()
            if r is not None:
                out.append(ItemRow(item_id, r[0], r[1], json.loads(r[2])))
        return out

    def job(self, job_id: str) -> dict | None:
        """The stored record of a job (any process's), or None."""
        row = self._reader().execute(
            "SELECT job_id, kind, items, added, updated, indexed, status, owner, created, "
            "finished, channel_errors FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        if row is None:
            return None
        keys = ("job_id", "kind", "items", "added", "updated", "indexed", "status", "owner",
                "created", "finished", "channel_errors")
        out = dict(zip(keys, row))
        out["channel_errors"] = json.loads(out["channel_errors"])
        return out

    def job_of_change(self, seq: int) -> tuple[str, str] | None:
        """``(job id, owner)`` of the job recorded with the change ``seq``, if any."""
        row = self._reader().execute("SELECT job_id, owner FROM jobs WHERE change_seq = ?",
                                     (seq,)).fetchone()
        return (row[0], row[1]) if row else None

    def count_events(self) -> int:
        con = connect(self.path)
        try:
            return con.execute("SELECT COUNT(*) FROM events").fetchone()[0]
        finally:
            con.close()

    def event_types(self, user_id: str) -> dict[tuple[str, float], str]:
        """``{(item id, timestamp): event type}`` of the user's stored events (any thread:
        its own connection)."""
        if not self.path.exists():
            return {}
        con = connect(self.path)
        try:
            rows = con.execute("SELECT item_id, ts, event FROM events WHERE user_id = ? "
                               "ORDER BY seq", (user_id,)).fetchall()
        except sqlite3.Error:
            return {}
        finally:
            con.close()
        return {(item, float(ts)): event for item, ts, event in rows}

    def watch(self, callback: Callable[[], None]) -> None:
        """Nothing to watch: processes sharing the file poll :meth:`data_version`."""

    def describe(self) -> dict:
        return {"kind": "sqlite", "available": True}


def _insert_events(cur: sqlite3.Cursor, rows: EventRows) -> tuple[int, int]:
    now = time.time()
    cur.executemany("INSERT INTO events(user_id, item_id, event, ts, weight, received) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    zip(rows.user_id, rows.item_id, rows.event, rows.ts, rows.weight,
                        [now] * len(rows.user_id)))
    last = cur.execute("SELECT last_insert_rowid()").fetchone()[0]
    cur.executemany("INSERT OR IGNORE INTO users(user_id, first_seen) VALUES (?, ?)",
                    [(u, now) for u in dict.fromkeys(rows.user_id)])
    # one writer at a time (the transaction holds SQLite's write lock, also against other
    # processes) and AUTOINCREMENT: the batch got consecutive sequence numbers
    first = last - len(rows.user_id) + 1
    _log_change(cur, "events", lo=first, hi=last)
    return first, last


def _log_change(cur: sqlite3.Cursor, kind: str, lo: int = 0, hi: int = 0, key: str = "") -> int:
    cur.execute("INSERT INTO changes(kind, lo, hi, key) VALUES (?, ?, ?, ?)", (kind, lo, hi, key))
    assert cur.lastrowid is not None  # an INSERT always sets it
    return cur.lastrowid


def _upsert_items(cur: sqlite3.Cursor, items: list[ItemRow]) -> None:
    now = time.time()
    base = cur.execute("SELECT COALESCE(MAX(ord), -1) + 1 FROM items").fetchone()[0]
    cur.executemany(
        "INSERT INTO items(item_id, ord, title, text, categories, deleted, updated) "
        "VALUES (?, ?, ?, ?, ?, 0, ?) ON CONFLICT(item_id) DO UPDATE SET title=excluded.title, "
        "text=excluded.text, categories=excluded.categories, deleted=0, updated=excluded.updated",
        [(it.item_id, base + i, it.title, it.text, json.dumps(it.categories), now)
         for i, it in enumerate(items)])
