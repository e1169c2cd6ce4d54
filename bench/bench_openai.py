"""rtxrelay's OpenAI stream client vs the official ``openai`` SDK vs a raw aiohttp floor.

    .venv/bin/python bench/bench_openai.py            # full run against the fake (~30 s)
    .venv/bin/python bench/bench_openai.py --quick    # smoke run: one short answer, once each
    .venv/bin/python bench/bench_openai.py --llama    # the suite's llama.cpp server (tests/llama)
    .venv/bin/python bench/bench_openai.py --server http://127.0.0.1:8080/v1 --model NAME

Three clients stream the same answers from the same server in one run:

- **rtxrelay**: ``OpenAiBackend.stream_answer`` (``backends/openai``), as the bots consume it;
- **openai SDK**: ``AsyncOpenAI(...).chat.completions.create(..., stream=True)``, adding up
  ``choices[0].delta.content`` as a bot would;
- **raw aiohttp**: the floor, the least a client can do (read, split events, ``json.loads``,
  add up the content), so the distance to the limit shows.

By default the server is ``tests/fakes/openai_api.FakeOpenAI`` (llama.cpp's wire format) in a
process of its own (``_openai_fake_server.py``), streaming a deterministic answer of N pieces,
one piece per SSE chunk, as fast as it can, so the client's CPU is what limits. Every run is a
fresh worker process that measures itself (getrusage, ru_maxrss): start-up, setup, a short
first request on a new connection, then the measured answer on the warm connection. Runs
rotate which client goes first; one uncounted warm-up run per client comes first. Every final
text must equal the scripted answer exactly (exit status 1 otherwise). With ``--llama`` or
``--server`` the answers come from a real model (temperature 0, ``--max-tokens``); the texts are
compared with each other, and a difference is reported, not failed (a model need not be
deterministic). See bench/README.md.
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
for _path in (REPO_DIR, BENCH_DIR):  # the fake lives in tests/fakes, the helpers here
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import aiohttp  # noqa: E402
from _measure import SPAWN_ENV  # noqa: E402
from _openai_fake_server import answer_text  # noqa: E402
from _openai_worker import PROFILE_ENV  # noqa: E402
from _table import fmt, print_table, ratio  # noqa: E402

from tests.fakes.openai_api import Persona  # noqa: E402

OURS = "rtxrelay"
SDK = "openai SDK"
RAW = "raw aiohttp"
CLIENTS = (OURS, SDK, RAW)
WORKERS = {OURS: "_openai_rtxrelay_worker.py", SDK: "_openai_sdk_worker.py",
           RAW: "_openai_raw_worker.py"}
HEADER = ("metric", OURS, SDK, RAW, f"{SDK} / {OURS}", f"{OURS} / {RAW}")
DEFAULT_LENGTHS = (1_000, 5_000, 20_000)
QUICK_LENGTH = 500
WARMUP_TOKENS = 200  # the uncounted warm-up run of each client
FIRST_REQUEST_TOKENS = 16  # the short first request inside every run (new connection)
FAKE_QUESTION = "How do tensor cores speed up inference? Answer in {n} tokens."
FIRST_QUESTION = "Say hello."
REAL_QUESTION = ("Explain in detail, in several paragraphs, how a graphics card speeds up the "
                 "inference of a language model.")
SERVER_START_TIMEOUT = 30.0
SERVER_MAX_TOKENS = 256  # --server: the measured answer's max_tokens
LLAMA_MAX_TOKENS = 64  # --llama: a short real-model comparison


@dataclass
class Run:
    client: str
    length: int  # tokens asked for (fake: streamed exactly; real: max_tokens)
    rep: int  # -1: warm-up, -2: profiled
    data: dict[str, Any] = field(default_factory=dict)
    ok: bool = False
    error: str | None = None
    output_tail: str = ""
    server_cpu: float = math.nan

    def get(self, key: str) -> float:
        value = self.data.get(key)
        if value is None:
            value = self.data.get("extra", {}).get(key)
        return float(value) if isinstance(value, int | float) else math.nan

    def usage(self, key: str = "usage") -> tuple[int | None, int | None]:
        value = self.data.get("extra", {}).get(key) or [None, None]
        return value[0], value[1]

    @property
    def tokens(self) -> float:
        """Tokens of the measured answer: what the server counted, else the updates seen."""
        completion = self.usage()[1]
        return float(completion) if completion else self.get("updates")

    @property
    def all_tokens(self) -> float:
        """Tokens streamed by the whole process (first request + answer)."""
        first = self.usage("warm_usage")[1]
        return self.tokens + (first or 0)

    @property
    def text(self) -> str | None:
        text = self.data.get("final_text")
        return text if isinstance(text, str) else None


# -- the servers ---------------------------------------------------------------------------------


class FakeServer:
    """``_openai_fake_server.py`` in a child process, driven over its stdin and stdout."""

    def __init__(self, persona: str, token_delay: float, ascii_only: bool) -> None:
        self.persona = persona
        self.token_delay = token_delay
        self.ascii_only = ascii_only
        self.base_url = ""
        self.model = ""
        self.api_key = ""
        self.label = ""
        self._proc: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> FakeServer:
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable, str(BENCH_DIR / "_openai_fake_server.py"), "--persona",
            self.persona, "--token-delay", repr(self.token_delay),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=_worker_env(),
            cwd=str(REPO_DIR))
        hello = await self._read()
        self.base_url, self.model = hello["base_url"], hello["model"]
        self.label = (f"fake {hello['persona']} server (tests/fakes/openai_api.py, pid "
                      f"{hello['pid']}), token delay {self.token_delay:g} s, "
                      f"{'ASCII-only' if self.ascii_only else 'mixed-script'} answers")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.stdin is not None:
            proc.stdin.close()  # the server exits when its stdin closes
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
            raise RuntimeError(f"the fake server refused {command}: {answer['error']}")
        return answer

    async def _read(self) -> dict[str, Any]:
        assert self._proc is not None and self._proc.stdout is not None
        line = await asyncio.wait_for(self._proc.stdout.readline(), SERVER_START_TIMEOUT)
        if not line:
            raise RuntimeError(f"the fake server exited ({await self._proc.wait()})")
        found: dict[str, Any] = json.loads(line)
        return found

    async def prepare(self, tokens: int, first_tokens: int) -> None:
        """Script the next worker's two requests: the short first one, then the answer."""
        await self.command({"script": [
            {"tokens": first_tokens, "prompt_tokens": _prompt_tokens(FIRST_QUESTION),
             "ascii": self.ascii_only},
            {"tokens": tokens, "prompt_tokens": _prompt_tokens(FAKE_QUESTION.format(n=tokens)),
             "ascii": self.ascii_only},
        ]})

    async def cpu(self) -> float:
        return float((await self.command({"stats": True}))["cpu"])

    def question(self, tokens: int) -> str:
        return FAKE_QUESTION.format(n=tokens)


def _prompt_tokens(question: str) -> int:
    return math.ceil(len(question) / 4)  # the fake's count: 4 chars a token


class RealServer:
    """Any OpenAI-compatible server that is already running (``--server``)."""

    def __init__(self, base_url: str, model: str | None, api_key: str,
                 pid: int | None = None, label: str = "") -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model or ""
        self.api_key = api_key
        self.label = label or f"server {self.base_url}"
        self._pid = pid

    async def __aenter__(self) -> RealServer:
        if not self.model:
            self.model = await first_model(self.base_url, self.api_key)
        self.label += f", model {self.model}"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        return None

    async def prepare(self, tokens: int, first_tokens: int) -> None:
        return None

    async def cpu(self) -> float:
        """The server's CPU so far (itself and its children), if ``--server-pid`` named it."""
        if self._pid is None:
            return math.nan
        import psutil  # a dependency of rtxrelay

        try:
            process = psutil.Process(self._pid)
            parts = [process.cpu_times(), *(c.cpu_times() for c in process.children(True))]
        except psutil.Error:
            return math.nan
        return float(sum(t.user + t.system for t in parts))

    def question(self, tokens: int) -> str:
        return REAL_QUESTION


async def first_model(base_url: str, api_key: str) -> str:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    async with aiohttp.ClientSession() as http, http.get(f"{base_url}/models",
                                                          headers=headers) as response:
        response.raise_for_status()
        listing = await response.json(content_type=None)
    models = [m.get("id") for m in listing.get("data") or [] if isinstance(m, dict)]
    if not models:
        raise RuntimeError(f"{base_url}/models lists no model: pass --model")
    return str(models[0])


Server = FakeServer | RealServer


# -- running the workers -------------------------------------------------------------------------


def _worker_env() -> dict[str, str]:
    env = dict(os.environ)
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy",
                 "all_proxy", PROFILE_ENV):
        env.pop(name, None)
    env.update({"NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost",
                "PYTHONIOENCODING": "utf-8"})
    return env


async def run_worker(server: Server, args: argparse.Namespace, run: Run, workdir: Path,
                     profile: Path | None = None) -> Run:
    real = isinstance(server, RealServer)
    first_tokens = args.first_tokens
    job = {
        "base_url": server.base_url, "model": server.model, "api_key": server.api_key,
        "question": server.question(run.length), "warm_question": FIRST_QUESTION,
        "extra_body": {"max_tokens": run.length, "temperature": 0} if real else {},
        "warm_max_tokens": first_tokens if real else None,
    }
    await server.prepare(run.length, first_tokens)
    out = workdir / f"{WORKERS[run.client]}-{run.length}-{run.rep}.json"
    env = _worker_env()
    if profile is not None:
        env[PROFILE_ENV] = str(profile)
    server_cpu = await server.cpu()
    env[SPAWN_ENV] = repr(time.time())
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(BENCH_DIR / WORKERS[run.client]), json.dumps(job), str(out),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT, env=env, cwd=str(BENCH_DIR))
    try:
        raw, _ = await asyncio.wait_for(proc.communicate(), args.timeout)
    except TimeoutError:
        proc.kill()
        raw, _ = await proc.communicate()
        run.error = f"timed out after {args.timeout:g} s (worker killed)"
    run.output_tail = raw.decode("utf-8", "replace")[-3000:]
    run.server_cpu = await server.cpu() - server_cpu
    if run.error:
        return run
    try:
        run.data = json.loads(out.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        run.error = f"worker exited {proc.returncode} without a result"
        return run
    finally:
        out.unlink(missing_ok=True)
    if not run.data.get("ok"):
        run.error = str(run.data.get("error") or f"worker exited {proc.returncode}")
        return run
    run.error = None if real else check_fake(run, first_tokens, args.ascii)
    run.ok = run.error is None
    return run


def check_fake(run: Run, first_tokens: int, ascii_only: bool) -> str | None:
    """The scripted texts, byte for byte, and the usage the fake reported."""
    checks = (
        ("answer", run.text, answer_text(run.length, ascii_only=ascii_only)),
        ("first request's answer", run.data.get("extra", {}).get("warm_text"),
         answer_text(first_tokens, ascii_only=ascii_only)),
    )
    for what, got, expected in checks:
        if got != expected:
            return f"{what}: {mismatch(got, expected)}"
    if run.usage()[1] != run.length:
        return f"usage: {run.usage()} reported, {run.length} completion tokens streamed"
    return None


def mismatch(got: object, expected: str) -> str:
    if not isinstance(got, str):
        return f"the text is {type(got).__name__}, expected {len(expected)} chars"
    at = next((i for i, (a, b) in enumerate(zip(got, expected, strict=False)) if a != b),
              min(len(got), len(expected)))
    return (f"{len(got)} chars vs {len(expected)} expected, first difference at {at}: "
            f"{got[at:at + 40]!r} vs {expected[at:at + 40]!r}")


def progress(run: Run, label: str = "") -> None:
    status = "ok" if run.ok else f"FAILED: {run.error}"
    print(f"  tokens={run.length:>6,} {_rep_label(run.rep):<9} {run.client:<12} "
          f"answer {fmt(run.get('answer_wall')):>6} s wall, {fmt(run.get('answer_cpu')):>6} s "
          f"CPU, first token {fmt(run.get('first_text_wall')):>6} s  {status}{label}",
          flush=True)


def _rep_label(rep: int) -> str:
    return {-1: "warm-up", -2: "profiled"}.get(rep, f"run {rep + 1}")


def rotation(index: int) -> tuple[str, ...]:
    """The clients' order for the index-th round: each goes first, second, third in turn."""
    shift = index % len(CLIENTS)
    return CLIENTS[shift:] + CLIENTS[:shift]


# -- the report ----------------------------------------------------------------------------------

Metric = tuple[str, Callable[[Run], float]]


def _per_1k(cpu_key: str, tokens: Callable[[Run], float]) -> Callable[[Run], float]:
    return lambda r: r.get(cpu_key) / tokens(r) * 1000 if tokens(r) else math.nan


ANSWER_PER_1K = _per_1k("answer_cpu", lambda r: r.tokens)
WHOLE_PER_1K = _per_1k("total_cpu", lambda r: r.all_tokens)

METRICS: list[Metric] = [
    ("tokens in the answer (server's count)", lambda r: r.tokens),
    ("text updates the consumer saw", lambda r: r.get("updates")),
    ("start-up wall s (interpreter + imports)", lambda r: r.get("startup_wall")),
    ("start-up CPU s", lambda r: r.get("startup_cpu")),
    ("RSS after imports MiB", lambda r: r.get("rss_after_import_mib")),
    ("setup CPU s (session / client object)", lambda r: r.get("setup_cpu")),
    ("1st request: time to first token s (new connection)", lambda r: r.get("warm_ttft")),
    ("1st request: CPU s (short answer)", lambda r: r.get("warm_cpu")),
    ("time to first token s (warm connection)", lambda r: r.get("first_text_wall")),
    ("answer wall s (request -> final text)", lambda r: r.get("answer_wall")),
    ("answer CPU s", lambda r: r.get("answer_cpu")),
    ("CPU % of a core while answering",
     lambda r: r.get("answer_cpu") / r.get("answer_wall") * 100),
    ("CPU s / 1k tokens (answer)", ANSWER_PER_1K),
    ("CPU s / 1k tokens (whole run: start-up to exit)", WHOLE_PER_1K),
    ("peak RSS MiB", lambda r: r.get("peak_rss_mib")),
    ("peak RSS - RSS after imports MiB",
     lambda r: r.get("peak_rss_mib") - r.get("rss_after_import_mib")),
    ("server process CPU s in the run (not the client's)", lambda r: r.server_cpu),
]

# (title, metric) of the by-length overview after the per-length tables.
OVERVIEW: list[Metric] = [
    ("CPU s / 1k tokens, answer", ANSWER_PER_1K),
    ("CPU s / 1k tokens, whole run", WHOLE_PER_1K),
    ("time to first token s, warm connection", lambda r: r.get("first_text_wall")),
    ("peak RSS MiB", lambda r: r.get("peak_rss_mib")),
]


def median(runs: Sequence[Run], metric: Callable[[Run], float]) -> float:
    values = [v for v in (metric(r) for r in runs) if not math.isnan(v)]
    return statistics.median(values) if values else math.nan


def ratio_cells(values: Sequence[float]) -> tuple[str, str]:
    ours, sdk, raw = values
    return ratio(sdk, ours), ratio(ours, raw)


def report_length(length: int, runs: list[Run], reps: int, real: bool,
                  ascii_only: bool) -> None:
    ok = {c: [r for r in runs if r.client == c and r.ok] for c in CLIENTS}
    if real:
        title = (f"\n== real server, max_tokens {length:,}, temperature 0 "
                 f"(median of {reps} run(s) per client) ==")
        exact = "runs completed"
    else:
        text = answer_text(length, ascii_only=ascii_only)
        title = (f"\n== answer of {length:,} tokens, {len(text):,} chars, "
                 f"{len(text.encode()):,} UTF-8 bytes (median of {reps} run(s) per client) ==")
        exact = "runs with the exact final text"
    print(title)
    rows: list[tuple[str, ...]] = [HEADER]
    rows.append((exact, *(f"{len(ok[c])}/{reps}" for c in CLIENTS), "", ""))
    for name, metric in METRICS:
        values = [median(ok[c], metric) for c in CLIENTS]
        rows.append((name, *(fmt(v) for v in values), *ratio_cells(values)))
    print_table(rows)


def report_overview(lengths: Sequence[int], runs: list[Run]) -> None:
    for title, metric in OVERVIEW:
        print(f"\n== by answer length: {title} (medians) ==")
        rows: list[tuple[str, ...]] = [("answer tokens", *HEADER[1:])]
        for length in lengths:
            values = [median([r for r in runs if r.ok and r.client == c and r.length == length],
                             metric) for c in CLIENTS]
            rows.append((f"{length:,}", *(fmt(v) for v in values), *ratio_cells(values)))
        print_table(rows)


def report_texts(runs: list[Run]) -> None:
    """Real server: every client's text against the first run's. A client's own leading
    whitespace is not compared: rtxrelay drops it before the first text, as a chat shows it."""
    done = [r for r in runs if r.data.get("ok") and r.text is not None]
    if not done:
        return
    variants: dict[str, list[Run]] = {}
    for r in done:
        variants.setdefault((r.text or "").lstrip(), []).append(r)
    print("\n== the texts (temperature 0; leading whitespace not compared) ==")
    if len(variants) == 1:
        text = next(iter(variants))
        print(f"every run of every client produced the same text ({len(text):,} chars): "
              f"{text[:160]!r}{'…' if len(text) > 160 else ''}")
        return
    reference = (done[0].text or "").lstrip()
    print(f"NOT the same text: {len(variants)} different texts (the model or server is not "
          "deterministic, or a client differs); not counted as a failure:")
    for n, (text, group) in enumerate(variants.items(), 1):
        who = Counter(r.client for r in group)
        diff = "" if text == reference else f"; vs text 1: {mismatch(text, reference)}"
        print(f"  text {n}: {len(text):,} chars, from {dict(who)}{diff}")


def report_details(runs: list[Run]) -> None:
    print("\n== versions ==")
    for client in CLIENTS:
        done = [r for r in runs if r.client == client and r.data.get("ok")]
        if done:
            extra = done[-1].data.get("extra", {})
            versions = {k: v for k, v in extra.items()
                        if k in ("aiohttp", "openai", "httpx", "python")}
            reads = extra.get("socket_reads")
            more = f", {reads:,} socket reads in the last answer" if reads else ""
            print(f"{client}: {versions}{more}")


def report_failures(runs: list[Run]) -> None:
    failed = [r for r in runs if not r.ok]
    if not failed:
        return
    print(f"\n== {len(failed)} FAILED run(s) ==")
    for r in failed:
        print(f"{r.client} tokens={r.length:,} {_rep_label(r.rep)}: {r.error}")
        trace = r.data.get("extra", {}).get("traceback") if r.data else None
        tail = (trace or r.output_tail).strip()
        if tail:
            print("  " + "\n  ".join(tail.splitlines()[-12:]))


# Where the profiled worker's own time goes, by who pays for it.
PROFILE_GROUPS: tuple[tuple[str, str], ...] = (
    (str(REPO_DIR / "backends" / "openai" / "client.py"), "rtxrelay backends/openai/client.py"),
    (str(REPO_DIR / "backends" / "openai" / "backend.py"),
     "rtxrelay backends/openai/backend.py"),
    (str(REPO_DIR / "backends" / "openai" / "reasoning.py"),
     "rtxrelay backends/openai/reasoning.py"),
    (str(REPO_DIR / "backends" / "sse.py"), "rtxrelay backends/sse.py"),
    (str(REPO_DIR / "core"), "rtxrelay core"),
    (str(BENCH_DIR), "the bench worker (consumer)"),
    ("/aiohttp/", "aiohttp"),
    ("/openai/", "openai SDK"),
    ("/httpx/", "httpx"),
    ("/httpcore/", "httpcore"),
    ("/anyio/", "anyio"),
    ("/pydantic", "pydantic"),
    ("/asyncio/", "asyncio"),
    ("/json/", "json"),
    ("/dataclasses", "dataclasses"),
    ("/contextlib", "contextlib"),
    ("/typing", "typing"),
)
IDLE = "C: waiting in epoll (idle)"
BUILTIN_GROUPS: tuple[tuple[str, str], ...] = (
    ("poll", IDLE),
    ("select", IDLE),
    ("json", "C: json"),
    ("socket", "C: sockets"),
    ("recv", "C: sockets"),
    ("send", "C: sockets"),
    ("pydantic", "C: pydantic-core"),
)


def _group(filename: str, funcname: str) -> str:
    if filename == "~":  # a C function: named only by what it is
        return next((g for key, g in BUILTIN_GROUPS if key in funcname), "C: other builtins")
    return next((g for key, g in PROFILE_GROUPS if key in filename), "other Python")


def profile_report(path: Path, run: Run, lines: int) -> str:
    out = io.StringIO()
    stats = pstats.Stats(str(path), stream=out)
    tokens = run.tokens or 1.0
    by_group: Counter[str] = Counter()
    for (filename, _line, funcname), row in stats.stats.items():  # type: ignore[attr-defined]
        by_group[_group(filename, funcname)] += row[2]  # own time
    idle = by_group.pop(IDLE, 0.0)
    total = sum(by_group.values()) or 1.0
    text = [f"\n== cProfile: an extra {run.client} run, the answer phase of {run.length:,} "
            f"tokens (profiler on: answer CPU {fmt(run.get('answer_cpu'))} s; not in the "
            f"tables) ==",
            f"own time by who pays for it, {total:.3f} s in all (µs per token = own time / "
            f"{tokens:,.0f} tokens; {idle:.3f} s waiting in epoll left out: idle, not CPU):"]
    text += [f"  {group:<40} {seconds:7.3f} s  {seconds / total * 100:5.1f} %  "
             f"{seconds / tokens * 1e6:7.2f} µs/token"
             for group, seconds in by_group.most_common()]
    stats.sort_stats("tottime").print_stats(lines)
    text += [line for line in out.getvalue().splitlines() if line.strip()]
    return "\n".join(text)


# -- main ----------------------------------------------------------------------------------------


def make_server(args: argparse.Namespace) -> contextlib.AbstractAsyncContextManager[Server]:
    if args.llama:
        return llama_server()
    if args.server:
        return RealServer(args.server, args.model, args.api_key, pid=args.server_pid)
    return FakeServer(args.persona, args.token_delay, args.ascii)


@contextlib.asynccontextmanager
async def llama_server() -> AsyncIterator[Server]:
    """The suite's real llama.cpp server (tests/llama/server.py: llama-cpp-python serving
    SmolLM2-135M, 2 threads), started here and stopped after; its venv is built first if it
    is missing (minutes: python tests/llama/env.py prebuilds it)."""
    from tests.llama.server import LlamaServer

    def progress(line: str) -> None:
        print(f"  [llama venv] {line}", file=sys.stderr, flush=True)

    async with LlamaServer(build_progress=progress) as llama:
        proc = getattr(llama, "_proc", None)  # its process, to report the server's CPU
        label = (f"llama.cpp server (tests/llama, llama-cpp-python, model {llama.model}, "
                 f"ready in {llama.started_in or 0:.1f} s) at {llama.base_url}")
        async with RealServer(llama.base_url, llama.model, "", label=label,
                              pid=getattr(proc, "pid", None)) as server:
            yield server


async def bench(args: argparse.Namespace) -> tuple[list[Run], str]:
    runs: list[Run] = []
    profiled = ""
    async with make_server(args) as server:
        real = isinstance(server, RealServer)
        print(f"{server.label}; {os.cpu_count()} CPUs, {platform.python_implementation()} "
              f"{platform.python_version()}, {platform.system()} {platform.release()}",
              flush=True)
        with tempfile.TemporaryDirectory(prefix="rtxrelay-openai-bench-") as tmp:
            workdir = Path(tmp)
            if args.warmup:  # fill the OS file cache and warm the server; not counted
                for client in CLIENTS:
                    warm = await run_worker(server, args,
                                            Run(client, min(WARMUP_TOKENS, args.lengths[0]), -1),
                                            workdir)
                    progress(warm)
                    if not warm.ok:
                        runs.append(warm)  # a failing warm-up fails the bench too
            for li, length in enumerate(args.lengths):
                for rep in range(args.reps):
                    for client in rotation(li * args.reps + rep):
                        run = await run_worker(server, args, Run(client, length, rep), workdir)
                        runs.append(run)
                        progress(run)
            if args.profile:  # extra runs: the profiler's overhead must not skew the tables
                for client in args.profile:
                    path = workdir / f"profile-{CLIENTS.index(client)}.pstats"
                    run = await run_worker(server, args, Run(client, max(args.lengths), -2),
                                           workdir, profile=path)
                    progress(run, " (profiled, not in the tables)")
                    if run.ok and path.exists():
                        profiled += profile_report(path, run, args.profile_lines) + "\n"
                    elif not run.ok:
                        runs.append(run)
        if real:
            print("\n(real server: per-1k figures use each run's own completion-token count)")
    return runs, profiled


def report(args: argparse.Namespace, runs: list[Run], real: bool) -> int:
    measured = [r for r in runs if r.rep >= 0]
    for length in args.lengths:
        report_length(length, [r for r in measured if r.length == length], args.reps, real,
                      args.ascii)
    if len(args.lengths) > 1:
        report_overview(args.lengths, measured)
    if real:
        report_texts(measured)
    report_details(runs)
    report_failures(runs)
    if args.json:
        dump = [{**r.__dict__, "data": {k: v for k, v in r.data.items() if k != "final_text"}}
                for r in runs]
        Path(args.json).write_text(json.dumps(dump, indent=1), encoding="utf-8")
    return 0 if runs and all(r.ok for r in runs) else 1


def _lengths(text: str) -> list[int]:
    return [int(x.replace("_", "")) for x in text.split(",") if x.strip()]


def _clients(text: str) -> list[str]:
    names = {"rtxrelay": OURS, "openai": SDK, "sdk": SDK, "raw": RAW, "aiohttp": RAW}
    try:
        return [names[x.strip().lower()] for x in text.split(",") if x.strip()]
    except KeyError as exc:
        raise argparse.ArgumentTypeError(f"unknown client {exc}: rtxrelay, openai, raw") from None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke run: one {QUICK_LENGTH}-token answer, one run per client, "
                        "no warm-up")
    parser.add_argument("--lengths", type=_lengths, default=list(DEFAULT_LENGTHS),
                        help="answer lengths in tokens (SSE chunks), comma list")
    parser.add_argument("--reps", type=int, default=3, help="runs per client and length")
    parser.add_argument("--persona", default=Persona.LLAMA_CPP.value,
                        choices=[p.value for p in Persona], help="the fake's wire format")
    parser.add_argument("--ascii", action="store_true",
                        help="ASCII-only answers (default: some emoji, CJK and accents)")
    parser.add_argument("--token-delay", type=float, default=0.0,
                        help="the fake's sleep before each chunk (s); 0 = as fast as it can")
    parser.add_argument("--first-tokens", type=int, default=FIRST_REQUEST_TOKENS,
                        help="tokens of the short first request in every run")
    parser.add_argument("--server", help="a running OpenAI-compatible server's base URL (…/v1) "
                        "instead of the fake")
    parser.add_argument("--model", help="with --server: the model (default: the first listed)")
    parser.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY", ""),
                        help="with --server (default: $OPENAI_API_KEY)")
    parser.add_argument("--server-pid", type=int,
                        help="with --server: its process id, to report its CPU per run too")
    parser.add_argument("--max-tokens", type=int,
                        help=f"with --server (default {SERVER_MAX_TOKENS}) or --llama (default "
                        f"{LLAMA_MAX_TOKENS}): max_tokens of the measured answer")
    parser.add_argument("--llama", action="store_true",
                        help="start the suite's llama.cpp server (tests/llama) and compare on it "
                        "(temperature 0)")
    parser.add_argument("--timeout", type=float, default=300.0, help="per worker run (s)")
    parser.add_argument("--no-warmup", dest="warmup", action="store_false",
                        help="skip the uncounted warm-up run of each client")
    parser.add_argument("--profile", type=_clients, nargs="?", const=[OURS], default=[],
                        help="one extra run of the longest answer under cProfile (answer phase "
                        "only), per client in this comma list (default: rtxrelay)")
    parser.add_argument("--profile-lines", type=int, default=25)
    parser.add_argument("--json", help="also write every run's raw figures to this file")
    args = parser.parse_args(argv)
    if args.quick:
        args.lengths, args.reps, args.warmup = [QUICK_LENGTH], 1, False
    if args.llama:
        args.server = None
        args.lengths = [args.max_tokens or LLAMA_MAX_TOKENS]
        args.first_tokens = min(args.first_tokens, 4)
    elif args.server:
        args.lengths = [args.max_tokens or SERVER_MAX_TOKENS]
        args.first_tokens = min(args.first_tokens, 4)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    runs, profiled = asyncio.run(bench(args))
    code = report(args, runs, real=bool(args.server or args.llama))
    if profiled:
        print(profiled)
    print(f"\nbench took {time.monotonic() - started:.0f} s")
    return code


if __name__ == "__main__":
    sys.exit(main())
