"""``rtxrelay service install|uninstall|status``: start ``rtxrelay run`` with the computer.

One plan per operating system, each made of plain data (the files to write, the commands to
run) so that all three are tested on any machine; only ``apply`` touches the system.

- **Windows**: a Task Scheduler task that runs at the user's logon and restarts on failure.
  Not a Windows service: Chat with RTX runs in the user's session and rtxrelay must reach it
  there; a task needs no administrator and no extra package (a service needs pywin32).
  ``schtasks /End`` ends the process at once: answers in flight are marked interrupted at
  the next start.
- **Linux**: a systemd user unit (``Restart=on-failure``); ``systemctl --user stop`` sends
  SIGTERM, which stops like Ctrl+C. ``loginctl enable-linger`` starts it at boot.
- **macOS**: a launchd agent (``KeepAlive`` unless it exited cleanly).
"""

from __future__ import annotations

import enum
import os
import plistlib
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from xml.sax.saxutils import escape

from rtxrelay.core.errors import ConfigError

NAME = "rtxrelay"
LAUNCHD_LABEL = "io.github.rtxrelay"


class Action(enum.Enum):
    INSTALL = "install"
    UNINSTALL = "uninstall"
    STATUS = "status"


@dataclass(frozen=True)
class Plan:
    """What an action does: files to write (path → text), files to remove, commands to run."""

    writes: dict[Path, str] = field(default_factory=dict)
    removes: tuple[Path, ...] = ()
    commands: tuple[tuple[str, ...], ...] = ()
    done: str = ""  # what to tell the operator afterwards


Run = Callable[[Sequence[str]], subprocess.CompletedProcess[str]]


def run_command(command: Sequence[str]) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(list(command), capture_output=True, text=True, check=False,
                              timeout=120)
    except FileNotFoundError:
        return subprocess.CompletedProcess(list(command), 127, "",
                                           f"{command[0]} is not installed on this machine")


def plan(action: Action, *, env_file: Path, platform: str = sys.platform,
         python: Path = Path(sys.executable), home: Path | None = None) -> Plan:
    """The plan for ``action`` on ``platform`` (``sys.platform`` values)."""
    env_file = env_file.resolve()
    home = home or Path.home()
    command = (str(python), "-m", "rtxrelay", "run", "--env-file", str(env_file))
    if platform == "win32":
        return _windows(action, command, env_file, home)
    if platform == "darwin":
        return _macos(action, command, env_file, home)
    if platform.startswith("linux"):
        return _linux(action, command, env_file, home)
    raise ConfigError(f"rtxrelay service does not know {platform}.",
                      hint="Start `rtxrelay run` with your system's service manager.")


def apply(steps: Plan, run: Run = run_command) -> list[str]:
    """Carry out ``steps``; returns the commands' output. A failing command stops it."""
    for path, text in steps.writes.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-16" if path.suffix == ".xml" else "utf-8")
    output: list[str] = []
    for command in steps.commands:
        result = run(command)
        output.append((result.stdout + result.stderr).strip())
        if result.returncode != 0:
            raise ConfigError(f"`{' '.join(command)}` failed ({result.returncode}): "
                              f"{output[-1][:300]}",
                              hint="Run it yourself to see why; `rtxrelay service status` "
                              "shows what is installed.")
    for path in steps.removes:
        path.unlink(missing_ok=True)
    return output


# -- Windows: Task Scheduler ---------------------------------------------------------------------


def _windows(action: Action, command: tuple[str, ...], env_file: Path, home: Path) -> Plan:
    xml = home / "AppData" / "Local" / NAME / f"{NAME}-task.xml"
    if action is Action.INSTALL:
        return Plan(
            writes={xml: windows_task_xml(command, env_file.parent)},
            commands=(("schtasks", "/Create", "/TN", NAME, "/XML", str(xml), "/F"),
                      ("schtasks", "/Run", "/TN", NAME)),
            done=f"Task '{NAME}' starts rtxrelay at every logon and again if it fails; "
            "its log: set LOG_FILE in .env.")
    if action is Action.UNINSTALL:
        return Plan(removes=(xml,), commands=(("schtasks", "/End", "/TN", NAME),
                                              ("schtasks", "/Delete", "/TN", NAME, "/F")),
                    done=f"Task '{NAME}' removed.")
    return Plan(commands=(("schtasks", "/Query", "/TN", NAME, "/V", "/FO", "LIST"),))


def windows_task_xml(command: tuple[str, ...], folder: Path) -> str:
    """A Task Scheduler definition: at logon, no time limit, restart every minute on failure,
    hidden, in the .env file's folder."""
    program, *arguments = command
    args = " ".join(f'"{a}"' if " " in a else a for a in arguments)
    return f"""<?xml version="1.0" encoding="UTF-16"?>
<Task version="1.2" xmlns="http://schemas.microsoft.com/windows/2004/02/mit/task">
  <RegistrationInfo>
    <Description>rtxrelay: Chat with RTX from Telegram and Discord</Description>
  </RegistrationInfo>
  <Triggers><LogonTrigger><Enabled>true</Enabled></LogonTrigger></Triggers>
  <Principals>
    <Principal id="Author">
      <LogonType>InteractiveToken</LogonType>
      <RunLevel>LeastPrivilege</RunLevel>
    </Principal>
  </Principals>
  <Settings>
    <MultipleInstancesPolicy>IgnoreNew</MultipleInstancesPolicy>
    <DisallowStartIfOnBatteries>false</DisallowStartIfOnBatteries>
    <StopIfGoingOnBatteries>false</StopIfGoingOnBatteries>
    <ExecutionTimeLimit>PT0S</ExecutionTimeLimit>
    <RestartOnFailure><Interval>PT1M</Interval><Count>999</Count></RestartOnFailure>
    <StartWhenAvailable>true</StartWhenAvailable>
    <Hidden>true</Hidden>
  </Settings>
  <Actions Context="Author">
    <Exec>
      <Command>{escape(program)}</Command>
      <Arguments>{escape(args)}</Arguments>
      <WorkingDirectory>{escape(str(folder))}</WorkingDirectory>
    </Exec>
  </Actions>
</Task>
"""


# -- Linux: systemd user unit --------------------------------------------------------------------


def _linux(action: Action, command: tuple[str, ...], env_file: Path, home: Path) -> Plan:
    unit = home / ".config" / "systemd" / "user" / f"{NAME}.service"
    systemctl = ("systemctl", "--user")
    if action is Action.INSTALL:
        return Plan(writes={unit: systemd_unit(command, env_file.parent)},
                    commands=((*systemctl, "daemon-reload"),
                              (*systemctl, "enable", "--now", f"{NAME}.service")),
                    done=f"rtxrelay starts at login (`loginctl enable-linger {_user()}` for "
                    "boot) and again if it fails; `journalctl --user -u rtxrelay` shows its log.")
    if action is Action.UNINSTALL:
        return Plan(removes=(unit,),
                    commands=((*systemctl, "disable", "--now", f"{NAME}.service"),),
                    done="rtxrelay's unit removed.")
    return Plan(commands=((*systemctl, "status", "--no-pager", f"{NAME}.service"),))


def systemd_unit(command: tuple[str, ...], folder: Path) -> str:
    quoted = " ".join(f'"{word}"' if " " in word else word for word in command)
    return f"""[Unit]
Description=rtxrelay: Chat with RTX from Telegram and Discord
After=network-online.target
Wants=network-online.target

[Service]
WorkingDirectory={folder}
ExecStart={quoted}
Restart=on-failure
RestartSec=5
# SIGTERM stops rtxrelay like Ctrl+C: answers being written land as "Stopped".
KillSignal=SIGTERM
TimeoutStopSec=45

[Install]
WantedBy=default.target
"""


# -- macOS: launchd agent ------------------------------------------------------------------------


def _macos(action: Action, command: tuple[str, ...], env_file: Path, home: Path) -> Plan:
    agent = home / "Library" / "LaunchAgents" / f"{LAUNCHD_LABEL}.plist"
    if action is Action.INSTALL:
        return Plan(writes={agent: launchd_plist(command, env_file.parent)},
                    commands=(("launchctl", "load", "-w", str(agent)),),
                    done="rtxrelay starts at login and again if it fails.")
    if action is Action.UNINSTALL:
        return Plan(removes=(agent,), commands=(("launchctl", "unload", "-w", str(agent)),),
                    done="rtxrelay's agent removed.")
    return Plan(commands=(("launchctl", "list", LAUNCHD_LABEL),))


def launchd_plist(command: tuple[str, ...], folder: Path) -> str:
    return plistlib.dumps({
        "Label": LAUNCHD_LABEL,
        "ProgramArguments": list(command),
        "WorkingDirectory": str(folder),
        "RunAtLoad": True,
        "KeepAlive": {"SuccessfulExit": False},
    }).decode()


def _user() -> str:
    return os.environ.get("USER") or "$USER"
