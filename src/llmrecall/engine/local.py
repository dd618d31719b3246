"""The in-process engine (``local``, the embedded default): the base every engine extends.

It lives in its own module so an engine (:mod:`llmrecall.engine.ray_engine`) can extend it
without importing the package that chooses between engines (no import circle).
"""

from __future__ import annotations

from collections.abc import Callable
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
        from llmrecall.evaluate.runner import rank_task

        return rank_task(channel, task, k, on_batch=on_batch)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind}

    def close(self) -> None:
        """Release what the engine holds (a cluster connection)."""
