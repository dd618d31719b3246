"""Suite-wide set-up: the test-run ledger (see ledger.py) when ``make test`` asks for it."""

from __future__ import annotations

import ledger


def pytest_configure(config):
    ledger.register(config)
