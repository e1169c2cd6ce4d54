"""Several backends behind one line: each job gets the first free slot anywhere in the pool.

One Chat with RTX answers one question at a time, so a busy server adds PCs (another RTX PC
running ``rtxrelay serve``, an Ollama box). A job waits in one line for the whole pool rather
than in a line per backend: it takes whichever slot frees first, so it never waits behind a
busy backend while another is idle, and its position counts every job ahead of it anywhere.

A backend is *taken out* when it fails before an answer started (refused the connection, a
bad key, a full queue) or stalls mid-answer, and a probe brings it back in. A job that had not
started when its backend failed moves to another one, keeping its place at the head of the
line; an answer that had started and dies is reported, never re-run elsewhere (the asker has
seen part of it). The last backend up is never taken out for a failure before an answer: with
nowhere to move, the job fails and its asker is told, as with one backend; a stall takes it out
all the same, which closes the line (``LineClosed``) until its probe answers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from .backend import Backend
from .errors import BackendError, BackendErrorKind

log = logging.getLogger(__name__)


class LineClosed(Exception):
    """Every backend stopped responding: no slot will come until one answers again."""

    def __init__(self, reason: BaseException) -> None:
        super().__init__(str(reason))
        self.reason = reason


class MemberState(enum.Enum):
    UP = "up"
    DOWN = "down"  # taken out; probed until it answers again


# A failure of these kinds before an answer started says nothing about the question, only
# about the backend: another backend may answer it. (A question too long for the context is
# the question's fault; a cancel is the asker's.)
_QUESTION_FAULTS = frozenset({BackendErrorKind.CONTEXT_TOO_LONG, BackendErrorKind.CANCELLED})


def moves_on(error: BackendError) -> bool:
    """Whether a job whose backend failed this way before answering may try another one."""
    return error.kind not in _QUESTION_FAULTS


@dataclass(eq=False)
class Member:
    """One backend of the pool and its slots."""

    name: str  # as the operator named it; shown by doctor and /health
    backend: Backend
    capacity: int  # answers it generates at once (Chat with RTX: 1)
    state: MemberState = MemberState.UP
    running: int = 0
    error: BackendError | None = None  # why it is down
    models: tuple[str, ...] | None = None  # as it last listed them (None: not asked yet)

    @property
    def free(self) -> int:
        return self.capacity - self.running if self.state is MemberState.UP else 0


@dataclass(frozen=True)
class MemberStatus:
    """A backend as doctor and /health show it."""

    name: str
    state: MemberState
    running: int
    capacity: int
    error: BackendError | None


@dataclass(eq=False)
class Waiter:
    """A job waiting for a slot (here, or as a row of a shared line)."""

    future: asyncio.Future[Member]
    on_position: Callable[[int], None] | None
    prefer: str | None
    accepts: Callable[[Member], bool] | None
    reported: int = 0
    member: Member | None = field(default=None)  # set when a slot is handed over

    def report(self, position: int) -> None:
        if self.on_position is not None and position != self.reported:
            self.reported = position
            self.on_position(position)


class BackendPool:
    def __init__(self, members: Sequence[Member], *, probe_interval: float = 15.0,
                 check_interval: float = 60.0) -> None:
        """``probe_interval``: seconds between probes of a backend taken out.
        ``check_interval``: seconds between checks of each idle backend (a pool of two or more
        only: with one backend, a failure is told to the asker, as it always was)."""
        if not members:
            raise ValueError("a pool needs at least one backend")
        names = [member.name for member in members]
        if len(set(names)) != len(names):
            raise ValueError(f"backend names must differ: {names}")
        if any(member.capacity < 1 for member in members):
            raise ValueError("every backend needs at least one slot")
        self._members = tuple(members)
        self._probe_interval = probe_interval
        self._check_interval = check_interval
        self._line: list[Waiter] = []
        self._closed_by: BackendError | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._probing: dict[str, asyncio.Task[None]] = {}
        self._watchers: list[tuple[Callable[[], bool], asyncio.Future[None]]] = []

    @classmethod
    def single(cls, backend: Backend, capacity: int, *, probe_interval: float = 15.0
               ) -> BackendPool:
        return cls([Member("backend", backend, capacity)], probe_interval=probe_interval)

    @property
    def members(self) -> tuple[Member, ...]:
        return self._members

    @property
    def line(self) -> tuple[int, int]:
        """Answers being generated, and jobs waiting for a slot, over the whole pool."""
        return sum(member.running for member in self._members), len(self._line)

    @property
    def closed(self) -> bool:
        """Every backend is down: questions are refused until one answers again."""
        return self._closed_by is not None

    def statuses(self) -> list[MemberStatus]:
        return [MemberStatus(m.name, m.state, m.running, m.capacity, m.error)
                for m in self._members]

    def member(self, name: str) -> Member | None:
        return next((m for m in self._members if m.name == name), None)

    async def until(self, condition: Callable[[], bool]) -> None:
        """Return once ``condition()`` holds, checked after every change of a backend's state
        or slots (tests, and anything that waits for a backend to come back)."""
        if condition():
            return
        future = asyncio.get_running_loop().create_future()
        watcher = (condition, future)
        self._watchers.append(watcher)
        try:
            await future
        finally:
            if watcher in self._watchers:
                self._watchers.remove(watcher)

    def _changed(self) -> None:
        for watcher in list(self._watchers):
            condition, future = watcher
            if not future.done() and condition():
                self._watchers.remove(watcher)
                future.set_result(None)

    # -- slots ---------------------------------------------------------------------------

    @asynccontextmanager
    async def slot(self, on_position: Callable[[int], None] | None = None, *,
                   prefer: str | None = None, accepts: Callable[[Member], bool] | None = None,
                   first: bool = False) -> AsyncIterator[Member]:
        """Hold one slot of one backend for the block. While waiting, ``on_position`` hears
        the 1-based place in the pool's line. ``prefer``: the backend to take when it has a
        free slot (a conversation's last one: its caches are warm), never worth waiting for.
        ``accepts``: only backends it accepts (the model asked for). ``first``: join at the
        head of the line (a job moved off a failed backend keeps its place)."""
        if self._closed_by is not None:
            raise LineClosed(self._closed_by)
        waiter = Waiter(asyncio.get_running_loop().create_future(), on_position, prefer,
                         accepts)
        if first:
            self._line.insert(0, waiter)
        else:
            self._line.append(waiter)
        self._dispatch()
        try:
            member = await waiter.future
        except BaseException:
            if waiter in self._line:
                self._line.remove(waiter)
            elif waiter.member is not None:  # handed a slot as it was cancelled: give it back
                waiter.member.running -= 1
            self._dispatch()
            raise
        try:
            yield member
        finally:
            member.running -= 1
            self._dispatch()

    def _dispatch(self) -> None:
        """Hand free slots to waiters in line order, then tell the rest their places."""
        for waiter in list(self._line):
            member = self._pick(waiter)
            if member is None:
                continue
            self._line.remove(waiter)
            member.running += 1
            waiter.member = member
            waiter.future.set_result(member)
        for position, waiter in enumerate(self._line, 1):
            waiter.report(position)
        self._changed()

    def _pick(self, waiter: Waiter) -> Member | None:
        usable = [m for m in self._members
                  if m.free > 0 and (waiter.accepts is None or waiter.accepts(m))]
        if not usable:
            return None
        preferred = next((m for m in usable if m.name == waiter.prefer), None)
        # Else the most free slots, spreading answers out; ties go to the first listed.
        return preferred or max(usable, key=lambda m: m.free)

    # -- taking backends out and back in ---------------------------------------------------

    def move_on(self, member: Member, error: BackendError) -> bool:
        """``member`` failed before an answer started. True when the job may move: the member
        is taken out and another is up. False for the last backend up (the job fails and its
        asker is told) and for failures that are the question's."""
        if not moves_on(error) or not any(
                m.state is MemberState.UP for m in self._members if m is not member):
            return False
        self.take_out(member, error)
        return True

    def take_out(self, member: Member, error: BackendError) -> None:
        """Stop giving ``member`` jobs until its probe answers; the line closes when it was
        the last one up, and everyone waiting is told at once."""
        if member.state is MemberState.DOWN:
            return
        member.state, member.error = MemberState.DOWN, error
        log.error("backend %s is taken out: %s %s", member.name, error.message, error.hint)
        self._probing[member.name] = self._spawn(self._probe_until_back(member),
                                                 f"rtxrelay-probe-{member.name}")
        if all(m.state is MemberState.DOWN for m in self._members):
            log.error("no backend is answering: questions are refused until one is back")
            self._closed_by = error
            line, self._line = self._line, []
            for waiter in line:
                waiter.future.set_exception(LineClosed(error))
            self._changed()
        else:
            self._dispatch()

    def _bring_back(self, member: Member) -> None:
        member.state, member.error = MemberState.UP, None
        self._probing.pop(member.name, None)
        if self._closed_by is not None:
            self._closed_by = None
            log.warning("backend %s answers again; questions are accepted", member.name)
        else:
            log.warning("backend %s answers again", member.name)
        self._dispatch()

    async def _probe_until_back(self, member: Member) -> None:
        while True:
            await asyncio.sleep(self._probe_interval)
            try:
                await member.backend.probe()
            except BackendError as exc:
                log.debug("backend %s still not answering: %s", member.name, exc.kind.value)
                continue
            self._bring_back(member)
            return

    async def check(self, member: Member) -> BackendError | None:
        """Ask ``member`` for its models (a light request): refreshes ``models`` and returns
        why it failed, if it did."""
        try:
            member.models = tuple(await member.backend.models())
        except BackendError as exc:
            return exc
        return None

    async def _check_idle(self) -> None:
        """A backend that went away while idle is found before a question is sent to it."""
        while True:
            await asyncio.sleep(self._check_interval)
            for member in self._members:
                if member.state is MemberState.UP and member.running == 0:
                    error = await self.check(member)
                    if error is not None and member.running == 0:
                        self.move_on(member, error)

    # -- life --------------------------------------------------------------------------------

    async def start(self) -> None:
        """Begin: check idle backends (a shared line also joins its database here)."""
        self.watch()

    def watch(self) -> None:
        """Start checking idle backends (pools of two or more). Call once, in the loop."""
        if len(self._members) > 1:
            self._spawn(self._check_idle(), "rtxrelay-pool-checks")

    async def claim(self, conversation: str) -> bool:
        """Take ``conversation``'s one answer in flight; False when another process has it.
        In one process the service's own guard says so: a line shared by several processes
        (storage/postgres_line.py) holds it across them."""
        return True

    async def unclaim(self, conversation: str) -> None:
        """Give ``conversation``'s claim back (its answer ended)."""

    def _spawn(self, job: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(job, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def close(self) -> None:
        """Stop the probes and checks (at shutdown)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
