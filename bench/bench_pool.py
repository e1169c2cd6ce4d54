"""A pool of backends behind one line (issue 15): how close M questions over N one-slot
backends come to the ideal, with one rtxrelay process or two sharing the line through
PostgreSQL; how long the questions waiting for a backend that dies take to move to another;
and how long a slot held by an rtxrelay process that dies stays lost to the other.

    .venv/bin/python bench/bench_pool.py            # full run (~4.5 min)
    .venv/bin/python bench/bench_pool.py --quick    # smoke run (~17 s)
    .venv/bin/python bench/bench_pool.py --processes 2   # the shared-line rows only

Every backend is a fake OpenAI-compatible server in a process of its own
(``_pool_fake_upstream.py``: ``_serve_fake_upstream.py``'s llama.cpp fake with one slot, so a
second request waits inside it, like a one-slot llama-server or Chat with RTX), streaming every
answer in ``--chunks`` chunks over ``--answer-seconds`` (T). In front of them, a real
``python -m rtxrelay serve --port 0`` started as a user starts it: in a temporary folder
holding its ``.env`` (``RTXRELAY_DB`` in that folder) and a ``backends.toml`` listing the N
fakes, each ``MAX_CONCURRENT_JOBS = 1``. The bench's own client (the official ``openai`` SDK,
as ``_openai_sdk_worker.py`` streams) sends M streamed chat completions at once.

Rows (``--rows``):

- ``n1``, ``n2``, ``n4``: one serve process, one pool of N backends. The wall time from the
  first request to the end of the last answer against the ideal ``ceil(M/N) x T``: the
  efficiency.
- ``indep-n1``, ``indep-n2``, ``indep-n4``: the comparison. Two serve processes, each with its
  own folder, database and pool of the same N backends, M split evenly between them. Neither
  knows what the other sends, so each may send to a backend the other is using: the request
  waits inside that backend while another may sit idle. What a line shared between processes
  must beat.
- ``shared-n1``, ``shared-n2``, ``shared-n4``: two serve processes sharing ONE line: each its
  own folder and ``.env``, but the same ``RTXRELAY_DB=postgresql://…`` (a fresh database per
  row, on a throwaway PostgreSQL server: ``tests/support/postgres.PostgresServer``) and the same
  ``backends.toml``, so the line and the backends' slots are in PostgreSQL
  (``storage/postgres_line.py``); M split evenly, as in the ``indep`` rows beside them.
- ``kill``: N = 2, ``--kill-questions`` (6): once both backends answer and the rest wait in
  serve's line, one backend's process is killed (SIGKILL) mid-answer. The answer it was
  streaming must fail with an error (not hang); the waiting questions must all be answered
  by the other backend, none failing. Timed from the kill: the failed answer's error, the
  backend taken out (serve's log), and every waiting question streaming.
- ``kill-shared``: N = 2, two serve processes sharing the line, ``--kill-shared-questions``
  between them: 3 to process 1, the rest to process 2 (by default enough that its line, on
  one backend, outlasts the 10-15 s below: 18 at T = 1 s). Process 1's first question is sent
  first (it takes backend a), then process 2's (b), then the rest, taking turns while process
  1 has any, which wait in the shared line; 0.3 x T after both stream, serve process 1 is
  killed (SIGKILL: the process, not a backend) mid-answer. Its clients must get errors (not
  hang); process 2's questions must all be answered, none failing. What tells the survivor is
  PostgreSQL: the killed process's LISTEN session leaves ``pg_stat_activity`` at once, from
  then on the line hands its waiting jobs no slot, and the survivor's heartbeat
  (``HEARTBEAT``, 5 s) that finds the session missing for two heartbeats frees its slot and
  jobs: 10-15 s after the kill, before its lease (``LEASE``, 20 s) would lapse. Timed from the
  kill: the line's tables, the session and the survivor's renewals polled in PostgreSQL every
  20 ms, on after the survivor's questions are done until the killed process's slot is freed
  (at most 40 s: a failure past that), and the survivor's log saying it is gone, and why. Not
  in ``--quick``: it waits those 10-15 s (``--quick --rows kill-shared`` runs it).

``--processes 1`` runs the rows without PostgreSQL (one line per process), ``--processes 2``
the shared-line rows only; by default, all. The shared rows need PostgreSQL's server programs
(``tests/support/postgres.find_bindir``: PG_BINDIR, pg_config, /usr/lib/postgresql/*/bin,
PATH) and asyncpg; without them those rows fail with how to install them.

Every answer must be the scripted text byte for byte and no request may fail (besides the
killed backend's own answer, and the killed serve process's); the killed serve process's place
in the line must be freed within 40 s and no live process found gone: exit status 1 otherwise.
Don't run anything heavy at the same time. See bench/README.md, "Pool of backends (issue 15)".
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import math
import os
import platform
import re
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
for _path in (REPO_DIR, BENCH_DIR):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import httpx  # noqa: E402
import openai  # noqa: E402
from _openai_fake_server import answer_text  # noqa: E402
from _openai_sdk_worker import connect  # noqa: E402
from _openai_worker import Answer, Job  # noqa: E402
from _table import fmt, print_table  # noqa: E402
from bench_serve import (  # noqa: E402
    KEPT_ENV,
    START_TIMEOUT,
    Serve,
    Upstream,
    median,
    worker_env,
)

if TYPE_CHECKING:
    from tests.support.postgres import PostgresServer

UPSTREAM_SCRIPT = BENCH_DIR / "_pool_fake_upstream.py"
NAMES = "abcdefgh"  # the backends' names in backends.toml
DEFAULT_QUESTIONS = (4, 10)  # light load (M <= N x 2 serves at N=4), then a line
DEFAULT_SECONDS = 1.0
DEFAULT_CHUNKS = 20
DEFAULT_REPS = 3
KILL_QUESTIONS = 6
KILL_BACKENDS = 2
KILL_AT = 0.3  # x T after both backends streamed their first text
QUICK: dict[str, Any] = {"questions": [4], "answer_seconds": 0.3, "chunks": 6, "reps": 1,
                         "kill_questions": 4}
SLOT_POLL = 0.02  # s between two looks at the shared line's slots (the kill-shared row)
KILLED_ASKS = 3  # kill-shared: the killed process's questions (1 answering, 2 waiting)
FREE_DEADLINE = 40.0  # kill-shared: s after the kill by which its slot must be freed
WARM_TOKENS = 4
MAX_WAITING = 10_000
QUESTION = "Question {n}: how do tensor cores speed up inference?"
# perf_counter() (the client's clock) to monotonic() (the fakes' clock; the same clock in
# every process on Linux, where both are CLOCK_MONOTONIC and this is 0).
CLOCK_OFFSET = time.monotonic() - time.perf_counter()
LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")
TAKEN_OUT = re.compile(r"backend (\S+) is taken out")
MOVED = re.compile(r"backend (\S+) failed before answering .* moves to another one")
SWEPT = re.compile(r"rtxrelay process (\S+) is gone \((its connection closed|it stopped "
                   r"renewing its lease)\): its place in the line is freed")
LOST_JOB = re.compile(r"the line lost a job of this process")


# -- what runs -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """N backends and the serve processes in front of them."""

    key: str  # --rows
    backends: int
    processes: int = 1
    # With 2 processes: one line shared between them through PostgreSQL (True), or each
    # its own pool, line and SQLite database (False).
    shared: bool = False

    @property
    def label(self) -> str:
        if self.processes == 1:
            return f"N={self.backends}"
        lines = "one line" if self.shared else f"{self.processes} own lines"
        return f"N={self.backends}, {self.processes} processes, {lines}"

    def split(self, questions: int) -> list[int]:
        """The questions each serve process gets, as evenly as they go."""
        base, extra = divmod(questions, self.processes)
        return [base + (1 if i < extra else 0) for i in range(self.processes)]

    def folders(self, workdir: Path) -> list[Path]:
        """Each serve process's folder (its .env and backends.toml; with its own line, its
        SQLite database too)."""
        return [workdir / f"{self.key}-serve-{i + 1}" for i in range(self.processes)]


LAYOUTS = (
    Layout("n1", 1), Layout("n2", 2), Layout("n4", 4),
    Layout("indep-n1", 1, processes=2), Layout("shared-n1", 1, processes=2, shared=True),
    Layout("indep-n2", 2, processes=2), Layout("shared-n2", 2, processes=2, shared=True),
    Layout("indep-n4", 4, processes=2), Layout("shared-n4", 4, processes=2, shared=True),
)
KILL = "kill"
KILL_SHARED = "kill-shared"
# --processes 1: the rows without PostgreSQL (one line per process); 2: the shared line's.
ROWS = {1: ("n1", "n2", "n4", "indep-n1", "indep-n2", "indep-n4", KILL),
        2: ("shared-n1", "shared-n2", "shared-n4", KILL_SHARED)}
ALL_ROWS = ("n1", "n2", "n4", "indep-n1", "shared-n1", "indep-n2", "shared-n2", "indep-n4",
            "shared-n4", KILL, KILL_SHARED)


# -- the processes -------------------------------------------------------------------------------


class PoolUpstream(Upstream):
    """``_pool_fake_upstream.py`` in a child process: one slot, a timeline of its answers."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.killed_at = math.nan  # perf_counter()

    async def __aenter__(self) -> PoolUpstream:
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable, str(UPSTREAM_SCRIPT), stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, env=worker_env(), cwd=str(REPO_DIR))
        hello = await self._read()
        self.base_url, self.model, self.pid = hello["base_url"], hello["model"], hello["pid"]
        return self

    def kill(self) -> float:
        """SIGKILL, as a PC that goes away: no goodbye on any connection. When, in
        perf_counter() s."""
        assert self._proc is not None
        self.killed_at = time.perf_counter()
        os.kill(self._proc.pid, signal.SIGKILL)
        return self.killed_at

    @property
    def alive(self) -> bool:
        return math.isnan(self.killed_at)

    async def timeline(self) -> Timeline:
        found = await self.command({"stats": True})
        return Timeline(answers=[(float(a), float(b)) for a, b in found["answers"]],
                        max_waiting=int(found["max_waiting"]),
                        requests=dict(found["requests"]))


@dataclass(frozen=True)
class Timeline:
    """One fake since its last script: when each answer held its slot (monotonic s)."""

    answers: list[tuple[float, float]]
    max_waiting: int  # most chat requests waiting inside it for its slot at once
    requests: dict[str, int]  # "GET /v1/models": n, … since it started

    def gaps(self) -> list[float]:
        """Idle time between two answers (s)."""
        ordered = sorted(self.answers)
        return [b[0] - a[1] for a, b in itertools.pairwise(ordered)]


class PoolServe(Serve):
    """``python -m rtxrelay serve --port 0`` in its own folder: ``.env`` + ``backends.toml``
    listing ``upstreams``, each ``MAX_CONCURRENT_JOBS = 1``. Its environment holds only what
    a user's shell has (``bench_serve.KEPT_ENV``): the settings are in the files.
    ``database``: RTXRELAY_DB (a ``postgresql://`` URL for a shared line); by default a SQLite
    file in its folder."""

    def __init__(self, upstreams: Sequence[PoolUpstream], folder: Path,
                 log_level: str | None, database: str | None = None) -> None:
        super().__init__(upstreams[0], folder, log_level)  # (Serve's upstream: unused here)
        self.upstreams = tuple(upstreams)
        self.folder = folder
        self.database = database or str(folder / "rtxrelay.db")
        self.killed_at = math.nan  # perf_counter()
        self._level = log_level

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k in KEPT_ENV}
        env.update({"NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost",
                    "PYTHONIOENCODING": "utf-8"})
        return env

    def write_files(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        settings = [f"RTXRELAY_DB={self.database}",
                    f"RTXRELAY_API_MAX_WAITING={MAX_WAITING}"]
        if self._level:
            settings.append(f"LOG_LEVEL={self._level}")
        (self.folder / ".env").write_text("\n".join(settings) + "\n", encoding="utf-8")
        (self.folder / "backends.toml").write_text("".join(
            f'[[backend]]\nname = "{u.name}"\nOPENAI_BASE_URL = "{u.base_url}"\n'
            "MAX_CONCURRENT_JOBS = 1\n\n" for u in self.upstreams), encoding="utf-8")

    async def __aenter__(self) -> PoolServe:
        self.write_files()
        await super().__aenter__()
        return self

    def kill(self) -> float:
        """SIGKILL, as a crash or the OOM killer: no goodbye to its clients, its backends or
        PostgreSQL (the kernel closes its connections; its jobs and lease stay in the line's
        tables). When, in perf_counter() s."""
        assert self._proc is not None
        self.killed_at = time.perf_counter()
        os.kill(self._proc.pid, signal.SIGKILL)
        return self.killed_at

    def logged(self, pattern: re.Pattern[str]) -> list[tuple[float, re.Match[str]]]:
        """Its log lines that match: time.time() of each (the log's own ms timestamps) and
        the match."""
        found = []
        for line in self.lines:
            stamp = LOG_TIME.match(line)
            match = pattern.search(line) if stamp else None
            if stamp and match:
                found.append((datetime.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S,%f")
                              .timestamp(), match))
        return found

    def logged_at(self, pattern: re.Pattern[str]) -> list[float]:
        """time.time() of each of its log lines that match."""
        return [at for at, _ in self.logged(pattern)]


def upstreams(n: int) -> list[PoolUpstream]:
    return [PoolUpstream(NAMES[i]) for i in range(n)]


async def start_all(stack: contextlib.AsyncExitStack, items: Sequence[Any]) -> None:
    """Enter every context manager at once (each process starts in parallel); on a failure
    the ones that started are stopped by ``stack``."""
    results = await asyncio.gather(*(item.__aenter__() for item in items),
                                   return_exceptions=True)
    for item, result in zip(items, results, strict=True):
        if not isinstance(result, BaseException):
            stack.push_async_exit(item.__aexit__)
    for result in results:
        if isinstance(result, BaseException):
            raise result


async def script_all(ups: Sequence[PoolUpstream], answers: int, tokens: int,
                     delay: float) -> None:
    """Every fake answers its next ``answers`` chat requests with ``tokens`` chunks, ``delay``
    s before each: which fake gets which request is the pool's choice."""
    await asyncio.gather(*(u.script(*[(tokens, QUESTION, delay)] * answers) for u in ups
                           if u.alive))


# -- the client ----------------------------------------------------------------------------------


@dataclass
class Asked:
    """One streamed chat completion, as the client saw it (perf_counter() s)."""

    serve: int  # which serve process
    answer: Answer = field(default_factory=Answer)  # fills as the text comes
    sent: float = math.nan
    ended: float = math.nan
    error: str | None = None
    exact: bool = False
    hung: bool = False

    @property
    def first_text(self) -> float:
        """When the first content chunk came (nan: none yet)."""
        found = self.answer.first_text
        return math.nan if found is None else found

    @property
    def ttft(self) -> float:
        return self.first_text - self.sent


AskOne = Callable[[int, int], Coroutine[Any, Any, Asked]]


@contextlib.asynccontextmanager
async def clients(serves: Sequence[PoolServe], tokens: int, timeout: float,
                  asked: list[Asked]) -> AsyncIterator[AskOne]:
    """One SDK client per serve; yields ``one(serve index, question number)``, which streams
    one question and notes it in ``asked`` (filled as they go: the kill scenarios watch it)."""
    expected = answer_text(tokens)
    async with contextlib.AsyncExitStack() as stack:
        asks = [await stack.enter_async_context(connect(Job(
            base_url=serve.base_url, model=serve.upstreams[0].model, api_key="",
            question="", warm_question=""))) for serve in serves]

        async def one(index: int, number: int) -> Asked:
            record = Asked(index)
            asked.append(record)
            record.sent = time.perf_counter()
            try:
                await asyncio.wait_for(asks[index](QUESTION.format(n=number), False,
                                                   record.answer), timeout)
            except TimeoutError:
                record.hung = True
                record.error = f"no end after {timeout:g} s"
            # httpx's own errors: a connection cut mid-stream is not wrapped by the SDK.
            except (openai.OpenAIError, httpx.HTTPError) as exc:
                record.error = f"{type(exc).__name__}: {exc}"
            record.ended = time.perf_counter()
            text = record.answer.text
            record.exact = record.error is None and text == expected
            if record.error is None and not record.exact:
                record.error = f"{len(text)} chars, not the {len(expected)} scripted"
            return record

        yield one


async def ask_all(serves: Sequence[PoolServe], counts: Sequence[int], tokens: int,
                  timeout: float, asked: list[Asked]) -> None:
    """``counts[i]`` questions to ``serves[i]``, all at once, one SDK client per serve;
    ``asked`` fills as they go (the kill scenario watches it)."""
    async with clients(serves, tokens, timeout, asked) as one:
        # Taking turns between the serve processes, so neither gets its questions first.
        order = [i for n in range(max(counts, default=0)) for i, count in enumerate(counts)
                 if n < count]
        await asyncio.gather(*(one(i, n) for n, i in enumerate(order)))


async def warm_up(serves: Sequence[PoolServe], ups: Sequence[PoolUpstream],
                  timeout: float) -> list[Asked]:
    """Uncounted: a short answer per backend from each serve (connections, serve's model
    list, its cold code paths)."""
    per_serve = len(ups)
    await script_all(ups, per_serve * len(serves), WARM_TOKENS, 0.0)
    asked: list[Asked] = []
    await ask_all(serves, [per_serve] * len(serves), WARM_TOKENS, timeout, asked)
    return asked


# -- the efficiency rows -------------------------------------------------------------------------


@dataclass
class Run:
    layout: Layout
    questions: int  # M
    rep: int
    ideal: float
    asked: list[Asked] = field(default_factory=list)
    timelines: list[Timeline] = field(default_factory=list)
    side_requests: Counter[str] = field(default_factory=Counter)  # besides chat, this run
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.asked) and all(a.exact for a in self.asked)

    @property
    def wall(self) -> float:
        if not self.asked:
            return math.nan
        return max(a.ended for a in self.asked) - min(a.sent for a in self.asked)

    @property
    def efficiency(self) -> float:
        return self.ideal / self.wall * 100 if self.wall > 0 else math.nan

    @property
    def start(self) -> float:
        """The first request, monotonic s."""
        return min(a.sent for a in self.asked) + CLOCK_OFFSET


@dataclass
class Settings:
    questions: list[int]  # M, one table each
    answer_seconds: float
    chunks: int
    reps: int
    timeout: float
    log_level: str | None

    @property
    def delay(self) -> float:
        return self.answer_seconds / self.chunks

    def ideal(self, questions: int, backends: int) -> float:
        return math.ceil(questions / backends) * self.answer_seconds


async def run_layout(layout: Layout, ups: Sequence[PoolUpstream], settings: Settings,
                     workdir: Path, postgres: PostgresServer | None) -> list[Run]:
    """Warm-up, then ``reps`` runs of each M questions through ``layout``'s serve
    processes. A shared line: a fresh database on ``postgres``, the same for each."""
    mine = list(ups[:layout.backends])
    folders = layout.folders(workdir)
    database = None
    if layout.shared:
        assert postgres is not None
        database = (await postgres.create_database()).url
    serves = [PoolServe(mine, folder, settings.log_level, database) for folder in folders]
    runs: list[Run] = []
    async with contextlib.AsyncExitStack() as stack:
        await start_all(stack, serves)
        for asked in await warm_up(serves, mine, settings.timeout):
            if not asked.exact:
                raise RuntimeError(f"the warm-up failed: {asked.error}")
        for questions, rep in itertools.product(settings.questions, range(settings.reps)):
            run = Run(layout, questions, rep, settings.ideal(questions, layout.backends))
            await script_all(mine, questions, settings.chunks, settings.delay)
            before = [await u.timeline() for u in mine]
            try:
                await ask_all(serves, layout.split(questions), settings.chunks,
                              settings.timeout, run.asked)
            except Exception as exc:  # a figure, not the end of the bench
                run.error = f"{type(exc).__name__}: {exc}"
            run.timelines = [await u.timeline() for u in mine]
            for old, new in zip(before, run.timelines, strict=True):
                for path, n in new.requests.items():
                    if "chat/completions" not in path and n > old.requests.get(path, 0):
                        run.side_requests[path] += n - old.requests.get(path, 0)
            progress(run)
            runs.append(run)
    for serve in serves:
        if serve.exit_code != 0:
            runs.append(Run(layout, 0, -2, math.nan, error=(
                f"serve {serve.folder.name} exited {serve.exit_code} on SIGTERM; its log:\n  "
                + "\n  ".join(serve.lines[-15:]))))
    return runs


def progress(run: Run) -> None:
    failed = sum(not a.exact for a in run.asked)
    status = "ok" if run.ok else f"FAILED ({failed} request(s)) {run.error or ''}"
    ttfts = [a.ttft for a in run.asked if not math.isnan(a.first_text)]
    print(f"  {run.layout.label:<29} M={run.questions:<3} run {run.rep + 1}: wall "
          f"{fmt(run.wall):>5} s, ideal {fmt(run.ideal):>5} s, efficiency "
          f"{fmt(run.efficiency):>5} %, first text median {fmt(median(ttfts)):>5} s  {status}",
          flush=True)


Metric = Callable[[Run], float]


def _busy(run: Run) -> float:
    """% of the wall the backends spent holding an answer's slot."""
    start, wall = run.start, run.wall
    busy = sum(min(b, start + wall) - max(a, start) for t in run.timelines
               for a, b in t.answers if b > start)
    return busy / (wall * len(run.timelines)) * 100 if run.timelines else math.nan


def _lengths(run: Run) -> list[float]:
    return [b - a for t in run.timelines for a, b in t.answers]


def _gaps(run: Run) -> list[float]:
    return [g * 1000 for t in run.timelines for g in t.gaps()]


EFFICIENCY_METRICS: list[tuple[str, Metric]] = [
    ("time to first text s, median", lambda r: median([a.ttft for a in r.asked])),
    ("time to first text s, slowest", lambda r: max(
        (a.ttft for a in r.asked if not math.isnan(a.ttft)), default=math.nan)),
    ("answer on a backend s, median (T + the fake's own time)", lambda r: median(_lengths(r))),
    ("backends busy, % of the wall", _busy),
    ("gap between two answers on a backend ms, median", lambda r: median(_gaps(r))),
    ("gap between two answers on a backend ms, largest", lambda r: max(_gaps(r), default=0.0)),
    ("most requests waiting inside one backend", lambda r: float(max(
        (t.max_waiting for t in r.timelines), default=0))),
]


def report_efficiency(layouts: Sequence[Layout], runs: list[Run], settings: Settings,
                      questions: int) -> None:
    counted = [r for r in runs if r.rep >= 0 and r.questions == questions]
    by = {layout.key: [r for r in counted if r.layout == layout] for layout in layouts}
    ok = {key: [r for r in found if r.ok] for key, found in by.items()}
    print(f"\n== M = {questions} questions over N one-slot backends, each answer "
          f"T = {fmt(settings.answer_seconds)} s ({settings.chunks} chunks, "
          f"{fmt(settings.delay * 1000)} ms apart); median of {settings.reps} run(s) ==")
    rows: list[tuple[str, ...]] = [("metric", *(layout.label for layout in layouts))]

    def cells(metric: Metric) -> tuple[str, ...]:
        return tuple(fmt(median([metric(r) for r in ok[layout.key]])) for layout in layouts)

    rows.append(("questions per serve process", *(
        " + ".join(map(str, layout.split(questions))) for layout in layouts)))
    rows.append(("ideal ceil(M/N) x T s", *(
        fmt(settings.ideal(questions, layout.backends)) for layout in layouts)))
    rows.append(("wall s (first request -> last answer's end)", *cells(lambda r: r.wall)))
    walls = {layout.key: median([r.wall for r in ok[layout.key]]) for layout in layouts}
    rows.append(("efficiency % (ideal / wall)", *(
        fmt(settings.ideal(questions, layout.backends) / walls[layout.key] * 100)
        for layout in layouts)))
    rows.append(("  lowest - highest %", *(
        _span([r.efficiency for r in ok[layout.key]]) for layout in layouts)))
    rows.append(("answers with the exact text", *(
        f"{sum(a.exact for r in by[layout.key] for a in r.asked)}/"
        f"{questions * len(by[layout.key])}" for layout in layouts)))
    rows.append(("requests that failed or hung", *(
        str(sum(not a.exact for r in by[layout.key] for a in r.asked)) for layout in layouts)))
    for name, metric in EFFICIENCY_METRICS:
        rows.append((name, *cells(metric)))
    rows.append(("answers per backend, fewest - most", *(
        _span([float(len(t.answers)) for r in ok[layout.key] for t in r.timelines])
        for layout in layouts)))
    print_table(rows)
    side: Counter[str] = Counter()
    for r in counted:
        side.update(r.side_requests)
    models = side.pop("GET /v1/models", 0)
    print(f"requests to the backends besides the answers, all runs: GET /v1/models x{models} "
          "(serve's model list, kept 30 s, and the pool's checks of idle backends)"
          + ("; " + ", ".join(f"{path} x{n}" for path, n in sorted(side.items()))
             + " (not serve's: another program probing this machine's ports, as `rtxrelay "
             "discover` does)" if side else ""))


def _span(values: Sequence[float]) -> str:
    found = [v for v in values if not math.isnan(v)]
    return f"{fmt(min(found))} - {fmt(max(found))}" if found else "-"


# -- the kill row --------------------------------------------------------------------------------


@dataclass
class KillRun:
    rep: int
    asked: list[Asked] = field(default_factory=list)
    killed: float = math.nan  # perf_counter()
    killed_wall: float = math.nan  # time.time()
    survivor: Timeline | None = None
    taken_out: list[float] = field(default_factory=list)  # time.time() of the log lines
    moved: int = 0  # "the question moves to another one" lines
    problems: list[str] = field(default_factory=list)  # serve's warnings and errors
    error: str | None = None
    serve_exit: int | None = None

    @property
    def mid_answer(self) -> list[Asked]:
        """The requests that had text before the kill."""
        return [a for a in self.asked if a.first_text < self.killed]

    @property
    def waiting(self) -> list[Asked]:
        return [a for a in self.asked if not a.first_text < self.killed]

    @property
    def ok(self) -> bool:
        """Every waiting request answered exactly; the killed backend's answer failed with
        an error (none hung); the survivor's answer in progress completed; serve exited 0."""
        failed = [a for a in self.mid_answer if not a.exact]
        return (self.error is None and len(self.mid_answer) == KILL_BACKENDS
                and len(failed) == 1 and not failed[0].hung
                and all(a.exact for a in self.waiting) and self.serve_exit == 0)

    def after_kill(self, value: float) -> float:
        return value - self.killed

    def survivor_after(self) -> list[tuple[float, float]]:
        """The survivor's answers that ended after the kill, monotonic s."""
        kill = self.killed + CLOCK_OFFSET
        return sorted((a, b) for a, b in (self.survivor.answers if self.survivor else [])
                      if b > kill)


async def kill_run(rep: int, settings: Settings, questions: int, workdir: Path) -> KillRun:
    run = KillRun(rep)
    ups = upstreams(KILL_BACKENDS)
    victim, survivor = ups
    serve = PoolServe(ups, workdir / f"kill-{rep + 1}", settings.log_level)
    try:
        async with contextlib.AsyncExitStack() as stack:
            await start_all(stack, ups)
            await start_all(stack, [serve])
            for asked in await warm_up([serve], ups, settings.timeout):
                if not asked.exact:
                    raise RuntimeError(f"the warm-up failed: {asked.error}")
            await script_all(ups, questions, settings.chunks, settings.delay)
            asking = asyncio.create_task(ask_all([serve], [questions], settings.chunks,
                                                 settings.timeout, run.asked))
            deadline = time.perf_counter() + START_TIMEOUT
            while sum(not math.isnan(a.first_text) for a in run.asked) < KILL_BACKENDS:
                if asking.done() or time.perf_counter() > deadline:
                    raise RuntimeError("the backends did not both start answering")
                await asyncio.sleep(0.005)
            await asyncio.sleep(KILL_AT * settings.answer_seconds)
            run.killed_wall = time.time()
            run.killed = victim.kill()
            await asking
            run.survivor = await survivor.timeline()
    except Exception as exc:
        run.error = f"{type(exc).__name__}: {exc}"
    run.serve_exit = serve.exit_code
    run.taken_out = serve.logged_at(TAKEN_OUT)
    run.moved = len(serve.logged_at(MOVED))
    run.problems = serve.problems()
    kill_progress(run)
    return run


def kill_progress(run: KillRun) -> None:
    status = "ok" if run.ok else f"FAILED {run.error or ''}"
    last = max((a.first_text for a in run.waiting), default=math.nan)
    print(f"  kill run {run.rep + 1}: {len(run.waiting)} waiting, all streaming "
          f"{fmt(run.after_kill(last))} s after the kill; "
          f"{sum(not a.exact for a in run.asked)} failed  {status}", flush=True)


KillMetric = Callable[[KillRun], float]


def _failed_after(run: KillRun) -> float:
    return min((a.ended for a in run.mid_answer if not a.exact), default=math.nan) - run.killed


def _out_after(run: KillRun) -> float:
    return (min(run.taken_out) - run.killed_wall) if run.taken_out else math.nan


def _survivor_ended(run: KillRun) -> float:
    """When the survivor finished the answer it had at the kill, s after it."""
    after = run.survivor_after()
    return after[0][1] - CLOCK_OFFSET - run.killed if after else math.nan


def _handover_gaps(run: KillRun) -> list[float]:
    after = run.survivor_after()
    return [(b[0] - a[1]) * 1000 for a, b in itertools.pairwise(after)]


def _last_streaming(run: KillRun) -> float:
    return max((a.first_text for a in run.waiting), default=math.nan) - run.killed


def _own_work(run: KillRun, settings: Settings) -> float:
    """What the survivor alone must take before the last waiting question streams: the rest
    of its answer at the kill, then one answer for each of the others waiting (at its
    measured median answer length), then the first chunk's delay."""
    after = run.survivor_after()
    if not after or not run.waiting:
        return math.nan
    length = median([b - a for a, b in after])
    return _survivor_ended(run) + (len(run.waiting) - 1) * length + settings.delay


def kill_metrics(settings: Settings) -> list[tuple[str, KillMetric]]:
    return [
        ("requests mid-answer at the kill (1 on each backend)",
         lambda r: float(len(r.mid_answer))),
        ("  of them failed with an error (the killed backend's)",
         lambda r: float(sum(not a.exact and not a.hung for a in r.mid_answer))),
        ("  of them hung (no end)", lambda r: float(sum(a.hung for a in r.mid_answer))),
        ("requests waiting in serve's line at the kill", lambda r: float(len(r.waiting))),
        ("  of them failed or hung", lambda r: float(sum(not a.exact for a in r.waiting))),
        ("questions moved off the killed backend (serve's log)", lambda r: float(r.moved)),
        ("s after the kill: the killed backend's answer ends in an error", _failed_after),
        ("s after the kill: the backend is taken out (serve's log)", _out_after),
        ("s after the kill: the survivor ends the answer it had", _survivor_ended),
        ("s after the kill: the 1st waiting question streams", lambda r: min(
            (a.first_text for a in r.waiting), default=math.nan) - r.killed),
        ("s after the kill: every waiting question streams", _last_streaming),
        ("  the survivor's own work before that s", lambda r: _own_work(r, settings)),
        ("  the rest: the move and hand-overs s",
         lambda r: _last_streaming(r) - _own_work(r, settings)),
        ("survivor idle between two answers ms, median", lambda r: median(_handover_gaps(r))),
        ("survivor idle between two answers ms, largest",
         lambda r: max(_handover_gaps(r), default=math.nan)),
    ]


def report_kill(runs: list[KillRun], settings: Settings, questions: int) -> None:
    print(f"\n== a backend killed mid-answer: N = {KILL_BACKENDS}, M = {questions}, T = "
          f"{fmt(settings.answer_seconds)} s; SIGKILL {fmt(KILL_AT * settings.answer_seconds)} s "
          "after both backends streamed ==")
    rows: list[tuple[str, ...]] = [("metric", *(f"run {r.rep + 1}" for r in runs), "median")]
    for name, metric in kill_metrics(settings):
        values = [metric(r) for r in runs]
        rows.append((name, *(fmt(v) for v in values), fmt(median(values))))
    print_table(rows)
    for r in runs[:1]:
        errors = [a.error for a in r.mid_answer if a.error]
        if errors:
            print(f"what the client of the killed backend's answer got (run 1): {errors[0]}")
        if r.problems:
            print("what serve logged (run 1, warnings and errors):")
            for line in r.problems[:8]:
                print(f"  {line}")


# -- the kill-shared row: a serve process killed, the line shared --------------------------------


VICTIM, SURVIVOR = 0, 1  # serve indexes: process 1 is killed, process 2 survives
HOLDERS = ("killed", "survivor")
REASONS = {"its connection closed": "session", "it stopped renewing its lease": "lease"}


@dataclass(frozen=True)
class LineState:
    """The shared line as PostgreSQL held it at one look: who holds each backend's slot
    ("free", "killed", "survivor", or "?" for a job row that is gone), and the waiting jobs
    of each process."""

    slots: tuple[tuple[str, str], ...]  # (backend, holder)
    waiting: tuple[int, int]  # (the killed process's, the survivor's)

    def holder(self, backend: str) -> str:
        return dict(self.slots).get(backend, "-")

    def text(self) -> str:
        return ", ".join(f"{name}: {who}" for name, who in self.slots) + \
            f"; waiting: killed {self.waiting[0]}, survivor {self.waiting[1]}"


class LineWatch:
    """Looks at the shared line's tables every ``SLOT_POLL`` s on a connection of its own
    (plain SELECTs: no row locks, nothing the processes wait on) and notes each change. Once
    ``follow`` named them, it also notes when the killed process's LISTEN session leaves
    ``pg_stat_activity`` and each time the survivor renews its lease (its heartbeat, whose
    sweep finds the dead)."""

    def __init__(self, connection: Any, owners: Sequence[str]) -> None:
        self._con = connection
        self._owners = {owner: HOLDERS[i] for i, owner in enumerate(owners)}
        self.changes: list[tuple[float, LineState]] = []  # perf_counter(), the new state
        self.session: int | None = None  # the killed process's session (a server pid)
        self.session_gone = math.nan  # perf_counter() of the first look without it
        self.heartbeats: list[float] = []  # perf_counter() of the looks seeing a renewal
        self._survivor = ""
        self._lease: float | None = None

    async def look(self) -> LineState:
        rows = await self._con.fetch(
            "SELECT s.backend, s.job, j.owner FROM line_slots s LEFT JOIN line_jobs j "
            "ON j.id = s.job ORDER BY s.backend, s.n")
        slots = tuple((str(r[0]), "free" if r[1] is None else
                       self._owners.get(str(r[2]), "?")) for r in rows)
        counts = {self._owners.get(str(r[0]), "?"): int(r[1]) for r in await self._con.fetch(
            "SELECT owner, count(*) FROM line_jobs WHERE backend IS NULL GROUP BY owner")}
        return LineState(slots, (counts.get("killed", 0), counts.get("survivor", 0)))

    async def lease_left(self, owner: str) -> float:
        """s until ``owner``'s lease lapses, by PostgreSQL's clock."""
        found = await self._con.fetchval(
            "SELECT lease_until - extract(epoch FROM clock_timestamp()) FROM line_processes "
            "WHERE owner = $1", owner)
        return math.nan if found is None else float(found)

    async def follow(self, killed: str, survivor: str) -> None:
        """From now on, also watch ``killed``'s session and ``survivor``'s renewals."""
        found = await self._con.fetchval(
            "SELECT session FROM line_processes WHERE owner = $1", killed)
        self.session = None if found is None else int(found)
        self._survivor = survivor
        await self.look_processes()

    async def look_processes(self) -> None:
        if not self._survivor:
            return
        lease, present = await self._con.fetchrow(
            "SELECT (SELECT lease_until FROM line_processes WHERE owner = $1), "
            "EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $2)",
            self._survivor, self.session)
        now = time.perf_counter()
        if lease is not None:
            if self._lease is not None and float(lease) != self._lease:
                self.heartbeats.append(now)
            self._lease = float(lease)
        if not present and math.isnan(self.session_gone):
            self.session_gone = now

    async def run(self) -> None:
        while True:
            state = await self.look()
            if not self.changes or self.changes[-1][1] != state:
                self.changes.append((time.perf_counter(), state))
            await self.look_processes()
            await asyncio.sleep(SLOT_POLL)


@dataclass
class SharedKillRun:
    rep: int
    asked: list[Asked] = field(default_factory=list)  # .serve: VICTIM or SURVIVOR
    killed: float = math.nan  # perf_counter()
    killed_wall: float = math.nan  # time.time()
    streaming: float = math.nan  # perf_counter(): both processes' first questions streamed
    victim_owner: str = ""  # the killed process's name in the line
    victim_backend: str = ""  # the backend whose slot the killed process held
    survivor_backend: str = ""
    lease_left: float = math.nan  # the killed process's lease at the kill, s
    session_gone: float = math.nan  # perf_counter(): its session left pg_stat_activity
    heartbeats: list[float] = field(default_factory=list)  # the survivor's, perf_counter()
    line: list[tuple[float, LineState]] = field(default_factory=list)
    timelines: dict[str, Timeline] = field(default_factory=dict)
    # The survivor's "process … is gone (why)" lines: time.time(), the owner, why.
    swept: list[tuple[float, str, str]] = field(default_factory=list)
    lost_jobs: int = 0  # the survivor's "the line lost a job of this process" lines
    # "process … is gone" lines about a live process: in the killed process's log (before
    # it died), or in the survivor's about another than the killed one or before the kill.
    wrongly_gone: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # the survivor's warnings and errors
    error: str | None = None
    exits: tuple[int | None, int | None] = (None, None)

    def of(self, serve: int, *, waiting: bool) -> list[Asked]:
        """One process's requests that were waiting at the kill (no text yet), or that were
        mid-answer (text before the kill)."""
        return [a for a in self.asked if a.serve == serve
                and (a.first_text < self.killed) is not waiting]

    @property
    def ok(self) -> bool:
        """The killed process's requests all ended in an error (none hung, none answered
        after its death); the survivor's all answered exactly; the killed process's slot
        and waiting jobs freed in the line and the survivor logged it gone within
        ``FREE_DEADLINE``; no live process found gone; the survivor exited 0."""
        victims = [a for a in self.asked if a.serve == VICTIM]
        survivors = [a for a in self.asked if a.serve == SURVIVOR]
        return (self.error is None and len(self.of(VICTIM, waiting=False)) == 1
                and len(self.of(SURVIVOR, waiting=False)) == 1
                and all(a.error is not None and not a.hung and not a.exact for a in victims)
                and all(a.exact for a in survivors) and not self.unfreed()
                and not self.wrongly_gone and self.exits[SURVIVOR] == 0)

    def held(self, backend: str, holder: str) -> float:
        """s after the kill until ``backend``'s slot is first held by ``holder``."""
        for at, state in self.line:
            if at > self.killed and state.holder(backend) == holder:
                return at - self.killed
        return math.nan

    def held_for(self, backend: str, holder: str) -> float:
        """s after the kill that ``backend``'s slot was held by ``holder`` in all."""
        total = 0.0
        ends = [at for at, _ in self.line[1:]] + [at for at, _ in self.line[-1:]]
        for (at, state), end in zip(self.line, ends, strict=True):
            start = max(at, self.killed)
            if end > start and state.holder(backend) == holder:
                total += end - start
        return total

    def freed(self) -> float:
        """s after the kill until the killed process's slot is free in the line (or already
        given to a survivor's job)."""
        for at, state in self.line:
            if at > self.killed and state.holder(self.victim_backend) in ("free", "survivor"):
                return at - self.killed
        return math.nan

    def jobs_gone(self) -> float:
        """s after the kill until the killed process has no waiting job in the line."""
        for at, state in self.line:
            if at > self.killed and state.waiting[VICTIM] == 0:
                return at - self.killed
        return math.nan

    def gone_logged(self) -> list[tuple[float, str]]:
        """The survivor's log lines saying the killed process is gone: s after the kill,
        why."""
        return [(at - self.killed_wall, why) for at, owner, why in self.swept
                if owner == self.victim_owner and at >= self.killed_wall]

    def unfreed(self) -> list[str]:
        """What the line has not yet done about the killed process."""
        return [what for what, done in (
            (f"its slot (backend {self.victim_backend}) freed", not math.isnan(self.freed())),
            ("its waiting jobs gone", not math.isnan(self.jobs_gone())),
            ("the survivor's log saying it is gone", bool(self.gone_logged()))) if not done]

    def answers_after(self, backend: str) -> list[tuple[float, float]]:
        """``backend``'s answers that started after the kill, s after it."""
        found = self.timelines.get(backend)
        kill = self.killed + CLOCK_OFFSET
        return sorted((a - kill, b - kill) for a, b in (found.answers if found else [])
                      if a > kill)

    def answer_at_kill(self, backend: str) -> float:
        """When ``backend`` ended (gave back its own slot) the answer it had at the kill, s
        after the kill."""
        found = self.timelines.get(backend)
        kill = self.killed + CLOCK_OFFSET
        return min((b - kill for a, b in (found.answers if found else []) if a < kill < b),
                   default=math.nan)


def phases(rep: int, reps: int) -> tuple[float, float]:
    """The kill-shared run's offsets, spread over the runs: how long after the killed
    process the survivor starts (the phase of their renewals: the lease the killed process
    has left at the kill), and the pause before the questions (the phase of the kill against
    the survivor's heartbeats: its first heartbeat after the kill notes the session missing,
    two heartbeats later it frees what the dead held, so 2-3 heartbeats after the kill).
    Started together with no pause, every run would show one same case."""
    from rtxrelay.storage.postgres_line import HEARTBEAT

    stagger = HEARTBEAT * (reps - rep - 0.5) / reps
    return stagger, (HEARTBEAT * rep / reps - stagger) % HEARTBEAT


def shared_kill_questions(answer_seconds: float) -> int:
    """--kill-shared-questions' default: the killed process's ``KILLED_ASKS`` and enough for
    the survivor that, on its backend alone, its line outlasts 3 heartbeats (the latest the
    killed process is found gone) by 2 s: then a survivor's question is still waiting when
    the killed process's slot is freed, and takes it."""
    heartbeat = 5.0  # without asyncpg the row cannot run, but --help can
    with contextlib.suppress(ImportError):
        from rtxrelay.storage.postgres_line import HEARTBEAT as heartbeat

    return KILLED_ASKS + 1 + math.ceil((3 * heartbeat + 2) / answer_seconds)


async def shared_kill_run(rep: int, settings: Settings, questions: int, workdir: Path,
                          postgres: PostgresServer) -> SharedKillRun:
    run = SharedKillRun(rep)
    stagger, pause = phases(rep, settings.reps)
    ups = upstreams(KILL_BACKENDS)
    dsn = await postgres.create_database()
    serves = [PoolServe(ups, workdir / f"kill-shared-{rep + 1}-serve-{i + 1}",
                        settings.log_level, dsn.url) for i in range(2)]
    victim, survivor = serves
    per_process = (KILLED_ASKS, questions - KILLED_ASKS)
    watcher: asyncio.Task[None] | None = None
    try:
        async with contextlib.AsyncExitStack() as stack:
            await start_all(stack, ups)
            await start_all(stack, [victim])
            await asyncio.sleep(stagger)
            await start_all(stack, [survivor])
            connection = await postgres.connect(dsn.url.rsplit("/", 1)[1])
            stack.push_async_callback(connection.close)
            owners = {int(str(o).rsplit("/", 1)[-1].split("@")[0]): str(o) for o in
                      await connection.fetchval("SELECT array_agg(owner) FROM line_processes")}
            run.victim_owner = owners[victim.pid]
            watch = LineWatch(connection, [owners[victim.pid], owners[survivor.pid]])
            run.line = watch.changes
            for asked in await warm_up(serves, ups, settings.timeout):
                if not asked.exact:
                    raise RuntimeError(f"the warm-up failed: {asked.error}")
            await script_all(ups, questions, settings.chunks, settings.delay)
            await asyncio.sleep(pause)
            tasks: list[asyncio.Task[Asked]] = []
            stack.callback(lambda: [task.cancel() for task in tasks])  # on a failure
            async with clients(serves, settings.chunks, settings.timeout, run.asked) as one:
                deadline = time.perf_counter() + START_TIMEOUT
                # The killed process's first question first (backend a), then the survivor's
                # (b): both stream.
                for index in (VICTIM, SURVIVOR):
                    tasks.append(asyncio.create_task(one(index, len(tasks))))
                    while len(run.asked) < len(tasks) or math.isnan(run.asked[-1].first_text):
                        if tasks[-1].done() or time.perf_counter() > deadline:
                            raise RuntimeError(f"serve {index + 1}'s first question did not "
                                               "stream")
                        await asyncio.sleep(0.005)
                both = run.asked[-1].first_text
                waiting = [0, 0]

                async def join(index: int, count: int) -> None:
                    """``count`` more questions to ``index``, in the line before it returns."""
                    for _ in range(count):
                        tasks.append(asyncio.create_task(one(index, len(tasks))))
                    waiting[index] += count
                    while (await watch.look()).waiting != tuple(waiting):
                        if any(task.done() for task in tasks[-count:]) or \
                                time.perf_counter() > deadline:
                            raise RuntimeError("a question did not join the line")
                        await asyncio.sleep(0.005)

                # Then one at a time, each in the line before the next: the line is the
                # killed process's, the survivor's, the killed process's, the survivor's;
                # then the survivor's others at once, behind them.
                for _ in range(KILLED_ASKS - 1):
                    await join(VICTIM, 1)
                    await join(SURVIVOR, 1)
                if per_process[SURVIVOR] > KILLED_ASKS:
                    await join(SURVIVOR, per_process[SURVIVOR] - KILLED_ASKS)
                run.streaming = both
                await asyncio.sleep(max(0.0, both + KILL_AT * settings.answer_seconds
                                        - time.perf_counter()))
                at_kill = await watch.look()
                run.lease_left = await watch.lease_left(owners[victim.pid])
                await watch.follow(owners[victim.pid], owners[survivor.pid])
                watch.changes.append((time.perf_counter(), at_kill))
                run.killed_wall = time.time()
                run.killed = victim.kill()
                watcher = asyncio.create_task(watch.run())
                for name, who in at_kill.slots:
                    if who == "killed":
                        run.victim_backend = name
                    elif who == "survivor":
                        run.survivor_backend = name
                await asyncio.gather(*tasks)
            # The survivor's questions are done: look on until the line has freed what the
            # killed process held and the survivor has said so, or the deadline.
            assert watcher is not None
            while True:
                run.swept = [(at, m.group(1), m.group(2)) for at, m in survivor.logged(SWEPT)]
                missing = run.unfreed()
                if not missing:
                    break
                if watcher.done():
                    watcher.result()  # its error
                    raise RuntimeError("the line's watcher stopped")
                if time.perf_counter() > run.killed + FREE_DEADLINE:
                    run.error = (f"{FREE_DEADLINE:g} s after the kill, not yet: "
                                 + "; ".join(missing))
                    break
                await asyncio.sleep(SLOT_POLL)
            await asyncio.sleep(2 * SLOT_POLL)  # the slots given back after the last answer
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            run.session_gone, run.heartbeats = watch.session_gone, watch.heartbeats
            run.timelines = {u.name: await u.timeline() for u in ups}
    except Exception as exc:
        run.error = f"{type(exc).__name__}: {exc}"
    finally:
        if watcher is not None and not watcher.done():
            watcher.cancel()
    run.exits = (victim.exit_code, survivor.exit_code)
    run.swept = [(at, m.group(1), m.group(2)) for at, m in survivor.logged(SWEPT)]
    run.lost_jobs = len(survivor.logged(LOST_JOB))
    run.wrongly_gone = [m.string for _, m in victim.logged(SWEPT)] + [
        m.string for at, m in survivor.logged(SWEPT)
        if m.group(1) != run.victim_owner or not at >= run.killed_wall]
    run.problems = survivor.problems()
    shared_kill_progress(run)
    return run


def _why(run: SharedKillRun) -> str:
    found = run.gone_logged()
    return REASONS.get(found[0][1], found[0][1]) if found else "-"


def shared_kill_progress(run: SharedKillRun) -> None:
    status = "ok" if run.ok else f"FAILED {run.error or ''}"
    why = "; ".join(sorted({why for _, why in run.gone_logged()})) or "not logged"
    print(f"  kill-shared run {run.rep + 1}: killed {fmt(run.killed - run.streaming)} s after "
          f"both streamed; session gone {fmt(run.session_gone - run.killed)} s after the kill; "
          f"found gone by the survivor {fmt(_swept_after(run))} s after ({why}); slot "
          f"{run.victim_backend or '?'} freed {fmt(run.freed())} s after, "
          f"to a survivor's job {fmt(run.held(run.victim_backend, 'survivor'))} s after; "
          f"{sum(a.error is not None for a in run.asked if a.serve == VICTIM)} errors, "
          f"{sum(a.hung for a in run.asked)} hung  {status}", flush=True)


SharedKillMetric = Callable[[SharedKillRun], float | str]


def _status(code: int | None) -> float:
    return math.nan if code is None else float(code)


def _victim_errors_after(run: SharedKillRun) -> float:
    return max((a.ended for a in run.asked if a.serve == VICTIM and a.error), default=math.nan) \
        - run.killed


def _swept_after(run: SharedKillRun) -> float:
    return min((at for at, _ in run.gone_logged()), default=math.nan)


def _session_after(run: SharedKillRun) -> float:
    return run.session_gone - run.killed


def _first_heartbeat(run: SharedKillRun) -> float:
    """The survivor's first heartbeat after the killed process's session left: the sweep
    that first finds it missing, s after the kill."""
    return min((at for at in run.heartbeats if at > run.session_gone),
               default=math.nan) - run.killed


def _victim_slot_used(run: SharedKillRun) -> float:
    """The killed process's backend starts a survivor's question (the fake's timeline)."""
    return min((a for a, _ in run.answers_after(run.victim_backend)), default=math.nan)


def _survivor_gap(run: SharedKillRun) -> float:
    """The survivor's backend: from the end of the answer it had at the kill to its next."""
    after = run.answers_after(run.survivor_backend)
    return after[0][0] - run.answer_at_kill(run.survivor_backend) if after else math.nan


SHARED_KILL_METRICS: list[tuple[str, SharedKillMetric]] = [
    ("killed process: requests mid-answer at the kill",
     lambda r: float(len(r.of(VICTIM, waiting=False)))),
    ("killed process: requests waiting in the line at the kill",
     lambda r: float(len(r.of(VICTIM, waiting=True)))),
    ("  of all its requests: ended in an error", lambda r: float(sum(
        a.error is not None and not a.hung for a in r.asked if a.serve == VICTIM))),
    ("  of all its requests: hung (no end)",
     lambda r: float(sum(a.hung for a in r.asked if a.serve == VICTIM))),
    ("  s after the kill: the last of their errors", _victim_errors_after),
    ("surviving process: requests mid-answer + waiting at the kill",
     lambda r: float(len([a for a in r.asked if a.serve == SURVIVOR]))),
    ("  of them failed or hung", lambda r: float(sum(
        not a.exact for a in r.asked if a.serve == SURVIVOR))),
    ("  its jobs the line lost (its log: a live process swept)", lambda r: float(r.lost_jobs)),
    ("live processes found gone (either process's log)",
     lambda r: float(len(r.wrongly_gone))),
    ("s after the kill: its backend's own slot free (the fake saw the cut)",
     lambda r: r.answer_at_kill(r.victim_backend)),
    ("s after the kill: its LISTEN session leaves pg_stat_activity", _session_after),
    ("s after the kill: the survivor's backend ends its answer",
     lambda r: r.answer_at_kill(r.survivor_backend)),
    ("  then held in the line by the killed process's waiting job s",
     lambda r: r.held_for(r.survivor_backend, "killed")),
    ("s after the kill: the survivor's next heartbeat (finds it missing)", _first_heartbeat),
    ("s after the kill: the survivor logs it gone", _swept_after),
    ("  why (its log): its session closed, or its lease lapsed", _why),
    ("  after its session closed s", lambda r: _swept_after(r) - _session_after(r)),
    ("  after that next heartbeat s", lambda r: _swept_after(r) - _first_heartbeat(r)),
    ("  the lease it had left at the kill s (not waited out)", lambda r: r.lease_left),
    ("s after the kill: the killed process's slot freed in the line",
     lambda r: r.freed()),
    ("s after the kill: its waiting jobs leave the line", lambda r: r.jobs_gone()),
    ("s after the kill: the killed process's slot to a survivor's job (line)",
     lambda r: r.held(r.victim_backend, "survivor")),
    ("s after the kill: ... whose question streams on that backend", _victim_slot_used),
    ("s after the kill: every survivor's waiting question streams", lambda r: max(
        (a.first_text for a in r.of(SURVIVOR, waiting=True)), default=math.nan) - r.killed),
    ("s after the kill: the survivor's last answer ends", lambda r: max(
        (a.ended for a in r.asked if a.serve == SURVIVOR), default=math.nan) - r.killed),
    ("survivor's backend idle from its answer at the kill to its next s", _survivor_gap),
    ("surviving process's exit status on SIGTERM", lambda r: _status(r.exits[SURVIVOR])),
]


def _cells(values: list[float | str]) -> tuple[str, ...]:
    """A row's cells and its median (for words: the one word of every run, else "-")."""
    if all(isinstance(v, float) for v in values):
        return (*(fmt(float(v)) for v in values), fmt(median([float(v) for v in values])))
    words = [str(v) for v in values]
    return (*words, words[0] if len(set(words)) == 1 else "-")


def line_story(run: SharedKillRun) -> list[tuple[float, str]]:
    """What happened to the killed process's place, s after the kill: the changes of the line
    that touch its slot or jobs, up to the first look with nothing of it left (not the
    survivor's own hand-overs), its session leaving, the survivor's heartbeats and its log
    line."""
    story: list[tuple[float, str]] = []
    last: tuple[str, int, bool] | None = None
    for at, state in run.line:
        key = (state.holder(run.victim_backend), state.waiting[VICTIM],
               state.holder(run.survivor_backend) == "killed")
        if key != last:
            story.append((at - run.killed, state.text()))
            last = key
        if at > run.killed and "killed" not in dict(state.slots).values() \
                and not state.waiting[VICTIM]:
            break
    if not math.isnan(run.session_gone):
        story.append((run.session_gone - run.killed,
                      "its LISTEN session is no longer in pg_stat_activity"))
    story += [(at - run.killed, "the survivor's heartbeat (lease renewed, sweep)")
              for at in run.heartbeats]
    story += [(at, f"the survivor logs: it is gone ({why})") for at, why in run.gone_logged()]
    return sorted(story, key=lambda item: item[0])


def report_shared_kill(runs: list[SharedKillRun], settings: Settings, questions: int) -> None:
    from rtxrelay.storage.postgres_line import HEARTBEAT, LEASE

    split = f"{KILLED_ASKS} + {questions - KILLED_ASKS}"
    spread = "; ".join(f"run {r.rep + 1}: {fmt(a)} s, {fmt(b)} s" for r in runs
                       for a, b in [phases(r.rep, settings.reps)])
    print(f"\n== a serve process killed mid-answer, the line shared: N = {KILL_BACKENDS}, 2 "
          f"processes, M = {questions} ({split}), T = {fmt(settings.answer_seconds)} s; SIGKILL "
          f"to process 1 {fmt(KILL_AT * settings.answer_seconds)} s after both streamed, the "
          f"rest waiting in the line; gone: its session missing 2 heartbeats (HEARTBEAT = "
          f"{HEARTBEAT:g} s) or its lease lapsed (LEASE = {LEASE:g} s) ==")
    print(f"(the survivor started after process 1, and the questions sent after the warm-up, "
          f"by: {spread})")
    rows: list[tuple[str, ...]] = [("metric", *(f"run {r.rep + 1}" for r in runs), "median")]
    for name, metric in SHARED_KILL_METRICS:
        rows.append((name, *_cells([metric(r) for r in runs])))
    print_table(rows)
    for r in runs[:1]:
        errors = Counter((a.error or "").split(":")[0] for a in r.asked
                         if a.serve == VICTIM and a.error)
        if errors:
            first = next(a.error for a in r.asked if a.serve == VICTIM and a.error)
            print(f"what the killed process's clients got (run 1): {dict(errors)}; e.g. "
                  f"{first}")
        if r.line:
            print(f"the killed process's place in the shared line after the kill (run 1; "
                  f"backend {r.victim_backend} was its, {r.survivor_backend} the survivor's; "
                  "the survivor's own hand-overs left out):")
            for at, text in line_story(r):
                print(f"  {at:+8.3f} s  {text}")
        if r.problems:
            print("what the surviving process logged (run 1, warnings and errors):")
            for line in r.problems[:8]:
                print(f"  {line}")
    for r in runs:
        for line in r.wrongly_gone:
            print(f"a live process found gone (run {r.rep + 1}): {line}")


# -- main ----------------------------------------------------------------------------------------


async def start_postgres(stack: contextlib.AsyncExitStack) -> PostgresServer:
    """A throwaway PostgreSQL server (tests/support/postgres.py's: initdb into a temporary
    folder, as the postgres user when root, 127.0.0.1 on a free port), stopped and removed
    with ``stack``."""
    try:
        from tests.support.postgres import INSTALL_HINT, PostgresServer, find_bindir
    except ImportError as exc:  # asyncpg (the postgresql extra), or pytest (dev)
        raise RuntimeError(f"the shared-line rows need {exc.name}: pip install -e "
                           "'.[postgresql,dev]'") from exc
    bindir = find_bindir()
    if bindir is None:
        raise RuntimeError(f"the shared-line rows need a PostgreSQL server. {INSTALL_HINT}")
    started = time.monotonic()
    server = await stack.enter_async_context(PostgresServer(bindir))
    print(f"PostgreSQL for the shared line: {bindir}, 127.0.0.1:{server.port}, a fresh "
          f"database per row (initdb + start: {time.monotonic() - started:.1f} s)", flush=True)
    return server


async def bench(args: argparse.Namespace) -> int:
    settings = Settings(args.questions, args.answer_seconds, args.chunks, args.reps,
                        args.timeout, args.serve_log_level)
    chosen = [layout for layout in LAYOUTS if layout.key in args.rows]
    print(f"rtxrelay serve over one-slot fake llama.cpp backends (bench/_pool_fake_upstream.py); "
          f"client: openai {openai.__version__}; {os.cpu_count()} CPUs, "
          f"{platform.python_implementation()} {platform.python_version()}, "
          f"{platform.system()} {platform.release()}", flush=True)
    runs: list[Run] = []
    kills: list[KillRun] = []
    shared_kills: list[SharedKillRun] = []
    ran: list[Layout] = []
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="rtxrelay-pool-bench-") as tmp:
        workdir = Path(tmp)
        async with contextlib.AsyncExitStack() as outer:
            postgres: PostgresServer | None = None
            if any(layout.shared for layout in chosen) or KILL_SHARED in args.rows:
                try:
                    postgres = await start_postgres(outer)
                except Exception as exc:
                    failures.append(f"PostgreSQL: {type(exc).__name__}: {exc}")
                    print(f"  FAILED {failures[-1]}", flush=True)
            runnable = [layout for layout in chosen if postgres or not layout.shared]
            if runnable:
                async with contextlib.AsyncExitStack() as stack:
                    ups = upstreams(max(layout.backends for layout in runnable))
                    await start_all(stack, ups)
                    for layout in runnable:
                        try:
                            found = await run_layout(layout, ups, settings, workdir, postgres)
                        except Exception as exc:
                            failures.append(f"{layout.label}: {type(exc).__name__}: {exc}")
                            print(f"  FAILED {failures[-1]}", flush=True)
                            continue
                        runs += found
                        ran.append(layout)
            if KILL in args.rows:
                for rep in range(args.reps):
                    kills.append(await kill_run(rep, settings, args.kill_questions, workdir))
            if KILL_SHARED in args.rows and postgres is not None:
                for rep in range(args.reps):
                    shared_kills.append(await shared_kill_run(
                        rep, settings, args.kill_shared_questions, workdir, postgres))
    for questions in settings.questions if ran else []:
        report_efficiency(ran, runs, settings, questions)
    if kills:
        report_kill(kills, settings, args.kill_questions)
    if shared_kills:
        report_shared_kill(shared_kills, settings, args.kill_shared_questions)
    failed: list[Run | KillRun | SharedKillRun] = [r for r in runs if not r.ok]
    failed += [k for k in kills if not k.ok] + [k for k in shared_kills if not k.ok]
    if failed or failures:
        print(f"\n== {len(failed) + len(failures)} FAILED run(s) ==")
        for line in failures:
            print(line)
        for r in failed:
            if isinstance(r, Run):
                what = f"{r.layout.label} M={r.questions} run {r.rep + 1}"
            elif isinstance(r, KillRun):
                what = f"kill run {r.rep + 1}"
            else:
                what = f"kill-shared run {r.rep + 1} (exit statuses {r.exits})"
            errors = Counter(a.error for a in r.asked if a.error)
            print(f"{what}: {r.error or ''} {dict(errors) if errors else ''}")
    return 1 if failed or failures else 0


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: M={questions[0]}, T={answer_seconds} s in {chunks} "
                        "chunks, {reps} run, kill with M={kill_questions}".format(**QUICK))
    parser.add_argument("--rows", type=lambda s: [x.strip() for x in s.split(",") if x.strip()],
                        help="comma list of " + ", ".join(ALL_ROWS) + " (default: all; "
                        f"--quick leaves out {KILL_SHARED}, which waits for the survivor to "
                        "find the killed process gone: 10-15 s)")
    parser.add_argument("--processes", type=int, choices=(1, 2),
                        help="1: only the rows without PostgreSQL (" + ",".join(ROWS[1])
                        + "); 2: only the rows of 2 serve processes sharing one line in "
                        "PostgreSQL (" + ",".join(ROWS[2]) + "); default: both")
    parser.add_argument("--questions", "-M", type=_ints, default=list(DEFAULT_QUESTIONS),
                        help="M, questions asked at once: a comma list, one table each "
                        f"(default {','.join(map(str, DEFAULT_QUESTIONS))})")
    parser.add_argument("--answer-seconds", "-T", type=float, default=DEFAULT_SECONDS,
                        help="T, how long each answer streams (s)")
    parser.add_argument("--chunks", type=int, default=DEFAULT_CHUNKS,
                        help="chunks per answer, evenly spread over T")
    parser.add_argument("--reps", type=int, default=DEFAULT_REPS, help="runs per row")
    parser.add_argument("--kill-questions", type=int, default=KILL_QUESTIONS,
                        help="M of the kill row (N = 2: 2 answer, the rest wait)")
    parser.add_argument("--kill-shared-questions", type=int,
                        help=f"M of the {KILL_SHARED} row: the killed process asks "
                        f"{KILLED_ASKS}, the survivor the rest (default: enough that the "
                        "survivor's line on one backend outlasts 3 heartbeats + 2 s, "
                        f"{shared_kill_questions(DEFAULT_SECONDS)} at T = "
                        f"{DEFAULT_SECONDS:g} s)")
    parser.add_argument("--timeout", type=float, default=120.0,
                        help="per request (s): past it, the request counts as hung")
    parser.add_argument("--serve-log-level",
                        help="LOG_LEVEL in serve's .env (default unset: as a user starts it)")
    args = parser.parse_args(argv)
    if args.quick:
        for name, value in QUICK.items():
            setattr(args, name, value)
    if args.rows is None:
        args.rows = [row for row in (ROWS[args.processes] if args.processes else ALL_ROWS)
                     if not (args.quick and row == KILL_SHARED)]
    unknown = sorted(set(args.rows) - set(ALL_ROWS))
    if unknown:
        parser.error(f"--rows: unknown {', '.join(unknown)}")
    if not args.questions or min(args.questions) < 1 or args.chunks < 1 or args.reps < 1 \
            or args.answer_seconds <= 0:
        parser.error("--questions, --chunks, --reps must be at least 1, -T above 0")
    if args.kill_questions <= KILL_BACKENDS:
        parser.error(f"--kill-questions must be above {KILL_BACKENDS}: some must wait")
    if args.kill_shared_questions is None:
        args.kill_shared_questions = shared_kill_questions(args.answer_seconds)
    if KILL_SHARED in args.rows and args.kill_shared_questions < 2 * KILLED_ASKS:
        parser.error(f"--kill-shared-questions must be at least {2 * KILLED_ASKS}: the "
                     f"killed process asks {KILLED_ASKS} and the survivor must have one "
                     f"answering and {KILLED_ASKS - 1} waiting")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    code = asyncio.run(bench(args))
    print(f"\nbench took {time.monotonic() - started:.0f} s")
    return code


if __name__ == "__main__":
    sys.exit(main())
