"""RTX_LAUNCH: rtxrelay starts Chat with RTX (here the replica) itself, reads its launch URL,
and starts it again when it dies; the next question goes to the new port and cookie."""

from __future__ import annotations

import asyncio
import shlex
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from rtxrelay.app.settings import load_settings
from rtxrelay.app.wiring import open_relay
from rtxrelay.core.conversation import Finished
from rtxrelay.core.errors import BackendError
from rtxrelay.core.store import ConversationKey, TurnStatus
from tests.replica.envs import ensure_env
from tests.replica.launcher import APP_PATH
from tests.replica.variants import get_variant

KEY = ConversationKey("test", "chat", "ada")


def command(*args: str) -> str:
    words = [*args]
    return subprocess.list2cmdline(words) if sys.platform == "win32" else shlex.join(words)


async def replica_command() -> str:
    python = await asyncio.to_thread(ensure_env, get_variant("4.26"))
    return command(str(python), str(APP_PATH), "--host", "127.0.0.1", "--token-delay", "0.001")


async def final(service, question: str) -> Finished:  # type: ignore[no-untyped-def]
    updates = [u async for u in service.ask(KEY, question)]
    assert isinstance(updates[-1], Finished), updates
    return updates[-1]


@pytest.mark.fault('6b', 'RTX_LAUNCH: Chat with RTX killed, restarted, found again')
async def test_rtxrelay_starts_chat_with_rtx_and_restarts_it_when_it_dies(fault,
        tmp_path: Path) -> None:
    settings = load_settings({"RTX_LAUNCH": await replica_command(),
                              "RTXRELAY_DB": str(tmp_path / "r.db")}, None)
    async with open_relay(settings) as relay:
        child = relay.child
        assert child is not None
        assert (await final(relay.service, "first")).status is TurnStatus.COMPLETE
        target = child.target()
        assert target is not None
        first = target.launch
        # Chat with RTX crashes: its whole process tree dies at once.
        assert child.pid is not None
        root = psutil.Process(child.pid)
        for process in [*root.children(recursive=True), root]:
            process.kill()
        async with asyncio.timeout(120):
            second = await child.next_launch(after=first)
        assert (second.port, second.cookie) != (first.port, first.cookie)
        # Nobody touched RTX_URL: the next question reaches the new Chat with RTX.
        assert (await final(relay.service, "after the crash")).status is TurnStatus.COMPLETE
        pid = child.pid
    assert pid is not None and not psutil.pid_exists(pid), "stopped with rtxrelay"
    fault(kept=2)


async def test_a_command_that_never_prints_its_url_fails_at_start_and_says_why(
        tmp_path: Path) -> None:
    folder = tmp_path / "ChatRTX"  # RTX_LAUNCH_DIR: where the command starts
    folder.mkdir()
    broken = command(sys.executable, "-c", "import os; print('Loading the models in', "
                     "os.getcwd()); raise SystemExit(3)")
    settings = load_settings({"RTX_LAUNCH": broken, "RTX_LAUNCH_DIR": str(folder),
                              "RTXRELAY_DB": str(tmp_path / "r.db")}, None)
    with pytest.raises(BackendError) as failed:
        async with asyncio.timeout(60):
            async with open_relay(settings):
                pass
    assert "exited before printing its launch URL" in failed.value.message
    assert f"Loading the models in {folder}" in failed.value.hint
