"""TELEGRAM_PROXY and DISCORD_PROXY: the real bots reach their fakes through loopback proxies.

The bots are pointed at names under ``.invalid`` that never resolve (RFC 2606); only the proxy
maps them to the fakes (``hosts=``). So a question can be answered only if every request the
bot makes, Telegram's long poll and Discord's gateway websocket included, went through the
proxy: one that bypassed it would fail to resolve, and the test would time out waiting.

Real Telegram and Discord are HTTPS (and WSS) only, which HTTP clients reach through an HTTP
proxy with CONNECT tunnels. The fakes speak TLS here too (Discord's fake natively, Telegram's
behind a ``TlsFront``), with certificates from a throwaway CA: a plain ``http://`` URL would
make the clients forward requests to the proxy instead of tunnelling, which is not the path
users take. SOCKS5 tunnels every destination, so Telegram's fake is reached in plain HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import discord.gateway
import discord.http
import pytest
import trustme
import yarl

from rtxrelay.backends.chatrtx.answer_html import convert_answer
from rtxrelay.backends.chatrtx.backend import ChatRtxBackend
from rtxrelay.backends.chatrtx.launch_url import parse_launch_url
from rtxrelay.bots.discord_bot import DiscordBot, DiscordSettings, rest_connector
from rtxrelay.bots.telegram_bot import TelegramBot, TelegramSettings
from rtxrelay.core.conversation import ConversationService
from rtxrelay.core.env import Env
from rtxrelay.storage.sqlite_store import SqliteStore
from tests.bots.rigs import languages
from tests.fakes.discord_api import FakeDiscord
from tests.fakes.telegram_api import FakeTelegram
from tests.replica import fake_model
from tests.replica.launcher import Replica
from tests.support.proxies import HttpConnectProxy, Socks5Proxy, TlsFront
from tests.support.virtual_clock import VirtualClock

TELEGRAM_HOST = "api.telegram.invalid"
DISCORD_HOST = "discord.invalid"
CREDENTIALS = ("relay", "pa55word")
DISCORD_TOKEN = "discord-test-token"


def expected(question: str) -> str:
    return convert_answer(fake_model.answer_text(question, [])).text


@dataclass
class Tls:
    """A throwaway CA and its PEM file (for clients that read SSL_CERT_FILE)."""

    ca: trustme.CA
    ca_file: Path

    def server_context(self, *names: str) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ca.issue_cert(*names).configure_cert(context)
        return context

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        return context


@pytest.fixture
def tls(tmp_path: Path) -> Tls:
    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    return Tls(ca, ca_file)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def service(rtx_426: Replica, http: aiohttp.ClientSession,
                  tmp_path: Path) -> AsyncIterator[ConversationService]:
    async with SqliteStore(tmp_path / "relay.db") as store:
        yield ConversationService(ChatRtxBackend(http, parse_launch_url(rtx_426.url)), store)


# -- the reported crash ---------------------------------------------------------------------------


@pytest.mark.parametrize("proxy", ["socks5://127.0.0.1:1080", "http://proxy.example:3128",
                                   "socks5://user:secret@127.0.0.1:1080"])
async def test_telegram_bot_builds_with_a_proxy(proxy: str, http: aiohttp.ClientSession,
                                                tmp_path: Path) -> None:
    # Issue 14: any TELEGRAM_PROXY raised "The parameter `proxy` may only be set, if no
    # request instance was set" while the application was built. Building opens no connection.
    settings = TelegramSettings.from_env(Env({"TELEGRAM_TOKEN": "123:abc",
                                              "TELEGRAM_PROXY": proxy}))
    assert settings.proxy == proxy
    backend = ChatRtxBackend(http, parse_launch_url("http://127.0.0.1:9?cookie=x"))
    service = ConversationService(backend, SqliteStore(tmp_path / "unused.db"))
    bot = TelegramBot(service, settings, languages())
    assert bot.application.updater is not None


# -- Telegram -------------------------------------------------------------------------------------


@dataclass
class TelegramRun:
    bot: TelegramBot
    task: asyncio.Task[None]


@contextlib.asynccontextmanager
async def running_telegram_bot(service: ConversationService, fake: FakeTelegram, *,
                               api_url: str, proxy: str) -> AsyncIterator[TelegramRun]:
    """The bot polling ``api_url`` through ``proxy``, stopped (answers finished) on exit."""
    clock = fake.clock
    assert isinstance(clock, VirtualClock)
    settings = TelegramSettings(token=fake.token, api_base_url=api_url, proxy=proxy)
    bot = TelegramBot(service, settings, languages(), clock=clock, sleep=clock.sleep)
    stop = asyncio.Event()
    task = asyncio.create_task(bot.run(stop))
    try:
        # The long poll is parked at the fake: getUpdates came through the proxy too.
        await _until(lambda: fake.parked_polls >= 1, task, timeout=15)
        yield TelegramRun(bot, task)
    finally:
        stop.set()
        async with asyncio.timeout(15):
            await task


async def ask_in_private(fake: FakeTelegram, run: TelegramRun) -> None:
    """A question in a private chat gets its answer, streamed as drafts."""
    user = fake.make_user("Alice")
    question = "through the proxy [len=600]"
    fake.inject_private_text(user, question)
    want = expected(question)
    await fake.wait_until(lambda: fake.chat_text(user["id"]) == want, timeout=20)
    await _until(lambda: not run.bot.answers_in_flight, run.task)
    assert fake.drafts, "the answer streamed as drafts before it landed"


async def test_telegram_through_an_http_connect_proxy(
        service: ConversationService, tls: Tls, monkeypatch: pytest.MonkeyPatch) -> None:
    # httpx (under PTB) verifies with the CA in SSL_CERT_FILE; read when the bot is built.
    monkeypatch.setenv("SSL_CERT_FILE", str(tls.ca_file))
    async with (
        HttpConnectProxy(hosts={TELEGRAM_HOST: "127.0.0.1"}) as proxy,
        FakeTelegram(clock=VirtualClock(1_000.0)) as fake,
        TlsFront(_port(fake.base_url), tls.server_context(TELEGRAM_HOST)) as front,
    ):
        api_url = f"https://{TELEGRAM_HOST}:{front.port}/bot"
        async with running_telegram_bot(service, fake, api_url=api_url, proxy=proxy.url) as run:
            await ask_in_private(fake, run)
        # The long poll has its own connection pool: at least one tunnel for it, one for the rest.
        tunnels = proxy.tunnels_to(TELEGRAM_HOST, front.port)
        assert len(tunnels) >= 2, (proxy.tunnels, proxy.refused)


async def test_telegram_through_a_socks5_proxy_with_credentials(
        service: ConversationService) -> None:
    async with (
        Socks5Proxy(hosts={TELEGRAM_HOST: "127.0.0.1"}, credentials=CREDENTIALS) as proxy,
        FakeTelegram(clock=VirtualClock(1_000.0)) as fake,
    ):
        port = _port(fake.base_url)
        api_url = f"http://{TELEGRAM_HOST}:{port}/bot"
        async with running_telegram_bot(service, fake, api_url=api_url, proxy=proxy.url) as run:
            await ask_in_private(fake, run)
        assert len(proxy.tunnels_to(TELEGRAM_HOST, port)) >= 2, (proxy.tunnels, proxy.refused)


async def test_no_proxy_in_the_environment_does_not_bypass_telegram_proxy(
        service: ConversationService) -> None:
    # conftest lists 127.0.0.1 in NO_PROXY; httpx reads NO_PROXY only for proxies it takes from
    # the environment, never for one given as proxy=. So TELEGRAM_PROXY is used even for a host
    # that NO_PROXY lists (a corporate NO_PROXY may list more than loopback): pinned here.
    assert "127.0.0.1" in os.environ["NO_PROXY"].split(",")
    async with (
        Socks5Proxy() as proxy,
        FakeTelegram(clock=VirtualClock(1_000.0)) as fake,
        running_telegram_bot(service, fake, api_url=fake.base_url, proxy=proxy.url),
    ):
        # Started: getMe, setMyCommands, deleteWebhook on one pool; the parked poll on its own.
        tunnels = proxy.tunnels_to("127.0.0.1", _port(fake.base_url))
        assert len(tunnels) >= 2, (proxy.tunnels, proxy.refused)


# -- Discord --------------------------------------------------------------------------------------


async def test_discord_through_an_http_proxy_with_credentials(
        service: ConversationService, tls: Tls, monkeypatch: pytest.MonkeyPatch) -> None:
    # discord.py speaks HTTP proxies only (aiohttp has no SOCKS). REST and the gateway are both
    # https/wss here, so both are CONNECT tunnels, as they are to discord.com.
    async with (
        HttpConnectProxy(hosts={DISCORD_HOST: "127.0.0.1"}, credentials=CREDENTIALS) as proxy,
        FakeDiscord(token=DISCORD_TOKEN,
                    ssl_context=tls.server_context(DISCORD_HOST, "127.0.0.1")) as fake,
    ):
        # discord.py has no base-URL option (point_discord_py_at patches the same two
        # attributes with the fake's 127.0.0.1 URLs; here they carry the proxy-only name).
        monkeypatch.setattr(discord.http.Route, "BASE",
                            fake.base_url.replace("127.0.0.1", DISCORD_HOST))
        monkeypatch.setattr(discord.gateway.DiscordWebSocket, "DEFAULT_GATEWAY",
                            yarl.URL(fake.gateway_url.replace("127.0.0.1", DISCORD_HOST)))
        settings = DiscordSettings.from_env(Env({"DISCORD_TOKEN": DISCORD_TOKEN,
                                                 "DISCORD_PROXY": proxy.url}))
        bot = DiscordBot(service, settings, languages(), client_options={
            "guild_ready_timeout": 0.05,
            "connector": rest_connector(ssl=tls.client_context()),  # trusts the throwaway CA
        })

        async def no_identify_delay(shard_id: int | None, *, initial: bool = False) -> None:
            return None  # discord.py sleeps 5 s before re-IDENTIFY; tests need not

        bot.client.before_identify_hook = no_identify_delay  # type: ignore[method-assign]
        stop = asyncio.Event()
        task = asyncio.create_task(bot.run(stop))
        try:
            await fake.wait_until_ready(timeout=15)
            await _until(lambda: bot.client.is_ready() and bool(fake.commands), task)
            question = "through the proxy [len=1500] [delay=0.01]"
            interaction = await fake.dispatch_slash_command("ask", {"question": question})
            await interaction.wait_acked(timeout=3)
            want = expected(question)
            general = fake.channels["general"]
            await _until(lambda: any(m.content == want for m in fake.messages.get(general, [])),
                         task)
            await _until(lambda: not bot.answers_in_flight, task)
            original = fake.message(interaction.original_message_id or "")
            assert original.content == want
            assert original.edits >= 2, "the answer streamed by editing the deferred response"

            tunnels = proxy.tunnels_to(DISCORD_HOST, fake.port)
            # REST, and the gateway's own connection. (Not asserting that the proxy refused
            # nobody: anything on the machine may probe a listening port, `rtxrelay discover`
            # included.)
            assert len(tunnels) >= 2, (proxy.tunnels, proxy.refused)
            gateway = bot.client.ws.socket.get_extra_info("sockname")[:2]
            assert gateway in {t.client for t in tunnels}, "the live gateway is a tunnel"
            assert {r.peer for r in fake.requests} <= {_peer(t.upstream) for t in tunnels}
        finally:
            stop.set()
            async with asyncio.timeout(20):
                await asyncio.gather(task, return_exceptions=True)


# -- helpers --------------------------------------------------------------------------------------


def _port(url: str) -> int:
    port = urlsplit(url).port
    assert port is not None
    return port


def _peer(address: tuple[str, int]) -> str:
    return f"{address[0]}:{address[1]}"


async def _until(check: Callable[[], Any], task: asyncio.Task[None], timeout: float = 20) -> None:
    """Poll ``check`` (bot state, which no fake announces) while the bot runs; if the bot
    dies meanwhile, its error shows at once instead of a timeout."""
    async with asyncio.timeout(timeout):
        while not check():
            if task.done():
                task.result()  # the bot died: show why
            await asyncio.sleep(0.02)

