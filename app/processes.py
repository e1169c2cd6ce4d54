"""Which process wrote a turn, and whether it still runs (psutil: Windows, Linux, macOS).

A process is named by its pid and its start time: pids are reused, a (pid, start time) pair
is not. Turns carry this owner so that a second process opening the same database (``ask``
while ``run`` answers, a second ``run``) never marks the first one's answers interrupted.
"""

from __future__ import annotations

import os

import psutil


def current() -> str:
    return _name(os.getpid(), psutil.Process().create_time())


def is_alive(owner: str) -> bool:
    pid_text, _, started = owner.partition("@")
    try:
        process = psutil.Process(int(pid_text))
        return _name(process.pid, process.create_time()) == owner and bool(started)
    except (ValueError, psutil.Error):  # malformed, gone, or not ours to inspect
        return False


def _name(pid: int, created: float) -> str:
    return f"{pid}@{created:.3f}"
