"""``ConversationStore`` on SQLite through aiosqlite: one file, WAL, versioned schema.

WAL lets ``rtxrelay chat`` read a history while the bots write to it; ``busy_timeout`` turns a
briefly locked file into a short wait instead of an error. The schema version lives in
``PRAGMA user_version`` and every migration runs in its own transaction.
"""

from __future__ import annotations

import os
import sqlite3
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

import aiosqlite

from rtxrelay.core.backend import Usage
from rtxrelay.core.errors import StorageError
from rtxrelay.core.i18n import Language
from rtxrelay.core.store import Conversation, MessageRef, StaleAnswer, Turn, TurnStatus

from .migrations import MIGRATIONS
from .rows import TURN_COLUMNS, TURN_COLUMNS_OF_T, stale_answers, statements, turn_of


class SqliteStore:
    def __init__(self, path: str | Path, *, owner: str = "", busy_timeout_ms: int = 5000) -> None:
        """``owner``: this process, as recorded with every turn it asks (see
        ``recover_pending``)."""
        self.path = Path(path)
        self.owner = owner
        self._busy_timeout_ms = busy_timeout_ms
        self._db: aiosqlite.Connection | None = None

    async def __aenter__(self) -> SqliteStore:
        await self.open()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def open(self) -> None:
        memory = str(self.path) == ":memory:"
        try:
            if not memory:
                _create_private(self.path)
            self._db = await aiosqlite.connect(str(self.path), isolation_level=None)
            await self._db.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_ms)}")
            if not memory:
                await self._db.execute("PRAGMA journal_mode = WAL")
            await self._db.execute("PRAGMA foreign_keys = ON")
            await self._migrate()
        except StorageError:
            await self.close()
            raise
        except (sqlite3.Error, OSError) as exc:
            await self.close()
            raise self._explain(exc) from exc

    async def close(self) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            await db.close()

    # -- ConversationStore --------------------------------------------------------------------

    async def current(self, key: str) -> Conversation:
        row = await self._one(
            "SELECT id, key, session FROM conversations WHERE key = ? AND closed_at IS NULL "
            "ORDER BY id DESC LIMIT 1",
            (key,),
        )
        if row is not None:
            return Conversation(int(row[0]), str(row[1]), str(row[2]))
        return await self._new_conversation(key)

    async def reset(self, key: str) -> Conversation:
        await self._write(
            "UPDATE conversations SET closed_at = ? WHERE key = ? AND closed_at IS NULL",
            (time.time(), key),
        )
        return await self._new_conversation(key)

    async def recent_turns(self, conversation_id: int, limit: int) -> list[Turn]:
        rows = await self._all(
            f"SELECT {TURN_COLUMNS} FROM turns WHERE conversation_id = ? ORDER BY id DESC LIMIT ?",
            (conversation_id, max(0, limit)),
        )
        return [turn_of(r) for r in reversed(rows)]

    async def add_question(self, conversation_id: int, question: str) -> int:
        cursor = await self._write(
            "INSERT INTO turns (conversation_id, question, status, created_at, owner) "
            "VALUES (?, ?, ?, ?, ?)",
            (conversation_id, question, TurnStatus.PENDING.value, time.time(), self.owner),
        )
        assert cursor is not None and cursor.lastrowid is not None
        return int(cursor.lastrowid)

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
        await self._write(
            "UPDATE turns SET status = ?, answer = ?, backend_answer = ?, error = ?, "
            "finished_at = ?, prompt_tokens = ?, completion_tokens = ? WHERE id = ?",
            (status.value, answer, backend_answer, error, time.time(),
             usage.prompt_tokens if usage else None, usage.completion_tokens if usage else None,
             turn_id),
        )

    async def set_status(self, turn_id: int, status: TurnStatus) -> None:
        await self._write("UPDATE turns SET status = ? WHERE id = ?", (status.value, turn_id))

    async def save_partial(self, turn_id: int, answer: str) -> None:
        await self._write("UPDATE turns SET answer = ? WHERE id = ? AND status = ?",
                          (answer, turn_id, TurnStatus.PENDING.value))

    async def add_message(self, turn_id: int, ref: MessageRef) -> None:
        await self._write(
            "INSERT INTO messages (turn_id, platform, chat, message) VALUES (?, ?, ?, ?)",
            (turn_id, ref.platform, ref.chat, ref.message))

    async def stale_answers(self, platform: str) -> list[StaleAnswer]:
        rows = await self._all(
            "SELECT t.id, COALESCE(t.answer, ''), m.platform, m.chat, m.message "
            "FROM turns t JOIN messages m ON m.turn_id = t.id "
            "WHERE t.stale = 1 AND m.platform = ? ORDER BY t.id, m.rowid", (platform,))
        return stale_answers(rows)

    async def mark_told(self, turn_id: int) -> None:
        await self._write("UPDATE turns SET stale = 0 WHERE id = ?", (turn_id,))

    async def recover_pending(self, is_alive: Callable[[str], bool]) -> int:
        rows = await self._all("SELECT DISTINCT owner FROM turns WHERE status = ?",
                               (TurnStatus.PENDING.value,))
        # Turns from before owners were recorded (NULL) have no process left to wait for.
        gone = [row[0] for row in rows if not row[0] or not is_alive(str(row[0]))]
        recovered = 0
        for owner in gone:
            cursor = await self._write(
                "UPDATE turns SET status = ?, error = 'rtxrelay stopped before the answer "
                "finished', finished_at = ?, stale = 1 WHERE status = ? AND owner IS ?",
                (TurnStatus.INTERRUPTED.value, time.time(), TurnStatus.PENDING.value, owner),
            )
            recovered += cursor.rowcount if cursor is not None else 0
        return recovered

    async def language(self, platform: str, user: str) -> Language | None:
        row = await self._one(
            "SELECT language FROM user_preferences WHERE platform = ? AND user_id = ?",
            (platform, user))
        if row is None or row[0] is None:
            return None
        try:
            return Language(str(row[0]))
        except ValueError:  # a language a later rtxrelay wrote and this one does not speak
            return None

    async def set_language(self, platform: str, user: str, language: Language | None) -> None:
        await self._write(
            "INSERT INTO user_preferences (platform, user_id, language, updated_at) "
            "VALUES (?, ?, ?, ?) ON CONFLICT (platform, user_id) DO UPDATE SET "
            "language = excluded.language, updated_at = excluded.updated_at",
            (platform, user, language.value if language is not None else None, time.time()))

    async def turns_for_key(self, key: str) -> list[Turn]:
        """Every turn of every conversation of ``key`` (for tests and export)."""
        rows = await self._all(
            f"SELECT {TURN_COLUMNS_OF_T} "
            "FROM turns t JOIN conversations c ON c.id = t.conversation_id "
            "WHERE c.key = ? ORDER BY t.id",
            (key,),
        )
        return [turn_of(r) for r in rows]

    async def check_writable(self) -> None:
        """Write and roll back, so ``doctor`` can tell a read-only or locked file."""
        db = self._conn()
        try:
            await db.execute("BEGIN IMMEDIATE")
            await db.execute("ROLLBACK")
        except sqlite3.Error as exc:
            raise self._explain(exc) from exc

    # -- internals ----------------------------------------------------------------------------

    async def _new_conversation(self, key: str) -> Conversation:
        # Gradio session hashes are short random strings; a fresh one per conversation gives
        # Chat with RTX's chat engine a fresh memory after /reset.
        session = uuid.uuid4().hex[:12]
        cursor = await self._write(
            "INSERT INTO conversations (key, session, created_at) VALUES (?, ?, ?)",
            (key, session, time.time()),
        )
        assert cursor is not None and cursor.lastrowid is not None
        return Conversation(int(cursor.lastrowid), key, session)

    async def _migrate(self) -> None:
        db = self._conn()
        async with db.execute("PRAGMA user_version") as cursor:
            row = await cursor.fetchone()
        version = int(row[0]) if row else 0
        if version > len(MIGRATIONS):
            raise StorageError(
                f"The database {self.path} has schema version {version}, newer than this "
                f"rtxrelay knows ({len(MIGRATIONS)}).",
                hint="Upgrade rtxrelay, or point RTXRELAY_DB at another file.",
            )
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            await db.execute("BEGIN IMMEDIATE")
            try:
                for statement in statements(script):
                    await db.execute(statement)
                await db.execute(f"PRAGMA user_version = {number}")
                await db.execute("COMMIT")
            except BaseException:
                await db.execute("ROLLBACK")
                raise

    def _conn(self) -> aiosqlite.Connection:
        if self._db is None:
            raise StorageError("The conversation store is not open.")
        return self._db

    async def _write(self, sql: str, params: tuple[object, ...]) -> aiosqlite.Cursor | None:
        try:
            return await self._conn().execute(sql, params)
        except sqlite3.Error as exc:
            raise self._explain(exc) from exc

    async def _one(self, sql: str, params: tuple[object, ...]) -> sqlite3.Row | None:
        try:
            async with self._conn().execute(sql, params) as cursor:
                return await cursor.fetchone()
        except sqlite3.Error as exc:
            raise self._explain(exc) from exc

    async def _all(self, sql: str, params: tuple[object, ...]) -> list[sqlite3.Row]:
        try:
            async with self._conn().execute(sql, params) as cursor:
                return list(await cursor.fetchall())
        except sqlite3.Error as exc:
            raise self._explain(exc) from exc

    def _explain(self, exc: BaseException) -> StorageError:
        text = str(exc).lower()
        if "not a database" in text or "malformed" in text or "corrupt" in text:
            return StorageError(
                f"The database {self.path} is damaged or is not a SQLite file.",
                hint="Move it aside (rtxrelay then starts a new one) or set RTXRELAY_DB to "
                "another path.",
            )
        if "locked" in text or "busy" in text:
            return StorageError(
                f"The database {self.path} is locked by another program.",
                hint="Is another rtxrelay running with the same RTXRELAY_DB? Stop it, or use "
                "another file.",
            )
        if (
            "readonly" in text
            or "read-only" in text
            or "unable to open" in text
            or isinstance(exc, OSError)
        ):
            return StorageError(
                f"Cannot write the database {self.path}.",
                hint="Check the folder exists and is writable, or set RTXRELAY_DB to a path "
                "you can write.",
            )
        return StorageError(f"Database error on {self.path}: {exc}.")


def _create_private(path: Path) -> None:
    """Create the database file readable by its owner only (0600, new folders 0700), and
    tighten a file an earlier version left readable by others: it holds every conversation.
    SQLite gives its -wal and -shm files the database's permissions. On Windows the modes do
    not apply; a file under the user's profile is private to that user by its default ACL."""
    missing = [p for p in reversed(path.absolute().parents) if not p.exists()]
    for folder in missing:
        folder.mkdir(mode=0o700, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    os.close(fd)
    if os.name == "posix" and path.stat().st_mode & 0o077:
        path.chmod(0o600)


