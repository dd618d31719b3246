"""The text-embedding channels (``semantic_i2i``, ``semantic_user``) from the sharded log.

Their fit reads no event: it embeds the catalog's item texts (through the LM cache and the
engine's embedder: on the Ray engine the actor pool) and indexes the vectors; the only
thing it takes from the log is each item's training count, the ranking a user with no
history falls back to, which the shards' statistics pass has already summed. Recall then
runs in the shards' tasks like every other channel's: the fitted channel (its vectors,
index and neighbour table) travels to each task pickled.

Same answers as the driver path: the same texts give the same vectors (the same cache
entries), and the counts are the same integers.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: channel kinds fitted from the catalog and the per-item counts alone
TEXT_KINDS = ("semantic_i2i", "semantic_user")


def check_text(name: str, params: dict[str, Any]) -> list[str]:
    """What the sharded path cannot do with the text channel ``name`` configured with
    ``params``, as phrases (none: it can)."""
    if params.get("index_kind") == "milvus":
        return [f"channel {name!r}: index_kind 'milvus' (the shards' recall tasks search a "
                "copy of the channel's index; a Milvus collection is not copied)"]
    return []


def fit_text(channel, items: list[str], counts: np.ndarray, catalog: Any, engine) -> None:
    """Fit the unfitted text ``channel`` (a :data:`TEXT_KINDS` kind) on the items' texts,
    embedded by ``engine``'s embedder (on the Ray engine its actor pool).

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
        vectors = item_text_vectors(catalog_only(items, catalog), channel.embedder)
    # the driver path's fallback ranking is the float32 bincount of the training items:
    # the same integers
    channel.fit_vectors(vectors, counts.astype(np.float32))
