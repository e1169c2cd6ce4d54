"""What only the PostgreSQL store has to get right, on a real server: the same schema as SQLite,
migrating from several processes at once, errors that name the server but never the password,
and a server that restarts or goes away under a running store."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from pathlib import Path

import asyncpg
import pytest

from rtxrelay.core.errors import StorageError
from rtxrelay.core.store import TurnStatus
from rtxrelay.storage import migrations, postgres_migrations
from rtxrelay.storage.dsn import PostgresDsn
from rtxrelay.storage.postgres_store import PostgresStore
from rtxrelay.storage.sqlite_store import SqliteStore
from tests.llama.server import free_port
from tests.support.postgres import PASSWORD, PostgresServer

KEY = "telegram:1:1"
WAIT = 15.0  # seconds any one event below may take before the test fails


async def test_both_stores_migrate_to_the_same_tables_columns_and_indexes(
        postgres: PostgresServer, postgres_dsn: PostgresDsn, tmp_path: Path) -> None:
    assert len(postgres_migrations.MIGRATIONS) == len(migrations.MIGRATIONS)
    async with SqliteStore(tmp_path / "r.db"), PostgresStore(postgres_dsn):
        pass
    with sqlite3.connect(tmp_path / "r.db") as db:
        tables = [row[0] for row in db.execute("SELECT name FROM sqlite_master "
                                                "WHERE type = 'table'")]
        sqlite_columns = {table: {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
                          for table in tables}
        sqlite_indexes = {row[0] for row in db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL")}
        db.execute("SELECT rowid FROM messages")  # implicit in SQLite, explicit in PostgreSQL
    db.close()
    connection = await postgres.connect(postgres_dsn.database)
    try:
        pg_columns: dict[str, set[str]] = {}
        for row in await connection.fetch(
                "SELECT table_name, column_name FROM information_schema.columns "
                "WHERE table_schema = current_schema()"):
            pg_columns.setdefault(row[0], set()).add(row[1])
        pg_indexes = {row[0] for row in await connection.fetch(
            "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema() "
            "AND indexname NOT LIKE '%\\_pkey'")}
    finally:
        await connection.close()
    assert pg_columns.pop(postgres_migrations.VERSION_TABLE) == {"version", "applied_at"}
    pg_columns["messages"].remove("rowid")
    assert pg_columns == sqlite_columns
    assert pg_indexes == sqlite_indexes


async def test_processes_opening_a_new_database_at_once_migrate_it_once(
        postgres: PostgresServer, postgres_dsn: PostgresDsn) -> None:
    stores = [PostgresStore(postgres_dsn, owner=f"process {n}") for n in range(3)]
    try:
        await asyncio.gather(*(store.open() for store in stores))
        conversations = [await store.current(KEY) for store in stores]
        assert len(set(conversations)) == 1
    finally:
        for store in stores:
            await store.close()
    connection = await postgres.connect(postgres_dsn.database)
    try:
        versions = await connection.fetch(
            f"SELECT version FROM {postgres_migrations.VERSION_TABLE} ORDER BY version")
    finally:
        await connection.close()
    assert [row[0] for row in versions] == list(range(1, len(migrations.MIGRATIONS) + 1))


async def test_a_schema_newer_than_this_rtxrelay_is_refused(
        postgres: PostgresServer, postgres_dsn: PostgresDsn) -> None:
    async with PostgresStore(postgres_dsn):
        pass
    newer = len(migrations.MIGRATIONS) + 1
    connection = await postgres.connect(postgres_dsn.database)
    try:
        await connection.execute(
            f"INSERT INTO {postgres_migrations.VERSION_TABLE} VALUES ($1, 0)", newer)
    finally:
        await connection.close()
    with pytest.raises(StorageError) as refused:
        async with PostgresStore(postgres_dsn):
            pass
    assert refused.value.message == (
        f"The database {postgres_dsn.where} has schema version {newer}, newer than this "
        f"rtxrelay knows ({newer - 1}).")
    assert "Upgrade rtxrelay" in refused.value.hint


@pytest.mark.parametrize("case", ["no server there", "wrong password", "no such database"])
async def test_errors_name_the_server_and_what_to_do_never_the_password(
        postgres: PostgresServer, postgres_dsn: PostgresDsn, case: str,
        caplog: pytest.LogCaptureFixture) -> None:
    wrong_password = "not-the-password-5e1d"
    dsn, port, expected, hint = {
        "no server there": (postgres.dsn(postgres_dsn.database, port=(port := free_port())),
                            port, f"Cannot reach PostgreSQL at 127.0.0.1:{port}/"
                            f"{postgres_dsn.database} (connection refused).", "running there"),
        "wrong password": (postgres.dsn(postgres_dsn.database, password=wrong_password),
                           postgres.port, f"PostgreSQL at {postgres_dsn.where} refused the "
                           "password of user rtxrelay.", "password in RTXRELAY_DB"),
        "no such database": (postgres.dsn("no_such_database"), postgres.port,
                             "The database no_such_database does not exist on PostgreSQL at "
                             f"127.0.0.1:{postgres.port}.", "createdb -O rtxrelay"),
    }[case]
    caplog.set_level(logging.DEBUG)
    with pytest.raises(StorageError) as failed:
        async with PostgresStore(dsn):
            pass
    assert failed.value.message == expected
    assert hint in failed.value.hint
    for text in (str(failed.value), caplog.text):
        assert PASSWORD not in text and wrong_password not in text


async def test_a_restarted_server_needs_no_new_store(
        postgres: PostgresServer, postgres_dsn: PostgresDsn) -> None:
    async with PostgresStore(postgres_dsn) as store:
        conversation = await store.current(KEY)
        before = await store.add_question(conversation.id, "before the restart")
        await postgres.restart()
        after = await store.add_question(conversation.id, "after it")  # a write first
        await postgres.restart()
        assert await store.current(KEY) == conversation  # a read first
        assert [t.id for t in await store.recent_turns(conversation.id, 5)] == [before, after]


async def test_a_call_while_the_server_is_down_waits_for_it(
        postgres: PostgresServer, postgres_dsn: PostgresDsn,
        caplog: pytest.LogCaptureFixture) -> None:
    async with PostgresStore(postgres_dsn, reconnect_within=60.0) as store:
        conversation = await store.current(KEY)
        await postgres.stop()
        try:
            # A write: taking a connection is retried, as nothing has been sent yet.
            asking = asyncio.create_task(store.add_question(conversation.id, "while down"))
            async with asyncio.timeout(WAIT):  # the call found the server away and waits
                while "is away" not in caplog.text:  # noqa: ASYNC110 - a log line, no event
                    await asyncio.sleep(0.01)
            assert not asking.done()
        finally:
            await postgres.start()
        turn_id = await asyncio.wait_for(asking, WAIT)
        assert [t.id for t in await store.recent_turns(conversation.id, 5)] == [turn_id]
    assert f"PostgreSQL at {postgres_dsn.where} is away" in caplog.text
    assert PASSWORD not in caplog.text


async def test_a_server_down_for_longer_fails_the_call_and_the_next_one_works(
        postgres: PostgresServer, postgres_dsn: PostgresDsn) -> None:
    async with PostgresStore(postgres_dsn, reconnect_within=0.2) as store:
        conversation = await store.current(KEY)
        await postgres.stop()
        try:
            with pytest.raises(StorageError) as down:
                await store.recent_turns(conversation.id, 5)
        finally:
            await postgres.start()
        assert down.value.message.startswith(f"Cannot reach PostgreSQL at {postgres_dsn.where}")
        assert PASSWORD not in str(down.value)
        assert await store.recent_turns(conversation.id, 5) == []  # the same store, working


async def _waiting_on_a_lock(admin: asyncpg.Connection, *, besides: int = 0) -> int:
    """The server process of the store's statement that waits for the lock ``admin`` holds."""
    async with asyncio.timeout(WAIT):
        while True:
            pid = await admin.fetchval(
                "SELECT pid FROM pg_stat_activity WHERE application_name = 'rtxrelay' "
                "AND wait_event_type = 'Lock' AND pid <> $1", besides)
            if pid is not None:
                return int(pid)
            await asyncio.sleep(0.01)


async def test_a_write_whose_connection_dies_is_not_run_again_and_a_read_is(
        postgres: PostgresServer, postgres_dsn: PostgresDsn) -> None:
    async with PostgresStore(postgres_dsn) as store:
        conversation = await store.current(KEY)
        turn_id = await store.add_question(conversation.id, "q")
        admin = await postgres.connect(postgres_dsn.database)
        try:
            async with admin.transaction():  # the statements below wait for this lock
                await admin.execute("LOCK TABLE turns IN ACCESS EXCLUSIVE MODE")
                writing = asyncio.create_task(
                    store.finish_turn(turn_id, status=TurnStatus.COMPLETE, answer="a"))
                killed = await _waiting_on_a_lock(admin)
                await admin.execute("SELECT pg_terminate_backend($1)", killed)
                # Not run again: a second run would wait for the lock until this block ends.
                with pytest.raises(StorageError) as lost:
                    await asyncio.wait_for(writing, WAIT)
            assert lost.value.message.startswith(
                f"Cannot reach PostgreSQL at {postgres_dsn.where}")
            (turn,) = await store.recent_turns(conversation.id, 5)
            assert turn.status is TurnStatus.PENDING and turn.answer is None

            async with admin.transaction():
                await admin.execute("LOCK TABLE turns IN ACCESS EXCLUSIVE MODE")
                reading = asyncio.create_task(store.recent_turns(conversation.id, 5))
                killed = await _waiting_on_a_lock(admin)
                await admin.execute("SELECT pg_terminate_backend($1)", killed)
                await _waiting_on_a_lock(admin, besides=killed)  # asked again, elsewhere
            assert [t.id for t in await asyncio.wait_for(reading, WAIT)] == [turn_id]
        finally:
            await admin.close()
        await store.finish_turn(turn_id, status=TurnStatus.COMPLETE, answer="a")
        assert (await store.recent_turns(conversation.id, 1))[0].answer == "a"


async def test_nul_is_stored_as_the_replacement_character(postgres_dsn: PostgresDsn) -> None:
    async with PostgresStore(postgres_dsn) as store:  # PostgreSQL's TEXT cannot hold NUL
        conversation = await store.current("telegram:1:\x00")
        assert conversation.key == "telegram:1:\ufffd"
        assert await store.current("telegram:1:\x00") == conversation
        await store.add_question(conversation.id, "a\x00b")
        (turn,) = await store.recent_turns(conversation.id, 1)
        assert turn.question == "a\ufffdb"


async def test_several_statements_commit_together_and_an_error_shows_no_row(
        postgres_dsn: PostgresDsn) -> None:
    """``_transaction()``: the way in for code built on the store (several statements, one
    commit); an SQL error becomes a StorageError that quotes no row (rows hold questions)."""
    async with PostgresStore(postgres_dsn) as store:
        conversation = await store.current(KEY)
        turn_id = await store.add_question(conversation.id, "a private question")
        async with store._transaction() as con:
            await con.execute("UPDATE turns SET answer = 'one' WHERE id = $1", turn_id)
            await con.execute("UPDATE turns SET status = 'complete' WHERE id = $1", turn_id)
        with pytest.raises(StorageError) as failed:
            async with store._transaction() as con:
                await con.execute("UPDATE turns SET answer = 'two' WHERE id = $1", turn_id)
                await con.execute("UPDATE turns SET status = 'bogus' WHERE id = $1", turn_id)
        assert failed.value.message.startswith(f"PostgreSQL error on {postgres_dsn.where}: ")
        assert "(SQLSTATE 23514)" in failed.value.message  # a check constraint
        assert "private question" not in str(failed.value)
        (turn,) = await store.recent_turns(conversation.id, 1)
        assert (turn.answer, turn.status) == ("one", TurnStatus.COMPLETE)
