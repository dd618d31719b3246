"""Optional channel capabilities: what a channel can do besides ``fit`` and ``recall``.

Every channel has the contract of :class:`~llmrecall.channels.base.Channel`. Some also take
part in serving or share loaded models; each such capability is a small abstract class
declared here, and a channel that has it *inherits* it::

    class SemanticItemToItem(Channel, AnswersQueries, AddsItems, CachesUsers): ...

Callers ask by type (``isinstance(channel, AddsItems)``), never by method name: a channel
that happens to have an ``add_items`` method without declaring :class:`AddsItems` is not
called. So a capability is visible in the class line, checked by
mypy (an abstract method left out cannot be instantiated) and by the shared channel tests
(``tests/channels/mixin.py`` checks each capability a channel declares), and listed in
docs/architecture.md ("Channel capabilities").

| capability | method(s) | called by |
| --- | --- | --- |
| :class:`AnswersQueries` | ``recall_query``, ``query_source`` | the service, per query |
| :class:`AddsItems` | ``add_items`` | the service, items added or edited at run time |
| :class:`RefreshesInterests` | ``refresh_interest`` | the service's refresh worker |
| :class:`CachesUsers` | ``user_cache`` | the service, at artifact load (:func:`attach_user_caches`) |
| :class:`SearchesVectors` | ``indexed_vectors``, ``use_index`` | the service: ``[state] vectors`` |
| :class:`UsesEmbedder` | ``use(embedder=)`` | prompt search, benchmarks |
| :class:`UsesGenerator` | ``use(generator=, embedder=)`` | prompt search, benchmarks |
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Self

import numpy as np

from llmrecall.channels.base import Candidates
from llmrecall.channels.user_cache import UserStateCache

if TYPE_CHECKING:
    from llmrecall.index.base import VectorSearch
    from llmrecall.lm.generators import Generator


class AnswersQueries(ABC):
    """Answers free-text queries from the channel's own item representation.

    The service asks the channels that declare this for the request's ``query`` text (one
    channel per distinct :attr:`query_source`, in config order); their lists are fused as
    ``<channel>:query``. While at least one answers, BM25 is not used; only when every one
    of them fails does the query fall back to BM25.

    Thread safety: called on the service's engine threads, concurrently with ``recall``,
    other queries and :meth:`AddsItems.add_items`; the implementation must allow that.
    """

    #: the channel's name (``Channel.name``); the default :attr:`query_source`
    name: str

    @abstractmethod
    def recall_query(self, texts: list[str | None], k: int,
                     allowed: np.ndarray | None = None) -> Candidates:
        """Items matching each free-text query.

        Args:
            texts: q query texts; None or blank = no query for that row.
            k: candidates per query.
            allowed: optional bool mask over dense item ids; items outside it (or past its
                end) are never returned.
        Returns:
            :class:`Candidates` with ``ids`` int32[q, k] and ``scores`` float32[q, k], best
            first, distinct ids, padded with -1 / -inf. A row without a query is all
            padding: no filler (the service fills the list from its other sources).
        Raises:
            Anything, on failure: the service logs it, counts
            ``channel_errors{reason="query"}`` and reports the request as degraded.
        """

    @property
    def query_source(self) -> str:
        """What :meth:`recall_query` searches. Channels with the same source must give the
        same answer to the same query (e.g. both semantic channels search the same
        embeddings of the same catalog), so the service asks only the first of them: fusing
        one list twice would double the query's weight. Default: the channel's name, a
        source shared with no other channel."""
        return self.name


class AddsItems(ABC):
    """Takes in items created or edited after ``fit`` (``PUT /v1/items``), without refitting.

    Called by the service after each item write and, at start-up and reload, for every item
    added or edited since the artifact was built (replayed from the state file), with all ids
    of the batch in one call. Calls are serialised (one at a time per channel), while
    ``recall`` and :meth:`AnswersQueries.recall_query` run concurrently on other threads: a
    recall sees either the state before a call or the state after it, never a mix
    (implementations replace arrays by grown copies and lock what they change in place).
    """

    @abstractmethod
    def add_items(self, ids: np.ndarray, texts: list[str]) -> None:
        """Make items recallable from their text.

        Args:
            ids: int[n] distinct dense item ids, n >= 0. An id already known is an update
                (its text changed); an id past the end grows the channel's item arrays.
            texts: one text per id in the ``Catalog.texts`` form (``title. text.
                Categories: a, b``), as ``fit`` read the catalog.

        Guarantees: when it returns, the next recall (and query) can return the items, as
        far as the channel can place an item from its text alone (``sasrec`` changes
        nothing unless ``text_init="fuse"``);
        adding the same ``(id, text)`` again gives the same answers, up to float rounding
        (replays are safe); an empty call does nothing. Deleting an item is the caller's
        ``allowed`` mask, not a call here.

        Raises:
            Anything, on failure: the service logs it, counts
            ``channel_errors{reason="add_items"}``, and the item stays stored and reachable
            through the other channels. Implementations do the work that can fail (embedding
            the texts) before they change any state, so the previous state keeps serving.
        """


class RefreshesInterests(ABC):
    """Regenerates a user's language-model interest text when their history has grown.

    Used by the service only when no ``--refresher`` is configured: the first channel in
    config order that declares this becomes the refresher. It is called on the refresh
    worker thread (one user at a time, never on the request path, so it may take seconds)
    once a user has ``refresh_min_events`` new events since their last refresh.
    """

    @abstractmethod
    def refresh_interest(self, user_id: str, history_items: list[str]) -> None:
        """Refresh one user's interest text.

        Args:
            user_id: the raw user id.
            history_items: the user's raw item ids, oldest first.
        Raises:
            Anything, on failure: the worker logs it, counts the refresh as ``error`` and
            goes on with the next user.
        """


class CachesUsers:
    """Keeps per-user state between recalls while a user's history is unchanged.

    A declaration without abstract methods (the capability is an attribute and a promise):
    a plain mixin class, not an ABC.

    The channel computes its user side (a vector, a sequence state, interest clusters)
    through :func:`~llmrecall.channels.user_cache.cached_user_states` with ``user_cache`` as
    the cache, passing as context the arrays it read besides the history (so a model or
    item table replaced by :meth:`AddsItems.add_items` never serves old entries). With the
    service's Redis level behind the cache, the context's *content* is digested into the
    shared key (:func:`~llmrecall.channels.user_cache.context_digest`: arrays, tuples of
    them or a torch module), so it must change whenever anything the state reads changes.

    Guarantee: with a cache attached, every recall answers exactly (bit-identically) as
    without one. Offline ``user_cache`` is None and nothing is cached: evaluation runs the
    same code.
    """

    #: set by the service (:func:`attach_user_caches`), None offline
    user_cache: UserStateCache | None = None


class UsesEmbedder(ABC):
    """Can share an already loaded embedder instead of loading the one its params name."""

    @abstractmethod
    def use(self, *, embedder: Any = None) -> Self:
        """Use ``embedder`` (an object with ``embed(texts, kind=...)``) at the next ``fit``;
        None: load the one named in the params. The object is not a hyperparameter: it is
        not saved, and ``clone()`` does not carry it. With the model the params name, the
        fitted channel is the same. Returns self."""


class UsesGenerator(UsesEmbedder):
    """Can also share an already loaded text generator (prompt search scores many prompt
    variants with one loaded model, instead of loading it once per variant)."""

    @abstractmethod
    def use(self, *, generator: Generator | None = None, embedder: Any = None) -> Self:
        """Use ``generator`` and ``embedder`` at the next ``fit``; None: build the one the
        params configure. Neither is saved nor carried by ``clone()``. Returns self."""


#: every capability, for the checks that each is declared where it should be
class SearchesVectors(ABC):
    """Recalls by searching a vector index (:class:`~llmrecall.index.base.VectorSearch`)
    whose ids are dense item ids, and can be pointed at another index holding the same
    vectors: the service's ``[state] vectors`` setting moves the search into a shared Milvus
    collection without rebuilding the artifact (:mod:`llmrecall.serve.vectors`).

    Guarantee: after ``use_index(other)`` with ``other`` holding exactly
    :meth:`indexed_vectors`, recall and queries answer from ``other`` and every later
    :meth:`AddsItems.add_items` writes to it; with an exact index the answers are the
    channel's exact answers (the same ids; scores up to float rounding).
    """

    #: the channel's name (``Channel.name``)
    name: str

    @property
    @abstractmethod
    def index(self) -> VectorSearch:
        """The index the channel searches now."""

    @abstractmethod
    def indexed_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """``ids int64[n]`` (ascending) and ``vectors float32[n, d]``: what the index
        holds, read without searching it (a copy the caller may keep)."""

    @abstractmethod
    def use_index(self, index: VectorSearch) -> None:
        """Search ``index`` from now on. It must hold :meth:`indexed_vectors` (same ids,
        same dimension); a :class:`~llmrecall.errors.DataError` otherwise. Safe while
        recalls run: a recall uses either the old index or the new one."""


CAPABILITIES: tuple[type, ...] = (AnswersQueries, AddsItems, RefreshesInterests, CachesUsers,
                                  UsesEmbedder, UsesGenerator, SearchesVectors)


def attach_user_caches(channels: Iterable[object], max_users: int) -> int:
    """Give every channel that declares :class:`CachesUsers` a fresh
    :class:`~llmrecall.channels.user_cache.UserStateCache` of ``max_users`` rows (0 = none:
    every channel's cache is removed). Returns how many channels got one. Called once per
    loaded artifact, so a reload starts empty."""
    attached = 0
    for channel in channels:
        if not isinstance(channel, CachesUsers):
            continue
        channel.user_cache = UserStateCache(max_users) if max_users > 0 else None
        attached += max_users > 0
    return attached
