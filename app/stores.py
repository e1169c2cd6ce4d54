"""RTXRELAY_DB → the conversation store: a SQLite file (the default) or a PostgreSQL database.

PostgreSQL's module, and asyncpg with it, is imported only when RTXRELAY_DB is a
``postgresql://`` URL: ``rtxrelay ask`` on SQLite loads neither, and asyncpg is an extra
(``pip install "rtxrelay[postgresql]"``).
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Protocol

from rtxrelay.core.errors import ConfigError
from rtxrelay.core.pool import BackendPool, Member
from rtxrelay.core.store import ConversationStore, Turn
from rtxrelay.storage.dsn import PostgresDsn
from rtxrelay.storage.sqlite_store import SqliteStore

INSTALL_POSTGRESQL = 'pip install "rtxrelay[postgresql]"'


class RelayStore(ConversationStore, Protocol):
    """What the application uses of a store: the engine's seam, plus ``doctor``'s check and
    the export of a conversation key's turns."""

    async def check_writable(self) -> None: ...

    async def turns_for_key(self, key: str) -> list[Turn]: ...


def open_store(database: Path | PostgresDsn, *,
               owner: str = "") -> AbstractAsyncContextManager[RelayStore]:
    """The store for ``database`` (``Settings.database``), to be entered with ``async with``;
    ``owner`` is this process (see ``ConversationStore.recover_pending``). ConfigError when
    RTXRELAY_DB is a PostgreSQL URL and asyncpg is not installed."""
    if isinstance(database, PostgresDsn):
        try:
            from rtxrelay.storage.postgres_store import PostgresStore
        except ModuleNotFoundError as exc:
            if exc.name != "asyncpg":
                raise
            raise ConfigError(
                "RTXRELAY_DB is a PostgreSQL URL, but PostgreSQL's driver (asyncpg) is not "
                "installed.", hint=f"Install it: {INSTALL_POSTGRESQL}", setting="RTXRELAY_DB",
            ) from None
        return PostgresStore(database, owner=owner)
    return SqliteStore(database, owner=owner)


def make_pool(store: RelayStore, members: list[Member], *, probe_interval: float,
              check_interval: float, lease: float) -> BackendPool:
    """The backends' line: in this process's memory with SQLite; in the database with
    PostgreSQL, shared by every rtxrelay process on it (storage/postgres_line.py)."""
    if isinstance(store, SqliteStore):  # PostgreSQL's modules (asyncpg) stay unimported
        return BackendPool(members, probe_interval=probe_interval,
                           check_interval=check_interval)
    from rtxrelay.storage.postgres_line import PostgresPool
    from rtxrelay.storage.postgres_store import PostgresStore

    assert isinstance(store, PostgresStore)
    # Four renewals per lease: one or two lost to a busy server do not end it.
    return PostgresPool(members, store, probe_interval=probe_interval,
                        check_interval=check_interval, lease=lease, heartbeat=lease / 4)
