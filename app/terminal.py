"""The terminal as a chat client: printing an answer as it streams, and the `chat` loop.

Ctrl+C while an answer streams stops that answer only (a second press leaves); at the prompt
it leaves at once. Lines are read by a daemon thread so that leaving never waits for Enter
(a read blocked in asyncio's executor would hold the interpreter until one arrives).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from types import FrameType
from typing import TextIO

from rtxrelay.core.backend import Queued, Started, TextSoFar, Throttled
from rtxrelay.core.conversation import Busy, ConversationService, Finished, Rejected, ReplyUpdate
from rtxrelay.core.errors import RelayError
from rtxrelay.core.store import ConversationKey, TurnStatus

EXIT_OK, EXIT_FAILED = 0, 1
LEAVE_HINT = "Ctrl+Z then Enter" if sys.platform == "win32" else "Ctrl+D"
# Text is read at most this often once it flows (Backend.stream_answer): ten prints a second
# read as a smooth stream, and at Chat with RTX's ~20 tokens a second each read takes two
# tokens, half the wake-ups of one a token (bench/README.md).
READ_WINDOW = 0.1


def print_error(exc: RelayError, err: TextIO) -> None:
    print(f"error: {exc.message}", file=err)
    if exc.hint:
        print(f"  → {exc.hint}", file=err)


async def print_answer(stream: AsyncGenerator[ReplyUpdate, None], out: TextIO,
                       err: TextIO) -> int:
    """Print the answer as it grows; the exit status it deserves."""
    # aclosing: returning early must end the answer now (its conversation stays busy until
    # then, and the next line would be refused as "still answering").
    async with contextlib.aclosing(stream):
        return await _print_updates(stream, out, err)


async def _print_updates(stream: AsyncIterator[ReplyUpdate], out: TextIO, err: TextIO) -> int:
    printed = ""
    async for update in stream:
        if isinstance(update, Queued):
            print(f"(#{update.position} in line)", file=err, flush=True)
        elif isinstance(update, Started):
            continue
        elif isinstance(update, Throttled):
            print(f"(the model is busy; trying again in {max(1, round(update.retry_after))} s)",
                  file=err, flush=True)
        elif isinstance(update, TextSoFar):
            printed = _print_more(out, printed, update.text)
        elif isinstance(update, Busy):
            print("Still answering the previous question.", file=err)
            return EXIT_FAILED
        elif isinstance(update, Rejected):
            print(update.message, file=err)
            return EXIT_FAILED
        elif isinstance(update, Finished):
            printed = _print_more(out, printed, update.text)
            print(file=out, flush=True)
            if update.history_trimmed:
                print("(older messages were left out of the context)", file=err)
            if update.error is not None:
                print_error(update.error, err)
                return EXIT_FAILED
            if update.status is TurnStatus.INTERRUPTED:
                print("(stopped)", file=err)
    return EXIT_OK


def _print_more(out: TextIO, printed: str, text: str) -> str:
    if text.startswith(printed):
        out.write(text[len(printed) :])
    else:  # earlier text changed (rare): start a fresh line with the whole answer
        out.write("\n" + text)
    out.flush()
    return text


class StdinLines:
    """Lines of stdin, read by a daemon thread; None at the end of input."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._lines: asyncio.Queue[str | None] = asyncio.Queue()
        threading.Thread(target=self._read, name="rtxrelay-stdin", daemon=True).start()

    async def next(self) -> str | None:
        return await self._lines.get()

    def _read(self) -> None:
        try:
            for line in iter(sys.stdin.readline, ""):
                self._loop.call_soon_threadsafe(self._lines.put_nowait, line)
            self._loop.call_soon_threadsafe(self._lines.put_nowait, None)
        except (RuntimeError, OSError, ValueError):  # the loop or stdin is closed: leaving
            return


@contextlib.contextmanager
def ctrl_c_stops(stop: asyncio.Event) -> Iterator[None]:
    """For the block, Ctrl+C sets ``stop`` (the answer ends as 'stopped'); a second press
    leaves as usual."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers belong to the main thread
        return
    loop = asyncio.get_running_loop()

    def on_ctrl_c(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        loop.call_soon_threadsafe(stop.set)

    previous = signal.signal(signal.SIGINT, on_ctrl_c)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


async def chat(service: ConversationService, key: ConversationKey, *, new: bool,
               interactive: bool, out: TextIO, err: TextIO) -> int:
    if new:
        await service.reset(key)
    if interactive:
        continues = "a new conversation" if new else \
            "your conversation continues (--new starts a fresh one)"
        print(f"Chat with RTX: {continues}. /reset starts over, /retry asks again, Ctrl+C "
              f"stops an answer, /quit or {LEAVE_HINT} leaves.", file=err)
    lines = StdinLines()
    status = EXIT_OK
    while True:
        if interactive:
            print("you> ", end="", file=err, flush=True)
        line = await lines.next()
        if line is None:
            break
        text = line.strip()
        if not text:
            continue
        if text in ("/quit", "/exit"):
            break
        if text == "/reset":
            await service.reset(key)
            print("(new conversation)", file=err)
            continue
        if interactive:
            print("rtx> ", end="", file=err, flush=True)
        stop = asyncio.Event()
        with ctrl_c_stops(stop):
            stream = (service.retry(key, stop=stop, read_window=READ_WINDOW)
                      if text == "/retry"
                      else service.ask(key, text, stop=stop, read_window=READ_WINDOW))
            status = max(status, await print_answer(stream, out, err))
    return status
