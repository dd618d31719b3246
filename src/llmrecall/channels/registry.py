"""Channel registry: ``kind`` name -> class, so configs and artifacts can name channels.

The built-in kinds are registered by importing the ``llmrecall.channels`` package, whose
``__init__`` imports every channel module; Python runs a package's ``__init__`` before any of
its modules, so by the time this one can be called they are all here. (This module imports
no channel module itself: they import it, to register.)
"""

from __future__ import annotations

import json
from pathlib import Path

from llmrecall.channels.base import Channel

_REGISTRY: dict[str, type[Channel]] = {}

#: kind -> {old parameter name: new name}. A config file still using an old name is refused
#: with a message naming the new one (:mod:`llmrecall.config`); a saved channel whose
#: ``params.json`` holds it is loaded under the new name (:func:`load_channel`).
RENAMED_PARAMS: dict[str, dict[str, str]] = {
    "llm_knowledge": {"neighbours": "neighbors"},
}


def register(cls: type[Channel]) -> type[Channel]:
    """Class decorator adding a channel class under its ``kind``."""
    if cls.kind in _REGISTRY and _REGISTRY[cls.kind] is not cls:
        raise ValueError(f"channel kind {cls.kind!r} registered twice")
    _REGISTRY[cls.kind] = cls
    return cls


def channel_class(kind: str) -> type[Channel]:
    try:
        return _REGISTRY[kind]
    except KeyError:
        raise ValueError(f"unknown channel kind {kind!r}; known: {sorted(_REGISTRY)}") from None


def known_kinds() -> list[str]:
    return sorted(_REGISTRY)


def load_channel(directory: str | Path) -> Channel:
    """Inverse of :meth:`Channel.save`: the class is looked up by the ``kind`` saved in
    ``params.json``, built with the saved parameters, and given the saved state."""
    directory = Path(directory)
    meta = json.loads((directory / "params.json").read_text())
    renamed = RENAMED_PARAMS.get(meta["kind"], {})
    params = {renamed.get(name, name): value for name, value in meta["params"].items()}
    channel = channel_class(meta["kind"])(**params)
    channel.load_state(directory)
    return channel
