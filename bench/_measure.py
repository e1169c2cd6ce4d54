"""Shared by both bench workers (stdlib only: it also runs in the replica's Gradio venv).

A worker takes ``checkpoint()``s at fixed points and writes one JSON result file. Every
figure is the worker measuring itself: CPU is ``getrusage(RUSAGE_SELF)`` user+sys (all
threads of the process), peak RSS is ``ru_maxrss``, so nothing the parent or the replica
does is counted. Linux only (ru_maxrss in KiB, /proc for the current RSS).
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from typing import Any

# The parent stamps the wall clock just before it spawns the worker, so the worker can tell
# how long interpreter start-up plus imports took.
SPAWN_ENV = "BENCH_SPAWN_TIME"


@dataclass(frozen=True)
class Point:
    wall: float  # time.perf_counter()
    cpu: float  # user + sys seconds of this process so far
    maxrss_mib: float  # peak RSS so far
    rss_mib: float  # RSS right now


def checkpoint() -> Point:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return Point(
        wall=time.perf_counter(),
        cpu=usage.ru_utime + usage.ru_stime,
        maxrss_mib=usage.ru_maxrss / 1024.0,
        rss_mib=_current_rss_mib(),
    )


def _current_rss_mib() -> float:
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            pages = int(statm.read().split()[1])
    except (OSError, ValueError, IndexError):
        return float("nan")
    return pages * os.sysconf("SC_PAGE_SIZE") / (1024.0 * 1024.0)


def startup_wall() -> float:
    """Seconds from the parent's spawn stamp to now (interpreter start + imports)."""
    spawned = os.environ.get(SPAWN_ENV)
    return time.time() - float(spawned) if spawned else float("nan")


@dataclass
class Result:
    client: str
    ok: bool = False
    error: str | None = None
    final_text: str | None = None
    updates: int = 0  # streamed updates the consumer saw (our TextSoFar / a gradio Job output)
    messages: dict[str, int] = field(default_factory=dict)  # SSE messages handled, by "msg"
    wire: list[str] = field(default_factory=list)  # HTTP requests made, in order
    startup_wall: float = float("nan")
    startup_cpu: float = float("nan")
    rss_after_import_mib: float = float("nan")
    connect_wall: float = float("nan")
    connect_cpu: float = float("nan")
    first_text_wall: float = float("nan")  # submit -> first text seen
    answer_wall: float = float("nan")  # submit -> final text
    answer_cpu: float = float("nan")
    peak_rss_mib: float = float("nan")
    extra: dict[str, Any] = field(default_factory=dict)

    def fail(self, exc: BaseException) -> None:
        self.ok = False
        self.error = f"{type(exc).__name__}: {exc}"
        self.extra["traceback"] = traceback.format_exc()[-4000:]

    def write(self, path: str) -> None:
        self.peak_rss_mib = checkpoint().maxrss_mib
        with open(path, "w", encoding="utf-8") as out:
            json.dump(asdict(self), out)
        sys.stdout.flush()
        sys.stderr.flush()
