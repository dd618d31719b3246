"""The PostgreSQL store beyond what every store does (tests/serve/test_store.py): replicas
starting together, change notifications, writes in commit order across replicas, and the
database going away and coming back."""

from __future__ import annotations

import threading
import time

import pytest

from llmrecall.serve.store import EventRows, StoreUnavailable


def rows(user: str, n: int, start: float = 0.0) -> EventRows:
    return EventRows([user] * n, [f"i{j}" for j in range(n)], ["view"] * n,
                     [start + j for j in range(n)], [1.0] * n)


def _wait(predicate, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def test_replicas_starting_together_create_the_schema_once(pg_dsn):
    import psycopg

    from llmrecall.serve.pgstore import MIGRATIONS, PostgresStore

    start, stores, errors = threading.Barrier(4), [], []

    def open_one() -> None:
        start.wait()
        try:
            stores.append(PostgresStore(pg_dsn))
        except Exception as exc:  # noqa: BLE001 (reported below)
            errors.append(repr(exc))

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for store in stores:
        store.close()
    assert errors == [] and len(stores) == 4
    with psycopg.connect(pg_dsn) as con:
        assert con.execute("SELECT version FROM schema_version").fetchall() == [(len(MIGRATIONS),)]


def test_two_replicas_writing_at_once_log_changes_in_commit_order(pg_dsn):
    from llmrecall.serve.pgstore import PostgresStore

    a, b = PostgresStore(pg_dsn), PostgresStore(pg_dsn)
    notified = threading.Event()
    b.watch(notified.set)
    assert _wait(lambda: a.listening.is_set() and b.listening.is_set())
    notified.clear()
    before = b.data_version()
    a.append_events(rows("first", 2)).result()
    assert notified.wait(10), "B was not notified of A's commit"
    assert b.data_version() != before
    futures, lock = [], threading.Lock()

    def submit(store, w):
        for n in range(15):
            f = store.append_events(rows(f"u{w}", 4, n * 4))
            with lock:
                futures.append(f)

    threads = [threading.Thread(target=submit, args=(store, w))
               for w, store in enumerate([a, b, a, b])]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    ranges = sorted(f.result() for f in futures)
    assert [hi - lo for lo, hi in ranges] == [3] * 60  # each batch consecutive
    assert all(ranges[i][1] < ranges[i + 1][0] for i in range(59))
    # the log lists the batches in commit order: a reader that applied up to a change never
    # finds an earlier-numbered change committed behind it, so event ranges rise with it
    changes = [c for c in b.changes_since(0) if c.kind == "events"]
    assert len(changes) == 61
    assert [c.lo for c in changes] == sorted(c.lo for c in changes)
    assert a.commits + b.commits < 61 + 2  # some batches shared a commit
    a.close()
    b.close()


def test_database_down_fails_writes_and_they_resume_when_it_returns(own_postgres):
    from llmrecall.serve.pgstore import PostgresStore

    dsn = own_postgres.create_database()
    store = PostgresStore(dsn)
    assert store.append_events(rows("u", 2)).result() == (1, 2)
    assert _wait(lambda: store.describe()["available"])
    own_postgres.stop()
    with pytest.raises(StoreUnavailable):
        store.append_events(rows("u", 2, 10)).result(timeout=30)
    assert _wait(lambda: not store.describe()["available"])
    version = store.data_version()  # nothing counts while the database is down
    own_postgres.start()
    assert store.append_events(rows("u", 2, 20)).result(timeout=30)[1] >= 3
    # the listener reconnects by itself and counts a change (whatever it missed)
    assert _wait(lambda: store.describe()["available"] and store.data_version() > version + 1)
    assert store.count_events() == 4  # the failed batch was not stored
    store.close()
