"""Channels and a refresher the service tests load as a plugin (``--plugin serve_plugins``).

Small, real channels over ml-100k: a popularity channel, a dense co-occurrence item-to-item
channel, and two deliberately broken ones for the degradation tests.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
import scipy.sparse as sp

from llmrecall.channels.base import Channel
from llmrecall.channels.capabilities import AddsItems, AnswersQueries, RefreshesInterests
from llmrecall.channels.registry import _REGISTRY, register
from llmrecall.data.dataset import Dataset, Histories


def _register(cls):
    return cls if _REGISTRY.get(cls.kind) is cls else register(cls)


class TestPopularity(Channel):
    kind = "test_popularity"

    def fit(self, dataset: Dataset) -> TestPopularity:
        self.counts_ = np.bincount(dataset.interactions.item,
                                   minlength=dataset.n_items).astype(np.float32)
        return self

    def score(self, users: np.ndarray, history: Histories) -> np.ndarray:
        out = np.full((len(users), history.n_items), -np.inf, np.float32)
        out[:, :len(self.counts_)] = self.counts_
        return out


class TestCooccurrence(Channel):
    """Item-to-item: score = history @ normalised co-occurrence; evidence = best history item."""

    kind = "test_cooc"
    evidence_template = "watched with {evidence}"

    def fit(self, dataset: Dataset) -> TestCooccurrence:
        x = dataset.histories().matrix()
        co = (x.T @ x).toarray().astype(np.float32)
        np.fill_diagonal(co, 0)
        norm = np.sqrt(np.maximum(np.diag((x.T @ x).toarray()), 1)).astype(np.float32)
        self.sim_ = co / norm[:, None] / norm[None, :]
        return self

    def _hist(self, users, history):
        m = history.matrix(users)
        n = self.sim_.shape[0]
        if m.shape[1] >= n:
            return m[:, :n]
        return sp.hstack([m, sp.csr_matrix((m.shape[0], n - m.shape[1]))]).tocsr()

    def score(self, users: np.ndarray, history: Histories) -> np.ndarray:
        known = np.asarray(self._hist(users, history) @ self.sim_, np.float32)
        out = np.full((len(users), history.n_items), -np.inf, np.float32)
        out[:, :known.shape[1]] = np.where(known > 0, known, -np.inf)
        return out

    def evidence(self, users, ids, history):
        h = self._hist(users, history).toarray()
        ev = np.full(ids.shape, -1, np.int32)
        for r in range(len(users)):
            items = np.flatnonzero(h[r])
            ok = (ids[r] >= 0) & (ids[r] < self.sim_.shape[0])
            if len(items) and ok.any():
                ev[r, ok] = items[self.sim_[items][:, ids[r][ok]].argmax(axis=0)]
        return ev


class TestFailing(Channel):
    kind = "test_failing"

    def fit(self, dataset: Dataset) -> TestFailing:
        self.n_items_ = np.array([dataset.n_items])
        return self

    def recall(self, users, k, history, **kwargs):
        raise RuntimeError("this channel always fails")


class TestSlow(Channel):
    kind = "test_slow"

    def __init__(self, seconds: float = 2.0, name: str | None = None):
        super().__init__(name)
        self.seconds = seconds

    def fit(self, dataset: Dataset) -> TestSlow:
        self.n_items_ = np.array([dataset.n_items])
        return self

    def score(self, users, history):
        time.sleep(self.seconds)
        return np.zeros((len(users), history.n_items), np.float32)


class TestText(Channel, AnswersQueries, AddsItems, RefreshesInterests):
    """Stands in for a text-embedding channel: declares the serving capabilities.

    ``add_items(ids, texts)`` remembers items added after fit (as a semantic channel adds
    their vectors to its index); ``recall_query(texts, k, allowed)`` returns remembered items
    sharing a word with the query.
    """

    kind = "test_text"

    def __init__(self, name: str | None = None):
        super().__init__(name)
        self._added: list[tuple[int, set[str]]] = []

    def fit(self, dataset: Dataset) -> TestText:
        self.n_items_ = np.array([dataset.n_items])
        return self

    def recall(self, users, k, history, **kwargs):
        from llmrecall.channels.base import Candidates

        n = len(users)
        return Candidates(np.full((n, k), -1, np.int32), np.full((n, k), -np.inf, np.float32))

    def add_items(self, ids: np.ndarray, texts: list[str]) -> None:
        self._added += [(int(i), set(t.lower().split())) for i, t in zip(ids, texts)]

    def refresh_interest(self, user_id: str, history_items: list[str]) -> None:
        """Stands in for an LLM interest-text refresh: logs to $SERVE_TEST_REFRESH_LOG."""
        path = os.environ.get("SERVE_TEST_REFRESH_LOG")
        if path:
            with open(path, "a") as fh:
                fh.write(json.dumps({"user": user_id, "n": len(history_items),
                                     "by": "channel"}) + "\n")

    def recall_query(self, texts, k, allowed=None):
        from llmrecall.channels.base import Candidates

        ids = np.full((len(texts), k), -1, np.int32)
        for r, text in enumerate(texts):
            words = set((text or "").lower().split())
            hits = [i for i, w in self._added if words & w and (allowed is None or allowed[i])][:k]
            ids[r, :len(hits)] = hits
        scores = np.where(ids >= 0, 1.0, -np.inf).astype(np.float32)
        return Candidates(ids, scores)


class TestTextUndeclared(Channel):
    """Has the methods of the text hooks (``add_items``, ``recall_query``,
    ``refresh_interest``) but declares none of the capabilities: the service must call none
    of them (a method name alone is not a declaration)."""

    kind = "test_text_undeclared"

    def fit(self, dataset: Dataset) -> TestTextUndeclared:
        self.n_items_ = np.array([dataset.n_items])
        return self

    def recall(self, users, k, history, **kwargs):
        from llmrecall.channels.base import Candidates

        n = len(users)
        return Candidates(np.full((n, k), -1, np.int32), np.full((n, k), -np.inf, np.float32))

    def add_items(self, ids: np.ndarray, texts: list[str]) -> None:
        raise AssertionError("add_items called on a channel that does not declare AddsItems")

    def refresh_interest(self, user_id: str, history_items: list[str]) -> None:
        path = os.environ.get("SERVE_TEST_REFRESH_LOG")
        if path:
            with open(path, "a") as fh:
                fh.write(json.dumps({"user": user_id, "n": len(history_items),
                                     "by": "undeclared"}) + "\n")

    def recall_query(self, texts, k, allowed=None):
        from llmrecall.channels.base import Candidates

        ids = np.zeros((len(texts), k), np.int32)  # item 0 for every query
        return Candidates(ids, np.zeros((len(texts), k), np.float32))


class TestTextBroken(TestText):
    """A text channel whose query hook always fails (the service then falls back to BM25)."""

    kind = "test_text_broken"

    def recall_query(self, texts, k, allowed=None):
        raise RuntimeError("this query hook always fails")


for _cls in (TestPopularity, TestCooccurrence, TestFailing, TestSlow, TestText, TestTextBroken,
             TestTextUndeclared):
    _register(_cls)


class FileRefresher:
    """Appends each refresh to the JSONL file named by $SERVE_TEST_REFRESH_LOG."""

    def __init__(self):
        self.path = os.environ["SERVE_TEST_REFRESH_LOG"]

    def __call__(self, user_id: str, history_items: list[str]) -> None:
        with open(self.path, "a") as fh:
            fh.write(json.dumps({"user": user_id, "n": len(history_items)}) + "\n")
