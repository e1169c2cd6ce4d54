"""The store side of ``/language``: one choice per platform and user, kept across restarts (on
SQLite and PostgreSQL: ``make_store``), and the migration that brought it to older databases."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from rtxrelay.core.i18n import Language
from rtxrelay.storage import postgres_migrations
from rtxrelay.storage.dsn import PostgresDsn
from rtxrelay.storage.migrations import MIGRATIONS
from rtxrelay.storage.postgres_store import PostgresStore
from rtxrelay.storage.sqlite_store import SqliteStore
from tests.storage.conftest import StoreFactory
from tests.support.postgres import PostgresServer


async def test_a_choice_is_kept_per_platform_and_user_until_cleared(
        make_store: StoreFactory) -> None:
    async with make_store() as store:
        assert await store.language("telegram", "7") is None
        await store.set_language("telegram", "7", Language.ZH_TW)
        await store.set_language("discord", "7", Language.EN)  # the same id elsewhere
        await store.set_language("telegram", "8", Language.ZH_CN)
        await store.set_language("telegram", "8", Language.EN)  # a new choice replaces it
    async with make_store() as store:  # a restart: another store on the same database
        assert await store.language("telegram", "7") is Language.ZH_TW
        assert await store.language("discord", "7") is Language.EN
        assert await store.language("telegram", "8") is Language.EN
        await store.set_language("telegram", "7", None)
        assert await store.language("telegram", "7") is None
        assert await store.language("discord", "7") is Language.EN


async def test_a_database_of_the_previous_version_gets_the_table_and_keeps_its_data(
        tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:  # what rtxrelay before /language left
        for script in MIGRATIONS[:4]:
            db.executescript(script)
        db.execute("PRAGMA user_version = 4")
        db.execute("INSERT INTO conversations (key, session, created_at) "
                   "VALUES ('telegram:1:1', 'abc', 0)")
    db.close()
    async with SqliteStore(path) as store:
        assert (await store.current("telegram:1:1")).session == "abc"
        await store.set_language("telegram", "1", Language.ZH_CN)
        assert await store.language("telegram", "1") is Language.ZH_CN
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        # Written by a later rtxrelay that speaks more languages: read as no choice.
        db.execute("UPDATE user_preferences SET language = 'fr'")
    db.close()
    async with SqliteStore(path) as store:
        assert await store.language("telegram", "1") is None


async def test_a_postgresql_database_of_the_previous_version_gets_the_table_too(
        postgres: PostgresServer, postgres_dsn: PostgresDsn) -> None:
    connection = await postgres.connect(postgres_dsn.database)
    try:  # what rtxrelay before /language would have left
        await connection.execute(f"CREATE TABLE {postgres_migrations.VERSION_TABLE} ("
                                 "version INTEGER PRIMARY KEY, applied_at DOUBLE PRECISION)")
        for number, script in enumerate(postgres_migrations.MIGRATIONS[:4], start=1):
            await connection.execute(script)
            await connection.execute(f"INSERT INTO {postgres_migrations.VERSION_TABLE} "
                                     "VALUES ($1, $2)", number, time.time())
        await connection.execute("INSERT INTO conversations (key, session, created_at) "
                                 "VALUES ('telegram:1:1', 'abc', 0)")
        async with PostgresStore(postgres_dsn) as store:
            assert (await store.current("telegram:1:1")).session == "abc"
            await store.set_language("telegram", "1", Language.ZH_CN)
            assert await store.language("telegram", "1") is Language.ZH_CN
        assert await connection.fetchval(
            f"SELECT max(version) FROM {postgres_migrations.VERSION_TABLE}") == len(MIGRATIONS)
        # Written by a later rtxrelay that speaks more languages: read as no choice.
        await connection.execute("UPDATE user_preferences SET language = 'fr'")
        async with PostgresStore(postgres_dsn) as store:
            assert await store.language("telegram", "1") is None
    finally:
        await connection.close()
