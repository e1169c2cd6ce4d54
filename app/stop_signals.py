"""Stop requests from outside the process, handled like Ctrl+C: every answer in flight lands
as '⏹ Stopped.' and the turn is kept as interrupted.

SIGTERM is what systemd, Docker and ``kill`` send; on Windows, SIGBREAK is Ctrl+Break in the
console. ``signal.signal`` is used rather than ``loop.add_signal_handler``, which Windows'
event loop lacks. (SIGINT keeps Python's KeyboardInterrupt, which asyncio.run turns into
cancelling the run: the bots' shutdown path is the same.)

Windows also ends a console program when its window is closed, the user logs off or the PC
shuts down. Those arrive as console control events that the signal module never sees, and
Windows terminates the process as soon as the handler returns (5 s at most): the handler
here asks for the stop and holds Windows off until the answers have landed.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from types import FrameType

STOP_SIGNALS: tuple[signal.Signals, ...] = tuple(
    getattr(signal, name) for name in ("SIGTERM", "SIGBREAK") if hasattr(signal, name))
CONSOLE_GRACE = 4.5  # seconds Windows waits for a console handler before it ends the process


@contextlib.contextmanager
def stop_on_signals(stop: asyncio.Event) -> Iterator[None]:
    """Set ``stop`` when a stop signal arrives, for the block; call it in the loop's thread."""
    loop = asyncio.get_running_loop()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        loop.call_soon_threadsafe(stop.set)

    previous = {sig: signal.signal(sig, request_stop) for sig in STOP_SIGNALS}
    finished = threading.Event()
    console = _watch_console_close(lambda: loop.call_soon_threadsafe(stop.set), finished)
    try:
        yield
    finally:
        finished.set()
        console()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


if sys.platform == "win32":
    import ctypes
    from ctypes import wintypes

    _CLOSE_EVENTS = {2, 5, 6}  # CTRL_CLOSE_EVENT, CTRL_LOGOFF_EVENT, CTRL_SHUTDOWN_EVENT

    def _watch_console_close(request_stop: Callable[[], object],
                             finished: threading.Event) -> Callable[[], object]:
        """A console control handler for close, log-off and shut-down; returns what removes
        it."""

        @ctypes.WINFUNCTYPE(wintypes.BOOL, wintypes.DWORD)
        def handler(event: int) -> bool:
            if event not in _CLOSE_EVENTS:
                return False  # Ctrl+C and Ctrl+Break: the signal handlers above
            request_stop()
            finished.wait(CONSOLE_GRACE)  # returning lets Windows end the process
            return True

        kernel32 = ctypes.windll.kernel32
        kernel32.SetConsoleCtrlHandler(handler, True)
        return lambda: kernel32.SetConsoleCtrlHandler(handler, False)

else:

    def _watch_console_close(request_stop: Callable[[], object],
                             finished: threading.Event) -> Callable[[], object]:
        """Elsewhere closing a terminal is SIGHUP, a shutdown SIGTERM: nothing to add."""
        return lambda: None
