"""BM25 over catalog text (bm25s), queried in batches, with one tokenizer for every path.

Used wherever free text must be matched to items by words: LLM-written interest text,
search queries, enriched item text, the service's query recall. Dense retrieval misses exact
names (a title, a brand); BM25 catches them, which is why the text channels are hybrid.

Chinese is written without spaces, so splitting on word characters (bm25s' tokenizer) makes a
whole Chinese title or phrase one word: 蓝牙耳机 would never match 无线蓝牙耳机降噪.
:func:`tokenize` therefore splits text into runs of Han characters and the rest: the rest is
tokenized exactly as bm25s does (lower case, runs of two or more word characters, English
stopwords), and each Han run is segmented into words (jieba, search mode) or character
bigrams. Text without Han characters gives bm25s' words, so English results do not change.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import threading
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import bm25s
import numpy as np
from bm25s.stopwords import STOPWORDS_EN

from llmrecall.errors import ConfigError

#: words never indexed in non-Han text: English (bm25s' list). Other languages keep every word.
DEFAULT_STOPWORDS = "en"

#: tokenizer names; see :func:`tokenize`
TOKENIZERS = ("auto", "jieba", "bigram", "plain")

#: environment variable that sets the tokenizer of every index built without an explicit one
TOKENIZER_ENV = "LLMRECALL_TOKENIZER"

#: Chinese function words dropped from Han text whenever stopwords are on (a short list: a
#: product title's nouns, even common ones, carry meaning; BM25's IDF handles the rest)
CHINESE_STOPWORDS = frozenset("的地得了着过和与及或而之其是在也都就很把被对从于以等"
                              "吗呢吧啊呀这那我你他她它们")

# Han ideographs: CJK unified (basic, extension A, extensions B-H) and compatibility blocks
_HAN = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f"
_HAN_RUN = re.compile(f"([{_HAN}]+)")
# bm25s' default token pattern (scikit-learn's CountVectorizer): two or more word characters
_WORD = re.compile(r"(?u)\b\w\w+\b")
# full-width ASCII (ＡＰＰＬＥ, １５) and the ideographic space, common in Chinese text, read as
# their ASCII forms; text without them is unchanged
_FOLD_WIDTH = {c: c - 0xFEE0 for c in range(0xFF01, 0xFF5F)} | {0x3000: 0x20}
# text with none of these (English, most other languages) takes bm25s' path unchanged
_HAN_OR_WIDE = re.compile(f"[{_HAN}\uff01-\uff5e\u3000]")

_jieba_lock = threading.Lock()
_jieba: Any = None


def default_tokenizer() -> str:
    """The tokenizer of an index built without one: ``$LLMRECALL_TOKENIZER``, else "auto"."""
    return os.environ.get(TOKENIZER_ENV, "").strip().lower() or "auto"


def resolve_tokenizer(name: str | None = None) -> str:
    """The concrete tokenizer ("jieba", "bigram" or "plain") that ``name`` stands for.

    None: :func:`default_tokenizer`. "auto": "jieba" when jieba is installed (it ships in the
    same extra as bm25s), else "bigram". Unknown names raise :class:`ConfigError`.
    """
    name = default_tokenizer() if name is None else name
    if name not in TOKENIZERS:
        raise ConfigError(f"tokenizer must be one of {', '.join(TOKENIZERS)}, got {name!r}")
    if name != "auto":
        return name
    if importlib.util.find_spec("jieba") is None:
        logging.getLogger(__name__).warning(
            "jieba is not installed: Chinese text is indexed by character bigrams")
        return "bigram"
    return "jieba"


def _jieba_tokenizer() -> Any:
    """jieba's segmenter with its default dictionary, loaded once per process, when the first
    Han text is tokenized (English-only catalogs never load it).

    Built without jieba's ``initialize``: that writes a cache file to the temporary directory
    (and reads one back from there) and logs four lines to stderr; measured, the cache saves
    nothing (0.47 s to build the prefix dictionary either way), so the dictionary shipped in
    the package is read directly and nothing is written.
    """
    global _jieba
    if _jieba is None:
        with _jieba_lock:
            if _jieba is None:
                try:
                    with warnings.catch_warnings():
                        # jieba reads its dictionary through pkg_resources where that is
                        # installed, and recent setuptools warns on that import
                        warnings.filterwarnings("ignore", message=".*pkg_resources.*")
                        import jieba
                except ImportError as exc:
                    raise ConfigError("tokenizer 'jieba' needs the jieba package "
                                      "(pip install 'llmrecall[serve]')") from exc
                segmenter = jieba.Tokenizer()
                with segmenter.lock:
                    segmenter.FREQ, segmenter.total = segmenter.gen_pfdict(
                        segmenter.get_dict_file())
                    segmenter.initialized = True
                _jieba = segmenter
    return _jieba


def _bigrams(run: str) -> list[str]:
    """Overlapping character pairs of a Han run; a one-character run is itself."""
    if len(run) == 1:
        return [run]
    return [run[i:i + 2] for i in range(len(run) - 1)]


def _stopword_set(stopwords: str | Iterable[str] | None) -> frozenset[str]:
    if stopwords is None:
        return frozenset()
    if isinstance(stopwords, str):
        if stopwords.lower() in ("en", "english"):
            return frozenset(STOPWORDS_EN)
        raise ConfigError(f"stopwords: only 'en' (or a list of words) is known, got {stopwords!r}")
    return frozenset(stopwords)


def tokenize(texts: Sequence[str], tokenizer: str | None = None,
             stopwords: str | Iterable[str] | None = DEFAULT_STOPWORDS) -> list[list[str]]:
    """Words of each text, as BM25 indexes and queries them (the only tokenizer of the project).

    Args:
        texts: n texts; English, Chinese or both mixed ("Apple iPhone 15 手机").
        tokenizer: "auto" (default; jieba when installed, else bigram), "jieba", "bigram" or
            "plain"; None: :func:`default_tokenizer`.
            - "plain": bm25s' tokenizer: lower case, runs of two or more word characters. A
              run of Chinese characters is one word.
            - "jieba": non-Han text as "plain"; each run of Han characters is segmented by jieba
              in search mode (words and the dictionary words inside them: 连衣裙 gives 连衣,
              衣裙, 连衣裙), one-character words included.
            - "bigram": non-Han text as "plain"; each Han run gives its overlapping character
              pairs (蓝牙耳机: 蓝牙, 牙耳, 耳机), a one-character run itself. No dictionary.
        stopwords: words dropped from non-Han text ("en": bm25s' English list; a list of words;
            None: none). Unless None, :data:`CHINESE_STOPWORDS` are dropped from Han text.
    Returns:
        n lists of words, in text order. Guarantee: for a text without Han characters or
        full-width forms every tokenizer returns exactly
        ``bm25s.tokenize(text, stopwords=stopwords, return_ids=False)``.
    """
    mode = resolve_tokenizer(tokenizer)
    stop = _stopword_set(stopwords)
    han_stop = CHINESE_STOPWORDS if stopwords is not None else frozenset()
    out: list[list[str]] = []
    for text in texts:
        text = text.lower()
        if mode == "plain" or not _HAN_OR_WIDE.search(text):
            out.append([w for w in _WORD.findall(text) if w not in stop])
            continue
        words: list[str] = []
        # re.split with a group alternates: non-Han text, Han run, non-Han text, ...
        for i, part in enumerate(_HAN_RUN.split(text.translate(_FOLD_WIDTH))):
            if i % 2 == 0:
                words.extend(w for w in _WORD.findall(part) if w not in stop)
            else:
                # HMM off: unknown character sequences fall apart into single characters the
                # same way in a title and in a query, instead of being joined by context
                found = (_jieba_tokenizer().cut_for_search(part, HMM=False) if mode == "jieba"
                         else _bigrams(part))
                words.extend(w for w in found if w not in han_stop)
        out.append(words)
    return out


class BM25Index:
    """A BM25 index over one text per item (row i of ``texts`` is dense item i).

    Texts and queries are split by :func:`tokenize` with the same tokenizer (chosen when the
    index is built and kept with it).

    Guarantees: :meth:`search` returns exactly ``k`` columns, padded with -1 / -inf, only
    items with a positive BM25 score (at least one query word in common), best first.
    """

    #: indexes pickled before the tokenizer was chosen split words as bm25s does
    tokenizer: str = "plain"

    def __init__(self, texts: Sequence[str], *, k1: float = 1.5, b: float = 0.75,
                 stopwords: str | None = DEFAULT_STOPWORDS, tokenizer: str | None = None):
        if k1 <= 0 or not 0 <= b <= 1:
            raise ConfigError(f"BM25 needs k1 > 0 and 0 <= b <= 1, got k1={k1}, b={b}")
        self.n_items = len(texts)
        self.stopwords = stopwords
        self.tokenizer = resolve_tokenizer(tokenizer)
        self._retriever = bm25s.BM25(k1=k1, b=b)
        # word ids in order of first occurrence, as bm25s.tokenize numbers them
        vocab: dict[str, int] = {}
        ids = [[vocab.setdefault(w, len(vocab)) for w in words] for words in self.words(texts)]
        self._vocab = vocab
        # bm25s cannot index a corpus with no words at all; such an index answers nothing
        self._empty = len(self._vocab) == 0 or self.n_items == 0
        if not self._empty:
            self._retriever.index(bm25s.tokenization.Tokenized(ids=ids, vocab=vocab),
                                  show_progress=False)

    def words(self, texts: Sequence[str]) -> list[list[str]]:
        """The words of each text as this index reads them (:func:`tokenize`)."""
        return tokenize(list(texts), self.tokenizer, self.stopwords)

    def scores(self, query: str) -> np.ndarray:
        """float32[n_items] BM25 score of every item for one query; 0 where no word matches.

        For callers that must mask items (seen, filtered) before taking the top-k."""
        out = np.zeros(self.n_items, np.float32)
        if self._empty or not query:
            return out
        known = [self._vocab[w] for w in self.words([query])[0] if w in self._vocab]
        if known:
            out[:] = np.asarray(self._retriever.get_scores(known), np.float32)
        return out

    def search(self, queries: Sequence[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        """Best ``k`` items per query.

        Args:
            queries: n free texts.
            k: results per query.
        Returns:
            ``ids int32[n, k]`` (-1 padded) and ``scores float32[n, k]`` (-inf padded).
        """
        n = len(queries)
        ids = np.full((n, k), -1, np.int32)
        scores = np.full((n, k), -np.inf, np.float32)
        if n == 0 or k <= 0 or self._empty:
            return ids, scores
        # map query words onto the corpus vocabulary; unknown words carry no BM25 weight
        query_ids = [[self._vocab[w] for w in q if w in self._vocab] for q in self.words(queries)]
        has_words = np.array([len(q) > 0 for q in query_ids])
        if not has_words.any():
            return ids, scores
        rows = np.flatnonzero(has_words)
        kk = min(k, self.n_items)
        found, vals = self._retriever.retrieve([query_ids[i] for i in rows], k=kk,
                                               show_progress=False, n_threads=1)
        found = np.asarray(found, np.int32)
        vals = np.asarray(vals, np.float32)
        found[vals <= 0] = -1
        vals[vals <= 0] = -np.inf
        ids[rows, :kk] = found
        scores[rows, :kk] = vals
        return ids, scores
