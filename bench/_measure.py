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
    # Voluntary context switches so far, all threads: each time a thread blocked (on a
    # socket, a sleep, a lock) and so had to be woken up again. The kernel's count of
    # wake-ups, the same for both clients whatever their threads and loops.
    vcsw: int = 0
    ivcsw: int = 0  # involuntary ones (the scheduler took the core away)


def checkpoint() -> Point:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return Point(
        wall=time.perf_counter(),
        cpu=usage.ru_utime + usage.ru_stime,
        maxrss_mib=usage.ru_maxrss / 1024.0,
        rss_mib=_current_rss_mib(),
        vcsw=usage.ru_nvcsw,
        ivcsw=usage.ru_nivcsw,
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
    answer_vcsw: float = float("nan")  # voluntary context switches while answering
    answer_ivcsw: float = float("nan")
    stream_reads: int | None = None  # reads of the answer's stream (None: not counted)
    streamed_ok: bool | None = None  # the streamed texts grew consistently (StreamCheck)
    stream_problem: str | None = None  # why not
    extra: dict[str, Any] = field(default_factory=dict)

    def answer_phase(self, start: Point, done: Point) -> None:
        """Record the answer phase's wall, CPU and context switches from two checkpoints."""
        self.answer_wall = done.wall - start.wall
        self.answer_cpu = done.cpu - start.cpu
        self.answer_vcsw = done.vcsw - start.vcsw
        self.answer_ivcsw = done.ivcsw - start.ivcsw

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


class StreamCheck:
    """Whether the streamed texts a consumer saw add up to the answer.

    Each text must start with the one before (the answer only grew), the deltas, when the
    client gives them, must join to the last text, and the final text must start with (or
    equal) the last streamed one. ``text`` is one ``startswith`` (a memcmp) per update; the
    deltas are kept (about the answer's size) and joined once, in ``finish``.
    """

    def __init__(self) -> None:
        self.updates = 0
        self.last = ""
        self.problem: str | None = None
        self._deltas: list[str] | None = None

    def text(self, text: str, delta: str | None = None) -> None:
        self.updates += 1
        if self.problem is None and not text.startswith(self.last):
            self.problem = (f"streamed update {self.updates} ({len(text)} chars) does not start "
                            f"with the previous one ({len(self.last)} chars)")
        if delta is not None:
            if self._deltas is None:
                self._deltas = []
            self._deltas.append(delta)
        self.last = text

    def finish(self, final: str | None, result: Result) -> None:
        """Set ``result.streamed_ok`` / ``stream_problem`` (and a few figures in extra)."""
        problem = self.problem
        if problem is None and self._deltas is not None and "".join(self._deltas) != self.last:
            joined = sum(len(d) for d in self._deltas)
            problem = (f"the {len(self._deltas)} deltas join to {joined} chars, not the last "
                       f"streamed text ({len(self.last)} chars)")
        if problem is None and self.updates == 0:
            problem = "no streamed update"
        if problem is None and final is None:
            problem = "no final text"
        if problem is None and final is not None and not final.startswith(self.last):
            problem = (f"the final text ({len(final)} chars) does not start with the last "
                       f"streamed one ({len(self.last)} chars)")
        result.streamed_ok = problem is None
        result.stream_problem = problem
        result.extra["last_streamed_chars"] = len(self.last)
        result.extra["last_streamed_is_final"] = final is not None and self.last == final
