"""``rtxrelay serve``: what it costs per streamed token, and how many streaming clients one
process holds.

    .venv/bin/python bench/bench_serve.py            # full run (~2.5 min)
    .venv/bin/python bench/bench_serve.py --quick    # smoke run: one short answer, N = 1, 4

One fake OpenAI-compatible upstream (``_serve_fake_upstream.py``: ``tests/fakes/openai_api``'s
``FakeOpenAI``, llama.cpp persona, in a process of its own) and one real ``python -m rtxrelay
serve --port 0`` in front of it (``OPENAI_BASE_URL`` = the fake, ``MAX_CONCURRENT_JOBS=64``,
``RTXRELAY_API_MAX_WAITING`` large, a temporary ``RTXRELAY_DB``, a clean environment and an
empty working folder, so no ``.env`` is read) live through the whole bench.

1. **Overhead per streamed token**: the same client (the raw aiohttp reader of
   ``_openai_raw_worker.py``; ``--client sdk``: the official SDK) reads the same scripted answer
   (a) from the fake directly and (b) through ``serve``, the fake answering as fast as it can.
   Each run is a fresh worker process (``_serve_stream_worker.py``) that measures itself; it
   stops before and after the measured answer so ``serve``'s and the fake's CPU (psutil,
   /proc) are read around exactly that answer.
2. **Capacity**: N clients (``--clients 1,8,32,64``) stream at once through ``serve`` from one
   worker process (``_serve_load_worker.py``), each a paced answer (``--token-delay``, 5 ms a
   token, like a model); ``serve``'s RSS is sampled through the answers. The same N clients
   also read the fake directly, for the machine's own limit.

Every text a client gets must equal the scripted answer byte for byte (exit status 1
otherwise). Don't run anything heavy at the same time: the fake, ``serve``, the workers and
the machine's other load share the cores. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import math
import os
import platform
import pstats
import re
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
for _path in (REPO_DIR, BENCH_DIR):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import aiohttp  # noqa: E402
import psutil  # noqa: E402  (a dependency of rtxrelay)
from _measure import SPAWN_ENV  # noqa: E402
from _openai_fake_server import answer_text  # noqa: E402
from _table import fmt, print_table, ratio  # noqa: E402

DIRECT = "fake directly"
SERVED = "through serve"
TARGETS = (DIRECT, SERVED)
HEADER = ("metric", DIRECT, SERVED, "serve / direct")
DEFAULT_LENGTHS = (1_000, 5_000)
DEFAULT_CLIENTS = (1, 8, 32, 64)
DEFAULT_TOKEN_DELAY = 0.005
DEFAULT_CAPACITY_TOKENS = 1_000
QUICK_LENGTH = 500
QUICK_CLIENTS = (1, 4)
QUICK_CAPACITY_TOKENS = 50
WARMUP_TOKENS = 200
FIRST_REQUEST_TOKENS = 16
QUESTION = "How do tensor cores speed up inference? Answer in {n} tokens."
FIRST_QUESTION = "Say hello."
MAX_JOBS = 64  # MAX_CONCURRENT_JOBS' ceiling
MAX_WAITING = 10_000
START_TIMEOUT = 30.0
SETTLE = 0.02  # s after the last text before serve's CPU is read: its clean-up of the request
READY_LINE = re.compile(r"Serving the OpenAI-compatible API at (http://\S+/v1)")
# What serve's settings must not take from the bench's own environment.
KEPT_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TMPDIR", "TZ", "SYSTEMROOT",
            "VIRTUAL_ENV")


# -- the processes -------------------------------------------------------------------------------


def worker_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in (
        "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")}
    env.update({"NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost",
                "PYTHONIOENCODING": "utf-8"})
    return env


class Upstream:
    """``_serve_fake_upstream.py`` in a child process, driven over its stdin and stdout."""

    def __init__(self) -> None:
        self.base_url = ""
        self.model = ""
        self.pid = 0
        self._proc: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> Upstream:
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable, str(BENCH_DIR / "_serve_fake_upstream.py"),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=worker_env(),
            cwd=str(REPO_DIR))
        hello = await self._read()
        self.base_url, self.model, self.pid = hello["base_url"], hello["model"], hello["pid"]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.stdin is not None:
            proc.stdin.close()  # the fake exits when its stdin closes
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()

    async def command(self, command: dict[str, Any]) -> dict[str, Any]:
        assert self._proc is not None and self._proc.stdin is not None
        self._proc.stdin.write(json.dumps(command).encode() + b"\n")
        await self._proc.stdin.drain()
        answer = await self._read()
        if "error" in answer:
            raise RuntimeError(f"the fake refused {command}: {answer['error']}")
        return answer

    async def _read(self) -> dict[str, Any]:
        assert self._proc is not None and self._proc.stdout is not None
        line = await asyncio.wait_for(self._proc.stdout.readline(), START_TIMEOUT)
        if not line:
            raise RuntimeError(f"the fake exited ({await self._proc.wait()})")
        found: dict[str, Any] = json.loads(line)
        return found

    async def script(self, *answers: tuple[int, str, float]) -> None:
        """The next chat requests' answers: (tokens, question, delay per token)."""
        await self.command({"script": [
            {"tokens": tokens, "prompt_tokens": math.ceil(len(question) / 4), "delay": delay}
            for tokens, question, delay in answers]})

    async def stats(self) -> Stats:
        found = await self.command({"stats": True})
        return Stats(cpu=float(found["cpu"]), requests=dict(found["requests"]),
                     hung_up=int(found["hung_up"]), max_active=int(found["max_active"]))


@dataclass(frozen=True)
class Stats:
    cpu: float
    requests: dict[str, int]  # "GET /v1/models": n, … since the fake started
    hung_up: int = 0
    max_active: int = 0

    def since(self, before: Stats) -> dict[str, int]:
        return {path: n - before.requests.get(path, 0) for path, n in self.requests.items()
                if n - before.requests.get(path, 0)}


@dataclass(frozen=True)
class Sample:
    cpu: float  # user + sys s so far
    rss_mib: float
    fds: int
    threads: int


class Serve:
    """``python -m rtxrelay serve --port 0`` in front of the fake, as a user starts it."""

    def __init__(self, upstream: Upstream, workdir: Path, log_level: str | None,
                 profile: Path | None = None) -> None:
        self._upstream = upstream
        self._workdir = workdir
        self._log_level = log_level
        self._profile = profile
        self.base_url = ""
        self.lines: list[str] = []  # everything it wrote on stderr
        self.exit_code: int | None = None
        self.stop_seconds = math.nan
        self._proc: asyncio.subprocess.Process | None = None
        self._process: psutil.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._ready: asyncio.Future[str] | None = None

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k in KEPT_ENV}
        env.update({
            "OPENAI_BASE_URL": self._upstream.base_url,
            "MAX_CONCURRENT_JOBS": str(MAX_JOBS),
            "RTXRELAY_API_MAX_WAITING": str(MAX_WAITING),
            "RTXRELAY_DB": str(self._workdir / "serve.db"),
            "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost",
            "PYTHONIOENCODING": "utf-8",
        })
        if self._log_level:
            env["LOG_LEVEL"] = self._log_level
        return env

    async def __aenter__(self) -> Serve:
        profiler = ("-m", "cProfile", "-o", str(self._profile)) if self._profile else ()
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable, *profiler, "-m", "rtxrelay", "serve", "--port", "0",
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE, env=self.env(), cwd=str(self._workdir))
        self._ready = asyncio.get_running_loop().create_future()
        self._reader = asyncio.create_task(self._read_stderr())
        try:
            self.base_url = await asyncio.wait_for(asyncio.shield(self._ready), START_TIMEOUT)
        except BaseException:
            await self.__aexit__()
            raise
        self._process = psutil.Process(self._proc.pid)
        return self

    async def _read_stderr(self) -> None:
        assert self._proc is not None and self._proc.stderr is not None
        while line := await self._proc.stderr.readline():
            text = line.decode("utf-8", "replace").rstrip()
            self.lines.append(text)
            found = READY_LINE.search(text)
            if found and self._ready is not None and not self._ready.done():
                self._ready.set_result(found.group(1))
        if self._ready is not None and not self._ready.done():
            tail = "\n".join(self.lines[-20:])
            self._ready.set_exception(RuntimeError(
                f"rtxrelay serve exited ({await self._proc.wait()}) before it served:\n{tail}"))

    async def __aexit__(self, *exc_info: object) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.returncode is None:
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)  # as systemd or `kill` stop it
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except TimeoutError:
                proc.kill()
                await proc.wait()
            self.stop_seconds = time.monotonic() - started
        self.exit_code = proc.returncode
        if self._reader is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._reader, 5)
        if self._ready is not None and self._ready.done() and not self._ready.cancelled():
            self._ready.exception()  # retrieved: no "never retrieved" warning

    def sample(self) -> Sample:
        assert self._process is not None
        process = self._process
        with process.oneshot():
            cpu = _schedstat_cpu(process.pid)
            if math.isnan(cpu):
                times = process.cpu_times()  # in clock ticks: 10 ms steps
                cpu = times.user + times.system
            return Sample(cpu=cpu, rss_mib=process.memory_info().rss / 2**20,
                          fds=process.num_fds(), threads=process.num_threads())

    def rss_mib(self) -> float:
        assert self._process is not None
        return float(self._process.memory_info().rss) / 2**20

    def peak_rss_lifetime_mib(self) -> float:
        """VmHWM: the process's peak RSS since it started (Linux)."""
        try:
            status = Path(f"/proc/{self.pid}/status").read_text(encoding="ascii")
        except OSError:
            return math.nan
        found = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
        return int(found.group(1)) / 1024 if found else math.nan

    def problems(self) -> list[str]:
        """What it logged besides its address line and INFO lines (unless LOG_LEVEL says
        more, it logs warnings and errors only)."""
        return [line for line in self.lines if not READY_LINE.search(line)
                and not re.search(r" (INFO|DEBUG) ", line)]


def _schedstat_cpu(pid: int) -> float:
    """CPU s of a process's live threads, in ns steps (``/proc/PID/task/*/schedstat``'s time
    on a CPU; /proc's utime and stime, psutil's figure, count in 10 ms ticks, too coarse for
    one answer). nan where it is not available."""
    total = 0
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(FileNotFoundError):  # a thread that just ended
                total += int((task / "schedstat").read_text(encoding="ascii").split()[0])
    except (OSError, ValueError, IndexError):
        return math.nan
    return total / 1e9


class RssSampler:
    """``serve``'s RSS every ``interval`` s while the block runs: its peak, and how many
    samples were taken."""

    def __init__(self, serve: Serve, interval: float) -> None:
        self._serve = serve
        self._interval = interval
        self.peak_mib = math.nan
        self.samples = 0
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> RssSampler:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._take()  # and once more at the end

    async def _run(self) -> None:
        while True:
            self._take()
            await asyncio.sleep(self._interval)

    def _take(self) -> None:
        with contextlib.suppress(psutil.Error):
            rss = self._serve.rss_mib()
            self.peak_mib = rss if math.isnan(self.peak_mib) else max(self.peak_mib, rss)
            self.samples += 1


class Worker:
    """A bench worker with the ready/done handshake of ``_serve_stream_worker.py``."""

    def __init__(self, script: str, argv: Sequence[str], out: Path, timeout: float) -> None:
        self._script = script
        self._argv = argv
        self.out = out
        self._timeout = timeout
        self._proc: asyncio.subprocess.Process | None = None
        self._stderr: asyncio.Task[bytes] | None = None
        self.output: list[str] = []  # stdout lines that were not the handshake, and stderr

    async def start(self) -> None:
        env = worker_env()
        env[SPAWN_ENV] = repr(time.time())
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable, str(BENCH_DIR / self._script), *self._argv, str(self.out),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=env, cwd=str(BENCH_DIR))
        assert self._proc.stderr is not None
        self._stderr = asyncio.create_task(self._proc.stderr.read())

    async def expect(self, phase: str) -> bool:
        """Wait for the worker to reach ``phase``; False if it ended first."""
        assert self._proc is not None and self._proc.stdout is not None
        while True:
            line = await asyncio.wait_for(self._proc.stdout.readline(), self._timeout)
            if not line:
                return False
            text = line.decode("utf-8", "replace").rstrip()
            with contextlib.suppress(ValueError):
                if json.loads(text).get("phase") == phase:
                    return True
            self.output.append(text)

    async def go(self) -> None:
        assert self._proc is not None and self._proc.stdin is not None
        self._proc.stdin.write(b"go\n")
        await self._proc.stdin.drain()

    async def finish(self) -> tuple[dict[str, Any] | None, str | None]:
        """The result file, or why there is none; the worker is ended either way."""
        proc = self._proc
        assert proc is not None
        error: str | None = None
        if proc.stdin is not None:
            with contextlib.suppress(ConnectionError):
                proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), self._timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            error = f"timed out after {self._timeout:g} s (worker killed)"
        if self._stderr is not None:
            self.output += (await self._stderr).decode("utf-8", "replace").splitlines()
        try:
            data: dict[str, Any] = json.loads(self.out.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None, error or f"worker exited {proc.returncode} without a result"
        finally:
            self.out.unlink(missing_ok=True)
        if not data.get("ok"):
            return data, error or str(data.get("error") or f"worker exited {proc.returncode}")
        return data, error

    def kill(self) -> None:
        if self._proc is not None and self._proc.returncode is None:
            self._proc.kill()


# -- part 1: the overhead per streamed token -----------------------------------------------------


@dataclass
class StreamRun:
    target: str
    length: int
    rep: int  # -1: warm-up
    data: dict[str, Any] = field(default_factory=dict)
    ok: bool = False
    error: str | None = None
    serve_cpu: float = math.nan  # serve's CPU over the measured answer
    upstream_cpu: float = math.nan  # the fake's CPU over the measured answer
    upstream_requests: dict[str, int] = field(default_factory=dict)  # during the answer
    serve_rss_mib: float = math.nan  # after the answer
    output_tail: str = ""

    def get(self, key: str) -> float:
        value = self.data.get(key)
        if value is None:
            value = self.data.get("extra", {}).get(key)
        return float(value) if isinstance(value, int | float) else math.nan

    def per_1k(self, cpu: float) -> float:
        return cpu / self.length * 1000 if self.length else math.nan


async def stream_run(upstream: Upstream, serve: Serve, args: argparse.Namespace,
                     run: StreamRun, workdir: Path) -> StreamRun:
    question = QUESTION.format(n=run.length)
    base_url = serve.base_url if run.target == SERVED else upstream.base_url
    job = {"base_url": base_url, "model": upstream.model, "api_key": "",
           "question": question, "warm_question": FIRST_QUESTION,
           **limits(args, run.length, FIRST_REQUEST_TOKENS)}
    await upstream.script((FIRST_REQUEST_TOKENS, FIRST_QUESTION, 0.0),
                          (run.length, question, 0.0))
    worker = Worker("_serve_stream_worker.py", [args.client, json.dumps(job)],
                    workdir / f"stream-{run.target[:6]}-{run.length}-{run.rep}.json",
                    args.timeout)
    await worker.start()
    try:
        if await worker.expect("ready"):
            up_before, before = await upstream.stats(), serve.sample()
            await worker.go()
            if await worker.expect("done"):
                await asyncio.sleep(SETTLE)
                after, up_after = serve.sample(), await upstream.stats()
                run.serve_cpu = after.cpu - before.cpu
                run.serve_rss_mib = after.rss_mib
                run.upstream_cpu = up_after.cpu - up_before.cpu
                run.upstream_requests = up_after.since(up_before)
                await worker.go()
    except TimeoutError:
        worker.kill()
    except psutil.Error as exc:  # serve is gone
        worker.kill()
        worker.output.append(f"rtxrelay serve: {exc!r}")
    data, run.error = await worker.finish()
    run.data = data or {}
    run.output_tail = "\n".join(worker.output)[-3000:]
    if run.error is None:
        run.error = check_stream(run)
    run.ok = run.error is None
    return run


def limits(args: argparse.Namespace, tokens: int, first_tokens: int) -> dict[str, Any]:
    """``--max-tokens-factor``: every request asks ``max_tokens`` = factor x the tokens the
    fake will stream (the fake streams its script whatever the limit, as a model that stops on
    its own before the limit)."""
    factor = args.max_tokens_factor
    if factor is None:
        return {}
    return {"extra_body": {"max_tokens": math.ceil(tokens * factor)},
            "warm_max_tokens": math.ceil(first_tokens * factor)}


def check_stream(run: StreamRun) -> str | None:
    """The scripted texts byte for byte, and the usage the fake sent."""
    extra = run.data.get("extra", {})
    checks = (("answer", run.data.get("final_text"), answer_text(run.length)),
              ("first request's answer", extra.get("warm_text"),
               answer_text(FIRST_REQUEST_TOKENS)))
    for what, got, expected in checks:
        if got != expected:
            return f"{what}: {mismatch(got, expected)}"
    usage = extra.get("usage") or [None, None]
    if usage[1] != run.length:
        return f"usage: {usage} reported, {run.length} completion tokens streamed"
    if math.isnan(run.serve_cpu):
        return "no CPU figures (the handshake did not complete)"
    return None


def mismatch(got: object, expected: str) -> str:
    if not isinstance(got, str):
        return f"the text is {type(got).__name__}, expected {len(expected)} chars"
    at = next((i for i, (a, b) in enumerate(zip(got, expected, strict=False)) if a != b),
              min(len(got), len(expected)))
    return (f"{len(got)} chars vs {len(expected)} expected, first difference at {at}: "
            f"{got[at:at + 40]!r} vs {expected[at:at + 40]!r}")


def stream_progress(run: StreamRun) -> None:
    status = "ok" if run.ok else f"FAILED: {run.error}"
    serve = f", serve {fmt(run.serve_cpu)} s CPU" if run.target == SERVED else ""
    print(f"  tokens={run.length:>6,} {_rep(run.rep):<8} {run.target:<13} answer "
          f"{fmt(run.get('answer_wall')):>6} s wall, client {fmt(run.get('answer_cpu')):>6} s "
          f"CPU{serve}, first token {fmt(run.get('first_text_wall')):>6} s  {status}",
          flush=True)


def _rep(rep: int) -> str:
    return "warm-up" if rep < 0 else f"run {rep + 1}"


StreamMetric = tuple[str, Callable[[StreamRun], float]]

STREAM_METRICS: list[StreamMetric] = [
    ("upstream requests per answer", lambda r: float(sum(r.upstream_requests.values()))),
    ("chunks with text the client read", lambda r: r.get("updates")),
    ("socket reads of the client", lambda r: r.get("socket_reads")),
    ("time to first token s (warm connection)", lambda r: r.get("first_text_wall")),
    ("answer wall s (request -> final text)", lambda r: r.get("answer_wall")),
    ("client CPU s / 1k tokens (answer)", lambda r: r.per_1k(r.get("answer_cpu"))),
    ("serve process CPU s / 1k tokens", lambda r: r.per_1k(r.serve_cpu)),
    ("fake upstream CPU s / 1k tokens", lambda r: r.per_1k(r.upstream_cpu)),
    ("all processes CPU s / 1k tokens (client+serve+fake)",
     lambda r: r.per_1k(r.get("answer_cpu") + (r.serve_cpu if r.target == SERVED else 0.0)
                        + r.upstream_cpu)),
    ("client peak RSS MiB", lambda r: r.get("peak_rss_mib")),
    ("serve RSS after the answer MiB", lambda r: r.serve_rss_mib),
]


def median(values: Sequence[float]) -> float:
    found = [v for v in values if not math.isnan(v)]
    return statistics.median(found) if found else math.nan


def report_stream(length: int, runs: list[StreamRun], reps: int) -> None:
    ok = {t: [r for r in runs if r.target == t and r.ok] for t in TARGETS}
    text = answer_text(length)
    print(f"\n== answer of {length:,} tokens, {len(text):,} chars, {len(text.encode()):,} UTF-8 "
          f"bytes, fake as fast as it can (median of {reps} run(s) each) ==")
    rows: list[tuple[str, ...]] = [HEADER]
    rows.append(("runs with the exact final text", *(f"{len(ok[t])}/{reps}" for t in TARGETS),
                 ""))
    values: dict[str, tuple[float, float]] = {}
    for name, metric in STREAM_METRICS:
        direct, served = (median([metric(r) for r in ok[t]]) for t in TARGETS)
        if name.startswith("serve"):  # idle while the client reads the fake directly
            direct = math.nan
        values[name] = (direct, served)
        rows.append((name, fmt(direct), fmt(served), ratio(served, direct)))
        if name.startswith("time to first token"):
            rows.append(("added time to first token ms", "", fmt((served - direct) * 1000), ""))
        if name.startswith("serve process CPU"):
            client = values["client CPU s / 1k tokens (answer)"][0]
            rows.append(("serve CPU / the client's own CPU (direct)", "", ratio(served, client),
                         ""))
    print_table(rows)
    paths: dict[str, list[int]] = {}
    for r in ok[SERVED]:
        for path, n in r.upstream_requests.items():
            paths.setdefault(path, []).append(n)
    if paths:
        print("what serve asked upstream per answer: " + ", ".join(
            f"{path} x{fmt(median([float(n) for n in ns]))}" for path, ns in sorted(paths.items())))


async def models_round_trip(base_url: str, times: int = 20) -> float:
    """Median s of a ``GET /v1/models`` on the fake from this process, warm connection: what
    the extra request serve makes before each answer costs in time, for reference."""
    found: list[float] = []
    async with aiohttp.ClientSession(trust_env=False) as http:
        for _ in range(times + 1):
            started = time.perf_counter()
            async with http.get(f"{base_url}/models") as response:
                await response.read()
            found.append(time.perf_counter() - started)
    return median(found[1:])  # the first opens the connection


def report_stream_overview(lengths: Sequence[int], runs: list[StreamRun]) -> None:
    print("\n== by answer length (medians) ==")
    rows: list[tuple[str, ...]] = [(
        "answer tokens", "client CPU s/1k direct", "client CPU s/1k via serve", "ratio",
        "serve CPU s/1k", "serve / client", "added first-token ms")]
    for length in lengths:
        def m(target: str, metric: Callable[[StreamRun], float], length: int = length) -> float:
            return median([metric(r) for r in runs
                           if r.ok and r.target == target and r.length == length])
        direct = m(DIRECT, lambda r: r.per_1k(r.get("answer_cpu")))
        served = m(SERVED, lambda r: r.per_1k(r.get("answer_cpu")))
        serve = m(SERVED, lambda r: r.per_1k(r.serve_cpu))
        ttft = (m(SERVED, lambda r: r.get("first_text_wall"))
                - m(DIRECT, lambda r: r.get("first_text_wall")))
        rows.append((f"{length:,}", fmt(direct), fmt(served), ratio(served, direct), fmt(serve),
                     ratio(serve, direct), fmt(ttft * 1000)))
    print_table(rows)


# -- part 2: capacity ----------------------------------------------------------------------------


@dataclass
class LoadRun:
    target: str
    clients: int
    tokens: int
    rep: int  # -1: warm-up, -3: soak
    data: dict[str, Any] = field(default_factory=dict)
    ok: bool = False
    error: str | None = None
    exact: int = 0  # clients with the exact text
    failed: list[str] = field(default_factory=list)  # the clients' errors
    serve_cpu: float = math.nan
    upstream_cpu: float = math.nan
    upstream_requests: dict[str, int] = field(default_factory=dict)
    upstream_max_active: int = 0  # the fake's most chat answers at once, so far
    upstream_hung_up: int = 0  # answers the fake saw abandoned during the run
    before: Sample | None = None
    after: Sample | None = None
    peak_rss_mib: float = math.nan
    rss_samples: int = 0
    output_tail: str = ""

    @property
    def results(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = self.data.get("extra", {}).get("clients") or []
        return found

    def get(self, key: str) -> float:
        value = self.data.get(key)
        return float(value) if isinstance(value, int | float) else math.nan

    def each(self, key: str) -> list[float]:
        return [float(c[key]) for c in self.results if isinstance(c.get(key), int | float)]

    @property
    def total_tokens(self) -> int:
        return self.clients * self.tokens


async def load_run(upstream: Upstream, serve: Serve, args: argparse.Namespace, run: LoadRun,
                   workdir: Path, delay: float) -> LoadRun:
    question = QUESTION.format(n=run.tokens)
    base_url = serve.base_url if run.target == SERVED else upstream.base_url
    job = {"base_url": base_url, "model": upstream.model, "api_key": "", "question": question,
           "warm_question": FIRST_QUESTION, "clients": run.clients,
           **limits(args, run.tokens, FIRST_REQUEST_TOKENS)}
    await upstream.script(*[(run.tokens, question, delay)] * run.clients)
    worker = Worker("_serve_load_worker.py", [json.dumps(job)],
                    workdir / f"load-{run.target[:6]}-{run.clients}-{run.rep}.json",
                    args.timeout)
    await worker.start()
    try:
        if await worker.expect("ready"):
            up_before, run.before = await upstream.stats(), serve.sample()
            async with RssSampler(serve, args.rss_interval) as sampler:
                await worker.go()
                done = await worker.expect("done")
            if done:
                await asyncio.sleep(SETTLE)
                run.after, up_after = serve.sample(), await upstream.stats()
                run.serve_cpu = run.after.cpu - run.before.cpu
                run.upstream_cpu = up_after.cpu - up_before.cpu
                run.upstream_requests = up_after.since(up_before)
                run.upstream_max_active = up_after.max_active
                run.upstream_hung_up = up_after.hung_up - up_before.hung_up
                run.peak_rss_mib, run.rss_samples = sampler.peak_mib, sampler.samples
                await worker.go()
    except TimeoutError:
        worker.kill()
    except psutil.Error as exc:  # serve is gone
        worker.kill()
        worker.output.append(f"rtxrelay serve: {exc!r}")
    data, run.error = await worker.finish()
    run.data = data or {}
    run.output_tail = "\n".join(worker.output)[-3000:]
    if run.error is None:
        run.error = check_load(run)
    run.ok = run.error is None
    return run


def check_load(run: LoadRun) -> str | None:
    expected = answer_text(run.tokens)
    results = run.results
    problems: list[str] = []
    for n, client in enumerate(results):
        if client.get("error"):
            run.failed.append(str(client["error"]))
            problems.append(f"client {n + 1}: {client['error']}")
        elif client.get("text") != expected:
            problems.append(f"client {n + 1}: {mismatch(client.get('text'), expected)}")
        elif (client.get("usage") or [None, None])[1] != run.tokens:
            problems.append(f"client {n + 1}: usage {client.get('usage')}")
        else:
            run.exact += 1
    if len(results) != run.clients:
        problems.append(f"{len(results)} client results for {run.clients} clients")
    if math.isnan(run.serve_cpu):
        problems.append("no CPU figures (the handshake did not complete)")
    if not problems:
        return None
    more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
    return "; ".join(problems[:3]) + more


def load_progress(run: LoadRun) -> None:
    status = "ok" if run.ok else f"FAILED: {run.error}"
    label = {-1: "warm-up", -3: "soak"}.get(run.rep, f"run {run.rep + 1}")
    serve = (f", serve {fmt(run.serve_cpu)} s CPU, peak RSS {fmt(run.peak_rss_mib)} MiB"
             if run.target == SERVED else "")
    print(f"  clients={run.clients:>3} x {run.tokens:,} tokens {label:<8} {run.target:<13} "
          f"wall {fmt(run.get('answer_wall')):>6} s, {run.exact}/{run.clients} exact{serve}  "
          f"{status}", flush=True)


LoadMetric = tuple[str, Callable[[LoadRun], float]]


def _per_1k(cpu: float, run: LoadRun) -> float:
    return cpu / run.total_tokens * 1000 if run.total_tokens else math.nan


LOAD_METRICS: list[LoadMetric] = [
    ("wall s, all answers (through serve)", lambda r: r.get("answer_wall")),
    ("time to first token s, median (from the common start)",
     lambda r: median(r.each("first_text"))),
    ("time to first token s, slowest client",
     lambda r: max(r.each("first_text"), default=math.nan)),
    ("answer wall s, slowest client", lambda r: max(r.each("wall"), default=math.nan)),
    ("chunks with text per answer (median)", lambda r: median(r.each("updates"))),
    ("serve CPU s (all answers)", lambda r: r.serve_cpu),
    ("serve CPU s per client-answer", lambda r: r.serve_cpu / r.clients),
    ("serve CPU s / 1k tokens", lambda r: _per_1k(r.serve_cpu, r)),
    ("serve CPU % of a core", lambda r: r.serve_cpu / r.get("answer_wall") * 100),
    ("serve RSS before MiB", lambda r: r.before.rss_mib if r.before else math.nan),
    ("serve peak RSS MiB (sampled)", lambda r: r.peak_rss_mib),
    ("serve peak RSS - before MiB",
     lambda r: r.peak_rss_mib - r.before.rss_mib if r.before else math.nan),
    ("serve RSS after MiB", lambda r: r.after.rss_mib if r.after else math.nan),
    ("serve open fds after", lambda r: float(r.after.fds) if r.after else math.nan),
    ("fake upstream CPU s / 1k tokens", lambda r: _per_1k(r.upstream_cpu, r)),
    ("client worker CPU s / 1k tokens, through serve", lambda r: _per_1k(r.get("answer_cpu"), r)),
    ("upstream requests per answer",
     lambda r: sum(r.upstream_requests.values()) / r.clients),
]


def report_load(clients: Sequence[int], runs: list[LoadRun], reps: int, tokens: int,
                delay: float) -> None:
    served = {n: [r for r in runs if r.target == SERVED and r.clients == n] for n in clients}
    direct = {n: [r for r in runs if r.target == DIRECT and r.clients == n and r.ok]
              for n in clients}
    ideal = tokens * delay
    print(f"\n== {', '.join(map(str, clients))} clients at once through serve, each {tokens:,} "
          f"tokens paced {delay * 1000:g} ms a token (>= {ideal:.1f} s an answer; median of "
          f"{reps} run(s)) ==")
    rows: list[tuple[str, ...]] = [("metric", *(_clients_label(n) for n in clients))]
    rows.append(("clients with the exact text", *(
        f"{sum(r.exact for r in served[n])}/{n * len(served[n])}" for n in clients)))
    rows.append(("clients that failed", *(
        str(sum(len(r.failed) + (0 if r.data else r.clients) for r in served[n]))
        for n in clients)))
    ok = {n: [r for r in served[n] if r.ok] for n in clients}
    single = median([r.get("answer_wall") for r in ok.get(clients[0], [])]) \
        if clients[0] == 1 else math.nan
    for name, metric in LOAD_METRICS:
        cells = [fmt(median([metric(r) for r in ok[n]])) for n in clients]
        rows.append((name, *cells))
        if name.startswith("time to first token s, median"):
            rows.append(("  reading the fake directly", *(
                fmt(median([metric(r) for r in direct[n]])) for n in clients)))
        if name.startswith("wall s"):
            rows.append(("  / the 1-client wall", *(
                ratio(median([r.get("answer_wall") for r in ok[n]]), single) for n in clients)))
            rows.append(("  / the ideal (tokens x delay)", *(
                ratio(median([r.get("answer_wall") for r in ok[n]]), ideal) for n in clients)))
            rows.append(("wall s, the same clients reading the fake directly", *(
                fmt(median([r.get("answer_wall") for r in direct[n]])) for n in clients)))
            rows.append(("  serve / direct", *(
                ratio(median([r.get("answer_wall") for r in ok[n]]),
                      median([r.get("answer_wall") for r in direct[n]])) for n in clients)))
        if name.startswith("client worker CPU"):
            rows.append(("client worker CPU s / 1k tokens, reading directly", *(
                fmt(median([metric(r) for r in direct[n]])) for n in clients)))
            rows.append(("serve CPU / the direct clients' CPU", *(
                ratio(median([_per_1k(r.serve_cpu, r) for r in ok[n]]),
                      median([metric(r) for r in direct[n]])) for n in clients)))
    rows.append(("most upstream answers at once (fake)", *(
        str(max((r.upstream_max_active for r in ok[n]), default=0)) for n in clients)))
    rows.append(("RSS samples taken", *(
        str(sum(r.rss_samples for r in ok[n])) for n in clients)))
    print_table(rows)


def _clients_label(n: int) -> str:
    return f"{n} client" if n == 1 else f"{n} clients"


def report_memory(history: list[tuple[str, Sample]], serve: Serve) -> None:
    print("\n== serve's memory, open files and threads through the bench ==")
    rows: list[tuple[str, ...]] = [("after", "RSS MiB", "open fds", "threads", "CPU s so far")]
    rows += [(label, fmt(s.rss_mib), str(s.fds), str(s.threads), fmt(s.cpu))
             for label, s in history]
    print_table(rows)
    print(f"peak RSS over its life (VmHWM): {fmt(serve.peak_rss_lifetime_mib())} MiB")


# -- main ----------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def processes(args: argparse.Namespace, workdir: Path) -> AsyncIterator[
        tuple[Upstream, Serve]]:
    async with Upstream() as upstream:
        serve = Serve(upstream, workdir, args.serve_log_level, args.profile_serve)
        try:
            async with serve:
                yield upstream, serve
        finally:
            stopped = "exit 0" if serve.exit_code == 0 else f"EXIT {serve.exit_code}"
            print(f"\nrtxrelay serve stopped on SIGTERM: {stopped} in "
                  f"{fmt(serve.stop_seconds)} s", flush=True)


async def bench(args: argparse.Namespace) -> int:
    streams: list[StreamRun] = []
    loads: list[LoadRun] = []
    memory: list[tuple[str, Sample]] = []
    with tempfile.TemporaryDirectory(prefix="rtxrelay-serve-bench-") as tmp:
        workdir = Path(tmp)
        async with processes(args, workdir) as (upstream, serve):
            print(f"fake llama.cpp upstream (pid {upstream.pid}) at {upstream.base_url}; "
                  f"rtxrelay serve (pid {serve.pid}) at {serve.base_url}, "
                  f"MAX_CONCURRENT_JOBS={MAX_JOBS}, RTXRELAY_API_MAX_WAITING={MAX_WAITING}"
                  f"{f', LOG_LEVEL={args.serve_log_level}' if args.serve_log_level else ''}; "
                  f"client {args.client}; {os.cpu_count()} CPUs, "
                  f"{platform.python_implementation()} {platform.python_version()}, "
                  f"{platform.system()} {platform.release()}", flush=True)
            memory.append(("start", serve.sample()))
            if args.lengths:
                print("\n-- part 1: overhead per streamed token --", flush=True)
                if args.warmup:  # not counted: OS file cache, serve's cold paths
                    for target in TARGETS:
                        warm = await stream_run(upstream, serve, args,
                                                StreamRun(target, WARMUP_TOKENS, -1), workdir)
                        stream_progress(warm)
                        streams.append(warm)
                for li, length in enumerate(args.lengths):
                    for rep in range(args.reps):
                        order = TARGETS if (li * args.reps + rep) % 2 == 0 else TARGETS[::-1]
                        for target in order:
                            run = await stream_run(upstream, serve, args,
                                                   StreamRun(target, length, rep), workdir)
                            stream_progress(run)
                            streams.append(run)
                memory.append(("part 1", serve.sample()))
            if args.clients:
                print("\n-- part 2: concurrent streaming clients --", flush=True)
                if args.warmup:
                    warm_load = await load_run(upstream, serve, args, LoadRun(
                        SERVED, max(args.clients), 20, -1), workdir, args.token_delay)
                    load_progress(warm_load)
                    loads.append(warm_load)
                for rep in range(args.capacity_reps):
                    for n in args.clients:
                        for target in (SERVED, DIRECT) if args.direct else (SERVED,):
                            load = await load_run(upstream, serve, args, LoadRun(
                                target, n, args.capacity_tokens, rep), workdir,
                                args.token_delay)
                            load_progress(load)
                            loads.append(load)
                        memory.append((f"{_clients_label(n)}, run {rep + 1}", serve.sample()))
            for round_ in range(args.soak):
                soak = await load_run(upstream, serve, args, LoadRun(
                    SERVED, max(args.clients or [MAX_JOBS]), args.soak_tokens, -3), workdir,
                    0.0)
                load_progress(soak)
                loads.append(soak)
                if round_ % max(1, args.soak // 10) == 0 or round_ == args.soak - 1:
                    memory.append((f"soak round {round_ + 1}", serve.sample()))
            await asyncio.sleep(0.5)  # idle: whatever serve does on its own
            memory.append(("0.5 s idle", serve.sample()))
            lifetime_peak = serve.peak_rss_lifetime_mib()
            for length in args.lengths:
                report_stream(length, [r for r in streams if r.length == length and r.rep >= 0],
                              args.reps)
            if len(args.lengths) > 1:
                report_stream_overview(args.lengths, [r for r in streams if r.rep >= 0])
            if args.lengths:
                print(f"for reference, GET /v1/models on the fake: "
                      f"{fmt(await models_round_trip(upstream.base_url) * 1000)} ms (median of "
                      "20 from the bench process, warm connection)")
            if args.clients:
                report_load(args.clients, [r for r in loads if r.rep >= 0], args.capacity_reps,
                            args.capacity_tokens, args.token_delay)
            report_memory(memory, serve)
            print(f"(VmHWM read before the report: {fmt(lifetime_peak)} MiB)")
        problems = serve.problems()
    print(f"\n== what serve logged (besides its address; LOG_LEVEL "
          f"{args.serve_log_level or 'unset: warnings and errors only'}) ==")
    info = sum(1 for line in serve.lines if re.search(r" (INFO|DEBUG) ", line))
    print(f"{len(problems)} warning or error line(s)"
          + (f", {info} INFO/DEBUG line(s) not shown" if info else "")
          + ("" if not problems else ":"))
    for line in problems[:args.log_lines]:
        print(f"  {line}")
    if len(problems) > args.log_lines:
        print(f"  … and {len(problems) - args.log_lines} more")
    if args.profile_serve:
        print_profile(args.profile_serve, args.profile_lines)
    failed = [r for r in streams if not r.ok] + [r for r in loads if not r.ok]
    report_failures(failed)
    if args.json:
        dump = {"streams": [_without_texts(r.__dict__) for r in streams],
                "loads": [_without_texts(r.__dict__) for r in loads],
                "memory": [(label, s.__dict__) for label, s in memory],
                "serve_log": serve.lines}
        write_json(args.json, dump)
    ran = bool(streams or loads)
    return 0 if ran and not failed and serve.exit_code == 0 else 1


def print_profile(path: Path, lines: int) -> None:
    """serve's time under cProfile: own time by file, then the top functions (own and
    cumulative)."""
    if not path.exists():
        print(f"\n(no profile at {path}: serve did not write one)")
        return
    out = io.StringIO()
    stats = pstats.Stats(str(path), stream=out)
    by_file: Counter[str] = Counter()
    for (filename, _line, funcname), row in stats.stats.items():  # type: ignore[attr-defined]
        if filename == "~":
            key = "C: select/epoll (idle)" if "poll" in funcname or "select" in funcname \
                else "C: builtins"
        else:
            key = re.sub(r"^.*/(site-packages|lib/python3\.\d+)/", "", filename)
            key = key.replace(str(REPO_DIR) + "/", "rtxrelay: ")
        by_file[key] += row[2]
    idle = by_file.pop("C: select/epoll (idle)", 0.0)
    total = sum(by_file.values()) or 1.0
    print(f"\n== serve under cProfile: own time by file, {total:.2f} s in all ({idle:.2f} s "
          "idle in epoll left out) ==")
    for name, seconds in by_file.most_common(lines):
        print(f"  {seconds:7.3f} s {seconds / total * 100:5.1f} %  {name}")
    stats.sort_stats("tottime").print_stats(lines)
    stats.sort_stats("cumulative").print_stats(r"rtxrelay|/app/|/core/|/backends/", lines)
    print("\n".join(line for line in out.getvalue().splitlines() if line.strip()))


def write_json(path: str, dump: dict[str, Any]) -> None:
    Path(path).write_text(json.dumps(dump, indent=1, default=str), encoding="utf-8")


def _without_texts(fields: dict[str, Any]) -> dict[str, Any]:
    data = dict(fields.get("data") or {})
    data.pop("final_text", None)
    extra = dict(data.get("extra") or {})
    extra.pop("warm_text", None)
    if "clients" in extra:
        extra["clients"] = [{k: v for k, v in c.items() if k != "text"}
                            for c in extra["clients"]]
    data["extra"] = extra
    return {**fields, "data": data}


def report_failures(failed: Sequence[StreamRun | LoadRun]) -> None:
    if not failed:
        return
    print(f"\n== {len(failed)} FAILED run(s) ==")
    for r in failed:
        what = (f"{r.target} tokens={r.length:,}" if isinstance(r, StreamRun)
                else f"{r.target} clients={r.clients} x {r.tokens:,} tokens")
        print(f"{what} rep {r.rep}: {r.error}")
        trace = r.data.get("extra", {}).get("traceback") if r.data else None
        tail = (trace or r.output_tail).strip()
        if tail:
            print("  " + "\n  ".join(tail.splitlines()[-12:]))


def _ints(text: str) -> list[int]:
    return [int(x.replace("_", "")) for x in text.split(",") if x.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke run: one {QUICK_LENGTH}-token answer each way, then "
                        f"{','.join(map(str, QUICK_CLIENTS))} clients of "
                        f"{QUICK_CAPACITY_TOKENS} tokens; one run each, no warm-up")
    parser.add_argument("--lengths", type=_ints, default=list(DEFAULT_LENGTHS),
                        help="part 1: answer lengths in tokens (SSE chunks), comma list; "
                        "empty: skip part 1")
    parser.add_argument("--reps", type=int, default=5, help="part 1: runs per length and target")
    parser.add_argument("--client", choices=["raw", "sdk"], default="raw",
                        help="part 1's client: the raw aiohttp reader or the openai SDK")
    parser.add_argument("--clients", type=_ints, default=list(DEFAULT_CLIENTS),
                        help=f"part 2: numbers of clients at once, comma list (at most "
                        f"{MAX_JOBS}); empty: skip part 2")
    parser.add_argument("--capacity-tokens", type=int, default=DEFAULT_CAPACITY_TOKENS,
                        help="part 2: tokens per answer")
    parser.add_argument("--token-delay", type=float, default=DEFAULT_TOKEN_DELAY,
                        help="part 2: the fake's sleep before each chunk (s)")
    parser.add_argument("--capacity-reps", type=int, default=3,
                        help="part 2: runs per number of clients")
    parser.add_argument("--no-direct", dest="direct", action="store_false",
                        help="part 2: skip the same clients reading the fake directly")
    parser.add_argument("--soak", type=int, default=0,
                        help="after part 2: this many more rounds of the most clients, fast "
                        "answers of --soak-tokens, serve's memory after each (leak check)")
    parser.add_argument("--soak-tokens", type=int, default=500)
    parser.add_argument("--rss-interval", type=float, default=0.01,
                        help="part 2: seconds between samples of serve's RSS")
    parser.add_argument("--max-tokens-factor", type=float,
                        help="every request asks max_tokens = this x the answer's tokens (default: "
                        "no max_tokens); the fake streams the whole answer anyway")
    parser.add_argument("--profile-serve", metavar="FILE",
                        help="run serve under cProfile (its figures are then not comparable), "
                        "write the stats to FILE and print where its time went")
    parser.add_argument("--serve-log-level",
                        help="LOG_LEVEL for serve (default unset: as a user starts it)")
    parser.add_argument("--profile-lines", type=int, default=25)
    parser.add_argument("--log-lines", type=int, default=20,
                        help="how many of serve's log lines to print")
    parser.add_argument("--timeout", type=float, default=300.0,
                        help="per wait on a worker (s)")
    parser.add_argument("--no-warmup", dest="warmup", action="store_false",
                        help="skip the uncounted warm-up runs")
    parser.add_argument("--json", help="also write every run's raw figures to this file")
    args = parser.parse_args(argv)
    if args.quick:
        args.lengths, args.reps, args.warmup = [QUICK_LENGTH], 1, False
        args.clients, args.capacity_tokens, args.capacity_reps = (
            list(QUICK_CLIENTS), QUICK_CAPACITY_TOKENS, 1)
    if any(n < 1 or n > MAX_JOBS for n in args.clients):
        parser.error(f"--clients: 1 to {MAX_JOBS} (serve runs at most {MAX_JOBS} answers at "
                     "once; more would wait in its line)")
    args.clients = sorted(set(args.clients))
    if args.profile_serve:  # serve runs in a temporary folder
        args.profile_serve = Path(args.profile_serve).resolve()
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    code = asyncio.run(bench(args))
    print(f"\nbench took {time.monotonic() - started:.0f} s")
    return code


if __name__ == "__main__":
    sys.exit(main())
