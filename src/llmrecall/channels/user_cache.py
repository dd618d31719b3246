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

Second level, shared by processes (:meth:`UserStateCache.share_through`; the service does it
with ``[state] redis_url``): a row the in-process map lacks is asked of a
:class:`SharedLevel` (Redis) before it is computed, and a computed row is given to it. Its
key cannot use the process-local version; it is made of what the payload depends on:

- ``prefix``: the deployment, the artifact version and the channel's name;
- a digest of the context's *content* (:func:`context_digest`: every array, or a torch
  module's state dict), the same on every process that loaded the same artifact and applied
  the same item additions, and another after any change of the model or item table;
- a digest of the row's history content (items, times, weights), with the row number for
  the artifact's rows (below ``stable_rows``; a fitted user's trained vector depends on it)
  and without it for users created after the artifact (their rows are numbered per process).

Values are the arrays' dtype, shape and bytes behind a tag of their key
(:func:`encode_payload`); anything that does not decode exactly (:func:`decode_payload`) is a
miss. The shared level never raises: a failure is a miss.
"""

from __future__ import annotations

import hashlib
import struct
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Protocol, cast

import numpy as np

from llmrecall.data.dataset import Histories
from llmrecall.errors import ConfigError

Payload = tuple[np.ndarray, ...]

#: first bytes of every shared value (format version 1)
_MAGIC = b"LRUS1"
_TAG = 8  # bytes of the key's digest a value carries


class SharedLevel(Protocol):
    """Bytes by key, shared by processes (the service's Redis level). Neither method raises:
    a failure reads as "nothing" and a write may be dropped."""

    def fetch(self, keys: Sequence[bytes]) -> list[bytes | None]:
        """The values of ``keys`` (None where absent or on failure), in one round trip."""

    def keep(self, entries: Sequence[tuple[bytes, bytes]]) -> None:
        """Store ``(key, value)`` pairs (with the level's expiry), in one round trip."""


def _tag(key: bytes) -> bytes:
    return hashlib.blake2b(key, digest_size=_TAG).digest()


def encode_payload(key: bytes, payload: Payload) -> bytes:
    """``payload`` (numeric arrays) as ``magic, tag of key, count, then per array: dtype,
    shape, bytes``; no pickle, so a value read back can only ever be arrays."""
    parts = [_MAGIC, _tag(key), struct.pack("<B", len(payload))]
    for a in payload:
        a = np.asarray(a)  # tobytes() is C order; ascontiguousarray would make 0-d arrays 1-d
        dtype = a.dtype.str.encode()
        parts += [struct.pack("<B", len(dtype)), dtype, struct.pack("<B", a.ndim),
                  struct.pack(f"<{a.ndim}I", *a.shape), a.tobytes()]
    return b"".join(parts)


def decode_payload(key: bytes, raw: bytes) -> Payload | None:
    """The payload :func:`encode_payload` wrote under ``key``; None for anything else (another
    format, another key's value, a numeric dtype not allowed, a length that does not match)."""
    try:
        view = memoryview(raw)
        if bytes(view[:len(_MAGIC)]) != _MAGIC or bytes(
                view[len(_MAGIC):len(_MAGIC) + _TAG]) != _tag(key):
            return None
        pos = len(_MAGIC) + _TAG
        (count,) = struct.unpack_from("<B", view, pos)
        pos += 1
        out = []
        for _ in range(count):
            (n,) = struct.unpack_from("<B", view, pos)
            dtype = np.dtype(bytes(view[pos + 1:pos + 1 + n]).decode("ascii"))
            pos += 1 + n
            if dtype.kind not in "biuf" or dtype.hasobject:
                return None
            (ndim,) = struct.unpack_from("<B", view, pos)
            shape = struct.unpack_from(f"<{ndim}I", view, pos + 1)
            pos += 1 + 4 * ndim
            size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            if pos + size > len(view):
                return None
            out.append(np.frombuffer(view[pos:pos + size], dtype).reshape(shape))
            pos += size
        return tuple(out) if pos == len(view) else None
    except Exception:  # any malformed value: a miss
        return None


def context_digest(context: object) -> bytes | None:
    """16-byte digest of the content of a channel's cache context: arrays (dtype, shape,
    bytes), tuples/lists of them, or a torch module's state dict; None for anything else
    (the channel's states are then not shared)."""
    h = hashlib.blake2b(digest_size=16)

    def feed(x: object) -> bool:
        if isinstance(x, np.ndarray):
            h.update(f"{x.dtype.str}{x.shape}".encode())
            h.update(x.tobytes())
            return True
        if isinstance(x, (tuple, list)):
            h.update(f"seq{len(x)}".encode())
            return all(feed(y) for y in x)
        state_dict = getattr(x, "state_dict", None)
        if callable(state_dict):
            for name, tensor in sorted(state_dict().items()):
                h.update(name.encode())
                if not feed(tensor.detach().cpu().numpy()):
                    return False
            return True
        return False

    return h.digest() if feed(context) else None


def history_digest(history: Histories, row: int, stable_rows: int) -> bytes:
    """16-byte digest of ``row``'s history content (items, times, weights), with the row
    number when it is below ``stable_rows`` (the same row on every process)."""
    s, e = int(history.indptr[row]), int(history.indptr[row + 1])
    h = hashlib.blake2b(struct.pack("<q", row if row < stable_rows else -1), digest_size=16)
    h.update(np.ascontiguousarray(history.items[s:e]).tobytes())
    h.update(np.ascontiguousarray(history.times[s:e]).tobytes())
    h.update(np.ascontiguousarray(history.weights[s:e]).tobytes())
    return h.digest()


def _same_layout(a: Payload, b: Payload) -> bool:
    return len(a) == len(b) and all(
        x.dtype == y.dtype and x.shape == y.shape for x, y in zip(a, b))


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
        # the shared level (share_through): None = in-process only
        self.shared: SharedLevel | None = None
        self.shared_prefix = b""
        self.stable_rows = 0
        self._fingerprint: tuple[object, bytes | None] | None = None  # (context, digest)
        self.shared_hits = 0  # in-process misses answered by the shared level
        self.shared_misses = 0  # in-process misses it did not have (then computed)

    def share_through(self, shared: SharedLevel | None, prefix: str, stable_rows: int) -> None:
        """Put ``shared`` behind this cache (None: in-process only). ``prefix`` names the
        deployment, artifact version and channel; rows below ``stable_rows`` (the artifact's
        users) are numbered alike in every process (see the module docstring)."""
        self.shared, self.shared_prefix = shared, prefix.encode()
        self.stable_rows = int(stable_rows)

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
        self._keep([(int(rows[i]), int(versions[i]), tuple(np.array(a[i]) for a in payloads))
                    for i in keep.tolist()], context)

    def _keep(self, entries: list[tuple[int, int, Payload]], context: object) -> None:
        with self._lock:
            if context is not self._context:
                return
            for row, version, payload in entries:
                self._rows[row] = (version, payload)
                self._rows.move_to_end(row)
            while len(self._rows) > self.max_users:
                self._rows.popitem(last=False)

    # ---- the shared level --------------------------------------------------------------
    def _context_key(self, context: object) -> bytes | None:
        """The context's digest (computed once per context object), None when not shareable."""
        known = self._fingerprint
        if known is not None and known[0] is context:
            return known[1]
        digest = context_digest(context)
        self._fingerprint = (context, digest)
        return digest

    def shared_keys(self, rows: np.ndarray, positions: np.ndarray, history: Histories,
                    context: object) -> list[bytes] | None:
        """The shared keys of ``rows[positions]``; None when the context is not shareable."""
        digest = self._context_key(context)
        if digest is None:
            return None
        base = self.shared_prefix + digest.hex().encode() + b":"
        return [base + history_digest(history, int(rows[i]), self.stable_rows).hex().encode()
                for i in positions.tolist()]

    def fetch_shared(self, rows: np.ndarray, versions: np.ndarray, history: Histories,
                     context: object, hit: np.ndarray, out: list[Payload | None],
                     count: bool = True) -> tuple[dict[int, bytes], list[int]]:
        """Fill the in-process misses of a :meth:`lookup` (``hit``, ``out``, changed in place)
        from the shared level, and keep what it had in process.

        Returns the shared key of every position asked (none for version -1 or an
        unshareable context) and the positions the shared level answered. A value is checked
        against the layout (dtypes, shapes) of the in-process hits, or of the first value
        when there are none (see :func:`cached_user_states` for the last check)."""
        shared = self.shared
        ask = np.flatnonzero(~hit & (np.asarray(versions) >= 0))
        if shared is None or not len(ask):
            return {}, []
        keys = self.shared_keys(rows, ask, history, context)
        if keys is None:
            return {}, []
        raws = shared.fetch(keys)
        template = next((p for p in out if p is not None), None)
        got, answered = [], []
        for i, key, raw in zip(ask.tolist(), keys, raws):
            payload = None if raw is None else decode_payload(key, raw)
            if payload is not None and template is not None and not _same_layout(payload,
                                                                                  template):
                payload = None  # well-formed but not this channel's layout: a miss
            if payload is None:
                continue
            if template is None:
                template = payload
            hit[i], out[i] = True, payload
            answered.append(i)
            got.append((int(rows[i]), int(versions[i]), payload))
        if count:
            with self._lock:
                self.shared_hits += len(got)
                self.shared_misses += len(ask) - len(got)
        if got:
            self._keep(got, context)
        return dict(zip(ask.tolist(), keys)), answered

    def give_shared(self, keys: dict[int, bytes], positions: np.ndarray,
                    payloads: Payload) -> None:
        """Give the shared level the computed rows: row j of ``payloads`` is position
        ``positions[j]``; positions without a key in ``keys`` are not shared."""
        shared = self.shared
        if shared is None or not keys:
            return
        entries = [(keys[p], encode_payload(keys[p], tuple(a[j] for a in payloads)))
                   for j, p in enumerate(positions.tolist()) if p in keys]
        if entries:
            shared.keep(entries)


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
    # the shared level (Redis, in the service) answers what this process lacks
    keys, answered = cache.fetch_shared(users, versions, history, context, hit, cached,
                                        count) if cache.shared is not None else ({}, [])
    miss = np.flatnonzero(~hit)
    fresh = compute(miss) if len(miss) else None
    if fresh is not None and answered:
        # shared values no in-process row could vet: a well-formed value of another layout
        # (written by something else) is computed too, and replaced in the shared level
        row = tuple(np.asarray(a)[0] for a in fresh)
        wrong = [i for i in answered if not _same_layout(cast(Payload, cached[i]), row)]
        if wrong:
            hit[wrong] = False
            miss = np.flatnonzero(~hit)
            fresh = compute(miss)
    if fresh is not None:
        cache.store(users[miss], versions[miss], fresh, context)
        cache.give_shared(keys, miss, fresh)
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

