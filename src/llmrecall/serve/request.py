"""A recall request below the HTTP layer: :class:`~llmrecall.serve.schemas.RecallRequest`
-> the engine's :class:`~llmrecall.serve.engine.RecallQuery` -> the response body.

The service's ``POST /v1/recall`` and the ``llmrecall recall`` command answer through these
functions, so both give the same candidates for the same user, history and filters:
:func:`resolve_recall` checks the request against a live state (k, channel names), extends
the user's history with the request's items and builds the filter mask;
:meth:`ResolvedRecall.body` turns the engine's answer into the response.
:class:`LocalRecall` is the engine and live state of one process without a server.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llmrecall.errors import LLMRecallError
from llmrecall.serve import sources
from llmrecall.serve.artifacts import Artifact
from llmrecall.serve.engine import RecallAnswer, RecallEngine, RecallQuery
from llmrecall.serve.live import LiveState, UserHistory
from llmrecall.serve.metrics import Metrics
from llmrecall.serve.schemas import RecallFilters, RecallRequest
from llmrecall.serve.settings import ServeSettings
from llmrecall.serve.store import StoredState


class InvalidRequest(LLMRecallError, ValueError):
    """A request the live state cannot answer as asked (answered 422 by the service);
    ``field`` names the part of the request at fault (``k``, ``channels[2]``)."""

    def __init__(self, message: str, field: str):
        super().__init__(message)
        self.message, self.field = message, field


@dataclass
class ResolvedRecall:
    """A request resolved against a live state: the engine's query, and the request's
    history items the state does not know (reported, not fatal)."""

    request: RecallRequest
    query: RecallQuery
    ignored: list[str]
    recent: int = 0  # the user's events read from Redis (not applied here yet) it counted

    def body(self, answer: RecallAnswer) -> dict:
        """The ``/v1/recall`` response (``RecallResponse``) for the engine's ``answer``."""
        known = self.query.row is not None or self.recent > 0
        return {"user_id": self.request.user_id, "known_user": known,
                "history_length": len(self.query.history), "candidates": answer.candidates,
                "degraded": answer.degraded, "channel_counts": answer.channel_counts,
                "ignored_history_items": self.ignored,
                "artifact_version": self.query.state.artifact.version}


def resolve_recall(state: LiveState, req: RecallRequest, max_k: int,
                   recent: Sequence[tuple[int, str, float, float]] = ()) -> ResolvedRecall:
    """``req`` as the engine's query over ``state``. Raises :class:`InvalidRequest` for a
    ``k`` over ``max_k``, a request without user, history or query, or an unknown channel
    name. ``recent``: the user's events acknowledged by any replica, from Redis
    (:meth:`~llmrecall.serve.hotstate.RecentEvents.since`); those ``state`` has not applied
    yet join the user's history for this answer."""
    if req.k > max_k:
        raise InvalidRequest(f"k: at most {max_k}", "k")
    if req.user_id is None and not req.history and not req.query:
        raise InvalidRequest("give user_id, history or query", "user_id")
    only = _selection(state, req.channels)
    row = state.row_for(req.user_id) if req.user_id is not None else None
    base, added = state.history(row), 0
    if recent:
        from llmrecall.serve.hotstate import with_recent

        base, added = with_recent(state, base, recent)
    history, ignored = extended_history(state, row, req.history, base)
    adhoc = (bool(req.history) or added > 0) and row is not None
    query = RecallQuery(state, row, history, req.k, req.query, only, filter_mask(state, req.filters),
                        req.explain, req.max_reasons, adhoc=adhoc,
                        query_only=row is None and len(history) == 0 and bool(req.query))
    return ResolvedRecall(req, query, ignored, added)


def _selection(state: LiveState, channels: list[str] | None) -> tuple[str, ...] | None:
    """The selected channel names, sorted and unique (None: every channel and source)."""
    if channels is None:
        return None
    known = known_channels(state)
    for i, name in enumerate(channels):
        if name not in known:
            raise InvalidRequest(f"unknown channel {name!r}; known: {sorted(known)}",
                                 f"channels[{i}]")
    return tuple(sorted(set(channels)))


def known_channels(state: LiveState) -> set[str]:
    """The names a request may select: the artifact's channels and the live sources."""
    return set(state.artifact.pipeline.channels) | {
        sources.LIVE_POPULARITY, sources.LIVE_COVISIT, sources.QUERY_LEXICAL}


def extended_history(state: LiveState, row: int | None, items: list[str],
                     base: UserHistory | None = None) -> tuple[UserHistory, list[str]]:
    """Row ``row``'s live history (empty for None; ``base`` instead when given) followed by
    the known ``items`` (raw ids, oldest first), and the unknown ones. The added events get
    weight 1 and times one second apart after the history's last (from 0 for an empty
    history): only their order matters to the channels."""
    history = state.history(row) if base is None else base
    if not items:
        return history, []
    idx = state.items.lookup(items)
    ignored = [items[i] for i in np.flatnonzero(idx < 0)]
    extra = idx[idx >= 0]
    if len(extra):
        start = float(history.times[-1]) + 1 if len(history) else 0.0
        history = UserHistory(
            np.concatenate([history.items, extra]).astype(np.int32),
            np.concatenate([history.times, start + np.arange(len(extra), dtype=np.float64)]),
            np.concatenate([history.weights, np.ones(len(extra), np.float32)]))
    return history, ignored


def filter_mask(state: LiveState, filters: RecallFilters) -> np.ndarray | None:
    """bool[n_items]: the state's allowed items restricted to ``filters`` (any of the
    categories, none of the denied items; unknown denied ids are ignored); None when the
    request filters nothing."""
    if not filters.categories and not filters.deny_items:
        return None
    allowed = state.allowed.copy()
    if filters.categories:
        allowed &= state.category_mask(filters.categories)
    if filters.deny_items:
        deny = state.items.lookup(filters.deny_items)
        allowed[deny[deny >= 0]] = False
    return allowed


class LocalRecall:
    """The service's recall path in one process, without a server (``llmrecall recall``):
    a live state over ``pipeline`` (fitted in this process) and ``dataset``'s histories with
    no stored events, and an engine with the service's default settings except the channel
    deadline, which is long enough for every channel: a command waits for all of them."""

    def __init__(self, dataset, pipeline, settings: ServeSettings | None = None):
        artifact = Artifact(Path(), {"version": "local", "dataset": dataset.name},
                            pipeline.config, pipeline, dataset.users, dataset.items,
                            dataset.catalog, dataset.histories())
        empty = StoredState(np.zeros(0, np.int64), [], [], np.zeros(0), np.zeros(0, np.float32),
                            [], set())
        self.state = LiveState(artifact, empty)
        # artifact_dir is not read: the artifact is the one above, in memory
        self.settings = settings or ServeSettings(artifact_dir=Path(), max_k=5000,
                                                  channel_budget_ms=3_600_000.0)
        self.engine = RecallEngine(self.settings, Metrics())

    def answer(self, req: RecallRequest) -> tuple[ResolvedRecall, dict]:
        """``req`` resolved (:func:`resolve_recall`) and answered now, on this thread."""
        resolved = resolve_recall(self.state, req, self.settings.max_k)
        (answer,) = self.engine.recall([resolved.query])
        return resolved, resolved.body(answer)

    def close(self) -> None:
        self.engine.shutdown()
