"""Live serving state: the artifact plus everything that happened since it was built.

:class:`LiveState` owns the growing item vocabulary, the raw-user -> dense-row map, the
per-user histories (artifact rows + replayed and newly acknowledged events), the deny mask
(deleted items), item texts and categories, live popularity counts and live co-visitation.

Concurrency contract: all mutation happens on one thread (the service's event loop);
recall threads only read. Arrays a reader may hold are never changed in place except the
popularity counts (a torn read there only nudges a popularity score); everything else is
replaced copy-on-write, so a reader sees the old or the new array, never a mix.
"""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp

from llmrecall.channels.capabilities import attach_user_caches
from llmrecall.data.dataset import Histories, Interactions
from llmrecall.serve.artifacts import Artifact
from llmrecall.serve.store import StoredState

if TYPE_CHECKING:
    from llmrecall.serve.sources import LexicalIndex

#: previous history items each new event is paired with for live co-visitation
COVISIT_WINDOW = 10

#: history versions (see :class:`UserHistory`), unique within the process: each LiveState
#: takes one for its replayed rows and one per history it creates, so no two states (an old
#: and a reloaded one, or two built from one artifact) ever share a (row, version)
_VERSIONS = itertools.count(1)


def item_text(title: str, text: str, categories: list[str]) -> str:
    """The lexical/embedding text of an item, in the format of ``Catalog.texts``."""
    parts = [p for p in (title.strip(), text.strip()) if p]
    if categories:
        parts.append("Categories: " + ", ".join(categories))
    return ". ".join(parts)


@dataclass(frozen=True)
class UserHistory:
    """One user's history snapshot: items int32[m], times float64[m], weights float32[m],
    sorted by time (oldest first). Arrays are never mutated after creation.

    ``version`` identifies the content of a known user's row: :class:`LiveState` gives every
    snapshot it creates a new one (``Histories.versions``; channels reuse per-user state
    while it is unchanged). -1 = unknown (an ad-hoc history built for one request): never
    reused."""

    items: np.ndarray
    times: np.ndarray
    weights: np.ndarray
    version: int = -1

    @staticmethod
    def empty() -> UserHistory:
        return UserHistory(np.zeros(0, np.int32), np.zeros(0, np.float64), np.zeros(0, np.float32))

    def __len__(self) -> int:
        return len(self.items)


class LiveCovisit:
    """Item co-visitation counted from events acknowledged since the artifact was built.

    Pairs are kept as COO triples tagged with the user who produced them (so erasing a user
    removes their pairs). Reads get ``(base, delta)``: two float32 CSR [n_items, n_items]
    whose sum is the symmetric co-visit count matrix. New pairs go to the small ``delta``
    (rebuilt in O(new pairs) when read), so they count at once; ``delta`` is merged into
    ``base`` once it holds ``MERGE_AT`` pairs.
    """

    MERGE_AT = 50_000

    def __init__(self, n_items: int):
        self._lock = threading.Lock()
        self._all: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # rows, cols, owner
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []
        self._pending_size = 0
        self.n_items = n_items
        # scipy-stubs: csr_matrix's (M, N) shape overload accepts only float64 dtypes
        self._base = sp.csr_matrix((n_items, n_items), dtype=np.float32)  # type: ignore[arg-type]
        self._delta: sp.csr_matrix | None = None
        self.pairs = 0

    def add(self, a: np.ndarray, b: np.ndarray, owner: np.ndarray) -> None:
        """Count the pairs (a[i], b[i]) in both directions; ``owner`` int64[m] is the dense
        row of the user whose events made each pair."""
        keep = a != b
        a, b, owner = a[keep].astype(np.int64), b[keep].astype(np.int64), owner[keep]
        rows, cols = np.concatenate([a, b]), np.concatenate([b, a])
        with self._lock:
            self._all.append((rows, cols, np.concatenate([owner, owner])))
            self._pending.append((rows, cols))
            self._pending_size += len(rows)
            self._delta = None
            self.pairs += len(rows)

    def _csr(self, rows: np.ndarray, cols: np.ndarray) -> sp.csr_matrix:
        m = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)),
                          shape=(self.n_items, self.n_items))
        m.sum_duplicates()
        return m

    def _rebuild(self) -> None:
        """Base from every triple (after an erasure or a vocabulary growth)."""
        if self._all:
            rows, cols, owner = (np.concatenate(x) for x in zip(*self._all))
            self._all = [(rows, cols, owner)]
        else:
            rows = cols = np.zeros(0, np.int64)
        self._base = self._csr(rows, cols)
        self._pending, self._pending_size, self._delta = [], 0, None
        self.pairs = len(rows)

    def remove_owner(self, owner: int) -> None:
        with self._lock:
            self._all = [(r[o != owner], c[o != owner], o[o != owner]) for r, c, o in self._all]
            self._rebuild()

    def grow(self, n_items: int) -> None:
        with self._lock:
            self.n_items = n_items
            self._rebuild()

    def matrices(self) -> tuple[sp.csr_matrix, sp.csr_matrix | None]:
        with self._lock:
            if not self._pending:
                return self._base, None
            if self._delta is None:
                rows = np.concatenate([r for r, _ in self._pending])
                cols = np.concatenate([c for _, c in self._pending])
                self._delta = self._csr(rows, cols)
            if self._pending_size >= self.MERGE_AT:
                self._base = (self._base + self._delta).tocsr()
                self._pending, self._pending_size, self._delta = [], 0, None
                return self._base, None
            return self._base, self._delta


class LiveState:
    """Artifact + stored state, replayed; see the module docstring for the threading rules.

    ``user_cache_users`` > 0 gives the artifact's channels that keep per-user state
    (:class:`~llmrecall.channels.capabilities.CachesUsers`) a fresh
    :class:`~llmrecall.channels.user_cache.UserStateCache` of that many users: the caches
    live exactly as long as this state's history versions.
    """

    def __init__(self, artifact: Artifact, stored: StoredState, user_cache_users: int = 0):
        self.artifact = artifact
        attach_user_caches(artifact.pipeline.channels.values(), user_cache_users)
        self.items = artifact.items.copy()
        self.titles: list[str] = list(artifact.catalog.titles)
        self.categories: list[list[str]] = [list(c) for c in artifact.catalog.categories]
        self.texts: list[str] = artifact.catalog.texts()
        deleted = np.zeros(len(self.items), bool)
        for item_id, title, text, cats, is_deleted in stored.items:
            index = self.items.add(item_id)
            if index == len(self.titles):
                self.titles.append(title)
                self.categories.append(cats)
                self.texts.append(item_text(title, text, cats))
                deleted = np.append(deleted, False)
            elif not is_deleted:  # an update of an artifact item's metadata
                self.titles[index], self.categories[index] = title, cats
                self.texts[index] = item_text(title, text, cats)
            deleted[index] = is_deleted
        self.deleted = deleted
        self.n_fitted_users = len(artifact.users)
        self.user_rows: dict[str, int] = {
            raw: row for row, raw in enumerate(artifact.users.ids) if raw not in stored.erased}
        self.next_row = self.n_fitted_users
        self.dropped_events = 0
        self.base = self._replay(stored)
        # the version of every replayed row (they change only through ``overlay``); code
        # that ever rebuilds ``base`` must take a new one with it
        self.base_version = next(_VERSIONS)
        self.overlay: dict[int, UserHistory] = {}
        self.last_seq = int(stored.event_seq[-1]) if len(stored.event_seq) else 0
        n = len(self.items)
        self.popularity = np.bincount(self.base.items, weights=self.base.weights,
                                      minlength=n).astype(np.float64)
        self.covisit = LiveCovisit(n)
        self._category_index: dict[str, np.ndarray] | None = None
        self._lexical: LexicalIndex | None = None
        self.allowed = self._allowed()

    # ---- construction ----------------------------------------------------------------
    def _replay(self, stored: StoredState) -> Histories:
        """Artifact histories (erased users dropped) merged with the stored events."""
        base = self.artifact.histories
        lengths = base.lengths()
        user = np.repeat(np.arange(base.n_users, dtype=np.int32), lengths)
        keep = np.ones(len(user), bool)
        if stored.erased:
            gone = self.artifact.users.lookup(sorted(stored.erased))
            gone = gone[gone >= 0]
            keep = ~np.isin(user, gone)
        rows = [self.row_for(u, create=True) for u in stored.event_user]
        items = self.items.lookup(stored.event_item)
        known = items >= 0
        self.dropped_events = int((~known).sum())  # items this artifact and store do not know
        log = Interactions.build(
            user=np.concatenate([user[keep], np.asarray(rows, np.int32)[known]]),
            item=np.concatenate([base.items[keep], items[known]]),
            time=np.concatenate([base.times[keep], stored.event_ts[known]]),
            weight=np.concatenate([base.weights[keep], stored.event_weight[known]]))
        return Histories.from_interactions(log, self.next_row, len(self.items))

    def _allowed(self) -> np.ndarray:
        """bool[n_items]: not deleted and allowed by the artifact config's filters."""
        allowed = ~self.deleted
        cfg = self.artifact.pipeline.allowed_
        if cfg is not None:
            allowed[:len(cfg)] &= cfg
        # nothing filtered: channels are then called without a mask (saves a pass per call)
        self.allows_all = bool(allowed.all())
        return allowed

    # ---- reads -----------------------------------------------------------------------
    @property
    def n_items(self) -> int:
        return len(self.titles)

    def row_for(self, raw_user: str, create: bool = False) -> int | None:
        """Dense row of a raw user id (assigned on first event when ``create``)."""
        row = self.user_rows.get(raw_user)
        if row is None and create:
            row = self.user_rows[raw_user] = self.next_row
            self.next_row += 1
        return row

    def history(self, row: int | None) -> UserHistory:
        if row is None:
            return UserHistory.empty()
        hit = self.overlay.get(row)
        if hit is not None:
            return hit
        if row >= self.base.n_users:
            return UserHistory.empty()
        s, e = self.base.indptr[row], self.base.indptr[row + 1]
        return UserHistory(self.base.items[s:e], self.base.times[s:e], self.base.weights[s:e],
                           self.base_version)

    def lexical(self) -> LexicalIndex:
        """The BM25 index over current item texts (built on first use, after item changes)."""
        from llmrecall.serve.sources import LexicalIndex

        index = self._lexical
        if index is None or index.n_items != self.n_items:
            index = self._lexical = LexicalIndex(self.texts)
        return index

    def category_mask(self, categories: list[str]) -> np.ndarray:
        """bool[n_items]: items in any of ``categories``."""
        if self._category_index is None:
            index: dict[str, list[int]] = {}
            for item, cats in enumerate(self.categories):
                for c in cats:
                    index.setdefault(c, []).append(item)
            self._category_index = {c: np.asarray(v, np.int64) for c, v in index.items()}
        mask = np.zeros(self.n_items, bool)
        for c in categories:
            hit = self._category_index.get(c)
            if hit is not None:
                mask[hit] = True
        return mask

    # ---- mutations (service thread only) ---------------------------------------------
    def apply_events(self, first_seq: int, users: list[str], items: np.ndarray,
                     times: np.ndarray, weights: np.ndarray,
                     seqs: np.ndarray | None = None) -> list[str]:
        """Append acknowledged events (seq ``first_seq``... or, with gaps, ``seqs`` int64[m]
        ascending) to live histories.

        Events already applied (seq <= ``last_seq``, e.g. replayed during a reload) are
        skipped. Returns the raw ids of users whose history changed.
        """
        if seqs is None:
            seqs = first_seq + np.arange(len(users))
        if not len(seqs):
            return []
        fresh = seqs > self.last_seq
        if not fresh.any():
            return []
        users = [u for u, f in zip(users, fresh) if f]
        items, times, weights = items[fresh], times[fresh], weights[fresh]
        self.last_seq = int(seqs[-1])
        rows = np.fromiter((self.row_for(u, create=True) for u in users), np.int64, len(users))
        np.add.at(self.popularity, items, weights)
        uniq, slot_new = np.unique(rows, return_inverse=True)
        olds = [self.history(r) for r in uniq.tolist()]
        old_len = np.fromiter((len(h) for h in olds), np.int64, len(olds))
        # one merged log for every user in the batch: old entries, then the new ones
        slot = np.concatenate([np.repeat(np.arange(len(uniq)), old_len), slot_new])
        is_new = np.concatenate([np.zeros(int(old_len.sum()), bool), np.ones(len(rows), bool)])
        log_items = np.concatenate([h.items for h in olds] + [items.astype(np.int32)])
        log_times = np.concatenate([h.times for h in olds] + [np.asarray(times, np.float64)])
        log_weights = np.concatenate([h.weights for h in olds] + [weights.astype(np.float32)])
        order = np.lexsort((np.arange(len(slot)), log_times, slot))  # user, time, arrival
        slot, is_new = slot[order], is_new[order]
        log_items, log_times, log_weights = log_items[order], log_times[order], log_weights[order]
        bounds = np.zeros(len(uniq) + 1, np.int64)
        np.cumsum(np.bincount(slot, minlength=len(uniq)), out=bounds[1:])
        # each user's history is its own (copied) arrays, so no batch array is kept alive;
        # and a new version, so per-user state cached for the old one is never reused
        self.overlay.update(
            (row, UserHistory(log_items[s:e].copy(), log_times[s:e].copy(),
                              log_weights[s:e].copy(), next(_VERSIONS)))
            for row, s, e in zip(uniq.tolist(), bounds[:-1].tolist(), bounds[1:].tolist()))
        # live co-visits: every new event with the events just before it in its user's history
        pos = np.flatnonzero(is_new)
        prev = pos[:, None] - np.arange(1, COVISIT_WINDOW + 1)[None, :]
        valid = prev >= bounds[slot[pos]][:, None]
        a = np.broadcast_to(log_items[pos][:, None], prev.shape)[valid]
        b = log_items[np.maximum(prev, 0)][valid]
        owner = np.broadcast_to(uniq[slot[pos]][:, None], prev.shape)[valid]
        self.covisit.add(a, b, owner)
        first_of_user = np.unique(slot_new, return_index=True)[1]
        return [users[i] for i in first_of_user.tolist()]

    def add_items(self, rows: list[tuple[str, str, str, list[str]]]) -> tuple[np.ndarray, np.ndarray]:
        """Insert or update items (id, title, text, categories); un-deletes re-added items.

        Returns ``(new_ids int32, updated_ids int32)`` dense ids.
        """
        new, updated = [], []
        deleted = self.deleted.copy()
        titles, cats, texts = list(self.titles), list(self.categories), list(self.texts)
        for item_id, title, text, categories in rows:
            index = self.items.add(item_id)
            if index == len(titles):
                titles.append(title)
                cats.append(categories)
                texts.append(item_text(title, text, categories))
                deleted = np.append(deleted, False)
                new.append(index)
            else:
                titles[index], cats[index] = title, categories
                texts[index] = item_text(title, text, categories)
                deleted[index] = False
                updated.append(index)
        n = len(titles)
        if n > len(self.popularity):
            self.popularity = np.pad(self.popularity, (0, n - len(self.popularity)))
        self.titles, self.categories, self.texts = titles, cats, texts
        self.deleted = deleted
        self._category_index = None
        self._lexical = None
        self.covisit.grow(n)
        self.allowed = self._allowed()
        return np.asarray(new, np.int32), np.asarray(updated, np.int32)

    def delete_item(self, index: int) -> None:
        deleted = self.deleted.copy()
        deleted[index] = True
        self.deleted = deleted
        self.allowed = self._allowed()

    def erase_user(self, raw_user: str) -> None:
        """Forget the user's history everywhere; their next event starts a fresh row."""
        row = self.user_rows.pop(raw_user, None)
        if row is None:
            return
        hist = self.history(row)
        np.subtract.at(self.popularity, hist.items, hist.weights)
        self.overlay.pop(row, None)
        self.covisit.remove_owner(row)
