"""bench/bench_client.py must keep working: one quick run, no timing assertions."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench" / "bench_client.py"
TABLE_HEADER = re.compile(
    r"^metric\s+\|\s+rtxrelay\s+\|\s+gradio_client\s+\|\s+"
    r"ratio \(gradio_client / rtxrelay\)$",
    re.MULTILINE,
)


def test_bench_quick_run_prints_the_table() -> None:
    done = subprocess.run(
        [sys.executable, str(BENCH), "--quick"],
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=110,
        check=False,
        cwd=BENCH.parent.parent,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    assert TABLE_HEADER.search(done.stdout), output[-4000:]
    assert "runs with the exact final text" in done.stdout
