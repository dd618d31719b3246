"""The tuner's ids-only fusion must give exactly what the library's fuse() gives."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from llmrecall.channels.base import Candidates
from llmrecall.fusion import ChannelWeight, fuse
from llmrecall.tune import fastfuse
from llmrecall.tune.fastfuse import fused_ids


def _lists(rng, n_users, n_items, n_channels, width):
    out = {}
    for c in range(n_channels):
        ids = np.stack([rng.permutation(n_items)[:width] for _ in range(n_users)]).astype(np.int32)
        # pad some rows' tails with -1, as channels do when they run out of candidates
        cut = rng.integers(0, width + 1, n_users)
        ids[np.arange(width)[None, :] >= cut[:, None]] = -1
        out[f"c{c}"] = ids
    return out


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n_users=st.integers(1, 12), n_items=st.integers(1, 40),
       n_channels=st.integers(1, 4), k=st.integers(1, 30), rrf_k=st.floats(0.5, 300),
       masked=st.booleans(), block_cells=st.sampled_from([1, 7, 1 << 24]))
def test_equals_fuse(seed, n_users, n_items, n_channels, k, rrf_k, masked, block_cells):
    rng = np.random.default_rng(seed)
    width = int(rng.integers(1, n_items + 1))
    lists = _lists(rng, n_users, n_items, n_channels, width)
    weights = {name: ChannelWeight(float(rng.choice([0.0, 0.5, 1.0, 2.5])),
                                   None if rng.random() < 0.5 else int(rng.integers(1, width + 1)),
                                   int(rng.integers(0, 4)))
               for name in lists}
    allowed = rng.random(n_items) < 0.8 if masked else None
    expected = fuse({nm: Candidates(ids, np.zeros(ids.shape, np.float32))
                     for nm, ids in lists.items()}, k, weights=weights, rrf_k=rrf_k,
                    allowed=allowed).ids
    old = fastfuse.BLOCK_CELLS
    fastfuse.BLOCK_CELLS = block_cells  # also exercise the user blocking
    try:
        got = fused_ids(lists, k, n_items, weights=weights, rrf_k=rrf_k, allowed=allowed)
    finally:
        fastfuse.BLOCK_CELLS = old
    np.testing.assert_array_equal(got, expected)


def test_ties_and_guarantees_match_fuse():
    # two channels proposing mirrored lists: every item ties, guaranteed slots decide membership
    a = np.array([[0, 1, 2, 3, 4, 5]], np.int32)
    b = a[:, ::-1].copy()
    weights = {"a": ChannelWeight(1.0), "b": ChannelWeight(1.0, min_slots=2)}
    expected = fuse({"a": Candidates(a, np.zeros(a.shape, np.float32)),
                     "b": Candidates(b, np.zeros(b.shape, np.float32))}, 3, weights=weights).ids
    got = fused_ids({"a": a, "b": b}, 3, 6, weights=weights)
    np.testing.assert_array_equal(got, expected)
    assert set(got[0]) >= {5, 4}  # b's two guaranteed candidates made it in
