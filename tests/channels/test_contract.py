"""Every built-in classic channel against the shared contract."""

from mixin import ChannelContract

from llmrecall.channels import ALS, BPR, EASE, ItemCF, Popularity, Swing


class TestPopularity(ChannelContract):
    personalised = False
    min_recall_at_50 = 0.16

    def make_channel(self):
        return Popularity()


class TestItemCF(ChannelContract):
    min_recall_at_50 = 0.35

    def make_channel(self):
        return ItemCF(neighbors=10)


class TestItemCFRecBoleStyle(ChannelContract):
    min_recall_at_50 = 0.35

    def make_channel(self):
        return ItemCF(neighbors=10, shrink=5.0, iuf=False, history_length=None,
                      position_half_life=None)


class TestSwing(ChannelContract):
    min_recall_at_50 = 0.32

    def make_channel(self):
        return Swing(neighbors=10, max_users_per_item=15)


class TestEASE(ChannelContract):
    min_recall_at_50 = 0.35

    def make_channel(self):
        return EASE(regularization=5.0)


class TestALS(ChannelContract):
    min_recall_at_50 = 0.33

    def make_channel(self):
        return ALS(factors=2, iterations=15, regularization=0.1)


class TestBPR(ChannelContract):
    min_recall_at_50 = 0.25

    def make_channel(self):
        return BPR(factors=4, iterations=1000, learning_rate=0.02)
