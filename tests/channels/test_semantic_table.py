"""semantic_i2i's precomputed neighbour table: the same answer as the dense path when it is
wide enough, a valid answer when it is not, and kept right by ``add_items``.

Real item texts: ml-100k with the channel's default embedder (the shared LM cache holds its
vectors) for the exactness checks, the topic domain (``lm_data``) for items added after fit;
synthetic unit vectors for the table update itself.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from llmrecall.channels import semantic
from llmrecall.channels.registry import load_channel
from llmrecall.channels.semantic import (
    SemanticItemToItem,
    build_neighbour_table,
    updated_neighbour_table,
)
from llmrecall.data.dataset import Histories, Interactions
from llmrecall.errors import ConfigError

from .lm_data import make_dataset, topic_of

ATOL = 1e-5  # scores differ by float rounding: the products are summed in another order


def unit_vectors(n: int, d: int = 24, seed: int = 0, topics: int = 12) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((topics, d))
    x = centers[rng.integers(0, topics, n)] + 0.5 * rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def assert_same_answer(table, dense, weight_of, vectors) -> None:
    """``table`` and ``dense`` Candidates agree: scores to float tolerance; ids and evidence
    identical except where float rounding or an exact tie can swap them.

    ``weight_of(r)``: dict history item -> recency weight of row r's queries.
    """
    np.testing.assert_allclose(table.scores, dense.scores, atol=ATOL)
    assert ((table.ids >= 0) == (dense.ids >= 0)).all()
    differ = table.ids != dense.ids
    # a sanity bound only: every differing entry is checked below to be a near-tie. How
    # many near-ties the two summation orders break apart depends on the CPU's BLAS
    # kernels (0.20 % of ml-100k's positions on one AMD EPYC, fewer elsewhere)
    assert differ.mean() < 0.005
    for r in np.flatnonzero(differ.any(axis=1)):
        a = dict(zip(table.ids[r].tolist(), table.scores[r].tolist()))
        b = dict(zip(dense.ids[r].tolist(), dense.scores[r].tolist()))
        last = dense.scores[r][dense.ids[r] >= 0][-1]
        for item in set(a) ^ set(b):  # only near the cut-off
            assert abs(a.get(item, b.get(item)) - last) < ATOL
        for item in set(a) & set(b):  # swapped positions: near-equal scores
            assert abs(a[item] - b[item]) < ATOL
    # evidence: where it differs, both history items score the candidate alike
    same = ~differ & (table.ids >= 0)
    for r, j in zip(*np.nonzero(same & (table.evidence != dense.evidence))):
        c, weights = table.ids[r, j], weight_of(r)
        score = [weights[e] * float(vectors[e] @ vectors[c]) for e in (table.evidence[r, j],
                                                                         dense.evidence[r, j])]
        assert abs(score[0] - score[1]) < ATOL


def query_weights(channel, users, history):
    items, weights = channel._recent(users, history)

    def weight_of(r):
        out = {}
        for item, w in zip(items[r], weights[r]):
            if item >= 0:
                out[int(item)] = max(out.get(int(item), 0.0), float(w))
        return out
    return weight_of


def assert_valid(c, history, users, allowed, k) -> None:
    """Sorted, -1 / -inf padded at the tail, no repeats, nothing seen or disallowed."""
    assert c.ids.shape == (len(users), k) and c.ids.dtype == np.int32
    real = c.ids >= 0
    assert (real == np.isfinite(c.scores)).all()
    assert (real[:, :-1] >= real[:, 1:]).all()  # padding only at the tail
    assert (np.diff(np.where(real, c.scores, -1e30), axis=1) <= 0).all()
    seen = history.matrix(users).toarray() > 0
    for r in range(len(users)):
        ids = c.ids[r][real[r]]
        assert len(np.unique(ids)) == len(ids)
        assert not seen[r, ids].any()
        if allowed is not None:
            assert allowed[ids].all()
    assert (c.evidence[~real] == -1).all()


# ---- ml-100k: table vs dense --------------------------------------------------------
@pytest.fixture(scope="module")
def ml100k():
    """(train histories, item vectors, popularity) of ml-100k under ``loo``, embedded with
    the default embedder through the project's LM cache (as the service tests do), not the
    session's private one: the catalog is embedded once, not once per test session."""
    from llmrecall.channels.text_features import item_text_vectors, popularity
    from llmrecall.data.builtin import load_builtin
    from llmrecall.evaluate import make_split

    split = make_split(load_builtin("ml-100k"), "loo")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("LLMRECALL_CACHE", raising=False)
        vectors = item_text_vectors(split.train)
    return split.train.histories(), vectors, popularity(split.train)


@pytest.mark.parametrize("masked", [False, True], ids=["all", "allowed"])
def test_table_equals_dense_on_ml100k(ml100k, masked):
    """With W >= k + excluded items the table's answer is the dense path's (the guarantee
    in SemanticItemToItem's docstring), checked for every ml-100k user it covers."""
    history, vectors, pop = ml100k
    n = len(vectors)
    table = SemanticItemToItem().fit_vectors(vectors, pop)
    dense = SemanticItemToItem(table_width=0).fit_vectors(vectors, pop)
    assert table.neighbour_table is not None and dense.neighbour_table is None
    allowed = np.random.default_rng(4).random(n) < 0.9 if masked else None
    users = np.arange(history.n_users, dtype=np.int32)
    k = 100
    a = table.recall(users, k, history, allowed=allowed, explain=True)
    b = dense.recall(users, k, history, allowed=allowed, explain=True)
    # items excluded per user: seen, or (with the mask) disallowed
    excluded = history.matrix(users).toarray() > 0
    if allowed is not None:
        excluded |= ~allowed[None, :]
    covered = excluded.sum(axis=1) + k <= table.table_width
    assert covered.mean() > 0.6  # most users: the check below is about real users
    weight_of = query_weights(table, users, history)
    rows = np.flatnonzero(covered)
    def sub(c):
        return type(c)(c.ids[rows], c.scores[rows], c.evidence[rows], "item")

    assert_same_answer(sub(a), sub(b), lambda r: weight_of(rows[r]), vectors)
    assert_valid(a, history, users, allowed, k)
    # users beyond the guarantee: a lower bound of the exact scores, and most of the answer
    rest = np.flatnonzero(~covered)
    for r in rest:
        exact = dict(zip(b.ids[r].tolist(), b.scores[r].tolist()))
        got = a.ids[r][a.ids[r] >= 0]
        overlap = [exact[i] for i in got.tolist() if i in exact]
        assert len(overlap) >= 0.9 * k


def test_narrow_table_is_approximate_but_valid(ml100k):
    """W = 20 for k = 50: fewer or lower candidates, never a seen or disallowed one, and
    each score at most the exact one (the best over the history items whose rows list it)."""
    history, vectors, pop = ml100k
    narrow = SemanticItemToItem(table_width=20).fit_vectors(vectors, pop)
    dense = SemanticItemToItem(table_width=0).fit_vectors(vectors, pop)
    allowed = np.random.default_rng(5).random(len(vectors)) < 0.7
    users = np.arange(0, history.n_users, 3, dtype=np.int32)
    for mask in (None, allowed):
        c = narrow.recall(users, 50, history, allowed=mask, explain=True)
        assert_valid(c, history, users, mask, 50)
        assert (c.ids < 0).any()  # some users run out of neighbours: padded, not filled
        # every score is weight * cos of its evidence, and at most the exact score
        weight_of = query_weights(narrow, users, history)
        full = dense.recall(users, len(vectors), history, allowed=mask)
        for r in range(0, len(users), 7):
            exact = dict(zip(full.ids[r].tolist(), full.scores[r].tolist()))
            for item, score, ev in zip(c.ids[r], c.scores[r], c.evidence[r]):
                if item < 0:
                    continue
                assert score <= exact[int(item)] + ATOL
                assert abs(score - weight_of(r)[int(ev)] * float(vectors[ev] @ vectors[item])) < ATOL


# ---- the table itself ------------------------------------------------------------------
def assert_same_table(got, want) -> None:
    """Equal up to ties: the same cosines, and the same ids wherever the cosine is not tied."""
    assert got.ids.shape == want.ids.shape and got.ids.dtype == np.int32
    assert got.cos.dtype == np.float32
    np.testing.assert_array_equal(got.known, want.known)
    np.testing.assert_allclose(got.cos, want.cos, atol=ATOL)
    differ = got.ids != want.ids
    assert (np.abs(got.cos[differ] - want.cos[differ]) < ATOL).all()


def test_table_rows_are_the_exact_neighbours():
    x = unit_vectors(300)
    known = np.ones(300, bool)
    known[[7, 8]] = False  # rows without a vector
    x[[7, 8]] = 0
    t = build_neighbour_table(x, known, 400)  # wider than the catalog: padded
    sims = x @ x.T
    np.fill_diagonal(sims, -np.inf)
    sims[:, ~known] = -np.inf
    order = np.argsort(-sims, axis=1, kind="stable")
    assert (t.ids[[7, 8]] == -1).all() and np.isneginf(t.cos[[7, 8]]).all()
    rows = np.flatnonzero(known)
    np.testing.assert_allclose(t.cos[rows, :297], np.take_along_axis(sims, order, 1)[rows, :297],
                               atol=ATOL)
    assert (t.ids[rows, 297:] == -1).all() and np.isneginf(t.cos[rows, 297:]).all()
    assert not (t.ids == np.arange(300)[:, None]).any()  # never its own neighbour
    assert not np.isin(t.ids, [7, 8]).any()


def test_table_built_in_chunks_equals_one_product(monkeypatch):
    x = unit_vectors(500, seed=1)
    whole = build_neighbour_table(x, np.ones(500, bool), 30)
    monkeypatch.setattr(semantic, "TABLE_CHUNK", 500 * 7)  # 7 rows per product
    assert_same_table(build_neighbour_table(x, np.ones(500, bool), 30), whole)


@pytest.mark.parametrize("seed", range(4))
def test_updated_table_equals_a_rebuild(seed):
    """New ids (with a gap), new vectors for listed and unlisted items, and an item that gets
    its first vector: the update equals a table built from scratch over the new vectors."""
    rng = np.random.default_rng(seed)
    n, width = 400, 25
    x = unit_vectors(n, seed=seed)
    known = np.ones(n, bool)
    known[3] = False
    x[3] = 0
    before = build_neighbour_table(x, known, width)
    # items 400-409 are new, 410 is skipped (a gap: no vector), 411 is new; 3 gets its first
    # vector; a few existing items get new vectors (text edits)
    edited = rng.choice(np.setdiff1d(np.arange(n), [3]), 6, replace=False)
    changed = np.concatenate([edited, [3], np.arange(400, 410), [411]])
    y = np.zeros((412, x.shape[1]), np.float32)
    y[:n] = x
    y[changed] = unit_vectors(412, seed=seed + 10)[changed]
    known_after = np.abs(y).max(axis=1) > 0
    snapshot = (before.ids.copy(), before.cos.copy())
    after = updated_neighbour_table(before, y, known_after, changed)
    assert_same_table(after, build_neighbour_table(y, known_after, width))
    # copy-on-write: the old table is untouched
    np.testing.assert_array_equal(before.ids, snapshot[0])
    np.testing.assert_array_equal(before.cos, snapshot[1])


# ---- the channel --------------------------------------------------------------------
def test_bad_table_width():
    for bad in (-1, 2.5, True, "500"):
        with pytest.raises(ConfigError, match="table_width"):
            SemanticItemToItem(table_width=bad)


def test_table_limit_and_width_zero_use_the_index(monkeypatch):
    x = unit_vectors(600, seed=2)
    pop = np.ones(600, np.float32)
    assert SemanticItemToItem(table_width=0).fit_vectors(x, pop).neighbour_table is None
    monkeypatch.setattr(semantic, "TABLE_LIMIT", 599)
    assert SemanticItemToItem().fit_vectors(x, pop).neighbour_table is None
    monkeypatch.setattr(semantic, "TABLE_LIMIT", 600)
    t = SemanticItemToItem(table_width=40).fit_vectors(x, pop).neighbour_table
    assert t.ids.shape == (600, 40) and t.cos.shape == (600, 40)


def test_table_is_rebuilt_at_load_not_saved(tmp_path):
    x = unit_vectors(300, seed=3)
    channel = SemanticItemToItem(table_width=30).fit_vectors(x, np.ones(300, np.float32))
    channel.save(tmp_path / "i2i")
    with np.load(tmp_path / "i2i" / "state.npz") as state:
        assert set(state.files) == {"item_vectors_", "popularity_"}
    assert json.loads((tmp_path / "i2i" / "params.json").read_text())["params"]["table_width"] == 30
    loaded = load_channel(tmp_path / "i2i")
    assert_same_table(loaded.neighbour_table, channel.neighbour_table)


def test_without_exclusion_the_history_items_themselves_are_candidates():
    x = unit_vectors(300, seed=4)
    pop = np.ones(300, np.float32)
    log = Interactions.build(user=[0, 0, 1], item=[5, 9, 40], time=[1, 2, 3])
    h = Histories.from_interactions(log, 2, 300)
    users = np.array([0, 1], np.int32)
    table = SemanticItemToItem(table_width=60).fit_vectors(x, pop)
    dense = SemanticItemToItem(table_width=0).fit_vectors(x, pop)
    a = table.recall(users, 20, h, exclude_seen=False, explain=True)
    b = dense.recall(users, 20, h, exclude_seen=False, explain=True)
    assert a.ids[0, 0] == 9 and a.evidence[0, 0] == 9 and a.ids[1, 0] == 40
    assert_same_answer(a, b, query_weights(table, users, h), x)


# ---- items added while serving (real texts, the topic domain) ---------------------------
SPACE, COOKING = 40, 41
NEW_TEXTS = ["Orbital rocket mission to Mars and Jupiter moons. Categories: Astronomy, Space exploration",
             "Rustic Italian pasta and pizza cookbook. Categories: Cooking, Food"]


@pytest.fixture
def topics(request):
    request.getfixturevalue("lm_cache")  # embeds through the session's private cache
    data = make_dataset()
    # W = 6 < 40 items: rows are full, so new items must beat a real worst entry
    return SemanticItemToItem(recent=5, table_width=6).fit(data), data


def test_add_items_keeps_the_table_equal_to_a_rebuild(topics):
    channel, _ = topics
    channel.add_items(np.array([SPACE, COOKING], np.int32), NEW_TEXTS)
    t = channel.neighbour_table
    assert t.ids.shape == (42, 6)
    assert_same_table(t, build_neighbour_table(channel.item_vectors_, t.known, 6))
    assert np.isin(t.ids[:10], SPACE).any() and np.isin(t.ids[10:20], COOKING).any()
    assert (topic_of(t.ids[SPACE]) == 0).mean() >= 0.8  # the new item's own row
    # an edit: item 5 (space) becomes about cooking, SPACE becomes about piano
    channel.add_items(np.array([5, SPACE], np.int32),
                      ["Creamy lasagna and risotto recipes. Categories: Cooking, Food",
                       "Nocturnes for solo piano. Categories: Music, Piano"])
    t = channel.neighbour_table
    assert_same_table(t, build_neighbour_table(channel.item_vectors_, t.known, 6))
    assert (topic_of(t.ids[5]) == 1).mean() >= 0.5 and (topic_of(t.ids[SPACE]) == 3).mean() >= 0.5


def test_added_item_is_recalled_through_a_similar_history_item(topics):
    channel, _ = topics
    channel.add_items(np.array([SPACE, COOKING], np.int32), NEW_TEXTS)
    # the user read "Rocket launch to Mars" (item 0) and "Italian pasta recipes" (item 10)
    log = Interactions.build(user=[0, 0], item=[0, 10], time=[1, 2])
    h = Histories.from_interactions(log, 1, 42)
    c = channel.recall(np.array([0], np.int32), 12, h, explain=True)
    assert SPACE in c.ids[0] and COOKING in c.ids[0]
    ev = dict(zip(c.ids[0].tolist(), c.evidence[0].tolist()))
    assert ev[SPACE] == 0 and ev[COOKING] == 10
    # a mask hides it again
    allowed = np.ones(42, bool)
    allowed[SPACE] = False
    assert SPACE not in channel.recall(np.array([0], np.int32), 12, h, allowed=allowed).ids


def test_recalls_during_add_items_stay_valid(topics):
    """A recall racing add_items sees one whole table: answers stay valid throughout."""
    channel, data = topics
    h = data.histories()
    wide = Histories(h.indptr, h.items, h.times, h.weights, 50)
    users = np.arange(data.n_users, dtype=np.int32)
    texts = [f"Space probe number {i} to the outer planets. Categories: Astronomy" for i in range(8)]

    def add():
        for i, text in enumerate(texts):
            channel.add_items(np.array([SPACE + i], np.int32), [text])

    with ThreadPoolExecutor(1) as pool:
        adding = pool.submit(add)
        answers = 0
        while not adding.done() or answers < 3:
            c = channel.recall(users, 8, wide, explain=True)
            assert_valid(c, wide, users, None, 8)
            assert (c.ids < SPACE + len(texts)).all()
            answers += 1
        adding.result()  # re-raises what add_items raised
    t = channel.neighbour_table
    assert_same_table(t, build_neighbour_table(channel.item_vectors_, t.known, 6))
