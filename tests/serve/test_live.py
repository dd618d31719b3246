"""LiveState: events merged into histories in time order, co-visits, erasure, idempotence."""

from __future__ import annotations

import numpy as np
import pytest

from llmrecall.serve.artifacts import load_artifact
from llmrecall.serve.live import COVISIT_WINDOW, LiveState
from llmrecall.serve.store import Store


@pytest.fixture
def state(artifact, tmp_path):
    return LiveState(load_artifact(artifact), Store(tmp_path / "s.sqlite").read_all())


def test_events_merge_in_time_order_and_replays_are_skipped(state):
    ids = state.items.lookup(["50", "181", "1", "172"])
    row = state.row_for("196")
    before = state.history(row)
    t_last = float(before.times[-1])
    changed = state.apply_events(1, ["196", "new-u", "196"], ids[:3],
                                 np.array([t_last + 10, 5.0, t_last - 1e6]), np.ones(3, np.float32))
    assert sorted(changed) == ["196", "new-u"]
    after = state.history(row)
    assert len(after) == len(before) + 2
    assert np.all(np.diff(after.times) >= 0)
    assert after.items[-1] == ids[0] and ids[2] in after.items[:len(after) // 2 + 1]
    assert state.history(state.row_for("new-u")).items.tolist() == [ids[1]]
    # the same sequence numbers again (a replayed batch) change nothing
    assert state.apply_events(1, ["196", "new-u", "196"], ids[:3], np.zeros(3),
                              np.ones(3, np.float32)) == []
    assert len(state.history(row)) == len(after)


def test_covisits_pair_new_events_with_recent_history_and_erasure_removes_them(state):
    a, b, c = state.items.lookup(["50", "181", "1"]).tolist()
    pop_before = state.popularity.copy()
    state.apply_events(1, ["x", "x", "y"], np.array([a, b, a], np.int32),
                       np.array([1.0, 2.0, 1.0]), np.ones(3, np.float32))
    state.apply_events(4, ["y"], np.array([c], np.int32), np.array([2.0]), np.ones(1, np.float32))
    base, delta = state.covisit.matrices()
    m = (base + delta).toarray() if delta is not None else base.toarray()
    assert m[a, b] == m[b, a] == 1 and m[a, c] == m[c, a] == 1 and m[b, c] == 0
    assert state.popularity[a] == pop_before[a] + 2
    state.erase_user("y")
    base, delta = state.covisit.matrices()
    m = (base + delta).toarray() if delta is not None else base.toarray()
    assert m[a, c] == 0 and m[a, b] == 1
    assert state.popularity[a] == pop_before[a] + 1 and state.row_for("y") is None


def test_covisit_window_is_bounded(state):
    items = state.items.lookup([str(i) for i in range(1, COVISIT_WINDOW + 3)])
    state.apply_events(1, ["w"] * len(items), items, np.arange(len(items), dtype=float),
                       np.ones(len(items), np.float32))
    base, delta = state.covisit.matrices()
    m = (base + delta).toarray() if delta is not None else base.toarray()
    first, last = items[0], items[-1]
    assert m[first, items[COVISIT_WINDOW]] == 1 and m[first, last] == 0
