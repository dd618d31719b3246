"""``dot_rows``: a query's scores do not depend on the batch it is scored in.

Regression: the batched product ``queries @ table.T`` (BLAS matrix-matrix kernel) and a single
query's product (matrix-vector kernel) round differently; on AVX-512 machines items that tie
or nearly tie swapped places between a user's list asked alone and asked in a batch
(textcf's channel contract test). The inputs below are built to tie: table rows that are
permutations of one another score exactly alike under exact arithmetic against a query with
equal entries, so only rounding orders them.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from llmrecall import scoring
from llmrecall.scoring import dot_rows
from llmrecall.topk import topk


@st.composite
def near_ties(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    d = draw(st.integers(1, 300))
    n = draw(st.integers(1, 400))
    q = draw(st.integers(1, 24))
    table = rng.standard_normal((n, d)).astype(np.float32)
    base = table[0].copy()
    permuted = rng.random(n) < 0.5  # about half the rows: the same entries, reordered
    for row in np.flatnonzero(permuted):
        table[row] = rng.permutation(base)
    queries = rng.standard_normal((q, d)).astype(np.float32)
    flat = rng.random(q) < 0.5  # about half the queries: equal entries (exact ties)
    queries[flat] = rng.standard_normal((int(flat.sum()), 1)).astype(np.float32)
    return queries, table, rng


@settings(max_examples=150, deadline=None)
@given(near_ties(), st.sampled_from([64, 4096, scoring.TABLE_CHUNK_BYTES]))
def test_a_row_scores_alike_alone_and_in_any_batch(case, chunk_bytes):
    queries, table, rng = case
    old = scoring.TABLE_CHUNK_BYTES
    scoring.TABLE_CHUNK_BYTES = chunk_bytes  # also several table chunks per query
    try:
        batch = dot_rows(queries, table)
        k = min(10, len(table))
        ids, _ = topk(batch, k)
        for i in range(len(queries)):
            alone = dot_rows(queries[i:i + 1], table)
            np.testing.assert_array_equal(alone[0], batch[i])
            np.testing.assert_array_equal(topk(alone, k)[0][0], ids[i])
        subset = rng.permutation(len(queries))[:int(rng.integers(1, len(queries) + 1))]
        np.testing.assert_array_equal(dot_rows(queries[subset], table), batch[subset])
    finally:
        scoring.TABLE_CHUNK_BYTES = old


def test_matches_the_product():
    rng = np.random.default_rng(0)
    queries = rng.standard_normal((5, 48)).astype(np.float32)
    table = rng.standard_normal((70, 48)).astype(np.float32)
    got = dot_rows(queries, table)
    assert got.dtype == np.float32 and got.shape == (5, 70)
    np.testing.assert_allclose(got, queries.astype(np.float64) @ table.T.astype(np.float64),
                               rtol=1e-5, atol=1e-5)
    assert dot_rows(queries[:0], table).shape == (0, 70)
    assert dot_rows(queries, table[:0]).shape == (5, 0)
