"""Fixtures of the interest tests."""

import pytest
from interest_toydata import make_dataset

from llmrecall.data.dataset import Dataset


@pytest.fixture
def toy() -> Dataset:
    # user 0 likes sci-fi, user 1 crime, user 2 romance, user 3 has no history
    return make_dataset([[0, 1], [4], [8, 9], []])
