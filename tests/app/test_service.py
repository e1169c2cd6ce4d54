"""`rtxrelay service`: the plans for Windows, Linux and macOS, checked as data on any machine,
and the command they start, run for real."""

from __future__ import annotations

import plistlib
import shlex
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

import pytest

from rtxrelay.app import service
from rtxrelay.app.service import Action
from rtxrelay.core.errors import ConfigError
from tests.app.test_cli import run_cli

PY = Path("/opt/py/bin/python3")
NS = {"t": "http://schemas.microsoft.com/windows/2004/02/mit/task"}


def test_windows_task_starts_at_logon_restarts_and_runs_in_the_env_folder(
        tmp_path: Path) -> None:
    env = tmp_path / "My Settings" / ".env"
    steps = service.plan(Action.INSTALL, env_file=env, platform="win32", python=PY,
                         home=tmp_path)
    ((xml_path, text),) = steps.writes.items()
    task = ET.fromstring(text.encode("utf-16"))
    assert task.find("t:Triggers/t:LogonTrigger", NS) is not None
    assert task.findtext("t:Settings/t:RestartOnFailure/t:Count", namespaces=NS) == "999"
    assert task.findtext("t:Settings/t:ExecutionTimeLimit", namespaces=NS) == "PT0S"
    assert task.findtext("t:Actions/t:Exec/t:Command", namespaces=NS) == str(PY)
    arguments = task.findtext("t:Actions/t:Exec/t:Arguments", namespaces=NS)
    assert arguments == f'-m rtxrelay run --env-file "{env.resolve()}"'
    assert task.findtext("t:Actions/t:Exec/t:WorkingDirectory",
                         namespaces=NS) == str(env.resolve().parent)
    assert steps.commands[0] == ("schtasks", "/Create", "/TN", "rtxrelay", "/XML",
                                 str(xml_path), "/F")
    removal = service.plan(Action.UNINSTALL, env_file=env, platform="win32", home=tmp_path)
    assert ("schtasks", "/Delete", "/TN", "rtxrelay", "/F") in removal.commands


def test_systemd_unit_restarts_on_failure_and_stops_with_sigterm(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    steps = service.plan(Action.INSTALL, env_file=env, platform="linux", python=PY,
                         home=tmp_path)
    ((unit_path, unit),) = steps.writes.items()
    assert unit_path == tmp_path / ".config/systemd/user/rtxrelay.service"
    lines = unit.splitlines()
    assert f"ExecStart={PY} -m rtxrelay run --env-file {env.resolve()}" in lines
    assert {"Restart=on-failure", "KillSignal=SIGTERM", "WantedBy=default.target"} <= set(lines)
    assert steps.commands[-1] == ("systemctl", "--user", "enable", "--now", "rtxrelay.service")


def test_launchd_agent_keeps_rtxrelay_alive(tmp_path: Path) -> None:
    steps = service.plan(Action.INSTALL, env_file=tmp_path / ".env", platform="darwin",
                         python=PY, home=tmp_path)
    ((_, text),) = steps.writes.items()
    agent = plistlib.loads(text.encode())
    assert agent["ProgramArguments"][:4] == [str(PY), "-m", "rtxrelay", "run"]
    assert agent["KeepAlive"] == {"SuccessfulExit": False} and agent["RunAtLoad"] is True


def test_apply_writes_runs_and_stops_at_a_failing_command(tmp_path: Path) -> None:
    ran: list[Sequence[str]] = []

    def fake(command: Sequence[str]) -> subprocess.CompletedProcess[str]:
        ran.append(command)
        return subprocess.CompletedProcess(list(command), 0 if len(ran) == 1 else 5, "", "no")

    steps = service.plan(Action.INSTALL, env_file=tmp_path / ".env", platform="linux",
                         home=tmp_path)
    with pytest.raises(ConfigError, match="failed \\(5\\)"):
        service.apply(steps, fake)
    assert (tmp_path / ".config/systemd/user/rtxrelay.service").is_file()
    assert ran == list(steps.commands)


async def test_the_installed_command_line_is_a_working_run(tmp_path: Path) -> None:
    """What the unit starts, started here: it reads the named .env (no bot token in it, so it
    says what is missing) from another folder."""
    env = tmp_path / "settings" / ".env"
    env.parent.mkdir()
    env.write_text("TELEGRAM_TOKEN=\nDISCORD_TOKEN=\n")
    steps = service.plan(Action.INSTALL, env_file=env, platform="linux",
                         python=Path(sys.executable), home=tmp_path)
    exec_start = next(line for line in next(iter(steps.writes.values())).splitlines()
                      if line.startswith("ExecStart="))
    argv = shlex.split(exec_start.removeprefix("ExecStart="))
    code, _, err = await run_cli(*argv[3:], env={}, cwd=tmp_path)  # after "python -m rtxrelay"
    assert code == 2 and "No bot is configured" in err, err


async def test_service_status_without_the_service_manager_says_so(tmp_path: Path) -> None:
    if sys.platform not in ("linux",):
        pytest.skip("checks the Linux plan")
    code, _, err = await run_cli("service", "status", env={"PATH": str(tmp_path)}, cwd=tmp_path)
    assert code == 2 and "systemctl" in err and "Traceback" not in err, err
