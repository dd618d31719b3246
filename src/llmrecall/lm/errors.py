"""Errors of the language-model layer, each naming the backend or endpoint involved."""

from __future__ import annotations

from llmrecall.errors import LLMRecallError


class LMError(LLMRecallError, RuntimeError):
    """A language-model backend failed or answered something unusable."""


class BackendUnavailableError(LMError):
    """A local backend's package (model files or runtime) is not installed."""


class EndpointError(LMError):
    """A remote endpoint failed after all retries, or refused the request (4xx).

    Attributes: ``url``, ``status`` (HTTP status or None for transport errors), ``attempts``.
    """

    def __init__(self, message: str, *, url: str, status: int | None = None, attempts: int = 1):
        self.url, self.status, self.attempts = url, status, attempts
        super().__init__(f"{url}: {message} (after {attempts} attempt{'s' * (attempts != 1)})")


class MalformedResponseError(EndpointError):
    """An endpoint answered 2xx with a body that does not have the expected shape."""


class GenerationParseError(LMError, ValueError):
    """Generated text could not be parsed into the requested structure."""
