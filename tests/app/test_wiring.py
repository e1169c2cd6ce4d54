"""Wiring as a running bot lives it: Chat with RTX restarted on a new port and cookie."""

from __future__ import annotations

from pathlib import Path

import pytest

from rtxrelay.app.settings import load_settings
from rtxrelay.app.wiring import open_relay
from rtxrelay.core.backend import Failed
from rtxrelay.core.conversation import Finished
from rtxrelay.core.errors import BackendErrorKind
from rtxrelay.core.store import ConversationKey, TurnStatus
from tests.replica.launcher import Replica, free_port

KEY = ConversationKey("test", "chat", "ada")


async def final(relay_service, question: str) -> Finished:  # type: ignore[no-untyped-def]
    updates = [u async for u in relay_service.ask(KEY, question)]
    last = updates[-1]
    assert isinstance(last, Finished), updates
    return last


@pytest.mark.fault('6a', 'Chat with RTX relaunched: the new URL in .env is enough')
async def test_pasting_the_new_launch_url_into_env_reaches_a_running_relay(fault,
        tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    # The relaunched process is started beside the first (warm_restarts): it listens, on a new
    # port with a new cookie, only once the first is killed.
    async with Replica("4.26", token_delay=0.001, warm_restarts=1) as rtx:
        env_file.write_text(f"RTX_URL={rtx.url}\nRTXRELAY_DB={tmp_path / 'r.db'}\n")
        async with open_relay(load_settings(env_file=env_file)) as relay:
            assert (await final(relay.service, "before")).status is TurnStatus.COMPLETE
            old_url = rtx.url
            await rtx.restart()  # Chat with RTX relaunched: new port, new cookie
            assert rtx.url != old_url
            # Until the operator updates .env, questions fail and say so.
            down = await final(relay.service, "while the old URL is set")
            assert down.status is TurnStatus.FAILED and down.error is not None
            assert down.error.kind is BackendErrorKind.UNREACHABLE
            # Pasting the new URL is enough: no restart of rtxrelay.
            env_file.write_text(f"RTX_URL={rtx.url}\nRTXRELAY_DB={tmp_path / 'r.db'}\n")
            assert (await final(relay.service, "after")).status is TurnStatus.COMPLETE
            assert (await relay.service.pool.members[0].backend.probe()).protocol == "sse_v3"
    fault(kept=2, lost=0)


async def test_a_malformed_new_url_is_reported_and_the_question_fails_cleanly(
        tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    env_file = tmp_path / ".env"
    dead = f"http://127.0.0.1:{free_port()}?cookie=gone"
    env_file.write_text(f"RTX_URL={dead}\nRTXRELAY_DB={tmp_path / 'r.db'}\n")
    async with open_relay(load_settings(env_file=env_file)) as relay:
        env_file.write_text("RTX_URL=not a url\n")
        backend = relay.service.pool.members[0].backend
        updates = [u async for u in backend.stream_answer("anyone?", [], session="s")]
    assert isinstance(updates[-1], Failed)
    assert updates[-1].error.kind is BackendErrorKind.UNREACHABLE
    assert "RTX_URL in the settings file cannot be used" in caplog.text
