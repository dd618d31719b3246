"""State stores (SQLite, and PostgreSQL where a server can be started): durable group
commits, all-or-nothing batches."""

from __future__ import annotations

import multiprocessing
import multiprocessing.synchronize
import sqlite3
import threading

import pytest

from llmrecall.serve.store import EventRows, ItemRow, Store


@pytest.fixture(params=["sqlite", "postgres"])
def open_store(request, tmp_path):
    """A function opening the test's store (again: the same database or file)."""
    if request.param == "sqlite":
        return lambda: Store(tmp_path / "s.sqlite")
    from llmrecall.serve.pgstore import PostgresStore

    dsn = request.getfixturevalue("pg_dsn")
    return lambda: PostgresStore(dsn)


def rows(user: str, n: int, start: float = 0.0) -> EventRows:
    return EventRows([user] * n, [f"i{j}" for j in range(n)], ["view"] * n,
                     [start + j for j in range(n)], [1.0] * n)


def test_events_items_erasures_round_trip(open_store, tmp_path):
    store = open_store()
    assert store.append_events(rows("u1", 3)).result() == (1, 3)
    assert store.append_events(rows("u2", 2, 10)).result() == (4, 5)
    store.upsert_items([ItemRow("x", "Title X", "text", ["a"])]).result()
    store.delete_item("y", "Title Y").result()
    assert store.erase_user("u1").result() == 3
    store.close()
    again = open_store()
    state = again.read_all()
    again.close()
    assert state.event_user == ["u2", "u2"] and state.event_seq.tolist() == [4, 5]
    assert state.items == [("x", "Title X", "text", ["a"], False), ("y", "Title Y", "", [], True)]
    assert state.erased == {"u1"}
    if not isinstance(again, Store):
        return
    con = sqlite3.connect(tmp_path / "s.sqlite")
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_concurrent_batches_share_commits(open_store):
    store = open_store()
    futures, lock = [], threading.Lock()

    def submit(w):
        for b in range(20):
            f = store.append_events(rows(f"u{w}", 5, b * 5))
            with lock:
                futures.append(f)

    threads = [threading.Thread(target=submit, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ranges = sorted(f.result() for f in futures)
    assert len(ranges) == 160
    # each batch got its own consecutive sequence range, no overlaps, nothing lost
    assert [b - a for a, b in ranges] == [4] * 160
    assert all(ranges[i][1] + 1 == ranges[i + 1][0] for i in range(159))
    assert store.count_events() == 800
    assert store.commits < 160  # batches queued together were committed together
    store.close()


def test_failed_group_acknowledges_nothing(open_store):
    store = open_store()
    bad = EventRows(["u"], ["i"], ["view"], [None], [1.0])  # NOT NULL violation
    integrity: type[Exception] = sqlite3.IntegrityError
    if not isinstance(store, Store):
        import psycopg

        integrity = psycopg.IntegrityError
    with pytest.raises(integrity):
        store.append_events(bad).result()
    assert store.count_events() == 0
    store.append_events(rows("u", 2)).result()  # the writer goes on after a failed group
    assert store.count_events() == 2
    store.close()



#: rounds of processes creating one new state file together; with the old connect() about
#: 1 open in 120 failed, so 4 processes x 60 rounds catch it nearly always
RACE_PROCESSES, RACE_ROUNDS = 4, 60


def _open_new_stores(folder: str, start: multiprocessing.synchronize.Barrier,
                     failures: multiprocessing.Queue) -> None:
    failed = []
    for round_ in range(RACE_ROUNDS):
        start.wait()  # every process opens this round's new file at the same moment
        try:
            Store(f"{folder}/state-{round_}.sqlite").close()
        except sqlite3.OperationalError as exc:
            failed.append(str(exc))
    failures.put(failed)


def test_processes_creating_one_state_file_at_once_all_start(tmp_path):
    # Regression: two separately started --shared-state servers on a new state file failed
    # with "database is locked": the switch to WAL needs the write lock, and it was asked
    # for before the busy timeout was set, so a process that lost the race gave up at once.
    ctx = multiprocessing.get_context("spawn")
    start, failures = ctx.Barrier(RACE_PROCESSES), ctx.Queue()
    procs = [ctx.Process(target=_open_new_stores, args=(str(tmp_path), start, failures))
             for _ in range(RACE_PROCESSES)]
    for p in procs:
        p.start()
    failed = [msg for _ in procs for msg in failures.get(timeout=300)]
    for p in procs:
        p.join(timeout=60)
    assert failed == []
    assert [p.exitcode for p in procs] == [0] * RACE_PROCESSES
    con = sqlite3.connect(tmp_path / "state-0.sqlite")
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    con.close()
