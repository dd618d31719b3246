"""BM25 over catalog text (bm25s), queried in batches.

Used wherever free text must be matched to items by words: LLM-written interest text,
search queries, enriched item text. Dense retrieval misses exact names (a title, a brand);
BM25 catches them, which is why the text channels are hybrid.
"""

from __future__ import annotations

from collections.abc import Sequence

import bm25s
import numpy as np

from llmrecall.errors import ConfigError

#: words never indexed; English only (bm25s' list). Other languages keep every word.
DEFAULT_STOPWORDS = "en"


class BM25Index:
    """A BM25 index over one text per item (row i of ``texts`` is dense item i).

    Guarantees: :meth:`search` returns exactly ``k`` columns, padded with -1 / -inf, only
    items with a positive BM25 score (at least one query word in common), best first.
    """

    def __init__(self, texts: Sequence[str], *, k1: float = 1.5, b: float = 0.75,
                 stopwords: str | None = DEFAULT_STOPWORDS):
        if k1 <= 0 or not 0 <= b <= 1:
            raise ConfigError(f"BM25 needs k1 > 0 and 0 <= b <= 1, got k1={k1}, b={b}")
        self.n_items = len(texts)
        self.stopwords = stopwords
        self._retriever = bm25s.BM25(k1=k1, b=b)
        tokens = bm25s.tokenize(list(texts), stopwords=stopwords, show_progress=False)
        self._vocab = tokens.vocab
        # bm25s cannot index a corpus with no words at all; such an index answers nothing
        self._empty = len(self._vocab) == 0 or self.n_items == 0
        if not self._empty:
            self._retriever.index(tokens, show_progress=False)

    def scores(self, query: str) -> np.ndarray:
        """float32[n_items] BM25 score of every item for one query; 0 where no word matches.

        For callers that must mask items (seen, filtered) before taking the top-k."""
        out = np.zeros(self.n_items, np.float32)
        if self._empty or not query:
            return out
        words = bm25s.tokenize([query], stopwords=self.stopwords, return_ids=False,
                               show_progress=False)[0]
        known = [self._vocab[w] for w in words if w in self._vocab]
        if known:
            out[:] = np.asarray(self._retriever.get_scores(known), np.float32)
        return out

    def search(self, queries: Sequence[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        """Best ``k`` items per query.

        Args:
            queries: n free texts.
            k: results per query.
        Returns:
            ``ids int32[n, k]`` (-1 padded) and ``scores float32[n, k]`` (-inf padded).
        """
        n = len(queries)
        ids = np.full((n, k), -1, np.int32)
        scores = np.full((n, k), -np.inf, np.float32)
        if n == 0 or k <= 0 or self._empty:
            return ids, scores
        # map query words onto the corpus vocabulary; unknown words carry no BM25 weight
        words = bm25s.tokenize(list(queries), stopwords=self.stopwords, return_ids=False,
                               show_progress=False)
        query_ids = [[self._vocab[w] for w in q if w in self._vocab] for q in words]
        has_words = np.array([len(q) > 0 for q in query_ids])
        if not has_words.any():
            return ids, scores
        rows = np.flatnonzero(has_words)
        kk = min(k, self.n_items)
        found, vals = self._retriever.retrieve([query_ids[i] for i in rows], k=kk,
                                               show_progress=False, n_threads=1)
        found = np.asarray(found, np.int32)
        vals = np.asarray(vals, np.float32)
        found[vals <= 0] = -1
        vals[vals <= 0] = -np.inf
        ids[rows, :kk] = found
        scores[rows, :kk] = vals
        return ids, scores
