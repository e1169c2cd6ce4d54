"""A first-come-first-served limit on concurrent backend jobs that reports queue positions.

Chat with RTX answers one question at a time; queueing in rtxrelay (rather than piling jobs
into Gradio's queue) lets us tell each waiting user their position and drop a cancelled
request before it ever reaches the GPU.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager


class LineClosed(Exception):
    """The line was closed (the backend stopped responding): no slot will come."""

    def __init__(self, reason: BaseException) -> None:
        super().__init__(str(reason))
        self.reason = reason


class JobSlots:
    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self._limit = limit
        self._closed_by: BaseException | None = None  # why the line is closed, if it is
        self._running = 0
        self._waiting: list[object] = []
        self._changed = asyncio.Condition()

    @asynccontextmanager
    async def slot(self, on_position: Callable[[int], None] | None = None) -> AsyncIterator[None]:
        """Hold one slot for the block; while waiting, report the 1-based queue position."""
        ticket = object()
        async with self._changed:
            self._waiting.append(ticket)
            reported = 0
            try:
                while True:
                    if self._closed_by is not None:
                        raise LineClosed(self._closed_by)
                    if self._running < self._limit and self._waiting[0] is ticket:
                        break
                    position = self._waiting.index(ticket) + 1
                    if on_position is not None and position != reported:
                        reported = position
                        on_position(position)
                    await self._changed.wait()
            except BaseException:
                self._waiting.remove(ticket)
                self._changed.notify_all()
                raise
            self._waiting.remove(ticket)
            self._running += 1
            # The next waiter may now be first in line for a free slot (limit > 1).
            self._changed.notify_all()
        try:
            yield
        finally:
            async with self._changed:
                self._running -= 1
                self._changed.notify_all()

    async def close(self, reason: BaseException) -> None:
        """Turn away every job waiting for a slot now, and every new one until ``reopen``,
        with ``LineClosed(reason)``; jobs holding a slot are not touched."""
        async with self._changed:
            self._closed_by = reason
            self._changed.notify_all()

    def reopen(self) -> None:
        self._closed_by = None

    @property
    def closed(self) -> bool:
        return self._closed_by is not None

    @property
    def running(self) -> int:
        return self._running

    @property
    def waiting(self) -> int:
        return len(self._waiting)
