"""bench/bench_streaming.py must keep working: one quick run per platform, no timing
assertions."""

from __future__ import annotations

import re

from tests.support.bench_run import run_quick

TABLE_HEADER = re.compile(
    r"^metric\s+\|\s+rtxrelay\s+\|\s+naive\s+\|\s+ratio \(naive / rtxrelay\)"
    r"\s+\|\s+rtxrelay-drafts$",
    re.MULTILINE,
)
# Discord has no drafts, so no drafts column.
DISCORD_TABLE_HEADER = re.compile(
    r"^metric\s+\|\s+rtxrelay\s+\|\s+naive\s+\|\s+ratio \(naive / rtxrelay\)$",
    re.MULTILINE,
)
ALL_DELIVERED = re.compile(
    r"^final texts delivered \(goal: all\)\s+\|\s+10/10\s+\|\s+10/10\s+\|", re.MULTILINE
)


def test_streaming_bench_quick_run_prints_the_table() -> None:
    done = run_quick("bench_streaming.py")
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    assert TABLE_HEADER.search(done.stdout), output[-4000:]
    assert re.search(r"^final texts delivered \(goal: all\)\s+\|\s+10/10\s+\|", done.stdout,
                     re.MULTILINE), output[-4000:]


def test_streaming_bench_quick_run_on_discord() -> None:
    done = run_quick("bench_streaming.py", "--platform", "discord")
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    assert DISCORD_TABLE_HEADER.search(done.stdout), output[-4000:]
    assert ALL_DELIVERED.search(done.stdout), output[-4000:]
