"""Hybrid dense + BM25 matching of free texts to items, and merging per user.

Every text channel of this package works the same way: a user owns a few texts (generated
next items, a profile, search queries, enriched history items); each text is matched against
the catalog by dense similarity and by BM25, the two rankings are fused by reciprocal rank
(RRF) into one list per text, and a user's lists are merged into one — by RRF (items many
texts agree on rise) or round-robin (each text gets its turn: more diverse).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from llmrecall.data.dataset import Histories
from llmrecall.errors import ConfigError
from llmrecall.lexical import BM25Index
from llmrecall.scoring import dot_rows
from llmrecall.topk import topk

Merge = Literal["rrf", "round_robin"]
#: queries scored per dense block; bounds memory at block * n_items * 4 bytes
QUERY_BLOCK = 1024


def resolve_embedder(spec: Any):
    """An embedder object (anything with ``embed(texts, kind=...)``) or a backend name for
    :func:`llmrecall.lm.get_embedder`, run by the current engine
    (:meth:`llmrecall.engine.Engine.embedder`: in this process, or on the Ray engine's
    actor pool); None disables dense matching."""
    if spec is None or hasattr(spec, "embed"):
        return spec
    from llmrecall.engine.local import current_engine

    return current_engine().embedder(str(spec))


def cached_embedder(spec: Any, cache_path: str | None):
    """:func:`resolve_embedder`, wrapped in :class:`llmrecall.lm.CachedEmbedder` when a cache
    file is given (item vectors are then computed once per catalog text)."""
    embedder = resolve_embedder(spec)
    if embedder is None or cache_path is None:
        return embedder
    from llmrecall.lm import CachedEmbedder
    from llmrecall.lm.stores import open_cache

    return CachedEmbedder(embedder, open_cache(cache_path), progress=None)


def rrf_lists(lists: Sequence[tuple[np.ndarray, float]], k: int, rrf_k: float
              ) -> tuple[np.ndarray, np.ndarray]:
    """Fuse row-aligned ranked lists by weighted reciprocal rank.

    Args:
        lists: (ids int32[n, m_j], weight) pairs; -1 entries are padding.
        k: length of the fused lists.
    Returns:
        ``ids int32[n, k]`` and ``scores float32[n, k]`` (sum of weight / (rrf_k + rank)),
        padded with -1 / -inf. Deterministic: ties go to the lower item id.
    """
    n = lists[0][0].shape[0]
    rows, items, vals = [], [], []
    for ids, weight in lists:
        if weight <= 0:
            continue
        r, c = np.nonzero(ids >= 0)
        rows.append(r)
        items.append(ids[r, c])
        vals.append(weight / (rrf_k + c + 1.0))
    if not rows:
        return np.full((n, k), -1, np.int32), np.full((n, k), -np.inf, np.float32)
    return _group_topk(np.concatenate(rows), np.concatenate(items),
                       np.concatenate(vals).astype(np.float64), n, k)[:2]


def _group_topk(rows: np.ndarray, items: np.ndarray, vals: np.ndarray, n: int, k: int,
                reduce: str = "sum", tag: np.ndarray | None = None):
    """Aggregate (row, item) -> value (sum or max), then top-k per row.

    ``tag`` (int[e]) is carried along: for each (row, item) the tag of its largest single
    value (ties: first occurrence). Returns ids int32[n,k], scores float32[n,k], tags int32[n,k].
    """
    ids = np.full((n, k), -1, np.int32)
    scores = np.full((n, k), -np.inf, np.float32)
    tags = np.full((n, k), -1, np.int32)
    if len(rows) == 0 or k == 0:
        return ids, scores, tags
    key = rows.astype(np.int64) * (int(items.max()) + 1) + items
    # order by key, then by value descending so the first entry of a key is its best one
    order = np.lexsort((-vals, key))
    key_s, vals_s = key[order], vals[order]
    first = np.ones(len(key_s), bool)
    first[1:] = key_s[1:] != key_s[:-1]
    starts = np.flatnonzero(first)
    if reduce == "sum":
        agg = np.add.reduceat(vals_s, starts)
    else:
        agg = vals_s[starts]
    g_rows = rows[order][starts]
    g_items = items[order][starts]
    g_tags = (tag[order][starts] if tag is not None else np.full(len(starts), -1))
    # per row: best value first, ties to the lower item id
    order2 = np.lexsort((g_items, -agg, g_rows))
    g_rows, g_items, agg, g_tags = g_rows[order2], g_items[order2], agg[order2], g_tags[order2]
    row_start = np.searchsorted(g_rows, np.arange(n))
    pos = np.arange(len(g_rows)) - row_start[g_rows]
    keep = pos < k
    ids[g_rows[keep], pos[keep]] = g_items[keep]
    scores[g_rows[keep], pos[keep]] = agg[keep]
    tags[g_rows[keep], pos[keep]] = g_tags[keep]
    return ids, scores, tags


class HybridMatcher:
    """Matches free texts to items by dense similarity and BM25, fused by RRF.

    Args:
        item_texts: one text per dense item id.
        embedder: embedder object or name (see :func:`resolve_embedder`); None: BM25 only.
        dense_weight, lexical_weight: RRF weights of the two rankings (0 disables one).
        per_text_k: items kept per text and per ranking.
        rrf_k: RRF constant.
        tokenizer: BM25's tokenizer (:func:`llmrecall.lexical.tokenize`); None: the process
            default (``$LLMRECALL_TOKENIZER``, else "auto": Chinese segmented by jieba).
    Attributes:
        item_vectors: float32[n_items, dim] unit rows (None without an embedder).
    """

    def __init__(self, item_texts: Sequence[str], embedder: Any = "default", *,
                 dense_weight: float = 1.0, lexical_weight: float = 1.0, per_text_k: int = 100,
                 rrf_k: float = 60.0, tokenizer: str | None = None):
        if dense_weight < 0 or lexical_weight < 0 or dense_weight + lexical_weight <= 0:
            raise ConfigError("dense_weight and lexical_weight must be >= 0, not both 0")
        if per_text_k < 1:
            raise ConfigError(f"per_text_k must be >= 1, got {per_text_k}")
        self.n_items = len(item_texts)
        self.dense_weight, self.lexical_weight = dense_weight, lexical_weight
        self.per_text_k, self.rrf_k = per_text_k, rrf_k
        # no embedder (None) means lexical matching only
        self.embedder = resolve_embedder(embedder) if dense_weight > 0 else None
        if self.embedder is None:
            self.dense_weight = 0.0
            if lexical_weight <= 0:
                raise ConfigError("without an embedder, lexical_weight must be > 0")
        self.item_vectors = (None if self.embedder is None else
                             np.asarray(self.embedder.embed(list(item_texts), kind="passage"),
                                        np.float32))
        self.bm25 = (BM25Index(item_texts, tokenizer=tokenizer) if lexical_weight > 0
                     else None)

    def dense(self, texts: Sequence[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k items per text by cosine similarity: ids int32[T, k], scores float32[T, k]."""
        assert self.item_vectors is not None and self.embedder is not None
        q = np.asarray(self.embedder.embed(list(texts), kind="query"), np.float32)
        ids, vals = [], []
        for start in range(0, len(q), QUERY_BLOCK):
            # row by row: a text's matches must not depend on the others asked with it
            sims = dot_rows(q[start:start + QUERY_BLOCK], self.item_vectors)
            i, v = topk(sims, k)
            ids.append(i)
            vals.append(v)
        return np.concatenate(ids), np.concatenate(vals)

    def match(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Hybrid top ``per_text_k`` items per text: ids int32[T, m], scores float32[T, m]."""
        k = self.per_text_k
        if len(texts) == 0:
            return np.zeros((0, k), np.int32), np.zeros((0, k), np.float32)
        lists = []
        if self.embedder is not None:
            lists.append((self.dense(texts, k)[0], self.dense_weight))
        if self.bm25 is not None:
            lists.append((self.bm25.search(texts, k)[0], self.lexical_weight))
        return rrf_lists(lists, k, self.rrf_k)


def merge_user_texts(owner_rows: np.ndarray, text_rank: np.ndarray, text_index: np.ndarray,
                     match_ids: np.ndarray, n_rows: int, k: int, *, method: Merge = "rrf",
                     rrf_k: float = 60.0, users: np.ndarray | None = None,
                     history: Histories | None = None, exclude_seen: bool = True,
                     allowed: np.ndarray | None = None,
                     text_weight: np.ndarray | None = None):
    """Merge each user's per-text item lists into one list.

    Args:
        owner_rows: int[T] row (0..n_rows-1) of the user owning each text.
        text_rank: int[T] position of the text among its owner's texts (0 = first).
        text_index: int[T] evidence index reported for each text.
        match_ids: int32[T, m] per-text ranked items (-1 padded).
        method: "rrf" (sum of 1/(rrf_k + rank)) or "round_robin" (rank-major interleaving:
            every text's first item, then every text's second, ...).
        users, history, exclude_seen: drop items in ``history`` of ``users[row]``.
        allowed: bool[n_items]; False items are dropped.
        text_weight: float[T] multiplier per text (RRF only), default 1.
    Returns:
        ids int32[n_rows, k], scores float32[n_rows, k], evidence int32[n_rows, k] (the text
        that ranked the item highest), padded with -1 / -inf / -1.
    """
    if method not in ("rrf", "round_robin"):
        raise ConfigError(f"merge must be 'rrf' or 'round_robin', got {method!r}")
    t_idx, col = np.nonzero(match_ids >= 0)
    rows = np.asarray(owner_rows)[t_idx]
    items = match_ids[t_idx, col].astype(np.int64)
    keep = np.ones(len(items), bool)
    if allowed is not None:
        inside = items < len(allowed)
        keep &= ~inside | allowed[np.minimum(items, len(allowed) - 1)]
    if exclude_seen and history is not None and users is not None and len(items):
        seen = history.matrix(np.asarray(users)).tocsr()
        width = seen.shape[1]
        inside = items < width
        probe = np.zeros(len(items), bool)
        probe[inside] = np.asarray(seen[rows[inside], items[inside]]).ravel() > 0
        keep &= ~probe
    rows, items, t_idx, col = rows[keep], items[keep], t_idx[keep], col[keep]
    if method == "rrf":
        weight = 1.0 if text_weight is None else np.asarray(text_weight, np.float64)[t_idx]
        vals = weight / (rrf_k + col + 1.0)
        reduce = "sum"
    else:
        # interleave: rank first, then the owner's text order; encoded as one decreasing value
        n_texts = int(np.asarray(text_rank).max()) + 1 if len(text_rank) else 1
        vals = 1.0 / (1.0 + col + np.asarray(text_rank)[t_idx] / (n_texts + 1.0))
        reduce = "max"
    return _group_topk(rows, items.astype(np.int32), vals.astype(np.float64), n_rows, k,
                       reduce=reduce, tag=np.asarray(text_index)[t_idx])
