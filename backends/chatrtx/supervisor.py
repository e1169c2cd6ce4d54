"""Chat with RTX as rtxrelay's child (RTX_LAUNCH): start it, read the launch URL it prints,
and start it again when it exits, so a new port and cookie need no operator at all.

Chat with RTX picks a random port and cookie at every launch and prints them on its console
("Open http://127.0.0.1:PORT?cookie=… in browser"). Run by rtxrelay, that line is read from
its output; the backend asks ``target()`` again whenever a request fails the way a restart
explains (see ``ChatRtxBackend``'s ``reload``). The child's output is not logged: it may echo
what people asked.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import psutil

from rtxrelay.core.errors import BackendError, BackendErrorKind

from .launch_url import LaunchUrl, parse_launch_url
from .settings import ChatRtxSettings, ChatRtxTarget

log = logging.getLogger(__name__)

_LAUNCH_LINE = re.compile(r"https?://\S+\?\S*cookie=", re.IGNORECASE)
RESTART_DELAYS = (2.0, 5.0, 15.0, 30.0, 60.0)
START_TIMEOUT = 900.0  # Chat with RTX loads its models before it prints the URL: minutes
TAIL_LINES = 30  # the child's last lines, shown when it exits before printing its URL


class SupervisedChatRtx:
    """``async with`` starts the command and returns once Chat with RTX printed its URL."""

    def __init__(self, command: str, settings: ChatRtxSettings, *, cwd: Path | None = None,
                 start_timeout: float = START_TIMEOUT,
                 restart_delays: Sequence[float] = RESTART_DELAYS) -> None:
        self._command = command
        self._settings = settings
        self._cwd = cwd
        self._start_timeout = start_timeout
        self._delays = restart_delays
        self._launch: LaunchUrl | None = None
        self._launched = asyncio.Event()
        self._ever_launched = False
        self._proc: asyncio.subprocess.Process | None = None
        self._task: asyncio.Task[None] | None = None
        self._tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)

    async def __aenter__(self) -> SupervisedChatRtx:
        self._task = asyncio.create_task(self._supervise(), name="rtxrelay-chatrtx-child")
        waiter = asyncio.ensure_future(self._launched.wait())
        try:
            await asyncio.wait({waiter, self._task}, timeout=self._start_timeout,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        if self._launch is None:
            exited = self._proc is not None and self._proc.returncode is not None
            await self.__aexit__(None, None, None)
            what = ("exited before printing its launch URL" if exited else
                    f"did not print its launch URL within {self._start_timeout:g} s")
            raise BackendError(
                BackendErrorKind.UNREACHABLE,
                f"Chat with RTX started by RTX_LAUNCH {what}.",
                hint="Check the command in RTX_LAUNCH (run it by hand: it must print "
                "'Open http://127.0.0.1:PORT?cookie=… in browser'). Its last lines:\n  "
                + "\n  ".join(self._tail),
            )
        return self

    async def __aexit__(self, et: type[BaseException] | None, ev: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._end_child()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def target(self) -> ChatRtxTarget | None:
        """Where Chat with RTX listens now (None while it is starting again)."""
        if self._launch is None:
            return None
        return ChatRtxTarget(self._launch, self._settings.ssl_context(self._launch))

    async def next_launch(self, after: LaunchUrl | None) -> LaunchUrl:
        """Wait until Chat with RTX printed a launch URL other than ``after``."""
        while self._launch is None or self._launch == after:
            self._launched.clear()
            await self._launched.wait()
        return self._launch

    async def _supervise(self) -> None:
        attempt = 0
        while True:
            started = asyncio.get_running_loop().time()
            code = await self._run_once()
            if not self._ever_launched:
                return  # it never came up: a wrong command, said at start, not retried
            if asyncio.get_running_loop().time() - started > 300:
                attempt = 0  # it ran for a while: a fresh series of quick restarts
            delay = self._delays[min(attempt, len(self._delays) - 1)]
            attempt += 1
            log.warning("Chat with RTX (RTX_LAUNCH) exited with code %s; starting it again "
                        "in %g s.", code, delay)
            await asyncio.sleep(delay)

    async def _run_once(self) -> int | None:
        self._launch = None
        self._proc = await asyncio.create_subprocess_shell(
            self._command, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, cwd=self._cwd)
        assert self._proc.stdout is not None
        async for raw in self._proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip()
            self._tail.append(line)
            if _LAUNCH_LINE.search(line):
                with contextlib.suppress(BackendError):
                    self._launch = parse_launch_url(line)
                    self._ever_launched = True
                    log.info("Chat with RTX (RTX_LAUNCH) is up at %s", self._launch.redacted)
                    self._launched.set()
        return await self._proc.wait()

    async def _end_child(self) -> None:
        """Terminate the command and everything it started (a launcher script starts the
        real app as its own child), then kill what is left after 10 s."""
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        try:
            root = psutil.Process(proc.pid)
            family = [*root.children(recursive=True), root]
        except psutil.Error:
            family = []
        for member in family:
            with contextlib.suppress(psutil.Error):
                member.terminate()
        _, alive = await asyncio.to_thread(psutil.wait_procs, family, 10)
        for member in alive:
            with contextlib.suppress(psutil.Error):
                member.kill()
        with contextlib.suppress(ProcessLookupError):
            await asyncio.wait_for(proc.wait(), 10)
