"""Stop requests from outside the process, handled like Ctrl+C: every answer in flight lands
as '⏹ Stopped.' and the turn is kept as interrupted.

SIGTERM is what systemd, Docker and ``kill`` send; on Windows, SIGBREAK is Ctrl+Break in the
console. ``signal.signal`` is used rather than ``loop.add_signal_handler``, which Windows'
event loop lacks. (SIGINT keeps Python's KeyboardInterrupt, which asyncio.run turns into
cancelling the run: the bots' shutdown path is the same.)
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Iterator
from types import FrameType

STOP_SIGNALS: tuple[signal.Signals, ...] = tuple(
    getattr(signal, name) for name in ("SIGTERM", "SIGBREAK") if hasattr(signal, name))


@contextlib.contextmanager
def stop_on_signals(stop: asyncio.Event) -> Iterator[None]:
    """Set ``stop`` when a stop signal arrives, for the block; call it in the loop's thread."""
    loop = asyncio.get_running_loop()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        loop.call_soon_threadsafe(stop.set)

    previous = {sig: signal.signal(sig, request_stop) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
