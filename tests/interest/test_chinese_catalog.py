"""Text channels on a Chinese e-commerce catalog (BM25 only, no model): Chinese queries and
interest texts written without spaces reach the items whose titles contain their words.

Regression: BM25 read a Chinese title or query as one word, so search_query and llm_interest
found nothing for 蓝牙耳机 although 无线蓝牙耳机降噪入耳式... is in the catalog.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from llmrecall.channels.interest import InterestChannel
from llmrecall.channels.search import SearchQueryChannel
from llmrecall.data.dataset import Catalog, Dataset, Interactions, SearchLog
from llmrecall.data.vocab import Vocabulary

ZH_CATALOG = Path(__file__).resolve().parents[1] / "fixtures" / "zh_catalog.tsv"


@pytest.fixture(scope="module")
def zh() -> Dataset:
    """30 Chinese items; users 0-2 bought one unrelated item each and searched in Chinese."""
    with open(ZH_CATALOG, encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    items = Vocabulary(r["item_id"] for r in rows)
    catalog = Catalog(pl.DataFrame(
        {"title": [r["title"] for r in rows],
         "category": [r["categories"].split("|") for r in rows]},
        schema={"title": pl.Utf8, "category": pl.List(pl.Utf8)}))
    bought = items.lookup(["zh-23", "zh-22", "zh-17"])
    log = Interactions.build([0, 1, 2], bought, [0.0, 0.0, 0.0])
    searches = SearchLog(np.array([0, 1, 2, 2], np.int32),
                         ["蓝牙耳机", "iPhone手机壳", "保温杯", "扫地机器人"],
                         np.array([1.0, 1.0, 1.0, 2.0]))
    return Dataset("zh", Vocabulary(["u0", "u1", "u2"]), items, log, catalog, searches)


def first_items(dataset: Dataset, out, n: int = 1) -> list[list[str]]:
    return [list(dataset.items.raw(row[:n])) for row in out.ids]


def test_search_query_channel_finds_chinese_words_inside_titles(zh):
    channel = SearchQueryChannel(embedder=None).fit(zh)
    out = channel.recall(np.array([0, 1, 2]), 5, zh.histories())
    assert first_items(zh, out) == [["zh-01"], ["zh-08"], ["zh-21"]]
    # user 2's newest query comes first; 保温杯 (zh-17) was bought, so it is not recalled
    assert out.evidence_text[out.evidence[2, 0]] == "扫地机器人"
    assert "zh-17" not in list(zh.items.raw(out.ids[2][out.ids[2] >= 0]))


def test_interest_channel_matches_chinese_interest_text(zh):
    channel = InterestChannel(embedder=None).set_texts(
        zh, {0: ["适合跑步的蓝牙耳机"], 1: ["男士跑步鞋", "笔记本电脑"]})
    out = channel.recall(np.array([0, 1]), 4, zh.histories())
    assert first_items(zh, out)[0] == ["zh-01"]
    # each of user 1's texts brings its item first; equal RRF scores, lower id first
    assert first_items(zh, out, 2)[1] == ["zh-10", "zh-15"]
