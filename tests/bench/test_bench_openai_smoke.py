"""bench/bench_openai.py must keep working: one quick run, no timing assertions."""

from __future__ import annotations

import re

from tests.support.bench_run import run_quick

TABLE_HEADER = re.compile(
    r"^metric\s+\|\s+rtxrelay\s+\|\s+openai SDK\s+\|\s+raw aiohttp\s+\|"
    r"\s+openai SDK / rtxrelay\s+\|\s+rtxrelay / raw aiohttp$",
    re.MULTILINE,
)
# Every client, one run each, returned the scripted answer byte for byte.
EXACT_TEXT = re.compile(
    r"^runs with the exact final text\s+\|\s+1/1\s+\|\s+1/1\s+\|\s+1/1\s+\|", re.MULTILINE)


def test_openai_bench_quick_run_prints_the_table() -> None:
    done = run_quick("bench_openai.py")
    output = done.stdout + done.stderr
    # Exit 0 means every run of every client got the exact text (and the usage) scripted.
    assert done.returncode == 0, output[-4000:]
    assert TABLE_HEADER.search(done.stdout), output[-4000:]
    assert EXACT_TEXT.search(done.stdout), output[-4000:]
    assert re.search(r"^CPU s / 1k tokens \(answer\)\s+\|\s+\d", done.stdout,
                     re.MULTILINE), output[-4000:]
