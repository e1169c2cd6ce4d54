"""The bots under test, each running against its fake platform and the Chat with RTX replica.

``telegram_rigs`` and ``discord_rigs`` give a ``make(**options)`` that starts one bot (its own
fake, store and clock) and stops them all on exit; the test modules wrap them in fixtures.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from rtxrelay.backends.chatrtx.backend import ChatRtxBackend
from rtxrelay.backends.chatrtx.launch_url import parse_launch_url
from rtxrelay.bots.discord_bot import DiscordBot, DiscordSettings
from rtxrelay.bots.languages import Languages, MemoryChoices
from rtxrelay.bots.telegram_bot import TelegramBot, TelegramSettings
from rtxrelay.bots.telegram_polling import PollWatch
from rtxrelay.core.backend import Backend
from rtxrelay.core.conversation import DEFAULT_USER_RATE, ConversationLimits, ConversationService
from rtxrelay.core.i18n import Catalogue, Language
from rtxrelay.core.ratelimit import Rate
from rtxrelay.core.store import LanguageChoices
from rtxrelay.storage.sqlite_store import SqliteStore
from tests.fakes.discord_api import FakeDiscord, StoredMessage, point_discord_py_at
from tests.fakes.discord_payloads import FLAG_EPHEMERAL
from tests.fakes.telegram_api import FakeTelegram
from tests.replica.launcher import Replica
from tests.support.virtual_clock import VirtualClock

# The Telegram bot's sleeps jump the shared clock and wait this share of themselves for real:
# 40 ms for the typing indicator's 4 s, 0.6 s for a minute-long rate window.
REAL_SHARE = 0.01
CATALOGUE = Catalogue.load()  # one for the test process, as rtxrelay loads one per process
DISCORD_TOKEN = "discord-test-token"


def languages(choices: LanguageChoices | None = None,
              default: Language = Language.EN) -> Languages:
    return Languages(CATALOGUE, choices or MemoryChoices(), default=default)


# -- Telegram -------------------------------------------------------------------------------------


@dataclass
class TelegramRig:
    fake: FakeTelegram
    bot: TelegramBot
    store: SqliteStore
    clock: VirtualClock
    task: asyncio.Task[None]
    stop: asyncio.Event

    async def settled(self, timeout: float = 20) -> None:
        """Every answer finished. Polls the bot itself: the fake's own waits only look again
        when the fake changes, which an idle bot's long poll does every 10 s."""
        async with asyncio.timeout(timeout):
            while self.bot.answers_in_flight:
                if self.task.done():
                    self.task.result()  # the bot died: show why
                await asyncio.sleep(0.02)

    async def stopped(self, timeout: float = 15) -> None:
        """Stop the bot (a restart's first half); its fake stays up."""
        self.stop.set()
        async with asyncio.timeout(timeout):
            await self.task


@contextlib.asynccontextmanager
async def telegram_rigs(rtx: Replica, tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    stack: list[TelegramRig] = []
    http = aiohttp.ClientSession()

    async def make(*, url: str | None = None, per_chat_rate: tuple[int, float] | None = None,
                   poll_watch: PollWatch | None = None,
                   backend: Callable[[aiohttp.ClientSession], Backend] | None = None,
                   user_rate: Rate | None = None, db: Path | None = None,
                   fake: FakeTelegram | None = None, default_language: Language = Language.EN,
                   fake_options: dict[str, Any] | None = None,
                   **settings: object) -> TelegramRig:
        """``backend``: another backend than the Chat with RTX replica (made on the rig's
        HTTP session). ``db`` and ``fake``: an earlier rig's, for a restart."""
        if fake is None:
            fake = FakeTelegram(per_chat_rate=per_chat_rate,
                                clock=VirtualClock(1_000.0, real_share=REAL_SHARE),
                                **(fake_options or {}))
            await fake.__aenter__()
        clock = fake.clock
        assert isinstance(clock, VirtualClock)
        store = SqliteStore(db or tmp_path / f"relay{len(stack)}.db")
        await store.open()
        service = ConversationService(
            backend(http) if backend
            else ChatRtxBackend(http, parse_launch_url(url or rtx.url)),
            store, ConversationLimits(user_rate=user_rate or DEFAULT_USER_RATE))
        config = TelegramSettings(token=fake.token, api_base_url=fake.base_url, **settings)
        bot = TelegramBot(service, config, languages(store, default_language), clock=clock,
                          sleep=clock.sleep, poll_watch=poll_watch)
        stop = asyncio.Event()
        task = asyncio.create_task(bot.run(stop))
        rig = TelegramRig(fake, bot, store, clock, task, stop)
        stack.append(rig)
        # This bot's long poll (a restarted bot's predecessor has none: it stopped first).
        await fake.wait_until(lambda: fake.parked_polls >= 1, timeout=10)
        return rig

    try:
        yield make
    finally:
        fakes: list[FakeTelegram] = []
        for rig in reversed(stack):
            rig.stop.set()
            async with asyncio.timeout(15):
                await rig.task
            if rig.fake not in fakes:
                fakes.append(rig.fake)
            await rig.store.close()
        for fake in fakes:
            await fake.__aexit__(None, None, None)
        await http.close()


# -- Discord --------------------------------------------------------------------------------------


class SkewClock:
    """Real time plus a jump the test controls: the bot and the fake share it, so a test can
    step past the 15-minute interaction-token lifetime without waiting for it."""

    def __init__(self) -> None:
        self.offset = 1_000.0

    def __call__(self) -> float:
        return time.monotonic() + self.offset

    def jump(self, seconds: float) -> None:
        self.offset += seconds


@dataclass
class DiscordRig:
    fake: FakeDiscord
    bot: DiscordBot
    store: SqliteStore
    clock: SkewClock
    task: asyncio.Task[None]
    stop: asyncio.Event

    def answers_in(self, channel: str) -> list[StoredMessage]:
        cid = self.fake.channels.get(channel, channel)
        return [m for m in self.fake.messages.get(cid, [])
                if m.author_id == self.fake.bot_id and not m.deleted
                and not m.payload["flags"] & FLAG_EPHEMERAL]

    def text_in(self, channel: str) -> str:
        return "\n".join(m.content for m in self.answers_in(channel))

    async def wait(self, check: Callable[[], Any], timeout: float = 20) -> None:
        async with asyncio.timeout(timeout):
            while not check():
                if self.task.done():
                    self.task.result()  # the bot died: show why
                await asyncio.sleep(0.02)

    async def settled(self, timeout: float = 20) -> None:
        """Every answer finished, including its final Retry-button edit."""
        await self.wait(lambda: not self.bot.answers_in_flight, timeout)


@contextlib.asynccontextmanager
async def discord_rigs(rtx: Replica, tmp_path: Path,
                       monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Callable[..., Any]]:
    rigs: list[DiscordRig] = []
    http = aiohttp.ClientSession()

    async def make(*, url: str | None = None, fake_options: dict[str, Any] | None = None,
                   wait_ready: bool = True,
                   configure: Callable[[FakeDiscord], dict[str, Any]] | None = None,
                   user_rate: Rate | None = None,
                   backend: Callable[[aiohttp.ClientSession], Backend] | None = None,
                   db: Path | None = None, default_language: Language = Language.EN,
                   **settings: Any) -> DiscordRig:
        clock = SkewClock()
        fake = FakeDiscord(**{"token": DISCORD_TOKEN, "clock": clock, **(fake_options or {})})
        await fake.__aenter__()
        if configure is not None:  # settings that name the fake's ids (roles, channels)
            settings.update(configure(fake))
        point_discord_py_at(fake, monkeypatch)
        store = SqliteStore(db or tmp_path / f"relay{len(rigs)}.db")
        await store.open()
        limits = ConversationLimits(user_rate=user_rate or DEFAULT_USER_RATE)
        service = ConversationService(
            backend(http) if backend
            else ChatRtxBackend(http, parse_launch_url(url or rtx.url)),
            store, limits)
        bot = DiscordBot(service, DiscordSettings(token=DISCORD_TOKEN, **settings),
                         languages(store, default_language), clock=clock,
                         client_options={"guild_ready_timeout": 0.05})

        async def no_identify_delay(shard_id: int | None, *, initial: bool = False) -> None:
            return None  # discord.py sleeps 5 s before re-IDENTIFY; tests need not

        bot.client.before_identify_hook = no_identify_delay  # type: ignore[method-assign]
        stop = asyncio.Event()
        rig = DiscordRig(fake, bot, store, clock, asyncio.create_task(bot.run(stop)), stop)
        rigs.append(rig)
        if wait_ready:
            await fake.wait_until_ready(timeout=10)
            await rig.wait(lambda: bot.client.is_ready() and fake.commands, timeout=10)
        return rig

    try:
        yield make
    finally:
        for rig in reversed(rigs):
            rig.stop.set()
            async with asyncio.timeout(20):
                await asyncio.gather(rig.task, return_exceptions=True)
            await rig.fake.__aexit__(None, None, None)
            await rig.store.close()
        await http.close()
