"""Per-user channel states in Redis (``[state] redis_url``), shared by the replicas.

The channels that keep per-user state (:class:`~llmrecall.channels.capabilities.CachesUsers`)
cache it in process (:class:`~llmrecall.channels.user_cache.UserStateCache`); with Redis
behind, a state computed on one replica answers the same user on every other replica, and
after a restart, while the user's history and the model are unchanged. The keys and the
value format are :mod:`llmrecall.channels.user_cache`'s; this module moves bytes: one
``MGET`` per recall block for the rows the process lacks, one pipelined ``SET ... PX`` for
the rows it computed.

Channel code runs on engine threads, so this is a synchronous client (thread-safe: a
connection pool). Like the hot state (:mod:`llmrecall.serve.hotstate`), every call is bounded
by ``redis_timeout_ms`` and goes through a circuit breaker (:mod:`llmrecall.serve.breaker`):
Redis down or slow is a miss (the state is computed, as without Redis), never an error.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from llmrecall.channels.capabilities import CachesUsers
from llmrecall.channels.user_cache import UserStateCache
from llmrecall.serve.breaker import Breaker


class SharedUserStates:
    """Key/value bytes in Redis behind a breaker (a
    :class:`~llmrecall.channels.user_cache.SharedLevel`). ``namespace`` separates deployments
    (the state's identity, as for the hot state); values expire ``ttl_s`` after their write."""

    def __init__(self, url: str, namespace: str, timeout_s: float = 0.05,
                 retry_s: float = 1.0, ttl_s: float = 3600.0):
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        self.namespace, self.ttl_ms = namespace, int(ttl_s * 1000)
        # no retries of its own: one bounded try, then the breaker decides
        self._client = redis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0), health_check_interval=0)
        self.breaker = Breaker(retry_s, "computing per-user channel states in process")

    def prefix(self, artifact_version: str, channel: str) -> str:
        """Key prefix of one channel of one artifact version."""
        return f"llmrecall:{self.namespace}:user:{artifact_version}:{channel}:"

    def fetch(self, keys: Sequence[bytes]) -> list[bytes | None]:
        if not keys or self.breaker.skip():
            return [None] * len(keys)
        try:
            got = self._client.mget(list(keys))
        except Exception as exc:  # down, refused, timed out, protocol error: a miss
            self.breaker.failed("read", exc)
            return [None] * len(keys)
        self.breaker.succeeded()
        return [g if isinstance(g, bytes) else None for g in got]

    def keep(self, entries: Sequence[tuple[bytes, bytes]]) -> None:
        if not entries or self.breaker.skip():
            return
        pipe = self._client.pipeline(transaction=False)
        for key, value in entries:
            pipe.set(key, value, px=self.ttl_ms)
        try:
            pipe.execute()
        except Exception as exc:
            self.breaker.failed("write", exc)
            return
        self.breaker.succeeded()

    def attach(self, channels: Iterable[tuple[str, object]], artifact_version: str,
               stable_rows: int) -> int:
        """Put this level behind the user cache of every named channel that has one; rows
        below ``stable_rows`` are the artifact's users. Returns how many got it."""
        n = 0
        for name, channel in channels:
            cache = channel.user_cache if isinstance(channel, CachesUsers) else None
            if isinstance(cache, UserStateCache):
                cache.share_through(self, self.prefix(artifact_version, name), stable_rows)
                n += 1
        return n

    def close(self) -> None:
        try:
            self._client.close()
        except Exception:  # already broken
            pass

    def describe(self) -> dict:
        return {"available": self.breaker.available, "failures": self.breaker.failures}


def user_cache_counts(channels: Iterable[tuple[str, object]]) -> dict[str, dict[str, int]]:
    """Per channel with a user cache: in-process ``hits``/``misses`` and, of the misses,
    those the shared level answered (``redis_hits``) or not (``redis_misses``)."""
    out = {}
    for name, channel in channels:
        cache = channel.user_cache if isinstance(channel, CachesUsers) else None
        if isinstance(cache, UserStateCache):
            out[name] = {"hits": cache.hits, "misses": cache.misses,
                         "redis_hits": cache.shared_hits, "redis_misses": cache.shared_misses}
    return out
