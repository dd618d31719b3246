"""Service-owned candidate sources that follow live state (not fitted offline).

- ``live_popularity``: items by interaction weight, artifact + every acknowledged event;
  covers new items as soon as events arrive and answers for users with no history.
- ``live_covisit``: items co-visited with the user's recent history in events since the
  artifact was built; makes new items reachable item-to-item.
- ``query_lexical``: BM25 (bm25s) match of the request's query text against item texts,
  the query path when no text-embedding channel is configured.

Each returns :class:`~llmrecall.channels.base.Candidates` for a batch of n rows, so fusion
treats them like any channel.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from llmrecall.channels.base import Candidates
from llmrecall.topk import fit_mask, topk

LIVE_POPULARITY = "live_popularity"
LIVE_COVISIT = "live_covisit"
QUERY_LEXICAL = "query_lexical"

EXPLANATIONS = {
    LIVE_POPULARITY: "popular right now",
    LIVE_COVISIT: "often chosen together with {evidence}",
    QUERY_LEXICAL: "matches your search {evidence}",
}


def _mask_scores(scores: np.ndarray, allowed: np.ndarray | None, seen: sp.csr_matrix) -> np.ndarray:
    """-inf on disallowed and seen items (in place); ``scores`` float32[n, n_items]."""
    if allowed is not None:  # widths may differ by items added a moment ago: pad/cut
        scores[:, ~fit_mask(allowed, scores.shape[1])] = -np.inf
    coo = seen.tocoo()
    inside = coo.col < scores.shape[1]
    scores[coo.row[inside], coo.col[inside]] = -np.inf
    return scores


def popularity(counts: np.ndarray, seen: sp.csr_matrix, k: int,
               allowed: np.ndarray | None) -> Candidates:
    """Most popular allowed items not in each row's history.

    ``counts`` float64[n_items]; ``seen`` binary CSR [n, n_items]. Items with count 0 are
    not proposed (a brand-new item becomes popular once events arrive).
    """
    n = seen.shape[0]
    base = np.where(counts > 0, counts, -np.inf).astype(np.float32)
    scores = _mask_scores(np.repeat(base[None, :], n, axis=0), allowed, seen)
    ids, vals = topk(scores, k)
    return Candidates(ids, vals)


def covisit(parts: tuple[sp.csr_matrix, sp.csr_matrix | None], recent: sp.csr_matrix,
            seen: sp.csr_matrix, k: int, allowed: np.ndarray | None, explain: bool) -> Candidates:
    """Items co-visited with each row's recent history.

    ``parts`` float32 CSR [n_items, n_items] co-visit counts as (base, delta or None) whose
    sum is the matrix; ``recent`` float32 CSR [n, n_items] recent history. Evidence: the
    history item contributing most.
    """
    n = recent.shape[0]
    base, delta = parts
    if base.nnz == 0 and delta is None:
        return Candidates(np.full((n, k), -1, np.int32), np.full((n, k), -np.inf, np.float32))
    product = recent @ base
    if delta is not None:
        product = product + recent @ delta
    matrix = base if delta is None else None
    product = product.tocsr()
    scores = np.full((n, base.shape[1]), -np.inf, np.float32)
    coo = product.tocoo()
    scores[coo.row, coo.col] = coo.data
    scores[scores <= 0] = -np.inf
    ids, vals = topk(_mask_scores(scores, allowed, seen), k)
    evidence = None
    if explain:
        evidence = np.full(ids.shape, -1, np.int32)
        for r in range(n):  # explanations only: one small gather per row
            hist = recent.indices[recent.indptr[r]:recent.indptr[r + 1]]
            valid = ids[r] >= 0
            if len(hist) and valid.any():
                if matrix is None:
                    assert delta is not None  # matrix starts as None only with a delta
                    matrix = (base + delta).tocsr()
                block = matrix[hist][:, ids[r][valid]].toarray()
                block *= recent.data[recent.indptr[r]:recent.indptr[r + 1]][:, None]
                evidence[r, np.flatnonzero(valid)] = hist[block.argmax(axis=0)]
        return Candidates(ids, vals, evidence, "item")
    return Candidates(ids, vals)


class LexicalIndex:
    """BM25 over item texts (:class:`llmrecall.lexical.BM25Index`), answering requests with
    masking. Rebuilt whole when items are added (write path)."""

    def __init__(self, texts: list[str]):
        from llmrecall.lexical import BM25Index

        self.n_items = len(texts)
        self._index = BM25Index([t or "" for t in texts])

    def scores(self, query: str) -> np.ndarray:
        """float32[n_items] BM25 scores of ``query``; 0 where nothing matches."""
        return self._index.scores(query)

    def recall(self, queries: list[str | None], seen: sp.csr_matrix, k: int,
               allowed: np.ndarray | None) -> Candidates:
        """Top-``k`` BM25 matches per row; rows without a query get nothing.

        Evidence kind "text": index into ``evidence_text`` (the row's query).
        """
        n = len(queries)
        scores = np.full((n, self.n_items), -np.inf, np.float32)
        texts: list[str] = []
        evidence = np.full((n, k), -1, np.int32)
        for r, q in enumerate(queries):  # each query is its own scoring pass
            if q:
                s = self.scores(q)
                scores[r] = np.where(s > 0, s, -np.inf)
        ids, vals = topk(_mask_scores(scores, allowed, seen[:, :self.n_items]), k)
        for r, q in enumerate(queries):
            if q:
                texts.append(repr(q))
                evidence[r, ids[r] >= 0] = len(texts) - 1
        return Candidates(ids, vals, evidence, "text", texts)
