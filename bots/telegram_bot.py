"""The Telegram adapter (python-telegram-bot): events in, a MessageSink out.

Private chats: every message is a question. Groups: @mentions of this bot, replies to its
messages and ``/ask@bot …`` (the last two work under privacy mode). Streaming, paging, rate
limits and formatting all live in the shared ``StreamingReply``; this file only maps
Telegram's shapes onto it.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

from telegram import Bot, BotCommand, Message, MessageEntity, ReplyParameters, Update, User
from telegram.constants import ChatAction, ChatType, ParseMode
from telegram.error import (
    BadRequest,
    EndPointNotFound,
    Forbidden,
    InvalidToken,
    NetworkError,
    RetryAfter,
    TelegramError,
)
from telegram.ext import (
    Application,
    ApplicationBuilder,
    CommandHandler,
    ContextTypes,
    MessageHandler,
    filters,
)
from telegram.request import HTTPXRequest

from rtxrelay.core.admission import RefusalReason
from rtxrelay.core.conversation import ConversationService
from rtxrelay.core.env import Env
from rtxrelay.core.errors import ConfigError, PlatformUnreachable
from rtxrelay.core.i18n import N_, Language, Texts, negotiate
from rtxrelay.core.paging import LengthUnit
from rtxrelay.core.ratelimit import Rate
from rtxrelay.core.replies import Replies
from rtxrelay.core.store import ConversationKey, MessageRef
from rtxrelay.core.streaming import (
    DeliveryError,
    DraftsUnavailable,
    MessageSink,
    PlatformProfile,
    ReplyTexts,
    RetryLater,
)

from .languages import AUTONYMS, NEW_CONVERSATION, NOTHING_TO_STOP, Languages
from .telegram_polling import PollRequest, PollWatch
from .telegram_render import to_plain_text, to_telegram_html

log = logging.getLogger(__name__)

PLATFORM = "telegram"  # as the store keys users' language choices
TEXTS = ReplyTexts(
    busy=N_("⏳ Still answering your previous question — send /cancel to stop it."),
    interrupted=N_("⚠️ Interrupted: rtxrelay was restarted. Send /retry to ask again."),
)
# Bot API: 4096 characters after entity parsing; we budget UTF-16 units to be safe either way.
PRIVATE = PlatformProfile("telegram-private", 4096, LengthUnit.UTF16, edit_interval=1.0,
                          typing_interval=4.0, use_drafts=True, texts=TEXTS)
GROUP = PlatformProfile("telegram-group", 4096, LengthUnit.UTF16, edit_interval=3.0,
                        typing_interval=4.0, texts=TEXTS)
# Requests at once to the Bot API. Beyond a few dozen, httpcore's pool spends its time managing
# the queue (work per request grows with connections x waiting requests, encode/httpcore#1035)
# and a burst of answers times out instead of moving; bench/bench_streaming.py measures it.
MAX_IN_FLIGHT = 32
# The Bot FAQ's bot-wide pace is about 30 messages/s; all answers' writes together (messages,
# edits, drafts, typing) stay under 20, since requests bunch on their way out: at 25/s, 1,000
# concurrent answers drew 49 429s in 43 s, at 20/s 2 in all (bench/bench_streaming.py).
BOT_WIDE_WRITES = Rate(20, 1.0)
# A short reply (help, usage, a refusal, a confirmation) that Telegram's flood control pushed
# back is sent again after the wait it asks for: at most this many tries, this long in all.
SAY_TRIES = 3
SAY_PATIENCE = 30.0
# The commands' menu (setMyCommands): each command and its description's catalogue id.
COMMANDS: tuple[tuple[str, str], ...] = (
    ("ask", N_("Ask Chat with RTX a question")),
    ("reset", N_("Start a new conversation")),
    ("cancel", N_("Stop the answer being written")),
    ("retry", N_("Ask your last question again")),
    ("language", N_("Choose the language I answer in")),
    ("help", N_("How to use this bot")),
)
HELP = N_(
    "I pass your questions to Chat with RTX and stream its answers.\n\n"
    "• In a private chat, just write.\n"
    "• In groups, mention me, reply to one of my answers, or use /ask your question.\n"
    "/reset starts a new conversation, /cancel stops an answer, /retry asks again, "
    "/language sets the language I answer in."
)
USAGE = N_("Usage: /ask your question")
CHANGE_LANGUAGE = N_("To change it, send one of these:")
FOLLOW_APP = N_("follow your app's language")


class History(enum.Enum):
    USER = "user"  # one history per person per chat
    CHAT = "chat"  # one shared history per group


class PrivateStreaming(enum.Enum):
    DRAFT = "draft"  # sendMessageDraft previews, then the message
    EDIT = "edit"  # a message edited as the answer grows


@dataclass(frozen=True)
class TelegramSettings:
    token: str
    allowed_users: frozenset[int] = frozenset()
    allowed_chats: frozenset[int] = frozenset()
    proxy: str | None = None
    api_base_url: str | None = None  # a self-hosted Bot API server, e.g. http://host:8081/bot
    history_per_chat: bool = False  # one shared history per group instead of per user
    drafts_in_private: bool = True

    @classmethod
    def from_env(cls, env: Env) -> TelegramSettings:
        token = env.str("TELEGRAM_TOKEN")
        if not token:
            raise ConfigError("TELEGRAM_TOKEN is not set.", hint="Get one from @BotFather.")
        history = env.choice("TELEGRAM_HISTORY", History, History.USER)
        streaming = env.choice("TELEGRAM_PRIVATE_STREAMING", PrivateStreaming,
                               PrivateStreaming.DRAFT)
        return cls(
            token=token,
            allowed_users=env.ids("TELEGRAM_ALLOWED_USERS"),
            allowed_chats=env.ids("TELEGRAM_ALLOWED_CHATS"),
            proxy=env.str("TELEGRAM_PROXY"),
            api_base_url=env.str("TELEGRAM_API_URL"),
            history_per_chat=history is History.CHAT,
            drafts_in_private=streaming is PrivateStreaming.DRAFT,
        )


class BoundedRequest(HTTPXRequest):
    """PTB's own httpx transport with at most ``max_in_flight`` requests at once; the rest
    wait their turn in a semaphore, in order, before they reach the connection pool."""

    def __init__(self, max_in_flight: int = MAX_IN_FLIGHT, **kwargs: Any) -> None:
        kwargs.setdefault("connection_pool_size", max_in_flight)
        super().__init__(**kwargs)
        self._gate = asyncio.Semaphore(max_in_flight)

    async def do_request(self, *args: Any, **kwargs: Any) -> tuple[int, bytes]:
        async with self._gate:
            return await super().do_request(*args, **kwargs)


class TelegramSink(MessageSink):
    """MessageSink over PTB. Interim frames are plain text (partial Markdown is often
    unbalanced); final frames are HTML with a plain-text fallback if Telegram rejects it."""

    def __init__(self, bot: Bot, chat_id: int, *, reply_to: int | None,
                 thread_id: int | None, draft_id: int) -> None:
        self._bot = bot
        self._chat_id = chat_id
        self._reply_to = reply_to
        self._thread_id = thread_id
        self._draft_id = draft_id

    @classmethod
    def for_message(cls, bot: Bot, ref: MessageRef) -> tuple[TelegramSink, int]:
        """A sink that can edit a message recorded earlier, and that message's handle."""
        return cls(bot, int(ref.chat), reply_to=None, thread_id=None, draft_id=0), \
            int(ref.message)

    def ref(self, handle: object) -> MessageRef | None:
        return MessageRef("telegram", str(self._chat_id), str(handle))

    async def send(self, text: str, *, final: bool) -> object:
        reply = ReplyParameters(self._reply_to, allow_sending_without_reply=True) \
            if self._reply_to else None
        self._reply_to = None  # only the first page quotes the question

        async def call(body: str, mode: str | None) -> object:
            message = await self._bot.send_message(
                self._chat_id, body, parse_mode=mode, reply_parameters=reply,
                message_thread_id=self._thread_id,
            )
            return message.message_id

        return await self._write(text, final, call)

    async def edit(self, handle: object, text: str, *, final: bool) -> None:
        assert isinstance(handle, int), "handles are the message ids send() returned"
        message_id = handle

        async def call(body: str, mode: str | None) -> None:
            await self._bot.edit_message_text(
                body, chat_id=self._chat_id, message_id=message_id, parse_mode=mode,
            )

        await self._write(text, final, call)

    async def draft(self, text: str) -> None:
        try:
            await self._guard(self._bot.send_message_draft(
                self._chat_id, self._draft_id, text=to_plain_text(text) or "…",
                message_thread_id=self._thread_id,
            ))
        except (InvalidToken, EndPointNotFound, BadRequest) as exc:
            # A Bot API server older than 9.5 (self-hosted ones lag) has no sendMessageDraft:
            # it answers 404, which PTB reports as InvalidToken (the token itself works).
            raise DraftsUnavailable(type(exc).__name__) from exc

    async def typing(self) -> None:
        await self._guard(self._bot.send_chat_action(
            self._chat_id, ChatAction.TYPING, message_thread_id=self._thread_id,
        ))

    async def _write(self, text: str, final: bool,
                     call: Callable[[str, str | None], Awaitable[object]]) -> object:
        if final:
            try:
                return await self._guard(call(to_telegram_html(text), ParseMode.HTML))
            except BadRequest as exc:
                if "parse entities" not in str(exc).lower():
                    raise DeliveryError(str(exc)) from exc
                log.info("Telegram rejected the formatting; sending plain text")
        try:
            return await self._guard(call(to_plain_text(text), None))
        except BadRequest as exc:
            raise DeliveryError(str(exc)) from exc

    @staticmethod
    async def _guard(call: Awaitable[object]) -> object:
        try:
            return await call
        except RetryAfter as exc:
            raise RetryLater(_retry_seconds(exc)) from exc
        except BadRequest as exc:
            if "not modified" in str(exc).lower():
                return None  # the text is already there: success
            raise
        except Forbidden as exc:
            raise DeliveryError(str(exc)) from exc


class TelegramBot:
    def __init__(
        self,
        service: ConversationService,
        settings: TelegramSettings,
        languages: Languages | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        poll_watch: PollWatch | None = None,
    ) -> None:
        self._service = service
        self._settings = settings
        # Each user's language (the application passes its one catalogue and the store);
        # built without it, the bot speaks English.
        self._languages = languages or Languages.english_only()
        self._poll_watch = poll_watch or PollWatch()
        self._replies = Replies(service, bot_wide_writes=BOT_WIDE_WRITES, clock=clock,
                                sleep=sleep)
        self._sleep = sleep
        self._drafts_refused = False  # the Bot API server has no drafts: edit from the start
        self.application = self._build()

    # PTB's Application takes six type parameters; the builder's defaults are the ones used.
    def _build(self) -> Application:  # type: ignore[type-arg]  # see above
        proxy = self._settings.proxy
        # Both request objects carry the proxy: once a request instance is set, PTB refuses its
        # *_proxy options ("may only be set, if no request instance was set", issue 14). The
        # long poll's is the one ApplicationBuilder would build itself: a pool of one, PTB's
        # default timeouts (get_updates adds the poll's own timeout to the read timeout).
        builder = (ApplicationBuilder().token(self._settings.token).concurrent_updates(True)
                   .request(BoundedRequest(proxy=proxy))
                   .get_updates_request(PollRequest(self._poll_watch, proxy=proxy)))
        if self._settings.api_base_url:
            base = self._settings.api_base_url.rstrip("/")
            builder = builder.base_url(base).base_file_url(base.replace("/bot", "/file/bot", 1))
        app = builder.build()
        # New messages only: editing a question does not ask it again (each edit would start
        # another whole answer); the README says to send it anew or use /retry.
        new = filters.UpdateType.MESSAGE
        app.add_handler(CommandHandler(["start", "help"], self._on_help, filters=new))
        app.add_handler(CommandHandler("ask", self._on_ask, filters=new))
        app.add_handler(CommandHandler("reset", self._on_reset, filters=new))
        app.add_handler(CommandHandler("cancel", self._on_cancel, filters=new))
        app.add_handler(CommandHandler("retry", self._on_retry, filters=new))
        app.add_handler(CommandHandler("language", self._on_language, filters=new))
        app.add_handler(MessageHandler(new & filters.TEXT & ~filters.COMMAND, self._on_text))
        app.add_error_handler(self._on_error)
        return app

    # -- running ----------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Poll until ``stop`` is set, then finish in-flight replies as 'Stopped'."""
        app = self.application
        async with app:
            await self._set_commands(app.bot)
            await app.start()
            await self._tell_stale(app.bot)
            assert app.updater is not None
            await app.updater.start_polling(drop_pending_updates=False,
                                            error_callback=self._poll_watch.failed)
            log.info("Telegram bot @%s is running", app.bot.username)
            conflict = asyncio.ensure_future(self._poll_watch.conflict.wait())
            stopped = asyncio.ensure_future(stop.wait())
            try:
                await asyncio.wait({conflict, stopped}, return_when=asyncio.FIRST_COMPLETED)
                if conflict.done() and not stopped.done():
                    raise _conflict_error(self._poll_watch.webhook)
            finally:
                conflict.cancel()
                stopped.cancel()
                await app.updater.stop()
                await self.finish_replies()
                await app.stop()

    async def _set_commands(self, bot: Bot) -> None:
        """The commands' menu in each language: the default list (DEFAULT_LANGUAGE, for
        languages rtxrelay does not speak), then one per language code. Telegram keys these
        lists by two-letter ISO 639-1 codes only, so "zh" cannot tell Simplified from
        Traditional: every Chinese user sees the Simplified menu (``negotiate("zh")``), while
        their answers follow their full ``language_code`` (zh-hant: Traditional)."""
        await bot.set_my_commands(self._commands(self._languages.default_texts))
        for code in sorted({language.value[:2] for language in Language}):
            language = negotiate(code)
            assert language is not None, "every language rtxrelay speaks has a code"
            await bot.set_my_commands(self._commands(self._languages.texts_in(language)),
                                      language_code=code)

    @staticmethod
    def _commands(texts: Texts) -> list[BotCommand]:
        return [BotCommand(command, texts(description)) for command, description in COMMANDS]

    async def _tell_stale(self, bot: Bot) -> None:
        """Answers a crash interrupted: their last message says so (see Replies), in the
        default language (their askers are not known any more)."""

        async def edit(ref: MessageRef, text: str) -> None:
            sink, handle = TelegramSink.for_message(bot, ref)
            await sink.edit(handle, text, final=True)

        await self._replies.tell_stale(PLATFORM, GROUP, edit,
                                       texts=self._languages.default_texts)

    @property
    def answers_in_flight(self) -> int:
        return self._replies.in_flight

    async def finish_replies(self, timeout: float = 30.0) -> None:
        """Stop every answer in flight; each reply then lands its text as 'Stopped'."""
        await self._replies.stop_all(timeout)

    # -- handlers ---------------------------------------------------------------------------------

    async def _on_help(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        if self._allowed(update) and update.effective_message:
            texts = await self._texts(update.effective_user)
            await self._say(update.effective_message, texts(HELP), do_quote=False)

    async def _on_ask(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        message = update.effective_message
        question = _after_command(message) if message else ""
        if not question:
            if message is not None and self._allowed(update):  # nothing to say to others
                texts = await self._texts(update.effective_user)
                await self._say(message, texts(USAGE))
            return
        await self._answer(update, context, question)

    async def _on_language(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """``/language`` shows the user's language and the choices; ``/language zh-TW``
        keeps a choice for all their chats with this bot; ``/language auto`` forgets it."""
        message, user = update.effective_message, update.effective_user
        if message is None or user is None or not self._allowed(update):
            return  # nothing to say to others
        reply = await self._languages.command(PLATFORM, str(user.id), user.language_code,
                                              _after_command(message),
                                              how_to_change=_how_to_change)
        await self._say(message, reply)

    async def _on_text(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        message = update.effective_message
        chat = update.effective_chat
        if message is None or chat is None or not message.text:
            return
        if chat.type == ChatType.PRIVATE:
            await self._answer(update, context, message.text)
            return
        question = self._addressed_to_bot(message, context)
        if question is not None:
            await self._answer(update, context, question)

    async def _on_reset(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        if not self._allowed(update) or update.effective_message is None:
            return
        await self._service.reset(self._key(update))
        texts = await self._texts(update.effective_user)
        await self._say(update.effective_message, texts(NEW_CONVERSATION))

    async def _on_cancel(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        if not self._allowed(update) or update.effective_message is None:
            return
        if not self._service.cancel(self._key(update)):
            texts = await self._texts(update.effective_user)
            await self._say(update.effective_message, texts(NOTHING_TO_STOP))

    async def _on_retry(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        await self._answer(update, context, None)

    async def _say(self, message: Message, text: str, *, do_quote: bool | None = None) -> None:
        """A short reply. Telegram's flood control answers 429 with the wait it wants; the
        reply is sent again after it (SAY_TRIES, SAY_PATIENCE), so whoever asked is still
        told. Past that, the error reaches ``_on_error`` and is logged."""
        waited = 0.0
        for tries_left in range(SAY_TRIES - 1, -1, -1):
            try:
                await message.reply_text(text, do_quote=do_quote)
                return
            except RetryAfter as exc:
                seconds = _retry_seconds(exc)
                if not tries_left or waited + seconds > SAY_PATIENCE:
                    raise
                waited += seconds
                log.info("Telegram asked to wait %.0f s before a reply; sending it then", seconds)
                await self._sleep(seconds)

    async def _on_error(self, update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
        # Never show exception text to users; log without message content.
        log.error("Telegram handler failed: %s", type(context.error).__name__,
                  exc_info=context.error)

    # -- the answer -------------------------------------------------------------------------------

    async def _answer(self, update: Update, context: ContextTypes.DEFAULT_TYPE,
                      question: str | None) -> None:
        message = update.effective_message
        chat = update.effective_chat
        if message is None or chat is None or update.effective_user is None:
            return
        private = chat.type == ChatType.PRIVATE
        key = self._key(update)
        refusal = self._replies.admit(key, str(update.effective_user.id),
                                      allowed=self._allowed(update))
        if refusal is not None:
            # Outside a private chat, people the bot is not for are not answered at all.
            if private or refusal.reason is not RefusalReason.NOT_ALLOWED:
                texts = await self._texts(update.effective_user)
                await self._say(message,
                                TEXTS.translated(texts).refusal(refusal, private_chat=private))
            return
        texts = await self._texts(update.effective_user)
        if private:
            drafts = self._settings.drafts_in_private and not self._drafts_refused
            profile = replace(PRIVATE, use_drafts=drafts)
        else:
            profile = GROUP
        thread = message.message_thread_id if message.is_topic_message else None
        sink = TelegramSink(context.bot, chat.id, reply_to=None if private else message.message_id,
                            thread_id=thread, draft_id=message.message_id)
        try:
            outcome = await self._replies.answer(sink, profile, key, question, texts=texts)
        except TelegramError as exc:
            log.warning("could not deliver a reply: %s", type(exc).__name__)
            return
        self._drafts_refused |= outcome.drafts_refused

    async def _texts(self, user: User | None) -> Texts:
        """The catalogue in ``user``'s language: their /language choice, else their app's
        (``language_code``, which Telegram may leave out), else DEFAULT_LANGUAGE."""
        if user is None:
            return self._languages.default_texts
        return await self._languages.texts(PLATFORM, str(user.id), user.language_code)

    def _key(self, update: Update) -> ConversationKey:
        chat = update.effective_chat
        user = update.effective_user
        assert chat is not None and user is not None
        per_chat = self._settings.history_per_chat and chat.type != ChatType.PRIVATE
        return ConversationKey("telegram", str(chat.id), "*" if per_chat else str(user.id))

    def _allowed(self, update: Update) -> bool:
        users, chats = self._settings.allowed_users, self._settings.allowed_chats
        if not users and not chats:
            return True
        user = update.effective_user
        chat = update.effective_chat
        return bool((user and user.id in users) or (chat and chat.id in chats))

    @staticmethod
    def _addressed_to_bot(message: Message, context: ContextTypes.DEFAULT_TYPE) -> str | None:
        """The question if a group message is for us (mention or reply), else None."""
        text = message.text or ""
        username = (context.bot.username or "").lower()
        mentioned = False
        for entity, value in message.parse_entities([MessageEntity.MENTION]).items():
            if value.lower() == f"@{username}":
                mentioned = True
                # parse_entities gives UTF-16-correct slices; remove this mention only.
                text = text.replace(value, " ", 1)
                del entity
        replied = message.reply_to_message is not None and (
            message.reply_to_message.from_user is not None
            and message.reply_to_message.from_user.id == context.bot.id
        )
        if not (mentioned or replied):
            return None
        return text.strip()  # line breaks and indentation are part of the question (code)


def _conflict_error(webhook: bool) -> ConfigError:
    if webhook:
        return ConfigError("A webhook is set for TELEGRAM_TOKEN, so the bot cannot poll.",
                           hint="Remove it (https://api.telegram.org/bot<token>/deleteWebhook), "
                           "or stop the program that set it.")
    return ConfigError("Another program is already polling Telegram with TELEGRAM_TOKEN "
                       "(another `rtxrelay run`?).",
                       hint="Stop it first: Telegram lets one program at a time poll a bot "
                       "token.")


def _how_to_change(texts: Texts) -> str:
    """The /language choices, one a line: each language as its speakers write it."""
    lines = [f"/language {language.tag} — {AUTONYMS[language]}" for language in Language]
    return "\n".join([texts(CHANGE_LANGUAGE), *lines, f"/language auto — {texts(FOLLOW_APP)}"])


def _retry_seconds(exc: RetryAfter) -> float:
    """The wait a 429 asks for (PTB gives it as seconds or, newer, as a timedelta)."""
    wait = exc.retry_after
    return wait.total_seconds() if isinstance(wait, timedelta) else float(wait)


def _after_command(message: Message) -> str:
    """The text after ``/ask`` or ``/ask@bot``, line breaks kept (``context.args`` is the
    text split on whitespace, which would flatten a question with code in it)."""
    text = message.text or ""
    for entity, command in message.parse_entities([MessageEntity.BOT_COMMAND]).items():
        if entity.offset == 0:
            # The command is ASCII, so its length in UTF-16 units is its length in ``str``.
            return text[len(command):].strip()
    return text.strip()


async def run_telegram(service: ConversationService, languages: Languages, env: Env,
                       stop: asyncio.Event) -> None:
    bot = TelegramBot(service, TelegramSettings.from_env(env), languages)
    try:
        with contextlib.suppress(asyncio.CancelledError):
            await bot.run(stop)
    except NetworkError as exc:
        if isinstance(exc, BadRequest):  # PTB files BadRequest under NetworkError
            raise
        # Only start-up gets here: once polling, PTB retries network errors on its own.
        raise PlatformUnreachable(
            f"Cannot reach Telegram: {exc.message}.",
            hint="Check the PC's network connection (and TELEGRAM_PROXY, if set).") from None
    except InvalidToken:
        # PTB's message repeats the token; this one names the setting instead.
        raise ConfigError("Telegram rejected TELEGRAM_TOKEN.",
                          hint="Ask @BotFather for the bot's current token (/token) and paste "
                          "it into .env.") from None
