"""bench/bench_client.py must keep working: one quick run, no timing assertions."""

from __future__ import annotations

import re

from tests.support.bench_run import run_quick

TABLE_HEADER = re.compile(
    r"^metric\s+\|\s+rtxrelay\s+\|\s+gradio_client\s+\|\s+"
    r"ratio \(gradio_client / rtxrelay\)$",
    re.MULTILINE,
)


def test_bench_quick_run_prints_the_table() -> None:
    done = run_quick("bench_client.py")
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    assert TABLE_HEADER.search(done.stdout), output[-4000:]
    assert "runs with the exact final text" in done.stdout
