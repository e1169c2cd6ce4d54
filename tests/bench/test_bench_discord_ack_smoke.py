"""bench/bench_discord_ack.py must keep working: one quick run, no timing assertions."""

from __future__ import annotations

import re

from tests.support.bench_run import run_quick

TABLE_HEADER = re.compile(
    r"^metric\s+\|\s+rtxrelay\s+\|\s+unbounded pool\s+\|\s+work-first\s+\|"
    r"\s+unbounded / rtxrelay\s+\|\s+work-first / rtxrelay$",
    re.MULTILINE,
)


def test_discord_ack_bench_quick_run_prints_the_tables() -> None:
    done = run_quick("bench_discord_ack.py")
    output = done.stdout + done.stderr
    # Exit 0 means every rtxrelay /ask was deferred (type 5) within Discord's 3 s.
    assert done.returncode == 0, output[-4000:]
    # Two scenarios: a burst of 20 and 20 paced at 200/s, each with all three bots.
    assert re.search(r"^== 20 /ask at once, ", done.stdout, re.MULTILINE), output[-4000:]
    assert re.search(r"^== 20 /ask at 200/s, ", done.stdout, re.MULTILINE), output[-4000:]
    assert len(TABLE_HEADER.findall(done.stdout)) == 2, output[-4000:]
    deferred = re.findall(r"^deferred in time \(200, type 5\)\s+\|\s+20/20\s+\|\s+20/20\s+\|"
                          r"\s+20/20\s+\|", done.stdout, re.MULTILINE)
    assert len(deferred) == 2, output[-4000:]
    # Both ends of the latency: written by the bot, and accepted by the fake.
    assert re.search(r"^deferral sent p99 ms\s+\|\s+\d", done.stdout, re.MULTILINE)
    assert re.search(r"^deferral accepted p99 ms\s+\|\s+\d", done.stdout, re.MULTILINE)
    # Over TLS like Discord: the unbounded pool opens a connection per concurrent ask.
    assert re.search(r"^new connections \(TLS handshakes\) in it\s+\|\s+\d", done.stdout,
                     re.MULTILINE), output[-4000:]
    # The fake Discord runs in a child process: the bot's CPU and the fake's are reported apart.
    assert re.search(r"^bot process CPU s in that window\s+\|", done.stdout,
                     re.MULTILINE), output[-4000:]
    assert re.search(r"^fake Discord process CPU s \(not the bot's\)\s+\|\s+\d",
                     done.stdout, re.MULTILINE), output[-4000:]
