"""Channel registry: ``kind`` name -> class, so configs and artifacts can name channels."""

from __future__ import annotations

from llmrecall.channels.base import Channel

_REGISTRY: dict[str, type[Channel]] = {}


def register(cls: type[Channel]) -> type[Channel]:
    """Class decorator adding a channel class under its ``kind``."""
    if cls.kind in _REGISTRY and _REGISTRY[cls.kind] is not cls:
        raise ValueError(f"channel kind {cls.kind!r} registered twice")
    _REGISTRY[cls.kind] = cls
    return cls


def channel_class(kind: str) -> type[Channel]:
    import llmrecall.channels  # noqa: F401  (imports every built-in channel module)

    try:
        return _REGISTRY[kind]
    except KeyError:
        raise ValueError(f"unknown channel kind {kind!r}; known: {sorted(_REGISTRY)}") from None


def known_kinds() -> list[str]:
    import llmrecall.channels  # noqa: F401

    return sorted(_REGISTRY)
