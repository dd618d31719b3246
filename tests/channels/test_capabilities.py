"""Which channels declare which capability (:mod:`llmrecall.channels.capabilities`), and that
only a declaration counts.

The behaviour each capability promises is checked by ``mixin.CapabilityContract`` for every
channel of the contract suites (``test_contract.py``, ``test_lm_contract.py``) and, below,
for the language-model text channels that only share backends.
"""

from __future__ import annotations

import numpy as np
import pytest

from llmrecall.channels import Channel, channel_class, known_kinds
from llmrecall.channels.base import Candidates
from llmrecall.channels.capabilities import (
    CAPABILITIES,
    AddsItems,
    AnswersQueries,
    CachesUsers,
    RefreshesInterests,
    SearchesVectors,
    UsesEmbedder,
    UsesGenerator,
    attach_user_caches,
)
from llmrecall.channels.interest import InterestChannel
from llmrecall.channels.knowledge import KnowledgeChannel
from llmrecall.channels.search import SearchQueryChannel
from llmrecall.channels.semantic import SemanticItemToItem, SemanticUserInterest
from llmrecall.data.dataset import Dataset

from .mixin import CapabilityContract, synthetic_dataset

#: the built-in channels declaring each capability; a capability dropped from (or added to)
#: a channel must show up here
DECLARED: dict[type, set[str]] = {
    AnswersQueries: {"semantic_i2i", "semantic_user"},
    AddsItems: {"semantic_i2i", "semantic_user", "textcf", "cf_transfer", "sasrec"},
    RefreshesInterests: set(),
    CachesUsers: {"als", "bpr", "textcf", "sasrec", "semantic_user"},
    UsesEmbedder: {"llm_interest", "llm_knowledge", "search_query"},
    UsesGenerator: {"llm_interest", "llm_knowledge"},
    SearchesVectors: {"semantic_i2i", "semantic_user"},
}


def _builtin_kinds() -> list[str]:
    # test plugins (tests/serve/serve_plugins.py) may be registered in the same session
    return [k for k in known_kinds() if channel_class(k).__module__.startswith("llmrecall.")]


def test_every_capability_is_listed():
    assert set(CAPABILITIES) == set(DECLARED)


@pytest.mark.parametrize("capability", CAPABILITIES, ids=lambda c: c.__name__)
def test_builtin_channels_declare_exactly(capability):
    declaring = {k for k in _builtin_kinds() if issubclass(channel_class(k), capability)}
    assert declaring == DECLARED[capability]


class _DuckTyped(Channel):
    """Has every capability's method or attribute by name, declares none."""

    kind = "test_duck_typed"  # never registered
    user_cache = None

    def fit(self, dataset: Dataset) -> _DuckTyped:
        return self

    def recall_query(self, texts, k, allowed=None):
        raise AssertionError("called although not declared")

    def add_items(self, ids, texts):
        raise AssertionError("called although not declared")

    def refresh_interest(self, user_id, history_items):
        raise AssertionError("called although not declared")

    def use(self, *, generator=None, embedder=None):
        raise AssertionError("called although not declared")


def test_a_method_is_not_a_declaration():
    """Regression: the service and ``attach_user_caches`` went by attribute name, so a channel
    with a ``user_cache`` attribute or a ``recall_query`` method took part in serving
    whether or not it meant to."""
    from llmrecall.serve.engine import _query_channels_of

    duck = _DuckTyped()
    assert not any(isinstance(duck, capability) for capability in CAPABILITIES)
    assert attach_user_caches([duck], 100) == 0 and duck.user_cache is None

    class Pipeline:
        channels = {"duck": duck, "semantic": SemanticItemToItem()}

    assert _query_channels_of(Pipeline, ["duck", "semantic"]) == ["semantic"]


class _Answers(Channel, AnswersQueries):
    kind = "test_answers"  # never registered

    def fit(self, dataset: Dataset) -> _Answers:
        return self

    def recall_query(self, texts, k, allowed=None):
        return Candidates(np.full((len(texts), k), -1, np.int32),
                          np.full((len(texts), k), -np.inf, np.float32))


def test_query_source_defaults_to_the_channel_name():
    """Without its own ``query_source`` a channel is a source of its own: the service asks
    every such channel, and only one of channels sharing a source."""
    from llmrecall.serve.engine import _query_channels_of

    assert _Answers(name="a").query_source == "a"

    class Pipeline:
        channels = {"a": _Answers(name="a"), "b": _Answers(name="b"),
                    "i2i": SemanticItemToItem(), "user": SemanticUserInterest()}

    assert _query_channels_of(Pipeline, ["a", "i2i", "b", "user"]) == ["a", "i2i", "b"]


def test_channels_sharing_a_query_source_answer_alike(lm_cache):
    """The promise that lets the service ask only one of them."""
    from .test_lm_contract import texted_dataset

    data = texted_dataset()
    i2i, user = SemanticItemToItem().fit(data), SemanticUserInterest().fit(data)
    assert i2i.query_source == user.query_source
    queries = [data.catalog.texts()[3], None, "cooking pasta at home", data.catalog.texts()[15]]
    allowed = np.arange(data.n_items) % 3 > 0
    for mask in (None, allowed):
        a, b = i2i.recall_query(queries, 7, mask), user.recall_query(queries, 7, mask)
        np.testing.assert_array_equal(a.ids, b.ids)
        np.testing.assert_array_equal(a.scores, b.scores)


# ---- the text channels that share backends: their capability checks -------------------
class _BackendSharing(CapabilityContract):
    @pytest.fixture(scope="class")
    @classmethod
    def data(cls) -> Dataset:
        return synthetic_dataset()


class TestSearchQueryCapabilities(_BackendSharing):
    def make_channel(self):
        return SearchQueryChannel()


class TestInterestCapabilities(_BackendSharing):
    def make_channel(self):
        return InterestChannel()


class TestKnowledgeCapabilities(_BackendSharing):
    def make_channel(self):
        return KnowledgeChannel(knowledge=True)
