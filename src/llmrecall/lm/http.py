"""A small, dependable client for OpenAI-compatible HTTP endpoints.

Shared by the remote embedder and generator: one ``httpx.Client`` (connection reuse), a
per-request timeout, retries with exponential backoff and jitter on transient failures
(connection errors, timeouts, 5xx, and 429 "slow down"), no retry on other 4xx (the request
itself is wrong, repeating it cannot help), and a concurrency limit for batch calls.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import httpx

from llmrecall.errors import ConfigError
from llmrecall.lm.errors import EndpointError, MalformedResponseError

T = TypeVar("T")
R = TypeVar("R")


class OpenAIClient:
    """POST JSON to ``{base_url}/{path}`` with retries; map a function over batches concurrently.

    Args:
        base_url: endpoint root including the API prefix, e.g. ``http://127.0.0.1:8000/v1``.
        api_key_env: name of the environment variable holding the bearer token (the key itself
            never appears in configs); None or an unset variable sends no Authorization header.
        timeout_s: per-request timeout (connect, read, write, pool), seconds.
        max_retries: retries after the first attempt on transient failures.
        backoff_s: first backoff; attempt i waits ``backoff_s * 2**i`` (capped by
            ``backoff_max_s``) times a random factor in [0.5, 1.0] so clients do not retry in step.
        concurrency: at most this many requests in flight from :meth:`map`.
    """

    def __init__(self, base_url: str, *, api_key_env: str | None = None, timeout_s: float = 30.0,
                 max_retries: int = 3, backoff_s: float = 0.5, backoff_max_s: float = 20.0,
                 concurrency: int = 2):
        if not base_url.startswith(("http://", "https://")):
            raise ConfigError(f"base_url must start with http:// or https://, got {base_url!r}")
        if max_retries < 0 or concurrency < 1 or timeout_s <= 0:
            raise ConfigError("need max_retries >= 0, concurrency >= 1 and timeout_s > 0")
        self.base_url = base_url.rstrip("/")
        self.max_retries, self.backoff_s, self.backoff_max_s = max_retries, backoff_s, backoff_max_s
        self.concurrency = concurrency
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(api_key_env) if api_key_env else None
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self._http = httpx.Client(timeout=httpx.Timeout(timeout_s), headers=headers,
                                  limits=httpx.Limits(max_connections=concurrency))
        self._lock = threading.Lock()
        self.requests_sent = 0  # every attempt, retries included (observable in tests/metrics)

    def _wait(self, attempt: int, retry_after: str | None) -> None:
        delay = min(self.backoff_max_s, self.backoff_s * 2 ** attempt) * random.uniform(0.5, 1.0)
        if retry_after:
            try:
                delay = max(delay, min(self.backoff_max_s, float(retry_after)))
            except ValueError:
                pass
        time.sleep(delay)

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST ``body`` and return the decoded JSON object.

        Raises:
            EndpointError: 4xx (no retry), or a transient failure that outlived the retries.
            MalformedResponseError: 2xx whose body is not a JSON object.
        """
        url = f"{self.base_url}/{path.lstrip('/')}"
        last: tuple[str, int | None] = ("no attempt", None)
        for attempt in range(self.max_retries + 1):
            with self._lock:
                self.requests_sent += 1
            retry_after = None
            try:
                response = self._http.post(url, json=body)
            except httpx.TimeoutException as exc:
                last = (f"timed out ({type(exc).__name__})", None)
            except httpx.TransportError as exc:
                last = (f"connection failed ({type(exc).__name__}: {exc})", None)
            else:
                status = response.status_code
                if status < 300:
                    try:
                        data = response.json()
                    except ValueError:
                        raise MalformedResponseError(
                            f"answered {status} with a body that is not JSON: "
                            f"{response.text[:200]!r}", url=url, status=status,
                            attempts=attempt + 1) from None
                    if not isinstance(data, dict):
                        raise MalformedResponseError(
                            f"answered a JSON {type(data).__name__}, expected an object",
                            url=url, status=status, attempts=attempt + 1)
                    return data
                detail = response.text[:300]
                if status != 429 and status < 500:
                    raise EndpointError(f"refused the request with HTTP {status}: {detail}",
                                        url=url, status=status, attempts=attempt + 1)
                last = (f"HTTP {status}: {detail}", status)
                retry_after = response.headers.get("retry-after")
            if attempt < self.max_retries:
                self._wait(attempt, retry_after)
        raise EndpointError(last[0], url=url, status=last[1], attempts=self.max_retries + 1)

    def map(self, fn: Callable[[T], R], batches: Sequence[T]) -> list[R]:
        """``[fn(b) for b in batches]`` with at most ``concurrency`` calls in flight, order kept."""
        if self.concurrency == 1 or len(batches) <= 1:
            return [fn(b) for b in batches]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(batches))) as pool:
            return list(pool.map(fn, batches))

    def close(self) -> None:
        self._http.close()


def expect(condition: bool, message: str, url: str) -> None:
    """Raise :class:`MalformedResponseError` unless ``condition`` holds."""
    if not condition:
        raise MalformedResponseError(message, url=url, status=200)


class RemoteEndpoint:
    """What every OpenAI-compatible backend shares: the HTTP client and the scrubber that
    removes personal identifiers before any text leaves the machine."""

    def _connect(self, base_url: str, *, api_key_env: str | None, timeout_s: float,
                 max_retries: int, backoff_s: float, concurrency: int, scrub) -> None:
        from llmrecall.lm.scrub import Scrubber

        self._client = OpenAIClient(base_url, api_key_env=api_key_env, timeout_s=timeout_s,
                                    max_retries=max_retries, backoff_s=backoff_s,
                                    concurrency=concurrency)
        self._scrub = scrub if isinstance(scrub, Scrubber) else (Scrubber() if scrub else None)

    @property
    def base_url(self) -> str:
        return self._client.base_url

    @property
    def client(self) -> OpenAIClient:
        return self._client
