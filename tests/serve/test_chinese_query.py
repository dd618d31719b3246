"""The service's query recall (BM25 over item texts) on Chinese items.

Regression: a Chinese query or title without spaces was one BM25 word, so the query 蓝牙耳机
recalled nothing although 无线蓝牙耳机降噪入耳式... was in the catalog.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from llmrecall.serve.live import item_text
from llmrecall.serve.sources import LexicalIndex

from .conftest import WRITE

ZH_CATALOG = Path(__file__).resolve().parents[1] / "fixtures" / "zh_catalog.tsv"


def zh_items() -> list[dict]:
    with open(ZH_CATALOG, encoding="utf-8") as f:
        return [{"item_id": r["item_id"], "title": r["title"], "text": "",
                 "categories": r["categories"].split("|")}
                for r in csv.DictReader(f, delimiter="\t")]


def test_lexical_index_recalls_chinese_queries_with_masking():
    items = zh_items()
    index = LexicalIndex([item_text(i["title"], i["text"], i["categories"]) for i in items])
    # row 1 has seen zh-08 (the phone case)
    seen = sp.csr_matrix(([1.0], ([1], [7])), shape=(3, len(items)), dtype=np.float32)
    out = index.recall(["蓝牙耳机", "iPhone手机壳", None], seen, 3, None)
    assert out.ids[0, 0] == 0 and out.ids[1, 0] == 3  # zh-01; zh-04 once zh-08 is seen
    assert 7 not in out.ids[1] and (out.ids[2] == -1).all()
    assert out.evidence_text[out.evidence[0, 0]] == repr("蓝牙耳机")


def test_server_answers_chinese_queries(make_server, artifact):
    server = make_server(artifact)
    r = server.client.put("/v1/items", json={"items": zh_items()}, headers=WRITE)
    assert r.status_code == 200 and r.json()["added"] == 30
    for query, expected in [("蓝牙耳机", "zh-01"), ("华为手机", "zh-06"),
                            ("扫地机器人", "zh-21"), ("iPhone手机壳", "zh-08")]:
        answer = server.client.post("/v1/recall", json={"query": query, "k": 5}).json()
        assert answer["candidates"][0]["item_id"] == expected, (query, answer)
        assert answer["candidates"][0]["channels"] == ["query_lexical"]
