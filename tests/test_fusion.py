"""Fusion invariants (Hypothesis) and hand-checked cases."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from llmrecall.channels.base import Candidates
from llmrecall.fusion import ChannelWeight, fuse


def _cands(ids, evidence=None):
    ids = np.asarray(ids, np.int32)
    scores = np.where(ids >= 0, -np.arange(ids.shape[1], dtype=np.float32), -np.inf).astype(np.float32)
    ev = None if evidence is None else np.asarray(evidence, np.int32)
    return Candidates(ids, scores, ev, "item" if ev is not None else "none")


@st.composite
def channel_lists(draw):
    n_users = draw(st.integers(1, 4))
    n_items = draw(st.integers(1, 30))
    n_channels = draw(st.integers(1, 4))
    lists = {}
    for c in range(n_channels):
        k = draw(st.integers(1, 12))
        rows = []
        for _ in range(n_users):
            items = draw(st.lists(st.integers(0, n_items - 1), unique=True, max_size=k))
            rows.append(items + [-1] * (k - len(items)))
        lists[f"c{c}"] = _cands(rows)
    return lists, n_items


@settings(max_examples=150, deadline=None)
@given(channel_lists(), st.integers(1, 40))
def test_fused_lists_are_deduplicated_subsets_sorted_by_score(data, k):
    lists, _ = data
    fused = fuse(lists, k)
    for row in range(fused.ids.shape[0]):
        ids = fused.ids[row][fused.ids[row] >= 0]
        assert len(ids) == len(set(ids.tolist()))
        proposed = set()
        for c in lists.values():
            proposed |= set(c.ids[row][c.ids[row] >= 0].tolist())
        assert set(ids.tolist()) <= proposed
        assert len(ids) == min(k, len(proposed))
        scores = fused.scores[row][: len(ids)]
        assert np.all(np.diff(scores) <= 1e-7)
        # ranks recorded for a channel point back at the same item in that channel's list
        for col, item in enumerate(ids.tolist()):
            for c, name in enumerate(fused.channels):
                r = fused.ranks[row, col, c]
                if r >= 0:
                    assert lists[name].ids[row, r] == item


@settings(max_examples=100, deadline=None)
@given(channel_lists(), st.integers(1, 20), st.data())
def test_seen_and_disallowed_items_never_returned(data, k, draw):
    lists, n_items = data
    n_users = next(iter(lists.values())).ids.shape[0]
    allowed = np.array(draw.draw(st.lists(st.booleans(), min_size=n_items, max_size=n_items)))
    seen = [np.array(draw.draw(st.lists(st.integers(0, n_items - 1), max_size=5)), np.int64)
            for _ in range(n_users)]
    fused = fuse(lists, k, allowed=allowed, seen=seen)
    for row in range(n_users):
        ids = fused.ids[row][fused.ids[row] >= 0]
        assert allowed[ids].all()
        assert not set(ids.tolist()) & set(seen[row].tolist())


def test_single_channel_keeps_its_order():
    lists = {"a": _cands([[5, 3, 9, 1]])}
    assert fuse(lists, 4).ids.tolist() == [[5, 3, 9, 1]]


def test_agreement_between_channels_wins():
    # item 7 is second in both lists; RRF ranks it above each channel's lone first choice
    lists = {"a": _cands([[1, 7]]), "b": _cands([[2, 7]])}
    assert fuse(lists, 3).ids[0, 0] == 7


def test_weights_quota_and_min_slots():
    lists = {"a": _cands([[1, 2, 3, 4]]), "b": _cands([[9, 8, 7, 6]])}
    heavy_a = fuse(lists, 4, weights={"b": ChannelWeight(weight=0.01)})
    assert heavy_a.ids[0].tolist() == [1, 2, 3, 4]
    quota = fuse(lists, 4, weights={"a": ChannelWeight(quota=1), "b": ChannelWeight(weight=0.01)})
    assert quota.ids[0].tolist() == [1, 9, 8, 7]
    guaranteed = fuse(lists, 4, weights={"b": ChannelWeight(weight=0.01, min_slots=2)})
    assert set(guaranteed.ids[0].tolist()) == {1, 2, 9, 8}
    assert guaranteed.ids[0].tolist()[:2] == [1, 2]  # guarantees decide membership, not order


def test_evidence_travels_with_the_candidate():
    lists = {"a": _cands([[4, 5]], evidence=[[40, 50]]), "b": _cands([[5]])}
    fused = fuse(lists, 2)
    col = fused.ids[0].tolist().index(5)
    assert fused.sources(0, col) == [("a", 1, 50), ("b", 0, -1)]
