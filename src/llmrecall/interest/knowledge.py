"""LLM item knowledge (as KAR does): keywords, themes and audience written for each item.

Generated once per item, offline, cached by content (generator, template, title, categories),
and appended to the catalog as a text field so every text channel — semantic embeddings,
BM25, the interest channel's matching — reads the enriched text.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from llmrecall.data.dataset import Catalog, Dataset
from llmrecall.errors import DataError
from llmrecall.interest.jobs import store_fingerprint
from llmrecall.lm.cache import LMCache, content_key
from llmrecall.lm.generators import Generator
from llmrecall.lm.prompts import knowledge_messages, load_template
from llmrecall.lm.stores import LMStore
from llmrecall.progress import task

#: catalog column holding the generated knowledge
KNOWLEDGE_FIELD = "keywords"
WRITE_BATCH = 10


class KnowledgeSettings(BaseModel):
    """How item knowledge is generated. Every field is part of the cache key."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    noun_one: str = Field("item", min_length=1, description="what one item is, e.g. movie")
    max_tokens: int = Field(48, ge=8, le=512)
    repeat_penalty: float = Field(1.3, ge=1.0, le=3.0)
    max_keywords: int = Field(12, ge=1, le=100, description="keywords kept per item")
    language: str = "en"


#: words kept when a model answers in prose instead of a keyword list
PROSE_WORDS = 40


def clean_keywords(text: str, title: str, max_keywords: int) -> str:
    """Distinct keywords from a model's answer, as one line.

    Drops a leading "Keywords:" label, numbering, the item's own title and repeats; keeps
    at most ``max_keywords`` terms of at most six words each. Small models often answer in
    prose instead ("Toy Story is a light-hearted tale of friendship..."): when fewer than
    two terms survive, the answer's first ``PROSE_WORDS`` words are kept as they are.
    """
    text = re.sub(r"^\s*(keywords|关键词)\s*[:：]\s*", "", text.strip(), flags=re.I)
    parts = re.split(r"[,\n;，、]+", text)
    seen, out = {title.strip().lower()}, []
    for part in parts:
        term = re.sub(r"^\s*(\d+[.)]|[-*•])\s*", "", part).strip(" .\"'")
        key = term.lower()
        if not term or key in seen or len(term.split()) > 6:
            continue
        seen.add(key)
        out.append(term)
        if len(out) >= max_keywords:
            break
    if len(out) < 2:
        return " ".join(text.split()[:PROSE_WORDS])
    return ", ".join(out)


@dataclass
class KnowledgeStats:
    items: int = 0
    generated: int = 0
    cache_hits: int = 0
    empty: int = 0
    seconds: float = 0.0
    per_item_seconds: list[float] = field(default_factory=list)
    #: what a generation pool reported (actors, tokens, seconds and tokens per 1,000
    #: items; see :func:`llmrecall.engine.ray_engine.generate_knowledge`); empty here
    cost: dict[str, Any] = field(default_factory=dict)


def generate_knowledge(dataset: Dataset, generator: Generator, items: np.ndarray | None = None,
                       settings: KnowledgeSettings | None = None,
                       store: LMStore | None = None) -> tuple[list[str], KnowledgeStats]:
    """Knowledge text for ``items`` (dense ids; all items when None).

    Returns a list with one string per catalog item (empty for items not asked for or with no
    usable answer) and :class:`KnowledgeStats`.
    """
    settings = settings or KnowledgeSettings()
    store = store or LMCache(":memory:")
    items = np.arange(dataset.n_items) if items is None else np.asarray(items)
    if len(items) and (items.min() < 0 or items.max() >= dataset.n_items):
        raise DataError(f"item ids must be in [0, {dataset.n_items}) for knowledge generation")
    titles, cats = dataset.catalog.titles, dataset.catalog.categories
    fingerprint = store_fingerprint(generator)
    out = [""] * dataset.n_items
    stats = KnowledgeStats(items=len(items))
    start = time.perf_counter()
    keys = knowledge_keys(dataset, items, settings, fingerprint)
    cached = store.get_text_lists(list(keys.values()))
    pending = []
    with task("generate knowledge", len(items), "item") as bar:
        for item in items.tolist():
            key = keys[item]
            if key in cached:
                raw = cached[key][0] if cached[key] else ""
                out[item] = clean_keywords(raw, titles[item], settings.max_keywords)
                stats.cache_hits += 1
            elif titles[item].strip():
                t0 = time.perf_counter()
                answer = generator.chat([knowledge_messages(titles[item], cats[item],
                                                            settings.noun_one, settings.language)],
                                        max_tokens=settings.max_tokens, temperature=0.0,
                                        repeat_penalty=settings.repeat_penalty)[0]
                stats.per_item_seconds.append(time.perf_counter() - t0)
                out[item] = clean_keywords(answer, titles[item], settings.max_keywords)
                stats.generated += 1
                pending.append((key, [answer]))
                if len(pending) >= WRITE_BATCH:
                    store.put_text_lists(pending, fingerprint)
                    pending = []
            stats.empty += int(not out[item])
            bar.advance()
    store.put_text_lists(pending, fingerprint)
    stats.seconds = time.perf_counter() - start
    return out, stats


def knowledge_keys(dataset: Dataset, items: np.ndarray, settings: KnowledgeSettings,
                   fingerprint: str) -> dict[int, str]:
    """``{item: store key}`` of each item's raw answer (:func:`store_fingerprint` names the
    generator). Raw answers are stored; cleaning happens on read, so it can change without
    regenerating."""
    titles, cats = dataset.catalog.titles, dataset.catalog.categories
    # the template's full text (not its hash) in the key, as these keys have always had it
    version = load_template("item_keywords", settings.language).text
    return {int(i): content_key("knowledge-raw", fingerprint, version,
                                settings.model_dump(), titles[i], cats[i]) for i in items}


def enrich_dataset(dataset: Dataset, knowledge: list[str]) -> Dataset:
    """``dataset`` whose catalog has the knowledge as text field ``keywords``.

    Every consumer of ``catalog.texts()`` (semantic channels, BM25, interest matching) then
    reads "<title>. ... keywords: <knowledge>. Categories: ...".
    """
    if len(knowledge) != dataset.n_items:
        raise DataError(f"knowledge has {len(knowledge)} entries for {dataset.n_items} items")
    frame = dataset.catalog.frame.with_columns(pl.Series(KNOWLEDGE_FIELD, knowledge, pl.Utf8))
    fields = tuple(f for f in dataset.catalog.text_fields if f != KNOWLEDGE_FIELD)
    catalog = Catalog(frame, fields + (KNOWLEDGE_FIELD,))
    return replace(dataset, catalog=catalog)
