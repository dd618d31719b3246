"""The in-process engine (``local``, the embedded default): the base every engine extends.

It lives in its own module so an engine (:mod:`llmrecall.engine.ray_engine`) can extend it
without importing the package that chooses between engines (no import circle); the engine
in use (:func:`current_engine`, :func:`use_engine`) is kept here too, so the channels can
ask for it without importing the package that imports the Ray engine.

Besides fitting and ranking, the engine is where the language-model work of a fit runs:
the embedder a text channel embeds with (:meth:`Engine.embedder`) and the generation of
interests and item knowledge (:meth:`Engine.generate_interests`,
:meth:`Engine.generate_knowledge`). Here all of it runs in this process, as the channels
always did.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np


class Engine:
    """The in-process engine: fit and rank here, one process (the embedded default)."""

    kind = "local"

    def fit_channel(self, channel: Any, dataset: Any) -> None:
        """Fit ``channel`` on ``dataset`` (its interactions are the training data)."""
        channel.fit(dataset)

    def rank_task(self, channel: Any, task: Any, k: int,
                  on_batch: Callable[[int], None] | None = None) -> np.ndarray:
        """int32[u, k] the channel's top-``k`` for every user of the evaluation ``task``
        (:func:`llmrecall.evaluate.runner.rank_task`); ``on_batch(n)`` is called as each
        block of ``n`` users is done (progress)."""
        return self.recall_lists(channel, task, k, on_batch).ids

    def recall_lists(self, channel: Any, task: Any, k: int,
                     on_batch: Callable[[int], None] | None = None) -> Any:
        """:meth:`rank_task`'s lists with the channel's scores of them, as
        :class:`~llmrecall.channels.base.Candidates` (ids int32[u, k], scores float32[u, k];
        :func:`llmrecall.evaluate.runner.recall_lists`)."""
        from llmrecall.evaluate.runner import recall_lists

        return recall_lists(channel, task, k, on_batch=on_batch)

    def map_tasks(self, fn: Callable[[Any], Any], inputs: list[Any]) -> list[Any]:
        """``[fn(x) for x in inputs]``: independent jobs (one per history shard); a
        distributed engine runs each as a task. ``fn`` must be a pure function of its input."""
        return [fn(x) for x in inputs]

    def shuffle(self, map_fn: Callable[[Any], list[Any]], inputs: list[Any],
                reduce_fn: Callable[[int, Any], Any], n_partitions: int,
                keep: bool = False) -> list[Any]:
        """``reduce_fn(p, piece p of every map_fn(x), concatenated)`` for each partition p
        (:func:`llmrecall.engine.cooccurrence.concat`), in this process. ``keep``: the
        outputs only feed another shuffle's maps, so a distributed engine may leave them
        where they were computed and return references (here: the values)."""
        from llmrecall.engine.cooccurrence import _shuffle_local

        return _shuffle_local(map_fn, inputs, reduce_fn, n_partitions)

    def shuffle_streamed(self, map_fn: Callable[[Any], list[Any]], inputs: list[Any],
                         reduce_fn: Callable[[int, Iterator[Any]], Any],
                         n_partitions: int) -> list[Any]:
        """``reduce_fn(p, pieces)`` for each partition p, where ``pieces`` yields piece p of
        every ``map_fn(x)`` one at a time (a reducer that folds them in holds one piece at
        once, not their concatenation). Here the maps all run first, in this process."""
        outputs = [map_fn(x) for x in inputs]
        return [reduce_fn(p, (out[p] for out in outputs)) for p in range(n_partitions)]

    def embedder(self, name: str) -> Any:
        """The embedder ``name`` (:func:`llmrecall.lm.get_embedder`, default options) that
        the channels embed item and query texts with: here the process-wide instance."""
        from llmrecall.lm.embedders import get_embedder

        return get_embedder(name)

    def generate_interests(self, dataset: Any, generator: Any, settings: Any, users: Any,
                           store: Any, refresh_min_changed: int = 3,
                           examples: Any = None) -> tuple[dict, Any]:
        """Interest texts for ``users`` (dense ids): :meth:`InterestJob.run
        <llmrecall.interest.jobs.InterestJob.run>` writing to ``store`` (an
        :class:`~llmrecall.lm.cache.LMCache`). ``generator`` is a loaded generator
        (a :class:`~llmrecall.lm.generators.Generator`, or anything with its ``chat``) or a
        function of no arguments that builds one; ``examples``: the few-shot examples when
        drawn elsewhere (None: from ``dataset``). Returns ``({user: texts}, JobStats)``."""
        from llmrecall.interest.jobs import InterestJob

        job = InterestJob(dataset, _loaded(generator), settings, store, examples)
        return job.run(users, refresh_min_changed=refresh_min_changed)

    def generate_knowledge(self, dataset: Any, generator: Any, items: Any, settings: Any,
                           store: Any) -> tuple[list[str], Any]:
        """Item knowledge for ``items`` (dense ids; None: all):
        :func:`llmrecall.interest.knowledge.generate_knowledge` writing to ``store``;
        ``generator`` as for :meth:`generate_interests`. Returns one string per catalog
        item and the ``KnowledgeStats``."""
        from llmrecall.interest.knowledge import generate_knowledge

        return generate_knowledge(dataset, _loaded(generator), items, settings, store)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind}

    def close(self) -> None:
        """Release what the engine holds (a cluster connection)."""


def is_loaded(generator: Any) -> bool:
    """Whether ``generator`` is a loaded generator (anything with ``chat``), not a factory."""
    return hasattr(generator, "chat")


def _loaded(generator: Any) -> Any:
    """A generator: ``generator`` itself when loaded, else what the factory builds."""
    return generator if is_loaded(generator) else generator()


_current: Engine = Engine()


def current_engine() -> Engine:
    """The engine the offline jobs use now (the local one unless :func:`use_engine` says)."""
    return _current


@contextmanager
def use_engine(engine: Engine) -> Iterator[Engine]:
    """Run the block with ``engine`` as :func:`current_engine`; the previous one after."""
    global _current
    previous, _current = _current, engine
    try:
        yield engine
    finally:
        _current = previous
