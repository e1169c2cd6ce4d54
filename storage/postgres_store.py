"""``ConversationStore`` on PostgreSQL through asyncpg: several rtxrelay processes, one database.

The contract, the schema's numbered steps and the texts are SQLite's (``sqlite_store.py``); the
same tests run on both (tests/storage/test_store_contract.py). What differs is said here.

Connections: a small pool (1 to 4). Each call takes a connection for one statement, in
autocommit, as the SQLite store runs each statement on its own. ``_connection()`` and
``_transaction()`` are the way in for code that needs several statements on one connection.

A restarted PostgreSQL needs no restart of rtxrelay. What is retried, and why:

- Taking a connection from the pool, for up to ``reconnect_within`` seconds, while the server
  cannot be reached or says it is starting up or shutting down: nothing has been sent yet, and
  a restart takes a few seconds, so the caller just waits (a dead connection in the pool is
  replaced there too). After that the call fails with a StorageError naming host:port.
- A read (SELECT) whose connection dies under it, once, on a fresh connection: it changed
  nothing, so running it again cannot do anything twice. Not one that timed out
  (``COMMAND_TIMEOUT``): it has already kept its caller waiting long enough.
- A write whose connection dies under it is NOT run again: its commit may have reached the
  server just before the connection died, and a question or an answer stored twice is worse
  than the StorageError the caller reports. The next call starts on a fresh connection.
- Nothing else: a refused password, a missing database, an SQL error fail at once.
- ``open()`` fails at once when the server cannot be reached (a wrong host or port should say
  so now, not in ten seconds); it waits only while the server says it is starting up.

Errors name ``host:port/database`` (``PostgresDsn.where``), never the password, and never
include what a row holds (PostgreSQL's DETAIL texts can quote one: questions are private).

Text: PostgreSQL's TEXT cannot hold NUL (U+0000), which SQLite keeps. It is written as U+FFFD
(the replacement character), so a question with one is stored rather than refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from types import TracebackType
from typing import TypeAlias

import asyncpg
from asyncpg import Record
from asyncpg.pool import Pool, PoolConnectionProxy

from rtxrelay.core.backend import Usage
from rtxrelay.core.errors import StorageError
from rtxrelay.core.i18n import Language
from rtxrelay.core.store import Conversation, MessageRef, StaleAnswer, Turn, TurnStatus

from .dsn import PostgresDsn
from .postgres_migrations import MIGRATIONS, VERSION_TABLE
from .rows import TURN_COLUMNS, TURN_COLUMNS_OF_T, stale_answers, statements, turn_of

log = logging.getLogger(__name__)

Connection: TypeAlias = "PoolConnectionProxy[Record]"

POOL_MIN, POOL_MAX = 1, 4  # a process asks a few statements at once: its bots' answers
CONNECT_TIMEOUT = 5.0  # seconds for one connection attempt (TCP, TLS, authentication)
# A statement unanswered this long (a server gone without closing its connections) fails
# instead of holding an answer forever. Every statement here takes milliseconds.
COMMAND_TIMEOUT = 60.0
# pg_advisory_xact_lock's key while migrating: "rtxrelay" as 8 bytes. Held per step, so two
# processes opening a fresh database at once run each step once.
MIGRATION_LOCK = int.from_bytes(b"rtxrelay", "big")

# The server is not there right now: down, restarting, or the network between. OSError covers
# refused and reset connections, timeouts and DNS; class 08 is PostgresConnectionError.
_SERVER_AWAY: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.CannotConnectNowError,  # 57P03: starting up or shutting down
    asyncpg.exceptions.AdminShutdownError,  # 57P01: a fast or smart shutdown
    asyncpg.exceptions.CrashShutdownError,  # 57P02: another backend crashed
)
# Everything the driver raises; mapped to StorageError once, here.
_DRIVER_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.exceptions.InternalClientError,
    OSError)


class PostgresStore:
    def __init__(self, dsn: PostgresDsn | str, *, owner: str = "",
                 reconnect_within: float = 10.0) -> None:
        """``owner``: this process, as recorded with every turn it asks (see
        ``recover_pending``). ``reconnect_within``: how long a call waits for a server that
        went away (see the module's docstring)."""
        self.dsn = dsn if isinstance(dsn, PostgresDsn) else PostgresDsn.parse(dsn)
        self.owner = owner
        self.reconnect_within = reconnect_within
        self._pool: Pool[Record] | None = None

    async def __aenter__(self) -> PostgresStore:
        await self.open()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def open(self) -> None:
        try:
            self._pool = await self._create_pool()
            await self._migrate()
        except StorageError:
            await self.close()
            raise
        except _DRIVER_ERRORS as exc:
            await self.close()
            raise self._explain(exc) from exc

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            try:
                await asyncio.wait_for(pool.close(), COMMAND_TIMEOUT)
            except _DRIVER_ERRORS:  # TimeoutError included: it is an OSError
                pool.terminate()  # a server already gone: nothing to say goodbye to

    # -- ConversationStore --------------------------------------------------------------------

    async def current(self, key: str) -> Conversation:
        row = await self._fetchrow(
            "SELECT id, key, session FROM conversations WHERE key = $1 AND closed_at IS NULL "
            "ORDER BY id DESC LIMIT 1",
            key,
        )
        if row is not None:
            return Conversation(int(row[0]), str(row[1]), str(row[2]))
        return await self._new_conversation(key)

    async def reset(self, key: str) -> Conversation:
        await self._execute(
            "UPDATE conversations SET closed_at = $1 WHERE key = $2 AND closed_at IS NULL",
            time.time(), key,
        )
        return await self._new_conversation(key)

    async def recent_turns(self, conversation_id: int, limit: int) -> list[Turn]:
        rows = await self._fetch(
            f"SELECT {TURN_COLUMNS} FROM turns WHERE conversation_id = $1 "
            "ORDER BY id DESC LIMIT $2",
            conversation_id, max(0, limit),
        )
        return [turn_of(r) for r in reversed(rows)]

    async def add_question(self, conversation_id: int, question: str) -> int:
        return await self._insert(
            "INSERT INTO turns (conversation_id, question, status, created_at, owner) "
            "VALUES ($1, $2, $3, $4, $5) RETURNING id",
            conversation_id, question, TurnStatus.PENDING.value, time.time(), self.owner,
        )

    async def finish_turn(
        self,
        turn_id: int,
        *,
        status: TurnStatus,
        answer: str,
        backend_answer: str | None = None,
        error: str | None = None,
        usage: Usage | None = None,
    ) -> None:
        await self._execute(
            "UPDATE turns SET status = $1, answer = $2, backend_answer = $3, error = $4, "
            "finished_at = $5, prompt_tokens = $6, completion_tokens = $7 WHERE id = $8",
            status.value, answer, backend_answer, error, time.time(),
            usage.prompt_tokens if usage else None, usage.completion_tokens if usage else None,
            turn_id,
        )

    async def set_status(self, turn_id: int, status: TurnStatus) -> None:
        await self._execute("UPDATE turns SET status = $1 WHERE id = $2", status.value, turn_id)

    async def save_partial(self, turn_id: int, answer: str) -> None:
        await self._execute("UPDATE turns SET answer = $1 WHERE id = $2 AND status = $3",
                            answer, turn_id, TurnStatus.PENDING.value)

    async def add_message(self, turn_id: int, ref: MessageRef) -> None:
        await self._execute(
            "INSERT INTO messages (turn_id, platform, chat, message) VALUES ($1, $2, $3, $4)",
            turn_id, ref.platform, ref.chat, ref.message)

    async def stale_answers(self, platform: str) -> list[StaleAnswer]:
        rows = await self._fetch(
            "SELECT t.id, COALESCE(t.answer, ''), m.platform, m.chat, m.message "
            "FROM turns t JOIN messages m ON m.turn_id = t.id "
            "WHERE t.stale = 1 AND m.platform = $1 ORDER BY t.id, m.rowid", platform)
        return stale_answers(rows)

    async def mark_told(self, turn_id: int) -> None:
        await self._execute("UPDATE turns SET stale = 0 WHERE id = $1", turn_id)

    async def recover_pending(self, is_alive: Callable[[str], bool]) -> int:
        rows = await self._fetch("SELECT DISTINCT owner FROM turns WHERE status = $1",
                                 TurnStatus.PENDING.value)
        # Turns from before owners were recorded (NULL) have no process left to wait for.
        gone = [row[0] for row in rows if not row[0] or not is_alive(str(row[0]))]
        recovered = 0
        for owner in gone:
            status = await self._execute(
                "UPDATE turns SET status = $1, error = 'rtxrelay stopped before the answer "
                "finished', finished_at = $2, stale = 1 "
                "WHERE status = $3 AND owner IS NOT DISTINCT FROM $4",
                TurnStatus.INTERRUPTED.value, time.time(), TurnStatus.PENDING.value, owner,
            )
            recovered += _row_count(status)
        return recovered

    async def language(self, platform: str, user: str) -> Language | None:
        row = await self._fetchrow(
            "SELECT language FROM user_preferences WHERE platform = $1 AND user_id = $2",
            platform, user)
        if row is None or row[0] is None:
            return None
        try:
            return Language(str(row[0]))
        except ValueError:  # a language a later rtxrelay wrote and this one does not speak
            return None

    async def set_language(self, platform: str, user: str, language: Language | None) -> None:
        await self._execute(
            "INSERT INTO user_preferences (platform, user_id, language, updated_at) "
            "VALUES ($1, $2, $3, $4) ON CONFLICT (platform, user_id) DO UPDATE SET "
            "language = EXCLUDED.language, updated_at = EXCLUDED.updated_at",
            platform, user, language.value if language is not None else None, time.time())

    async def turns_for_key(self, key: str) -> list[Turn]:
        """Every turn of every conversation of ``key`` (for tests and export)."""
        rows = await self._fetch(
            f"SELECT {TURN_COLUMNS_OF_T} "
            "FROM turns t JOIN conversations c ON c.id = t.conversation_id "
            "WHERE c.key = $1 ORDER BY t.id",
            key,
        )
        return [turn_of(r) for r in rows]

    async def check_writable(self) -> None:
        """Write and roll back, so ``doctor`` can tell a read-only server or a user without
        the rights to write."""
        async with self._connection() as con:
            try:
                transaction = con.transaction()
                await transaction.start()
                try:
                    await con.execute(
                        "INSERT INTO conversations (key, session, created_at) "
                        "VALUES ('doctor', 'doctor', 0)")
                finally:
                    await transaction.rollback()
            except _DRIVER_ERRORS as exc:
                raise self._explain(exc) from exc

    # -- for extensions: one connection, or one transaction, for several statements ----------

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[Connection]:
        """A connection of the pool, released after; waits ``reconnect_within`` for a server
        that is away (nothing has been sent on it yet). Driver errors inside are the caller's
        to map (``_explain``)."""
        pool = self._open_pool()
        con = await self._acquire(pool)
        try:
            yield con
        finally:
            await self._release(pool, con)

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[Connection]:
        """Several statements committed together (or not at all); never run again when the
        connection dies, as with every write. Driver errors become StorageError."""
        async with self._connection() as con:
            try:
                async with con.transaction():
                    yield con
            except _DRIVER_ERRORS as exc:
                raise self._explain(exc) from exc

    # -- internals ----------------------------------------------------------------------------

    async def _new_conversation(self, key: str) -> Conversation:
        # Gradio session hashes are short random strings; a fresh one per conversation gives
        # Chat with RTX's chat engine a fresh memory after /reset.
        session = uuid.uuid4().hex[:12]
        conversation_id = await self._insert(
            "INSERT INTO conversations (key, session, created_at) VALUES ($1, $2, $3) "
            "RETURNING id",
            key, session, time.time(),
        )
        return Conversation(conversation_id, _without_nul(key), session)  # as stored

    async def _create_pool(self) -> Pool[Record]:
        """The pool, with its first connection made, so a wrong address, password or database
        name fails here. Retried only while the server says it is starting up."""
        deadline = asyncio.get_running_loop().time() + self.reconnect_within
        for attempt in itertools.count():
            try:
                return await asyncpg.create_pool(
                    self.dsn.url, min_size=POOL_MIN, max_size=POOL_MAX,
                    timeout=CONNECT_TIMEOUT, command_timeout=COMMAND_TIMEOUT,
                    server_settings={"application_name": "rtxrelay"})
            except asyncpg.exceptions.CannotConnectNowError as exc:
                await self._pause(exc, deadline, attempt)
        raise AssertionError("not reached")

    async def _acquire(self, pool: Pool[Record]) -> Connection:
        deadline = asyncio.get_running_loop().time() + self.reconnect_within
        for attempt in itertools.count():
            try:
                return await pool.acquire()
            except _SERVER_AWAY as exc:
                await self._pause(exc, deadline, attempt)
            except _DRIVER_ERRORS as exc:
                raise self._explain(exc) from exc
        raise AssertionError("not reached")

    async def _pause(self, exc: BaseException, deadline: float, attempt: int) -> None:
        """Wait before the next attempt, or raise ``exc`` explained when time is up. The
        delay doubles from 50 ms to at most half a second: a restarted server is used soon."""
        left = deadline - asyncio.get_running_loop().time()
        if left <= 0:
            raise self._explain(exc) from exc
        if attempt == 0:
            log.warning("PostgreSQL at %s is away (%s); trying again for up to %.0f s",
                        self.dsn.where, type(exc).__name__, left)
        await asyncio.sleep(min(0.05 * 2 ** min(attempt, 4), 0.5, left))

    async def _release(self, pool: Pool[Record], con: Connection) -> None:
        try:
            await pool.release(con)
        except _DRIVER_ERRORS:
            # Resetting the connection failed: the pool has dropped it and makes a new one
            # next time. The statement's own outcome is already known, so nothing is lost.
            log.debug("dropped a broken PostgreSQL connection to %s", self.dsn.where)

    def _open_pool(self) -> Pool[Record]:
        if self._pool is None:
            raise StorageError("The conversation store is not open.")
        return self._pool

    async def _fetch(self, sql: str, *args: object) -> list[Record]:
        """A read: run once more on a fresh connection when the connection dies under it."""
        for attempt in (1, 2):
            async with self._connection() as con:
                try:
                    return await con.fetch(sql, *_clean(args))
                except _SERVER_AWAY as exc:
                    if attempt == 2 or isinstance(exc, TimeoutError):
                        raise self._explain(exc) from exc
                    log.info("lost the connection to PostgreSQL at %s; reading again",
                             self.dsn.where)
                except _DRIVER_ERRORS as exc:
                    raise self._explain(exc) from exc
        raise AssertionError("not reached")

    async def _fetchrow(self, sql: str, *args: object) -> Record | None:
        rows = await self._fetch(sql, *args)
        return rows[0] if rows else None

    async def _execute(self, sql: str, *args: object) -> str:
        """A write, never run again (see the module's docstring); returns its status line
        (``UPDATE 3``)."""
        async with self._connection() as con:
            try:
                return await con.execute(sql, *_clean(args))
            except _DRIVER_ERRORS as exc:
                raise self._explain(exc) from exc

    async def _insert(self, sql: str, *args: object) -> int:
        """A write ``… RETURNING id``: the new row's id."""
        async with self._connection() as con:
            try:
                new_id = await con.fetchval(sql, *_clean(args))
            except _DRIVER_ERRORS as exc:
                raise self._explain(exc) from exc
        assert new_id is not None
        return int(new_id)

    async def _migrate(self) -> None:
        """Each step in its own transaction, under a lock every rtxrelay process takes: the
        second of two processes opening a fresh database waits, then finds the step done."""
        async with self._connection() as con:
            while True:
                async with con.transaction():
                    await con.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
                    version = await _schema_version(con)
                    if version > len(MIGRATIONS):
                        raise StorageError(
                            f"The database {self.dsn.where} has schema version {version}, "
                            f"newer than this rtxrelay knows ({len(MIGRATIONS)}).",
                            hint="Upgrade rtxrelay, or point RTXRELAY_DB at another database.",
                        )
                    if version == len(MIGRATIONS):
                        return
                    for statement in statements(MIGRATIONS[version]):
                        await con.execute(statement)
                    await con.execute(
                        f"INSERT INTO {VERSION_TABLE} (version, applied_at) VALUES ($1, $2)",
                        version + 1, time.time())
                log.info("database %s: schema version %d", self.dsn.where, version + 1)

    def _explain(self, exc: BaseException) -> StorageError:
        dsn = self.dsn
        where, server = dsn.where, dsn.where.rsplit("/", 1)[0]
        user = dsn.user or "(the default user)"
        if isinstance(exc, asyncpg.exceptions.InvalidPasswordError):
            return StorageError(
                f"PostgreSQL at {where} refused the password of user {user}.",
                hint="Check the user and password in RTXRELAY_DB (the password is not shown "
                "here; write @, / and : in it as %40, %2F and %3A).")
        if isinstance(exc, asyncpg.exceptions.InvalidAuthorizationSpecificationError):
            return StorageError(
                f"PostgreSQL at {where} does not let user {user} connect.",
                hint="Check the user in RTXRELAY_DB, and that the server's pg_hba.conf lets "
                "it connect from this machine.")
        if isinstance(exc, asyncpg.exceptions.InvalidCatalogNameError):
            return StorageError(
                f"The database {dsn.database} does not exist on PostgreSQL at {server}.",
                hint=f"Create it (createdb -O {dsn.user or 'USER'} {dsn.database}, or CREATE "
                f"DATABASE in psql) or fix its name in RTXRELAY_DB.")
        if isinstance(exc, asyncpg.exceptions.InsufficientPrivilegeError):
            return StorageError(
                f"User {user} may not create or write rtxrelay's tables in {where}.",
                hint=f"Make it the database's owner (ALTER DATABASE {dsn.database} OWNER TO "
                f"{dsn.user or 'USER'}) or grant it the rights on the schema and tables.")
        if isinstance(exc, asyncpg.exceptions.ReadOnlySQLTransactionError):
            return StorageError(
                f"PostgreSQL at {where} accepts no writes (a standby, or "
                "default_transaction_read_only).",
                hint="Point RTXRELAY_DB at the primary server.")
        if isinstance(exc, asyncpg.exceptions.TooManyConnectionsError):
            return StorageError(
                f"PostgreSQL at {server} has no free connection.",
                hint=f"Raise its max_connections or stop other clients; each rtxrelay process "
                f"uses up to {POOL_MAX}.")
        if isinstance(exc, _SERVER_AWAY):
            return StorageError(
                f"Cannot reach PostgreSQL at {where} ({_reason(exc)}).",
                hint="Is PostgreSQL running there, listening on that address and port "
                "(listen_addresses, port)? Check the host and port in RTXRELAY_DB.")
        if isinstance(exc, asyncpg.PostgresError):
            # The primary message only: a DETAIL can quote a row, and rows hold questions.
            return StorageError(f"PostgreSQL error on {where}: "
                                f"{_dsn_safe(dsn, exc.args[0] if exc.args else '')} "
                                f"(SQLSTATE {exc.sqlstate}).")
        return StorageError(f"Database error on {where}: {_dsn_safe(dsn, str(exc))}.")


def _dsn_safe(dsn: PostgresDsn, text: object) -> str:
    """``text`` without the password, in case a library put the connection string in it."""
    text = str(text)
    return text.replace(dsn.password, "***") if dsn.password else text


def _reason(exc: BaseException) -> str:
    if isinstance(exc, asyncpg.exceptions.CannotConnectNowError):
        return "it is starting up or shutting down"
    if isinstance(exc, (asyncpg.exceptions.AdminShutdownError,
                        asyncpg.exceptions.CrashShutdownError)):
        return "the server closed the connection: a shutdown, a restart or an operator"
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return "the connection was lost"


async def _schema_version(con: Connection) -> int:
    """The last step applied, 0 for a new database (whose version table is made here, under
    the migration lock: CREATE TABLE IF NOT EXISTS is not safe from two processes at once)."""
    if await con.fetchval(f"SELECT to_regclass('{VERSION_TABLE}')") is None:
        await con.execute(f"CREATE TABLE {VERSION_TABLE} (version INTEGER PRIMARY KEY, "
                          "applied_at DOUBLE PRECISION NOT NULL)")
        return 0
    return int(await con.fetchval(f"SELECT COALESCE(max(version), 0) FROM {VERSION_TABLE}"))


def _clean(args: tuple[object, ...]) -> tuple[object, ...]:
    return tuple(_without_nul(a) if isinstance(a, str) else a for a in args)


def _without_nul(text: str) -> str:
    """PostgreSQL's TEXT holds no NUL: written as U+FFFD (see the module's docstring)."""
    return text.replace("\x00", "\ufffd")


def _row_count(status: str) -> int:
    """The row count of a status line such as ``UPDATE 3``."""
    count = status.rsplit(" ", 1)[-1]
    return int(count) if count.isdigit() else 0


