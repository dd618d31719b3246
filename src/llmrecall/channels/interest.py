"""Channel ``llm_interest``: LLM-written interest text matched against the catalog.

``fit`` runs (or loads from its store) the interest generation job for the users it will
serve — hypothetical next items (and optionally a profile) per user, see
:mod:`llmrecall.interest.jobs` — and matches every generated text against the catalog once,
by hybrid dense + BM25 retrieval. ``recall`` only merges a user's per-text lists (RRF or
round-robin), so no language model runs on the request path. Users without generated text
get nothing; fusion fills their lists from other channels.

Evidence is textual: ``Candidates.evidence_text`` holds the generated texts, and each
candidate's ``evidence`` points at the one that matched it best.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any, ClassVar, Self

import numpy as np

from llmrecall.channels.base import DEFAULT_BLOCK, Candidates, Channel
from llmrecall.channels.capabilities import UsesGenerator
from llmrecall.channels.registry import register
from llmrecall.data.dataset import Dataset, Histories
from llmrecall.engine.local import current_engine
from llmrecall.errors import ConfigError
from llmrecall.interest.jobs import InterestSettings, JobStats
from llmrecall.interest.matching import HybridMatcher, Merge, cached_embedder, merge_user_texts
from llmrecall.lm.generators import Generator, make_generator
from llmrecall.lm.prompts import display_title
from llmrecall.lm.stores import open_cache


def catalog_texts(dataset: Dataset) -> list[str]:
    """Catalog text per item with titles in natural word order (as generated text has them)."""
    texts = dataset.catalog.texts()
    titles = dataset.catalog.titles
    return [display_title(t) + text[len(t.strip()):] if t and text.startswith(t.strip()) else text
            for t, text in zip(titles, texts)]


def select_users(dataset: Dataset, max_users: int | None, users: list[str] | None,
                 seed: int) -> np.ndarray:
    """Dense ids of the users to generate for: ``users`` (raw ids) if given, else every
    user with a history, sampled down to ``max_users`` (seeded) when set."""
    if users is not None:
        dense = dataset.users.lookup(users)
        if (dense < 0).any():
            missing = [users[i] for i in np.flatnonzero(dense < 0)[:5]]
            raise ConfigError(f"llm_interest: users not in the dataset: {missing}")
        return np.unique(dense).astype(np.int32)
    return sample_users(dataset.histories().lengths(), max_users, seed)


def sample_users(lengths: np.ndarray, max_users: int | None, seed: int) -> np.ndarray:
    """int32 dense ids, ascending, of the users with a history (``lengths`` int[n_users]:
    each user's training events), sampled down to ``max_users`` (seeded) when set. Only the
    lengths decide, so the sharded log, which knows them without the histories, samples
    the same users."""
    active = np.flatnonzero(np.asarray(lengths) > 0).astype(np.int32)
    if max_users is not None and len(active) > max_users:
        rng = np.random.default_rng(seed)
        active = np.sort(rng.choice(active, size=max_users, replace=False)).astype(np.int32)
    return active


class UserTextsChannel(Channel):
    """Base of channels whose users own texts matched once to the catalog at fit time.

    Learned state: ``text_indptr_`` int64[n_users+1] (CSR over users), ``texts_`` str[T],
    ``match_ids_`` int32[T, per_text_k] hybrid matches per text. Subclasses set
    ``embedder``, ``embedding_cache``, ``dense_weight``, ``lexical_weight``, ``per_text_k``,
    ``rrf_k`` and ``merge`` in their constructors and call :meth:`set_texts` in ``fit``.
    """

    _embedder_obj: Any = None
    # set by every subclass's constructor (see above)
    embedder: str | None
    embedding_cache: str | None
    dense_weight: float
    lexical_weight: float
    per_text_k: int
    rrf_k: float
    merge: Merge

    def set_texts(self, dataset: Dataset, texts: dict[int, list[str]]) -> Self:
        """Install texts (``{dense user: [text, ...]}``) and match each distinct text once."""
        self.use_shard_users(self.matched_texts(self.text_matcher(dataset), dataset.n_users,
                                                texts))
        return self

    def text_matcher(self, dataset: Dataset) -> HybridMatcher:
        """The hybrid matcher of ``dataset``'s catalog (only its items and catalog are read)
        with this channel's settings."""
        return HybridMatcher(catalog_texts(dataset), self._embedder(),
                             dense_weight=self.dense_weight, lexical_weight=self.lexical_weight,
                             per_text_k=min(self.per_text_k, dataset.n_items), rrf_k=self.rrf_k)

    def matched_texts(self, matcher: HybridMatcher, n_users: int,
                      texts: dict[int, list[str]]) -> dict[str, np.ndarray]:
        """The per-user state of ``texts`` (``{dense user in [0, n_users): [text, ...]}``),
        each distinct text matched once by ``matcher``: ``text_indptr_`` int64[n_users+1],
        ``texts_`` str[T], ``match_ids_`` int32[T, per_text_k] (what :meth:`use_shard_users`
        installs)."""
        counts = np.zeros(n_users, np.int64)
        flat: list[str] = []
        for user in sorted(texts):
            if not 0 <= user < n_users:
                raise ConfigError(f"{self.name}: user {user} outside the dataset")
            counts[user] = len(texts[user])
            flat.extend(texts[user])
        indptr = np.zeros(n_users + 1, np.int64)
        np.cumsum(counts, out=indptr[1:])
        distinct, inverse = np.unique(np.asarray(flat, dtype=str), return_inverse=True)
        ids, _ = matcher.match(distinct.tolist())
        return {"text_indptr_": indptr,
                "texts_": np.asarray(flat, dtype=str) if flat else np.zeros(0, dtype="<U1"),
                "match_ids_": (ids[inverse.ravel()] if flat else ids).astype(np.int32)}

    def use_shard_users(self, state: dict[str, np.ndarray]) -> None:
        """Install a per-user state of :meth:`matched_texts` (one shard's, numbered as that
        shard numbers its users, on the sharded log)."""
        self.text_indptr_ = state["text_indptr_"]
        self.texts_ = state["texts_"]
        self.match_ids_ = state["match_ids_"]

    def join_shard_users(self, states: list[dict[str, np.ndarray]]) -> None:
        """Install every shard's state of :meth:`matched_texts`, the users numbered shard
        after shard (what a sharded ``build``'s artifact holds)."""
        counts = [np.diff(s["text_indptr_"]) for s in states]
        indptr = np.zeros(sum(len(c) for c in counts) + 1, np.int64)
        np.cumsum(np.concatenate(counts) if counts else np.zeros(0, np.int64), out=indptr[1:])
        self.use_shard_users({
            "text_indptr_": indptr,
            "texts_": np.concatenate([s["texts_"] for s in states]).astype(str),
            "match_ids_": np.concatenate([s["match_ids_"] for s in states])})

    def _embedder(self) -> Any:
        """The embedder to match with, wrapped in the lm cache when ``embedding_cache`` is set."""
        return cached_embedder(self._embedder_obj or self.embedder, self.embedding_cache)

    def texts_of(self, user: int) -> list[str]:
        """Texts of one dense user id ([] when none)."""
        self._check_fitted()
        if not 0 <= user < len(self.text_indptr_) - 1:
            return []
        return self.texts_[self.text_indptr_[user]:self.text_indptr_[user + 1]].tolist()

    def recall(self, users: np.ndarray, k: int, history: Histories, *,
               allowed: np.ndarray | None = None, exclude_seen: bool = True,
               explain: bool = False, block: int = DEFAULT_BLOCK) -> Candidates:
        self._check_fitted()
        users = np.asarray(users, dtype=np.int32)
        n_known = len(self.text_indptr_) - 1
        known = (users >= 0) & (users < n_known)
        safe = np.where(known, users, 0)
        starts = np.where(known, self.text_indptr_[safe], 0)
        counts = np.where(known, self.text_indptr_[np.minimum(safe + 1, n_known)] - starts, 0)
        # gather every text of the batch: owner row, position among the owner's texts
        total = int(counts.sum())
        owner = np.repeat(np.arange(len(users)), counts)
        offsets = np.zeros(len(users) + 1, np.int64)
        np.cumsum(counts, out=offsets[1:])
        rank = np.arange(total) - offsets[:-1][owner]
        text_rows = starts[owner] + rank
        ids, scores, evidence = merge_user_texts(
            owner, rank, np.arange(total), self.match_ids_[text_rows], len(users), k,
            method=self.merge, rrf_k=self.rrf_k, users=users, history=history,
            exclude_seen=exclude_seen, allowed=allowed)
        return Candidates(ids, scores, evidence, "text", self.texts_[text_rows].tolist())


@register
class InterestChannel(UserTextsChannel, UsesGenerator):
    """LLM-written interests -> hybrid retrieval -> merged per user.

    Args:
        settings: :class:`~llmrecall.interest.jobs.InterestSettings` fields (prompt style,
            constrained decoding, repetition control, ``template``: a prompt template text
            with ``$history`` and optionally ``$count`` / ``$examples`` replacing the shipped
            prompt, as :mod:`llmrecall.tune.interest_prompts` searches them, ...).
        generator: generator config (``{"backend": "local"}`` default, or
            ``{"backend": "openai", "base_url": ..., "model": ..., "api_key_env": ...}``).
        embedder: embedder name for :func:`llmrecall.lm.get_embedder`; None: BM25 only.
        embedding_cache: SQLite file of the lm cache for item and text vectors (optional).
        store_path: lm cache file (:class:`~llmrecall.lm.cache.LMCache`; may be the
            ``embedding_cache`` file) holding generated text; None keeps it in memory.
        max_users: generate for at most this many users (seeded sample); None: all.
        users: raw ids of the users to generate for (overrides ``max_users``).
        dense_weight, lexical_weight, per_text_k, rrf_k: hybrid matching (see HybridMatcher).
        merge: "rrf" or "round_robin" across a user's texts.
        refresh_min_changed: regenerate a stored user once this many recent items are new.
        seed: user sampling seed.
    """

    kind: ClassVar[str] = "llm_interest"
    evidence_template: ClassVar[str] = "matches the interest “{evidence}”"

    def __init__(self, settings: dict | None = None, generator: dict | None = None,
                 embedder: str | None = "default", store_path: str | None = None,
                 max_users: int | None = None, users: list[str] | None = None,
                 dense_weight: float = 1.0, lexical_weight: float = 1.0, per_text_k: int = 100,
                 rrf_k: float = 60.0, merge: Merge = "rrf", refresh_min_changed: int = 3,
                 embedding_cache: str | None = None, seed: int = 0, name: str | None = None):
        super().__init__(name)
        self.settings = dict(settings or {})
        self.generator = dict(generator or {})
        self.embedder = embedder
        self.store_path = store_path
        self.max_users = max_users
        self.users = users
        self.dense_weight, self.lexical_weight = dense_weight, lexical_weight
        self.per_text_k, self.rrf_k, self.merge = per_text_k, rrf_k, merge
        self.refresh_min_changed = refresh_min_changed
        self.embedding_cache = embedding_cache
        self.seed = seed
        try:  # validate early: bad fields (a template without $history, ...) fail here
            InterestSettings(**self.settings)
        except ValueError as exc:  # pydantic's ValidationError names the field
            raise ConfigError(f"llm_interest settings: {exc}") from None
        if merge not in ("rrf", "round_robin"):
            raise ConfigError(f"llm_interest: merge must be 'rrf' or 'round_robin', got {merge!r}")
        if max_users is not None and max_users < 1:
            raise ConfigError("llm_interest: max_users must be >= 1")
        #: objects that cannot travel in params (a shared generator / embedder instance)
        self._generator_obj: Generator | None = None
        self._embedder_obj: Any = None
        self.job_stats: JobStats | None = None

    def use(self, *, generator: Generator | None = None, embedder: Any = None) -> InterestChannel:
        """Share already loaded backends instead of building them from the params."""
        self._generator_obj = generator
        self._embedder_obj = embedder
        return self

    def generator_source(self) -> Generator | Callable[[], Generator]:
        """What the engine generates with: the shared generator (:meth:`use`), which runs
        where it was loaded, else a factory of the configured one, which the engine calls
        where it runs the job (on the Ray engine, in each generator actor)."""
        return self._generator_obj or partial(make_generator, dict(self.generator))

    def fit(self, dataset: Dataset) -> InterestChannel:
        settings = InterestSettings(**self.settings)
        generator = self.generator_source()
        store = open_cache(self.store_path or ":memory:")
        try:
            users = select_users(dataset, self.max_users, self.users, self.seed)
            texts, self.job_stats = current_engine().generate_interests(
                dataset, generator, settings, users, store, self.refresh_min_changed)
        finally:
            store.close()
        self.set_texts(dataset, texts)
        return self
