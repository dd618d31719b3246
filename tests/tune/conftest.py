"""Shared ml-100k split and a small, quick pipeline config for the tuner tests."""

from __future__ import annotations

import copy
import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "2")

from llmrecall.config import parse_config  # noqa: E402
from llmrecall.data.builtin import load_builtin  # noqa: E402
from llmrecall.evaluate.protocols import make_split  # noqa: E402

#: three quick channels: a tuned neighbourhood model, a tuned linear model, a fixed one
SMALL = {
    "fusion": {"k": 50, "channel_k": 100, "rrf_k": 60.0},
    "channels": [
        {"kind": "popularity", "weight": 0.3},
        {"kind": "itemcf", "weight": 1.0, "params": {"neighbors": 100}},
        {"kind": "ease", "weight": 1.5, "params": {"regularization": 200.0}},
    ],
}


@pytest.fixture(scope="session")
def ml100k():
    return load_builtin("ml-100k")


@pytest.fixture(scope="session")
def split(ml100k):
    return make_split(ml100k, "loo", 0)


@pytest.fixture()
def small_config():
    return parse_config(SMALL)


@pytest.fixture()
def small_raw():
    """SMALL as a fresh dict, for tests that derive variants of it."""
    return copy.deepcopy(SMALL)
