"""A pool of backends behind one line: dispatch, positions, taking backends out and back in,
jobs moving before they start, never after; history and model requests across backends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from rtxrelay.core.backend import (
    AnswerOptions,
    BackendInfo,
    BackendUpdate,
    Done,
    Exchange,
    Failed,
    Queued,
    Started,
    TextSoFar,
)
from rtxrelay.core.conversation import (
    ConversationService,
    Finished,
    ReplyUpdate,
)
from rtxrelay.core.errors import BackendError, BackendErrorKind
from rtxrelay.core.pool import BackendPool, LineClosed, Member, MemberState
from rtxrelay.core.store import ConversationKey, TurnStatus
from rtxrelay.storage.sqlite_store import SqliteStore

WAIT = 10.0  # seconds any single wait in these tests may take before it is a failure


def key(user: str) -> ConversationKey:
    return ConversationKey("test", "chat", user)


class Held:
    """A backend whose answers wait for the test's go; it can be made to refuse, fail after
    starting, or stall, and its probe and model list follow ``up``."""

    def __init__(self, name: str, models: Sequence[str] = ("m",)) -> None:
        self.name = name
        self.up = True
        self.refuse: BackendErrorKind | None = None  # fail before starting, this way
        self.die_after_start = False
        self.asked: list[tuple[str, list[Exchange]]] = []
        self.started = asyncio.Event()
        self.go = asyncio.Event()
        self.go.set()
        self._models = list(models)

    async def stream_answer(self, question: str, history: Sequence[Exchange], *, session: str,
                            options: AnswerOptions | None = None, read_window: float = 0.0,
                            ) -> AsyncIterator[BackendUpdate]:
        self.asked.append((question, list(history)))
        if self.refuse is not None:
            yield Failed(BackendError(self.refuse, f"{self.name} refused", service=self.name))
            return
        yield Started()
        self.started.set()
        yield TextSoFar(f"{self.name}:", f"{self.name}:")
        await self.go.wait()
        if self.die_after_start:
            yield Failed(BackendError(BackendErrorKind.STOPPED, "gone", service=self.name),
                         f"{self.name}:")
            return
        yield Done(f"{self.name}: {question}", f"{self.name}: {question}")

    async def probe(self) -> BackendInfo:
        if not self.up:
            raise BackendError(BackendErrorKind.UNREACHABLE, f"{self.name} is down")
        return BackendInfo(f"held://{self.name}", "held", "-")

    async def models(self) -> list[str]:
        if not self.up:
            raise BackendError(BackendErrorKind.UNREACHABLE, f"{self.name} is down")
        return self._models


def pool_of(*backends: Held, capacity: int = 1, **intervals: float) -> BackendPool:
    return BackendPool([Member(b.name, b, capacity) for b in backends],
                       probe_interval=intervals.get("probe", 0.01),
                       check_interval=intervals.get("check", 60.0))


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    async with SqliteStore(tmp_path / "pool.db") as s:
        yield s


async def drain(stream: AsyncIterator[ReplyUpdate]) -> list[ReplyUpdate]:
    async with asyncio.timeout(WAIT):
        return [u async for u in stream]


def final(updates: list[ReplyUpdate]) -> Finished:
    last = updates[-1]
    assert isinstance(last, Finished)
    return last


async def test_free_slots_first_then_one_line_with_positions_over_the_whole_pool(
        store: SqliteStore) -> None:
    a, b = Held("a"), Held("b")
    a.go.clear()
    b.go.clear()
    service = ConversationService(pool_of(a, b), store)
    try:
        first = asyncio.create_task(drain(service.ask(key("u1"), "q1")))
        second = asyncio.create_task(drain(service.ask(key("u2"), "q2")))
        async with asyncio.timeout(WAIT):
            await a.started.wait()
            await b.started.wait()  # the second went to the idle backend, not behind the first
        waiting = [asyncio.create_task(drain(service.ask(key(f"w{i}"), f"w{i}")))
                   for i in range(3)]
        await asyncio.wait_for(service.pool.until(lambda: service.line == (2, 3)), WAIT)
        b.go.set()  # b frees its slot: the head of the line takes it, then the next, ...
        results = await asyncio.gather(second, *waiting)
        for updates in results[1:]:
            positions = [u.position for u in updates if isinstance(u, Queued)]
            assert positions and positions[0] in (1, 2, 3) and positions == sorted(
                positions, reverse=True), positions
            assert final(updates).text.startswith("b: ")  # a was busy all along
        assert next(u.position for u in results[3] if isinstance(u, Queued)) == 3
        a.go.set()
        assert final(await first).text == "a: q1"
    finally:
        await service.close()


async def test_a_backend_that_refuses_before_answering_is_taken_out_and_the_job_moves(
        store: SqliteStore) -> None:
    a, b = Held("a"), Held("b")
    a.refuse = BackendErrorKind.UNREACHABLE
    a.up = False
    service = ConversationService(pool_of(a, b), store)
    try:
        done = final(await drain(service.ask(key("u1"), "hello")))
        assert (done.status, done.text) == (TurnStatus.COMPLETE, "b: hello")
        assert [q for q, _ in a.asked] == ["hello"] and [q for q, _ in b.asked] == ["hello"]
        assert service.pool.member("a").state is MemberState.DOWN  # type: ignore[union-attr]
        # While it is out, nothing is sent to it.
        assert final(await drain(service.ask(key("u2"), "again"))).text == "b: again"
        assert len(a.asked) == 1
        # Its probe brings it back in once it answers.
        a.up, a.refuse = True, None
        await asyncio.wait_for(service.pool.until(
            lambda: service.pool.member("a").state is MemberState.UP), WAIT)  # type: ignore[union-attr]
        assert not service.backend_stuck
    finally:
        await service.close()


async def test_the_last_backend_up_is_not_taken_out_the_asker_is_told(
        store: SqliteStore) -> None:
    only = Held("only")
    only.refuse = BackendErrorKind.UNREACHABLE
    service = ConversationService(pool_of(only), store)
    try:
        done = final(await drain(service.ask(key("u1"), "hello")))
        assert done.status is TurnStatus.FAILED and done.error is not None
        assert done.error.kind is BackendErrorKind.UNREACHABLE
        assert service.pool.members[0].state is MemberState.UP and not service.backend_stuck
        only.refuse = None  # started again: the next question is answered at once
        assert final(await drain(service.ask(key("u1"), "again"))).text == "only: again"
    finally:
        await service.close()


async def test_a_question_the_model_cannot_take_does_not_move(store: SqliteStore) -> None:
    a, b = Held("a"), Held("b")
    a.refuse = BackendErrorKind.CONTEXT_TOO_LONG
    service = ConversationService(pool_of(a, b), store)
    try:
        done = final(await drain(service.ask(key("u1"), "long")))
        assert done.error is not None and done.error.kind is BackendErrorKind.CONTEXT_TOO_LONG
        assert b.asked == [] and service.pool.member("a").state is MemberState.UP  # type: ignore[union-attr]
    finally:
        await service.close()


async def test_an_answer_that_started_and_dies_is_reported_never_run_again_elsewhere(
        store: SqliteStore) -> None:
    a, b = Held("a"), Held("b")
    a.die_after_start = True
    service = ConversationService(pool_of(a, b), store)
    try:
        done = final(await drain(service.ask(key("u1"), "hello")))
        assert (done.status, done.text) == (TurnStatus.FAILED, "a:")  # the partial is kept
        assert b.asked == []
    finally:
        await service.close()


class Stalls(Held):
    async def stream_answer(self, question: str, history: Sequence[Exchange], *, session: str,
                            options: AnswerOptions | None = None, read_window: float = 0.0,
                            ) -> AsyncIterator[BackendUpdate]:
        self.asked.append((question, list(history)))
        yield Started()
        self.started.set()
        await self.go.wait()
        yield Failed(BackendError(BackendErrorKind.STUCK, "stalled", service=self.name), "")


async def test_a_stall_takes_one_backend_out_and_the_line_goes_on_with_the_others(
        store: SqliteStore) -> None:
    stuck, good = Stalls("stuck"), Held("good")
    stuck.go.clear()
    good.go.clear()
    service = ConversationService(pool_of(stuck, good), store)
    try:
        on_stuck = asyncio.create_task(drain(service.ask(key("u1"), "q1")))
        on_good = asyncio.create_task(drain(service.ask(key("u2"), "q2")))
        async with asyncio.timeout(WAIT):
            await stuck.started.wait()
            await good.started.wait()
        behind = asyncio.create_task(drain(service.ask(key("u3"), "q3")))
        await asyncio.wait_for(service.pool.until(lambda: service.line == (2, 1)), WAIT)
        stuck.up = False
        stuck.go.set()
        failed = final(await on_stuck)
        assert failed.error is not None and failed.error.kind is BackendErrorKind.STUCK
        assert not service.backend_stuck  # one backend still answers: the line stays open
        good.go.set()
        assert final(await on_good).text == "good: q2"
        assert final(await behind).text == "good: q3"  # it waited for good, never for stuck
        assert [q for q, _ in stuck.asked] == ["q1"]
    finally:
        await service.close()


async def test_when_every_backend_is_down_the_line_is_closed_until_one_is_back() -> None:
    a, b = Stalls("a"), Stalls("b")
    a.up = b.up = False  # their probes fail until the test says otherwise
    pool = pool_of(a, b)
    pool.take_out(pool.members[0], BackendError(BackendErrorKind.STUCK, "a stalled"))
    async with pool.slot() as member:
        assert member.name == "b"
        waiting = asyncio.create_task(pool.slot().__aenter__())
        await asyncio.wait_for(pool.until(lambda: pool.line == (1, 1)), WAIT)
        pool.take_out(member, BackendError(BackendErrorKind.STUCK, "b stalled"))
        with pytest.raises(LineClosed):
            await asyncio.wait_for(waiting, WAIT)
    assert pool.closed
    with pytest.raises(LineClosed):
        async with pool.slot():
            pass
    a.up = True
    await asyncio.wait_for(pool.until(lambda: not pool.closed), WAIT)  # a's probe answered
    async with pool.slot() as member:
        assert member.name == "a"
    await pool.close()


async def test_a_conversation_moves_between_backends_with_its_history(
        store: SqliteStore) -> None:
    a, b = Held("a"), Held("b")
    service = ConversationService(pool_of(a, b), store)
    try:
        assert final(await drain(service.ask(key("u1"), "first"))).text == "a: first"
        # Its last backend is preferred while free ...
        assert final(await drain(service.ask(key("u1"), "second"))).text == "a: second"
        # ... but never waited for: with a busy, the third question goes to b, history and all.
        a.go.clear()
        a.started.clear()
        other = asyncio.create_task(drain(service.ask(key("u2"), "other")))
        await asyncio.wait_for(a.started.wait(), WAIT)
        assert final(await drain(service.ask(key("u1"), "third"))).text == "b: third"
        assert b.asked[-1] == ("third", [Exchange("first", "a: first"),
                                         Exchange("second", "a: second")])
        a.go.set()
        await other
    finally:
        await service.close()


async def test_a_request_for_a_model_goes_to_a_backend_that_serves_it(
        store: SqliteStore) -> None:
    a, b = Held("a", models=["small"]), Held("b", models=["big"])
    pool = pool_of(a, b)
    for member in pool.members:
        assert await pool.check(member) is None  # learns each one's models
    service = ConversationService(pool, store)
    try:
        for _ in range(2):
            updates = await drain(service.complete("hi", [], AnswerOptions(model="big")))
            assert final(updates).text == "b: hi"
        assert a.asked == []
    finally:
        await service.close()


async def test_a_job_cancelled_while_waiting_or_as_it_is_handed_a_slot_gives_it_back() -> None:
    pool = pool_of(Held("a"))
    async with pool.slot():
        waiting = asyncio.create_task(pool.slot().__aenter__())
        await asyncio.wait_for(pool.until(lambda: pool.line == (1, 1)), WAIT)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert pool.line == (1, 0)
        handed = asyncio.create_task(pool.slot().__aenter__())
        await asyncio.wait_for(pool.until(lambda: pool.line == (1, 1)), WAIT)
    # The slot was just handed to ``handed``; cancel it before it runs: the slot comes back.
    handed.cancel()
    with pytest.raises(asyncio.CancelledError):
        await handed
    assert pool.line == (0, 0)
    await pool.close()


async def test_an_idle_backend_that_went_away_is_found_by_the_pool_checks() -> None:
    a, b = Held("a"), Held("b")
    pool = pool_of(a, b, check=0.01, probe=0.01)
    pool.watch()
    try:
        a.up = False
        await asyncio.wait_for(pool.until(lambda: pool.members[0].state is MemberState.DOWN),
                               WAIT)
        assert pool.members[0].error is not None
        a.up = True
        await asyncio.wait_for(pool.until(lambda: pool.members[0].state is MemberState.UP),
                               WAIT)
    finally:
        await pool.close()


def test_a_pool_needs_backends_with_distinct_names_and_slots() -> None:
    with pytest.raises(ValueError, match="at least one"):
        BackendPool([])
    with pytest.raises(ValueError, match="differ"):
        BackendPool([Member("x", Held("x"), 1), Member("x", Held("y"), 1)])
    with pytest.raises(ValueError, match="slot"):
        BackendPool([Member("x", Held("x"), 0)])
