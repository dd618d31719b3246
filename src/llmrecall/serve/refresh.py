"""Near-line refresh of per-user interest text, off the request path.

When a user's history has grown by ``min_events`` since their last refresh, the user is
queued (once, however many events arrive meanwhile); a worker thread takes users from the
queue and calls the pluggable refresher with the user's current history. Language-model
interest channels provide the refresher; with none configured nothing is queued.
"""

from __future__ import annotations

import importlib
import logging
import queue
import threading
from collections.abc import Callable
from typing import Protocol

import numpy as np

log = logging.getLogger(__name__)


class Refresher(Protocol):
    def __call__(self, user_id: str, history_items: list[str]) -> None:
        """Recompute (and store) the interest text of ``user_id`` from raw item ids, oldest first."""


def load_refresher(spec: str) -> Refresher:
    """``'module:factory'`` -> the refresher the factory returns (called without arguments)."""
    module, _, attr = spec.partition(":")
    if not attr:
        raise ValueError(f"refresher must be 'module:callable', got {spec!r}")
    return getattr(importlib.import_module(module), attr)()


class InterestRefreshWorker:
    """Queue + one worker thread calling ``refresher``.

    Args:
        refresher: the callable, or None (then :meth:`notify` does nothing).
        history_of: ``f(user_id) -> list[str] | None`` the user's current raw item history
            (None when the user no longer exists, e.g. erased).
        min_events: history growth that triggers a refresh.
        on_outcome: ``f("ok" | "error" | "skipped")`` after each attempt (metrics).
    """

    def __init__(self, refresher: Refresher | None,
                 history_of: Callable[[str], list[str] | None], min_events: int = 5,
                 on_outcome: Callable[[str], None] | None = None, maxsize: int = 100_000):
        self.refresher = refresher
        self.history_of = history_of
        self.min_events = min_events
        self.on_outcome = on_outcome or (lambda _outcome: None)
        self._pending_growth: dict[str, int] = {}
        self._queued: set[str] = set()
        self._lock = threading.Lock()
        self._queue: queue.Queue[str | None] = queue.Queue(maxsize=maxsize)
        self._thread: threading.Thread | None = None
        if refresher is not None:
            self._thread = threading.Thread(target=self._run, name="llmrecall-refresh", daemon=True)
            self._thread.start()

    @property
    def enabled(self) -> bool:
        return self.refresher is not None

    def notify(self, user_ids: list[str], counts: list[int] | np.ndarray) -> int:
        """Record ``counts[i]`` new events of ``user_ids[i]``; returns users newly queued."""
        if self.refresher is None:
            return 0
        queued = 0
        with self._lock:
            for user, n in zip(user_ids, counts):
                growth = self._pending_growth.get(user, 0) + int(n)
                if growth >= self.min_events and user not in self._queued:
                    try:
                        self._queue.put_nowait(user)
                    except queue.Full:  # back-pressure: keep the growth, retry on next event
                        self._pending_growth[user] = growth
                        continue
                    self._queued.add(user)
                    growth = 0
                    queued += 1
                self._pending_growth[user] = growth
        return queued

    def forget(self, user_id: str) -> None:
        with self._lock:
            self._pending_growth.pop(user_id, None)

    def drain(self, timeout: float = 10.0) -> bool:
        """Wait until the queue is empty and the worker idle (tests, shutdown)."""
        done = threading.Event()

        def waiter():
            self._queue.join()
            done.set()

        threading.Thread(target=waiter, daemon=True).start()
        return done.wait(timeout)

    def _run(self) -> None:
        while True:
            user = self._queue.get()
            try:
                if user is None:
                    return
                with self._lock:
                    self._queued.discard(user)
                history = self.history_of(user)
                if history is None:
                    self.on_outcome("skipped")
                    continue
                try:
                    self.refresher(user, history)  # type: ignore[misc]
                    self.on_outcome("ok")
                except Exception:  # a failing refresher must not stop the worker
                    log.exception("interest refresh failed for user %r", user)
                    self.on_outcome("error")
            finally:
                self._queue.task_done()

    def stop(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=10)
            self._thread = None
