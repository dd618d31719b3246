"""Where the batch jobs run: in this process (``local``, the default) or on a Ray cluster.

An :class:`Engine` answers the two questions the offline jobs (evaluate, tune, build) ask
of it: *fit this channel on this dataset* and *rank every user of this task with this
channel*. The local engine does both in-process, exactly as the code always did; the Ray
engine (:mod:`llmrecall.engine.ray_engine`, imported only when asked for, so ``import
llmrecall`` never imports Ray) runs ItemCF/Swing co-occurrence as a map-shuffle-reduce and
the all-user recall as one task per block of users, with the same answers.

The engine in use is set for a block of code with :func:`use_engine`; library code asks
:func:`current_engine`. See docs/scale-out.md.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from llmrecall.engine.local import Engine, current_engine, use_engine
from llmrecall.errors import ConfigError

__all__ = ["ENGINES", "Engine", "current_engine", "engine_for", "engine_options", "make_engine",
           "use_engine"]

ENGINES = ("local", "ray")


def make_engine(kind: str = "local", address: str | None = None, **options: Any) -> Engine:
    """An engine by name: ``local``, or ``ray`` connected to ``address`` (``"auto"``, a
    ``host:port`` or ``ray://host:port``; None starts a Ray instance on this machine)."""
    if kind == "local":
        return Engine()
    if kind == "ray":
        try:
            from llmrecall.engine.ray_engine import RayEngine
        except ImportError as exc:
            raise ConfigError(f"engine 'ray' needs Ray: pip install 'llmrecall[ray]' ({exc})") from None
        return RayEngine(address=address, **options)
    raise ConfigError(f"engine must be one of {', '.join(ENGINES)}; got {kind!r}")


def engine_options(kind: str, section: Any) -> dict[str, Any]:
    """The ``[engine]`` settings (``section``, None when the config has none) that engine
    ``kind`` takes as arguments besides the address: ``train_max_failures`` and
    ``train_min_workers`` for ``ray``, none for ``local``."""
    if kind == "ray" and section is not None:
        return {"train_max_failures": section.train_max_failures,
                "train_min_workers": section.train_min_workers}
    return {}


@contextmanager
def engine_for(kind: str | None, config: Any = None, address: str | None = None,
               sharded: bool = False) -> Iterator[Engine]:
    """The engine a command runs on, current for the block and closed after: ``kind``
    (the ``--engine`` option) else the config's ``[engine] kind`` else local; ``address``
    else the config's ``[engine] address``; the Ray engine's other settings from
    ``[engine]`` (``train_max_failures``). A config with ``[engine] log = "sharded"`` is
    refused unless the caller reads the sharded log (``sharded``: the sharded paths of
    ``evaluate``, ``build`` and ``tune``): any other would load the whole log after all."""
    section = getattr(config, "engine", None)
    if section is not None and getattr(section, "log", "driver") == "sharded" and not sharded:
        raise ConfigError('[engine] log = "sharded" is read by the sharded evaluate, build '
                          'and tune only; this loads the whole log: set log = "driver" (or '
                          'leave it out)')
    kind = kind or (section.kind if section is not None else "local")
    address = address or (section.address if section is not None else None)
    engine = make_engine(kind, address, **engine_options(kind, section))
    try:
        with use_engine(engine):
            yield engine
    finally:
        engine.close()
