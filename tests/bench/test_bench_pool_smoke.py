"""bench/bench_pool.py must keep working: one quick run, no timing assertions."""

from __future__ import annotations

import re

from tests.support.bench_run import run_quick

COLUMNS = ("N=1", "N=2", "N=4", "N=2, 2 serves, 2 own lines", "N=4, 2 serves, 2 own lines")
HEADER = re.compile(r"^metric\s+\|\s+" + r"\s+\|\s+".join(map(re.escape, COLUMNS)) + r"$",
                    re.MULTILINE)
NUMBER = r"(\d+(?:\.\d+)?)"


def row(name: str, stdout: str) -> list[str]:
    """The cells of the table row ``name`` (the first one printed)."""
    found = re.search(rf"^{re.escape(name)}\s+\|(.*)$", stdout, re.MULTILINE)
    assert found, (name, stdout[-4000:])
    return [cell.strip() for cell in found.group(1).split("|")]


def test_pool_bench_quick_run_prints_every_row() -> None:
    done = run_quick("bench_pool.py", timeout=120)
    output = done.stdout + done.stderr
    # Exit 0: every answer had its exact text, nothing but the killed backend's answer failed,
    # every serve process stopped cleanly on SIGTERM.
    assert done.returncode == 0, output[-4000:]
    out = done.stdout
    assert HEADER.search(out), output[-4000:]
    assert row("answers with the exact text", out) == ["4/4"] * len(COLUMNS), out[-4000:]
    assert row("requests that failed or hung", out) == ["0"] * len(COLUMNS), out[-4000:]
    for cell in row("efficiency % (ideal / wall)", out):
        assert re.fullmatch(NUMBER, cell), (cell, out[-4000:])
        assert 0 < float(cell) <= 110, (cell, out[-4000:])
    for cell in row("wall s (first request -> last answer's end)", out):
        assert re.fullmatch(NUMBER, cell) and float(cell) > 0, (cell, out[-4000:])
    # The shared line between processes is announced, not run.
    assert "comes with the PostgreSQL line" in out, out[-4000:]
    # The kill row: the killed backend's answer failed with an error, none of the waiting
    # questions failed, and they all streamed on the survivor some time after the kill.
    assert re.search(r"^metric\s+\|\s+run 1\s+\|\s+median$", out, re.MULTILINE), out[-4000:]
    assert row("  of them failed with an error (the killed backend's)", out)[0] == "1"
    assert row("  of them hung (no end)", out)[0] == "0"
    assert row("  of them failed or hung", out)[0] == "0"
    streams = row("s after the kill: every waiting question streams", out)[0]
    assert re.fullmatch(NUMBER, streams) and float(streams) > 0, out[-4000:]
