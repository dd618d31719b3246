"""The circuit breaker in front of Redis, shared by every Redis user of the service (the hot
state of :mod:`llmrecall.serve.hotstate`, the per-user channel states of
:mod:`llmrecall.serve.shared_states`).

Redis is a cache: a failed call (down, refused, past its timeout) counts as a miss and opens
the breaker for ``retry_s``, during which Redis is not called at all; after the pause one call
tries again, and a success closes the breaker. Thread-safe: the channel-state level calls it
from engine threads.
"""

from __future__ import annotations

import logging
import threading
import time

log = logging.getLogger(__name__)


class Breaker:
    """Open (skip Redis) for ``retry_s`` after each failure. ``fallback`` says, in the log,
    what the service does meanwhile (e.g. "answering from the change feed alone")."""

    def __init__(self, retry_s: float, fallback: str):
        self.retry_s, self.fallback = float(retry_s), fallback
        self._lock = threading.Lock()
        self._open_until = 0.0  # breaker open (Redis skipped) until this monotonic time
        self._failing = False
        self.failures = 0  # calls that failed (the breaker opened after each)

    @property
    def available(self) -> bool:
        """False while the breaker is open (the last call failed)."""
        return not self._failing

    def skip(self) -> bool:
        """True while Redis must not be called (open, pause not over)."""
        return self._failing and time.monotonic() < self._open_until

    def failed(self, what: str, exc: BaseException) -> None:
        with self._lock:
            self.failures += 1
            self._open_until = time.monotonic() + self.retry_s
            first = not self._failing
            self._failing = True
        if first:
            log.warning("Redis %s failed (%s: %s); %s, next try in %.1fs", what,
                        type(exc).__name__, exc, self.fallback, self.retry_s)

    def succeeded(self) -> None:
        with self._lock:
            was = self._failing
            self._failing = False
        if was:
            log.warning("Redis is answering again")
