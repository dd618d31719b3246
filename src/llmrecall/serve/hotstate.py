"""Hot per-user state in Redis (``[state] redis_url``): each user's recently acknowledged
events, readable by every replica the moment they are acknowledged.

Replicas over PostgreSQL learn of each other's events through the change feed (LISTEN/NOTIFY),
a few milliseconds after the acknowledgement: a request reaching replica B right after
replica A acknowledged an event may be answered without it. With Redis, the acknowledging
replica also writes the events, with their event-log sequence numbers, to one sorted set per
user (score = sequence number) *after* the commit and *before* it answers; a replica
answering that user reads the set and adds the events beyond what it has applied from the
feed (sequence number > its ``last_seq``) to the history of that one answer.

Correctness never depends on Redis:

- PostgreSQL stays the source of truth. Redis holds only committed events (written after the
  commit), a replica's own state only ever comes from the change feed, and an event from
  Redis counts in an answer only while the feed has not delivered it (every event with a
  sequence number up to ``last_seq`` has been applied, or erased).
- Redis failing (down, slow, unreachable) is a cache miss: every call is bounded by
  ``redis_timeout_ms`` and failures open a circuit breaker for ``redis_retry_s``, during
  which Redis is not called at all; recall answers from the feed-fed state (today's path)
  and writes are acknowledged once committed, as without Redis. After the pause one call
  tries again; a success closes the breaker.
- Keys are namespaced by the state's identity (a random id PostgreSQL keeps, see
  :data:`~llmrecall.serve.pgstore.MIGRATIONS`), so one Redis may serve several deployments
  and a recreated database never meets the sequence numbers of the previous one. Each set
  keeps the newest :data:`RECENT_EVENTS` events and expires ``redis_ttl_s`` after its last
  write: it only has to bridge the feed's delay.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence

import numpy as np

from llmrecall.serve.breaker import Breaker
from llmrecall.serve.live import LiveState, UserHistory

#: events kept per user (the newest by sequence number)
RECENT_EVENTS = 200


class RecentEvents:
    """A user's recent acknowledged events in Redis, behind a circuit breaker.

    ``url`` is a redis-py URL (``redis://host:6379/0``, ``rediss://`` for TLS); ``namespace``
    separates deployments (the state's identity). All methods are coroutines of the
    service's event loop and never raise: a failure is counted and answered as "nothing"."""

    def __init__(self, url: str, namespace: str, timeout_s: float = 0.05,
                 retry_s: float = 1.0, ttl_s: float = 300.0, keep: int = RECENT_EVENTS):
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        self.timeout_s, self.retry_s, self.ttl_s, self.keep = timeout_s, retry_s, ttl_s, keep
        self.prefix = f"llmrecall:{namespace}:recent:"
        # no retries of its own: one bounded try, then the breaker decides
        self._client = aioredis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0), health_check_interval=0)
        self._breaker = Breaker(retry_s, "answering from the change feed alone")
        self.merged = 0  # events read from Redis that counted in an answer

    # ---- breaker (llmrecall.serve.breaker) ----------------------------------------------
    @property
    def available(self) -> bool:
        """False while the breaker is open (the last call failed)."""
        return self._breaker.available

    @property
    def failures(self) -> int:
        """Calls that failed (the breaker opened after each)."""
        return self._breaker.failures

    def _skip(self) -> bool:
        return self._breaker.skip()

    async def _call(self, what: str, coro):
        """``await coro`` within the timeout; None (and the breaker opened) on failure."""
        try:
            result = await asyncio.wait_for(coro, self.timeout_s * 2)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # down, refused, timed out, protocol error: a miss
            self._breaker.failed(what, exc)
            return None
        self._breaker.succeeded()
        return result

    # ---- writes (after the commit, before the acknowledgement) ------------------------
    async def record(self, first_seq: int, users: Sequence[str], items: Sequence[str],
                     times: Sequence[float], weights: Sequence[float]) -> bool:
        """Add a committed event batch (sequence numbers ``first_seq``, ``first_seq + 1``,
        ...) to its users' sets, in one round trip. False when skipped or failed."""
        if self._skip() or not len(users):
            return False
        per_user: dict[str, dict[str, float]] = {}
        for n, (user, item, ts, weight) in enumerate(zip(users, items, times, weights)):
            seq = first_seq + n
            member = json.dumps([seq, item, float(ts), float(weight)])
            per_user.setdefault(user, {})[member] = seq
        pipe = self._client.pipeline(transaction=False)
        ttl_ms = int(self.ttl_s * 1000)
        for user, members in per_user.items():
            key = self.prefix + user
            pipe.zadd(key, members)
            pipe.zremrangebyrank(key, 0, -self.keep - 1)
            pipe.pexpire(key, ttl_ms)
        return await self._call("write", pipe.execute()) is not None

    async def forget(self, user: str) -> None:
        """Drop a user's set (after their erasure is committed). Only a cleanup: a replica
        never counts events at or below its applied sequence, which passes the erased ones
        once it applies the erasure."""
        if not self._skip():
            await self._call("delete", self._client.delete(self.prefix + user))

    # ---- reads -----------------------------------------------------------------------
    async def since(self, user: str, seq: int) -> list[tuple[int, str, float, float]]:
        """The user's recorded events with a sequence number above ``seq``, as ``(seq,
        item id, timestamp, weight)`` in sequence order; [] when skipped or failed."""
        if self._skip():
            return []
        got = await self._call("read", self._client.zrangebyscore(
            self.prefix + user, f"({seq}", "+inf"))
        if not got:
            return []
        out = []
        for raw in got:
            s, item, ts, weight = json.loads(raw)
            out.append((int(s), str(item), float(ts), float(weight)))
        return out

    async def ping(self) -> bool:
        """One bounded PING (start-up check and tests); never raises."""
        return bool(await self._call("ping", self._client.ping()))

    async def close(self) -> None:
        try:
            await self._client.aclose()
        except Exception:  # already broken
            pass

    def describe(self) -> dict:
        return {"kind": "redis", "available": self.available}


def with_recent(state: LiveState, history: UserHistory,
                recent: Sequence[tuple[int, str, float, float]]) -> tuple[UserHistory, int]:
    """``history`` (a user's in ``state``) with the events of ``recent`` (from
    :meth:`RecentEvents.since`) that ``state`` has not applied: sequence number above
    ``state.last_seq`` and an item ``state`` knows. They are placed as
    :meth:`LiveState.apply_events` would place them (by time, ties in arrival order, the
    history's entries first). Returns the history (version -1 when anything was added: its
    content is not the row's stored one) and the number of events added."""
    fresh = [r for r in recent if r[0] > state.last_seq]
    if not fresh:
        return history, 0
    idx = state.items.lookup([r[1] for r in fresh])
    keep = idx >= 0  # an item put by another replica and not applied here yet: left out
    if not keep.any():
        return history, 0
    new_times = np.fromiter((r[2] for r in fresh), np.float64, len(fresh))[keep]
    new_weights = np.fromiter((r[3] for r in fresh), np.float32, len(fresh))[keep]
    items = np.concatenate([history.items, idx[keep].astype(np.int32)])
    times = np.concatenate([history.times, new_times])
    weights = np.concatenate([history.weights, new_weights])
    order = np.lexsort((np.arange(len(times)), times))
    return UserHistory(items[order], times[order], weights[order]), int(keep.sum())
