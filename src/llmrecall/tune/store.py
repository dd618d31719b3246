"""Fitted channels and their validation lists, shared by every trial of a tuning run.

A channel's output depends only on its kind, its parameters, the seed and how many candidates
are asked, so that tuple is the cache key. A trial that changes only fusion parameters finds
every list here and costs one fusion plus the metrics.

Lists are kept per chunk of validation users (the chunks of the pruning stages, see
:mod:`llmrecall.tune.objective`): a trial pruned after the first stage never recalls the rest.
Only candidate ids are kept: reciprocal-rank fusion reads ranks, never scores.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from llmrecall.channels.base import Channel
from llmrecall.config import ChannelConfig
from llmrecall.data.dataset import Dataset
from llmrecall.engine import current_engine
from llmrecall.errors import ConfigError
from llmrecall.evaluate.protocols import EvalTask
from llmrecall.pipeline import build_channel
from llmrecall.tune.space import constructor_defaults

#: default bound on cached candidate ids (bytes); least recently used lists go first
DEFAULT_LIST_BYTES = 1 << 30
#: default number of fitted channels kept (EASE on ML-1M alone holds a 55 MB matrix); above
#: the channel count of the packaged configs, so a whole pipeline stays fitted
DEFAULT_MODELS = 16


def channel_key(config: ChannelConfig, seed: int, k: int | None = None) -> str:
    """Canonical identity of a channel's output: kind, parameters, seed and list length
    (``k=None``: the fitted channel itself, whatever it is asked for).

    Parameters are merged over the constructor defaults, so an explicit default and an
    omitted one give the same key.
    """
    params = {**constructor_defaults(config.kind), **config.params}
    params.pop("name", None)
    if "seed" in params and "seed" not in config.params:
        params["seed"] = seed  # build_channel fills an unset seed with the pipeline's
    key = {"kind": config.kind, "params": params, "seed": seed}
    if k is not None:
        key["k"] = k
    return json.dumps(key, sort_keys=True, default=str)


class FittedChannels:
    """Channels fitted on one training set, by identity (:func:`channel_key` without ``k``),
    least recently used dropped beyond ``max_models``.

    Shared by the tuner's trials and the test comparison after it: a channel whose
    parameters tuning did not change is fitted once for the whole run, not three times.
    """

    def __init__(self, train: Dataset, max_models: int = DEFAULT_MODELS):
        self.train = train
        self.max_models = max_models
        self._models: OrderedDict[str, Channel] = OrderedDict()
        self.fits = 0
        self.fit_seconds = 0.0

    def get(self, config: ChannelConfig, seed: int) -> Channel:
        """The channel of ``config`` fitted on :attr:`train` (fitted now if not held)."""
        key = channel_key(config, seed)
        channel = self._models.get(key)
        if channel is not None:
            self._models.move_to_end(key)
            return channel
        start = time.perf_counter()
        channel = build_channel(config, seed)
        current_engine().fit_channel(channel, self.train)
        self.fits += 1
        self.fit_seconds += time.perf_counter() - start
        self._models[key] = channel
        while len(self._models) > self.max_models:
            self._models.popitem(last=False)
        return channel


@dataclass
class StoreStats:
    fits: int = 0
    fit_seconds: float = 0.0
    recalls: int = 0
    list_hits: int = 0


class ChannelStore:
    """Cache of fitted channels and their candidate ids for chunks of validation users.

    Args:
        train: the dataset channels are fitted on.
        chunks: one :class:`EvalTask` per chunk of validation users; chunk ``c`` is recalled
            on its own, with the task's masking (:func:`llmrecall.evaluate.runner.rank_task`),
            exactly as the evaluation runner does it.
        max_list_bytes / max_models: LRU bounds.
        models: fitted channels to share with other users of the same ``train`` (a new
            :class:`FittedChannels` if None).
    """

    def __init__(self, train: Dataset, chunks: list[EvalTask], *,
                 max_list_bytes: int = DEFAULT_LIST_BYTES, max_models: int = DEFAULT_MODELS,
                 models: FittedChannels | None = None):
        if models is not None and models.train is not train:
            raise ConfigError("ChannelStore: the shared fitted channels were fitted on "
                             "another training set")
        self.train = train
        self.chunks = chunks
        self.max_list_bytes = max_list_bytes
        self.models = models or FittedChannels(train, max_models)
        self._lists: OrderedDict[tuple[str, int], np.ndarray] = OrderedDict()
        self._list_bytes = 0
        self.stats = StoreStats()

    def candidates(self, config: ChannelConfig, seed: int, k: int, chunk: int) -> np.ndarray:
        """The channel's top-``k`` ids int32[len(chunk), k] for chunk ``chunk``, -1 padded."""
        key = channel_key(config, seed, k)
        ids = self._lists.get((key, chunk))
        if ids is not None:
            self._lists.move_to_end((key, chunk))
            self.stats.list_hits += 1
        else:
            fits, seconds = self.models.fits, self.models.fit_seconds
            channel = self.models.get(config, seed)
            self.stats.fits += self.models.fits - fits
            self.stats.fit_seconds += self.models.fit_seconds - seconds
            ids = current_engine().rank_task(channel, self.chunks[chunk], k)
            self.stats.recalls += 1
            self._remember(key, chunk, ids)
        return ids

    def _remember(self, key: str, chunk: int, ids: np.ndarray) -> None:
        self._lists[(key, chunk)] = ids
        self._list_bytes += ids.nbytes
        while self._list_bytes > self.max_list_bytes and len(self._lists) > 1:
            _, old = self._lists.popitem(last=False)
            self._list_bytes -= old.nbytes
