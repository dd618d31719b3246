"""SQLite state store: durable group commits, all-or-nothing batches."""

from __future__ import annotations

import sqlite3
import threading

import pytest

from llmrecall.serve.store import EventRows, ItemRow, Store


def rows(user: str, n: int, start: float = 0.0) -> EventRows:
    return EventRows([user] * n, [f"i{j}" for j in range(n)], ["view"] * n,
                     [start + j for j in range(n)], [1.0] * n)


def test_events_items_erasures_round_trip(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    assert store.append_events(rows("u1", 3)).result() == (1, 3)
    assert store.append_events(rows("u2", 2, 10)).result() == (4, 5)
    store.upsert_items([ItemRow("x", "Title X", "text", ["a"])]).result()
    store.delete_item("y", "Title Y").result()
    assert store.erase_user("u1").result() == 3
    store.close()
    state = Store(tmp_path / "s.sqlite").read_all()
    assert state.event_user == ["u2", "u2"] and state.event_seq.tolist() == [4, 5]
    assert state.items == [("x", "Title X", "text", ["a"], False), ("y", "Title Y", "", [], True)]
    assert state.erased == {"u1"}
    con = sqlite3.connect(tmp_path / "s.sqlite")
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_concurrent_batches_share_commits(tmp_path):
    store = Store(tmp_path / "s.sqlite")
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


def test_failed_group_acknowledges_nothing(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    bad = EventRows(["u"], ["i"], ["view"], [None], [1.0])  # NOT NULL violation
    with pytest.raises(sqlite3.IntegrityError):
        store.append_events(bad).result()
    assert store.count_events() == 0
    store.append_events(rows("u", 2)).result()  # the writer goes on after a failed group
    assert store.count_events() == 2
    store.close()
