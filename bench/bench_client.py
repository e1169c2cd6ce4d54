"""rtxrelay's Gradio client vs the official ``gradio_client``, same answer, same replica.

    .venv/bin/python bench/bench_client.py            # full run (a few minutes)
    .venv/bin/python bench/bench_client.py --quick    # smoke run: one short answer, once

Starts one Chat with RTX replica (tests/replica, real Gradio 4.26 as in ChatRTX 0.3) with a tiny
per-token delay, then for each answer length streams the same ``[len=N]`` answer R times with
each client, alternating which goes first. Every run is a fresh worker process, so its CPU
time and peak RSS are its own: ours in this venv, ``gradio_client`` in the replica's venv.
Both final texts must equal ``fake_model.answer_text`` exactly. See bench/README.md.
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
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
if str(REPO_DIR) not in sys.path:  # the replica helpers live in tests/replica
    sys.path.insert(0, str(REPO_DIR))

import aiohttp  # noqa: E402

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


@dataclass
class Run:
    client: str
    length: int
    rep: int
    data: dict[str, Any] = field(default_factory=dict)
    ok: bool = False
    error: str | None = None
    output_tail: str = ""

    def get(self, key: str) -> float:
        value = self.data.get(key)
        return float(value) if isinstance(value, int | float) else math.nan


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
    cmd: list[str], run: Run, workdir: Path, timeout: float
) -> Run:
    out = workdir / f"{run.client}-{run.length}-{run.rep}.json"
    env = _worker_env()
    env[SPAWN_ENV] = repr(time.time())
    proc = await asyncio.create_subprocess_exec(
        *cmd[:4], str(out), *cmd[4:],
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
    expected = fake_model.answer_text(QUESTION.format(n=run.length), [])
    got = run.data.get("final_text")
    if got != expected:
        run.error = _mismatch(got, expected)
        return run
    run.ok = True
    return run


def _mismatch(got: object, expected: str) -> str:
    if not isinstance(got, str):
        return f"final text is {type(got).__name__}, expected {len(expected)} chars"
    at = next((i for i, (a, b) in enumerate(zip(got, expected, strict=False)) if a != b),
              min(len(got), len(expected)))
    return (f"final text differs from fake_model.answer_text: {len(got)} chars vs "
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


# -- the report -------------------------------------------------------------------------------

Metric = tuple[str, Callable[[Run, int], float]]


def _convert_cpu(run: Run) -> float:
    """rtxrelay's per-update HTML -> Markdown conversion; gradio_client has none (nan)."""
    value = run.data.get("extra", {}).get("convert_cpu")
    return float(value) if isinstance(value, int | float) else math.nan


def _protocol_cpu(run: Run) -> float:
    """Answer CPU without the HTML conversion: the like-for-like Gradio protocol cost."""
    convert = _convert_cpu(run)
    return run.get("answer_cpu") - (0.0 if math.isnan(convert) else convert)


def _cpu_per_1k(run: Run, tokens: int) -> float:
    return (run.get("connect_cpu") + run.get("answer_cpu")) / tokens * 1000


METRICS: list[Metric] = [
    ("streamed updates received", lambda r, t: r.get("updates")),
    ("SSE process_generating handled", lambda r, t: r.data.get("messages", {}).get(
        "process_generating", math.nan)),
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
    ("answer CPU s without HTML->Markdown", lambda r, t: _protocol_cpu(r)),
    ("  the same per 1k tokens", lambda r, t: _protocol_cpu(r) / t * 1000),
    ("peak RSS MiB", lambda r, t: r.get("peak_rss_mib")),
    ("peak RSS - RSS after imports MiB",
     lambda r, t: r.get("peak_rss_mib") - r.get("rss_after_import_mib")),
]






def median(runs: list[Run], metric: Callable[[Run, int], float], tokens: int) -> float:
    values = [v for v in (metric(r, tokens) for r in runs) if not math.isnan(v)]
    return statistics.median(values) if values else math.nan




# (title, metric) of the by-length overview printed after the per-length tables.
OVERVIEW: list[Metric] = [
    ("CPU s / 1k tokens, 1st request -> final", _cpu_per_1k),
    ("CPU s / 1k tokens, answer without HTML->Markdown",
     lambda r, t: _protocol_cpu(r) / t * 1000),
    ("peak RSS MiB", lambda r, t: r.get("peak_rss_mib")),
]


def report_length(length: int, runs: list[Run], reps: int) -> list[tuple[float, float]]:
    """Print one length's table; return its (ours, theirs) medians for OVERVIEW."""
    expected = fake_model.answer_text(QUESTION.format(n=length), [])
    tokens = len(fake_model.tokens(expected))
    ok = {c: [r for r in runs if r.client == c and r.ok] for c in CLIENTS}
    print(f"\n== answer of {len(expected):,} chars, {tokens:,} tokens streamed "
          f"(median of {reps} run(s) per client) ==")
    rows: list[tuple[str, str, str, str]] = [HEADER]
    rows.append(("runs with the exact final text", f"{len(ok[OURS])}/{reps}",
                 f"{len(ok[THEIRS])}/{reps}", ""))
    for name, metric in METRICS:
        ours, theirs = median(ok[OURS], metric, tokens), median(ok[THEIRS], metric, tokens)
        rows.append((name, fmt(ours), fmt(theirs), ratio(theirs, ours)))
    print_table(rows)
    return [(median(ok[OURS], metric, tokens), median(ok[THEIRS], metric, tokens))
            for _, metric in OVERVIEW]


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
        done = [r for r in runs if r.client == client and r.ok]
        if not done:
            print(f"{client}: no successful run")
            continue
        last = max(done, key=lambda r: (r.length, r.rep))
        d = last.data
        extra = {k: v for k, v in d.get("extra", {}).items() if k != "traceback"}
        print(f"{client} (len={last.length:,}): {d.get('updates')} updates, "
              f"SSE messages {d.get('messages')}, {extra}")
        print(f"  wire: {wire_summary(d.get('wire', []))}")


def report_failures(runs: list[Run]) -> None:
    failed = [r for r in runs if not r.ok]
    if not failed:
        return
    print(f"\n== {len(failed)} FAILED run(s) ==")
    for r in failed:
        print(f"{r.client} len={r.length:,} rep {r.rep + 1}: {r.error}")
        trace = r.data.get("extra", {}).get("traceback") if r.data else None
        tail = (trace or r.output_tail).strip()
        if tail:
            print("  " + "\n  ".join(tail.splitlines()[-12:]))


# -- main -------------------------------------------------------------------------------------


async def bench(args: argparse.Namespace) -> list[Run]:
    gradio_python = await asyncio.to_thread(ensure_env, args.variant)
    commands = {
        OURS: [sys.executable, str(BENCH_DIR / "_rtxrelay_worker.py")],
        THEIRS: [str(gradio_python), str(BENCH_DIR / "_gradio_client_worker.py")],
    }
    runs: list[Run] = []
    async with Replica(args.variant, token_delay=args.token_delay) as rtx:
        assert rtx.url is not None
        fn_index = await find_fn_index(rtx.url)
        print(f"replica: gradio {rtx.variant.gradio} ({rtx.variant.protocol}), "
              f"token delay {args.token_delay:g} s, chat fn_index {fn_index}; "
              f"{os.cpu_count()} CPUs, {platform.python_implementation()} "
              f"{platform.python_version()}, {platform.system()} {platform.release()}",
              flush=True)

        def command(client: str, length: int) -> list[str]:
            cmd = [*commands[client], rtx.url or "", QUESTION.format(n=length)]
            return [*cmd, str(fn_index)] if client == THEIRS else cmd

        with tempfile.TemporaryDirectory(prefix="rtxrelay-bench-") as tmp:
            workdir = Path(tmp)
            if args.warmup:  # fill the OS file cache and warm the server; not counted
                for client in CLIENTS:
                    await run_worker(command(client, 200), Run(client, 200, -1), workdir,
                                     args.timeout)
            for li, length in enumerate(args.lengths):
                for rep in range(args.reps):
                    order = CLIENTS if (li + rep) % 2 == 0 else CLIENTS[::-1]
                    for client in order:
                        run = await run_worker(command(client, length), Run(client, length, rep),
                                               workdir, args.timeout)
                        runs.append(run)
                        status = "ok" if run.ok else f"FAILED: {run.error}"
                        print(f"  len={length:>6,} rep {rep + 1}/{args.reps} {client:<13} "
                              f"answer {fmt(run.get('answer_wall')):>6} s wall, "
                              f"{fmt(run.get('answer_cpu')):>6} s CPU  {status}", flush=True)
    return runs


def report(args: argparse.Namespace, runs: list[Run]) -> int:
    overview: list[list[tuple[str, str, str, str]]] = [
        [("answer chars / tokens", OURS, THEIRS, "ratio")] for _ in OVERVIEW
    ]
    for length in args.lengths:
        medians = report_length(length, [r for r in runs if r.length == length], args.reps)
        text = fake_model.answer_text(QUESTION.format(n=length), [])
        label = f"{len(text):,} / {len(fake_model.tokens(text)):,}"
        for rows, (ours, theirs) in zip(overview, medians, strict=True):
            rows.append((label, fmt(ours), fmt(theirs), ratio(theirs, ours)))
    if len(args.lengths) > 1:
        for (title, _), rows in zip(OVERVIEW, overview, strict=True):
            print(f"\n== by answer length: {title} (medians) ==")
            print_table(rows)
    report_details(runs)
    report_failures(runs)
    if args.json:
        dump = [{**r.__dict__, "data": {k: v for k, v in r.data.items() if k != "final_text"}}
                for r in runs]
        Path(args.json).write_text(json.dumps(dump, indent=1), encoding="utf-8")
    return 0 if all(r.ok for r in runs) else 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: one 2,000-char answer, one run per client, no warm-up")
    parser.add_argument("--lengths", type=lambda s: [int(x) for x in s.split(",")],
                        default=list(DEFAULT_LENGTHS), help="answer lengths in chars, comma list")
    parser.add_argument("--reps", type=int, default=3, help="runs per client and length")
    parser.add_argument("--token-delay", type=float, default=0.0005,
                        help="the replica's sleep per streamed token (s)")
    parser.add_argument("--variant", default="4.26", help="replica variant (tests/replica)")
    parser.add_argument("--timeout", type=float, default=600.0, help="per worker run (s)")
    parser.add_argument("--no-warmup", dest="warmup", action="store_false",
                        help="skip the uncounted warm-up run of each client")
    parser.add_argument("--json", help="also write every run's raw figures to this file")
    args = parser.parse_args(argv)
    if args.quick:
        args.lengths, args.reps, args.warmup = [2_000], 1, False
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    runs = asyncio.run(bench(args))
    code = report(args, runs)
    print(f"\nbench took {time.monotonic() - started:.0f} s")
    return code


if __name__ == "__main__":
    sys.exit(main())
