"""Per-user state kept between recalls while a user's history is unchanged (serving only).

Several channels spend most of a recall computing the *user side* of their model from the
history (SASRec's transformer pass, semantic_user's interest clustering, TextCF's and ALS's
user vectors) although a history changes only when an event arrives. A
:class:`UserStateCache` keeps those per-row results, keyed by ``(row, version)`` where the
version comes from :attr:`Histories.versions`: the service stamps every history snapshot
it creates with a new version, so a changed history can never match an old entry. Rows
with version -1 (anonymous users, histories extended by the request, and every offline
history, which carries no versions at all) are never looked up or stored.

Besides the history, a user state depends on channel arrays that can be replaced at run
time (``add_items`` installs a grown model or item table). The channel therefore passes a
``context``: the object its computation read (e.g. the model). An entry is only ever served
to a lookup with the *same* context object (``is``); a lookup with another context empties
the cache first, and a store computed under a context that is no longer current is dropped.

A channel that keeps such state declares
:class:`~llmrecall.channels.capabilities.CachesUsers`; the service gives each of them a cache
(:func:`~llmrecall.channels.capabilities.attach_user_caches`). Offline code never attaches a
cache (``channel.user_cache is None``), so evaluation runs the exact same code path as before.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import cast

import numpy as np

from llmrecall.data.dataset import Histories
from llmrecall.errors import ConfigError

Payload = tuple[np.ndarray, ...]


class UserStateCache:
    """LRU map ``row -> (version, payload)`` holding at most ``max_users`` rows.

    ``payload`` is a tuple of per-row arrays (one row of each array a channel computes for a
    batch, e.g. ``(vector float32[d], placed bool[])``), copied on store so no batch array
    is kept alive. Thread-safe: one lock around every dict operation (two engine threads
    may share a channel).
    """

    def __init__(self, max_users: int):
        if int(max_users) < 1:
            raise ConfigError(f"UserStateCache: max_users must be >= 1, got {max_users}")
        self.max_users = int(max_users)
        self._lock = threading.Lock()
        self._rows: OrderedDict[int, tuple[int, Payload]] = OrderedDict()
        self._context: object = None
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._rows)

    def nbytes(self) -> int:
        """Bytes held in cached arrays (Python object overhead, ~0.1 KB per array, not
        included)."""
        with self._lock:
            return sum(a.nbytes for _, payload in self._rows.values() for a in payload)

    def clear(self) -> None:
        with self._lock:
            self._rows.clear()

    def lookup(self, rows: np.ndarray, versions: np.ndarray, context: object = None,
               count: bool = True) -> tuple[np.ndarray, list[Payload | None]]:
        """Cached payloads of ``rows`` (int[n]) at ``versions`` (int64[n]); ``count=False``
        leaves ``hits``/``misses`` alone (a second read within one recall, e.g. for evidence).

        Returns ``hit bool[n]`` and a list of n payloads (None where ``hit`` is False). A
        row hits only when its stored version equals the asked one, the version is not -1
        and the cache's context is ``context``; otherwise the cache adopts ``context``
        (dropping every entry) so that entries of another model never leak into answers.
        """
        hit = np.zeros(len(rows), bool)
        out: list[Payload | None] = [None] * len(rows)
        with self._lock:
            if context is not self._context:
                self._rows.clear()
                self._context = context
            for i, (row, version) in enumerate(zip(rows.tolist(), versions.tolist())):
                if version < 0:
                    continue
                entry = self._rows.get(row)
                if entry is not None and entry[0] == version:
                    self._rows.move_to_end(row)
                    hit[i], out[i] = True, entry[1]
            if count:
                n_hit = int(hit.sum())
                self.hits += n_hit
                self.misses += len(rows) - n_hit
        return hit, out

    def store(self, rows: np.ndarray, versions: np.ndarray, payloads: Payload,
              context: object = None) -> None:
        """Keep row ``i`` of every array in ``payloads`` for ``(rows[i], versions[i])``.

        Rows with version -1 are skipped; so is everything when ``context`` is no longer the
        cache's context (computed from a model replaced meanwhile). The least recently used
        rows are evicted beyond ``max_users``; a row's newer version replaces its older one.
        """
        keep = np.flatnonzero(np.asarray(versions) >= 0)
        if not len(keep):
            return
        # copies made outside the lock: one contiguous row per array and user
        entries = [(int(rows[i]), int(versions[i]), tuple(np.array(a[i]) for a in payloads))
                   for i in keep.tolist()]
        with self._lock:
            if context is not self._context:
                return
            for row, version, payload in entries:
                self._rows[row] = (version, payload)
                self._rows.move_to_end(row)
            while len(self._rows) > self.max_users:
                self._rows.popitem(last=False)


def row_versions(history: Histories, users: np.ndarray) -> np.ndarray | None:
    """int64[n] versions of ``users``' rows in ``history``, or None without versions."""
    if history.versions is None:
        return None
    return history.versions[np.asarray(users, np.int64)]


def cached_user_states(cache: UserStateCache | None, users: np.ndarray, history: Histories,
                       context: object, compute: Callable[[np.ndarray], Payload],
                       count: bool = True) -> Payload:
    """``compute(users)``, answered from ``cache`` where possible.

    Args:
        cache: the channel's cache; None (offline) calls ``compute(users)`` unchanged.
        users: int[n] dense rows of ``history``.
        history: the batch's histories; without ``versions`` nothing is cached.
        context: the channel object(s) ``compute`` reads besides the history (see the
            module docstring); read it *before* calling this function.
        compute: maps positions int64[m] into ``users`` to a tuple of arrays, each with m
            rows, row i depending only on user ``users[pos[i]]``'s history (so a sub-batch
            gives the same rows as the whole batch).
        count: False for a second read of the same users within one recall (evidence): the
            cache's hit/miss counters then measure recalls, not reads.
    Returns:
        The tuple ``compute(all positions)`` returns: cached rows filled from the cache, the
        misses computed as one sub-batch.
    """
    users = np.asarray(users)
    versions = None if cache is None else row_versions(history, users)
    if cache is None or versions is None or not (versions >= 0).any():
        return compute(np.arange(len(users)))
    hit, cached = cache.lookup(users, versions, context, count=count)
    miss = np.flatnonzero(~hit)
    fresh = compute(miss) if len(miss) else None
    if fresh is not None:
        cache.store(users[miss], versions[miss], fresh, context)
        if not hit.any():
            return fresh
    template = fresh if fresh is not None else cached[0]
    assert template is not None
    out = tuple(np.empty((len(users),) + np.shape(a)[1 if fresh is not None else 0:],
                         np.asarray(a).dtype) for a in template)
    hits = np.flatnonzero(hit)
    # cast: lookup() returns a payload at every position where hit is True
    hit_payloads = cast(list[Payload], [cached[i] for i in hits.tolist()])
    for j, arr in enumerate(out):
        if len(hits):
            arr[hits] = np.stack([payload[j] for payload in hit_payloads])
        if fresh is not None:
            arr[miss] = fresh[j]
    return out

