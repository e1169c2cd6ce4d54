"""``run_bots`` with both platforms configured: they run side by side, and one that fails does
not take the other down. In process, because discord.py is pointed at the fake by patching it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from rtxrelay.app.runner import run_bots
from rtxrelay.app.settings import Settings, load_settings
from rtxrelay.backends.chatrtx.answer_html import convert_answer
from tests.fakes.discord_api import FakeDiscord, point_discord_py_at
from tests.fakes.telegram_api import FakeTelegram
from tests.replica import fake_model
from tests.replica.launcher import Replica, free_port


def expected(question: str) -> str:
    return convert_answer(fake_model.answer_text(question, [])).text


async def wait_for(check: Callable[[], object], timeout: float = 20) -> None:
    # Conditions span two fakes and the log capture, so there is no single event to await.
    async with asyncio.timeout(timeout):
        while not check():  # noqa: ASYNC110
            await asyncio.sleep(0.02)


def settings_for(rtx: Replica, tmp_path: Path, telegram: FakeTelegram,
                 discord_token: str) -> Settings:
    return load_settings({
        "RTX_URL": rtx.url,
        "RTXRELAY_DB": str(tmp_path / "relay.db"),
        "TELEGRAM_TOKEN": telegram.token,
        "TELEGRAM_API_URL": telegram.base_url,
        "DISCORD_TOKEN": discord_token,
    }, env_file=None)


async def telegram_answers(telegram: FakeTelegram) -> None:
    await wait_for(lambda: telegram.parked_polls >= 1)
    user = telegram.make_user("Alice")
    telegram.inject_private_text(user, "from telegram")
    await wait_for(lambda: telegram.chat_text(user["id"]) == expected("from telegram"))


async def discord_answers(discord_fake: FakeDiscord) -> None:
    await discord_fake.wait_until_ready(timeout=10)
    await wait_for(lambda: discord_fake.commands)
    await discord_fake.dispatch_mention("from discord")
    channel = discord_fake.channels["general"]
    await wait_for(lambda: any(m.content == expected("from discord")
                               for m in discord_fake.messages.get(channel, [])))


@pytest.mark.parametrize("discord_token_ok", [True, False], ids=["both-up", "discord-refused"])
async def test_telegram_and_discord_run_together(
    rtx_426: Replica, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture, discord_token_ok: bool,
) -> None:
    async with FakeTelegram() as telegram, FakeDiscord(token="discord-token") as discord_fake:
        point_discord_py_at(discord_fake, monkeypatch)
        settings = settings_for(rtx_426, tmp_path, telegram,
                                "discord-token" if discord_token_ok else "revoked-token")
        stop = asyncio.Event()
        task = asyncio.create_task(run_bots(settings, stop))
        try:
            await telegram_answers(telegram)
            if discord_token_ok:
                await discord_answers(discord_fake)
            else:
                await wait_for(lambda: "Discord rejected DISCORD_TOKEN" in caplog.text)
                assert not task.done(), "Telegram keeps running when Discord cannot start"
        finally:
            stop.set()
            async with asyncio.timeout(30):
                code = await task
    assert code == (0 if discord_token_ok else 1)
    assert "revoked-token" not in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR and discord_token_ok]


async def test_platforms_unreachable_at_start_are_retried_until_they_answer(
    rtx_426: Replica, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The PC boots before its network is up: nothing listens yet where Telegram and Discord are.
    telegram = FakeTelegram(port=free_port())
    discord_fake = FakeDiscord(token="discord-token", port=free_port())
    point_discord_py_at(discord_fake, monkeypatch)
    settings = settings_for(rtx_426, tmp_path, telegram, "discord-token")
    stop = asyncio.Event()
    task = asyncio.create_task(run_bots(settings, stop, retry_delays=(0.1, 0.3)))
    try:
        def retried_twice(name: str) -> bool:
            return caplog.text.count(f"{name} bot cannot start: Cannot reach {name}") >= 2

        await wait_for(lambda: task.done() or (retried_twice("Telegram")
                                               and retried_twice("Discord")))
        assert not task.done(), "an unreachable platform is retried, not given up"
        assert "Retrying in 0.3 s" in caplog.text  # the delays grow, then stay at the last
        async with telegram, discord_fake:  # the network is back
            await telegram_answers(telegram)
            await discord_answers(discord_fake)
            stop.set()
            async with asyncio.timeout(30):
                code = await task
    finally:
        stop.set()
        if not task.done():
            task.cancel()
    assert code == 0
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert "discord-token" not in caplog.text and telegram.token not in caplog.text
