"""Both stores under one contract: ``make_store`` opens a store on this test's own database.

A test that takes ``make_store`` runs twice: on SQLite (a file in tmp_path) and on PostgreSQL
(a new database on the run's real server, tests/support/postgres.py). Every store it makes
shares that database, as processes sharing one RTXRELAY_DB do:

    async with make_store(owner="a") as first, make_store(owner="b") as second: ...

The server starts only for the postgresql runs (``-k sqlite`` needs none).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import pytest

from rtxrelay.app.stores import RelayStore
from rtxrelay.storage.dsn import PostgresDsn
from rtxrelay.storage.postgres_store import PostgresStore
from rtxrelay.storage.sqlite_store import SqliteStore

StoreFactory = Callable[..., AbstractAsyncContextManager[RelayStore]]


@pytest.fixture(params=["sqlite", "postgresql"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    if request.param == "sqlite":
        path = tmp_path / "relay.db"
        return lambda owner="": SqliteStore(path, owner=owner)
    dsn: PostgresDsn = request.getfixturevalue("postgres_dsn")
    return lambda owner="": PostgresStore(dsn, owner=owner)
