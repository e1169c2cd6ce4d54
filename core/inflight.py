"""The answers a bot is streaming, so that shutting down stops every one of them.

``ConversationService.cancel`` only reaches answers whose job has started; an answer still
sending its placeholder, or queued behind a burst of others, would run on after shutdown. Each
reply gets its own stop event here (passed to ``ConversationService.ask``), so ``stop_all``
reaches them whatever stage they are in, and a reply that begins during shutdown starts
stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator


class InFlight:
    def __init__(self) -> None:
        self._stops: dict[asyncio.Task[object], asyncio.Event] = {}
        self._closing = False

    def __len__(self) -> int:
        return len(self._stops)

    @contextlib.contextmanager
    def track(self) -> Iterator[asyncio.Event]:
        """Register the current task's reply; yields the event that stops it."""
        task = asyncio.current_task()
        assert task is not None, "track() runs inside a task"
        stop = asyncio.Event()
        if self._closing:
            stop.set()
        self._stops[task] = stop
        try:
            yield stop
        finally:
            self._stops.pop(task, None)

    async def stop_all(self, timeout: float = 30.0) -> None:
        """Stop every reply and wait (bounded) until each has landed its final text."""
        self._closing = True
        for stop in self._stops.values():
            stop.set()
        if self._stops:
            await asyncio.wait(list(self._stops), timeout=timeout)
