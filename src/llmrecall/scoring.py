"""Dense scores ``queries @ table.T`` whose rows do not depend on the batch.

Every channel that scores users (or query texts) against a dense item table goes through
:func:`dot_rows`, so that a user's list is the same whether it is asked alone, in a request
batch of the service or in a 6,040-user evaluation block (the channel contract,
``tests/channels/mixin.py``).

Why not one matrix product: BLAS computes a matrix-matrix product with other kernels, blocking
and summation orders than a matrix-vector product, and the choice depends on the number of
query rows. Scores then differ in their last bits between a batch and a single row, and items
that tie or nearly tie swap places (on AVX-512 machines, textcf's contract test did). Rounding
a float64 product to float32 makes such flips rare, not impossible: on ml-1m-sized inputs one
score in about 20 million still rounded differently (docs/channels.md).

Here every query row is one matrix-vector product against the same fixed slices of the table:
the same kernel on the same operands, whatever else is in the batch. Its result depends on
the query, the table and the slice boundaries (which depend only on the table's shape), not on
the other rows; the summation order inside the kernel may also depend on the slice length, so
the boundaries must not move with the batch. Slices of about 1 MiB also keep the table
in cache while the queries run over it.
"""

from __future__ import annotations

import numpy as np

#: table bytes per matrix-vector call; slice boundaries depend only on the table's shape
TABLE_CHUNK_BYTES = 1 << 20


def dot_rows(queries: np.ndarray, table: np.ndarray) -> np.ndarray:
    """``queries @ table.T`` with each row computed on its own.

    Args:
        queries: float[q, d] query vectors (user vectors, sequence states, text embeddings).
        table: float[n, d] item vectors.
    Returns:
        float32[q, n]; row i depends on ``queries[i]`` and ``table`` only, bit for bit: it is
        the same for any batch ``queries[i]`` is part of, so ties and near-ties order alike.
    """
    queries = np.ascontiguousarray(queries, np.float32)
    table = np.ascontiguousarray(table, np.float32)
    q, n = len(queries), len(table)
    out = np.empty((q, n), np.float32)
    if q == 0 or n == 0:
        return out
    row_bytes = max(table.shape[1], 1) * 4
    step = max(1, TABLE_CHUNK_BYTES // row_bytes)
    for start in range(0, n, step):
        part = table[start:start + step]
        end = start + len(part)
        for i in range(q):
            np.dot(part, queries[i], out=out[i, start:end])
    return out
