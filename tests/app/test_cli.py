"""The ``rtxrelay`` command as a user runs it: a real subprocess against a real replica."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from tests.replica import fake_model
from tests.replica.launcher import Replica, free_port

RTXRELAY = [sys.executable, "-m", "rtxrelay.app.cli"]


async def run_cli(*args: str, env: dict[str, str], cwd: Path, stdin: str = "",
                  timeout: float = 60, encoding: str = "utf-8") -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *RTXRELAY, *args,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, cwd=cwd,
        env={**os.environ, **env},
    )
    try:
        async with asyncio.timeout(timeout):
            out, err = await proc.communicate(stdin.encode())
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(encoding), err.decode(encoding)


async def test_ask_streams_the_answer(rtx_426: Replica, tmp_path: Path) -> None:
    env = {"RTX_URL": rtx_426.url, "RTXRELAY_DB": str(tmp_path / "r.db")}
    code, out, err = await run_cli("ask", "what", "is", "RTX?", env=env, cwd=tmp_path)
    assert code == 0, err
    assert out.strip() == fake_model.answer_text("what is RTX?", []).strip()


def imported(stderr: str) -> set[str]:
    """The modules ``python -X importtime`` reported loading."""
    return {line.rpartition("|")[2].strip() for line in stderr.splitlines()
            if line.startswith("import time:")}


async def test_ask_imports_only_what_it_needs(rtx_426: Replica, tmp_path: Path) -> None:
    """A one-off question pays for aiohttp and its own backend, nothing else: no platform SDK,
    no other backend, no package metadata (measured with -X importtime, as a user can)."""
    env = {"RTX_URL": rtx_426.url, "RTXRELAY_DB": str(tmp_path / "r.db"),
           "PYTHONPROFILEIMPORTTIME": "1"}
    code, out, err = await run_cli("ask", "what is RTX?", env=env, cwd=tmp_path)
    assert code == 0 and out.strip(), err
    modules = imported(err)
    assert {"aiohttp", "aiosqlite", "rtxrelay.backends.chatrtx.backend"} <= modules
    unneeded = {"discord", "telegram", "importlib.metadata", "asyncpg",
                "rtxrelay.backends.openai.backend", "rtxrelay.app.serve",
                "rtxrelay.app.runner", "rtxrelay.backends.chatrtx.supervisor"}
    assert not modules & unneeded
    code, _, err = await run_cli("--help", env={"PYTHONPROFILEIMPORTTIME": "1"},
                                   cwd=tmp_path)
    assert code == 0 and "aiohttp" not in imported(err), "help needs no HTTP client"


async def test_chat_reads_stdin_and_keeps_history(rtx_426: Replica, tmp_path: Path) -> None:
    env = {"RTX_URL": rtx_426.url, "RTXRELAY_DB": str(tmp_path / "r.db")}
    script = "my name is Ada\nwho am I? [recall]\n/reset\nfresh start [recall]\n"
    code, out, err = await run_cli("chat", env=env, cwd=tmp_path, stdin=script)
    assert code == 0, err
    answers = [line for line in out.splitlines() if line.strip()]
    assert answers[0].startswith("[turns=0] You asked: my name is Ada.")
    assert "- my name is Ada" in out
    assert answers[-1] == fake_model.answer_text("fresh start [recall]", []).splitlines()[-1]
    # A second session continues the same conversation from the database.
    code, out, _ = await run_cli("chat", env=env, cwd=tmp_path, stdin="again [recall]\n")
    assert code == 0 and "- fresh start" in out


async def test_backend_down_exits_nonzero_with_a_fix(tmp_path: Path) -> None:
    env = {"RTX_URL": f"http://127.0.0.1:{free_port()}?cookie=x",
           "RTXRELAY_DB": str(tmp_path / "r.db")}
    code, _out, err = await run_cli("ask", "hello", env=env, cwd=tmp_path)
    assert code == 1
    assert "Cannot connect to Chat with RTX" in err and "discover" in err
    assert "Traceback" not in err


async def test_missing_and_malformed_settings(tmp_path: Path) -> None:
    code, _, err = await run_cli("ask", "hi", env={"RTX_URL": ""}, cwd=tmp_path)
    assert code == 2 and "RTX_URL is not set" in err and "Traceback" not in err
    code, _, err = await run_cli("ask", "hi", env={"RTX_URL": "localhost:5000"}, cwd=tmp_path)
    assert code == 1 and "not an http(s) URL" in err
    code, _, err = await run_cli("chat", env={"HISTORY_TURNS": "many"}, cwd=tmp_path)
    assert code == 2 and "HISTORY_TURNS" in err


async def test_doctor_reports_each_check(rtx_426: Replica, tmp_path: Path) -> None:
    env = {"RTX_URL": rtx_426.url, "RTXRELAY_DB": str(tmp_path / "r.db")}
    code, out, _ = await run_cli("doctor", env=env, cwd=tmp_path)
    assert code == 0, out
    assert "OK    Chat with RTX reachable (gradio 4.26.0, protocol sse_v3)" in out
    assert "OK    chat function found: fn_index 40" in out
    assert "OK    session cookie accepted" in out
    assert rtx_426.cookie not in out

    bad = {"RTX_URL": f"{rtx_426.base_url}?cookie=wrong", "RTXRELAY_DB": str(tmp_path / "r.db")}
    code, out, _ = await run_cli("doctor", env=bad, cwd=tmp_path)
    assert code == 1 and "FIX   Chat with RTX: Chat with RTX rejected the session cookie" in out


async def test_doctor_flags_a_corrupt_database(rtx_426: Replica, tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    db.write_bytes(b"garbage" * 1000)
    code, out, _ = await run_cli("doctor", env={"RTX_URL": rtx_426.url, "RTXRELAY_DB": str(db)},
                                 cwd=tmp_path)
    assert code == 1 and "FIX   database" in out and "damaged" in out


async def test_discover_finds_the_replica_among_listening_ports(
    rtx_426: Replica, tmp_path: Path
) -> None:
    code, out, err = await run_cli("discover", env={}, cwd=tmp_path, timeout=90)
    assert code == 0, err
    assert f"Chat with RTX: http://127.0.0.1:{rtx_426.port}" in out
    assert "RTX_URL=" in out


async def test_run_without_tokens_says_what_is_missing(tmp_path: Path) -> None:
    code, _, err = await run_cli("run", env={"TELEGRAM_TOKEN": "", "DISCORD_TOKEN": ""},
                                 cwd=tmp_path)
    assert code == 2 and "TELEGRAM_TOKEN" in err and "DISCORD_TOKEN" in err


FREEZE_PROBE = """
import gc, sys
from rtxrelay.app import cli, runner

async def probe(settings, stop=None):
    print(gc.get_freeze_count(), "discord" in sys.modules, "telegram" in sys.modules)
    return 0

runner.run_bots = probe
sys.exit(cli.main(["run"]))
"""


async def test_run_freezes_the_imported_libraries_before_the_bots_start(tmp_path: Path) -> None:
    # Full collections then skip the ~75k objects every import leaves for the process's life
    # (app/runner.freeze_startup_objects): shorter pauses under load.
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", FREEZE_PROBE, cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "TELEGRAM_TOKEN": "123:abc", "DISCORD_TOKEN": "x.y.z",
             "RTXRELAY_DB": str(tmp_path / "r.db")})
    async with asyncio.timeout(60):
        out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    frozen, discord_loaded, telegram_loaded = out.decode().split()
    assert int(frozen) > 10_000
    assert discord_loaded == telegram_loaded == "True"


@pytest.mark.fault('9', 'chat after a failed answer answers the next line')
async def test_chat_answers_the_line_after_a_failed_answer(fault, rtx_426: Replica,
                                                           tmp_path: Path) -> None:
    env = {"RTX_URL": rtx_426.url, "RTXRELAY_DB": str(tmp_path / "r.db")}
    code, out, err = await run_cli("chat", env=env, cwd=tmp_path,
                                   stdin="this breaks [error]\nand this works\n")
    assert code == 1, "a failed answer still shows in the exit code"
    assert "Still answering" not in err
    assert fake_model.answer_text("and this works", []).strip() in out
    fault(kept=2)


@pytest.mark.fault('8', 'a non-UTF-8 byte and a lone surrogate: replaced, stored, answered')
async def test_invalid_text_is_replaced_stored_and_answered(fault, rtx_426: Replica,
                                                            tmp_path: Path) -> None:
    import contextlib
    import sqlite3

    env = {"RTX_URL": rtx_426.url, "RTXRELAY_DB": str(tmp_path / "r.db"),
           "PYTHONIOENCODING": "utf-8"}
    # A byte that is not UTF-8 on stdin, and a lone surrogate in an argument.
    proc = await asyncio.create_subprocess_exec(
        *RTXRELAY, "chat", stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, cwd=tmp_path, env={**os.environ, **env})
    async with asyncio.timeout(60):
        out, err = await proc.communicate(b"caf\xe9 au lait\n")
    assert proc.returncode == 0, err.decode()
    code, _, err_text = await run_cli("ask", "half \udc80 a pair", env=env, cwd=tmp_path)
    assert code == 0, err_text
    with contextlib.closing(sqlite3.connect(tmp_path / "r.db")) as db:
        turns = dict(db.execute("SELECT question, status FROM turns").fetchall())
    assert turns == {"caf\ufffd au lait": "complete", "half \ufffd a pair": "complete"}
    assert "caf\ufffd au lait" in out.decode()
    fault(kept=2)
