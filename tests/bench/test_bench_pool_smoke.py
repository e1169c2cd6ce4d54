"""bench/bench_pool.py must keep working: one quick run, no timing assertions.

The quick run includes the two serve processes sharing one line in PostgreSQL (a throwaway
server, tests/support/postgres.py's): without PostgreSQL's server programs the bench exits 1
and says how to install them, and this test fails (it does not skip). The kill-shared row is
not in --quick: it waits 10-15 s for the survivor to find the killed process gone; what it
reads in the survivor's log is checked here against storage/postgres_line.py."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys

from tests.support.bench_run import REPO, run_quick

COLUMNS = ("N=1", "N=2", "N=4", "N=1, 2 processes, 2 own lines", "N=1, 2 processes, one line",
           "N=2, 2 processes, 2 own lines", "N=2, 2 processes, one line",
           "N=4, 2 processes, 2 own lines", "N=4, 2 processes, one line")
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
    # Exit 0: PostgreSQL started, every answer had its exact text, nothing but the killed
    # backend's answer failed, every serve process stopped cleanly on SIGTERM.
    assert done.returncode == 0, output[-4000:]
    out = done.stdout
    assert "PostgreSQL for the shared line:" in out, output[-4000:]
    assert HEADER.search(out), output[-4000:]
    assert row("questions per serve process", out) == ["4"] * 3 + ["2 + 2"] * 6, out[-4000:]
    assert row("answers with the exact text", out) == ["4/4"] * len(COLUMNS), out[-4000:]
    assert row("requests that failed or hung", out) == ["0"] * len(COLUMNS), out[-4000:]
    for cell in row("efficiency % (ideal / wall)", out):
        assert re.fullmatch(NUMBER, cell), (cell, out[-4000:])
        assert 0 < float(cell) <= 110, (cell, out[-4000:])
    for cell in row("wall s (first request -> last answer's end)", out):
        assert re.fullmatch(NUMBER, cell) and float(cell) > 0, (cell, out[-4000:])
    # One line, in one process or shared by two, never sends a request to a busy backend.
    waiting = dict(zip(COLUMNS, row("most requests waiting inside one backend", out),
                       strict=True))
    for column in ("N=1", "N=2", "N=4", "N=1, 2 processes, one line",
                   "N=2, 2 processes, one line",
                   "N=4, 2 processes, one line"):
        assert waiting[column] == "0", (column, out[-4000:])
    # The kill row: the killed backend's answer failed with an error, none of the waiting
    # questions failed, and they all streamed on the survivor some time after the kill.
    assert re.search(r"^metric\s+\|\s+run 1\s+\|\s+median$", out, re.MULTILINE), out[-4000:]
    assert row("  of them failed with an error (the killed backend's)", out)[0] == "1"
    assert row("  of them hung (no end)", out)[0] == "0"
    assert row("  of them failed or hung", out)[0] == "0"
    streams = row("s after the kill: every waiting question streams", out)[0]
    assert re.fullmatch(NUMBER, streams) and float(streams) > 0, out[-4000:]
    assert "a serve process killed mid-answer, the line shared" not in out, out[-4000:]


OWNER = "vm/4242@1796179080.080"


def gone_messages() -> dict[str, str]:
    """The line storage/postgres_line.py logs when it finds a process gone, by reason (read
    from its source: the log call and the two reasons of its conditional)."""
    tree = ast.parse((REPO / "storage" / "postgres_line.py").read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and node.args and \
                isinstance(node.args[0], ast.Constant) and \
                str(node.args[0].value).startswith("rtxrelay process %s is gone"):
            why = node.args[2]
            assert isinstance(why, ast.IfExp), ast.dump(why)
            return {str(reason.value): str(node.args[0].value) % (OWNER, reason.value)
                    for reason in (why.body, why.orelse) if isinstance(reason, ast.Constant)}
    raise AssertionError("no 'rtxrelay process %s is gone' log call in storage/postgres_line.py")


def test_pool_bench_kill_shared_reads_the_gone_line() -> None:
    """The kill-shared row times the survivor's "process … is gone (why)" line and reports
    why: its regex must match both reasons as the storage logs them."""
    messages = gone_messages()
    assert len(messages) == 2, messages
    lines = [f"2026-12-02 02:38:20,588 WARNING rtxrelay.storage.postgres_line: {message}"
             for message in messages.values()]
    code = ("import json, sys; sys.path.insert(0, 'bench'); import bench_pool as b; "
            "print(json.dumps([[m and m.groups(), bool(b.LOG_TIME.match(line))] "
            "for line in sys.argv[1:] for m in [b.SWEPT.search(line)]]))")
    done = subprocess.run([sys.executable, "-c", code, *lines], capture_output=True, text=True,
                          encoding="utf-8", timeout=60, check=False, cwd=REPO)
    assert done.returncode == 0, done.stderr[-4000:]
    found = json.loads(done.stdout)
    assert found == [[[OWNER, reason], True] for reason in messages], (lines, found)
