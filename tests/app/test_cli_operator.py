"""The command as an operator on Windows meets it: console encodings, PowerShell's .env,
a working folder that is not the project's, --env-file anywhere, --version."""

from __future__ import annotations

from pathlib import Path

from tests.app.test_cli import run_cli
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
