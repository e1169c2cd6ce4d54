"""bench/bench_serve.py must keep working: one quick run, no timing assertions."""

from __future__ import annotations

import re

from tests.support.bench_run import run_quick

OVERHEAD_HEADER = re.compile(
    r"^metric\s+\|\s+fake directly\s+\|\s+through serve\s+\|\s+serve / direct$", re.MULTILINE)
# The client got the scripted answer byte for byte, directly and through `rtxrelay serve`.
EXACT_TEXT = re.compile(
    r"^runs with the exact final text\s+\|\s+1/1\s+\|\s+1/1\s+\|", re.MULTILINE)
CAPACITY_HEADER = re.compile(r"^metric\s+\|\s+1 client\s+\|\s+4 clients$", re.MULTILINE)
# Every one of the concurrent clients got its exact text through serve.
EXACT_CLIENTS = re.compile(r"^clients with the exact text\s+\|\s+1/1\s+\|\s+4/4$", re.MULTILINE)


def test_serve_bench_quick_run_prints_the_tables() -> None:
    done = run_quick("bench_serve.py")
    output = done.stdout + done.stderr
    # Exit 0: every run got its exact text and serve stopped cleanly on SIGTERM.
    assert done.returncode == 0, output[-4000:]
    for pattern in (OVERHEAD_HEADER, EXACT_TEXT, CAPACITY_HEADER, EXACT_CLIENTS):
        assert pattern.search(done.stdout), (pattern.pattern, output[-4000:])
    assert re.search(r"^serve process CPU s / 1k tokens\s+\|\s+-\s+\|\s+\d", done.stdout,
                     re.MULTILINE), output[-4000:]
    assert re.search(r"^serve peak RSS MiB \(sampled\)\s+\|\s+\d", done.stdout,
                     re.MULTILINE), output[-4000:]
