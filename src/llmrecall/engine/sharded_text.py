"""The channels fitted from the catalog alone (``semantic_i2i``, ``semantic_user``,
``llm_knowledge``) on the sharded log.

Their fit reads no event. The text-embedding channels embed the catalog's item texts
(through the LM cache and the engine's embedder: on the Ray engine the actor pool) and
index the vectors; the only thing they take from the log is each item's training count,
the ranking a user with no history falls back to, which the shards' statistics pass has
already summed. ``llm_knowledge`` generates each item's knowledge (on the engine's
generator: on the Ray engine its actor pool, into the channel's store) and builds its
item-to-item table from the enriched texts: its fit is the driver path's on a dataset of
the vocabulary and catalog with no event (:func:`~llmrecall.engine.shard_split.catalog_only`).
Recall then runs in the shards' tasks like every other channel's: the fitted channel (its
vectors, index, neighbour table) travels to each task pickled.

Same answers as the driver path: the same texts give the same vectors and the same
generated knowledge (the same cache entries, keyed by the item's title and categories),
and the counts are the same integers.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: channel kinds fitted from the catalog and the per-item counts alone
TEXT_KINDS = ("semantic_i2i", "semantic_user", "llm_knowledge")


def check_text(name: str, params: dict[str, Any]) -> list[str]:
    """What the sharded path cannot do with the text channel ``name`` configured with
    ``params``, as phrases (none: it can)."""
    if params.get("index_kind") == "milvus":
        return [f"channel {name!r}: index_kind 'milvus' (the shards' recall tasks search a "
                "copy of the channel's index; a Milvus collection is not copied)"]
    return []


def fit_text(channel, items: list[str], counts: np.ndarray, catalog: Any, engine) -> None:
    """Fit the unfitted ``channel`` (a :data:`TEXT_KINDS` kind) on the items' texts,
    embedded (and for ``llm_knowledge`` generated) by ``engine`` (on the Ray engine its
    actor pools).

    Args:
        items: the item vocabulary (the loader's numbering), n_items raw ids.
        counts: float64[n_items] each item's training events, summed over the shards.
        catalog: the items' :class:`~llmrecall.data.dataset.Catalog`.
    """
    from llmrecall.channels.text_features import item_text_vectors
    from llmrecall.engine.local import use_engine
    from llmrecall.engine.shard_split import catalog_only

    if np.shape(counts) != (len(items),):
        raise ValueError(f"counts must have shape [{len(items)}], got {list(np.shape(counts))}")
    with use_engine(engine):
        if channel.kind == "llm_knowledge":  # reads the catalog only, and no count
            channel.fit(catalog_only(items, catalog))
            return
        vectors = item_text_vectors(catalog_only(items, catalog), channel.embedder)
    # the driver path's fallback ranking is the float32 bincount of the training items:
    # the same integers
    channel.fit_vectors(vectors, counts.astype(np.float32))
