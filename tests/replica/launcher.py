"""Start, kill and restart Chat with RTX replicas from the test process (stdlib only).

    async with Replica("4.26", token_delay=0.002) as rtx:
        ...  # rtx.url, rtx.base_url, rtx.cookie, rtx.port, rtx.ca_file
        await rtx.kill()       # a crash: the client sees the connection die
        await rtx.restart()    # a relaunch: new port, new cookie (unless fixed ones given)

A replica takes seconds to start, nearly all of it Python importing Gradio. A test that will
restart one can ask for the new process in advance: ``Replica(..., warm_restarts=1)`` starts
it beside the first, imported and built but not listening (chatrtx_app's ``--standby``), and
``restart()`` then kills the running one and tells the standby to listen, which takes a
fraction of a second. To its clients it is a relaunch like any other: a new process, bound
only after the old one is gone (so a fixed port is free), with a new cookie unless fixed.

Portable: asyncio subprocesses and Process.kill() only (no signals, no fcntl); the venv's
python sits in Scripts\\python.exe on Windows (see envs.venv_python).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import random
import re
import shutil
import socket
import sys
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

if __package__:
    from .envs import ensure_env
    from .variants import DEFAULT_VARIANT, Variant, get_variant
else:  # imported by a script living in tests/replica
    from envs import ensure_env
    from variants import DEFAULT_VARIANT, Variant, get_variant

APP_PATH = Path(__file__).resolve().parent / "chatrtx_app.py"
LAUNCH_RE = re.compile(
    r"^Open (?P<url>(?P<scheme>https?)://127\.0\.0\.1:(?P<port>\d+)\?cookie=(?P<cookie>[^&\s]+)"
    r"&__theme=dark) in browser to start Chat with RTX$"
)
CERT_RE = re.compile(r"^Certificate: (?P<path>.+)$")
# Keep memory bounded if a replica chatters for hours (serve.py); tests read far less.
MAX_OUTPUT_LINES = 20_000
ENV_BUILD_TIMEOUT = 900.0  # a cold venv build; a warm uv cache makes it seconds


def free_port(host: str = "127.0.0.1") -> int:
    """A random port in 1024-49000 that is free right now (as ChatRTX picks its port)."""
    for _ in range(200):
        port = random.randint(1024, 49000)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port found in 1024-49000")


class ReplicaStartError(RuntimeError):
    """The replica exited or stayed silent before printing its launch line."""


@dataclass
class _Child:
    """One replica process: its output drain, launch line and https certificate."""

    proc: asyncio.subprocess.Process
    launched: asyncio.Future[re.Match[str]]
    lines: list[str]  # where its output goes (a standby's own list until it is used)
    cert_dir: Path | None = None
    ca_file: Path | None = None
    drain: asyncio.Task[None] | None = field(default=None, repr=False)


class Replica:
    """One Chat with RTX replica process, as an async context manager."""

    def __init__(
        self,
        variant: str | Variant = DEFAULT_VARIANT,
        *,
        https: bool = False,
        token_delay: float = 0.002,
        port: int | None = None,
        cookie: str | None = None,
        startup_timeout: float = 90.0,
        concurrency: int | None = None,
        echo: bool = False,
        build_progress: Callable[[str], None] | None = None,
        warm_restarts: int = 0,
    ) -> None:
        """``warm_restarts``: how many ``restart()`` calls find their process already started
        (see the module docstring); later ones start it cold."""
        self.variant: Variant = get_variant(variant)
        self.https = https
        self.token_delay = token_delay
        self.startup_timeout = startup_timeout
        self.concurrency = concurrency
        self.echo = echo  # copy the replica's output to our stdout (serve.py)
        self.build_progress = build_progress  # told each step of a venv build (serve.py)
        self._fixed_port = port
        self._fixed_cookie = cookie
        self._warm_restarts = warm_restarts
        self._child: _Child | None = None
        self._standby: _Child | None = None  # the next restart's process, not listening yet
        self.output: list[str] = []
        self.url: str | None = None
        self.port: int | None = None
        self.cookie: str | None = None
        self.ca_file: Path | None = None

    # ---- public surface -----------------------------------------------------------

    @property
    def base_url(self) -> str:
        """scheme://127.0.0.1:port, no trailing slash."""
        if self.port is None:
            raise RuntimeError("replica not started")
        return f"{'https' if self.https else 'http'}://127.0.0.1:{self.port}"

    @property
    def api_prefix(self) -> str:
        """Where queue routes live for this variant ("" or "/gradio_api")."""
        return self.variant.api_prefix

    @property
    def returncode(self) -> int | None:
        return None if self._child is None else self._child.proc.returncode

    @property
    def running(self) -> bool:
        return self._child is not None and self._child.proc.returncode is None

    async def start(self) -> Replica:
        if self.running:
            raise RuntimeError("replica already running")
        self.url = self.port = self.cookie = self.ca_file = None
        if self._standby is not None:
            child, self._standby = self._standby, None
            self.output.extend(child.lines)
            child.lines = self.output
            assert child.proc.stdin is not None
            child.proc.stdin.write(b"listen\n")  # the standby binds its port now
            with contextlib.suppress(ConnectionError):
                await child.proc.stdin.drain()
            child.proc.stdin.close()
        else:
            child = await self._spawn(self.output, standby=False)
        self._child = child
        if self._warm_restarts > 0:
            self._warm_restarts -= 1
            self._standby = await self._spawn([], standby=True)
        try:
            match = await asyncio.wait_for(asyncio.shield(child.launched), self.startup_timeout)
        except (TimeoutError, ReplicaStartError) as exc:
            tail = "\n".join(self.output[-40:])
            await self.kill()
            reason = "timed out" if isinstance(exc, TimeoutError) else str(exc)
            raise ReplicaStartError(
                f"replica {self.variant.name} did not start ({reason}); output:\n{tail}"
            ) from None
        self.ca_file = child.ca_file
        self.url = match.group("url")
        self.port = int(match.group("port"))
        self.cookie = match.group("cookie")
        return self

    async def _spawn(self, lines: list[str], *, standby: bool) -> _Child:
        """Start a replica process; a standby imports and builds the app, then waits for a
        line on its stdin before it listens."""
        build = functools.partial(ensure_env, self.variant, progress=self.build_progress)
        python = await asyncio.wait_for(asyncio.to_thread(build), ENV_BUILD_TIMEOUT)
        args = [str(python), str(APP_PATH), "--host", "127.0.0.1",
                "--token-delay", repr(self.token_delay)]
        if self._fixed_port is not None:
            args += ["--port", str(self._fixed_port)]
        if self._fixed_cookie is not None:
            args += ["--cookie", self._fixed_cookie]
        if self.concurrency is not None:
            args += ["--concurrency", str(self.concurrency)]
        cert_dir = None
        if self.https:
            cert_dir = Path(tempfile.mkdtemp(prefix="chatrtx-replica-certs-"))
            args += ["--https", "--cert-dir", str(cert_dir)]
        if standby:
            args.append("--standby")
        proc = await asyncio.create_subprocess_exec(
            *args,
            stdin=asyncio.subprocess.PIPE if standby else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,  # one pipe to drain, ordered output
            env=self._child_env(),
            cwd=str(APP_PATH.parent),
        )
        child = _Child(proc, asyncio.get_running_loop().create_future(), lines, cert_dir)
        child.drain = asyncio.create_task(self._drain(child))
        return child

    async def kill(self) -> None:
        """Hard kill, as a crash would end it; returns once the process is gone."""
        child = self._child
        if child is not None and child.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                child.proc.kill()
        await self._reap(child, limit=15.0)

    async def stop(self, grace: float = 10.0) -> None:
        """Ask politely (terminate), then kill; also removes the https cert directory and
        ends a standby that no restart used."""
        for child in (self._child, self._standby):
            if child is not None and child.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    child.proc.terminate()  # TerminateProcess on Windows, SIGTERM elsewhere
        for child in (self._child, self._standby):
            if child is None:
                continue
            try:
                await asyncio.wait_for(child.proc.wait(), grace)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    child.proc.kill()
            await self._reap(child, limit=15.0)
            self._remove_certs(child)
        self._standby = None

    async def restart(self) -> Replica:
        """Kill, then start again: a new random port and cookie unless fixed ones were given."""
        await self.kill()
        if self._child is not None:
            self._remove_certs(self._child)
        return await self.start()

    async def wait(self, limit: float | None) -> int:
        """Wait for the process to exit on its own (e.g. after [die]); returns its code.

        ``limit=None`` waits as long as it takes (serve.py, a person at the keyboard).
        """
        if self._child is None:
            raise RuntimeError("replica not started")
        code = await asyncio.wait_for(self._child.proc.wait(), limit)
        await self._reap(self._child, limit=5.0)
        return code

    async def __aenter__(self) -> Replica:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # ---- internals ----------------------------------------------------------------

    @staticmethod
    def _child_env() -> dict[str, str]:
        env = dict(os.environ)
        env.update({
            "PYTHONUNBUFFERED": "1",
            "PYTHONIOENCODING": "utf-8",
            # No phoning home: analytics and version checks would try the network.
            "GRADIO_ANALYTICS_ENABLED": "False",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            # Gradio probes its own local URL at startup; a proxy must not intercept it.
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
        })
        env.pop("GRADIO_SERVER_PORT", None)
        env.pop("GRADIO_SERVER_NAME", None)
        return env

    async def _drain(self, child: _Child) -> None:
        """Read the child's output until EOF, so its pipe never fills and blocks it."""
        proc, launched = child.proc, child.launched
        assert proc.stdout is not None
        while True:
            raw = await proc.stdout.readline()
            if not raw:
                break
            line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            lines = child.lines
            lines.append(line)
            if len(lines) > MAX_OUTPUT_LINES:
                del lines[: len(lines) - MAX_OUTPUT_LINES]
            if self.echo:
                print(line, flush=True)
            if launched.done():
                continue
            cert = CERT_RE.match(line)
            if cert:
                child.ca_file = Path(cert.group("path"))
            match = LAUNCH_RE.match(line)
            if match:
                launched.set_result(match)
        if not launched.done():
            code = await proc.wait()
            launched.set_exception(ReplicaStartError(f"exited with code {code}"))

    @staticmethod
    async def _reap(child: _Child | None, limit: float) -> None:
        if child is None:
            return
        await asyncio.wait_for(child.proc.wait(), limit)
        if child.drain is not None:
            try:
                await asyncio.wait_for(child.drain, limit)
            except TimeoutError:
                child.drain.cancel()
            child.drain = None
        if child.launched.done() and not child.launched.cancelled():
            child.launched.exception()  # mark a start failure as retrieved
        else:
            child.launched.cancel()

    @staticmethod
    def _remove_certs(child: _Child) -> None:
        if child.cert_dir is not None:
            shutil.rmtree(child.cert_dir, ignore_errors=True)
            child.cert_dir = None


@contextlib.asynccontextmanager
async def started(*replicas: Replica) -> AsyncIterator[tuple[Replica, ...]]:
    """Start ``replicas`` at once and stop them all at the end (also when one fails to start).

    A start is mostly Python importing Gradio, one core's work: on two cores two replicas
    start in little more than the time of one."""
    try:
        results = await asyncio.gather(*(r.start() for r in replicas), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        yield replicas
    finally:
        await asyncio.gather(*(r.stop() for r in replicas))


def _main() -> None:  # a quick manual check: python tests/replica/launcher.py [variant]
    async def run() -> None:
        name = sys.argv[1] if len(sys.argv) > 1 else DEFAULT_VARIANT
        async with Replica(name) as rtx:
            print(rtx.url)

    asyncio.run(run())


if __name__ == "__main__":
    _main()
