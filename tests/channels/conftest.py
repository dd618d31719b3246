"""Fixtures shared by the channel tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def lm_cache(tmp_path_factory):
    """A private text-vector cache for the test session."""
    mp = pytest.MonkeyPatch()
    path = tmp_path_factory.mktemp("lm-cache")
    mp.setenv("LLMRECALL_CACHE", str(path))
    yield path
    mp.undo()
