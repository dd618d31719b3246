"""Durable service state in SQLite: events, users, items, erasures.

One writer thread owns the write connection. Callers submit operations; the writer drains
everything queued, runs it in ONE transaction and commits once (group commit), then resolves
each operation's future. WAL mode with ``synchronous=FULL`` means a resolved future is an
fsync'ed commit: an acknowledged write survives a process kill or power loss.
"""

from __future__ import annotations

import json
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

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
CREATE TABLE IF NOT EXISTS items (
    item_id TEXT PRIMARY KEY,
    ord INTEGER NOT NULL,
    title TEXT NOT NULL,
    text TEXT NOT NULL,
    categories TEXT NOT NULL,
    deleted INTEGER NOT NULL DEFAULT 0,
    updated REAL NOT NULL
);
"""

#: operations one transaction may hold; bounds the latency of the first one in a group
MAX_GROUP = 256


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
class StoredState:
    """Everything replayed at start: events (ordered by seq), items, erased users."""

    event_seq: np.ndarray  # int64[m]
    event_user: list[str]
    event_item: list[str]
    event_ts: np.ndarray  # float64[m]
    event_weight: np.ndarray  # float32[m]
    items: list[tuple[str, str, str, list[str], bool]]  # id, title, text, categories, deleted
    erased: set[str]


def connect(path: Path) -> sqlite3.Connection:
    con = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=FULL")
    con.execute("PRAGMA busy_timeout=10000")
    return con


class Store:
    """The SQLite state file and its writer thread. Methods returning a Future are durable
    once the future resolves; reads use a separate connection."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._con = connect(self.path)
        self._con.executescript(SCHEMA)
        self._queue: queue.Queue = queue.Queue()
        self._closed = False
        self.commits = 0  # transactions committed (group commits)
        self._thread = threading.Thread(target=self._run, name="llmrecall-store", daemon=True)
        self._thread.start()

    # ---- writes (durable when the returned future resolves) -------------------------
    def append_events(self, rows: EventRows) -> Future:
        """Insert a batch; the future yields ``(first_seq, last_seq)``."""
        return self._submit(lambda cur: _insert_events(cur, rows))

    def upsert_items(self, items: list[ItemRow]) -> Future:
        return self._submit(lambda cur: _upsert_items(cur, items))

    def delete_item(self, item_id: str, known_title: str = "") -> Future:
        def op(cur: sqlite3.Cursor) -> None:
            now = time.time()
            cur.execute("INSERT INTO items(item_id, ord, title, text, categories, deleted, updated)"
                        " VALUES (?, (SELECT COALESCE(MAX(ord), -1) + 1 FROM items), ?, '', '[]', 1, ?)"
                        " ON CONFLICT(item_id) DO UPDATE SET deleted=1, updated=excluded.updated",
                        (item_id, known_title, now))
        return self._submit(op)

    def erase_user(self, user_id: str) -> Future:
        """Delete the user's events and record the erasure; the future yields the count."""
        def op(cur: sqlite3.Cursor) -> int:
            n = cur.execute("DELETE FROM events WHERE user_id = ?", (user_id,)).rowcount
            cur.execute("DELETE FROM users WHERE user_id = ?", (user_id,))
            cur.execute("INSERT OR REPLACE INTO erasures(user_id, erased_at) VALUES (?, ?)",
                        (user_id, time.time()))
            return n
        return self._submit(op)

    def _submit(self, op: Callable[[sqlite3.Cursor], object]) -> Future:
        if self._closed:
            raise RuntimeError("the state store is closed")
        fut: Future = Future()
        self._queue.put((op, fut))
        return fut

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            group = [first]
            while len(group) < MAX_GROUP:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)  # finish this group, then stop
                    break
                group.append(nxt)
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
            con.execute("COMMIT")
        finally:
            con.close()
        return StoredState(
            event_seq=np.fromiter((r[0] for r in ev), np.int64, len(ev)),
            event_user=[r[1] for r in ev], event_item=[r[2] for r in ev],
            event_ts=np.fromiter((r[3] for r in ev), np.float64, len(ev)),
            event_weight=np.fromiter((r[4] for r in ev), np.float32, len(ev)),
            items=[(r[0], r[1], r[2], json.loads(r[3]), bool(r[4])) for r in items],
            erased=erased)

    def count_events(self) -> int:
        con = connect(self.path)
        try:
            return con.execute("SELECT COUNT(*) FROM events").fetchone()[0]
        finally:
            con.close()


def _insert_events(cur: sqlite3.Cursor, rows: EventRows) -> tuple[int, int]:
    now = time.time()
    cur.executemany("INSERT INTO events(user_id, item_id, event, ts, weight, received) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    zip(rows.user_id, rows.item_id, rows.event, rows.ts, rows.weight,
                        [now] * len(rows.user_id)))
    last = cur.execute("SELECT last_insert_rowid()").fetchone()[0]
    cur.executemany("INSERT OR IGNORE INTO users(user_id, first_seen) VALUES (?, ?)",
                    [(u, now) for u in dict.fromkeys(rows.user_id)])
    # one writer and AUTOINCREMENT: the batch got consecutive sequence numbers
    return last - len(rows.user_id) + 1, last


def _upsert_items(cur: sqlite3.Cursor, items: list[ItemRow]) -> None:
    now = time.time()
    base = cur.execute("SELECT COALESCE(MAX(ord), -1) + 1 FROM items").fetchone()[0]
    cur.executemany(
        "INSERT INTO items(item_id, ord, title, text, categories, deleted, updated) "
        "VALUES (?, ?, ?, ?, ?, 0, ?) ON CONFLICT(item_id) DO UPDATE SET title=excluded.title, "
        "text=excluded.text, categories=excluded.categories, deleted=0, updated=excluded.updated",
        [(it.item_id, base + i, it.title, it.text, json.dumps(it.categories), now)
         for i, it in enumerate(items)])
