"""bench/bench_discord_ack.py must keep working: one quick run, no timing assertions."""

from __future__ import annotations

import re

from tests.bench_run import run_quick

TABLE_HEADER = re.compile(
    r"^metric\s+\|\s+rtxrelay\s+\|\s+work-first\s+\|\s+ratio \(work-first / rtxrelay\)$",
    re.MULTILINE,
)


def test_discord_ack_bench_quick_run_prints_the_table() -> None:
    done = run_quick("bench_discord_ack.py")
    output = done.stdout + done.stderr
    # Exit 0 means every rtxrelay /ask was deferred (type 5) within Discord's 3 s.
    assert done.returncode == 0, output[-4000:]
    assert TABLE_HEADER.search(done.stdout), output[-4000:]
    assert re.search(r"^deferred in time \(200, type 5\)\s+\|\s+20/20\s+\|", done.stdout,
                     re.MULTILINE), output[-4000:]
    assert re.search(r"^ack latency p99 ms\s+\|", done.stdout, re.MULTILINE), output[-4000:]
    # The fake Discord runs in a child process: the bot's CPU and the fake's are reported apart.
    assert re.search(r"^bot process CPU s in that window\s+\|", done.stdout,
                     re.MULTILINE), output[-4000:]
    assert re.search(r"^fake Discord process CPU s \(not the bot's\)\s+\|\s+\d",
                     done.stdout, re.MULTILINE), output[-4000:]
