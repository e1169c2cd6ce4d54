"""rtxrelay's Gradio client vs the official ``gradio_client``, same answer, same replica.

    .venv/bin/python bench/bench_client.py            # full run (~11 minutes)
    .venv/bin/python bench/bench_client.py --quick    # smoke run: every part, reduced, once

Starts one Chat with RTX replica (tests/replica, real Gradio 4.26 as in ChatRTX 0.3) with a tiny
per-token delay, then for each answer length streams the same ``[len=N]`` answer R times with
each client, alternating which goes first. Every run is a fresh worker process, so its CPU
time and peak RSS are its own: ours in this venv, ``gradio_client`` in the replica's venv.
Both final texts must equal ``fake_model.answer_text`` exactly, and the texts each client
streamed must add up to it. See bench/README.md.

Then, on the same replica:
- the floor: one answer's ``/queue/data`` body per length is captured as rtxrelay read it and
  read again by a minimal aiohttp reader (``_floor_worker.py``), all at once, paced (an event
  per write at the capture's pace, read as it comes) and paced with rtxrelay's read window;
- Chat with RTX's real pace: a ~2k-char answer at 50 ms a token (``[delay=0.05]``), both
  clients and the floor;
- the whole ``rtxrelay ask`` command on a ~10,000-word answer against a gradio_client script
  streaming the same answer, each a process measured from outside (``os.wait4``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
if str(REPO_DIR) not in sys.path:  # the replica helpers live in tests/replica
    sys.path.insert(0, str(REPO_DIR))

import aiohttp  # noqa: E402

from rtxrelay.app.terminal import READ_WINDOW  # noqa: E402
from rtxrelay.backends.chatrtx.answer_html import convert_answer  # noqa: E402
from rtxrelay.backends.chatrtx.backend import ChatRtxBackend, find_chat_function  # noqa: E402
from rtxrelay.backends.chatrtx.gradio_client import GradioQueueClient  # noqa: E402
from rtxrelay.backends.chatrtx.launch_url import parse_launch_url  # noqa: E402
from rtxrelay.core.backend import Failed  # noqa: E402
from tests.replica import fake_model  # noqa: E402
from tests.replica.envs import ensure_env  # noqa: E402
from tests.replica.launcher import Replica  # noqa: E402

sys.path.insert(0, str(BENCH_DIR))
from _measure import SPAWN_ENV  # noqa: E402
from _table import fmt, print_table, ratio  # noqa: E402

OURS = "rtxrelay"
THEIRS = "gradio_client"
CLIENTS = (OURS, THEIRS)
HEADER = ("metric", OURS, THEIRS, "ratio (gradio_client / rtxrelay)")
DEFAULT_LENGTHS = (2_000, 20_000, 60_000)
QUESTION = "How do tensor cores speed up inference? [len={n}]"
PACE_QUESTION = "How do tensor cores speed up inference? [len={n}] [delay={delay:g}]"
ASK = "rtxrelay ask"
SCRIPT = "gradio_client script"
# What `rtxrelay ask` imports: the console script runs rtxrelay.app.cli.main, which imports
# the wiring for `ask` and the bots' secrets for its log redaction.
ASK_IMPORTS = "import rtxrelay.app.cli, rtxrelay.app.wiring, rtxrelay.bots"
# The floor's variants: (delivery, parser), see _floor_worker.py. "once": the whole stream in
# one write, plain, as Gradio answers rtxrelay's HTTP/1.0 request; "once-chunked": the same
# framed as Gradio answers HTTP/1.1 (an HTTP chunk per event, what rtxrelay no longer reads);
# "paced": an event per write at the capture's own pace, read as it comes;
# "paced-window": the same replay, the socket paused for rtxrelay's read window after a read
# with text, on PacedReads' condition (restated in the floor worker, not imported). orjson is
# what rtxrelay decodes events with (backends/json_events.py); json is there to compare.
FLOORS = (("once", "json"), ("once", "orjson"), ("once-chunked", "json"), ("paced", "json"),
          ("paced", "orjson"), ("paced-window", "orjson"))
# At the slow pace the paced floors take the answer's whole wall time each: fewer of them.
PACE_FLOORS_ONCE = FLOORS[:3]
PACE_FLOORS_PACED = (("paced", "json"), ("paced-window", "orjson"))
FLOOR_LABELS = {"once": "once", "once-chunked": "once HTTP/1.1-chunked", "paced": "paced",
                "paced-window": "paced same window"}
# The goals' floors: the same decoder as rtxrelay, all at once (the absolute limit) and at the
# answer's pace with the same read window (the limit at that pace and window).
GOAL_FLOORS = ((("once", "orjson"), "the floor once, orjson (the absolute limit)"),
               (("paced-window", "orjson"),
                "the floor paced same window, orjson (the limit at this pace and window)"))
# Settings `rtxrelay ask` reads: none may leak in from the caller's environment.
SETTING_PREFIXES = ("RTX_", "RTXRELAY_", "OPENAI_", "LOG_", "DISCORD_", "TELEGRAM_", "MAX_",
                    "HISTORY_", "USER_RATE")


@dataclass
class Run:
    client: str
    length: int
    rep: int
    part: str = "main"  # main, capture, floor, pace, ask, startup
    data: dict[str, Any] = field(default_factory=dict)
    ok: bool = False
    error: str | None = None
    output_tail: str = ""
    proc: dict[str, float] = field(default_factory=dict)  # whole process, from os.wait4

    def get(self, key: str) -> float:
        value = self.data.get(key)
        if value is None:
            value = self.data.get("extra", {}).get(key)
        return float(value) if isinstance(value, int | float) else math.nan

    @property
    def label(self) -> str:
        return f"{self.part} {self.client} len={self.length:,} rep {self.rep + 1}"


# -- running the workers ----------------------------------------------------------------------


def _worker_env() -> dict[str, str]:
    env = dict(os.environ)
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy",
                 "all_proxy"):
        env.pop(name, None)
    env.update({
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
        "HF_HUB_OFFLINE": "1",  # gradio_client must not reach out to the Hugging Face Hub
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "GRADIO_ANALYTICS_ENABLED": "False",
        "PYTHONIOENCODING": "utf-8",
    })
    return env


async def run_worker(
    cmd: Sequence[str], run: Run, workdir: Path, timeout: float, *, expected: str | None,
    after: Sequence[str] = (),
) -> Run:
    """``cmd OUT_JSON after...`` as a fresh process that measures itself (``_measure``);
    with ``expected``, its final text must be exactly that."""
    out = workdir / re.sub(r"[^\w.-]+", "_", f"{run.part}-{run.client}-{run.length}-{run.rep}.json")
    env = _worker_env()
    env[SPAWN_ENV] = repr(time.time())
    proc = await asyncio.create_subprocess_exec(
        *cmd, str(out), *after,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
        cwd=str(BENCH_DIR),
    )
    try:
        raw, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        raw, _ = await proc.communicate()
        run.error = f"timed out after {timeout:g} s (worker killed)"
        run.output_tail = raw.decode("utf-8", "replace")[-3000:]
        return run
    run.output_tail = raw.decode("utf-8", "replace")[-3000:]
    return _take_result(run, out, proc.returncode, expected)


def _take_result(run: Run, out: Path, returncode: int | None, expected: str | None) -> Run:
    try:
        run.data = json.loads(out.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        run.error = f"worker exited {returncode} without a result"
        return run
    finally:
        out.unlink(missing_ok=True)
    if not run.data.get("ok"):
        run.error = str(run.data.get("error") or f"worker exited {returncode}")
        return run
    if expected is not None:
        got = run.data.get("final_text")
        if got != expected:
            run.error = _mismatch(got, expected)
            return run
    run.ok = True
    return run


def run_process(cmd: Sequence[str], *, env: dict[str, str], cwd: Path, stdout: Path,
                stderr: Path, timeout: float) -> dict[str, float]:
    """Run ``cmd`` and wait for it with ``os.wait4``: its whole CPU (user+sys, all threads,
    and any child it waited for), peak RSS and wall, measured from outside."""
    with open(stdout, "wb") as out, open(stderr, "wb") as err:
        started = time.perf_counter()
        proc = subprocess.Popen(list(cmd), stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                env=env, cwd=str(cwd))
        lock = threading.Lock()
        exited = False
        timed_out = False

        def kill() -> None:
            nonlocal timed_out
            with lock:
                if not exited:
                    timed_out = True
                    proc.kill()

        killer = threading.Timer(timeout, kill)
        killer.start()
        try:
            # Wait without reaping first, so the timer can never signal a reused pid.
            os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
            with lock:
                exited = True
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            killer.cancel()
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
    return {"returncode": float(proc.returncode), "wall": wall, "user": usage.ru_utime,
            "sys": usage.ru_stime, "cpu": usage.ru_utime + usage.ru_stime,
            "maxrss_mib": usage.ru_maxrss / 1024.0, "vcsw": float(usage.ru_nvcsw),
            "timed_out": float(timed_out)}


def _mismatch(got: object, expected: str) -> str:
    if not isinstance(got, str):
        return f"final text is {type(got).__name__}, expected {len(expected)} chars"
    at = next((i for i, (a, b) in enumerate(zip(got, expected, strict=False)) if a != b),
              min(len(got), len(expected)))
    return (f"final text differs from the expected text: {len(got)} chars vs "
            f"{len(expected)} expected, first difference at {at}: {got[at:at + 40]!r}")


async def find_fn_index(url: str) -> int:
    """The chat function, found by rtxrelay's own structural search; both clients use it.

    Also warms the replica up (its first queued job takes ~1.5 s longer than the rest),
    with one short answer from this process, so no measured run pays for that.
    """
    launch = parse_launch_url(url)
    async with aiohttp.ClientSession() as http:
        client = GradioQueueClient(http, launch.base_url, headers=launch.cookie_header)
        app = await client.fetch_config()
        backend = ChatRtxBackend(http, launch)
        async for update in backend.stream_answer("warm-up", [], session="bench-warm-up"):
            if isinstance(update, Failed):
                raise RuntimeError(f"warm-up answer failed: {update.error}")
    chat = find_chat_function(app)
    position = next(i for i, dep in enumerate(app.dependencies)
                    if int(dep.get("id", i)) == chat.fn_index)
    if position != chat.fn_index:  # gradio_client indexes dependencies by position
        raise RuntimeError(f"dependency id {chat.fn_index} sits at position {position}")
    return chat.fn_index


def words_question(words: int) -> str:
    """The ``[len=N]`` question whose answer has at least ``words`` words (N rounded up to
    a hundred)."""

    def count(n: int) -> int:
        return len(fake_model.answer_text(QUESTION.format(n=n), []).split())

    n = words * 7
    for _ in range(4):
        n = max(100, int(n * words / max(1, count(n))))
    n = -(-n // 100) * 100
    while count(n) < words:
        n += 100
    while n > 100 and count(n - 100) >= words:
        n -= 100
    return QUESTION.format(n=n)


def tokens_of(question: str) -> int:
    return len(fake_model.tokens(fake_model.answer_text(question, [])))


# -- the bench --------------------------------------------------------------------------------


@dataclass
class Bench:
    args: argparse.Namespace
    url: str
    fn_index: int
    gradio_python: Path
    workdir: Path
    runs: list[Run] = field(default_factory=list)
    captures: dict[str, Path] = field(default_factory=dict)  # question -> captured body

    def command(self, client: str, question: str) -> tuple[list[str], list[str]]:
        if client == OURS:
            return ([sys.executable, str(BENCH_DIR / "_rtxrelay_worker.py"), self.url, question],
                    ["--read-window", repr(self.args.read_window)])
        return ([str(self.gradio_python), str(BENCH_DIR / "_gradio_client_worker.py"), self.url,
                 question], [str(self.fn_index)])

    async def client_run(self, client: str, question: str, run: Run) -> Run:
        cmd, after = self.command(client, question)
        run = await run_worker(cmd, run, self.workdir, self.args.timeout,
                               expected=fake_model.answer_text(question, []), after=after)
        self.runs.append(run)
        return run

    async def compare(self, question: str, length: int, reps: int, part: str,
                      turn: int = 0) -> None:
        for rep in range(reps):
            order = CLIENTS if (turn + rep) % 2 == 0 else CLIENTS[::-1]
            for client in order:
                run = await self.client_run(client, question, Run(client, length, rep, part))
                _progress(run, f"answer {fmt(run.get('answer_wall')):>6} s wall, "
                          f"{fmt(run.get('answer_cpu')):>6} s CPU")

    async def capture(self, question: str, length: int, part: str) -> None:
        """One uncounted rtxrelay run that dumps the answer's body (read window 0, so the
        capture's read times follow the server's writes closely)."""
        body = self.workdir / f"capture-{len(self.captures)}.bin"
        cmd, _ = self.command(OURS, question)
        run = Run(OURS, length, 0, f"{part} capture")
        run = await run_worker(cmd, run, self.workdir, self.args.timeout,
                               expected=fake_model.answer_text(question, []),
                               after=["--read-window", "0", "--dump", str(body)])
        self.runs.append(run)
        _progress(run, f"captured {fmt(run.get('stream_bytes'))} bytes in "
                  f"{fmt(run.get('stream_reads'))} reads, {fmt(run.get('answer_cpu'))} s CPU")
        if run.ok:
            self.captures[question] = body

    async def floor(self, question: str, length: int, part: str, reps: int,
                    variants: Sequence[tuple[str, str]]) -> None:
        body = self.captures.get(question)
        if body is None:
            return
        for variant, parser in variants:
            after = ["--parser", parser]
            if variant == "paced-window":
                after += ["--delivery", "paced", "--read-window", repr(self.args.read_window)]
            else:
                after += ["--delivery", variant]
            for rep in range(reps):
                run = Run(f"floor {variant} {parser}", length, rep, f"{part} floor")
                run = await run_worker(
                    [sys.executable, str(BENCH_DIR / "_floor_worker.py"), str(body)], run,
                    self.workdir, self.args.timeout, expected=None, after=after)
                self.runs.append(run)
                _progress(run, f"{fmt(run.get('answer_cpu'))} s CPU, "
                          f"{fmt(run.get('answer_wall'))} s wall")

    async def ask(self, question: str, rep: int, *, warm: bool = False) -> None:
        """The real CLI, a process of its own; settings from the environment only."""
        folder = self.workdir / "ask"
        folder.mkdir(exist_ok=True)
        env = {k: v for k, v in _worker_env().items() if not k.startswith(SETTING_PREFIXES)}
        env.update({"RTX_URL": self.url, "RTXRELAY_DB": str(folder / "rtxrelay.db")})
        run = Run(ASK, tokens_of(question), rep, "ask warm-up" if warm else "ask")
        out, err = folder / "stdout.txt", folder / "stderr.txt"
        run.proc = await asyncio.to_thread(
            run_process, [self.args.rtxrelay, "ask", question], env=env, cwd=folder,
            stdout=out, stderr=err, timeout=self.args.timeout)
        printed = out.read_text(encoding="utf-8", errors="replace")
        run.output_tail = err.read_text(encoding="utf-8", errors="replace")[-3000:]
        expected = convert_answer(fake_model.answer_text(question, [])).text + "\n"
        if run.proc["timed_out"]:
            run.error = f"timed out after {self.args.timeout:g} s (killed)"
        elif run.proc["returncode"] != 0:
            run.error = f"exited {run.proc['returncode']:g}"
        elif printed != expected:
            run.error = "stdout: " + _mismatch(printed, expected)
        else:
            run.ok = True
        run.data = {"stdout_chars": len(printed)}
        self.runs.append(run)
        _progress(run, f"{fmt(run.proc['cpu'])} s CPU, {fmt(run.proc['wall'])} s wall")

    async def script(self, question: str, rep: int, *, warm: bool = False) -> None:
        """The gradio_client worker as a whole process, measured from outside like the CLI."""
        run = Run(SCRIPT, tokens_of(question), rep, "ask warm-up" if warm else "ask")
        cmd, after = self.command(THEIRS, question)
        out = self.workdir / f"script-{rep}.json"
        env = _worker_env()
        env[SPAWN_ENV] = repr(time.time())
        log = self.workdir / "script.log"
        run.proc = await asyncio.to_thread(
            run_process, [*cmd, str(out), *after], env=env, cwd=BENCH_DIR, stdout=log,
            stderr=log.with_suffix(".err"), timeout=self.args.timeout)
        run.output_tail = log.with_suffix(".err").read_text(encoding="utf-8",
                                                            errors="replace")[-3000:]
        _take_result(run, out, int(run.proc["returncode"]),
                     fake_model.answer_text(question, []))
        self.runs.append(run)
        _progress(run, f"{fmt(run.proc['cpu'])} s CPU, {fmt(run.proc['wall'])} s wall")

    async def startup(self, rep: int) -> None:
        """Start-up alone, each a process of its own: an interpreter importing the modules
        `rtxrelay ask` loads (``ASK_IMPORTS``: ``-X importtime`` listed the same modules for
        both when this was written) and `rtxrelay --help`; against ``python -c 'import
        gradio_client'``."""
        env = {k: v for k, v in _worker_env().items() if not k.startswith(SETTING_PREFIXES)}
        commands = {
            ASK: [sys.executable, "-c", ASK_IMPORTS],
            f"{ASK} --help": [self.args.rtxrelay, "--help"],
            SCRIPT: [str(self.gradio_python), "-c", "import gradio_client"],
        }
        for client, cmd in commands.items():
            run = Run(client, 0, rep, "startup")
            run.proc = await asyncio.to_thread(
                run_process, cmd, env=env, cwd=self.workdir, stdout=self.workdir / "startup.out",
                stderr=self.workdir / "startup.err", timeout=self.args.timeout)
            run.ok = run.proc["returncode"] == 0
            if not run.ok:
                run.error = f"exited {run.proc['returncode']:g}"
                run.output_tail = (self.workdir / "startup.err").read_text(errors="replace")
            self.runs.append(run)


def _load() -> str:
    """The machine's 1/5/15-minute load averages: other work shares these cores."""
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def _progress(run: Run, figures: str) -> None:
    status = "ok" if run.ok else f"FAILED: {run.error}"
    if run.ok and run.data.get("streamed_ok") is False:
        status = f"STREAMED TEXT INCONSISTENT: {run.data.get('stream_problem')}"
    print(f"  {run.part:<14} {run.client:<25} len={run.length:>6,} rep {run.rep + 1}  "
          f"{figures}  {status}", flush=True)


async def bench(args: argparse.Namespace) -> list[Run]:
    gradio_python = await asyncio.to_thread(ensure_env, args.variant)
    async with Replica(args.variant, token_delay=args.token_delay) as rtx:
        assert rtx.url is not None
        fn_index = await find_fn_index(rtx.url)
        print(f"replica: gradio {rtx.variant.gradio} ({rtx.variant.protocol}), "
              f"token delay {args.token_delay:g} s, chat fn_index {fn_index}; "
              f"{os.cpu_count()} CPUs, {platform.python_implementation()} "
              f"{platform.python_version()}, {platform.system()} {platform.release()}; "
              f"load average {_load()}", flush=True)
        print(f"rtxrelay streams with read_window={args.read_window:g} s "
              f"(rtxrelay.app.terminal.READ_WINDOW = {READ_WINDOW:g} s); floor parsers: json, "
              "orjson (rtxrelay's); floor paced same window: the same read_window", flush=True)

        with tempfile.TemporaryDirectory(prefix="rtxrelay-bench-") as tmp:
            b = Bench(args, rtx.url, fn_index, gradio_python, Path(tmp))
            if args.warmup:  # fill the OS file cache and warm the server; not counted
                for client in CLIENTS:
                    await b.client_run(client, QUESTION.format(n=200), Run(client, 200, 0,
                                                                           "warm-up"))
            print("\n-- answers at the bench's pace --", flush=True)
            for li, length in enumerate(args.lengths):
                await b.compare(QUESTION.format(n=length), length, args.reps, "main", li)
            if "floor" not in args.skip:
                print("\n-- the floor: each answer's stream captured, then read by a minimal "
                      "reader --", flush=True)
                for length in args.lengths:
                    question = QUESTION.format(n=length)
                    await b.capture(question, length, "main")
                    await b.floor(question, length, "main", args.floor_reps, FLOORS)
            if "ask" not in args.skip:
                question = words_question(args.ask_words)
                print(f"\n-- whole commands: {question!r}, "
                      f"{len(fake_model.answer_text(question, []).split()):,} words --",
                      flush=True)
                if args.warmup:  # creates the database `rtxrelay ask` then reuses
                    await b.ask(QUESTION.format(n=200), 0, warm=True)
                    await b.script(QUESTION.format(n=200), 0, warm=True)
                for rep in range(args.ask_reps):
                    pair = (b.ask, b.script) if rep % 2 == 0 else (b.script, b.ask)
                    for step in pair:
                        await step(question, rep)
                for rep in range(args.ask_reps):
                    await b.startup(rep)
            if "pace" not in args.skip:
                question = PACE_QUESTION.format(n=args.pace_length, delay=args.pace_delay)
                print(f"\n-- Chat with RTX's pace: {args.pace_delay * 1000:g} ms a token "
                      f"({tokens_of(question):,} tokens) --", flush=True)
                await b.compare(question, args.pace_length, args.pace_reps, "pace")
                if "floor" not in args.skip:
                    await b.capture(question, args.pace_length, "pace")
                    await b.floor(question, args.pace_length, "pace", args.floor_reps,
                                  PACE_FLOORS_ONCE)
                    await b.floor(question, args.pace_length, "pace", args.pace_reps,
                                  PACE_FLOORS_PACED)
    return b.runs


# -- the report -------------------------------------------------------------------------------

Metric = tuple[str, Callable[[Run, int], float]]


def _convert_cpu(run: Run) -> float:
    """rtxrelay's final HTML -> Markdown conversion; gradio_client has none (nan)."""
    return run.get("convert_cpu")


def _protocol_cpu(run: Run) -> float:
    """Answer CPU without the HTML conversion: the like-for-like Gradio protocol cost."""
    convert = _convert_cpu(run)
    return run.get("answer_cpu") - (0.0 if math.isnan(convert) else convert)


def _cpu_per_1k(run: Run, tokens: int) -> float:
    return (run.get("connect_cpu") + run.get("answer_cpu")) / tokens * 1000


def _messages(run: Run) -> float:
    messages = run.data.get("messages") or {}
    return float(sum(messages.values())) if messages else math.nan


def _per_token_us(run: Run, tokens: int) -> float:
    return run.get("answer_cpu") / tokens * 1e6


METRICS: list[Metric] = [
    ("streamed updates received", lambda r, t: r.get("updates")),
    ("SSE process_generating handled", lambda r, t: r.data.get("messages", {}).get(
        "process_generating", math.nan)),
    ("stream reads while answering", lambda r, t: r.get("stream_reads")),
    ("SSE messages per read", lambda r, t: _messages(r) / r.get("stream_reads")),
    ("reads per token", lambda r, t: r.get("stream_reads") / t),
    ("windows held (PacedReads.holds)", lambda r, t: r.get("windows_held")),
    ("event-loop wake-ups per token", lambda r, t: r.get("wakeups") / t),
    ("  of them a timer (window end)", lambda r, t: r.get("timer_wakeups") / t),
    ("socket reads (recv) per token", lambda r, t: r.get("socket_recvs") / t),
    ("voluntary context switches per token", lambda r, t: r.get("answer_vcsw") / t),
    ("start-up wall s (interpreter+imports)", lambda r, t: r.get("startup_wall")),
    ("start-up CPU s", lambda r, t: r.get("startup_cpu")),
    ("RSS after imports MiB", lambda r, t: r.get("rss_after_import_mib")),
    ("connect wall s", lambda r, t: r.get("connect_wall")),
    ("connect CPU s", lambda r, t: r.get("connect_cpu")),
    ("first text after submit s", lambda r, t: r.get("first_text_wall")),
    ("answer wall s (submit -> final)", lambda r, t: r.get("answer_wall")),
    ("answer CPU s", lambda r, t: r.get("answer_cpu")),
    ("CPU % of a core while answering",
     lambda r, t: r.get("answer_cpu") / r.get("answer_wall") * 100),
    ("CPU s / 1k tokens (1st request->final)", _cpu_per_1k),
    ("CPU s / 1k tokens (answer only)", lambda r, t: r.get("answer_cpu") / t * 1000),
    ("  of it HTML->Markdown (convert_answer) s", lambda r, t: _convert_cpu(r)),
    ("  of it the bench's streamed-text check s", lambda r, t: r.get("check_cpu")),
    ("answer CPU s without HTML->Markdown", lambda r, t: _protocol_cpu(r)),
    ("  the same per 1k tokens", lambda r, t: _protocol_cpu(r) / t * 1000),
    ("answer CPU us / token", _per_token_us),
    ("peak RSS MiB", lambda r, t: r.get("peak_rss_mib")),
    ("peak RSS - RSS after imports MiB",
     lambda r, t: r.get("peak_rss_mib") - r.get("rss_after_import_mib")),
]


def median(runs: list[Run], metric: Callable[[Run, int], float], tokens: int) -> float:
    values = [v for v in (metric(r, tokens) for r in runs) if not math.isnan(v)]
    return statistics.median(values) if values else math.nan


def _div(a: float, b: float) -> float:
    return a / b if b and not math.isnan(b) else math.nan


def _times(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.2f}x"


def _consistent(runs: list[Run]) -> str:
    known = [r for r in runs if r.data.get("streamed_ok") is not None]
    return f"{sum(1 for r in known if r.data['streamed_ok'])}/{len(known)}" if known else "-"


@dataclass
class Section:
    """One answer (a length at the bench's pace, or the paced one) and its runs."""

    title: str
    question: str
    part: str
    length: int
    runs: list[Run]

    @property
    def tokens(self) -> int:
        return tokens_of(self.question)

    def ok(self, client: str) -> list[Run]:
        return [r for r in self.runs if r.part == self.part and r.client == client
                and r.length == self.length and r.ok]

    def floor(self, delivery: str, parser: str) -> list[Run]:
        name = f"floor {delivery} {parser}"
        return [r for r in self.runs if r.part == f"{self.part} floor" and r.client == name
                and r.length == self.length and r.ok]

    def floor_us(self, delivery: str, parser: str) -> float:
        return median(self.floor(delivery, parser), _per_token_us, self.tokens)

    def client_us(self, client: str) -> float:
        return median(self.ok(client), _per_token_us, self.tokens)


def report_section(s: Section, reps: int) -> None:
    expected = fake_model.answer_text(s.question, [])
    tokens = s.tokens
    ours, theirs = s.ok(OURS), s.ok(THEIRS)
    window = median(ours, lambda r, t: r.get("read_window"), tokens)
    print(f"\n== {s.title}: {len(expected):,} chars, {tokens:,} tokens streamed, rtxrelay "
          f"read_window {fmt(window)} s (median of {reps} run(s) per client) ==")
    rows: list[tuple[str, ...]] = [HEADER]
    rows.append(("runs with the exact final text", f"{len(ours)}/{reps}",
                 f"{len(theirs)}/{reps}", ""))
    rows.append(("streamed text consistent", _consistent(ours), _consistent(theirs), ""))
    for name, metric in METRICS:
        a, b = median(ours, metric, tokens), median(theirs, metric, tokens)
        rows.append((name, fmt(a), fmt(b), ratio(b, a)))
    a, b = s.client_us(OURS), s.client_us(THEIRS)
    for variant, parser in FLOORS:
        floor = s.floor_us(variant, parser)
        if not math.isnan(floor):
            rows.append((f"  / floor {FLOOR_LABELS[variant]} {parser} ({fmt(floor)} us/token)",
                         _times(_div(a, floor)), _times(_div(b, floor)), ""))
    print_table(rows)
    report_floor(s)


def report_floor(s: Section) -> None:
    """Every reader of this answer's stream side by side: the floor's variants, rtxrelay
    with no window (the capture run) and with its window, gradio_client."""
    capture = [r for r in s.runs if r.part == f"{s.part} capture" and r.length == s.length
               and r.ok]
    floors = [(f"floor, {FLOOR_LABELS[d]}, {p}", s.floor(d, p)) for d, p in FLOORS]
    if not capture or not any(runs for _, runs in floors):
        return
    tokens = s.tokens
    cap = capture[0]
    pace = median([r for d, p in FLOORS if d.startswith("paced") for r in s.floor(d, p)],
                  lambda r, t: r.get("pace"), tokens)
    window = median(s.ok(OURS), lambda r, t: r.get("read_window"), tokens)
    print(f"\n-- {s.title}: the same stream ({fmt(cap.get('stream_bytes'))} bytes) read by a "
          f"minimal aiohttp reader (readany, split at blank lines, json.loads or orjson.loads) "
          f"in a fresh process; paced = one event per write at the capture's own pace "
          f"({fmt(pace * 1000)} ms/token), read as it comes; paced same window = the same, the "
          f"socket paused {fmt(window)} s after a read with text while the pace fits 1.5 events "
          f"in a window (PacedReads' condition); medians --")
    ours_us, theirs_us = s.client_us(OURS), s.client_us(THEIRS)
    rows: list[tuple[str, ...]] = [("reader", "runs", "CPU us/token", "reads/token",
                                    "events/read", "wake-ups/token", "vcsw/token",
                                    "windows held", "wall s", "rtxrelay / this",
                                    "gradio_client / this")]
    readers = [*floors, ("rtxrelay, read_window 0 (capture run)", capture),
               (f"rtxrelay, read_window {fmt(window)}", s.ok(OURS)),
               ("gradio_client", s.ok(THEIRS))]
    for name, runs in readers:
        if not runs:
            continue
        us = median(runs, _per_token_us, tokens)
        rows.append((
            name, str(len(runs)), fmt(us),
            fmt(median(runs, lambda r, t: r.get("stream_reads") / t, tokens)),
            fmt(median(runs, lambda r, t: _messages(r) / r.get("stream_reads"), tokens)),
            fmt(median(runs, lambda r, t: r.get("wakeups") / t, tokens)),
            fmt(median(runs, lambda r, t: r.get("answer_vcsw") / t, tokens)),
            fmt(median(runs, lambda r, t: r.get("windows_held"), tokens)),
            fmt(median(runs, lambda r, t: r.get("answer_wall"), tokens)),
            _times(_div(ours_us, us)), _times(_div(theirs_us, us))))
    print_table(rows)


# (title, metric) of the by-length overview printed after the per-length tables.
OVERVIEW: list[Metric] = [
    ("CPU s / 1k tokens, 1st request -> final", _cpu_per_1k),
    ("CPU s / 1k tokens, answer without HTML->Markdown",
     lambda r, t: _protocol_cpu(r) / t * 1000),
    ("peak RSS MiB", lambda r, t: r.get("peak_rss_mib")),
]


def report_overview(sections: list[Section]) -> None:
    if len(sections) > 1:
        for title, metric in OVERVIEW:
            print(f"\n== by answer: {title} (medians) ==")
            rows: list[tuple[str, ...]] = [("answer chars / tokens", OURS, THEIRS, "ratio")]
            for s in sections:
                text = fake_model.answer_text(s.question, [])
                a = median(s.ok(OURS), metric, s.tokens)
                b = median(s.ok(THEIRS), metric, s.tokens)
                pace = "" if s.part == "main" else " (paced)"
                rows.append((f"{len(text):,} / {s.tokens:,}{pace}", fmt(a), fmt(b), ratio(b, a)))
            print_table(rows)
    print("\n== answer-phase CPU per token, every answer (medians; floor = the same captured "
          "stream read by the minimal reader) ==")
    rows = [(
        "answer", "rtxrelay us", "gradio_client us", "gradio_client / rtxrelay",
        "floor once json", "floor once orjson", "floor paced json", "floor paced orjson",
        "floor paced same window orjson", "rtxrelay / floor once orjson",
        "rtxrelay / floor paced same window")]
    for s in sections:
        a, b = s.client_us(OURS), s.client_us(THEIRS)
        once, window = s.floor_us("once", "orjson"), s.floor_us("paced-window", "orjson")
        rows.append((s.title, fmt(a), fmt(b), ratio(b, a), fmt(s.floor_us("once", "json")),
                     fmt(once), fmt(s.floor_us("paced", "json")),
                     fmt(s.floor_us("paced", "orjson")), fmt(window), _times(_div(a, once)),
                     _times(_div(a, window))))
    print_table(rows)


def report_ask(runs: list[Run], reps: int, question: str) -> tuple[float, float]:
    """The whole-command table; returns (rtxrelay ask, gradio_client script) CPU medians."""
    text = fake_model.answer_text(question, [])
    tokens = tokens_of(question)
    done = {c: [r for r in runs if r.part == "ask" and r.client == c and r.ok]
            for c in (ASK, SCRIPT)}
    startup = {c: [r for r in runs if r.part == "startup" and r.client == c and r.ok]
               for c in (ASK, SCRIPT, f"{ASK} --help")}
    if not done[ASK] and not done[SCRIPT]:
        return math.nan, math.nan
    print(f"\n== whole commands, each a process measured from outside (os.wait4): "
          f"{len(text.split()):,} words, {len(text):,} chars, {tokens:,} tokens at the bench's "
          f"pace (median of {reps} run(s)) ==")
    print(f"rtxrelay ask: `rtxrelay ask \"{question}\"`, RTX_URL "
          "and RTXRELAY_DB (a temporary file) in its environment, a temporary folder, stdout "
          "to a file; gradio_client script: _gradio_client_worker.py (Client, submit, iterate, "
          "result) in the replica's venv")

    def proc(key: str, client: str, pool: dict[str, list[Run]] = done) -> float:
        values = [r.proc[key] for r in pool[client] if key in r.proc]
        return statistics.median(values) if values else math.nan

    rows: list[tuple[str, ...]] = [("metric", ASK, SCRIPT, "ratio (script / ask)")]
    rows.append(("runs with the exact text", f"{len(done[ASK])}/{reps}",
                 f"{len(done[SCRIPT])}/{reps}", ""))
    rows.append(("streamed text consistent", "(stdout = answer)",
                 _consistent(done[SCRIPT]), ""))
    for name, key in (("whole process CPU s (user+sys)", "cpu"), ("  user s", "user"),
                      ("  sys s", "sys"), ("wall s", "wall"), ("peak RSS MiB", "maxrss_mib"),
                      ("voluntary context switches", "vcsw")):
        a, b = proc(key, ASK), proc(key, SCRIPT)
        rows.append((name, fmt(a), fmt(b), ratio(b, a)))
    a, b = proc("cpu", ASK), proc("cpu", SCRIPT)
    rows.append(("whole process CPU us / token", fmt(a / tokens * 1e6), fmt(b / tokens * 1e6),
                 ratio(b, a)))
    sa, sb = proc("cpu", ASK, startup), proc("cpu", SCRIPT, startup)
    rows.append(("start-up alone CPU s (ask's imports | import gradio_client)", fmt(sa),
                 fmt(sb), ratio(sb, sa)))
    rows.append(("start-up alone wall s", fmt(proc("wall", ASK, startup)),
                 fmt(proc("wall", SCRIPT, startup)),
                 ratio(proc("wall", SCRIPT, startup), proc("wall", ASK, startup))))
    help_cpu = proc("cpu", f"{ASK} --help", startup)
    rows.append(("  `rtxrelay --help` CPU s (lazy imports: less than ask's)", fmt(help_cpu), "",
                 ""))
    rows.append(("whole CPU minus start-up alone s", fmt(a - sa), fmt(b - sb),
                 ratio(b - sb, a - sa)))
    print_table(rows)
    return a, b


def report_targets(sections: list[Section], ask: tuple[float, float], words: int) -> None:
    """Issue 16's goals against the figures above (reported, never tuned for)."""
    rows: list[tuple[str, ...]] = [("goal (issue 16)", "answer", "measured", "met")]
    for s in sections:
        a, b = s.client_us(OURS), s.client_us(THEIRS)
        below = _div(b, a)
        rows.append(("answer CPU/token >= 10x below gradio_client", s.title, _times(below),
                     "-" if math.isnan(below) else ("yes" if below >= 10 else "NO")))
        for (variant, parser), what in GOAL_FLOORS:
            floor = s.floor_us(variant, parser)
            if math.isnan(floor):
                continue
            dist = _div(a, floor)
            rows.append((f"answer CPU/token within 3x of {what}", s.title,
                         _times(dist), "-" if math.isnan(dist) else
                         ("yes" if dist <= 3 else "NO")))
    whole = _div(ask[1], ask[0])
    if not math.isnan(whole):
        rows.append(("`rtxrelay ask` whole CPU >= 3x less than a gradio_client script",
                     f"~{words:,} words", _times(whole), "yes" if whole >= 3 else "NO"))
    print("\n== issue 16's goals (figures above; nothing is tuned to them) ==")
    print_table(rows)


_SESSION_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def wire_summary(wire: list[str]) -> str:
    """Requests in order, repeats folded: "GET /config, POST /queue/join x2"."""
    folded: list[list[Any]] = []
    for line in wire:
        line = _SESSION_RE.sub("<session>", line)
        if folded and folded[-1][0] == line:
            folded[-1][1] += 1
        else:
            folded.append([line, 1])
    return ", ".join(f"{line} x{n}" if n > 1 else line for line, n in folded)


def report_details(runs: list[Run]) -> None:
    print("\n== what each client did (last successful run of the longest answer) ==")
    for client in CLIENTS:
        done = [r for r in runs if r.client == client and r.ok and r.part == "main"]
        if not done:
            print(f"{client}: no successful run")
            continue
        last = max(done, key=lambda r: (r.length, r.rep))
        d = last.data
        extra = {k: v for k, v in d.get("extra", {}).items() if k != "traceback"}
        print(f"{client} (len={last.length:,}): {d.get('updates')} updates, "
              f"{d.get('stream_reads')} stream reads, SSE messages {d.get('messages')}, "
              f"context switches {d.get('answer_vcsw')} voluntary / {d.get('answer_ivcsw')} "
              f"involuntary, {extra}")
        print(f"  wire: {wire_summary(d.get('wire', []))}")


def report_failures(runs: list[Run]) -> None:
    failed = [r for r in runs if not r.ok]
    inconsistent = [r for r in runs if r.ok and r.data.get("streamed_ok") is False]
    if inconsistent:
        print(f"\n== {len(inconsistent)} run(s) whose streamed text does not add up ==")
        for r in inconsistent:
            print(f"{r.label}: {r.data.get('stream_problem')}")
    if not failed:
        return
    print(f"\n== {len(failed)} FAILED run(s) ==")
    for r in failed:
        print(f"{r.label}: {r.error}")
        trace = r.data.get("extra", {}).get("traceback") if r.data else None
        tail = (trace or r.output_tail).strip()
        if tail:
            print("  " + "\n  ".join(tail.splitlines()[-12:]))


def report(args: argparse.Namespace, runs: list[Run]) -> int:
    sections = [Section(f"{len(fake_model.answer_text(QUESTION.format(n=n), [])):,} chars "
                        "at the bench's pace", QUESTION.format(n=n), "main", n, runs)
                for n in args.lengths]
    for s in sections:
        report_section(s, args.reps)
    if "pace" not in args.skip:
        question = PACE_QUESTION.format(n=args.pace_length, delay=args.pace_delay)
        pace = Section(f"{len(fake_model.answer_text(question, [])):,} chars at "
                       f"{args.pace_delay * 1000:g} ms a token", question, "pace",
                       args.pace_length, runs)
        report_section(pace, args.pace_reps)
        sections.append(pace)
    report_overview(sections)
    ask = (math.nan, math.nan)
    if "ask" not in args.skip:
        ask = report_ask(runs, args.ask_reps, words_question(args.ask_words))
    report_targets(sections, ask, args.ask_words)
    report_details(runs)
    report_failures(runs)
    if args.json:
        dump = [{**r.__dict__, "data": {k: v for k, v in r.data.items() if k != "final_text"}}
                for r in runs]
        Path(args.json).write_text(json.dumps(dump, indent=1), encoding="utf-8")
    consistent = all(r.data.get("streamed_ok") is not False for r in runs)
    return 0 if runs and consistent and all(r.ok for r in runs) else 1


# -- main -------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: every part once, on short answers, no warm-up")
    parser.add_argument("--lengths", type=lambda s: [int(x) for x in s.split(",") if x],
                        default=list(DEFAULT_LENGTHS),
                        help="answer lengths in chars, comma list ('' for none: other parts only)")
    parser.add_argument("--reps", type=int, default=3, help="runs per client and length")
    parser.add_argument("--token-delay", type=float, default=0.0005,
                        help="the replica's sleep per streamed token (s)")
    parser.add_argument("--read-window", type=float, default=READ_WINDOW,
                        help="rtxrelay's read_window (s); default rtxrelay.app.terminal."
                        f"READ_WINDOW = {READ_WINDOW:g}")
    parser.add_argument("--floor-reps", type=int, default=None,
                        help="fresh floor processes per stream and variant (default: --reps)")
    parser.add_argument("--pace-delay", type=float, default=0.05,
                        help="Chat with RTX's real pace, s per token")
    parser.add_argument("--pace-length", type=int, default=2_000,
                        help="chars of the answer streamed at that pace")
    parser.add_argument("--pace-reps", type=int, default=3, help="runs per client at that pace")
    parser.add_argument("--ask-words", type=int, default=10_000,
                        help="words of the answer `rtxrelay ask` streams")
    parser.add_argument("--ask-reps", type=int, default=3,
                        help="whole-command runs of each (and start-up-alone runs)")
    parser.add_argument("--skip", type=lambda s: {x for x in s.split(",") if x}, default=set(),
                        help="parts to leave out: floor,pace,ask")
    parser.add_argument("--variant", default="4.26", help="replica variant (tests/replica)")
    parser.add_argument("--timeout", type=float, default=600.0, help="per worker run (s)")
    parser.add_argument("--no-warmup", dest="warmup", action="store_false",
                        help="skip the uncounted warm-up run of each client")
    parser.add_argument("--json", help="also write every run's raw figures to this file")
    args = parser.parse_args(argv)
    if args.quick:
        args.lengths, args.reps, args.warmup = [1_000], 1, False
        args.pace_length, args.pace_reps, args.ask_words, args.ask_reps = 100, 1, 200, 1
    if args.floor_reps is None:
        args.floor_reps = 1 if args.quick else args.reps
    unknown = args.skip - {"floor", "pace", "ask"}
    if unknown:
        parser.error(f"--skip: unknown part(s) {', '.join(sorted(unknown))}")
    args.rtxrelay = str(Path(sys.executable).parent / "rtxrelay")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    runs = asyncio.run(bench(args))
    code = report(args, runs)
    print(f"\nbench took {time.monotonic() - started:.0f} s; load average now {_load()}")
    return code


if __name__ == "__main__":
    sys.exit(main())
