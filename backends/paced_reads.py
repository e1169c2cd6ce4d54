"""Read a streamed answer on the consumer's clock: let the socket fill, then take it at once.

A model streams a token every few milliseconds, and reading each one as it lands costs an
event-loop wake-up and a socket read per token: the largest share of a streaming client's CPU
once parsing is cheap. Sleeping between reads does not help (aiohttp keeps reading the socket
into its buffer, a wake-up per packet). Pausing the transport does: the kernel's socket buffer
holds what arrives meanwhile, and one read after the window takes all of it.

The window is the consumer's to choose (how often it can use new text: a bot's edit budget, a
terminal's or an API's short window). Holding starts only after a read that carried text, so
the first text is never delayed; the last is late by at most one window.

A hold is not free: the end of its window wakes the loop, and when nothing came meanwhile the
data wakes it a second time. So a hold is only taken while the window can gather tokens: the
stream's average pace since its text began must fit one and a half events in a window. At Chat
with RTX's real pace (~20 tokens a second) a 50 ms window would gather one: reads then simply
follow the tokens, a wake-up each; a 100 ms window gathers two, half the wake-ups.

aiohttp (3.14) resumes the transport whenever its reader takes a buffered chunk; a hold is
only taken after a read has emptied that buffer, so nothing resumes it early.

Each read also takes at most ``READ_SIZE`` (64 KiB): asyncio's selector transports ask ``recv``
for up to 256 KiB in a new bytes object, then shrink it to what came. That much memory, taken
and given back by the C library at every read, is paid in fresh pages: the bench worker took
about 5.5 page faults a read more than with 64 KiB (perf stat), and a small process strace
showed an ``mmap``, ``mremap`` and ``munmap`` around every ``recv``. At Chat with RTX's pace
that was ~9 % of a read's CPU (bench/README.md).
"""

from __future__ import annotations

import asyncio

import aiohttp

# The most one read takes from the socket (see above). Windows' proactor loop reads into a
# buffer of its own and has no such attribute: nothing to change there.
READ_SIZE = 64 * 1024
# A read this large suggests a backlog (a slow consumer, or sse_v1's whole values): take the
# rest at once instead of waiting a window per buffer.
BACKLOG_READ = READ_SIZE
# Events a window must be expected to gather for a hold to save wake-ups (see above).
GATHER = 1.5


class PacedReads:
    """Pauses one response's socket for ``window`` seconds after a read, when asked."""

    def __init__(self, response: aiohttp.ClientResponse, window: float) -> None:
        connection = response.connection
        self._transport = connection.transport if connection is not None else None
        if self._transport is not None and getattr(self._transport, "max_size", 0) > READ_SIZE:
            # asyncio's selector transport looks max_size up at every read: ours wins.
            self._transport.max_size = READ_SIZE  # type: ignore[attr-defined]
        self._window = window
        self._timer: asyncio.TimerHandle | None = None
        self._text_since: float | None = None  # the first read with text
        self._events = 0  # events read since then (that first read's not counted)
        self.holds = 0  # windows held so far (the bench reports wake-ups per token with it)

    def hold(self, read_size: int, events: int) -> None:
        """After a read of ``read_size`` bytes and ``events`` events that carried text: pause
        reading for a window, if tokens come fast enough to gather in it."""
        transport = self._transport
        if self._window <= 0 or transport is None or self._timer is not None:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self._text_since is None:
            self._text_since = now  # the pace is not known yet: hold, as for a fast stream
        else:
            self._events += events
            if self._window * self._events < GATHER * (now - self._text_since):
                return  # a window would gather less than GATHER events: only a wake-up more
        if read_size >= BACKLOG_READ or transport.is_closing():
            return
        try:
            transport.pause_reading()
        except (AttributeError, NotImplementedError, RuntimeError):
            return  # a transport without flow control: read as it comes
        self.holds += 1
        self._timer = loop.call_later(self._window, self._release)

    def close(self) -> None:
        """Before the response is released: never leave its socket paused."""
        if self._timer is not None:
            self._timer.cancel()
            self._release()

    def _release(self) -> None:
        self._timer = None
        transport = self._transport
        if transport is not None and not transport.is_closing():
            # aiohttp pauses the transport itself when its buffer is full; that cannot
            # overlap a hold: nothing is read while held, and it is taken before the next.
            transport.resume_reading()
