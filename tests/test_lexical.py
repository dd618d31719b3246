"""BM25 tokenization (llmrecall.lexical.tokenize): Chinese is segmented, English is unchanged.

Regression: bm25s' tokenizer splits on word characters only, so a Chinese title or query
without spaces was one word and 蓝牙耳机 matched nothing in 无线蓝牙耳机降噪入耳式...
"""

from __future__ import annotations

import csv
import logging
import sys
from pathlib import Path

import bm25s
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmrecall import lexical
from llmrecall.errors import ConfigError
from llmrecall.lexical import BM25Index, resolve_tokenizer, tokenize

ZH_CATALOG = Path(__file__).resolve().parent / "fixtures" / "zh_catalog.tsv"
SEGMENTING = ["auto", "jieba", "bigram"]


def zh_catalog() -> tuple[list[str], list[str]]:
    """(item ids, titles) of the Chinese e-commerce fixture catalog (30 items)."""
    with open(ZH_CATALOG, encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    return [r["item_id"] for r in rows], [r["title"] for r in rows]


def old_bm25(texts: list[str]):
    """BM25 exactly as lexical.py built it before the tokenizer setting (bm25s' tokenizer)."""
    tokens = bm25s.tokenize(texts, stopwords="en", show_progress=False)
    retriever = bm25s.BM25()
    retriever.index(tokens, show_progress=False)
    return retriever, tokens.vocab


@pytest.fixture(scope="module")
def ml100k_texts() -> list[str]:
    from llmrecall.data.builtin import load_builtin

    return load_builtin("ml-100k").catalog.texts()


@pytest.mark.parametrize("tokenizer", SEGMENTING)
@pytest.mark.parametrize("query, expected", [
    ("蓝牙耳机", "zh-01"),       # a word inside 无线蓝牙耳机降噪入耳式..., written without spaces
    ("连衣裙", "zh-13"),
    ("扫地机器人", "zh-21"),
    ("笔记本电脑", "zh-10"),
    ("iPhone手机壳", "zh-08"),   # Latin and Han without a space between
    ("华为手机", "zh-06"),       # the Latin name HUAWEI is in the title, 华为 too
    ("dyson吸尘器", "zh-20"),
    ("ＬＥＧＯ积木", "zh-27"),    # full-width Latin letters read as ASCII
    ("logitech mouse", "zh-11"),
])
def test_chinese_and_mixed_queries_find_their_item_first(tokenizer, query, expected):
    ids, titles = zh_catalog()
    index = BM25Index(titles, tokenizer=tokenizer)
    found, scores = index.search([query], 3)
    assert ids[found[0, 0]] == expected
    assert scores[0, 0] > scores[0, 1]  # first by a margin, not by a tie
    assert index.scores(query).argmax() == found[0, 0]


def test_plain_tokenizer_keeps_whole_chinese_phrases():
    # the old behaviour, still available as "plain": a Han run is one word
    _, titles = zh_catalog()
    assert tokenize(["苹果手机 无线蓝牙耳机 降噪"], "plain") == [["苹果手机", "无线蓝牙耳机", "降噪"]]
    ids, _ = BM25Index(titles, tokenizer="plain").search(["蓝牙耳机", "iPhone手机壳"], 3)
    assert (ids == -1).all()


def test_han_runs_are_segmented_and_latin_words_kept():
    assert tokenize(["苹果手机 无线蓝牙耳机 降噪"], "jieba") == [
        ["苹果", "手机", "无线", "蓝牙", "耳机", "降噪"]]
    # search mode adds the dictionary words inside a word
    assert tokenize(["连衣裙"], "jieba") == [["连衣", "衣裙", "连衣裙"]]
    assert tokenize(["蓝牙耳机"], "bigram") == [["蓝牙", "牙耳", "耳机"]]
    assert tokenize(["鞋"], "bigram") == [["鞋"]]
    # Latin words as bm25s reads them (lower case, English stopwords), Han runs segmented
    assert tokenize(["The Apple iPhone15手机"], "jieba") == [["apple", "iphone15", "手机"]]
    # Chinese function words go with the stopwords, and stay when stopwords are off
    assert tokenize(["红色的连衣裙"], "bigram") == [["红色", "色的", "的连", "连衣", "衣裙"]]
    assert tokenize(["红色 的 裙"], "jieba") == [["红色", "裙"]]
    assert tokenize(["红色 的 裙"], "jieba", stopwords=None) == [["红色", "的", "裙"]]


def test_tokenizer_setting(monkeypatch):
    monkeypatch.delenv(lexical.TOKENIZER_ENV, raising=False)
    assert resolve_tokenizer() == resolve_tokenizer("auto") == "jieba"
    monkeypatch.setenv(lexical.TOKENIZER_ENV, "bigram")
    assert resolve_tokenizer() == "bigram" and BM25Index(["a b"]).tokenizer == "bigram"
    assert BM25Index(["a b"], tokenizer="plain").tokenizer == "plain"
    monkeypatch.setenv(lexical.TOKENIZER_ENV, "spaces")
    with pytest.raises(ConfigError, match="tokenizer"):
        BM25Index(["a b"])
    with pytest.raises(ConfigError, match="stopwords"):
        tokenize(["a b"], "plain", stopwords="klingon")


def test_auto_falls_back_to_bigrams_without_jieba(monkeypatch):
    monkeypatch.delenv(lexical.TOKENIZER_ENV, raising=False)
    monkeypatch.setitem(sys.modules, "jieba", None)  # import jieba now fails
    monkeypatch.setattr(lexical, "_jieba", None)
    assert resolve_tokenizer("auto") == "bigram"
    assert tokenize(["蓝牙耳机"]) == [["蓝牙", "牙耳", "耳机"]]
    with pytest.raises(ConfigError, match="jieba"):
        tokenize(["蓝牙耳机"], "jieba")


def test_jieba_loads_quietly_and_writes_no_cache(tmp_path, monkeypatch, capsys, caplog):
    # jieba's own initialize() logs to stderr and writes jieba.cache to the temp directory
    monkeypatch.setattr(lexical, "_jieba", None)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    with caplog.at_level(logging.DEBUG):
        assert tokenize(["蓝牙耳机"], "jieba") == [["蓝牙", "耳机"]]
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""
    assert not [r for r in caplog.records if r.name.startswith("jieba")]
    assert list(tmp_path.iterdir()) == []


def test_english_catalog_never_loads_jieba(monkeypatch):
    monkeypatch.setattr(lexical, "_jieba", None)
    tokenize(["Toy Story", "GoldenEye"], "jieba")
    assert lexical._jieba is None


@pytest.mark.parametrize("tokenizer", ["auto", "jieba", "bigram", "plain"])
def test_english_tokens_equal_bm25s_on_ml100k(ml100k_texts, tokenizer):
    assert tokenize(ml100k_texts, tokenizer) == bm25s.tokenize(
        ml100k_texts, stopwords="en", return_ids=False, show_progress=False)


@pytest.mark.parametrize("tokenizer", SEGMENTING)
def test_english_bm25_results_unchanged_on_ml100k(ml100k_texts, tokenizer):
    queries = ["star wars", "toy story", "romantic comedy", "godfather crime drama",
               "the lord of the rings", "alien horror sci-fi 1979", "zzz nothing"]
    retriever, vocab = old_bm25(ml100k_texts)
    index = BM25Index(ml100k_texts, tokenizer=tokenizer)
    ids, scores = index.search(queries, 20)
    for row, query in enumerate(queries):
        words = bm25s.tokenize([query], stopwords="en", return_ids=False, show_progress=False)[0]
        known = [vocab[w] for w in words if w in vocab]
        old = (np.asarray(retriever.get_scores(known), np.float32) if known
               else np.zeros(len(ml100k_texts), np.float32))
        assert np.array_equal(index.scores(query), old)
        if known:
            old_ids, old_vals = retriever.retrieve([known], k=20, show_progress=False, n_threads=1)
            positive = old_vals[0] > 0
            assert ids[row][positive].tolist() == old_ids[0][positive].tolist()
            assert np.array_equal(scores[row][positive], old_vals[0][positive].astype(np.float32))
        else:
            assert (ids[row] == -1).all()


# text without Han characters or full-width forms (the only text every tokenizer reads as bm25s)
_NOT_HAN = st.characters(blacklist_categories=("Cs",)).filter(
    lambda c: not ("\u3400" <= c <= "\u4dbf" or "\u4e00" <= c <= "\u9fff"
                   or "\uf900" <= c <= "\ufaff" or c >= "\U00020000"
                   or "\uff01" <= c <= "\uff5e" or c == "\u3000"))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(_NOT_HAN, max_size=40), min_size=1, max_size=4))
def test_text_without_han_tokenizes_as_bm25s(texts):
    expected = bm25s.tokenize(texts, stopwords="en", return_ids=False, show_progress=False)
    for tokenizer in ("jieba", "bigram"):
        assert tokenize(texts, tokenizer) == expected


def test_index_pickled_before_the_setting_reads_as_plain():
    index = BM25Index(["Toy Story"], tokenizer="jieba")
    del index.__dict__["tokenizer"]  # an index stored before the attribute existed
    assert index.tokenizer == "plain"
    assert index.search(["toy"], 1)[0].tolist() == [[0]]
