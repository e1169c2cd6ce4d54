"""The pool's line in PostgreSQL: several rtxrelay processes, one line, one set of slots.

Each process keeps its own connections to the backends, probes them and streams its own
askers' answers; what they must agree on lives in five small tables beside the conversations:

- ``line_processes``: each process, its lease, renewed every ``heartbeat`` seconds, and its
  ``session``: the server's pid of its LISTEN connection. A process is gone when its lease
  lapsed (its PC off, the network down) or when its session has been missing from the
  server's ``pg_stat_activity`` for two heartbeats (killed: the kernel closed its connections
  at once, the lease need not be waited out). Whoever renews next frees what it held: slots,
  waiting jobs, claims; its unfinished answers are marked interrupted. Nothing of a live
  process is touched (recovery goes by lease and session, not by pid, so processes may run on
  several PCs), and a session missing for a moment (PostgreSQL restarted: every process
  connects again within a second or two) is not mistaken for a death. Until then, slots are
  only handed to jobs of processes whose session is there: a killed process's waiting jobs
  never take a backend from the living.
- ``line_backends``: which backends are taken out, so one process finding a backend gone
  spares the others the try; every process probes it, the first to reach it brings it back.
- ``line_slots``: one row per slot of each backend (its MAX_CONCURRENT_JOBS, as the processes
  list it); ``job`` holds it.
- ``line_jobs``: the line. Waiting jobs (no backend yet) in ``(rank, id)`` order: rank 0 for a
  job moved off a failed backend (it keeps the head of the line), 1 for the others. Each job
  lists the backends its owner has (and that serve the model it asks for).
- ``line_claims``: the one answer in flight per conversation, across processes.

Any process hands out slots: in one transaction it takes the waiting jobs and the free slots of
the backends up, both ``FOR UPDATE SKIP LOCKED`` (two processes handing out at once never
block each other or give one slot twice), and pairs them in line order. ``NOTIFY`` wakes every
process to see what it got and where its jobs stand; a heartbeat wakes them too, so a lost
notification (a connection that dropped) only delays a job by one heartbeat.

The tables hold only the moment's state, nothing to keep: they are created when missing, not
migrated (``_SCHEMA``; a later layout gets new names).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import AsyncIterator, Callable, Sequence

import asyncpg

from rtxrelay.core.errors import BackendError, BackendErrorKind, StorageError
from rtxrelay.core.pool import BackendPool, LineClosed, Member, MemberState, Waiter

from .postgres_store import CONNECT_TIMEOUT, Connection, PostgresStore

log = logging.getLogger(__name__)

CHANNEL = "rtxrelay_line"
HEARTBEAT = 5.0  # seconds between lease renewals (and a look at the line)
LEASE = 20.0  # a process silent this long is gone (LINE_LEASE)
# pg_advisory_xact_lock's key while creating the tables: "rtxline" as 8 bytes.
SCHEMA_LOCK = int.from_bytes(b"rtxline\0", "big")
NOW = "extract(epoch FROM clock_timestamp())"  # the server's clock: PCs' clocks may differ

_SCHEMA = """
CREATE TABLE IF NOT EXISTS line_processes (
    owner TEXT PRIMARY KEY,
    lease_until DOUBLE PRECISION NOT NULL,
    session INTEGER
);
ALTER TABLE line_processes ADD COLUMN IF NOT EXISTS session INTEGER;
CREATE TABLE IF NOT EXISTS line_backends (
    name TEXT PRIMARY KEY,
    down BOOLEAN NOT NULL DEFAULT FALSE,
    error_kind TEXT,
    error TEXT
);
CREATE TABLE IF NOT EXISTS line_slots (
    backend TEXT NOT NULL,
    n INTEGER NOT NULL,
    job BIGINT,
    PRIMARY KEY (backend, n)
);
CREATE TABLE IF NOT EXISTS line_jobs (
    id BIGSERIAL PRIMARY KEY,
    owner TEXT NOT NULL,
    rank SMALLINT NOT NULL,
    accepts TEXT[] NOT NULL,
    prefer TEXT,
    backend TEXT,
    n INTEGER
);
CREATE INDEX IF NOT EXISTS line_jobs_waiting ON line_jobs (rank, id) WHERE backend IS NULL;
CREATE TABLE IF NOT EXISTS line_claims (
    conversation TEXT PRIMARY KEY,
    owner TEXT NOT NULL
)
"""
_ORPHANED = "NOT EXISTS (SELECT 1 FROM line_processes p WHERE p.owner = {table}.owner)"
# The job's process is connected: its LISTEN session is on the server.
_CONNECTED = ("EXISTS (SELECT 1 FROM line_processes p JOIN pg_stat_activity a "
              "ON a.pid = p.session WHERE p.owner = {table}.owner)")


class PostgresPool(BackendPool):
    """A ``BackendPool`` whose line and slots are shared through PostgreSQL. Every process on
    the database must list the same backends under the same names (backends.toml)."""

    def __init__(self, members: Sequence[Member], store: PostgresStore, *,
                 probe_interval: float = 15.0, check_interval: float = 60.0,
                 heartbeat: float = HEARTBEAT, lease: float = LEASE) -> None:
        """``store``: its database holds the line; its ``owner`` names this process."""
        super().__init__(members, probe_interval=probe_interval, check_interval=check_interval)
        if not store.owner:
            raise ValueError("a shared line needs the store's owner (this process's name)")
        self._store = store
        self._owner = store.owner
        self._heartbeat = heartbeat
        self._lease = lease
        self._jobs: dict[int, Waiter] = {}  # this process's jobs still waiting, by row id
        self._counts = (0, 0)
        self._kicked = asyncio.Event()
        self._mirroring = False  # applying another process's news: not to be written back
        # Backends whose new state is being written (a look meanwhile reads the old one), and
        # how often each was written: a look that began before a write must not undo it.
        self._publishing: dict[str, int] = {}
        self._written: dict[str, int] = {}
        self._unreleased: set[int] = set()  # jobs to delete once the database answers
        self._unclaimed: set[str] = set()
        self._listener: asyncpg.Connection | None = None
        self._session: int | None = None  # the LISTEN connection's server pid
        self._missing: dict[str, float] = {}  # processes whose session is gone: since when
        self._closing = False

    # -- life ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Create the tables if missing, take a lease, list this process's backends and
        slots, listen, and start handing out slots."""
        async with self._transaction() as con:
            await con.execute("SELECT pg_advisory_xact_lock($1)", SCHEMA_LOCK)
            for statement in _SCHEMA.split(";"):
                await con.execute(statement)
        async with self._transaction() as con:
            await self._renew(con)
            for member in self.members:
                await con.execute("INSERT INTO line_backends (name) VALUES ($1) "
                                  "ON CONFLICT DO NOTHING", member.name)
                await con.execute(
                    "INSERT INTO line_slots (backend, n) SELECT $1, g FROM "
                    "generate_series(0, $2 - 1) g ON CONFLICT DO NOTHING",
                    member.name, member.capacity)
            await self._sweep(con)
        await self._listen()
        # Answers left unfinished by processes gone before this one started (all of them
        # stopped, say): by lease, so a live process's, on whatever PC, are never touched.
        await self._recover()
        self._spawn(self._hand_out_forever(), "rtxrelay-line")
        self._spawn(self._renew_forever(), "rtxrelay-line-lease")
        self.watch()
        self._kick()

    async def close(self) -> None:
        """Stop, and leave the line at once: this process's jobs, claims and lease go now,
        not when the lease lapses."""
        self._closing = True
        await super().close()
        with contextlib.suppress(StorageError):
            async with self._transaction() as con:
                await con.execute("UPDATE line_slots SET job = NULL WHERE job IN "
                                  "(SELECT id FROM line_jobs WHERE owner = $1)", self._owner)
                await con.execute("DELETE FROM line_jobs WHERE owner = $1", self._owner)
                await con.execute("DELETE FROM line_claims WHERE owner = $1", self._owner)
                await con.execute("DELETE FROM line_processes WHERE owner = $1", self._owner)
                await con.execute("SELECT pg_notify($1, '')", CHANNEL)
        if self._listener is not None:
            listener, self._listener = self._listener, None
            with contextlib.suppress(*_DRIVER_ERRORS):
                await asyncio.wait_for(listener.close(), CONNECT_TIMEOUT)

    async def live_owners(self) -> set[str]:
        """The processes whose lease has not lapsed (this one included)."""
        async with self._transaction() as con:
            rows = await con.fetch(f"SELECT owner FROM line_processes WHERE lease_until >= {NOW}")
        return {str(row[0]) for row in rows}

    # -- the line --------------------------------------------------------------------------

    @property
    def line(self) -> tuple[int, int]:
        """Answers running and jobs waiting, over every process (as last looked at)."""
        return self._counts

    @contextlib.asynccontextmanager
    async def slot(self, on_position: Callable[[int], None] | None = None, *,
                   prefer: str | None = None, accepts: Callable[[Member], bool] | None = None,
                   first: bool = False) -> AsyncIterator[Member]:
        if self._closed_by is not None:
            raise LineClosed(self._closed_by)
        # The processes hand out slots for each other: a job lists its owner's backends.
        names = [m.name for m in self.members if accepts is None or accepts(m)] or \
            [m.name for m in self.members]
        waiter = Waiter(asyncio.get_running_loop().create_future(), on_position, prefer,
                         accepts)
        try:
            async with self._transaction() as con:
                job = int(await con.fetchval(
                    "INSERT INTO line_jobs (owner, rank, accepts, prefer) VALUES ($1, $2, $3, $4) "
                    "RETURNING id", self._owner, 0 if first else 1, names, prefer))
                await con.execute("SELECT pg_notify($1, '')", CHANNEL)
        except StorageError as exc:
            raise LineClosed(BackendError(
                BackendErrorKind.STOPPED, f"The line in PostgreSQL cannot be reached: {exc}",
                hint=exc.hint)) from exc
        self._jobs[job] = waiter
        self._line.append(waiter)
        self._kick()
        try:
            member = await waiter.future
        except BaseException:
            self._jobs.pop(job, None)
            if waiter in self._line:
                self._line.remove(waiter)
            await asyncio.shield(self._leave(job))
            raise
        try:
            yield member
        finally:
            await asyncio.shield(self._leave(job))

    async def claim(self, conversation: str) -> bool:
        status = await self._store._execute(
            "INSERT INTO line_claims (conversation, owner) VALUES ($1, $2) "
            "ON CONFLICT DO NOTHING", conversation, self._owner)
        return status.endswith(" 1")

    async def unclaim(self, conversation: str) -> None:
        try:
            await self._store._execute(
                "DELETE FROM line_claims WHERE conversation = $1 AND owner = $2",
                conversation, self._owner)
        except StorageError:
            # Kept until the database answers: a claim left behind would keep the
            # conversation busy for as long as this process lives.
            self._unclaimed.add(conversation)
            self._kick()

    def _dispatch(self) -> None:
        """Something changed here (a backend out or back): look at the line again."""
        self._changed()
        self._kick()

    def _kick(self) -> None:
        self._kicked.set()

    async def _leave(self, job: int) -> None:
        """The job is done, or gave up waiting: its row and its slot go, and every process
        looks at the line again."""
        try:
            async with self._transaction() as con:
                await self._delete_jobs(con, [job])
        except StorageError as exc:
            log.warning("the line in PostgreSQL did not answer (%s); the job's slot is freed "
                        "once it does", exc.message)
            self._unreleased.add(job)
        self._kick()

    @staticmethod
    async def _delete_jobs(con: Connection, jobs: list[int]) -> None:
        await con.execute("UPDATE line_slots SET job = NULL WHERE job = ANY($1::bigint[])", jobs)
        await con.execute("DELETE FROM line_jobs WHERE id = ANY($1::bigint[])", jobs)
        await con.execute("SELECT pg_notify($1, '')", CHANNEL)

    # -- backends out and back, for every process ------------------------------------------

    def take_out(self, member: Member, error: BackendError) -> None:
        was_up = member.state is MemberState.UP
        super().take_out(member, error)
        if was_up and not self._mirroring:
            self._publish(member)

    def _bring_back(self, member: Member) -> None:
        super()._bring_back(member)
        if not self._mirroring:
            self._publish(member)

    def _publish(self, member: Member) -> None:
        """Tell the other processes ``member``'s state as it is now."""
        self._publishing[member.name] = self._publishing.get(member.name, 0) + 1
        self._written[member.name] = self._written.get(member.name, 0) + 1
        self._spawn(self._write_state(member.name, member.state, member.error),
                    f"rtxrelay-line-state-{member.name}")

    async def _write_state(self, name: str, state: MemberState,
                           error: BackendError | None) -> None:
        try:
            async with self._transaction() as con:
                await con.execute(
                    "UPDATE line_backends SET down = $2, error_kind = $3, error = $4 "
                    "WHERE name = $1", name, state is MemberState.DOWN,
                    error.kind.value if error else None, error.message if error else None)
                await con.execute("SELECT pg_notify($1, '')", CHANNEL)
        except StorageError as exc:  # the others find out by trying it themselves
            log.warning("could not tell the other processes that backend %s is %s: %s",
                        name, state.value, exc.message)
        finally:
            self._publishing[name] -= 1
            if not self._publishing[name]:
                del self._publishing[name]

    def _mirror(self, name: str, down: bool, kind: str | None, text: str | None) -> None:
        """Another process took ``name`` out or brought it back: do the same here."""
        member = self.member(name)
        if member is None or name in self._publishing or \
                (member.state is MemberState.DOWN) == down:
            return
        self._mirroring = True
        try:
            if down:
                try:
                    error_kind = BackendErrorKind(kind)
                except ValueError:
                    error_kind = BackendErrorKind.UNREACHABLE
                self.take_out(member, BackendError(
                    error_kind, text or "taken out by another rtxrelay process"))
            else:
                probe = self._probing.pop(name, None)
                if probe is not None:
                    probe.cancel()
                self._bring_back(member)
        finally:
            self._mirroring = False

    # -- handing out -----------------------------------------------------------------------

    async def _hand_out_forever(self) -> None:
        for attempt in itertools.count():
            await self._kicked.wait()
            self._kicked.clear()
            try:
                await self._retry_leftovers()
                await self._hand_out()
                await self._look()
            except StorageError as exc:
                if attempt == 0 or log.isEnabledFor(logging.DEBUG):
                    log.warning("the line in PostgreSQL did not answer: %s", exc.message)
                await asyncio.sleep(min(self._heartbeat, 1.0))
                self._kick()

    async def _retry_leftovers(self) -> None:
        if self._unreleased:
            jobs = sorted(self._unreleased)
            async with self._transaction() as con:
                await self._delete_jobs(con, jobs)
            self._unreleased.difference_update(jobs)
        for conversation in list(self._unclaimed):
            await self._store._execute(
                "DELETE FROM line_claims WHERE conversation = $1 AND owner = $2",
                conversation, self._owner)
            self._unclaimed.discard(conversation)

    async def _hand_out(self) -> None:
        """Pair waiting jobs with free slots of the backends up, in line order."""
        order = {m.name: index for index, m in enumerate(self.members)}
        async with self._transaction() as con:
            jobs = await con.fetch(
                "SELECT id, accepts, prefer FROM line_jobs WHERE backend IS NULL AND "
                f"{_CONNECTED.format(table='line_jobs')} "
                "ORDER BY rank, id LIMIT 256 FOR UPDATE SKIP LOCKED")
            if not jobs:
                return
            free: dict[str, list[int]] = {}
            for row in await con.fetch(
                    "SELECT s.backend, s.n FROM line_slots s JOIN line_backends b "
                    "ON b.name = s.backend WHERE s.job IS NULL AND NOT b.down "
                    "ORDER BY s.backend, s.n FOR UPDATE OF s SKIP LOCKED"):
                free.setdefault(str(row[0]), []).append(int(row[1]))
            given: list[tuple[int, str, int]] = []
            for job in jobs:
                usable = [name for name in job["accepts"] if free.get(name)]
                if not usable:
                    continue
                # The conversation's last backend when free; else the most free slots, ties
                # to the first this process lists (as in one process, core/pool.py).
                backend = job["prefer"] if job["prefer"] in usable else max(
                    usable, key=lambda name: (len(free[name]), -order.get(name, len(order))))
                given.append((int(job["id"]), backend, free[backend].pop(0)))
            if given:
                await con.executemany("UPDATE line_jobs SET backend = $2, n = $3 WHERE id = $1",
                                      given)
                await con.executemany("UPDATE line_slots SET job = $1 WHERE backend = $2 "
                                      "AND n = $3", given)
                await con.execute("SELECT pg_notify($1, '')", CHANNEL)

    async def _look(self) -> None:
        """What this process's jobs got and where they stand; the line's length; which
        backends are out. Then everyone waiting on a change of the pool hears of it."""
        # Only jobs whose row was in before the look: one entered meanwhile is not lost.
        known = set(self._jobs)
        written = dict(self._written)
        async with self._transaction() as con:
            mine = await con.fetch(
                "SELECT j.id, j.backend, (SELECT count(*) FROM line_jobs w WHERE "
                "w.backend IS NULL AND (w.rank, w.id) <= (j.rank, j.id)) FROM line_jobs j "
                "WHERE j.owner = $1", self._owner)
            running = {str(row[0]): int(row[1]) for row in await con.fetch(
                "SELECT backend, count(*) FROM line_jobs WHERE backend IS NOT NULL "
                "GROUP BY backend")}
            waiting = int(await con.fetchval(
                "SELECT count(*) FROM line_jobs WHERE backend IS NULL"))
            states = await con.fetch("SELECT name, down, error_kind, error FROM line_backends")
        for name, down, kind, text in states:
            if self._written.get(str(name)) == written.get(str(name)):
                self._mirror(str(name), bool(down), kind, text)
        rows = {int(row[0]): row for row in mine}
        for job, waiter in list(self._jobs.items()):
            if job not in known:
                continue
            row = rows.get(job)
            if row is None:
                # Swept as a dead process's (this one missed its lease): the job's place is
                # lost; it joins again at the head.
                log.warning("the line lost a job of this process (its lease lapsed?); "
                            "it joins again at the head")
                self._jobs.pop(job)
                self._spawn(self._rejoin(waiter), "rtxrelay-line-rejoin")
            elif row[1] is not None:
                member = self.member(str(row[1]))
                self._jobs.pop(job)
                if waiter in self._line:
                    self._line.remove(waiter)
                if member is None:  # not ours (lists differ between processes): give it back
                    self._unreleased.add(job)
                    self._kick()
                    waiter.future.set_exception(LineClosed(BackendError(
                        BackendErrorKind.BAD_URL, f"backend {row[1]} is not listed here")))
                elif not waiter.future.done():
                    waiter.member = member
                    waiter.future.set_result(member)
                else:  # it gave up meanwhile (its own cleanup deletes the row)
                    pass
            else:
                waiter.report(int(row[2]))
        for member in self.members:
            member.running = running.get(member.name, 0)
        self._counts = (sum(running.values()), waiting)
        self._changed()

    async def _rejoin(self, waiter: Waiter) -> None:
        names = [m.name for m in self.members
                 if waiter.accepts is None or waiter.accepts(m)] or [m.name for m in self.members]
        try:
            async with self._transaction() as con:
                job = int(await con.fetchval(
                    "INSERT INTO line_jobs (owner, rank, accepts, prefer) VALUES ($1, 0, $2, $3) "
                    "RETURNING id", self._owner, names, waiter.prefer))
        except StorageError as exc:
            if not waiter.future.done():
                waiter.future.set_exception(LineClosed(BackendError(
                    BackendErrorKind.STOPPED, f"The line in PostgreSQL: {exc.message}")))
            return
        self._jobs[job] = waiter
        self._kick()

    # -- leases ----------------------------------------------------------------------------

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(self._heartbeat)
            try:
                async with self._transaction() as con:
                    await self._renew(con)
                    gone = await self._sweep(con)
                if gone:
                    await self._recover()
            except StorageError as exc:
                log.warning("could not renew this process's lease in PostgreSQL: %s",
                            exc.message)
            self._kick()

    async def _renew(self, con: Connection) -> None:
        await con.execute(
            f"INSERT INTO line_processes (owner, lease_until, session) VALUES ($1, {NOW} + $2, "
            "$3) ON CONFLICT (owner) DO UPDATE SET lease_until = EXCLUDED.lease_until, "
            "session = EXCLUDED.session", self._owner, self._lease, self._session)

    async def _sweep(self, con: Connection) -> list[str]:
        """Free what processes that are gone held; returns their names."""
        now = asyncio.get_running_loop().time()
        unseen = {str(row[0]) for row in await con.fetch(
            "SELECT owner FROM line_processes p WHERE owner <> $1 AND NOT EXISTS "
            "(SELECT 1 FROM pg_stat_activity a WHERE a.pid = p.session)", self._owner)}
        self._missing = {owner: self._missing.get(owner, now) for owner in unseen}
        killed = [owner for owner, since in self._missing.items()
                  if now - since >= 2 * self._heartbeat]
        gone = [str(row[0]) for row in await con.fetch(
            f"DELETE FROM line_processes WHERE lease_until < {NOW} OR owner = ANY($1::text[]) "
            "RETURNING owner", killed)]
        freed = await con.execute(
            "UPDATE line_slots SET job = NULL WHERE job IS NOT NULL AND NOT EXISTS "
            "(SELECT 1 FROM line_jobs j WHERE j.id = line_slots.job AND "
            "EXISTS (SELECT 1 FROM line_processes p WHERE p.owner = j.owner))")
        await con.execute(f"DELETE FROM line_jobs WHERE {_ORPHANED.format(table='line_jobs')}")
        await con.execute(
            f"DELETE FROM line_claims WHERE {_ORPHANED.format(table='line_claims')}")
        if gone or not freed.endswith(" 0"):
            await con.execute("SELECT pg_notify($1, '')", CHANNEL)
        for owner in gone:
            self._missing.pop(owner, None)
            log.warning("rtxrelay process %s is gone (%s): its place in the line is freed",
                        owner, "its connection closed" if owner in killed
                        else "it stopped renewing its lease")
        return gone

    async def _recover(self) -> None:
        """The unfinished answers of processes that are gone are marked interrupted (their
        messages are told so when a bot of their platform starts)."""
        live = await self.live_owners()
        recovered = await self._store.recover_pending(live.__contains__)
        if recovered:
            log.info("marked %d unfinished answer(s) of processes that are gone as "
                     "interrupted", recovered)

    # -- plumbing ----------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[Connection]:
        async with self._store._transaction() as con:
            yield con

    async def _listen(self) -> None:
        """A connection of its own for LISTEN: every NOTIFY kicks the hand-out."""
        try:
            listener = await asyncpg.connect(self._store.dsn.url, timeout=CONNECT_TIMEOUT)
            await listener.add_listener(CHANNEL, lambda *_: self._kick())
        except _DRIVER_ERRORS as exc:
            raise self._store._explain(exc) from exc
        listener.add_termination_listener(lambda _: self._relisten())
        self._listener = listener
        # The others know this process is alive while this connection is: it says so now.
        self._session = listener.get_server_pid()
        async with self._transaction() as con:
            await self._renew(con)

    def _relisten(self) -> None:
        if not self._closing:
            self._spawn(self._listen_again(), "rtxrelay-line-listen")

    async def _listen_again(self) -> None:
        """The LISTEN connection dropped (PostgreSQL restarted): connect again; meanwhile
        the heartbeat keeps the line moving."""
        for attempt in itertools.count():
            try:
                await self._listen()
            except StorageError as exc:
                if attempt == 0:
                    log.warning("lost PostgreSQL's notifications (%s); reconnecting",
                                exc.message)
                await asyncio.sleep(min(0.2 * 2 ** min(attempt, 4), self._heartbeat))
                continue
            log.info("listening to the line in PostgreSQL again")
            self._kick()
            return


_DRIVER_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresError, asyncpg.InterfaceError, OSError)
