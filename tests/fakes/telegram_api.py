"""A protocol-faithful fake of the Telegram Bot API, served over loopback for the real PTB.

``FakeTelegram`` is an aiohttp server on ``127.0.0.1:<ephemeral>`` that speaks the Bot API wire
protocol (``/bot<token>/<method>``, form/JSON/query/multipart parameters, ``{"ok": ...}``
envelopes with the real HTTP statuses), so python-telegram-bot's own request, error-mapping and
polling code runs unmodified::

    async with FakeTelegram() as fake:
        app = (ApplicationBuilder().token(fake.token).base_url(fake.base_url)
               .base_file_url(fake.base_file_url).build())
        ...
        fake.inject_private_text(fake.make_user("Alice"), "hi")
        call = await fake.wait_for_call("sendMessage")

Fidelity notes (see also telegram_html.py for text parsing):

* Error descriptions are the real server's where known (issue reports, TDLib source); the ones
  that are guesses are marked ``GUESS`` next to them.
* Text limits are checked *after* entity parsing and whitespace trimming, in UTF-16 code units.
  Outgoing text also gets the entities Telegram detects by itself (commands, mentions, URLs,
  hashtags), as real sent messages do.
* Flood model (optional, injectable clock): a sliding window per chat, a group window and a
  bot-wide one. The Bot FAQ documents ~1 message/s per chat, 20 messages/min per group and
  about 30 messages/s in all (for bulk notifications: counted here for every counted
  method, sends and edits alike), and says nothing
  about edits; edits are known to draw 429s in practice, so by default ``sendMessage``,
  ``editMessageText`` and ``editMessageReplyMarkup`` count. ``sendChatAction`` and
  ``sendMessageDraft`` do not (the server forwards a draft as a typing-style action, not a
  message; its own limit is undocumented). Change it with ``flood_methods``. Refused (429)
  calls take no slot. ``retry_after`` is whole seconds until the oldest counted call leaves the
  window, rounded up, at least 1.
* Long polls use real time for their ``timeout`` (they are parked on an event, never slept).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import re
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiohttp import web

from .telegram_html import (
    ParseError,
    detect_entities,
    entity_key,
    parse_html,
    parse_markdown,
    parse_markdown_v2,
    sort_entities,
    trim_text,
    utf16_len,
)
from .telegram_html import words as _words

Json = dict[str, Any]
_T = TypeVar("_T")

MAX_TEXT_LENGTH = 4096
DEFAULT_FLOOD_METHODS = frozenset({"sendMessage", "editMessageText", "editMessageReplyMarkup"})

# Canonical Bot API names; the router matches them case-insensitively, like the real server.
_METHODS = {
    name.lower(): name
    for name in _words(
        "getMe logOut close getUpdates setWebhook deleteWebhook getWebhookInfo setMyCommands "
        "getMyCommands deleteMyCommands sendChatAction sendMessage editMessageText "
        "editMessageReplyMarkup sendMessageDraft deleteMessage answerCallbackQuery"
    )
}

# PTB sends strings raw and every other value json.dumps'ed, so "123" may be an int or a text:
# decode per parameter name, never by guessing from the value.
_INT_PARAMS = _words(
    "chat_id message_id offset limit timeout draft_id message_thread_id reply_to_message_id "
    "cache_time user_id from_chat_id max_connections"
)
_BOOL_PARAMS = _words(
    "drop_pending_updates disable_notification protect_content show_alert "
    "allow_sending_without_reply disable_web_page_preview allow_paid_broadcast"
)
_JSON_PARAMS = _words(
    "entities reply_markup reply_parameters allowed_updates commands scope "
    "link_preview_options caption_entities"
)
_CHAT_ACTIONS = _words(
    "typing upload_photo record_video upload_video record_voice upload_voice upload_document "
    "choose_sticker find_location record_video_note upload_video_note"
)
_ENTITY_TYPES = _words(
    "mention hashtag cashtag bot_command url email phone_number bold italic underline "
    "strikethrough spoiler blockquote expandable_blockquote code pre text_link text_mention "
    "custom_emoji"
)

NOT_MODIFIED = (
    "Bad Request: message is not modified: specified new message content and reply markup are "
    "exactly the same as a current content and reply markup of the message"
)
CONFLICT_POLL = (
    "Conflict: terminated by other getUpdates request; make sure that only one bot instance is "
    "running"
)
CONFLICT_WEBHOOK = (
    "Conflict: can't use getUpdates method while webhook is active; use deleteWebhook to delete "
    "the webhook first"
)


class ApiError(Exception):
    """An error answer: HTTP ``status`` and body ``error_code`` are the same, as on Telegram."""

    def __init__(self, status: int, description: str, **parameters: Any) -> None:
        super().__init__(description)
        self.status = status
        self.description = description
        self.parameters = parameters

    def body(self) -> Json:
        body: Json = {"ok": False, "error_code": self.status, "description": self.description}
        if self.parameters:  # the real server omits "parameters" when there are none
            body["parameters"] = self.parameters
        return body


def _bad(description: str) -> ApiError:
    return ApiError(400, f"Bad Request: {description}")


@dataclass
class Call:
    """One request as the fake saw it: decoded params, the answer it gave, and when (clock)."""

    method: str
    params: Json
    status: int
    result: Any = None
    error: Json | None = None
    time: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def description(self) -> str | None:
        return None if self.error is None else self.error["description"]


@dataclass
class MessageRecord:
    """The current state of one message in a chat, plus the versions it was edited from."""

    chat: Json
    message_id: int
    sender: Json
    text: str
    entities: list[Json]
    date: int
    reply_to: MessageRecord | None = None
    reply_markup: Json | None = None
    edit_date: int | None = None
    deleted: bool = False
    history: list[tuple[str, list[Json]]] = field(default_factory=list)

    @property
    def chat_id(self) -> int:
        return int(self.chat["id"])

    @property
    def from_bot(self) -> bool:
        return bool(self.sender.get("is_bot"))

    def entity_types(self) -> list[str]:
        return [e["type"] for e in self.entities]

    def to_api(self, *, with_reply: bool = True) -> Json:
        data: Json = {
            "message_id": self.message_id,
            "from": self.sender,
            "chat": self.chat,
            "date": self.date,
            "text": self.text,
        }
        if self.entities:
            data["entities"] = [dict(e) for e in self.entities]
        if with_reply and self.reply_to is not None:
            # Telegram nests the replied message one level deep only.
            data["reply_to_message"] = self.reply_to.to_api(with_reply=False)
        if self.edit_date is not None:
            data["edit_date"] = self.edit_date
        if self.reply_markup:
            data["reply_markup"] = self.reply_markup
        return data


@dataclass
class DraftRecord:
    chat_id: int
    draft_id: int
    text: str
    entities: list[Json]
    time: float
    message_thread_id: int | None = None


@dataclass
class _Fault:
    status: int
    description: str
    parameters: Json
    always: bool


class FakeTelegram:
    """The fake Bot API server. Use as ``async with FakeTelegram(...) as fake:``."""

    GLOBAL_RATE = (30, 1.0)  # the Bot FAQ's ~30 messages per second across all chats

    def __init__(
        self,
        *,
        token: str = "7000001234:AAFakeTokenForTheRtxRelayTestSuite00",
        bot_username: str = "rtx_relay_bot",
        bot_first_name: str = "RTX Relay",
        privacy_mode: bool = True,
        privacy_delivers_mentions: bool = True,
        per_chat_rate: tuple[int, float] | None = None,
        group_rate: tuple[int, float] | None = (20, 60.0),
        global_rate: tuple[int, float] | None = GLOBAL_RATE,
        flood_methods: Iterable[str] = DEFAULT_FLOOD_METHODS,
        clock: Callable[[], float] = time.monotonic,
        max_text_length: int = MAX_TEXT_LENGTH,
        port: int = 0,
    ) -> None:
        self.token = token
        self.bot_id = int(token.split(":", 1)[0])
        self.bot_username = bot_username
        self.privacy_mode = privacy_mode
        # Official docs omit bare @mentions from what privacy mode delivers, BotFather's text and
        # field reports include them; default to delivering (configurable for the other path).
        self.privacy_delivers_mentions = privacy_delivers_mentions
        self.per_chat_rate = per_chat_rate
        self.group_rate = group_rate
        self.global_rate = global_rate  # the Bot FAQ's ~30 messages/s across all chats
        self._global_sent: deque[float] = deque()
        self.flood_methods = frozenset(flood_methods)
        self.clock = clock
        self.max_text_length = max_text_length
        self.bot_user: Json = {
            "id": self.bot_id,
            "is_bot": True,
            "first_name": bot_first_name,
            "username": bot_username,
        }

        self.calls: list[Call] = []
        self.messages: dict[tuple[int, int], MessageRecord] = {}
        self.drafts: list[DraftRecord] = []
        self.active_drafts: dict[int, DraftRecord] = {}
        self.chat_actions: list[tuple[int, str]] = []
        self.commands: dict[str, list[Json]] = {}
        self.callback_answers: dict[str, Json] = {}
        self.undelivered: list[Json] = []  # group messages privacy mode kept from the bot
        self.chats: dict[int, Json] = {}
        self.webhook_url = ""
        self.parked_polls = 0  # getUpdates requests currently long-polling

        self._blocked: dict[int, str] = {}
        self._updates: list[Json] = []
        self._allowed_updates: list[str] = []
        self._next_update_id = 100_000
        self._next_message_id: dict[int, int] = {}
        self._user_ids = itertools.count(501)
        self._group_ids = itertools.count(1)
        self._callback_ids = itertools.count(1)
        self._callbacks: dict[str, bool] = {}  # id -> answered
        self._sent: dict[int, deque[float]] = {}
        self._faults: dict[str, deque[_Fault]] = {}
        self._poll_generation = 0
        self._closing = False
        self._tick = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._port = port  # 0: any free port

    # ------------------------------------------------------------------------------- lifecycle

    async def __aenter__(self) -> FakeTelegram:
        app = web.Application()
        app.router.add_route("*", "/bot{token}/{method}", self._handle)
        app.router.add_route("*", "/file/bot{token}/{path:.*}", self._handle_file)
        # A short shutdown_timeout: teardown must not wait out a long poll's timeout.
        self._runner = web.AppRunner(app, shutdown_timeout=0.5, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self._port)
        await site.start()
        self._port = int(self._runner.addresses[0][1])
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        # Wake parked getUpdates first (they answer []) so the runner finds nothing in flight.
        self._closing = True
        self._bump()
        await asyncio.sleep(0)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def base_url(self) -> str:
        """For ``ApplicationBuilder().base_url()``: PTB appends the token."""
        return f"http://127.0.0.1:{self._port}/bot"

    @property
    def base_file_url(self) -> str:
        return f"http://127.0.0.1:{self._port}/file/bot"

    # ------------------------------------------------------------------------- scripted faults

    def fail_next(self, method: str, status: int, description: str, **parameters: Any) -> None:
        """Answer the next call of ``method`` (``"*"``: any method) with this error."""
        self._add_fault(method, _Fault(status, description, parameters, always=False))

    def fail_always(self, method: str, status: int, description: str, **parameters: Any) -> None:
        self._add_fault(method, _Fault(status, description, parameters, always=True))

    def flood_next(self, method: str, retry_after: int) -> None:
        self.fail_next(
            method, 429, f"Too Many Requests: retry after {retry_after}", retry_after=retry_after
        )

    def clear_faults(self, method: str | None = None) -> None:
        if method is None:
            self._faults.clear()
        else:
            self._faults.pop(self._canonical(method), None)

    def _add_fault(self, method: str, fault: _Fault) -> None:
        self._faults.setdefault(self._canonical(method), deque()).append(fault)

    @staticmethod
    def _canonical(method: str) -> str:
        return "*" if method == "*" else _METHODS.get(method.lower(), method)

    def _take_fault(self, method: str) -> _Fault | None:
        for key in (method, "*"):
            queue = self._faults.get(key)
            if queue:
                fault = queue[0]
                if not fault.always:
                    queue.popleft()
                return fault
        return None

    # -------------------------------------------------------------------- users, chats, blocks

    def make_user(
        self,
        first_name: str = "Alice",
        *,
        username: str | None = None,
        user_id: int | None = None,
        language_code: str = "en",
    ) -> Json:
        user: Json = {
            "id": user_id if user_id is not None else next(self._user_ids),
            "is_bot": False,
            "first_name": first_name,
            "language_code": language_code,
        }
        user["username"] = username if username is not None else first_name.lower()
        return user

    def make_group(
        self, title: str = "RTX fans", *, supergroup: bool = True, chat_id: int | None = None
    ) -> Json:
        """A group the bot is a member of (registered, so the bot may write there)."""
        n = next(self._group_ids)
        if chat_id is None:
            chat_id = -1_001_234_567_000 - n if supergroup else -4_000_000 - n
        chat = {"id": chat_id, "type": "supergroup" if supergroup else "group", "title": title}
        return self.register_chat(chat)

    def start_private_chat(self, user: Json) -> Json:
        """The user opened the bot (what /start does): the bot may now write to them."""
        chat = {"id": user["id"], "type": "private", "first_name": user["first_name"]}
        if user.get("username"):
            chat["username"] = user["username"]
        return self.register_chat(chat)

    def register_chat(self, chat: Json) -> Json:
        self.chats[int(chat["id"])] = chat
        return chat

    def block_bot(self, chat: Json | int) -> None:
        """The user blocked the bot / the bot was removed: sends now answer 403."""
        chat_id = chat if isinstance(chat, int) else int(chat["id"])
        kind = self.chats.get(chat_id, {}).get("type", "private")
        # Wordings from memory of real reports (the private one is widely quoted).
        self._blocked[chat_id] = {
            "private": "Forbidden: bot was blocked by the user",
            "group": "Forbidden: bot was kicked from the group chat",
        }.get(kind, "Forbidden: bot was kicked from the supergroup chat")

    # ---------------------------------------------------------------------------- injection

    def inject_update(self, update: Json) -> Json:
        """Queue a raw update (``update_id`` is assigned) for getUpdates."""
        update = {"update_id": self._next_update_id, **update}
        self._next_update_id += 1
        self._updates.append(update)
        self._bump()
        return update

    def inject_private_text(
        self, user: Json, text: str, *, reply_to: MessageRecord | int | None = None
    ) -> Json:
        chat = self.start_private_chat(user)
        record = self._store_user_message(chat, user, text, reply_to)
        message = record.to_api()
        self.inject_update({"message": message})
        return message

    def inject_group_text(
        self,
        chat: Json,
        user: Json,
        text: str,
        *,
        mention_bot: bool = False,
        reply_to: MessageRecord | int | None = None,
        command: str | None = None,
    ) -> Json:
        """A group message. ``command="ask"`` makes it ``/ask@<bot> <text>``; ``mention_bot``
        prefixes ``@<bot> ``. Privacy mode decides whether the bot gets the update."""
        if command is not None:
            text = f"/{command}@{self.bot_username} {text}".rstrip()
        if mention_bot and f"@{self.bot_username}" not in text:
            text = f"@{self.bot_username} {text}"
        self.register_chat(chat)
        record = self._store_user_message(chat, user, text, reply_to)
        message = record.to_api()
        if self._delivered_under_privacy(record):
            self.inject_update({"message": message})
        else:
            self.undelivered.append(message)
        return message

    def inject_callback_query(
        self, user: Json, message: MessageRecord | tuple[int, int], data: str
    ) -> str:
        """A press of an inline button on ``message``; returns the callback query id."""
        record = message if isinstance(message, MessageRecord) else self.messages[message]
        query_id = f"{next(self._callback_ids)}{self.bot_id}"
        self._callbacks[query_id] = False
        self.inject_update(
            {
                "callback_query": {
                    "id": query_id,
                    "from": user,
                    "message": record.to_api(),
                    "data": data,
                    "chat_instance": str(abs(record.chat_id) * 7 + 3),
                }
            }
        )
        return query_id

    def _store_user_message(
        self, chat: Json, user: Json, text: str, reply_to: MessageRecord | int | None
    ) -> MessageRecord:
        chat_id = int(chat["id"])
        replied = None
        if reply_to is not None:
            replied = (
                reply_to
                if isinstance(reply_to, MessageRecord)
                else self.messages[(chat_id, reply_to)]
            )
        # Clients attach the entities Telegram detects (commands, mentions, ...).
        record = MessageRecord(
            chat=chat,
            message_id=self._new_message_id(chat_id),
            sender=user,
            text=text,
            entities=sort_entities(detect_entities(text)),
            date=int(time.time()),
            reply_to=replied,
        )
        self.messages[(chat_id, record.message_id)] = record
        return record

    def _delivered_under_privacy(self, record: MessageRecord) -> bool:
        if not self.privacy_mode:
            return True
        me = f"@{self.bot_username}".lower()
        for entity in record.entities:
            piece = record.text.encode("utf-16-le")[
                2 * entity["offset"] : 2 * (entity["offset"] + entity["length"])
            ]
            value = piece.decode("utf-16-le").lower()
            # Commands addressed to this bot, or to nobody in particular (docs: "/command@bot";
            # bare commands are delivered too when the bot spoke last: approximated as always).
            if (
                entity["type"] == "bot_command"
                and entity["offset"] == 0
                and ("@" not in value or value.endswith(me))
            ):
                return True
            if entity["type"] == "mention" and value == me and self.privacy_delivers_mentions:
                return True
        return record.reply_to is not None and record.reply_to.from_bot

    def _new_message_id(self, chat_id: int) -> int:
        message_id = self._next_message_id.get(chat_id, 1)
        self._next_message_id[chat_id] = message_id + 1
        return message_id

    # ----------------------------------------------------------------------------- inspection

    def calls_to(self, method: str) -> list[Call]:
        name = self._canonical(method)
        return [c for c in self.calls if c.method == name]

    def bot_messages(self, chat_id: int) -> list[MessageRecord]:
        return [
            m
            for (cid, _), m in sorted(self.messages.items())
            if cid == chat_id and m.from_bot and not m.deleted
        ]

    def chat_text(self, chat_id: int, sep: str = "\n") -> str:
        """What the bot currently shows in the chat: its live messages' visible texts, joined."""
        return sep.join(m.text for m in self.bot_messages(chat_id))

    # A timeout argument (not asyncio.timeout at the call site) keeps every test wait bounded
    # by default.
    async def wait_for_call(
        self,
        predicate: str | Callable[[Call], bool],
        timeout: float = 5.0,
        *,
        start: int = 0,
    ) -> Call:
        """The first recorded call (from index ``start``) matching ``predicate`` (a method name
        or a function), waiting for it to arrive if needed."""
        if isinstance(predicate, str):
            name = self._canonical(predicate)
            check: Callable[[Call], bool] = lambda c: c.method == name  # noqa: E731
        else:
            check = predicate

        def find() -> Call | None:
            return next((c for c in self.calls[start:] if check(c)), None)

        return await self._wait(find, timeout, lambda: f"calls: {self._call_summary()}")

    async def wait_for_message(
        self,
        predicate: Callable[[MessageRecord], bool],
        timeout: float = 5.0,
    ) -> MessageRecord:
        """The first message (in any chat, in its current state) matching ``predicate``."""

        def find() -> MessageRecord | None:
            return next((m for m in self.messages.values() if predicate(m)), None)

        return await self._wait(find, timeout, lambda: f"messages: {list(self.messages)}")

    async def wait_until(
        self,
        predicate: Callable[[], bool],
        timeout: float = 5.0,
    ) -> None:
        """Wait until ``predicate()`` (over the fake's state) holds, e.g.
        ``lambda: fake.parked_polls == 1``."""
        await self._wait(lambda: True if predicate() else None, timeout, lambda: "state")

    async def _wait(
        self,
        find: Callable[[], _T | None],
        timeout: float,
        context: Callable[[], str],
    ) -> _T:
        try:
            async with asyncio.timeout(timeout):
                while True:
                    tick = self._tick  # take it before checking, so no change is missed
                    found = find()
                    if found is not None:
                        return found
                    await tick.wait()
        except TimeoutError:
            raise TimeoutError(f"nothing matched within {timeout}s; {context()}") from None

    def _call_summary(self) -> str:
        return ", ".join(f"{c.method}->{c.status}" for c in self.calls[-30:])

    def _bump(self) -> None:
        """Something changed: wake every waiter (they re-check their predicates)."""
        self._tick.set()
        self._tick = asyncio.Event()

    # -------------------------------------------------------------------------------- routing

    async def _handle_file(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"ok": False, "error_code": 404, "description": "Not Found"}, status=404
        )

    async def _handle(self, request: web.Request) -> web.Response:
        raw_method = request.match_info["method"]
        params = await self._read_params(request)
        method = _METHODS.get(raw_method.lower(), raw_method)
        result: Any = None
        try:
            if request.match_info["token"] != self.token:
                raise ApiError(401, "Unauthorized")
            if raw_method.lower() not in _METHODS:
                raise ApiError(404, "Not Found")
            fault = self._take_fault(method)
            if fault is not None:
                raise ApiError(fault.status, fault.description, **fault.parameters)
            handler = getattr(self, "_m_" + _snake(method))
            result = handler(params)
            if asyncio.iscoroutine(result):
                result = await result
        except ApiError as exc:
            self._record(Call(method, params, exc.status, error=exc.body(), time=self.clock()))
            return web.json_response(exc.body(), status=exc.status)
        except Exception as exc:  # a bug in the fake or a param shape it cannot digest
            # Recorded and answered (PTB raises NetworkError) so the test shows what broke.
            error = ApiError(500, f"Internal Server Error: fake crashed: {exc!r}")
            self._record(Call(method, params, 500, error=error.body(), time=self.clock()))
            return web.json_response(error.body(), status=500)
        self._record(Call(method, params, 200, result=result, time=self.clock()))
        return web.json_response({"ok": True, "result": result})

    def _record(self, call: Call) -> None:
        self.calls.append(call)
        self._bump()

    @staticmethod
    async def _read_params(request: web.Request) -> Json:
        raw: dict[str, Any] = dict(request.query)
        if request.can_read_body:
            if request.content_type == "application/json":
                with contextlib.suppress(ValueError):
                    body = await request.json()
                    if isinstance(body, dict):
                        raw.update(body)
            else:  # form-urlencoded (PTB's default) or multipart (uploads)
                form = await request.post()
                for key, value in form.items():
                    raw[key] = value if isinstance(value, str) else getattr(value, "filename", "")
        return {key: _decode_param(key, value) for key, value in raw.items()}

    # ---------------------------------------------------------------------------- flood model

    def _flood_check(self, method: str, chat: Json) -> None:
        if method not in self.flood_methods:
            return
        now = self.clock()
        windows = self._windows(chat)
        sent = self._sent.setdefault(int(chat["id"]), deque())
        wait = 0.0
        for limit, window in windows:
            recent = [t for t in sent if t > now - window]
            if len(recent) >= limit:
                wait = max(wait, recent[-limit] + window - now)
        if self.global_rate is not None:
            limit, window = self.global_rate
            recent = [t for t in self._global_sent if t > now - window]
            if len(recent) >= limit:
                wait = max(wait, recent[-limit] + window - now)
        if wait > 0:
            retry_after = max(1, math.ceil(wait))
            raise ApiError(
                429, f"Too Many Requests: retry after {retry_after}", retry_after=retry_after
            )

    def _flood_count(self, method: str, chat: Json) -> None:
        if method in self.flood_methods:
            now = self.clock()
            sent = self._sent.setdefault(int(chat["id"]), deque())
            sent.append(now)
            horizon = max((window for _, window in self._windows(chat)), default=0.0)
            while sent and sent[0] <= now - horizon:
                sent.popleft()
            if self.global_rate is not None:
                self._global_sent.append(now)
                while self._global_sent and self._global_sent[0] <= now - self.global_rate[1]:
                    self._global_sent.popleft()

    def _windows(self, chat: Json) -> list[tuple[int, float]]:
        windows = [self.per_chat_rate] if self.per_chat_rate is not None else []
        if self.group_rate is not None and chat["type"] in ("group", "supergroup"):
            windows.append(self.group_rate)
        return windows

    # ------------------------------------------------------------------------------- helpers

    def _chat(self, params: Json, *, allow_blocked: bool = False) -> Json:
        chat_id = params.get("chat_id")
        if chat_id in (None, ""):
            raise _bad("chat_id is empty")
        chat: Json | None = None
        if isinstance(chat_id, int):
            chat = self.chats.get(chat_id)
        elif isinstance(chat_id, str) and chat_id.startswith("@"):
            chat = next(
                (
                    c
                    for c in self.chats.values()
                    if str(c.get("username", "")).lower() == chat_id[1:].lower()
                ),
                None,
            )
        if chat is None:
            raise _bad("chat not found")
        if not allow_blocked and int(chat["id"]) in self._blocked:
            raise ApiError(403, self._blocked[int(chat["id"])])
        return chat

    def _formatted(self, params: Json, *, allow_empty: bool = False) -> tuple[str, list[Json]]:
        """Text + entities as the server stores them, or the error it would give."""
        raw = params.get("text")
        text = "" if raw is None else str(raw)
        mode = str(params.get("parse_mode") or "").lower()
        try:
            if mode == "html":
                text, entities = parse_html(text)
            elif mode == "markdownv2":
                text, entities = parse_markdown_v2(text)
            elif mode == "markdown":
                text, entities = parse_markdown(text)
            elif mode:
                raise _bad("unsupported parse_mode")  # GUESS at the exact words
            else:
                entities = self._explicit_entities(text, params.get("entities"))
        except ParseError as exc:
            raise _bad(f"can't parse entities: {exc.description}") from None
        text, entities = trim_text(text, entities)
        if not text and not allow_empty:
            raise _bad("message text is empty")
        if utf16_len(text) > self.max_text_length:
            raise _bad("message is too long")
        return text, sort_entities(entities + detect_entities(text, entities))

    @staticmethod
    def _explicit_entities(text: str, entities: Any) -> list[Json]:
        if entities in (None, "", []):
            return []
        if not isinstance(entities, list):
            raise _bad("can't parse entities JSON object")  # GUESS
        size = utf16_len(text)
        result = []
        for entity in entities:
            if not isinstance(entity, dict) or entity.get("type") not in _ENTITY_TYPES:
                raise _bad("can't parse MessageEntity: unsupported type")  # GUESS
            offset, length = entity.get("offset"), entity.get("length")
            if (
                not isinstance(offset, int)
                or not isinstance(length, int)
                or offset < 0
                or length <= 0
                or offset + length > size
            ):
                # GUESS: the real server may clip silently; the fake refuses so bugs surface.
                raise _bad("can't parse entities: entity is out of the text bounds")
            result.append(dict(entity))
        return result

    def _message(self, chat: Json, params: Json, *, verb: str) -> MessageRecord:
        message_id = params.get("message_id")
        if not isinstance(message_id, int):
            raise _bad("message identifier is not specified")  # GUESS
        record = self.messages.get((int(chat["id"]), message_id))
        if record is None or record.deleted:
            raise _bad(f"message to {verb} not found")
        return record

    def _markup(self, params: Json) -> Json | None:
        markup = params.get("reply_markup")
        if markup in (None, "", {}):
            return None
        if not isinstance(markup, dict):
            raise _bad("can't parse reply keyboard markup JSON object")
        return markup

    def _now(self) -> int:
        return int(time.time())

    # ------------------------------------------------------------------------------- methods

    def _m_get_me(self, params: Json) -> Json:
        return {
            **self.bot_user,
            "can_join_groups": True,
            "can_read_all_group_messages": not self.privacy_mode,
            "supports_inline_queries": False,
            "can_connect_to_business": False,
            "has_main_web_app": False,
        }

    def _m_log_out(self, params: Json) -> bool:
        return True

    def _m_close(self, params: Json) -> bool:
        return True

    def _m_set_webhook(self, params: Json) -> bool:
        self.webhook_url = str(params.get("url") or "")
        return True

    def _m_delete_webhook(self, params: Json) -> bool:
        self.webhook_url = ""
        if params.get("drop_pending_updates"):
            self._updates.clear()
        return True

    def _m_get_webhook_info(self, params: Json) -> Json:
        return {
            "url": self.webhook_url,
            "has_custom_certificate": False,
            "pending_update_count": len(self._updates),
        }

    async def _m_get_updates(self, params: Json) -> list[Json]:
        if self.webhook_url:
            raise ApiError(409, CONFLICT_WEBHOOK)
        offset = params.get("offset") or 0
        limit = params.get("limit") or 100
        timeout = params.get("timeout") or 0
        if not 1 <= limit <= 100:
            limit = 100  # the server clamps rather than refuses
        if isinstance(params.get("allowed_updates"), list):
            self._allowed_updates = params["allowed_updates"]
        # Confirming: every update below offset is forgotten (negative: keep the last -offset).
        if offset > 0:
            self._updates = [u for u in self._updates if u["update_id"] >= offset]
        elif offset < 0:
            self._updates = self._updates[offset:]
        # A newer poll supersedes the parked one, which gets the 409 (real server behaviour).
        self._poll_generation += 1
        generation = self._poll_generation
        self._bump()

        def pending() -> list[Json]:
            allowed = self._allowed_updates
            ups = [u for u in self._updates if not allowed or any(k in u for k in allowed)]
            return ups[:limit]

        deadline = asyncio.get_running_loop().time() + timeout
        parked = False
        try:
            while True:
                if generation != self._poll_generation:
                    raise ApiError(409, CONFLICT_POLL)
                updates = pending()
                remaining = deadline - asyncio.get_running_loop().time()
                if updates or remaining <= 0 or self._closing:
                    return updates
                if not parked:
                    parked = True
                    self.parked_polls += 1
                    self._bump()
                # No await since the checks above, so no change can slip in before this tick.
                tick = self._tick
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(remaining):
                        await tick.wait()
        finally:
            if parked:
                self.parked_polls -= 1

    def _m_set_my_commands(self, params: Json) -> bool:
        commands = params.get("commands") or []
        if not isinstance(commands, list):
            raise _bad("can't parse commands JSON object")  # GUESS
        if len(commands) > 100:
            raise _bad("BOT_COMMANDS_TOO_MUCH")
        cleaned = []
        for item in commands:
            if not isinstance(item, dict) or "command" not in item:
                raise _bad("can't parse BotCommand: Can't find field \"command\"")
            if "description" not in item:
                raise _bad("can't parse BotCommand: Can't find field \"description\"")
            # TDLib (BotCommands.cpp): trim, drop one leading '/', then the length rules; the
            # character rule ([a-z0-9_]) is the server's BOT_COMMAND_INVALID.
            name = str(item["command"]).strip()
            name = name[1:] if name.startswith("/") else name
            description = str(item["description"]).strip()
            if not name:
                raise _bad("command must be non-empty")
            if len(name) > 32:
                raise _bad("command length must not exceed 32")
            if not re.fullmatch(r"[a-z0-9_]+", name):
                raise _bad("BOT_COMMAND_INVALID")
            if not description:
                raise _bad("command description must be non-empty")
            if len(description) > 256:
                raise _bad("command description length must not exceed 256")
            cleaned.append({"command": name, "description": description})
        self.commands[self._commands_key(params)] = cleaned
        return True

    def _m_get_my_commands(self, params: Json) -> list[Json]:
        return list(self.commands.get(self._commands_key(params), []))

    def _m_delete_my_commands(self, params: Json) -> bool:
        self.commands.pop(self._commands_key(params), None)
        return True

    @staticmethod
    def _commands_key(params: Json) -> str:
        scope = params.get("scope") or {"type": "default"}
        return json.dumps([scope, params.get("language_code") or ""], sort_keys=True)

    def _m_send_chat_action(self, params: Json) -> bool:
        action = str(params.get("action") or "")
        if action not in _CHAT_ACTIONS:
            raise _bad("wrong parameter action in request")  # from memory, unverified
        chat = self._chat(params)
        self._flood_check("sendChatAction", chat)
        self._flood_count("sendChatAction", chat)
        self.chat_actions.append((int(chat["id"]), action))
        return True

    def _m_send_message(self, params: Json) -> Json:
        chat = self._chat(params)
        chat_id = int(chat["id"])
        self._flood_check("sendMessage", chat)
        text, entities = self._formatted(params)
        reply = params.get("reply_parameters")
        if not isinstance(reply, dict):
            reply = (
                {
                    "message_id": params["reply_to_message_id"],
                    "allow_sending_without_reply": params.get("allow_sending_without_reply"),
                }
                if params.get("reply_to_message_id")
                else None
            )
        replied = None
        if reply is not None:
            replied = self.messages.get(
                (int(reply.get("chat_id") or chat_id), int(reply.get("message_id") or 0))
            )
            if replied is None or replied.deleted:
                replied = None
                if not reply.get("allow_sending_without_reply"):
                    raise _bad("message to be replied not found")
        markup = self._markup(params)
        record = MessageRecord(
            chat=chat,
            message_id=self._new_message_id(chat_id),
            sender=self.bot_user,
            text=text,
            entities=entities,
            date=self._now(),
            reply_to=replied,
            reply_markup=markup,
        )
        self.messages[(chat_id, record.message_id)] = record
        self._flood_count("sendMessage", chat)
        # Any message from the bot replaces the draft the user was shown.
        self.active_drafts.pop(chat_id, None)
        return record.to_api()

    def _m_edit_message_text(self, params: Json) -> Json:
        if params.get("inline_message_id"):
            raise _bad("MESSAGE_ID_INVALID")  # GUESS; inline messages are not modelled
        chat = self._chat(params)
        self._flood_check("editMessageText", chat)
        record = self._message(chat, params, verb="edit")
        if not record.from_bot:
            raise _bad("message can't be edited")
        text, entities = self._formatted(params)
        # Omitting reply_markup on an edit removes the inline keyboard (real behaviour).
        markup = self._markup(params)
        if (
            text == record.text
            and _same_entities(entities, record.entities)
            and markup == record.reply_markup
        ):
            raise _bad(NOT_MODIFIED.removeprefix("Bad Request: "))
        record.history.append((record.text, record.entities))
        record.text, record.entities, record.reply_markup = text, entities, markup
        record.edit_date = self._now()
        self._flood_count("editMessageText", chat)
        return record.to_api()

    def _m_edit_message_reply_markup(self, params: Json) -> Json:
        chat = self._chat(params)
        self._flood_check("editMessageReplyMarkup", chat)
        record = self._message(chat, params, verb="edit")
        if not record.from_bot:
            raise _bad("message can't be edited")
        markup = self._markup(params)
        if markup == record.reply_markup:
            raise _bad(NOT_MODIFIED.removeprefix("Bad Request: "))
        record.reply_markup = markup
        record.edit_date = self._now()
        self._flood_count("editMessageReplyMarkup", chat)
        return record.to_api()

    def _m_send_message_draft(self, params: Json) -> bool:
        chat = self._chat(params)
        if chat["type"] != "private":
            raise _bad("TEXTDRAFT_PEER_INVALID")  # seen in the wild (nullclaw/nullclaw#626)
        draft_id = params.get("draft_id")
        if not isinstance(draft_id, int) or draft_id == 0:
            raise _bad("DRAFT_ID_INVALID")  # GUESS at the words; the rule is documented
        self._flood_check("sendMessageDraft", chat)
        text, entities = self._formatted(params, allow_empty=True)
        draft = DraftRecord(
            int(chat["id"]), draft_id, text, entities, self.clock(), params.get("message_thread_id")
        )
        self.drafts.append(draft)
        self.active_drafts[int(chat["id"])] = draft
        self._flood_count("sendMessageDraft", chat)
        return True

    def _m_delete_message(self, params: Json) -> bool:
        chat = self._chat(params, allow_blocked=True)
        record = self._message(chat, params, verb="delete")
        if not record.from_bot and chat["type"] != "private":
            raise _bad("message can't be deleted")  # GUESS; the fake bot is never an admin
        record.deleted = True
        return True

    def _m_answer_callback_query(self, params: Json) -> bool:
        query_id = str(params.get("callback_query_id") or "")
        if self._callbacks.get(query_id, True):
            raise _bad("query is too old and response timeout expired or query ID is invalid")
        self._callbacks[query_id] = True
        self.callback_answers[query_id] = params
        return True


def _same_entities(a: list[Json], b: list[Json]) -> bool:
    return sorted(map(entity_key, a)) == sorted(map(entity_key, b))


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)([A-Z])", r"_\1", name).lower()


def _decode_param(key: str, value: Any) -> Any:
    if not isinstance(value, str):
        return value
    if key in _INT_PARAMS and re.fullmatch(r"-?\d+", value.strip()):
        return int(value)
    if key in _BOOL_PARAMS:
        return value.strip().lower() in ("true", "1")
    if key in _JSON_PARAMS:
        with contextlib.suppress(ValueError):
            return json.loads(value)
    return value
