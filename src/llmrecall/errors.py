"""Errors raised at the edges of llmrecall, each saying what went wrong and where."""

from __future__ import annotations


class LLMRecallError(Exception):
    """Base class for every error llmrecall raises on purpose."""


class DataError(LLMRecallError, ValueError):
    """Input data is malformed. The message names the file, line and column where known."""

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None,
                 column: str | None = None):
        where = []
        if path is not None:
            where.append(str(path))
        if line is not None:
            where.append(f"line {line}")
        if column is not None:
            where.append(f"column {column!r}")
        self.path, self.line, self.column = path, line, column
        super().__init__(f"{': '.join([', '.join(where), message]) if where else message}")


class ConfigError(LLMRecallError, ValueError):
    """A configuration file or value is invalid."""


class UnknownIdError(LLMRecallError, KeyError):
    """A raw id is not in the vocabulary and the caller asked for a strict lookup."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else "unknown id"


class NotFittedError(LLMRecallError, RuntimeError):
    """A channel was used before `fit` was called."""
