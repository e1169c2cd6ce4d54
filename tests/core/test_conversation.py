"""ConversationService + SqliteStore: persistence, busy guard, job limit, cancel, reset, retry."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import aiohttp
import pytest

from rtxrelay.backends.chatrtx.backend import ChatRtxBackend
from rtxrelay.backends.chatrtx.launch_url import parse_launch_url
from rtxrelay.core.backend import (
    BackendUpdate,
    Done,
    Exchange,
    Failed,
    Queued,
    Started,
    TextSoFar,
)
from rtxrelay.core.conversation import (
    Accepted,
    Busy,
    ConversationLimits,
    ConversationService,
    Finished,
    Rejected,
    ReplyUpdate,
)
from rtxrelay.core.errors import BackendError, BackendErrorKind, StorageError
from rtxrelay.core.store import ConversationKey, TurnStatus
from rtxrelay.storage.sqlite_store import SqliteStore
from tests.replica import fake_model
from tests.replica.launcher import Replica, free_port

ALICE = ConversationKey("telegram", "100", "501")
BOB = ConversationKey("telegram", "100", "502")


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    async with SqliteStore(tmp_path / "relay.db") as s:
        yield s


async def drain(stream: AsyncIterator[ReplyUpdate]) -> list[ReplyUpdate]:
    async with asyncio.timeout(60):
        return [u async for u in stream]


class ScriptedBackend:
    """A backend whose answers the test releases step by step (for concurrency tests)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[Exchange], str]] = []
        self.release = asyncio.Event()
        self.closed = 0

    async def stream_answer(
        self, question: str, history: Sequence[Exchange], *, session: str,
        read_window: float = 0.0,
    ) -> AsyncIterator[BackendUpdate]:
        self.calls.append((question, list(history), session))
        try:
            yield Started()
            yield TextSoFar("partial", "partial")
            await self.release.wait()
            yield Done(f"answer to {question}", f"raw answer to {question}")
        finally:
            self.closed += 1

    async def probe(self) -> None:  # pragma: no cover - not used here
        return None


# -- against the real replica ---------------------------------------------------------------------


async def test_question_persisted_before_the_backend_call_and_answer_after(
    rtx_426: Replica, store: SqliteStore
) -> None:
    async with aiohttp.ClientSession() as http:
        service = ConversationService(ChatRtxBackend(http, parse_launch_url(rtx_426.url)), store)
        first = await drain(service.ask(ALICE, "my name is Ada"))
        second = await drain(service.ask(ALICE, "who am I? [recall]"))
    assert isinstance(first[-1], Finished) and first[-1].status is TurnStatus.COMPLETE
    assert any(isinstance(u, TextSoFar) for u in first)
    final = second[-1]
    assert isinstance(final, Finished) and "- my name is Ada" in final.text
    turns = await store.turns_for_key(str(ALICE))
    assert [t.status for t in turns] == [TurnStatus.COMPLETE, TurnStatus.COMPLETE]
    assert turns[0].backend_answer == fake_model.answer_text("my name is Ada", [])
    # Bob has his own history in the same chat: per-user is the default.
    bob = await drain(ConversationService(_Unused(), store).ask(BOB, ""))
    assert isinstance(bob[-1], Rejected)


async def test_backend_down_loses_nothing(store: SqliteStore) -> None:
    async with aiohttp.ClientSession() as http:
        dead = parse_launch_url(f"http://127.0.0.1:{free_port()}?cookie=x")
        service = ConversationService(ChatRtxBackend(http, dead), store)
        updates = await drain(service.ask(ALICE, "are you there?"))
    final = updates[-1]
    assert isinstance(final, Finished) and final.status is TurnStatus.FAILED
    assert final.error is not None and final.error.kind is BackendErrorKind.UNREACHABLE
    turns = await store.turns_for_key(str(ALICE))
    assert [(t.question, t.status) for t in turns] == [("are you there?", TurnStatus.FAILED)]


async def test_killed_mid_answer_keeps_question_and_partial_answer(store: SqliteStore) -> None:
    async with Replica("4.26", token_delay=0.002) as rtx, aiohttp.ClientSession() as http:
        service = ConversationService(ChatRtxBackend(http, parse_launch_url(rtx.url)), store)
        updates = await drain(service.ask(ALICE, "crash now [die]"))
    final = updates[-1]
    assert isinstance(final, Finished) and final.status is TurnStatus.FAILED
    assert final.error is not None and final.error.kind is BackendErrorKind.STOPPED
    (turn,) = await store.turns_for_key(str(ALICE))
    assert turn.question == "crash now [die]" and turn.status is TurnStatus.FAILED
    assert turn.answer == final.text


# -- concurrency, cancel, reset, retry ------------------------------------------------------------


async def test_second_ask_in_the_same_conversation_is_busy(store: SqliteStore) -> None:
    backend = ScriptedBackend()
    service = ConversationService(backend, store)
    first = service.ask(ALICE, "one")
    assert isinstance(await anext(first), Thinking_or_wait())
    assert service.is_busy(ALICE)
    assert [type(u) for u in await drain(service.ask(ALICE, "two"))] == [Busy]
    backend.release.set()
    rest = await drain(first)
    assert isinstance(rest[-1], Finished) and rest[-1].status is TurnStatus.COMPLETE
    assert not service.is_busy(ALICE)


async def test_global_job_limit_reports_queue_position(store: SqliteStore) -> None:
    backend = ScriptedBackend()
    service = ConversationService(backend, store, ConversationLimits(max_concurrent_jobs=1))
    alice = service.ask(ALICE, "first")
    assert isinstance(await anext(alice), Accepted)  # her question is stored
    await anext(alice)  # Alice holds the only slot
    bob_updates: list[ReplyUpdate] = []
    bob_waiting = asyncio.Event()

    async def bob() -> None:
        async for update in service.ask(BOB, "second"):
            bob_updates.append(update)
            if isinstance(update, Queued):
                bob_waiting.set()

    bob_task = asyncio.create_task(bob())
    async with asyncio.timeout(10):
        await bob_waiting.wait()
    assert bob_updates[1] == Queued(1)  # after Accepted
    assert len(backend.calls) == 1, "Bob must wait in rtxrelay's line, not in the GPU queue"
    backend.release.set()
    await drain(alice)
    async with asyncio.timeout(10):
        await bob_task
    assert isinstance(bob_updates[-1], Finished) and bob_updates[-1].text == "answer to second"


async def test_cancel_finishes_as_interrupted_and_closes_the_backend_stream(
    store: SqliteStore,
) -> None:
    backend = ScriptedBackend()
    service = ConversationService(backend, store)
    stream = service.ask(ALICE, "stop me")
    seen: list[ReplyUpdate] = []
    async with asyncio.timeout(10):
        async for update in stream:
            seen.append(update)
            if isinstance(update, TextSoFar):
                assert service.cancel(ALICE)
    final = seen[-1]
    assert isinstance(final, Finished) and final.status is TurnStatus.INTERRUPTED
    assert final.text == "partial"
    assert backend.closed == 1
    (turn,) = await store.turns_for_key(str(ALICE))
    assert turn.status is TurnStatus.INTERRUPTED and turn.answer == "partial"


async def test_reset_starts_a_new_session_and_retry_supersedes(store: SqliteStore) -> None:
    backend = ScriptedBackend()
    backend.release.set()
    service = ConversationService(backend, store)
    await drain(service.ask(ALICE, "q1"))
    await drain(service.ask(ALICE, "q2"))
    assert [h.question for h in backend.calls[1][1]] == ["q1"]
    await drain(service.retry(ALICE))
    assert backend.calls[2][0] == "q2"
    assert [h.question for h in backend.calls[2][1]] == ["q1"], "the retried turn is not history"
    session_before = backend.calls[2][2]
    await service.reset(ALICE)
    await drain(service.ask(ALICE, "fresh"))
    assert backend.calls[3][1] == [] and backend.calls[3][2] != session_before
    statuses = [t.status for t in await store.turns_for_key(str(ALICE))]
    assert statuses == [TurnStatus.COMPLETE, TurnStatus.SUPERSEDED, TurnStatus.COMPLETE,
                        TurnStatus.COMPLETE]
    empty = ConversationKey("cli", "x", "y")
    assert isinstance((await drain(service.retry(empty)))[-1], Rejected)


async def test_history_window_by_turns_and_characters(store: SqliteStore) -> None:
    backend = ScriptedBackend()
    backend.release.set()
    service = ConversationService(backend, store, ConversationLimits(history_turns=2,
                                                                     history_chars=10_000))
    for i in range(4):
        await drain(service.ask(ALICE, f"q{i}"))
    final = (await drain(service.ask(ALICE, "last")))[-1]
    assert [h.question for h in backend.calls[-1][1]] == ["q2", "q3"]
    assert isinstance(final, Finished) and final.history_trimmed
    tight = ConversationService(backend, store, ConversationLimits(history_chars=30))
    await drain(tight.ask(ALICE, "tiny"))
    assert [h.question for h in backend.calls[-1][1]] == ["last"]  # 22 chars fit, 40 do not


async def test_empty_and_oversized_questions_are_rejected_before_storage(
    store: SqliteStore,
) -> None:
    limits = ConversationLimits(max_question_chars=10)
    service = ConversationService(ScriptedBackend(), store, limits)
    assert isinstance((await drain(service.ask(ALICE, "   ")))[-1], Rejected)
    too_long = (await drain(service.ask(ALICE, "x" * 11)))[-1]
    assert isinstance(too_long, Rejected) and "the limit is 10" in too_long.message
    assert await store.turns_for_key(str(ALICE)) == []


async def test_consumer_going_away_marks_the_turn_interrupted(store: SqliteStore) -> None:
    backend = ScriptedBackend()
    service = ConversationService(backend, store)
    stream = service.ask(ALICE, "abandoned")
    await anext(stream)
    await stream.aclose()  # e.g. the bot shuts down mid-answer
    (turn,) = await store.turns_for_key(str(ALICE))
    assert turn.status is TurnStatus.INTERRUPTED
    assert not service.is_busy(ALICE)


async def test_backend_failure_is_final_and_stored(store: SqliteStore) -> None:
    class Failing(ScriptedBackend):
        async def stream_answer(self, question: str, history: Sequence[Exchange], *,
                                session: str, read_window: float = 0.0
                                ) -> AsyncIterator[BackendUpdate]:
            yield TextSoFar("half", "half")
            yield Failed(BackendError(BackendErrorKind.FAILED, "model crashed"), "half")

    final = (await drain(ConversationService(Failing(), store).ask(ALICE, "q")))[-1]
    assert isinstance(final, Finished) and final.status is TurnStatus.FAILED
    assert final.text == "half"


# -- the store itself -----------------------------------------------------------------------------


@pytest.mark.fault('7', "a second process on the database leaves the running one's answers")
async def test_crash_leftovers_are_marked_interrupted_but_a_running_process_is_left_be(fault,
        tmp_path: Path) -> None:
    path = tmp_path / "relay.db"
    async with SqliteStore(path, owner="crashed") as crashed, \
            SqliteStore(path, owner="running") as running:
        await crashed.add_question((await crashed.current(str(ALICE))).id,
                                   "asked right before a crash")
        await running.add_question((await running.current(str(BOB))).id, "being answered")
    # A second process opens the database while "running" still answers.
    async with SqliteStore(path, owner="second") as second:
        assert await second.recover_pending(lambda owner: owner == "running") == 1
        (turn,) = await second.turns_for_key(str(ALICE))
        assert turn.question == "asked right before a crash"
        assert turn.status is TurnStatus.INTERRUPTED
        (alive,) = await second.turns_for_key(str(BOB))
        assert alive.status is TurnStatus.PENDING
    fault(kept=2)


async def test_schema_is_versioned_and_uses_wal(tmp_path: Path) -> None:
    path = tmp_path / "relay.db"
    async with SqliteStore(path):
        pass
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] >= 1
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        db.execute("PRAGMA user_version = 99")
    with pytest.raises(StorageError) as excinfo:
        async with SqliteStore(path):
            pass
    assert "newer" in excinfo.value.message


async def test_corrupt_database_file_gives_an_actionable_error(tmp_path: Path) -> None:
    path = tmp_path / "relay.db"
    path.write_bytes(b"this is not a database at all" * 100)
    with pytest.raises(StorageError) as excinfo:
        async with SqliteStore(path):
            pass
    assert "damaged" in excinfo.value.message and "RTXRELAY_DB" in excinfo.value.hint
    assert path.read_bytes().startswith(b"this is not"), "the user's file is never overwritten"


async def test_locked_database_gives_an_actionable_error(tmp_path: Path) -> None:
    path = tmp_path / "relay.db"
    async with SqliteStore(path) as store:
        conversation = await store.current(str(ALICE))
        locker = sqlite3.connect(path, isolation_level=None)
        locker.execute("BEGIN EXCLUSIVE")
        try:
            blocked = SqliteStore(path, busy_timeout_ms=100)
            with pytest.raises(StorageError) as excinfo:
                await blocked.open()
                await blocked.add_question(conversation.id, "x")
            assert "locked" in excinfo.value.message
            await blocked.close()
        finally:
            locker.execute("ROLLBACK")
            locker.close()


def Thinking_or_wait() -> tuple[type, ...]:
    return (Accepted, Started, Queued, TextSoFar)


class _Unused:
    def stream_answer(self, *args: object, **kwargs: object) -> AsyncIterator[BackendUpdate]:
        raise AssertionError("an empty question must never reach the backend")

    async def probe(self) -> None:  # pragma: no cover
        return None


async def test_a_stop_set_before_the_job_starts_ends_it_interrupted_and_keeps_the_question(
    tmp_path,
) -> None:
    """Shutdown can stop answers still waiting to begin (the bots' InFlight relies on it)."""
    import asyncio

    from rtxrelay.core.conversation import ConversationService, Finished
    from rtxrelay.core.inflight import InFlight
    from rtxrelay.core.store import ConversationKey, TurnStatus
    from rtxrelay.storage.sqlite_store import SqliteStore

    class NeverCalled:
        async def stream_answer(self, *args: object, **kwargs: object):  # pragma: no cover
            raise AssertionError("a stopped ask must not reach the backend")
            yield

    key = ConversationKey("test", "chat", "user")
    async with SqliteStore(tmp_path / "db.sqlite") as store:
        service = ConversationService(NeverCalled(), store)  # type: ignore[arg-type]
        inflight = InFlight()

        async def reply() -> list[object]:
            with inflight.track() as stop:
                await asyncio.sleep(0)  # shutdown happens here, before the ask starts
                return [u async for u in service.ask(key, "late question", stop=stop)]

        task = asyncio.create_task(reply())
        await asyncio.sleep(0)
        await inflight.stop_all(timeout=5)
        updates = await task
        assert isinstance(updates[-1], Finished)
        assert updates[-1].status is TurnStatus.INTERRUPTED
        (turn,) = await store.turns_for_key(str(key))
        assert turn.question == "late question" and turn.status is TurnStatus.INTERRUPTED
        assert len(inflight) == 0


class StallingBackend:
    """Its first answer stops responding mid-way; probes fail until the test heals it."""

    def __init__(self) -> None:
        self.questions: list[str] = []
        self.healthy = False
        self.probes = 0

    async def stream_answer(
        self, question: str, history: Sequence[Exchange], *, session: str,
        read_window: float = 0.0,
    ) -> AsyncIterator[BackendUpdate]:
        self.questions.append(question)
        yield Started()
        yield TextSoFar("half an", "half an")
        if len(self.questions) == 1:
            yield Failed(BackendError(BackendErrorKind.STUCK, "It stopped sending text."),
                         "half an")
            return
        yield Done("a whole answer", raw="a whole answer")

    async def probe(self) -> None:
        self.probes += 1
        if not self.healthy:
            raise BackendError(BackendErrorKind.STUCK, "still stuck")


@pytest.mark.fault('3', 'a stall: 3 in line told at once, new ones refused, reopened by a probe')
async def test_a_stuck_backend_tells_the_whole_line_at_once_and_reopens_after_a_probe(fault,
    store: SqliteStore,
) -> None:
    backend = StallingBackend()
    service = ConversationService(backend, store, ConversationLimits(
        recovery_probe_interval=0.01))  # type: ignore[arg-type]
    users = [ConversationKey("test", "chat", f"u{i}") for i in range(4)]
    try:
        # One answer runs; two more wait in line behind it.
        results = await asyncio.gather(*(drain(service.ask(key, f"q{i}"))
                                         for i, key in enumerate(users[:3])))
        for updates in results:
            final = updates[-1]
            assert isinstance(final, Finished) and final.status is TurnStatus.FAILED
            assert final.error is not None and final.error.kind is BackendErrorKind.STUCK
            assert "shorter" not in final.error.user_message  # it never blames the question
        # The one that ran keeps its partial answer; the others never reached the backend.
        assert sorted(updates[-1].text for updates in results) == ["", "", "half an"]
        assert len(backend.questions) == 1, "the line was told at once, not sent to wait"
        assert service.backend_stuck
        # New questions are refused fast (stored as failed, never sent) until a probe works.
        (late,) = [u for u in await drain(service.ask(users[3], "q3"))
                   if isinstance(u, Finished)]
        assert late.status is TurnStatus.FAILED and len(backend.questions) == 1
        backend.healthy = True
        await asyncio.wait_for(service.pool.until(lambda: not service.backend_stuck), 10)
        final = (await drain(service.ask(users[3], "again")))[-1]
        assert isinstance(final, Finished) and final.status is TurnStatus.COMPLETE
        assert backend.probes >= 1
    finally:
        await service.close()
    fault(kept=4)
