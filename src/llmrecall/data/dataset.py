"""The typed dataset model every other part of llmrecall reads.

A :class:`Dataset` holds two vocabularies (users, items), an interaction log in dense ids,
an item :class:`Catalog` (text per item) and an optional :class:`SearchLog`. All arrays are
numpy; all ids inside are dense int32 indices from the vocabularies.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import polars as pl
import scipy.sparse as sp

from llmrecall.data.vocab import Vocabulary
from llmrecall.errors import DataError

DEFAULT_EVENT = "interaction"


@dataclass(frozen=True)
class Interactions:
    """An interaction log in dense ids, one entry per event.

    Attributes:
        user: int32[m] dense user index.
        item: int32[m] dense item index.
        time: float64[m] timestamp (seconds) or sequence position; larger is later.
        weight: float32[m] strength of the signal (1.0 by default; a rating if configured).
        event: int16[m] index into ``event_names`` (view, click, purchase, rating, ...).
        event_names: names of event types.
        rating: float32[m] the explicit rating where the source has one, else NaN.
    """

    user: np.ndarray
    item: np.ndarray
    time: np.ndarray
    weight: np.ndarray
    event: np.ndarray
    event_names: tuple[str, ...] = (DEFAULT_EVENT,)
    rating: np.ndarray | None = None

    def __post_init__(self) -> None:
        m = len(self.user)
        for name in ("item", "time", "weight", "event"):
            if len(getattr(self, name)) != m:
                raise DataError(f"interaction column {name!r} has {len(getattr(self, name))} "
                                f"entries, expected {m}")
        if self.rating is not None and len(self.rating) != m:
            raise DataError("interaction column 'rating' has the wrong length")

    @classmethod
    def build(cls, user, item, time=None, weight=None, event=None,
              event_names: tuple[str, ...] = (DEFAULT_EVENT,), rating=None) -> Interactions:
        """Build from array-likes, filling defaults: time = file order, weight = 1, event 0."""
        user = np.asarray(user, dtype=np.int32)
        m = len(user)
        return cls(
            user=user,
            item=np.asarray(item, dtype=np.int32),
            time=np.arange(m, dtype=np.float64) if time is None else np.asarray(time, np.float64),
            weight=np.ones(m, np.float32) if weight is None else np.asarray(weight, np.float32),
            event=np.zeros(m, np.int16) if event is None else np.asarray(event, np.int16),
            event_names=tuple(event_names),
            rating=None if rating is None else np.asarray(rating, np.float32),
        )

    def __len__(self) -> int:
        return len(self.user)

    def take(self, index: np.ndarray) -> Interactions:
        """A new log with the entries at ``index`` (int array or bool mask), order kept."""
        return Interactions(
            user=self.user[index], item=self.item[index], time=self.time[index],
            weight=self.weight[index], event=self.event[index], event_names=self.event_names,
            rating=None if self.rating is None else self.rating[index],
        )

    def concat(self, other: Interactions) -> Interactions:
        """This log followed by ``other`` (same vocabularies and event names assumed)."""
        if other.event_names != self.event_names:
            raise DataError("cannot concatenate logs with different event types")
        both = lambda a, b: np.concatenate([a, b])  # noqa: E731
        rating = None
        if self.rating is not None and other.rating is not None:
            rating = both(self.rating, other.rating)
        return Interactions(both(self.user, other.user), both(self.item, other.item),
                            both(self.time, other.time), both(self.weight, other.weight),
                            both(self.event, other.event), self.event_names, rating)

    def chronological_order(self) -> np.ndarray:
        """Permutation (int64[m]) sorting by (user, time), stable: ties keep log order."""
        return np.lexsort((np.arange(len(self.user)), self.time, self.user))


@dataclass(frozen=True)
class Catalog:
    """Item metadata, one row per dense item index (row i describes item i).

    ``frame`` is a polars DataFrame with at least the columns ``title`` (str) and
    ``category`` (list[str]); other text columns are listed in ``text_fields`` and other
    columns are free attributes. Missing values are empty strings / empty lists.
    """

    frame: pl.DataFrame
    text_fields: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for column in ("title", "category"):
            if column not in self.frame.columns:
                raise DataError(f"catalog lacks the column {column!r}")

    @classmethod
    def empty(cls, n_items: int) -> Catalog:
        return cls(pl.DataFrame({"title": [""] * n_items,
                                 "category": [[] for _ in range(n_items)]},
                                schema={"title": pl.Utf8, "category": pl.List(pl.Utf8)}))

    def __len__(self) -> int:
        return self.frame.height

    @property
    def titles(self) -> list[str]:
        return self.frame["title"].to_list()

    @property
    def categories(self) -> list[list[str]]:
        return self.frame["category"].to_list()

    def texts(self, fields: tuple[str, ...] | None = None) -> list[str]:
        """One text per item for embedding and lexical search: title, categories, text fields.

        Format: ``"<title>. <field>: <value>. Categories: a, b"`` with empty parts left out.
        """
        fields = self.text_fields if fields is None else fields
        columns = {f: self.frame[f].cast(pl.Utf8).fill_null("").to_list() for f in fields}
        out = []
        for i, (title, cats) in enumerate(zip(self.titles, self.categories)):
            parts = [title.strip()] if title else []
            parts += [f"{f}: {columns[f][i].strip()}" for f in fields if columns[f][i].strip()]
            if cats:
                parts.append("Categories: " + ", ".join(cats))
            out.append(". ".join(parts))
        return out


@dataclass(frozen=True)
class SearchLog:
    """Search queries typed by users: user int32[q], query text, time float64[q]."""

    user: np.ndarray
    query: list[str]
    time: np.ndarray

    def before(self, cut: np.ndarray) -> SearchLog:
        """The searches made strictly before their user's ``cut`` (float64[n_users], in the
        log's time unit; ``inf`` keeps every search of that user), in log order. A search
        at the same time as the cut is dropped: the two logs' rows cannot be ordered
        within one timestamp, so it may have come after."""
        keep = np.asarray(self.time, np.float64) < np.asarray(cut, np.float64)[self.user]
        return SearchLog(np.asarray(self.user)[keep],
                         [q for q, k in zip(self.query, keep.tolist()) if k],
                         np.asarray(self.time)[keep])


@dataclass(frozen=True)
class Histories:
    """Per-user interaction histories in CSR form, each row sorted by time (oldest first).

    Attributes:
        indptr: int64[n_users + 1]; user u's entries are ``indptr[u]:indptr[u+1]``.
        items: int32[nnz] dense item ids.
        times: float64[nnz].
        weights: float32[nnz].
        n_items: size of the item vocabulary (columns of :meth:`matrix`).
        versions: optional int64[n_users] content version per row, set by the service only:
            within one serving process, two rows with the same (row, version) hold the same
            history, so per-user state computed from it may be reused
            (:mod:`llmrecall.channels.user_cache`); -1 = unknown, never reused. None
            (offline code) = nothing is reused.
    """

    indptr: np.ndarray
    items: np.ndarray
    times: np.ndarray
    weights: np.ndarray
    n_items: int
    versions: np.ndarray | None = None

    def __post_init__(self) -> None:
        # a re-built history (e.g. dataclasses.replace with more rows) must not keep versions
        # that no longer line up with its rows
        if self.versions is not None and len(self.versions) != len(self.indptr) - 1:
            raise DataError(f"Histories.versions has {len(self.versions)} entries for "
                            f"{len(self.indptr) - 1} rows")

    @classmethod
    def from_interactions(cls, log: Interactions, n_users: int, n_items: int) -> Histories:
        order = log.chronological_order()
        counts = np.bincount(log.user, minlength=n_users)
        indptr = np.zeros(n_users + 1, np.int64)
        np.cumsum(counts, out=indptr[1:])
        return cls(indptr, log.item[order].astype(np.int32), log.time[order],
                   log.weight[order], n_items)

    @property
    def n_users(self) -> int:
        return len(self.indptr) - 1

    def lengths(self) -> np.ndarray:
        """int64[n_users] history length per user."""
        return np.diff(self.indptr)

    def of(self, user: int) -> np.ndarray:
        """int32[len] items of one user, oldest first."""
        return self.items[self.indptr[user]:self.indptr[user + 1]]

    def matrix(self, users: np.ndarray | None = None, binary: bool = True) -> sp.csr_matrix:
        """float32 CSR [n_users or len(users), n_items]; duplicates summed (or set to 1)."""
        if users is None:
            indptr, items, weights = self.indptr, self.items, self.weights
        else:
            indptr, items, weights = self._rows(np.asarray(users))
        data = np.ones(len(items), np.float32) if binary else weights.astype(np.float32)
        # copy=True: scipy would otherwise share ``items`` and sum_duplicates() would compact
        # this history's own arrays in place
        m = sp.csr_matrix((data, items, indptr), shape=(len(indptr) - 1, self.n_items), copy=True)
        m.sum_duplicates()
        if binary:
            m.data[:] = 1.0
        return m

    def entries(self, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Every history entry of ``users`` as ``(rows int64[m], items int32[m])``, where a
        row is a position in ``users`` (duplicates kept): what masking seen items needs,
        without building and sorting a CSR matrix."""
        indptr, items, _ = self._rows(np.asarray(users))
        return np.repeat(np.arange(len(indptr) - 1), np.diff(indptr)), items

    def recent(self, users: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
        """The last ``length`` items of each user, right-aligned.

        Returns ``items int32[n, length]`` (-1 padded on the left) and
        ``times float64[n, length]`` (NaN where padded). Vectorised: no per-user loop.
        """
        users = np.asarray(users, dtype=np.int64)
        n = len(users)
        starts, ends = self.indptr[users], self.indptr[users + 1]
        offsets = np.arange(-length, 0)[None, :]  # -length .. -1 from the end
        pos = ends[:, None] + offsets
        valid = pos >= starts[:, None]
        pos = np.where(valid, pos, 0)
        items = np.where(valid, self.items[pos] if len(self.items) else -1, -1).astype(np.int32)
        times = np.where(valid, self.times[pos] if len(self.times) else np.nan, np.nan)
        return items.reshape(n, length), times.reshape(n, length)

    def _rows(self, users: np.ndarray):
        starts, ends = self.indptr[users], self.indptr[users + 1]
        lengths = ends - starts
        indptr = np.zeros(len(users) + 1, np.int64)
        np.cumsum(lengths, out=indptr[1:])
        take = np.repeat(starts - indptr[:-1], lengths) + np.arange(indptr[-1])
        return indptr, self.items[take], self.weights[take]


@dataclass(frozen=True)
class Dataset:
    """Everything llmrecall knows about one domain, in dense ids.

    Guarantees: ``len(catalog) == len(items)``; every id in ``interactions`` and ``searches``
    is a valid dense index.
    """

    name: str
    users: Vocabulary
    items: Vocabulary
    interactions: Interactions
    catalog: Catalog
    searches: SearchLog | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.catalog) != len(self.items):
            raise DataError(f"catalog has {len(self.catalog)} rows for {len(self.items)} items")

    @property
    def n_users(self) -> int:
        return len(self.users)

    @property
    def n_items(self) -> int:
        return len(self.items)

    def histories(self) -> Histories:
        return Histories.from_interactions(self.interactions, self.n_users, self.n_items)

    def with_interactions(self, interactions: Interactions) -> Dataset:
        """Same vocabularies and catalog, another interaction log (e.g. a train split)."""
        return replace(self, interactions=interactions)

    def describe(self) -> dict:
        return {"name": self.name, "users": self.n_users, "items": self.n_items,
                "interactions": len(self.interactions)}
