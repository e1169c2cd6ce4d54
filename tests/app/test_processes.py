"""Process identities for turn ownership: alive while the process runs, never reused."""

from __future__ import annotations

import subprocess
import sys

from rtxrelay.app import processes


def test_this_process_is_alive_and_a_finished_one_is_not() -> None:
    assert processes.is_alive(processes.current())
    child = subprocess.Popen([sys.executable, "-c", "import os, psutil; "
                              "print(f'{os.getpid()}@{psutil.Process().create_time():.3f}')"],
                             stdout=subprocess.PIPE, text=True)
    out, _ = child.communicate(timeout=60)
    assert out.strip().partition("@")[0] == str(child.pid)
    assert not processes.is_alive(out.strip())  # it has exited
    # Same pid, another start time: a reused pid is another process.
    pid = processes.current().partition("@")[0]
    assert not processes.is_alive(f"{pid}@1.000")
    for malformed in ("", "abc", "12", "@", "-1@5"):
        assert not processes.is_alive(malformed)
