"""The command as an operator on Windows meets it: console encodings, PowerShell's .env,
a working folder that is not the project's, --env-file anywhere, --version."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import sys
from pathlib import Path

import pytest

from tests.app.test_cli import RTXRELAY, run_cli
from tests.replica import fake_model
from tests.replica.launcher import Replica, free_port

ANSI = {"PYTHONIOENCODING": "cp1252"}  # what a redirected Windows console gets


async def test_output_outside_the_console_code_page_never_crashes(
        rtx_426: Replica, tmp_path: Path) -> None:
    dead = {**ANSI, "RTX_URL": f"http://127.0.0.1:{free_port()}?cookie=x",
            "RTXRELAY_DB": str(tmp_path / "r.db")}
    code, out, err = await run_cli("doctor", env=dead, cwd=tmp_path,  # its hints hold "→"
                                   encoding="cp1252")
    assert code == 1 and "FIX   Chat with RTX" in out, err
    assert "Traceback" not in err and "UnicodeEncodeError" not in err
    live = {**ANSI, "RTX_URL": rtx_426.url, "RTXRELAY_DB": str(tmp_path / "r.db")}
    question = "[echo] 中文 😀 → ok"
    code, out, err = await run_cli("ask", question, env=live, cwd=tmp_path, encoding="cp1252")
    assert code == 0 and "Traceback" not in err, err
    assert out.strip().endswith("ok")  # characters cp1252 lacks become "?", the rest stays


async def test_a_utf16_env_file_from_powershell_is_read(rtx_426: Replica,
                                                        tmp_path: Path) -> None:
    # PowerShell 5.1's `Set-Content`/`>` write UTF-16 with a byte-order mark.
    (tmp_path / ".env").write_text(f"RTX_URL={rtx_426.url}\nRTXRELAY_DB=r.db\n",
                                   encoding="utf-16")
    code, out, err = await run_cli("ask", "hi", env={}, cwd=tmp_path)
    assert code == 0, err
    assert out.strip() == fake_model.answer_text("hi", []).strip()
    (tmp_path / ".env").write_bytes(b"RTX_URL=\xff\xfe\xfa bad\n")  # no BOM, not UTF-8
    code, _, err = await run_cli("ask", "hi", env={}, cwd=tmp_path)
    assert code == 2 and "save it as UTF-8" in err and "Traceback" not in err


async def test_env_file_anywhere_on_the_line_and_the_database_beside_it(
        rtx_426: Replica, tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.mkdir()
    (config / "my.env").write_text(f"RTX_URL={rtx_426.url}\n")
    elsewhere = tmp_path / "System32"  # where Task Scheduler starts programs
    elsewhere.mkdir()
    code, out, err = await run_cli("ask", "--env-file", str(config / "my.env"), "hi", env={},
                                   cwd=elsewhere)
    assert code == 0, err
    assert (config / "rtxrelay.db").exists() and not (elsewhere / "rtxrelay.db").exists()
    code, out, _ = await run_cli("doctor", "--env-file", str(config / "my.env"), env={},
                                 cwd=elsewhere)
    assert f"settings from {config / 'my.env'}" in out
    assert f"database {config / 'rtxrelay.db'} is writable" in out
    code, _, err = await run_cli("--env-file", str(config / "missing.env"), "doctor", env={},
                                 cwd=elsewhere)
    assert code == 2 and "missing.env does not exist" in err


async def test_version_and_log_level_for_every_command(rtx_426: Replica, tmp_path: Path) -> None:
    from importlib.metadata import version

    code, out, _ = await run_cli("--version", env={}, cwd=tmp_path)
    assert code == 0 and out.strip() == f"rtxrelay {version('rtxrelay')}"
    env = {"RTX_URL": rtx_426.url, "RTXRELAY_DB": str(tmp_path / "r.db"), "LOG_LEVEL": "INFO"}
    code, _, err = await run_cli("ask", "hi", env=env, cwd=tmp_path)
    assert code == 0 and f"INFO rtxrelay.app.wiring: settings from the environment only; " \
        f"database {tmp_path / 'r.db'}" in err, err
    code, _, err = await run_cli("ask", "hi", env={**env, "LOG_LEVEL": ""}, cwd=tmp_path)
    assert code == 0 and err == "", "a plain ask prints the answer and nothing else"


async def _read_until(stream: asyncio.StreamReader, needle: bytes, timeout: float) -> bytes:
    seen = b""
    async with asyncio.timeout(timeout):
        while needle not in seen:
            chunk = await stream.read(4096)
            if not chunk:
                break
            seen += chunk
    return seen


@pytest.mark.skipif(sys.platform == "win32", reason="Ctrl+C reaches the whole console there")
async def test_ctrl_c_stops_the_answer_then_leaves_at_the_prompt(
        rtx_426: Replica, tmp_path: Path) -> None:
    env = {**os.environ, "RTX_URL": rtx_426.url, "RTXRELAY_DB": str(tmp_path / "r.db")}
    proc = await asyncio.create_subprocess_exec(
        *RTXRELAY, "chat", stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, cwd=tmp_path, env=env)
    assert proc.stdin and proc.stdout and proc.stderr
    try:
        proc.stdin.write(b"a long one [len=20000] [delay=0.02]\n")
        await proc.stdin.drain()
        assert await _read_until(proc.stdout, b"You asked", 30)  # it is streaming
        proc.send_signal(signal.SIGINT)
        assert b"(stopped)" in await _read_until(proc.stderr, b"(stopped)", 30)
        # Only the answer stopped: the chat goes on.
        proc.stdin.write(b"[echo] and now?\n")
        await proc.stdin.drain()
        assert b"and now?\n" in await _read_until(proc.stdout, b"and now?\n", 30)
        # At the prompt (nothing typed, input still open), Ctrl+C leaves at once. (Pressed
        # again while the finished answer hands back the prompt, it leaves too.)
        exited = asyncio.ensure_future(proc.wait())
        async with asyncio.timeout(15):
            while not exited.done():
                proc.send_signal(signal.SIGINT)
                await asyncio.wait({exited}, timeout=1)
        assert exited.result() == 130
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    with contextlib.closing(sqlite3.connect(tmp_path / "r.db")) as db:
        statuses = [row[0] for row in db.execute("SELECT status FROM turns ORDER BY id")]
    assert statuses[0] == "interrupted"


async def test_a_reader_that_goes_away_ends_the_command_quietly(
        rtx_426: Replica, tmp_path: Path) -> None:
    env = {**os.environ, "RTX_URL": rtx_426.url, "RTXRELAY_DB": str(tmp_path / "r.db")}
    read_end, write_end = os.pipe()
    proc = await asyncio.create_subprocess_exec(
        *RTXRELAY, "ask", "long [len=150000] [delay=0]", stdout=write_end,
        stderr=asyncio.subprocess.PIPE, cwd=tmp_path, env=env)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as reader:  # `| head -c 100`
        assert reader.read(100)
    assert proc.stderr
    async with asyncio.timeout(60):
        err = await proc.stderr.read()
        code = await proc.wait()
    assert code == 0 and b"Traceback" not in err and b"BrokenPipe" not in err, err


async def test_discover_recommends_what_it_verified_and_says_why(
        rtx_426: Replica, tmp_path: Path) -> None:
    """Another Gradio chat app (no session check) on a port that sorts first is not picked."""
    import aiohttp
    from aiohttp import web

    async with aiohttp.ClientSession() as http, http.get(rtx_426.base_url + "/config") as resp:
        config = await resp.json()
    for dep in config["dependencies"]:
        dep["trigger_after"] = None  # the same chat function, without Chat with RTX's checks

    async def config_(request: web.Request) -> web.Response:
        return web.json_response(config)

    app = web.Application()
    app.router.add_get("/config", config_)
    runner = web.AppRunner(app)
    await runner.setup()
    port = next(p for p in range(10000, 20000) if _bindable(p))  # "1…" sorts before others
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        code, out, err = await run_cli("discover", "--ports", f"{port},{rtx_426.port}", env={},
                                       cwd=tmp_path, timeout=90)
    finally:
        await runner.cleanup()
    assert code == 0, err
    assert f"Most likely Chat with RTX: http://127.0.0.1:{rtx_426.port}" in out, out
    assert "refuses a request without its launch cookie" in out
    assert f"RTX_URL=http://127.0.0.1:{rtx_426.port}?cookie=" in out


def _bindable(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


async def test_log_file_beside_the_env_file_without_secrets(rtx_426: Replica,
                                                            tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(f"RTX_URL={rtx_426.url}\nLOG_FILE=logs/rtxrelay.log\n"
                                   "LOG_LEVEL=INFO\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code, _, err = await run_cli("ask", "--env-file", str(tmp_path / ".env"), "hi", env={},
                                 cwd=elsewhere)
    assert code == 0, err
    log = (tmp_path / "logs" / "rtxrelay.log").read_text(encoding="utf-8")
    assert "INFO rtxrelay.app.wiring: settings from" in log
    assert rtx_426.cookie is not None and rtx_426.cookie not in log


@pytest.mark.parametrize("command", ["ask", "chat", "doctor", "discover", "run", "service"])
def test_every_command_says_what_it_needs_prints_and_returns(
        command: str, capsys: pytest.CaptureFixture[str]) -> None:
    from rtxrelay.app import cli

    with pytest.raises(SystemExit) as done:
        cli.main([command, "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "needs:" in out and "prints:" in out and "exit codes:" in out and "0 " in out
