"""A pool of backends behind one line (issue 15): how close M questions over N one-slot
backends come to the ideal, and how long the questions waiting for a backend that dies take
to move to another.

    .venv/bin/python bench/bench_pool.py            # full run (~2.5 min)
    .venv/bin/python bench/bench_pool.py --quick    # smoke run (~12 s)

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
- ``indep-n2``, ``indep-n4``: the comparison. Two serve processes, each with its own folder,
  database and pool of the same N backends, M split evenly between them. Neither knows what
  the other sends, so each may send to a backend the other is using: the request waits
  inside that backend while another may sit idle. What a line shared between processes must
  beat.
- ``kill``: N = 2, ``--kill-questions`` (6): once both backends answer and the rest wait in
  serve's line, one backend's process is killed (SIGKILL) mid-answer. The answer it was
  streaming must fail with an error (not hang); the waiting questions must all be answered
  by the other backend, none failing. Timed from the kill: the failed answer's error, the
  backend taken out (serve's log), and every waiting question streaming.

``--processes 2``: two serve processes sharing one line. That needs the line in PostgreSQL,
which does not exist yet: the bench says so and runs nothing (see ``Layout``).

Every answer must be the scripted text byte for byte and no request may fail (besides the
killed backend's own answer): exit status 1 otherwise. Don't run anything heavy at the same
time. See bench/README.md, "Pool of backends (issue 15)".
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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
for _path in (REPO_DIR, BENCH_DIR):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

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
WARM_TOKENS = 4
MAX_WAITING = 10_000
QUESTION = "Question {n}: how do tensor cores speed up inference?"
# perf_counter() (the client's clock) to monotonic() (the fakes' clock; the same clock in
# every process on Linux, where both are CLOCK_MONOTONIC and this is 0).
CLOCK_OFFSET = time.monotonic() - time.perf_counter()
LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")
TAKEN_OUT = re.compile(r"backend (\S+) is taken out")
MOVED = re.compile(r"backend (\S+) failed before answering .* moves to another one")
PG_LINE = ("2 serve processes sharing one line (the same backends, M split between them): "
           "comes with the PostgreSQL line; not measured yet. The 'own lines' columns are "
           "what it must beat.")


# -- what runs -----------------------------------------------------------------------------------


class NotYet(Exception):
    """A layout the project cannot run yet."""


@dataclass(frozen=True)
class Layout:
    """N backends and the serve processes in front of them."""

    key: str  # --rows
    backends: int
    processes: int = 1
    # With 2 processes: one line shared between them (True: needs the PostgreSQL line) or
    # each its own pool and line (False: what is possible today).
    shared: bool = False

    @property
    def label(self) -> str:
        if self.processes == 1:
            return f"N={self.backends}"
        lines = "1 shared line" if self.shared else "2 own lines"
        return f"N={self.backends}, {self.processes} serves, {lines}"

    def split(self, questions: int) -> list[int]:
        """The questions each serve process gets, as evenly as they go."""
        base, extra = divmod(questions, self.processes)
        return [base + (1 if i < extra else 0) for i in range(self.processes)]

    def folders(self, workdir: Path) -> list[Path]:
        """Each serve process's folder (its .env, backends.toml and database)."""
        if self.shared:
            # To come: the same backends.toml in each folder and the same
            # RTXRELAY_DB=postgresql://… in each .env, once the pool's line lives there, so
            # both processes hand out the same slots (--postgres-url then, or a throwaway
            # server as tests/support/postgres.py starts one).
            raise NotYet("needs one line shared between the processes: comes with the "
                         "PostgreSQL line; not measured yet")
        return [workdir / f"{self.key}-serve-{i + 1}" for i in range(self.processes)]


LAYOUTS = (
    Layout("n1", 1), Layout("n2", 2), Layout("n4", 4),
    Layout("indep-n2", 2, processes=2), Layout("indep-n4", 4, processes=2),
    Layout("shared-n2", 2, processes=2, shared=True),
    Layout("shared-n4", 4, processes=2, shared=True),
)
KILL = "kill"
ROWS = {1: ("n1", "n2", "n4", "indep-n2", "indep-n4", KILL), 2: ("shared-n2", "shared-n4")}


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
    a user's shell has (``bench_serve.KEPT_ENV``): the settings are in the files."""

    def __init__(self, upstreams: Sequence[PoolUpstream], folder: Path,
                 log_level: str | None) -> None:
        super().__init__(upstreams[0], folder, log_level)  # (Serve's upstream: unused here)
        self.upstreams = tuple(upstreams)
        self.folder = folder
        self._level = log_level

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k in KEPT_ENV}
        env.update({"NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost",
                    "PYTHONIOENCODING": "utf-8"})
        return env

    def write_files(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        settings = [f"RTXRELAY_DB={self.folder / 'rtxrelay.db'}",
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

    def logged_at(self, pattern: re.Pattern[str]) -> list[float]:
        """time.time() of each of its log lines that match (the log's own ms timestamps)."""
        found = []
        for line in self.lines:
            stamp = LOG_TIME.match(line)
            if stamp and pattern.search(line):
                found.append(datetime.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S,%f")
                             .timestamp())
        return found


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


async def ask_all(serves: Sequence[PoolServe], counts: Sequence[int], tokens: int,
                  timeout: float, asked: list[Asked]) -> None:
    """``counts[i]`` questions to ``serves[i]``, all at once, one SDK client per serve;
    ``asked`` fills as they go (the kill scenario watches it)."""
    expected = answer_text(tokens)
    async with contextlib.AsyncExitStack() as stack:
        asks = [await stack.enter_async_context(connect(Job(
            base_url=serve.base_url, model=serve.upstreams[0].model, api_key="",
            question="", warm_question=""))) for serve in serves]

        async def one(index: int, number: int) -> None:
            record = Asked(index)
            asked.append(record)
            record.sent = time.perf_counter()
            try:
                await asyncio.wait_for(asks[index](QUESTION.format(n=number), False,
                                                   record.answer), timeout)
            except TimeoutError:
                record.hung = True
                record.error = f"no end after {timeout:g} s"
            except openai.OpenAIError as exc:
                record.error = f"{type(exc).__name__}: {exc}"
            record.ended = time.perf_counter()
            text = record.answer.text
            record.exact = record.error is None and text == expected
            if record.error is None and not record.exact:
                record.error = f"{len(text)} chars, not the {len(expected)} scripted"

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
                     workdir: Path) -> list[Run]:
    """Warm-up, then ``reps`` runs of each M questions through ``layout``'s serve
    processes."""
    mine = list(ups[:layout.backends])
    folders = layout.folders(workdir)
    serves = [PoolServe(mine, folder, settings.log_level) for folder in folders]
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
    print(f"  {run.layout.label:<28} M={run.questions:<3} run {run.rep + 1}: wall "
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


# -- main ----------------------------------------------------------------------------------------


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
    ran: list[Layout] = []
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="rtxrelay-pool-bench-") as tmp:
        workdir = Path(tmp)
        runnable = []
        for layout in chosen:
            try:
                layout.folders(workdir)
            except NotYet as exc:
                print(f"{layout.label}: {exc}", flush=True)
                continue
            runnable.append(layout)
        if runnable:
            async with contextlib.AsyncExitStack() as stack:
                ups = upstreams(max(layout.backends for layout in runnable))
                await start_all(stack, ups)
                for layout in runnable:
                    try:
                        found = await run_layout(layout, ups, settings, workdir)
                    except Exception as exc:
                        failures.append(f"{layout.label}: {type(exc).__name__}: {exc}")
                        print(f"  FAILED {failures[-1]}", flush=True)
                        continue
                    runs += found
                    ran.append(layout)
        if KILL in args.rows:
            for rep in range(args.reps):
                kills.append(await kill_run(rep, settings, args.kill_questions, workdir))
    for questions in settings.questions if ran else []:
        report_efficiency(ran, runs, settings, questions)
    if ran and args.processes == 1:
        print(PG_LINE)
    if kills:
        report_kill(kills, settings, args.kill_questions)
    failed = [r for r in runs if not r.ok] + [k for k in kills if not k.ok]
    if failed or failures:
        print(f"\n== {len(failed) + len(failures)} FAILED run(s) ==")
        for line in failures:
            print(line)
        for r in failed:
            what = f"{r.layout.label} M={r.questions} run {r.rep + 1}" if isinstance(r, Run) \
                else f"kill run {r.rep + 1}"
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
                        help="comma list of " + ", ".join(ROWS[1] + ROWS[2])
                        + f" (default: {','.join(ROWS[1])}; with --processes 2: "
                        f"{','.join(ROWS[2])})")
    parser.add_argument("--processes", type=int, choices=(1, 2), default=1,
                        help="serve processes sharing one line: 2 comes with the PostgreSQL "
                        "line (not yet)")
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
    parser.add_argument("--timeout", type=float, default=120.0,
                        help="per request (s): past it, the request counts as hung")
    parser.add_argument("--serve-log-level",
                        help="LOG_LEVEL in serve's .env (default unset: as a user starts it)")
    args = parser.parse_args(argv)
    if args.quick:
        for name, value in QUICK.items():
            setattr(args, name, value)
    if args.rows is None:
        args.rows = list(ROWS[args.processes])
    unknown = sorted(set(args.rows) - set(ROWS[1] + ROWS[2]))
    if unknown:
        parser.error(f"--rows: unknown {', '.join(unknown)}")
    if not args.questions or min(args.questions) < 1 or args.chunks < 1 or args.reps < 1 \
            or args.answer_seconds <= 0:
        parser.error("--questions, --chunks, --reps must be at least 1, -T above 0")
    if args.kill_questions <= KILL_BACKENDS:
        parser.error(f"--kill-questions must be above {KILL_BACKENDS}: some must wait")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    code = asyncio.run(bench(args))
    print(f"\nbench took {time.monotonic() - started:.0f} s")
    return code


if __name__ == "__main__":
    sys.exit(main())
