"""Suite-wide set-up: the test-run ledger (see ledger.py) when ``make test`` asks for it, and
the thread variables put back after every test."""

from __future__ import annotations

import os

import ledger
import pytest
from serve import pg
from threadpoolctl import threadpool_limits

from llmrecall.threads import LIBRARY_ENVS, THREADS_ENV, blas_threads


def pytest_configure(config):
    ledger.register(config)


@pytest.fixture(autouse=True)
def _restore_thread_variables():
    """A command run in this process (typer's CliRunner) exports its thread setting to
    ``os.environ`` and sets numpy's BLAS to it; undone after the test, so it cannot reach
    later tests' subprocesses (the service's default of one thread is applied only where
    none is set) or slow the rest of the run down to one thread."""
    names = (THREADS_ENV, *LIBRARY_ENVS)
    saved = {name: os.environ.get(name) for name in names}
    yield
    if {name: os.environ.get(name) for name in names} == saved:
        return
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    threadpool_limits(limits=blas_threads(), user_api="blas")


@pytest.fixture(scope="session")
def postgres():
    """One PostgreSQL server for the session (tests/serve/pg.py: the service's state store
    and the LM cache use it); skipped without one, failed under CI (``.ci/run`` installs the
    Debian package)."""
    server = pg.server_or_skip()
    yield server
    server.close()


@pytest.fixture
def pg_dsn(postgres) -> str:
    """A fresh database of the session's PostgreSQL server."""
    return postgres.create_database()
