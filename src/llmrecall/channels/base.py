"""The channel contract: ``fit(dataset) -> self``; ``recall(users, k, history) -> Candidates``.

A channel is a candidate source. It is configured in its constructor (hyperparameters only,
scikit-learn style), learns from a :class:`~llmrecall.data.Dataset` in :meth:`Channel.fit`
(learned state ends in ``_``), and recalls for a batch of dense user ids. The history it
recalls from is passed in explicitly, so the same fitted channel can answer with the
training history (validation), a fresher history (test, serving), or an ad-hoc one.
"""

from __future__ import annotations

import inspect
import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeAlias

import numpy as np

from llmrecall.data.dataset import Dataset, Histories
from llmrecall.errors import NotFittedError
from llmrecall.topk import fit_mask, topk

#: users scored per dense block; bounds memory at block * n_items * 4 bytes
DEFAULT_BLOCK = 512

#: a learned array that :meth:`Channel.state` saves: a numpy array or a scipy sparse matrix
#: (Any: scipy's stubs have no usable public type for "any sparse matrix or array")
StateArray: TypeAlias = Any


@dataclass
class Candidates:
    """A channel's answer for a batch of users.

    Attributes:
        ids: int32[n, k] dense item ids, best first, padded with -1.
        scores: float32[n, k] channel scores, padded with -inf.
        evidence: int32[n, k] or None. With ``evidence_kind == "item"`` a dense item id
            (e.g. the history item that led to the candidate); with ``"text"`` an index into
            ``evidence_text``; -1 where there is none.
        evidence_kind: "item", "text" or "none".
        evidence_text: the texts that ``evidence`` points into when kind is "text".
        fallback: bool[n, k] or None. True where the entry is not the channel's own signal:
            its fallback ranking for a user it cannot personalise (e.g. popularity for an
            empty history), or a filler the channel has no support for (e.g. a zero
            co-occurrence score). None: every entry is the channel's own. Offline evaluation
            ranks these entries like any other; the service leaves them out of the channel's
            list, so an answer never names a channel for a candidate it did not produce.
    """

    ids: np.ndarray
    scores: np.ndarray
    evidence: np.ndarray | None = None
    evidence_kind: str = "none"
    evidence_text: list[str] | None = None
    fallback: np.ndarray | None = None

    def __post_init__(self) -> None:
        assert self.ids.shape == self.scores.shape, "ids and scores differ in shape"
        if self.evidence is not None:
            assert self.evidence.shape == self.ids.shape, "evidence differs in shape"
        if self.fallback is not None:
            assert self.fallback.shape == self.ids.shape, "fallback differs in shape"

    @property
    def shape(self) -> tuple[int, int]:
        return self.ids.shape

    def row_slice(self, rows: slice) -> Candidates:
        """The answer for a contiguous range of users."""
        return Candidates(self.ids[rows], self.scores[rows],
                          None if self.evidence is None else self.evidence[rows],
                          self.evidence_kind, self.evidence_text,
                          None if self.fallback is None else self.fallback[rows])

    def own(self) -> Candidates:
        """The channel's own entries only: those marked in ``fallback`` removed (the rest
        keep their order and move up, -1 / -inf padded; rows only lose a tail when, as
        for every built-in channel, the marked entries of a row follow its own). ``self``
        when nothing is marked."""
        if self.fallback is None or not self.fallback.any():
            return self
        drop = self.fallback | (self.ids < 0)
        order = np.argsort(drop, axis=1, kind="stable")  # own entries first, order kept
        keep = ~np.take_along_axis(drop, order, axis=1)
        ids = np.where(keep, np.take_along_axis(self.ids, order, axis=1), -1).astype(np.int32)
        scores = np.where(keep, np.take_along_axis(self.scores, order, axis=1),
                          -np.inf).astype(np.float32)
        evidence = None
        if self.evidence is not None:
            evidence = np.where(keep, np.take_along_axis(self.evidence, order, axis=1),
                                -1).astype(np.int32)
        return Candidates(ids, scores, evidence, self.evidence_kind, self.evidence_text)


def fallback_entries(ids: np.ndarray, scores: np.ndarray, rows: np.ndarray | None,
                     floor: float | None) -> np.ndarray | None:
    """bool[n, k] ``Candidates.fallback`` of a top-k answer: every entry of the ``rows``
    (bool[n] or None) answered with a fallback ranking, and entries scoring ``<= floor``
    (None: no floor); None when there is no such entry."""
    marked = None
    if rows is not None and rows.any():
        marked = np.zeros(ids.shape, bool)
        marked[rows] = True
    if floor is not None:
        low = (ids >= 0) & (scores <= floor)
        if low.any():
            marked = low if marked is None else marked | low
    return marked


class Channel(ABC):
    """Base class of every recall channel.

    Subclasses set ``kind`` (the registry name), store hyperparameters in ``__init__``, and
    implement :meth:`fit` plus either :meth:`score` (dense scoring; the base class does the
    masking and top-k) or :meth:`recall` itself. Artifacts are saved with :meth:`save` as
    ``params.json`` + ``state.npz`` — never pickles — and read back with
    :func:`~llmrecall.channels.registry.load_channel`.
    """

    kind: ClassVar[str] = "channel"
    #: what :meth:`explain` says about a candidate, given its evidence, e.g. "similar to {item}"
    evidence_template: ClassVar[str] = ""
    #: True when :meth:`recall` is bounded in-process computation (no network, no disk, no
    #: model generation): the service may then run it inline on its engine thread instead of
    #: isolating it on a thread pool under a deadline (``ServeSettings.inline_channels``)
    in_process: ClassVar[bool] = False
    #: scores at or below this carry none of the channel's signal (e.g. 0 for co-occurrence
    #: channels: nothing in common with the history); such entries are marked in
    #: ``Candidates.fallback``. None: every finite score is the channel's signal.
    signal_floor: ClassVar[float | None] = None

    def __init__(self, name: str | None = None):
        self.name = name or self.kind

    # ---- hyperparameters -------------------------------------------------------------
    def get_params(self) -> dict[str, Any]:
        """Constructor arguments, so the channel can be cloned or re-parameterised."""
        sig = inspect.signature(type(self).__init__)
        return {p: getattr(self, p) for p in sig.parameters if p != "self"}

    def clone(self, **overrides: Any) -> Channel:
        """An unfitted copy with the same (or overridden) hyperparameters."""
        return type(self)(**{**self.get_params(), **overrides})

    # ---- learning and recall ---------------------------------------------------------
    @abstractmethod
    def fit(self, dataset: Dataset) -> Channel:
        """Learn from ``dataset`` (its interactions are the training data). Returns self."""

    def score(self, users: np.ndarray, history: Histories) -> np.ndarray:
        """Dense scores float32[len(users), n_items]; higher is better. -inf = never."""
        raise TypeError(f"{type(self).__name__} must implement score() or override recall()")

    def scored(self, users: np.ndarray, history: Histories) -> tuple[np.ndarray, np.ndarray | None]:
        """:meth:`score` and bool[len(users)] (or None: none) the rows given the channel's
        fallback ranking instead of its own scores (e.g. popularity for a user whose history
        holds nothing the channel knows). Channels with a fallback override this and define
        :meth:`score` as its first part."""
        return self.score(users, history), None

    def evidence(self, users: np.ndarray, ids: np.ndarray, history: Histories) -> np.ndarray | None:
        """int32[n, k] evidence for candidates ``ids`` (see :class:`Candidates`), or None."""
        return None

    def recall(self, users: np.ndarray, k: int, history: Histories, *,
               allowed: np.ndarray | None = None, exclude_seen: bool = True,
               explain: bool = False, block: int = DEFAULT_BLOCK) -> Candidates:
        """Top-``k`` items for each user.

        Args:
            users: int32[n] dense user ids; ids outside the fitted range (new users) are
                valid and get whatever the channel can do from ``history`` alone.
            k: candidates per user.
            history: histories to recall from, with at least ``max(users)+1`` rows.
            allowed: optional bool[n_items]; False items are never returned.
            exclude_seen: never return items in the user's history.
            explain: also compute ``evidence``.
        Returns:
            :class:`Candidates` with ``ids``/``scores`` of shape [n, k].
        """
        self._check_fitted()
        users = np.asarray(users, dtype=np.int32)
        ids_out, scores_out, ev_out, fb_out = [], [], [], []
        for start in range(0, len(users), block):
            batch = users[start:start + block]
            scores, fallback_rows = self.scored(batch, history)
            scores = np.array(scores, dtype=np.float32, copy=True)
            if allowed is not None:
                scores[:, ~fit_mask(allowed, scores.shape[1])] = -np.inf
            if exclude_seen:
                rows, items = history.entries(batch)
                inside = items < scores.shape[1]
                scores[rows[inside], items[inside]] = -np.inf
            ids, vals = topk(scores, k)
            ids_out.append(ids)
            scores_out.append(vals)
            fb_out.append(fallback_entries(ids, vals, fallback_rows, self.signal_floor))
            if explain:
                ev_out.append(self.evidence(batch, ids, history))
        ids = np.concatenate(ids_out) if ids_out else np.zeros((0, k), np.int32)
        vals = np.concatenate(scores_out) if scores_out else np.zeros((0, k), np.float32)
        evidence = None
        if explain and ev_out and ev_out[0] is not None:
            parts = [e for e in ev_out if e is not None]
            if len(parts) != len(ev_out):  # cannot be concatenated
                raise TypeError(f"{type(self).__name__}.evidence() returned None for some "
                                "blocks of users only")
            evidence = np.concatenate(parts).astype(np.int32)
        kind = "item" if evidence is not None else "none"
        fallback = None
        if any(f is not None for f in fb_out):
            fallback = np.concatenate([np.zeros(i.shape, bool) if f is None else f
                                       for i, f in zip(ids_out, fb_out)])
        return Candidates(ids, vals, evidence, kind, fallback=fallback)

    def explain(self, evidence_label: str | None) -> str:
        """Human text for one candidate given its evidence label (e.g. an item title)."""
        if evidence_label and self.evidence_template:
            return self.evidence_template.format(evidence=evidence_label)
        return f"recalled by {self.name}"

    # ---- persistence -----------------------------------------------------------------
    def state(self) -> dict[str, StateArray]:
        """Learned arrays to save: every attribute ending in ``_`` that is a numpy array or a
        scipy sparse matrix."""
        import scipy.sparse as sp

        return {k: v for k, v in vars(self).items()
                if k.endswith("_") and (isinstance(v, np.ndarray) or sp.issparse(v))}

    def set_state(self, arrays: dict[str, StateArray]) -> None:
        for key, value in arrays.items():
            setattr(self, key, value)

    def save(self, directory: str | Path) -> Path:
        """Write ``params.json`` and ``state.npz`` under ``directory`` (created); read back
        with :func:`llmrecall.channels.registry.load_channel`."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        params = {"kind": self.kind, "params": self.get_params()}
        (directory / "params.json").write_text(json.dumps(params, indent=2, default=_jsonable))
        self.save_state(directory)
        return directory

    def save_state(self, directory: Path) -> None:
        """Write the learned state into ``directory``; override for other formats."""
        _save_npz(directory / "state.npz", self.state())

    def load_state(self, directory: Path) -> None:
        """Inverse of :meth:`save_state`."""
        self.set_state(_load_npz(directory / "state.npz"))

    def _check_fitted(self) -> None:
        if not any(k.endswith("_") and not k.startswith("_") for k in vars(self)):
            raise NotFittedError(f"channel {self.name!r} is not fitted: call fit(dataset) first")


def _jsonable(value: Any) -> Any:
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, (set, tuple)):
        return list(value)
    raise TypeError(f"cannot save parameter of type {type(value).__name__}")


def _save_npz(path: Path, arrays: dict[str, StateArray]) -> None:
    """npz without pickles; sparse matrices are stored as their CSR parts."""
    import scipy.sparse as sp

    flat: dict[str, np.ndarray] = {}
    for key, value in arrays.items():
        if sp.issparse(value):
            # scipy-stubs: issparse() narrows to SparseABC, a base without the methods
            csr = value.tocsr()  # type: ignore[attr-defined]
            flat[f"{key}__csr_data"] = csr.data
            flat[f"{key}__csr_indices"] = csr.indices
            flat[f"{key}__csr_indptr"] = csr.indptr
            flat[f"{key}__csr_shape"] = np.asarray(csr.shape, np.int64)
        else:
            flat[key] = np.asarray(value)
    tmp = path.with_suffix(".tmp.npz")
    # numpy's stub types allow_pickle: bool next to **kwds, and mypy assumes the spread
    # dict might fill it; its keys are array names, never "allow_pickle"
    np.savez(tmp, **flat)  # type: ignore[arg-type]
    tmp.replace(path)


def _load_npz(path: Path) -> dict[str, Any]:
    import scipy.sparse as sp

    out: dict[str, Any] = {}
    with np.load(path, allow_pickle=False) as npz:
        files = set(npz.files)
        for key in files:
            if "__csr_" in key:
                base = key.split("__csr_")[0]
                if base not in out:
                    out[base] = sp.csr_matrix(
                        (npz[f"{base}__csr_data"], npz[f"{base}__csr_indices"],
                         npz[f"{base}__csr_indptr"]), shape=tuple(npz[f"{base}__csr_shape"]))
            else:
                out[key] = npz[key]
    return out
