"""Channel ``search_query``: the user's recent search queries matched against the catalog.

When a dataset has a :class:`~llmrecall.data.dataset.SearchLog`, ``fit`` takes each user's
``recent_queries`` latest queries (newest first), matches every distinct query once by hybrid
dense + BM25 retrieval, and ``recall`` merges a user's per-query lists (RRF or
round-robin). Users who never searched get nothing; a dataset without a search log yields an
empty channel (every user gets nothing) rather than an error, so one pipeline config serves
datasets with and without search. Evidence: the query that matched.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from llmrecall.channels.capabilities import UsesEmbedder
from llmrecall.channels.interest import UserTextsChannel
from llmrecall.channels.registry import register
from llmrecall.data.dataset import Dataset, SearchLog
from llmrecall.errors import ConfigError, DataError
from llmrecall.interest.matching import Merge


def recent_queries(log: SearchLog, n_users: int, per_user: int) -> dict[int, list[str]]:
    """Each user's ``per_user`` latest distinct queries, newest first.

    Vectorised selection (sort by user, then time descending); only the final grouping into
    lists walks the selected rows.
    """
    users = np.asarray(log.user, dtype=np.int64)
    if len(users) != len(log.query) or len(users) != len(log.time):
        raise DataError("search log columns user, query and time differ in length")
    if len(users) and (users.min() < 0 or users.max() >= n_users):
        raise DataError(f"search log names users outside [0, {n_users})")
    queries = np.asarray([" ".join(str(q).split()) for q in log.query], dtype=object)
    order = np.lexsort((-np.arange(len(users)), -np.asarray(log.time, np.float64), users))
    users, queries = users[order], queries[order]
    out: dict[int, list[str]] = {}
    for user, query in zip(users.tolist(), queries.tolist()):
        texts = out.setdefault(user, [])
        if query and len(texts) < per_user and query not in texts:
            texts.append(query)
    return {u: t for u, t in out.items() if t}


@register
class SearchQueryChannel(UserTextsChannel, UsesEmbedder):
    """Recent search queries -> hybrid retrieval -> merged per user.

    Args:
        recent_queries: latest distinct queries used per user.
        embedder, embedding_cache, dense_weight, lexical_weight, per_text_k, rrf_k, merge:
            hybrid matching and merging (see :class:`~llmrecall.interest.matching.HybridMatcher`).
    """

    kind: ClassVar[str] = "search_query"
    evidence_template: ClassVar[str] = "you searched for “{evidence}”"

    def __init__(self, recent_queries: int = 5, embedder: str | None = "default",
                 embedding_cache: str | None = None, dense_weight: float = 1.0,
                 lexical_weight: float = 1.0, per_text_k: int = 100, rrf_k: float = 60.0,
                 merge: Merge = "rrf", name: str | None = None):
        super().__init__(name)
        if recent_queries < 1:
            raise ConfigError("search_query: recent_queries must be >= 1")
        if merge not in ("rrf", "round_robin"):
            raise ConfigError(f"search_query: merge must be 'rrf' or 'round_robin', got {merge!r}")
        self.recent_queries = recent_queries
        self.embedder, self.embedding_cache = embedder, embedding_cache
        self.dense_weight, self.lexical_weight = dense_weight, lexical_weight
        self.per_text_k, self.rrf_k, self.merge = per_text_k, rrf_k, merge
        self._embedder_obj: Any = None

    def use(self, *, embedder: Any = None) -> SearchQueryChannel:
        """Share an already loaded embedder."""
        self._embedder_obj = embedder
        return self

    def fit(self, dataset: Dataset) -> SearchQueryChannel:
        texts = ({} if dataset.searches is None else
                 recent_queries(dataset.searches, dataset.n_users, self.recent_queries))
        return self.set_texts(dataset, texts)
