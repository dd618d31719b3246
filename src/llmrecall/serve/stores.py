"""The state store a service uses, from its settings (SQLite by default, PostgreSQL when
``[state] postgres_dsn`` is set); a module of its own so that the PostgreSQL driver is
imported only when it is used."""

from __future__ import annotations

from llmrecall.serve.settings import ServeSettings
from llmrecall.serve.store import StateStore, Store


def open_store(settings: ServeSettings) -> StateStore:
    """The store the settings name: PostgreSQL when ``[state] postgres_dsn`` is set, else the
    SQLite file."""
    dsn = settings.state.resolved_postgres_dsn()
    if dsn is not None:
        from llmrecall.serve.pgstore import PostgresStore

        return PostgresStore(dsn, connect_timeout_s=settings.state.postgres_connect_timeout_s)
    return Store(settings.resolved_state_path())
