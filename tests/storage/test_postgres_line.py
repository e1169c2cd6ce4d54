"""The line shared through PostgreSQL (storage/postgres_line.py), against a real server: two
pools on one database stand for two rtxrelay processes (each its own store, connections and
lease) in front of the same backends."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import pytest

from rtxrelay.core.conversation import Busy, ConversationService, Finished
from rtxrelay.core.errors import BackendError, BackendErrorKind
from rtxrelay.core.pool import Member, MemberState
from rtxrelay.core.store import ConversationKey, TurnStatus
from rtxrelay.storage.dsn import PostgresDsn
from rtxrelay.storage.postgres_line import PostgresPool
from rtxrelay.storage.postgres_store import PostgresStore
from tests.core.test_pool import Held
from tests.support.postgres import PostgresServer

WAIT = 15.0

Process = tuple[PostgresStore, PostgresPool]


@contextlib.asynccontextmanager
async def process(dsn: PostgresDsn, owner: str, *backends: Held, heartbeat: float = 0.2,
                  lease: float = 60.0) -> AsyncIterator[Process]:
    """One "rtxrelay process": its store and its pool of ``backends`` (one slot each)."""
    async with PostgresStore(dsn, owner=owner) as store:
        pool = PostgresPool([Member(b.name, b, 1) for b in backends], store,
                            probe_interval=0.05, heartbeat=heartbeat, lease=lease)
        await pool.start()
        try:
            yield store, pool
        finally:
            await pool.close()


async def until(pool: PostgresPool, condition: Callable[[], bool]) -> None:
    await asyncio.wait_for(pool.until(condition), WAIT)


class Holder:
    """A slot taken in a task and held until ``release`` (an answer in progress)."""

    def __init__(self, pool: PostgresPool, **options: object) -> None:
        self.positions: list[int] = []
        self.member: asyncio.Future[Member] = asyncio.get_running_loop().create_future()
        self.release = asyncio.Event()
        self.task = asyncio.create_task(self._hold(pool, options))

    async def _hold(self, pool: PostgresPool, options: dict[str, object]) -> None:
        async with pool.slot(self.positions.append, **options) as member:  # type: ignore[arg-type]
            self.member.set_result(member)
            await self.release.wait()

    async def got(self) -> str:
        return (await asyncio.wait_for(asyncio.shield(self.member), WAIT)).name

    async def done(self) -> None:
        self.release.set()
        await asyncio.wait_for(self.task, WAIT)


async def test_two_processes_share_the_slots_and_one_line(postgres_dsn: PostgresDsn) -> None:
    a, b = Held("a"), Held("b")
    async with process(postgres_dsn, "p1", a, b) as (_, p1), \
            process(postgres_dsn, "p2", a, b) as (_, p2):
        first = Holder(p1)
        assert await first.got() == "a"
        # p2 sees a taken by p1: its question goes to the idle backend, never behind a.
        second = Holder(p2)
        assert await second.got() == "b"
        # Both busy: one more from each process waits in the one line, positions counted
        # over both.
        third = Holder(p2)
        await until(p2, lambda: p2.line == (2, 1))
        fourth = Holder(p1)
        await until(p1, lambda: p1.line == (2, 2))
        await until(p1, lambda: fourth.positions[-1:] == [2])
        await until(p2, lambda: third.positions[-1:] == [1])
        # p1's answer ends: the slot goes to the head of the line, p2's job.
        await first.done()
        assert await third.got() == "a"
        await until(p1, lambda: fourth.positions[-1:] == [1])
        await second.done()
        assert await fourth.got() == "b"
        await third.done()
        await fourth.done()
        await until(p1, lambda: p1.line == (0, 0))


async def test_one_answer_per_conversation_across_processes(postgres_dsn: PostgresDsn) -> None:
    a = Held("a")
    a.go.clear()
    key = ConversationKey("telegram", "1", "ada")
    async with process(postgres_dsn, "p1", a) as (store1, p1), \
            process(postgres_dsn, "p2", a) as (store2, p2):
        one, two = ConversationService(p1, store1), ConversationService(p2, store2)
        running = asyncio.create_task(_drain(one, key, "first"))
        await asyncio.wait_for(a.started.wait(), WAIT)
        # The same person asking through the other process (the API beside the bots) waits
        # for their first answer, as in one process.
        assert isinstance((await _drain(two, key, "second"))[-1], Busy)
        a.go.set()
        final = (await asyncio.wait_for(running, WAIT))[-1]
        assert isinstance(final, Finished) and final.status is TurnStatus.COMPLETE
        assert isinstance((await _drain(two, key, "third"))[-1], Finished)


async def _drain(service: ConversationService, key: ConversationKey,
                 question: str) -> list[object]:
    return [u async for u in service.ask(key, question)]


async def test_a_backend_taken_out_by_one_process_is_out_for_all(
        postgres_dsn: PostgresDsn) -> None:
    a, b = Held("a"), Held("b")
    async with process(postgres_dsn, "p1", a, b) as (_, p1), \
            process(postgres_dsn, "p2", a, b) as (_, p2):
        a.up = False
        p1.take_out(p1.members[0], BackendError(BackendErrorKind.UNREACHABLE, "a is off"))
        await until(p2, lambda: p2.members[0].state is MemberState.DOWN)
        assert p2.members[0].error is not None
        assert p2.members[0].error.kind is BackendErrorKind.UNREACHABLE
        held = Holder(p2)
        assert await held.got() == "b"  # never handed a backend that is out
        await held.done()
        a.up = True  # either process's probe brings it back, for both
        await until(p1, lambda: p1.members[0].state is MemberState.UP)
        await until(p2, lambda: p2.members[0].state is MemberState.UP)


async def test_a_dead_process_frees_what_it_held_and_only_that(
        postgres_dsn: PostgresDsn) -> None:
    a = Held("a")
    async with process(postgres_dsn, "survivor", a, heartbeat=0.1, lease=60.0) as (
            store, survivor):
        # The survivor's own unfinished answer, which recovery must not touch.
        conversation = await store.current("test:1:mine")
        mine = await store.add_question(conversation.id, "mine")
        dead_store = PostgresStore(postgres_dsn, owner="dead")
        await dead_store.open()
        dead = PostgresPool([Member("a", a, 1)], dead_store, heartbeat=0.1, lease=0.5)
        await dead.start()
        theirs = await dead_store.add_question(
            (await dead_store.current("test:1:theirs")).id, "theirs")
        held = Holder(dead)
        assert await held.got() == "a"
        assert await dead.claim("test:1:theirs")
        waiting = Holder(survivor)
        await until(survivor, lambda: survivor.line == (1, 1))
        # The dead process stops without a word (a kill, a power cut): no more heartbeats.
        await _vanish(dead, dead_store)
        assert await waiting.got() == "a"  # its slot came free once its lease lapsed
        assert await survivor.claim("test:1:theirs")  # and its claim
        async with asyncio.timeout(WAIT):
            # A row the survivor's lease task writes right after freeing the slot.
            while (await _status(store, theirs)) is TurnStatus.PENDING:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        assert await _status(store, theirs) is TurnStatus.INTERRUPTED
        assert await _status(store, mine) is TurnStatus.PENDING  # a live process's: untouched
        await waiting.done()
        held.task.cancel()


async def test_a_killed_process_waiting_jobs_never_take_a_backend_from_the_living(
        postgres_dsn: PostgresDsn) -> None:
    """Killed, a process's connections close at once while its lease runs on: its jobs ahead
    in the line are passed over, so the living do not wait out the lease behind idle
    backends. (Heartbeats far apart here: nothing is swept while the test runs.)"""
    a = Held("a")
    async with process(postgres_dsn, "survivor", a, heartbeat=30.0) as (_, survivor):
        dead_store = PostgresStore(postgres_dsn, owner="dead")
        await dead_store.open()
        dead = PostgresPool([Member("a", a, 1)], dead_store, heartbeat=30.0, lease=60.0)
        await dead.start()
        running = Holder(survivor)
        assert await running.got() == "a"
        ahead = Holder(dead)  # first in line ...
        await until(survivor, lambda: survivor.line == (1, 1))
        behind = Holder(survivor)  # ... then the survivor's
        await until(survivor, lambda: survivor.line == (1, 2))
        await _vanish(dead, dead_store)
        await running.done()
        assert await behind.got() == "a"  # not held for the dead process's job
        await behind.done()
        ahead.task.cancel()


async def _vanish(pool: PostgresPool, store: PostgresStore) -> None:
    """Stop a process's line as a kill would: its tasks end, its connections drop, and
    nothing it held is given back."""
    for task in list(pool._tasks):
        task.cancel()
    pool._closing = True
    if pool._listener is not None:
        pool._listener.terminate()
    assert store._pool is not None
    store._pool.terminate()


async def _status(store: PostgresStore, turn: int) -> TurnStatus:
    row = await store._fetchrow("SELECT status FROM turns WHERE id = $1", turn)
    assert row is not None
    return TurnStatus(row[0])


async def test_the_line_goes_on_after_postgresql_restarts(
        postgres: PostgresServer, postgres_dsn: PostgresDsn) -> None:
    a = Held("a")
    async with process(postgres_dsn, "p1", a) as (_, p1), \
            process(postgres_dsn, "p2", a) as (_, p2):
        running = Holder(p1)
        assert await running.got() == "a"
        waiting = Holder(p2)
        await until(p2, lambda: p2.line == (1, 1))
        await postgres.restart()
        # The answer in progress ends after the restart: its slot is freed in the database,
        # and the other process's job, waiting through the restart, gets it.
        await running.done()
        assert await waiting.got() == "a"
        await waiting.done()
        await until(p2, lambda: p2.line == (0, 0))


pytestmark = pytest.mark.timeout(90)
