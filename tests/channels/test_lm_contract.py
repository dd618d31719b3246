"""The language-model channels against the shared channel contract (``mixin.ChannelContract``).

The contract's two-community data gets item texts: community A's items are about space,
community B's about cooking, so text-only channels can find the communities too.

``min_recall_at_50``: test Recall@50 on ml-100k (chronological leave-one-out, default
hyperparameters, bench/lm_channels.py) measured at 0.1145 semantic_i2i, 0.0997
semantic_user, 0.2545 textcf (0.3446 with its popularity prior), 0.4624 sasrec (8 epochs);
thresholds sit 10-20% below.
"""

from __future__ import annotations

from dataclasses import replace

import polars as pl
import pytest

from llmrecall.channels.cf_transfer import CFTransfer
from llmrecall.channels.semantic import SemanticItemToItem, SemanticUserInterest
from llmrecall.channels.sequential import SASRec
from llmrecall.channels.textcf import TextCF
from llmrecall.data.dataset import Catalog

from .lm_data import CATEGORIES, TOPICS
from .mixin import N_ITEMS, PER_COMMUNITY, ChannelContract, synthetic_dataset


def texted_dataset():
    titles = TOPICS["space"][:PER_COMMUNITY] + TOPICS["cooking"][:PER_COMMUNITY]
    categories = [CATEGORIES["space"]] * PER_COMMUNITY + [CATEGORIES["cooking"]] * PER_COMMUNITY
    assert len(titles) == N_ITEMS
    catalog = Catalog(pl.DataFrame({"title": titles, "category": categories},
                                   schema={"title": pl.Utf8, "category": pl.List(pl.Utf8)}))
    return replace(synthetic_dataset(), catalog=catalog)


class TextContract(ChannelContract):
    @pytest.fixture(scope="class")
    @classmethod
    def data(cls, lm_cache):
        return texted_dataset()


class TestSemanticItemToItemContract(TextContract):
    min_recall_at_50 = 0.10

    def make_channel(self):
        return SemanticItemToItem()


class TestSemanticUserInterestContract(TextContract):
    min_recall_at_50 = 0.09

    def make_channel(self):
        return SemanticUserInterest(diversity_threshold=0.2)


class TestTextCFContract(TextContract):
    min_recall_at_50 = 0.21

    def make_channel(self):
        return TextCF(dim=32, hidden=64, epochs=20, batch_size=128, lr=3e-3)

    def test_min_recall_on_ml100k(self):
        """One fit with the popularity prior on: the cosine alone (the same model with the
        prior's weight set to 0) above the default channel's floor, and with the prior
        (observed log counts under ``loo``) above a higher one: measured 0.2333 and 0.3446."""
        import copy

        from llmrecall.data.builtin import load_builtin
        from llmrecall.evaluate import evaluate_channel, make_split

        split = make_split(load_builtin("ml-100k"), "loo")
        channel = TextCF(popularity_prior=1.0).fit(split.train)
        cosine = copy.copy(channel)
        cosine.popularity_prior = 0.0
        recall = {name: evaluate_channel(ch, split.test, k=50, ks=(50,))["recall@50"]
                  for name, ch in (("cosine", cosine), ("prior", channel))}
        assert recall["cosine"] >= self.min_recall_at_50, recall
        assert recall["prior"] >= 0.30, recall


class TestCFTransferContract(TextContract):
    # on ml-100k's loo every ranked item has training events, so the channel is EASE there
    # (0.3913 measured, EASE's own floor)
    min_recall_at_50 = 0.35

    def make_channel(self):
        return CFTransfer(neighbors=3, regularization=10.0)


class TestSASRecContract(TextContract):
    min_recall_at_50 = 0.42

    def make_channel(self):
        return SASRec(text_init="fuse", dim=32, max_len=10, epochs=40, batch_size=32, lr=3e-3)

    def ml100k_channel(self):
        # 8 of the default 30 epochs: the floor still fails a broken model (measured 0.4624
        # at 8 epochs, 0.4836 at 12), at a third of the fit time
        return SASRec(epochs=8)
