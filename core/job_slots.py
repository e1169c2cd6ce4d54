"""A first-come-first-served limit on concurrent backend jobs that reports queue positions.

Chat with RTX answers one question at a time; queueing in rtxrelay (rather than piling jobs
into Gradio's queue) lets us tell each waiting user their position and drop a cancelled
request before it ever reaches the GPU.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager


class JobSlots:
    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self._limit = limit
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
                while not (self._running < self._limit and self._waiting[0] is ticket):
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
