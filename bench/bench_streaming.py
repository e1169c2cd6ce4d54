"""The streaming engine under load: N simultaneous conversations against the fake Bot API.

    .venv/bin/python bench/bench_streaming.py            # full: N = 10, 100, 1,000 (~2.5 min)
    .venv/bin/python bench/bench_streaming.py --quick    # smoke: N = 10, short answers (~12 s)

Each run is a fresh worker process (so its RSS and CPU are its own) holding the fake Telegram
Bot API (tests/fakes/telegram_api.py, flood model on, in its own thread and event loop) and a
real python-telegram-bot ``Bot`` pointed at it. N conversations start within ``--stagger`` s;
each streams the same synthetic answer (``--tokens-per-second``, ~4.5 chars a token) through:

- **rtxrelay**: ``StreamingReply(TelegramSink(...), PRIVATE or GROUP).run(updates)``, private
  chats in edit mode (``use_drafts=False``);
- **naive**: what most bots do — typing once, send on the first token, edit on every token,
  sleep out ``retry_after`` on a 429; then edit in the final text until it lands;
- **rtxrelay-drafts** (``--drafts``, on with ``--quick``): rtxrelay with private chats
  streaming into drafts, as the shipped bot does by default.

``--platform discord`` does the same against the fake Discord REST API
(tests/fakes/discord_api.py, per-bucket 429s on) with a real discord.py ``Client`` (REST only,
no gateway): one text channel per conversation, rtxrelay is
``StreamingReply(DiscordSink(channel, ...), PROFILE)`` (the @mention/DM path of
bots/discord_bot.py), naive sends on the first token and edits on every token, discord.py
waiting out 429s itself. Discord has no drafts.

Contenders run side by side for every N, alternating which goes first, each with a fresh fake.
Figures come from what the fake recorded. See bench/README.md for what every row means.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import math
import os
import platform
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple, Protocol, TypeVar

# PTB builds RetryAfter through a deprecated property unless this is set (as in tests/conftest).
os.environ.setdefault("PTB_TIMEDELTA", "true")

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
if str(REPO_DIR) not in sys.path:  # the fake Bot API lives in tests/fakes
    sys.path.insert(0, str(REPO_DIR))

import discord  # noqa: E402
import discord.gateway  # noqa: E402
import discord.http  # noqa: E402
import psutil  # noqa: E402
import yarl  # noqa: E402
from _table import fmt, percentile, print_table, ratio  # noqa: E402
from aiohttp import ClientError  # noqa: E402
from telegram import Bot  # noqa: E402
from telegram.error import BadRequest, RetryAfter, TelegramError  # noqa: E402
from telegram.request import HTTPXRequest  # noqa: E402

from rtxrelay.bots import discord_bot, telegram_bot  # noqa: E402
from rtxrelay.bots.discord_bot import PROFILE as DISCORD_PROFILE  # noqa: E402
from rtxrelay.bots.discord_bot import DiscordSink, control_view  # noqa: E402
from rtxrelay.bots.telegram_bot import (  # noqa: E402
    GROUP,
    MAX_IN_FLIGHT,
    PRIVATE,
    BoundedRequest,
    TelegramSink,
)
from rtxrelay.core.backend import Started, TextSoFar  # noqa: E402
from rtxrelay.core.conversation import Finished, ReplyUpdate  # noqa: E402
from rtxrelay.core.ratelimit import Rate, SlidingWindowLimiter  # noqa: E402
from rtxrelay.core.store import TurnStatus  # noqa: E402
from rtxrelay.core.streaming import (  # noqa: E402
    MessageSink,
    PlatformProfile,
    RetryLater,
    StreamingReply,
)
from tests.fakes.discord_api import FakeDiscord  # noqa: E402
from tests.fakes.discord_payloads import text_channel  # noqa: E402
from tests.fakes.telegram_api import FakeTelegram  # noqa: E402

try:  # POSIX only; psutil is the main path so the bench also runs on Windows
    import resource
except ImportError:  # pragma: no cover - Windows
    resource = None  # type: ignore[assignment]

OURS = "rtxrelay"
NAIVE = "naive"
DRAFTS = "rtxrelay-drafts"
CONTENDERS = (OURS, NAIVE)
HEADER_RATIO = "ratio (naive / rtxrelay)"
DEFAULT_SIZES = (10, 100, 1_000)
CURSOR_MARK = "▍"  # the engine's cursor glyph; it must not survive in a final text

# The fake's flood model, the same for every contender. Telegram's Bot FAQ: "avoid sending
# more than one message per second" in a chat (short bursts are tolerated, then 429) and "no
# more than 20 messages per minute" in a group; edits are undocumented but draw 429s in
# practice (docs/platforms.md#telegram-rate-limits). A 3-in-3-s window averages 1/s yet lets a
# burst of 3 through, which is how the real limit behaves; (1, 1.0) would punish any two calls
# 0.9 s apart.
PER_CHAT_RATE = (3, 3.0)
GROUP_RATE = (20, 60.0)
# The shipped bot's pool: one connection per request allowed in flight (BoundedRequest); its
# pool timeout stays HTTPXRequest's default (1 s), as in the shipped bot.
DEFAULT_POOL_SIZE = MAX_IN_FLIGHT
# Discord documents no per-route numbers (only "parse the X-RateLimit headers"); the limit
# observed by the community for creating and editing messages is 5 per 5 s per channel. The
# fake applies it as a sliding window to every bucket, which it keys on route + major
# parameter (channel_id): creates and edits each get 5 in any 5 s per channel. It models no
# global limit (Discord's 50 requests/s per bot). The same for every contender.
DISCORD_BUCKET = (5, 5.0)
DRAIN_EVERY = 0.5  # s between moves of the fake's records into compact form (bounds its RAM)
RSS_EVERY = 0.1  # s between RSS samples

T = TypeVar("T")

# -- the synthetic answer -----------------------------------------------------------------------

_VOCABULARY = (
    "tensor cores multiply small matrices in one step so a model runs faster on the same card "
    "memory bandwidth often limits how quickly each token appears while the weights stream "
    "from video memory into the shader units the driver schedules many warps at once and a "
    "quantised model needs less memory which leaves room for a longer context window retrieval "
    "finds the passages that match your question and the model writes its answer from them"
)
_WORDS = tuple(_VOCABULARY.split())


def answer_text(chars: int, seed: int = 7) -> str:
    """Plain sentences in paragraphs: no Markdown syntax, no ``& < >``, no entities, so the
    text Telegram shows equals the Markdown source up to whitespace."""
    rng = random.Random(seed)
    paragraphs: list[str] = []
    sentences: list[str] = []
    size = 0
    while size < chars:
        words = [rng.choice(_WORDS) for _ in range(rng.randint(6, 16))]
        if rng.random() < 0.3:
            words[rng.randrange(2, len(words) - 1)] += ","
        sentence = " ".join(words).capitalize() + "."
        sentences.append(sentence)
        size += len(sentence) + 1
        if len(sentences) == 4:
            paragraphs.append(" ".join(sentences))
            sentences = []
    if sentences:
        paragraphs.append(" ".join(sentences))
    return "\n\n".join(paragraphs)


def normalise(text: str) -> str:
    """Compare what was shown with what was streamed: no cursor, whitespace folded."""
    return " ".join(text.replace(CURSOR_MARK, " ").split())


@dataclass(frozen=True)
class AnswerPlan:
    """One answer cut into tokens, and when each token arrives after a conversation starts."""

    text: str
    ends: tuple[int, ...]  # token i is text[ends[i-1]:ends[i]]
    visible: tuple[int, ...]  # len(normalise(text[:ends[i]])): what must show for token i
    offsets: tuple[float, ...]  # arrival of token i, seconds after the conversation started
    norm_text: str

    @classmethod
    def build(cls, chars: int, rate: float, first_token: float) -> AnswerPlan:
        text = answer_text(chars)
        # Short words are one token, longer ones split: ~4.5 characters a token, close to what
        # an LLM tokenizer does to English; whitespace leads, as in BPE vocabularies.
        tokens = re.findall(r"\s*\S{1,5}", text)
        assert "".join(tokens) == text
        ends: list[int] = []
        at = 0
        for token in tokens:
            at += len(token)
            ends.append(at)
        visible = tuple(len(normalise(text[:end])) for end in ends)
        offsets = tuple(first_token + i / rate for i in range(len(tokens)))
        return cls(text, tuple(ends), visible, offsets, normalise(text))

    @property
    def duration(self) -> float:
        return self.offsets[-1]

    def shown_length(self, text: str) -> int:
        """How much of the answer a message shows (0 for a status like "💭 Thinking…")."""
        shown = normalise(text)
        return len(shown) if shown and self.norm_text.startswith(shown) else 0


async def answer_stream(
    plan: AnswerPlan, started: float, handover_lags: list[float]
) -> AsyncIterator[ReplyUpdate]:
    """Thinking, then the text so far as tokens arrive, then Finished.

    Tokens arrive on a fixed schedule whatever the consumer does (a model does not wait for
    the bot). A consumer that was busy gets everything that arrived meanwhile in one TextSoFar,
    as a Gradio "text so far" stream delivers it: the kindest stream for a slow consumer.
    ``handover_lags`` gets, per yield, how long its oldest token waited to be handed over.
    """
    yield Started()
    count = len(plan.ends)
    index = 0
    while index < count:
        delay = started + plan.offsets[index] - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        now = time.monotonic()
        first = index
        index += 1
        while index < count and started + plan.offsets[index] <= now:
            index += 1
        handover_lags.append(now - (started + plan.offsets[first]))
        start = plan.ends[first - 1] if first else 0
        yield TextSoFar(plan.text[: plan.ends[index - 1]], plan.text[start : plan.ends[index - 1]])
    yield Finished(plan.text, TurnStatus.COMPLETE)


# -- the platform abstraction -------------------------------------------------------------------


@dataclass(frozen=True)
class Chat:
    chat_id: int
    kind: str  # "private" or "group" (Telegram), "channel" (Discord)


class Request(NamedTuple):
    """One API request as the fake saw it, compacted (the fake's own records are dropped)."""

    time: float  # time.monotonic() when the fake answered
    chat_id: int
    method: str
    status: int
    shown: int  # AnswerPlan.shown_length of the text it put on screen (0 if none or failed)
    counted: bool  # a method the flood model counts (a message sent or edited)


class Platform(Protocol):
    """What a platform adds to the bench: its fake, its sink, the naive bot's three calls and
    how to read requests, 429s and final texts back from the fake. Telegram and Discord are
    below."""

    name: str
    kinds: tuple[str, ...]  # the chat kinds it has, in table order

    async def start(self, plan: AnswerPlan) -> None: ...
    async def stop(self) -> None: ...
    async def make_chats(self, kinds: Sequence[str]) -> list[Chat]: ...
    def profile(self, chat: Chat, *, drafts: bool) -> PlatformProfile: ...
    def sink(self, chat: Chat) -> MessageSink: ...
    # The bot-wide rate the shipped bot shares between its replies.
    bot_wide_writes: Rate

    # The naive bot's calls; 429 raises RetryLater, "not modified" is success.
    async def naive_send(self, chat: Chat, text: str) -> object: ...
    async def naive_edit(self, chat: Chat, handle: object, text: str) -> None: ...
    async def naive_typing(self, chat: Chat) -> None: ...

    async def drain(self, timeout: float = 30.0) -> list[Request]:
        """Requests recorded since the last drain."""
        ...

    async def final_texts(self, chats: Sequence[Chat]) -> dict[int, str]: ...
    def client_errors(self) -> Counter[str]: ...
    def server_thread_id(self) -> int | None: ...


class FakeThread:
    """Runs the fake API server on its own event loop in a thread of this process, so its CPU
    can be told apart from the bot's (psutil per-thread times) while the clock stays shared."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, name="fake-api", daemon=True)
        self.native_id: int | None = None

    def start(self) -> None:
        self._thread.start()

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self.native_id = threading.get_native_id()
        self._loop.run_forever()

    async def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return await asyncio.wait_for(asyncio.wrap_future(future), timeout)

    async def call(self, fn: Callable[[], T], timeout: float = 30.0) -> T:
        async def wrapped() -> T:
            return fn()

        return await self.run(wrapped(), timeout)

    def stop(self, timeout: float = 10.0) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)
        if not self._thread.is_alive():
            self._loop.close()


class CountingRequest(BoundedRequest):
    """The bot's own transport (at most ``max_in_flight`` requests at once, see
    bots/telegram_bot.BoundedRequest), counting requests that never got an HTTP answer (pool
    timeouts, read timeouts): the client-side symptom of too many requests in flight.
    ``max_in_flight`` 0 removes the cap, to show what it is for."""

    def __init__(self, max_in_flight: int = MAX_IN_FLIGHT, **kwargs: Any) -> None:
        unlimited = max_in_flight <= 0
        super().__init__(max_in_flight=10**6 if unlimited else max_in_flight, **kwargs)
        self.errors: Counter[str] = Counter()

    async def do_request(self, *args: Any, **kwargs: Any) -> tuple[int, bytes]:
        try:
            return await super().do_request(*args, **kwargs)
        except Exception as exc:
            self.errors[type(exc).__name__] += 1
            raise


_SHOWS = frozenset({"sendMessage", "editMessageText", "sendMessageDraft",
                    # Discord (DiscordPlatform keeps the fake's route key as the method)
                    "POST /channels/{channel_id}/messages",
                    "PATCH /channels/{channel_id}/messages/{message_id}"})
KIND_ORDER = ("private", "group", "channel")


class TelegramPlatform:
    name = "telegram"
    bot_wide_writes = telegram_bot.BOT_WIDE_WRITES
    kinds = ("private", "group")

    def __init__(self, pool_size: int = DEFAULT_POOL_SIZE,
                 max_in_flight: int = MAX_IN_FLIGHT) -> None:
        self._thread = FakeThread()
        self._fake: FakeTelegram | None = None
        self._request = CountingRequest(max_in_flight, connection_pool_size=pool_size)
        self._bot: Bot | None = None
        self._plan: AnswerPlan | None = None

    @property
    def fake(self) -> FakeTelegram:
        assert self._fake is not None
        return self._fake

    @property
    def bot(self) -> Bot:
        assert self._bot is not None
        return self._bot

    async def start(self, plan: AnswerPlan) -> None:
        self._plan = plan
        self._thread.start()

        async def enter() -> FakeTelegram:
            fake = FakeTelegram(per_chat_rate=PER_CHAT_RATE, group_rate=GROUP_RATE,
                                clock=time.monotonic)
            return await fake.__aenter__()

        self._fake = await self._thread.run(enter())
        self._bot = Bot(self.fake.token, base_url=self.fake.base_url, request=self._request,
                        get_updates_request=HTTPXRequest(connection_pool_size=1))
        await asyncio.wait_for(self.bot.initialize(), 30)

    async def stop(self) -> None:
        if self._bot is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._bot.shutdown(), 30)
        if self._fake is not None:
            await self._thread.run(self._fake.__aexit__(None, None, None))
        self._thread.stop()

    async def make_chats(self, kinds: Sequence[str]) -> list[Chat]:
        def make() -> list[Chat]:
            chats = []
            for n, kind in enumerate(kinds):
                if kind == "private":
                    chat = self.fake.start_private_chat(self.fake.make_user(f"User{n}"))
                else:
                    chat = self.fake.make_group(f"Group {n}")
                chats.append(Chat(int(chat["id"]), kind))
            return chats

        return await self._thread.call(make)

    def profile(self, chat: Chat, *, drafts: bool) -> PlatformProfile:
        return replace(PRIVATE, use_drafts=drafts) if chat.kind == "private" else GROUP

    def sink(self, chat: Chat) -> MessageSink:
        return TelegramSink(self.bot, chat.chat_id, reply_to=None, thread_id=None, draft_id=1)

    async def naive_send(self, chat: Chat, text: str) -> object:
        message = await _mapped(self.bot.send_message(chat.chat_id, text))
        return None if message is None else message.message_id

    async def naive_edit(self, chat: Chat, handle: object, text: str) -> None:
        await _mapped(self.bot.edit_message_text(text, chat_id=chat.chat_id,
                                                 message_id=int(handle)))  # type: ignore[call-overload]

    async def naive_typing(self, chat: Chat) -> None:
        await _mapped(self.bot.send_chat_action(chat.chat_id, "typing"))

    async def drain(self, timeout: float = 30.0) -> list[Request]:
        return await self._thread.call(self._drain_in_fake, timeout)

    def _drain_in_fake(self) -> list[Request]:
        """Runs on the fake's loop: take its records, keep what the bench needs, and drop the
        rest (every Call keeps its text, every edit the old text) so RSS stays the bot's."""
        fake, plan = self.fake, self._plan
        assert plan is not None
        calls, fake.calls = fake.calls, []
        fake.drafts.clear()
        fake.chat_actions.clear()
        for record in fake.messages.values():
            record.history.clear()
        requests = []
        for call in calls:
            shown = 0
            if call.ok and call.method in _SHOWS:
                text = call.result.get("text", "") if isinstance(call.result, dict) \
                    else str(call.params.get("text") or "")
                shown = plan.shown_length(text)
            requests.append(Request(call.time, int(call.params.get("chat_id") or 0),
                                    call.method, call.status, shown,
                                    call.method in fake.flood_methods))
        return requests

    async def final_texts(self, chats: Sequence[Chat]) -> dict[int, str]:
        def read() -> dict[int, str]:
            pages: dict[int, list[tuple[int, str]]] = defaultdict(list)
            for (chat_id, message_id), record in self.fake.messages.items():
                if record.from_bot and not record.deleted:
                    pages[chat_id].append((message_id, record.text))
            return {c.chat_id: "\n".join(t for _, t in sorted(pages[c.chat_id])) for c in chats}

        return await self._thread.call(read)

    def client_errors(self) -> Counter[str]:
        return self._request.errors

    def server_thread_id(self) -> int | None:
        return self._thread.native_id


async def _mapped(call: Awaitable[T]) -> T | None:
    """PTB errors in the engine's terms, as TelegramSink maps them."""
    try:
        return await call
    except RetryAfter as exc:
        wait = exc.retry_after
        raise RetryLater(wait if isinstance(wait, int | float) else wait.total_seconds()) from exc
    except BadRequest as exc:
        if "not modified" in str(exc).lower():
            return None
        raise


_DISCORD_SEND = "POST /channels/{channel_id}/messages"
_DISCORD_EDIT = "PATCH /channels/{channel_id}/messages/{message_id}"
_DISCORD_COUNTED = frozenset({_DISCORD_SEND, _DISCORD_EDIT})


class DiscordPlatform:
    """The fake Discord REST API and a real discord.py ``Client`` logged in over REST only
    (no gateway: streaming needs none). One text channel per conversation, added to the
    fake's guild; the bot writes through ``client.get_partial_messageable(channel_id)``."""

    name = "discord"
    kinds = ("channel",)

    def __init__(self, pool_size: int = 0, max_in_flight: int = 0) -> None:
        del pool_size, max_in_flight  # discord.py's aiohttp connector has no cap (limit=0)
        self._thread = FakeThread()
        self._fake: FakeDiscord | None = None
        self._client: discord.Client | None = None
        self._plan: AnswerPlan | None = None
        self._errors: Counter[str] = Counter()
        self._channels: dict[int, discord.PartialMessageable] = {}

    @property
    def fake(self) -> FakeDiscord:
        assert self._fake is not None
        return self._fake

    @property
    def client(self) -> discord.Client:
        assert self._client is not None
        return self._client

    async def start(self, plan: AnswerPlan) -> None:
        self._plan = plan
        self._thread.start()

        async def enter() -> FakeDiscord:
            fake = FakeDiscord(bucket_limit=DISCORD_BUCKET, clock=time.monotonic)
            return await fake.__aenter__()

        self._fake = await self._thread.run(enter())
        # As tests/fakes/discord_api.point_discord_py_at, for a whole (worker) process.
        discord.http.Route.BASE = self.fake.base_url
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(self.fake.gateway_url)
        # The shipped bot's options that matter over REST (bots/discord_bot.DiscordBot).
        self._client = discord.Client(intents=discord.Intents.none(),
                                      allowed_mentions=discord.AllowedMentions.none(),
                                      max_ratelimit_timeout=30.0)
        await asyncio.wait_for(self.client.login(self.fake.token), 30)
        self._count_client_errors()

    def _count_client_errors(self) -> None:
        """Count requests that got no HTTP answer (connection errors, timeouts)."""
        http = self.client.http
        request = http.request

        async def counted(*args: Any, **kwargs: Any) -> Any:
            try:
                return await request(*args, **kwargs)
            except discord.HTTPException:
                raise
            except Exception as exc:
                self._errors[type(exc).__name__] += 1
                raise

        http.request = counted  # type: ignore[method-assign]

    async def stop(self) -> None:
        if self._client is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._client.close(), 30)
        if self._fake is not None:
            await self._thread.run(self._fake.__aexit__(None, None, None))
        self._thread.stop()

    async def make_chats(self, kinds: Sequence[str]) -> list[Chat]:
        def make() -> list[Chat]:
            # The fake has 3 text channels; add one per conversation to its guild, as
            # _build_world does (messages and typing check _channel_payloads).
            fake = self.fake
            chats = []
            for kind in kinds:
                cid = fake._ids.next()
                name = f"bench-{len(fake.channels)}"
                fake.channels[name] = cid
                fake._channel_payloads[cid] = text_channel(cid, fake.guild_id, name,
                                                           len(fake.channels) - 1)
                chats.append(Chat(int(cid), kind))
            return chats

        chats = await self._thread.call(make)
        for chat in chats:
            self._channels[chat.chat_id] = self.client.get_partial_messageable(
                chat.chat_id, type=discord.ChannelType.text)
        return chats

    bot_wide_writes = discord_bot.BOT_WIDE_WRITES

    def profile(self, chat: Chat, *, drafts: bool) -> PlatformProfile:
        return DISCORD_PROFILE

    def sink(self, chat: Chat) -> MessageSink:
        # As DiscordBot._sink for an @mention or a DM (minus the quoted question): the Stop
        # button rides on every interim write, as shipped.
        return DiscordSink(self._channels[chat.chat_id], interaction=None,
                           original_pending=False, reply_to=None,
                           stop_view=control_view("stop", 1), clock=time.monotonic)

    async def naive_send(self, chat: Chat, text: str) -> object:
        return await _discord_mapped(self._channels[chat.chat_id].send(content=text))

    async def naive_edit(self, chat: Chat, handle: object, text: str) -> None:
        assert isinstance(handle, discord.Message)
        await _discord_mapped(handle.edit(content=text))

    async def naive_typing(self, chat: Chat) -> None:
        await _discord_mapped(self._channels[chat.chat_id].typing())  # type: ignore[arg-type]

    async def drain(self, timeout: float = 30.0) -> list[Request]:
        return await self._thread.call(self._drain_in_fake, timeout)

    def _drain_in_fake(self) -> list[Request]:
        """Runs on the fake's loop: take its request records and drop every message's
        revision history, keeping what the bench needs (as TelegramPlatform does)."""
        fake, plan = self.fake, self._plan
        assert plan is not None
        records, fake.requests = fake.requests, []
        for messages in fake.messages.values():
            for message in messages:
                message.revisions.clear()
                message.allowed_mentions.clear()
        requests = []
        for rec in records:
            shown = 0
            if rec.status == 200 and rec.route in _DISCORD_COUNTED and isinstance(rec.json, dict):
                shown = plan.shown_length(str(rec.json.get("content") or ""))
            parts = rec.path.split("/")
            chat_id = int(parts[2]) if len(parts) > 2 and parts[1] == "channels" else 0
            requests.append(Request(rec.time, chat_id, rec.route, rec.status, shown,
                                    rec.route in _DISCORD_COUNTED))
        return requests

    async def final_texts(self, chats: Sequence[Chat]) -> dict[int, str]:
        def read() -> dict[int, str]:
            fake = self.fake
            pages: dict[int, list[tuple[int, str]]] = defaultdict(list)
            for channel_id, messages in fake.messages.items():
                for message in messages:
                    if message.author_id == fake.bot_id and not message.deleted:
                        pages[int(channel_id)].append((int(message.id), message.content))
            return {c.chat_id: "\n".join(t for _, t in sorted(pages[c.chat_id])) for c in chats}

        return await self._thread.call(read)

    def client_errors(self) -> Counter[str]:
        return self._errors

    def server_thread_id(self) -> int | None:
        return self._thread.native_id


async def _discord_mapped(call: Awaitable[T]) -> T:
    """discord.py's 429s in the engine's terms, as bots/discord_bot._guard maps them:
    discord.py sleeps out a 429 itself and raises only past max_ratelimit_timeout."""
    try:
        return await call
    except discord.RateLimited as exc:
        raise RetryLater(exc.retry_after) from exc
    except discord.HTTPException as exc:
        if exc.status == 429:
            raise RetryLater(1.0) from exc
        raise


PLATFORMS: dict[str, Callable[[int, int], Platform]] = {
    "telegram": TelegramPlatform, "discord": DiscordPlatform}

# -- the contenders -----------------------------------------------------------------------------


@dataclass
class Conversation:
    chat: Chat
    started: float = 0.0
    ended: float | None = None
    rate_limited: int = 0  # 429s the contender itself saw
    error: str | None = None


# One bot-wide budget per platform (per run: each run is its own worker process), as the bot
# keeps one for all its replies.
_budgets: dict[int, SlidingWindowLimiter] = {}


async def run_rtxrelay(platform: Platform, conv: Conversation,
                       updates: AsyncIterator[ReplyUpdate], *, drafts: bool) -> None:
    profile = platform.profile(conv.chat, drafts=drafts)
    budget = _budgets.setdefault(id(platform), SlidingWindowLimiter(platform.bot_wide_writes))
    reply = StreamingReply(platform.sink(conv.chat), profile, shared_budget=budget)
    outcome = await reply.run(updates)
    conv.rate_limited = outcome.rate_limited


NAIVE_NETWORK_PAUSE = 0.5  # what a typical bot sleeps after a timeout (docs/bot-failure-modes.md)
# What the naive bot treats as "that request failed, go on" on either platform.
NAIVE_ERRORS = (TelegramError, discord.DiscordException, ClientError, TimeoutError)


async def run_naive(platform: Platform, conv: Conversation,
                    updates: AsyncIterator[ReplyUpdate], *, every_chars: int) -> None:
    """Send on the first token, edit on every token (or every ``every_chars``), sleep out each
    429, skip an interim edit that failed; then retry the final text until it lands."""
    chat = conv.chat
    with contextlib.suppress(RetryLater, *NAIVE_ERRORS):
        await platform.naive_typing(chat)  # once, as most bots do
    handle: object = None
    shown = ""
    final = ""
    async for update in updates:
        if isinstance(update, Finished):
            final = update.text
        elif isinstance(update, TextSoFar) and update.text.strip():
            if handle is None:
                text = update.text
                handle = await _until_landed(conv, lambda t=text: platform.naive_send(chat, t))
                shown = text
            elif len(update.text) - len(shown) >= every_chars:
                try:
                    await platform.naive_edit(chat, handle, update.text)
                    shown = update.text
                except RetryLater as exc:
                    conv.rate_limited += 1
                    await asyncio.sleep(exc.seconds)
                except NAIVE_ERRORS:
                    await asyncio.sleep(NAIVE_NETWORK_PAUSE)
    if handle is None:
        await _until_landed(conv, lambda: platform.naive_send(chat, final))
    elif final != shown:
        await _until_landed(conv, lambda: platform.naive_edit(chat, handle, final))


async def _until_landed(conv: Conversation, call: Callable[[], Awaitable[T]]) -> T:
    """Retry forever: the run's wall-time cap is what stops a contender that cannot land."""
    while True:
        try:
            return await call()
        except RetryLater as exc:
            conv.rate_limited += 1
            await asyncio.sleep(exc.seconds)
        except NAIVE_ERRORS:
            await asyncio.sleep(NAIVE_NETWORK_PAUSE)


# -- one measured run (the worker process) ------------------------------------------------------


class LogCounter(logging.Handler):
    """Counts the bot side's warnings (the engine logs interim failures) without printing
    them. The fake server's own aiohttp logs (a client closing a kept-alive connection) are
    not the bot's and are left out."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.counts: Counter[str] = Counter()
        self.samples: dict[str, str] = {}

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith("aiohttp"):
            return
        key = f"{record.name}: {record.msg}"
        self.counts[key] += 1
        if key not in self.samples and record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            self.samples[key] = f"{type(exc).__name__}: {exc}"[:200]


@dataclass
class Sampler:
    """Current RSS every RSS_EVERY s (psutil, so Linux and Windows alike)."""

    process: psutil.Process
    peak: int = 0
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), RSS_EVERY)
        self.peak = max(self.peak, self.process.memory_info().rss)


def chat_kinds(n: int, mix: str, platform: Platform) -> list[str]:
    if len(platform.kinds) == 1:  # Discord: one kind, --chat does not apply
        return [platform.kinds[0]] * n
    if mix == "mix":  # alternate, so every N has both halves
        return ["private" if i % 2 == 0 else "group" for i in range(n)]
    return [mix] * n


def thread_cpu(process: psutil.Process, native_id: int | None) -> float:
    for thread in process.threads():
        if thread.id == native_id:
            return thread.user_time + thread.system_time
    return 0.0


def threads_cpu(process: psutil.Process) -> dict[str, float]:
    """CPU seconds per live thread, by name: where a process's CPU went."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    return {f"{names.get(t.id, 'unnamed')}#{t.id}": round(t.user_time + t.system_time, 2)
            for t in process.threads()}


def process_cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


async def converse(platform: Platform, contender: str, conv: Conversation, plan: AnswerPlan,
                   at: float, lags: list[float], naive_every_chars: int) -> None:
    """One conversation: wait for its start time, then stream the answer through
    ``contender``. Errors are kept on ``conv``; an unfinished one has ``ended`` None."""
    await asyncio.sleep(max(0.0, at - time.monotonic()))
    conv.started = time.monotonic()
    updates = answer_stream(plan, conv.started, lags)
    try:
        if contender == NAIVE:
            await run_naive(platform, conv, updates, every_chars=naive_every_chars)
        else:
            await run_rtxrelay(platform, conv, updates, drafts=contender == DRAFTS)
        conv.ended = time.monotonic()
    except Exception as exc:
        conv.error = f"{type(exc).__name__}: {exc}"[:200]
    finally:
        await updates.aclose()  # type: ignore[attr-defined]


async def warm_up(platform: Platform, args: argparse.Namespace, kinds: Sequence[str]) -> None:
    """One short conversation per chat kind through the same contender, not measured: lazy
    imports, first connections and parser set-up are not what N conversations cost."""
    plan = AnswerPlan.build(120, 200.0, 0.0)
    chats = await platform.make_chats(sorted(set(kinds)))
    convs = [Conversation(chat) for chat in chats]
    now = time.monotonic()
    await asyncio.wait_for(asyncio.gather(*(
        converse(platform, args.worker, c, plan, now, [], args.naive_every_chars) for c in convs
    )), 30)
    await platform.drain()


@dataclass
class Measured:
    """The measured window's raw material, taken before any teardown."""

    convs: list[Conversation]
    requests: list[Request]
    finals: dict[int, str]
    lags: list[float]
    wall: float
    cap: float
    cap_end: float
    bot_cpu: float
    fake_cpu: float
    rss_before: int
    rss_peak: int
    rss_after: int
    unfinished: int


async def measure(platform: Platform, args: argparse.Namespace, plan: AnswerPlan,
                  kinds: Sequence[str]) -> Measured:
    chats = await platform.make_chats(kinds)
    convs = [Conversation(chat) for chat in chats]
    rng = random.Random(args.size)
    offsets = sorted(rng.uniform(0, args.stagger) for _ in convs)
    lags: list[float] = []
    requests: list[Request] = []
    cap = args.stagger + plan.duration + args.grace + delivery_floor(args.platform, args.size)

    async def drain_loop(stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), DRAIN_EVERY)
            requests.extend(await platform.drain(timeout=120))

    process = psutil.Process()
    gc.collect()
    sampler = Sampler(process)
    rss_before = process.memory_info().rss
    server_id = platform.server_thread_id()
    cpu_before, fake_before = process_cpu(process), thread_cpu(process, server_id)
    t0 = time.monotonic()
    stop_drain = asyncio.Event()
    helpers = [asyncio.create_task(sampler.run()), asyncio.create_task(drain_loop(stop_drain))]
    tasks = [
        asyncio.create_task(converse(platform, args.worker, conv, plan, t0 + offset, lags,
                                     args.naive_every_chars))
        for conv, offset in zip(convs, offsets, strict=True)
    ]
    _, pending = await asyncio.wait(tasks, timeout=cap)
    wall = time.monotonic() - t0
    cpu_after, fake_after = process_cpu(process), thread_cpu(process, server_id)
    sampler.stop.set()
    stop_drain.set()
    await asyncio.wait(helpers, timeout=30)
    requests.extend(await platform.drain(timeout=120))
    finals = await platform.final_texts(chats)
    return Measured(
        convs=convs, requests=requests, finals=finals, lags=lags, wall=wall, cap=cap,
        cap_end=t0 + cap, bot_cpu=(cpu_after - cpu_before) - (fake_after - fake_before),
        fake_cpu=fake_after - fake_before, rss_before=rss_before, rss_peak=sampler.peak,
        rss_after=process.memory_info().rss, unfinished=len(pending),
    )


async def measured_run(args: argparse.Namespace) -> int:
    """Warm up, measure, write the result file; then tear down. Returns an exit status."""
    plan = AnswerPlan.build(args.chars, args.tokens_per_second, args.first_token)
    platform = PLATFORMS[args.platform](args.pool_size, args.max_in_flight)
    logs = LogCounter()
    logging.getLogger().addHandler(logs)
    logging.getLogger().setLevel(logging.WARNING)
    kinds = chat_kinds(args.size, args.chat, platform)
    await platform.start(plan)
    try:
        if args.warmup:
            await warm_up(platform, args, kinds)
        logs.counts.clear()
        got = await measure(platform, args, plan, kinds)
        result = summarise(args, plan, platform, got, logs)
        write_result(args.out, result)
        if got.unfinished:
            # Conversations still running at the cap mean the bot's HTTP client is wedged;
            # cancelling them would take minutes (every cancelled request makes httpcore
            # rescan its queue), and the figures are already written.
            print(f"{got.unfinished} conversations unfinished at the cap; exiting without "
                  "teardown", file=sys.stderr, flush=True)
            os._exit(0)
    finally:
        await asyncio.wait_for(platform.stop(), 60)
    return 0


def summarise(args: argparse.Namespace, plan: AnswerPlan, platform: Platform, got: Measured,
              logs: LogCounter) -> dict[str, Any]:
    convs = got.convs
    result: dict[str, Any] = {
        "ok": True, "contender": args.worker, "n": args.size, "platform": platform.name,
        "wall": got.wall, "cap": got.cap, "answer_s": plan.duration, "tokens": len(plan.ends),
        "chars": len(plan.text), "bot_cpu": got.bot_cpu, "fake_cpu": got.fake_cpu,
        "rss_before_mib": got.rss_before / 2**20,
        "rss_peak_delta_kib": (got.rss_peak - got.rss_before) / 1024 / args.size,
        "rss_end_delta_kib": (got.rss_after - got.rss_before) / 1024 / args.size,
        "client_errors": dict(platform.client_errors()),
        "log_warnings": dict(logs.counts), "log_samples": logs.samples,
        "handover_lag_p95": percentile(got.lags, 95),
        "conversation_errors": dict(Counter(c.error for c in convs if c.error)),
        "contender_429s": sum(c.rate_limited for c in convs),
        "threads_cpu": threads_cpu(psutil.Process()),
    }
    if resource is not None:
        result["maxrss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result.update(analyse(plan, convs, got.requests, got.finals, got.cap_end, platform))
    return result


def write_result(path: str, result: dict[str, Any]) -> None:
    Path(path).write_text(json.dumps(result), encoding="utf-8")


# -- analysis -----------------------------------------------------------------------------------


def most_in_window(times: Sequence[float], window: float) -> int:
    """The most of ``times`` (sorted) inside any half-open window of ``window`` seconds."""
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while t - times[lo] >= window:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def token_delays(plan: AnswerPlan, started: float, shows: Sequence[Request]) -> list[float]:
    """For each token, arrival -> the first answered request showing the answer up to it.
    Requests are in time order; the first one showing enough text only moves forward as the
    tokens do, so one pass over both lists does it."""
    delays: list[float] = []
    j = 0
    for need, offset in zip(plan.visible, plan.offsets, strict=True):
        while j < len(shows) and shows[j].shown < need:
            j += 1
        if j == len(shows):
            break  # this token and every later one never showed
        delays.append(shows[j].time - (started + offset))
    return delays


def analyse(plan: AnswerPlan, convs: Sequence[Conversation], requests: Sequence[Request],
            finals: dict[int, str], cap_end: float, platform: Platform) -> dict[str, Any]:
    by_chat: dict[int, list[Request]] = defaultdict(list)
    for request in sorted(requests, key=lambda r: r.time):
        by_chat[request.chat_id].append(request)
    out: dict[str, Any] = {
        "requests": len(requests),
        "r429": sum(r.status == 429 for r in requests),
        "chats_429": sum(any(r.status == 429 for r in by_chat[c.chat.chat_id]) for c in convs),
        "r429_final": sum(r.status == 429 and r.time >= c.started + plan.duration
                          for c in convs for r in by_chat[c.chat.chat_id]),
        "finished": sum(c.ended is not None for c in convs),
        "delivered": sum(_delivered(plan, finals.get(c.chat.chat_id, "")) for c in convs),
        "cursor_left": sum(CURSOR_MARK in finals.get(c.chat.chat_id, "") for c in convs),
        "conv_mean": _mean([c.ended - c.started for c in convs if c.ended is not None]),
        "kinds": dict(Counter(c.chat.kind for c in convs)),
    }
    all_delays: list[float] = []
    unshown = 0
    for kind in KIND_ORDER:
        mine = [c for c in convs if c.chat.kind == kind]
        if not mine:
            continue
        rates, win1, win60, counted, delays = [], [], [], [], []
        win5: list[int] = []  # Discord: most in any 5 s in one bucket (route + channel)
        for conv in mine:
            calls = by_chat[conv.chat.chat_id]
            ok = [r.time for r in calls if r.counted and r.status == 200]
            span = (conv.ended or cap_end) - conv.started
            rates.append(len(ok) / span if span > 0 else math.nan)
            win1.append(most_in_window(ok, 1.0))
            win60.append(most_in_window(ok, 60.0))
            routes = {r.method for r in calls if r.counted}
            win5.append(max((most_in_window([r.time for r in calls if r.method == route
                                             and r.status == 200], 5.0) for route in routes),
                            default=0))
            counted.append(len(ok))
            shows = [r for r in calls if r.status == 200 and r.method in _SHOWS]
            got = token_delays(plan, conv.started, shows)
            unshown += len(plan.visible) - len(got)
            delays.extend(got)
        delays.sort()
        all_delays.extend(delays)
        interval = platform.profile(mine[0].chat, drafts=False).edit_interval
        out[kind] = {
            "budget": 1 / interval,
            "rate_mean": _mean(rates), "rate_max": max(rates),
            "win1_max": max(win1), "win60_max": max(win60), "win5_bucket_max": max(win5),
            "counted_mean": _mean(counted),
            "delay_p50": percentile(delays, 50), "delay_p95": percentile(delays, 95),
            "delay_max": delays[-1] if delays else math.nan,
        }
    all_delays.sort()
    out.update({
        "delay_p50": percentile(all_delays, 50), "delay_p95": percentile(all_delays, 95),
        "delay_p99": percentile(all_delays, 99),
        "delay_max": all_delays[-1] if all_delays else math.nan,
        "tokens_unshown": unshown,
    })
    return out


def _delivered(plan: AnswerPlan, shown: str) -> bool:
    return CURSOR_MARK not in shown and normalise(shown) == plan.norm_text


def _mean(values: Sequence[float]) -> float:
    values = [v for v in values if not math.isnan(v)]
    return sum(values) / len(values) if values else math.nan


def worker_main(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(measured_run(args))
    except Exception as exc:
        if not Path(args.out).exists():  # a failure after the figures were written is teardown
            write_result(args.out, {
                "ok": False, "contender": args.worker, "n": args.size,
                "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()})
        return 1


# -- the parent: spawn runs, print the table ----------------------------------------------------


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy",
                 "all_proxy"):
        env.pop(name, None)  # loopback must never go through a proxy
    env.update({"NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost",
                "PTB_TIMEDELTA": "true", "PYTHONIOENCODING": "utf-8"})
    return env


# The platforms' bot-wide limits, as the fakes model them: Telegram ~30 messages/s, Discord 50
# requests/s per bot.
PLATFORM_RATE = {"telegram": FakeTelegram.GLOBAL_RATE, "discord": FakeDiscord.GLOBAL_LIMIT}


def delivery_floor(platform: str, size: int) -> float:
    """Every conversation needs at least a first message and its final text, so no bot within
    the platform's bot-wide limit can deliver N of them in under 2N / rate seconds. The run's
    cap adds it, so that N = 1,000 measures the bots, not the cap."""
    count, window = PLATFORM_RATE[platform]
    return 2 * size * window / count


RUN_OPTIONS = ("platform", "chat", "chars", "tokens_per_second", "first_token", "stagger",
               "grace", "naive_every_chars", "pool_size", "max_in_flight")


def spawn(args: argparse.Namespace, contender: str, size: int, workdir: Path,
          warmup: bool = True) -> dict[str, Any]:
    out = workdir / f"{contender}-{size}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", contender,
           "--size", str(size), "--out", str(out)]
    for name in RUN_OPTIONS:
        cmd += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    if not warmup:
        cmd.append("--no-warmup")
    cap = (args.stagger + args.chars / 3 / args.tokens_per_second + args.grace
           + delivery_floor(args.platform, size))
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, encoding="utf-8",
                              env=child_env(), timeout=cap + 120, check=False)
        tail = (done.stdout + done.stderr)[-3000:]
    except subprocess.TimeoutExpired as exc:
        return {"ok": False, "contender": contender, "n": size,
                "error": f"worker timed out after {exc.timeout:.0f} s"}
    try:
        result: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {"ok": False, "contender": contender, "n": size,
                "error": f"worker exited {done.returncode} without a result", "traceback": tail}
    return result






Row = tuple[str, Callable[[dict[str, Any]], float | str], bool]  # label, value, ratio?


def _get(*path: str) -> Callable[[dict[str, Any]], float]:
    def read(run: dict[str, Any]) -> float:
        value: Any = run
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        return float(value) if isinstance(value, int | float) else math.nan

    return read


def _of_n(key: str) -> Callable[[dict[str, Any]], str]:
    return lambda run: f"{run.get(key, 0)}/{run['n']}" if run.get("ok") else "-"


def rows_for(runs: Sequence[dict[str, Any]]) -> list[Row]:
    rows: list[Row] = [
        ("final texts delivered (goal: all)", _of_n("delivered"), False),
        ("conversations finished within the cap", _of_n("finished"), False),
        ("429 responses provoked (goal: 0)", _get("r429"), True),
        ("  of them on the final text (after the last token)", _get("r429_final"), True),
        ("chats that drew a 429", _get("chats_429"), True),
        ("API requests, all methods, per conversation",
         lambda r: _get("requests")(r) / r["n"], True),
    ]
    for kind in KIND_ORDER:
        if not any(kind in r for r in runs):
            continue
        budget = next(r[kind]["budget"] for r in runs if kind in r)
        rows += [
            (f"{kind}: messages sent+edited per chat", _get(kind, "counted_mean"), True),
            (f"{kind}: sends+edits /s per chat, mean (budget {budget:.2f})",
             _get(kind, "rate_mean"), True),
            (f"{kind}:   busiest chat", _get(kind, "rate_max"), True),
            (f"{kind}: most in any 1 s window, busiest chat", _get(kind, "win1_max"), True),
        ]
        if kind == "group":
            rows.append(("group: most in any 60 s window (limit 20)",
                         _get(kind, "win60_max"), True))
        if kind == "channel":
            rows.append((f"channel: most in any {DISCORD_BUCKET[1]:g} s window, one bucket "
                         f"(limit {DISCORD_BUCKET[0]})", _get(kind, "win5_bucket_max"), True))
        rows += [
            (f"{kind}: token -> shown delay p50 s", _get(kind, "delay_p50"), True),
            (f"{kind}: token -> shown delay p95 s", _get(kind, "delay_p95"), True),
        ]
    rows += [
        ("all: token -> shown delay p50 s", _get("delay_p50"), True),
        ("all: token -> shown delay p95 s", _get("delay_p95"), True),
        ("all: token -> shown delay p99 s", _get("delay_p99"), True),
        ("all: token -> shown delay max s", _get("delay_max"), True),
        ("tokens never shown", _get("tokens_unshown"), True),
        ("wall s, run start -> last conversation done", _get("wall"), True),
        ("conversation s, mean", _get("conv_mean"), True),
        ("bot CPU s (process minus fake thread)", _get("bot_cpu"), True),
        ("  per conversation ms", lambda r: _get("bot_cpu")(r) / r["n"] * 1000, True),
        ("  % of one core over the run", lambda r: _get("bot_cpu")(r) / _get("wall")(r) * 100,
         True),
        ("fake server CPU s (its thread)", _get("fake_cpu"), True),
        ("RSS peak - before, KiB per conversation", _get("rss_peak_delta_kib"), True),
        ("client request errors (no HTTP answer)",
         lambda r: float(sum(r.get("client_errors", {}).values())) if r.get("ok") else math.nan,
         True),
        ("token hand-over lag p95 s (loop busy)", _get("handover_lag_p95"), False),
    ]
    return rows




def report_size(size: int, runs: dict[str, dict[str, Any]], contenders: Sequence[str]) -> None:
    first = next((r for r in runs.values() if r.get("ok")), None)
    kinds = ", ".join(f"{v} {k}" for k, v in (first or {}).get("kinds", {}).items())
    extra = f", answer {first['chars']:,} chars / {first['tokens']} tokens over " \
            f"{first['answer_s']:.1f} s, cap {first['cap']:.0f} s" if first else ""
    print(f"\n== N = {size:,} conversations ({kinds}){extra} ==")
    header = ["metric", OURS, NAIVE, HEADER_RATIO] + [c for c in contenders if c == DRAFTS]
    table: list[tuple[str, ...]] = [tuple(header)]
    for label, value, with_ratio in rows_for([r for r in runs.values() if r.get("ok")]):
        cells = []
        for contender in (OURS, NAIVE):
            run = runs.get(contender, {})
            cells.append(value(run) if run.get("ok") else math.nan)
        shown = [c if isinstance(c, str) else fmt(c) for c in cells]
        both = all(isinstance(c, float) for c in cells)
        row = [label, *shown,
               ratio(cells[1], cells[0]) if with_ratio and both else ""]  # type: ignore[arg-type]
        if DRAFTS in contenders:
            run = runs.get(DRAFTS, {})
            cell = value(run) if run.get("ok") else math.nan
            row.append(cell if isinstance(cell, str) else fmt(cell))
        table.append(tuple(row))
    print_table(table)


def report_problems(all_runs: Sequence[dict[str, Any]]) -> None:
    for run in all_runs:
        name = f"{run['contender']} N={run['n']:,}"
        if not run.get("ok"):
            print(f"\n{name} FAILED: {run.get('error')}")
            if run.get("traceback"):
                print("  " + "\n  ".join(str(run["traceback"]).strip().splitlines()[-12:]))
            continue
        notes = []
        if run["delivered"] < run["n"]:
            notes.append(f"final texts delivered {run['delivered']}/{run['n']}"
                         f" (finished {run['finished']}/{run['n']} within {run['cap']:.0f} s)")
        for key, label in (("conversation_errors", "conversations raised"),
                           ("client_errors", "client errors"),
                           ("log_warnings", "warnings logged")):
            if run.get(key):
                notes.append(f"{label}: {run[key]}")
        if run.get("log_samples"):
            notes.append(f"e.g. {run['log_samples']}")
        if notes:
            print(f"\n{name}:\n  " + "\n  ".join(notes))


def parent_main(args: argparse.Namespace) -> int:
    contenders = [*CONTENDERS, DRAFTS] if args.drafts else list(CONTENDERS)
    if args.platform == "discord":
        model = (f"chats channel (one per conversation); fake rate limit: {DISCORD_BUCKET[0]}"
                 f"/{DISCORD_BUCKET[1]:g} s per bucket (route + channel), no global limit")
        http = "HTTP: discord.py's aiohttp, no connection cap"
    else:
        model = (f"chats {args.chat}; fake flood model: per chat {PER_CHAT_RATE[0]}/"
                 f"{PER_CHAT_RATE[1]:g} s, per group {GROUP_RATE[0]}/{GROUP_RATE[1]:g} s")
        http = f"HTTP pool {args.pool_size}, in-flight cap {args.max_in_flight or 'none'}"
    print(f"platform {args.platform}, {model}; {args.tokens_per_second:g} tokens/s, "
          f"~{args.chars:,} chars, first token after {args.first_token:g} s, starts spread "
          f"over {args.stagger:g} s; naive edits every {args.naive_every_chars} char(s); "
          f"{http}; {os.cpu_count()} CPUs, "
          f"{platform.python_implementation()} {platform.python_version()}, "
          f"{platform.system()} {platform.release()}", flush=True)
    all_runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="rtxrelay-bench-") as tmp:
        for index, size in enumerate(args.sizes):
            order = contenders if index % 2 == 0 else contenders[::-1]
            runs: dict[str, dict[str, Any]] = {}
            for contender in order:
                # --quick: only the first run warms up (the step stays covered, once).
                warmup = args.warmup and not (args.quick and all_runs)
                run = spawn(args, contender, size, Path(tmp), warmup)
                runs[contender] = run
                all_runs.append(run)
                print(f"  N={size:>5,} {contender:<16} " + (
                    f"wall {run['wall']:5.1f} s, bot CPU {run['bot_cpu']:5.1f} s, finals "
                    f"{run['delivered']}/{size}, 429s {run['r429']}" if run.get("ok")
                    else f"FAILED: {run.get('error')}"), flush=True)
            report_size(size, runs, contenders)
    report_problems(all_runs)
    if args.json:
        Path(args.json).write_text(json.dumps(all_runs, indent=1), encoding="utf-8")
    ours = [r for r in all_runs if r.get("contender") in (OURS, DRAFTS)]
    return 0 if all(r.get("ok") and r["delivered"] == r["n"] for r in ours) else 1


def _sizes(text: str) -> list[int]:
    return [int(x.replace("_", "")) for x in text.split(",") if x.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: N=10, a 150-char answer, first token after 0.2 s, "
                        "starts within 0.2 s, only the first run warms up")
    parser.add_argument("--sizes", type=_sizes, default=list(DEFAULT_SIZES),
                        help="numbers of simultaneous conversations, comma list")
    parser.add_argument("--platform", choices=sorted(PLATFORMS), default="telegram")
    parser.add_argument("--chat", choices=("mix", "private", "group"), default="mix",
                        help="mix: every other chat is a group (Telegram only)")
    parser.add_argument("--drafts", action=argparse.BooleanOptionalAction, default=None,
                        help="also run rtxrelay with private chats in drafts mode (Telegram "
                             "only; default: with --quick only, to keep the full run short)")
    parser.add_argument("--chars", type=int, default=1_500, help="answer length (about)")
    parser.add_argument("--tokens-per-second", type=float, default=30.0)
    parser.add_argument("--first-token", type=float, default=0.5,
                        help="s from the question to the first token")
    parser.add_argument("--stagger", type=float, default=1.0,
                        help="conversations start at random within this many s")
    parser.add_argument("--grace", type=float, default=30.0,
                        help="cap per run = stagger + answer time + grace + 2N / the "
                        "platform's bot-wide rate; then it is cut")
    parser.add_argument("--naive-every-chars", type=int, default=1,
                        help="the naive bot edits once this many new chars arrived")
    parser.add_argument("--pool-size", type=int, default=DEFAULT_POOL_SIZE,
                        help="the bot's HTTP connection pool (PTB's ApplicationBuilder: 256)")
    parser.add_argument("--max-in-flight", type=int, default=MAX_IN_FLIGHT,
                        help="the bot's cap on concurrent requests (0: no cap, to compare)")
    parser.add_argument("--no-warmup", dest="warmup", action="store_false",
                        help="skip each run's unmeasured warm-up conversations")
    parser.add_argument("--json", help="also write every run's raw figures to this file")
    parser.add_argument("--worker", choices=(OURS, NAIVE, DRAFTS), help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.chars, args.stagger, args.grace = [10], 150, 0.2, 15.0
        args.first_token = 0.2
    if args.platform == "discord":
        if args.drafts:
            parser.error("--drafts: Discord has no drafts")
        args.drafts = False
    elif args.drafts is None:
        args.drafts = args.quick
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker_main(args)
    started = time.monotonic()
    code = parent_main(args)
    print(f"\nbench took {time.monotonic() - started:.0f} s")
    return code


if __name__ == "__main__":
    sys.exit(main())
