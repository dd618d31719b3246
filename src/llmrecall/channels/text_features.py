"""Item text embeddings for the language-model channels, computed once per catalog and cached.

:func:`item_text_vectors` is the one entry point the channels use: it turns a dataset's
catalog into ``float32[n_items, d]`` L2-normalised vectors with a named embedder from
:mod:`llmrecall.lm` (``get_embedder``), looked up in and written to the persistent LM cache
(SQLite) so a catalog is embedded once, not once per channel or per run. The model runs
where the current engine says (:meth:`llmrecall.engine.Engine.embedder`: in this process,
or on the Ray engine's actor pool); the cache is this process's either way.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import numpy as np

from llmrecall.data.dataset import Dataset, Histories
from llmrecall.engine.local import Engine, current_engine
from llmrecall.errors import DataError
from llmrecall.topk import topk

#: the embedder the text channels use unless configured otherwise: the language-model
#: layer's default (multilingual-e5-small), chosen by measurement in docs/lm.md and able to
#: read Chinese as well as English catalogs
DEFAULT_EMBEDDER = "default"


#: the LM cache of the text channels, a SQLite file or a ``postgresql://`` URI; it wins
#: over ``LLMRECALL_CACHE``
LM_CACHE_ENV = "LLMRECALL_LM_CACHE"


def lm_cache_target() -> str:
    """Where the text channels' LM cache lives: ``$LLMRECALL_LM_CACHE`` (a SQLite file, or a
    ``postgresql://`` URI: one cache for every machine of a cluster and every service
    replica, :mod:`llmrecall.lm.pgcache`), else ``$LLMRECALL_CACHE/lm.sqlite``, else the LM
    layer's default file."""
    target = os.environ.get(LM_CACHE_ENV, "").strip()
    if target:
        return target
    env = os.environ.get("LLMRECALL_CACHE")
    if env:
        return str(Path(env) / "lm.sqlite")
    from llmrecall.lm.config import CacheConfig

    return str(CacheConfig().path)


def item_texts(dataset: Dataset) -> list[str]:
    """One text per dense item id (``Catalog.texts``); an empty text becomes ``"item <raw id>"``
    so that every item, even one without metadata, gets a distinct vector."""
    texts = dataset.catalog.texts()
    raw = dataset.items.ids
    return [t if t.strip() else f"item {raw[i]}" for i, t in enumerate(texts)]


def item_text_vectors(dataset: Dataset, embedder: str = DEFAULT_EMBEDDER) -> np.ndarray:
    """float32[n_items, d] L2-normalised text vectors of every catalog item, cached on disk."""
    return text_vectors(item_texts(dataset), embedder)


def text_vectors(texts: list[str], embedder: str = DEFAULT_EMBEDDER,
                 kind: str = "passage") -> np.ndarray:
    """float32[len(texts), d] L2-normalised vectors through the persistent LM cache."""
    return np.ascontiguousarray(_cached_embedder(embedder, lm_cache_target(),
                                                 current_engine()).embed(
        list(texts), kind=kind), dtype=np.float32)


@lru_cache(maxsize=8)
def _cached_embedder(embedder: str, cache_target: str, engine: Engine):
    # the engine runs the model (here, or on its actor pool); the cache is read and written
    # here either way, so both engines fill and find the same entries
    from llmrecall.lm import CachedEmbedder
    from llmrecall.lm.stores import open_cache

    return CachedEmbedder(engine.embedder(embedder), open_cache(cache_target), progress=None)


# ---- what every text channel does for users and items it cannot place -------------------
def popularity(dataset: Dataset) -> np.ndarray:
    """float32[n_items] training interaction counts: the ranking a text channel falls back
    to for a user with no history."""
    return np.bincount(dataset.interactions.item, minlength=dataset.n_items).astype(np.float32)


def popular_rows(popularity: np.ndarray, n: int, k: int,
                 allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """``n`` identical rows of the top-``k`` allowed items by popularity: ids int32[n, k],
    scores float32[n, k] (padded -1 / -inf)."""
    row = popularity.astype(np.float32).copy()
    if allowed is not None:
        # items past the end of the mask were added after it was made: not allowed (as in
        # VectorIndex.search), so a channel that grew during a request stays inside the mask
        mask = np.zeros(len(row), bool)
        given = np.asarray(allowed, bool)[:len(row)]
        mask[:len(given)] = given
        row[~mask] = -np.inf
    ids, vals = topk(row[None, :], k)
    return np.repeat(ids, n, axis=0), np.repeat(vals, n, axis=0)


def check_width(history: Histories, n_fitted_items: int, channel: str) -> int:
    """Score columns for ``history``: its item vocabulary, which may have grown since fit
    (items added later are unknown to the channel and get -inf) but may not have shrunk."""
    if history.n_items < n_fitted_items:
        raise DataError(f"channel {channel!r} was fitted on {n_fitted_items} items but the "
                        f"history knows only {history.n_items}: use the same item vocabulary")
    return history.n_items


# ---- items added while serving (the service's ``add_items`` hook) -------------------------
def check_added(ids: np.ndarray, texts: list[str], channel: str) -> np.ndarray:
    """Validate an ``add_items(ids, texts)`` call; returns the ids as int64[n].

    Ids are dense item ids (>= 0, distinct); ``texts`` holds one text per id in the format
    of ``Catalog.texts`` (the service builds them with ``serve.live.item_text``)."""
    ids = np.asarray(ids).ravel()
    if ids.dtype.kind not in "iu":
        raise DataError(f"{channel}.add_items: ids must be integers, got dtype {ids.dtype}")
    ids = ids.astype(np.int64)
    if len(ids) != len(texts):
        raise DataError(f"{channel}.add_items: {len(ids)} ids for {len(texts)} texts")
    if len(ids) and ids.min() < 0:
        raise DataError(f"{channel}.add_items: ids must be >= 0, got {int(ids.min())}")
    if len(np.unique(ids)) != len(ids):
        raise DataError(f"{channel}.add_items: ids repeat within one call")
    return ids


def added_texts(ids: np.ndarray, texts: list[str]) -> list[str]:
    """The texts to embed for added items: as :func:`item_texts`, an empty text becomes a
    distinct placeholder (here ``"item <dense id>"``: the raw id is not known to a channel)."""
    return [t if t and t.strip() else f"item {i}" for i, t in zip(ids.tolist(), texts)]


def grown(array: np.ndarray, ids: np.ndarray, rows: np.ndarray | float) -> np.ndarray:
    """A copy of ``array`` (shape [n, ...]) extended with zero rows to cover every id, with
    ``rows`` written at ``ids``. A copy, never in place: readers holding the old array (a
    recall running meanwhile) keep a consistent one."""
    n = max(len(array), int(ids.max()) + 1 if len(ids) else 0)
    out = np.zeros((n,) + array.shape[1:], array.dtype)
    out[:len(array)] = array
    out[ids] = rows
    return out


def unit_rows(x: np.ndarray) -> np.ndarray:
    """float32 copy of ``x`` (shape [..., d]) with every vector along the last axis scaled to
    length 1; an all-zero vector stays zero (its norm is floored at 1e-12)."""
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(norm, 1e-12)).astype(np.float32)
