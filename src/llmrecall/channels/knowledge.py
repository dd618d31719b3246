"""Channel ``llm_knowledge``: items whose (LLM-enriched) text matches the user's recent items.

``fit`` optionally generates item knowledge (keywords, themes, audience; see
:mod:`llmrecall.interest.knowledge`), builds one text per item, and precomputes for every
item its nearest items by hybrid dense + BM25 text matching. ``recall`` merges the
neighbor lists of the user's ``history_length`` most recent items (RRF, newer items
weigh more through their position), so no model runs on the request path. Evidence is the
history item that led to each candidate.

With ``knowledge = false`` the same channel runs on the plain catalog text — the baseline
that measures what the enrichment brings.
"""

from __future__ import annotations

from functools import partial
from typing import Any, ClassVar

import numpy as np

from llmrecall.channels.base import DEFAULT_BLOCK, Candidates, Channel
from llmrecall.channels.capabilities import UsesGenerator
from llmrecall.channels.interest import catalog_texts
from llmrecall.channels.registry import register
from llmrecall.data.dataset import Dataset, Histories
from llmrecall.engine.local import current_engine
from llmrecall.errors import ConfigError
from llmrecall.interest.knowledge import KnowledgeSettings, KnowledgeStats, enrich_dataset
from llmrecall.interest.matching import HybridMatcher, Merge, cached_embedder, merge_user_texts
from llmrecall.lm.generators import Generator, make_generator
from llmrecall.lm.stores import open_cache


@register
class KnowledgeChannel(Channel, UsesGenerator):
    """Text item-to-item over LLM-enriched catalog text.

    Args:
        knowledge: generate and use item knowledge (False: plain catalog text).
        settings: :class:`~llmrecall.interest.knowledge.KnowledgeSettings` fields.
        generator: generator config (see :func:`llmrecall.lm.generators.make_generator`).
        store_path: SQLite file caching generated knowledge; None: in memory.
        max_items: generate knowledge for at most this many items (seeded sample; the rest
            keep plain text); None: all.
        embedder, embedding_cache, dense_weight, lexical_weight, rrf_k: hybrid matching.
        neighbors: nearest items kept per item.
        history_length: recent history items whose neighbors are merged.
        merge: "rrf" or "round_robin".
    """

    kind: ClassVar[str] = "llm_knowledge"
    evidence_template: ClassVar[str] = "described like {evidence}"

    def __init__(self, knowledge: bool = True, settings: dict | None = None,
                 generator: dict | None = None, store_path: str | None = None,
                 max_items: int | None = None, embedder: str | None = "default",
                 embedding_cache: str | None = None, dense_weight: float = 1.0,
                 lexical_weight: float = 1.0, rrf_k: float = 60.0, neighbors: int = 100,
                 history_length: int = 10, merge: Merge = "rrf", seed: int = 0,
                 name: str | None = None):
        super().__init__(name)
        self.knowledge = knowledge
        self.settings = dict(settings or {})
        self.generator = dict(generator or {})
        self.store_path = store_path
        self.max_items = max_items
        self.embedder, self.embedding_cache = embedder, embedding_cache
        self.dense_weight, self.lexical_weight, self.rrf_k = dense_weight, lexical_weight, rrf_k
        self.neighbors, self.history_length, self.merge = neighbors, history_length, merge
        self.seed = seed
        KnowledgeSettings(**self.settings)
        if neighbors < 1 or history_length < 1:
            raise ConfigError("llm_knowledge: neighbors and history_length must be >= 1")
        self._generator_obj: Generator | None = None
        self._embedder_obj: Any = None
        self._knowledge_texts: list[str] | None = None
        self.knowledge_stats: KnowledgeStats | None = None

    def use(self, *, generator: Generator | None = None, embedder: Any = None,
            knowledge_texts: list[str] | None = None) -> KnowledgeChannel:
        """Share loaded backends, or hand over already generated knowledge (one per item)."""
        self._generator_obj, self._embedder_obj = generator, embedder
        self._knowledge_texts = knowledge_texts
        return self

    def item_knowledge(self, dataset: Dataset) -> list[str]:
        """Knowledge per item: handed over, or generated (cached) for all / ``max_items``."""
        if self._knowledge_texts is not None:
            return list(self._knowledge_texts)
        items = None
        if self.max_items is not None and self.max_items < dataset.n_items:
            rng = np.random.default_rng(self.seed)
            items = np.sort(rng.choice(dataset.n_items, self.max_items, replace=False))
        store = open_cache(self.store_path or ":memory:")
        try:
            # a shared generator runs here; a configured one is built where the engine runs it
            generator = self._generator_obj or partial(make_generator, dict(self.generator))
            texts, self.knowledge_stats = current_engine().generate_knowledge(
                dataset, generator, items, KnowledgeSettings(**self.settings), store)
        finally:
            store.close()
        return texts

    def fit(self, dataset: Dataset) -> KnowledgeChannel:
        if self.knowledge:
            dataset = enrich_dataset(dataset, self.item_knowledge(dataset))
        texts = catalog_texts(dataset)
        embedder = cached_embedder(self._embedder_obj or self.embedder, self.embedding_cache)
        matcher = HybridMatcher(texts, embedder, dense_weight=self.dense_weight,
                                lexical_weight=self.lexical_weight,
                                per_text_k=min(self.neighbors + 1, dataset.n_items),
                                rrf_k=self.rrf_k)
        ids, _ = matcher.match(texts)
        # an item is not its own neighbor
        ids = np.where(ids == np.arange(len(ids))[:, None], -1, ids)
        self.neighbors_ = ids.astype(np.int32)
        self.item_texts_ = np.asarray(texts, dtype=str)
        return self

    def set_state(self, arrays: dict[str, Any]) -> None:
        # artifacts saved before the parameter was renamed hold the table as `neighbours_`
        super().set_state({("neighbors_" if key == "neighbours_" else key): value
                           for key, value in arrays.items()})

    def recall(self, users: np.ndarray, k: int, history: Histories, *,
               allowed: np.ndarray | None = None, exclude_seen: bool = True,
               explain: bool = False, block: int = DEFAULT_BLOCK) -> Candidates:
        self._check_fitted()
        users = np.asarray(users, dtype=np.int32)
        recent, _ = history.recent(users, self.history_length)  # int32[n, L], -1 left padded
        n_known = len(self.neighbors_)
        rows, cols = np.nonzero((recent >= 0) & (recent < n_known))
        items = recent[rows, cols]
        # position 0 = most recent: the merge treats earlier texts as stronger in round-robin,
        # and RRF weights decay with age
        age = (self.history_length - 1) - cols
        weight = 1.0 / (1.0 + 0.1 * age)
        ids, scores, evidence = merge_user_texts(
            rows, age, items, self.neighbors_[items], len(users), k, method=self.merge,
            rrf_k=self.rrf_k, users=users, history=history, exclude_seen=exclude_seen,
            allowed=allowed, text_weight=weight)
        return Candidates(ids, scores, evidence, "item")
