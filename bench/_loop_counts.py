"""Event-loop wake-ups and socket reads, counted from inside an asyncio worker (project venv).

Shared by ``_rtxrelay_worker.py`` and ``_floor_worker.py`` so both count the same way.

Wake-ups: asyncio's ``_run_once`` calls ``loop._selector.select(timeout)`` once per loop
iteration. ``timeout`` is 0 when callbacks are already ready (a poll: the thread does not
sleep), otherwise ``None`` or the time to the nearest timer: the thread sleeps in
``epoll_wait`` until a socket is ready or the timer is due. Every such *blocking* select that
returned is one wake-up; it returned either with I/O events (a socket became readable) or
with none (a timer fell due: a ``PacedReads`` window ending, a deadline). The wrapper is one
Python call per loop iteration, next to an ``epoll_wait`` system call: noise. It replaces the
``select`` attribute of this loop's selector instance only (CPython's ``selectors.EpollSelector``
is a plain Python object), so nothing else is touched.

Socket reads: aiohttp's ``ResponseHandler.data_received`` is what the transport calls with
the bytes of each ``recv`` of a client connection (every request of the session). aiohttp
(3.14) also calls it with ``b""`` from ``resume_reading``, which its ``StreamReader`` calls for
every HTTP chunk a read takes out of its buffer (Gradio sends one chunk per SSE message):
those are not reads and are not counted.

The process-wide, kernel-side count of the same thing is ``ru_nvcsw`` (voluntary context
switches, all threads), which ``_measure.checkpoint`` records for both clients.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import client_proto


@dataclass
class LoopCounts:
    selects: int = 0  # loop iterations
    blocking: int = 0  # ... that could sleep (timeout None or > 0): wake-ups
    io_wakeups: int = 0  # ... of them returned with I/O events
    recvs: int = 0  # aiohttp client socket reads (data_received calls)

    def reset(self) -> None:
        self.selects = self.blocking = self.io_wakeups = self.recvs = 0

    @property
    def timer_wakeups(self) -> int:
        return self.blocking - self.io_wakeups

    def as_dict(self) -> dict[str, int]:
        return {"loop_selects": self.selects, "wakeups": self.blocking,
                "io_wakeups": self.io_wakeups, "timer_wakeups": self.timer_wakeups,
                "socket_recvs": self.recvs}


def count_loop(loop: asyncio.AbstractEventLoop, counts: LoopCounts) -> None:
    """Count the selects of ``loop`` (a selector event loop) into ``counts``."""
    selector: Any = getattr(loop, "_selector", None)
    if selector is None:
        raise RuntimeError(f"{type(loop).__name__} has no selector to count wake-ups with")
    select: Callable[[float | None], list[Any]] = selector.select

    def counting(timeout: float | None = None) -> list[Any]:
        events = select(timeout)
        counts.selects += 1
        if timeout is None or timeout > 0:
            counts.blocking += 1
            if events:
                counts.io_wakeups += 1
        return events

    selector.select = counting


def count_socket_reads(counts: LoopCounts) -> None:
    """Count every ``data_received`` of aiohttp's client connections into ``counts``."""
    received = client_proto.ResponseHandler.data_received

    def counting(self: client_proto.ResponseHandler, data: bytes) -> None:
        if data:  # aiohttp calls it with b"" to resume its parser: not a read
            counts.recvs += 1
        received(self, data)

    client_proto.ResponseHandler.data_received = counting  # type: ignore[method-assign]
