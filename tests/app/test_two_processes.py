"""Two real `rtxrelay serve` processes sharing one line in a real PostgreSQL, in front of two
Chat with RTX replicas (issue 15): a question never waits behind a busy backend while the
other is idle, whichever process it came to; a process killed mid-answer frees its slot when
its connections close; a PostgreSQL restart with answers running and waiting loses none."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from rtxrelay.storage.dsn import PostgresDsn
from tests.replica.launcher import Replica
from tests.support.backends_toml import replicas
from tests.support.postgres import PostgresServer

WAIT = 60.0
READY = re.compile(r"Serving the OpenAI-compatible API at (http://\S+/v1)")
SLOW = "[delay=0.05] [len=500] "  # a few seconds of answer: lines form behind it


class ServeProcess:
    """``python -m rtxrelay serve --port 0`` in its own folder, as a user starts it."""

    def __init__(self, folder: Path, database: PostgresDsn, backends: str) -> None:
        folder.mkdir()
        (folder / "backends.toml").write_text(backends, encoding="utf-8")
        (folder / ".env").write_text(f"RTXRELAY_DB={database.url}\nLINE_LEASE=2\n",
                                     encoding="utf-8")
        self.folder = folder
        self.url = ""
        self.lines: list[str] = []
        self._proc: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> ServeProcess:
        env = {**os.environ, "PYTHONIOENCODING": "utf-8", "NO_PROXY": "127.0.0.1"}
        for name in ("RTX_URL", "OPENAI_BASE_URL", "RTXRELAY_DB", "BACKENDS_FILE"):
            env.pop(name, None)
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "rtxrelay", "serve", "--port", "0",
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE, env=env, cwd=str(self.folder))
        ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._reader = asyncio.create_task(self._read(ready))
        self.url = await asyncio.wait_for(ready, WAIT)
        return self

    async def _read(self, ready: asyncio.Future[str]) -> None:
        assert self._proc is not None and self._proc.stderr is not None
        while line := await self._proc.stderr.readline():
            text = line.decode("utf-8", "replace").rstrip()
            self.lines.append(text)
            if (found := READY.search(text)) and not ready.done():
                ready.set_result(found.group(1))
        if not ready.done():
            ready.set_exception(RuntimeError("serve exited:\n" + "\n".join(self.lines[-20:])))

    def kill(self) -> None:
        assert self._proc is not None
        self._proc.send_signal(signal.SIGKILL)

    async def __aexit__(self, *exc: object) -> None:
        assert self._proc is not None
        if self._proc.returncode is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self._proc.wait(), WAIT)
            except TimeoutError:
                self._proc.kill()
                await self._proc.wait()
        await asyncio.wait_for(self._reader, WAIT)

    async def health(self, http: aiohttp.ClientSession) -> dict[str, Any]:
        async with http.get(self.url.removesuffix("/v1") + "/health") as response:
            return await response.json()  # type: ignore[no-any-return]


async def ask(http: aiohttp.ClientSession, serve: ServeProcess, question: str) -> str:
    """One non-streamed answer; raises on any error."""
    async with http.post(f"{serve.url}/chat/completions", json={
            "model": "chatrtx", "messages": [{"role": "user", "content": question}]}) as r:
        body = await r.json()
        assert r.status == 200, body
        return str(body["choices"][0]["message"]["content"])


async def until_health(http: aiohttp.ClientSession, serve: ServeProcess, what: str,
                       predicate: Any) -> dict[str, Any]:
    """Until ``serve``'s /health satisfies ``predicate`` (the state of other processes: no
    event reaches this test for it, so it is asked again)."""
    async with asyncio.timeout(WAIT):
        while not predicate(health := await serve.health(http)):  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    return health


def running(health: dict[str, Any]) -> dict[str, int]:
    return {b["name"]: b["running"] for b in health["backends"]}


@contextlib.asynccontextmanager
async def two_processes(tmp_path: Path, dsn: PostgresDsn, desk: Replica,
                        laptop: Replica) -> AsyncIterator[tuple[ServeProcess, ServeProcess]]:
    backends = replicas(desk=desk.url, laptop=laptop.url)
    async with ServeProcess(tmp_path / "a", dsn, backends) as a, \
            ServeProcess(tmp_path / "b", dsn, backends) as b:
        yield a, b


async def test_two_processes_one_line_a_process_killed_and_postgresql_restarted(
        tmp_path: Path, postgres: PostgresServer, postgres_dsn: PostgresDsn,
        rtx_pair: tuple[Replica, Replica]) -> None:
    desk, laptop = rtx_pair  # never killed here (a serve process is; PostgreSQL restarts)
    async with two_processes(tmp_path, postgres_dsn, desk, laptop) as (a, b), \
            aiohttp.ClientSession(trust_env=False) as http:
        # One question to each process: the second goes to the backend the first left idle.
        on_a = asyncio.create_task(ask(http, a, f"{SLOW}to a"))
        await until_health(http, b, "a's answer", lambda h: sum(running(h).values()) == 1)
        on_b = asyncio.create_task(ask(http, b, f"{SLOW}to b"))
        health = await until_health(http, b, "both busy",
                                    lambda h: running(h) == {"desk": 1, "laptop": 1})
        assert health["queue"] == {"running": 2, "waiting": 0}
        # A third waits in the one line, whichever process it came to.
        behind = asyncio.create_task(ask(http, b, "behind them"))
        await until_health(http, a, "one waiting", lambda h: h["queue"]["waiting"] == 1)

        a.kill()  # process a dies mid-answer: its client is told (the connection drops)
        with pytest.raises(aiohttp.ClientError):
            await asyncio.wait_for(on_a, WAIT)
        # Its connections closed with it: b sees it gone within two heartbeats (LINE_LEASE=2:
        # every 0.5 s) and frees its slot; b's waiting question is answered, as is b's own.
        assert "You asked: behind them" in await asyncio.wait_for(behind, WAIT)
        assert "to b" in await asyncio.wait_for(on_b, WAIT)
        assert any("is gone (its connection closed)" in line for line in b.lines)

        # PostgreSQL restarts with one answer running and one waiting: both are answered.
        first = asyncio.create_task(ask(http, b, f"{SLOW}during the restart"))
        second = asyncio.create_task(ask(http, b, f"{SLOW}also during it"))
        third = asyncio.create_task(ask(http, b, "after them"))
        await until_health(http, b, "a line", lambda h: h["queue"]["waiting"] == 1)
        await postgres.restart()
        answers = await asyncio.wait_for(asyncio.gather(first, second, third), WAIT)
        assert [("during the restart" in answers[0]), ("also during it" in answers[1]),
                ("after them" in answers[2])] == [True, True, True]
        health = await until_health(http, b, "an empty line",
                                    lambda h: h["queue"] == {"running": 0, "waiting": 0})
        assert [x["state"] for x in health["backends"]] == ["up", "up"]


pytestmark = pytest.mark.timeout(240)
