"""The Discord adapter (discord.py): events in, a MessageSink out.

``/ask`` is deferred before anything else happens (Discord drops an interaction that is not
acknowledged within 3 s), then the deferred response is edited as text streams in. @mentions
in servers and DMs get a reply that is edited the same way. Streaming, paging, 429 handling and
the final-text guarantee live in the shared ``StreamingReply``; this file maps Discord's shapes
onto it.

Answers are message *content* (2000 code points per message), not embeds (4096 per
description): content renders code blocks with highlighting and a copy button on every client,
shows in notifications and search, and stays visible for users who turned off "show embeds" in
their settings (embeds would hide the whole answer from them). Embeds would also cap a message
at 6000 characters across all embeds and add no safety: ``allowed_mentions`` is none either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import re
import ssl as ssl_module
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import discord
from discord import app_commands

from rtxrelay.core.admission import RefusalReason
from rtxrelay.core.conversation import ConversationService
from rtxrelay.core.env import Env
from rtxrelay.core.errors import ConfigError, PlatformUnreachable
from rtxrelay.core.i18n import ENGLISH, N_, Language, Texts, negotiate
from rtxrelay.core.paging import LengthUnit, close_open_fence
from rtxrelay.core.ratelimit import Rate
from rtxrelay.core.replies import Replies
from rtxrelay.core.store import ConversationKey, MessageRef
from rtxrelay.core.streaming import (
    DeliveryError,
    MessageSink,
    PlatformProfile,
    ReplyOutcome,
    ReplyStatus,
    ReplyTexts,
    RetryLater,
)

from .discord_render import to_discord_markdown
from .languages import AUTONYMS, NEW_CONVERSATION, NOTHING_TO_STOP, Languages

log = logging.getLogger(__name__)

NO_MENTIONS = discord.AllowedMentions.none()
PLATFORM = "discord"  # as the store keys users' language choices
TEXTS = ReplyTexts(busy=N_("⏳ Still answering your previous question — press Stop on it first."))
# Discord counts content in code points. Message writes share a per-channel bucket, observed
# at 5 per 5 s: one edit a second would empty it exactly, and discord.py then holds the next
# edit for the whole reset (~5 s stalls, bench/bench_streaming.py). 1.25 s keeps a slot spare.
# Typing lasts ~10 s, refreshed every 8.
PROFILE = PlatformProfile("discord", 2000, LengthUnit.CODEPOINT, edit_interval=1.25,
                          typing_interval=8.0, texts=TEXTS)
# Discord allows 50 requests/s per bot, then answers 429 to all of them (interaction endpoints
# are exempt). All answers' writes together (placeholders, edits, final pages, typing) stay
# under 30: requests bunch between this budget and their arrival, and discord.py releases every
# request a global 429 held at once. At 40/s, 1,000 concurrent answers drew 148 429s; at 30,
# none (bench/bench_streaming.py --platform discord). Only > ~30 streaming answers feel it.
BOT_WIDE_WRITES = Rate(30, 1.0)
# Interaction tokens live 15 minutes; stop using one a minute early so no edit races expiry.
TOKEN_LIFETIME = 14 * 60.0
ACK_DEADLINE = 3.0  # seconds Discord gives to acknowledge an interaction
# Connections at once to discord.com. discord.py's own pool is unbounded, so a burst of N
# acknowledgements opens N connections, each with its own TLS handshake; a bounded pool reuses
# keep-alive connections instead and acknowledges a burst of 1,000 3.6x sooner on 2.7x less
# CPU (bench/bench_discord_ack.py). Requests past the bound wait for a free connection.
REST_CONNECTIONS = 32
INVALID_WEBHOOK_TOKEN = 50027
HELP = N_(
    "I pass your questions to Chat with RTX and stream its answers.\n"
    "• `/ask question:` — ask in any channel I can see.\n"
    "• Mention me with a question, or reply to one of my answers to continue.\n"
    "• In DMs, just write.\n"
    "• `/reset` starts a new conversation. **Stop** ends an answer, **Retry** asks again.\n"
    "• `/language` sets the language I answer in."
)
MENTION_HINT = N_("Mention me with your question, e.g. @me what is RTX?")
EMPTY_MENTION = N_("Ask me something — write your question after the mention.")
NOT_YOURS = {"stop": N_("Only the person who asked can stop this answer."),
             "retry": N_("Only the person who asked can retry this answer.")}
BUTTON_LABELS = {"stop": N_("Stop"), "retry": N_("Retry")}
CHANGE_LANGUAGE = N_("To change it, use /language and pick a language.")
MSGID = "msgid"  # the extra of a locale_str that names its catalogue id (CatalogueTranslator)

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


class History(enum.Enum):
    USER = "user"  # one history per person per server (and per DM)
    CHANNEL = "channel"  # one shared history per channel


@dataclass(frozen=True)
class DiscordSettings:
    token: str
    allowed_users: frozenset[int] = frozenset()
    allowed_roles: frozenset[int] = frozenset()
    allowed_channels: frozenset[int] = frozenset()
    allowed_guilds: frozenset[int] = frozenset()
    proxy: str | None = None
    command_guild: int | None = None  # sync commands to this guild only (instant), else global
    history_per_channel: bool = False  # one shared history per channel instead of per user
    message_content: bool = False  # the privileged intent; only needed for replies without @

    @classmethod
    def from_env(cls, env: Env) -> DiscordSettings:
        token = env.str("DISCORD_TOKEN")
        if not token:
            raise ConfigError("DISCORD_TOKEN is not set.",
                              hint="Developer portal → your app → Bot → Reset Token.")
        history = env.choice("DISCORD_HISTORY", History, History.USER)
        proxy = env.str("DISCORD_PROXY")
        if proxy and not proxy.lower().startswith(("http://", "https://")):
            # aiohttp would take socks5://… for an http proxy and fail as "disconnected".
            raise ConfigError(f"DISCORD_PROXY={proxy.split('://')[0]}://… is not an http proxy.",
                              hint="discord.py reaches Discord through http proxies only "
                              "(http://host:port); for SOCKS, run an http-to-SOCKS proxy.",
                              setting="DISCORD_PROXY")
        guilds = env.ids("DISCORD_COMMAND_GUILD")
        if len(guilds) > 1:
            raise ConfigError("DISCORD_COMMAND_GUILD takes one server id.",
                              hint="Leave it empty to register /ask in every server.")
        return cls(
            token=token,
            allowed_users=env.ids("DISCORD_ALLOWED_USERS"),
            allowed_roles=env.ids("DISCORD_ALLOWED_ROLES"),
            allowed_channels=env.ids("DISCORD_ALLOWED_CHANNELS"),
            allowed_guilds=env.ids("DISCORD_ALLOWED_GUILDS"),
            proxy=proxy,
            command_guild=next(iter(guilds), None),
            history_per_channel=history is History.CHANNEL,
            message_content=env.bool("DISCORD_MESSAGE_CONTENT", False),
        )


# -- the message sink -----------------------------------------------------------------------------


class PostedKind(enum.Enum):
    ORIGINAL = enum.auto()  # the interaction's (deferred) response
    FOLLOWUP = enum.auto()  # a follow-up through the interaction's webhook
    CHANNEL = enum.auto()  # an ordinary channel message


@dataclass
class _Posted:
    """A message we sent, and how to reach it again."""

    id: int
    kind: PostedKind
    message: discord.Message | None = None


class DiscordSink(MessageSink):
    """MessageSink over discord.py. Every write carries ``allowed_mentions`` none and the
    Stop button while streaming. Writes go through the interaction webhook while its token is
    valid, then as ordinary channel messages (edits of webhook messages via the channel)."""

    def __init__(
        self,
        channel: discord.abc.Messageable,
        *,
        interaction: discord.Interaction | None,
        original_pending: bool,
        reply_to: discord.Message | None,
        stop_view: discord.ui.View | None,
        clock: Clock,
    ) -> None:
        self._channel = channel
        self._interaction = interaction
        self._original_pending = original_pending  # a deferred response awaits its content
        self._reply_to = reply_to
        self._stop_view = stop_view
        self._clock = clock
        self._expires_at = clock() + TOKEN_LIFETIME

    def _token_valid(self) -> bool:
        return self._interaction is not None and self._clock() < self._expires_at

    def _body(self, text: str, final: bool) -> dict[str, Any]:
        content = to_discord_markdown(text if final else close_open_fence(text))
        return {"content": content or "…", "allowed_mentions": NO_MENTIONS,
                "view": None if final else self._stop_view}

    async def send(self, text: str, *, final: bool) -> object:
        body = self._body(text, final)
        if body["view"] is None:
            del body["view"]  # new messages take a view or nothing (None is for edits)
        if self._token_valid():
            assert self._interaction is not None
            try:
                if self._original_pending:
                    message = await _guard(self._interaction.edit_original_response(**body))
                    self._original_pending = False
                    return _Posted(message.id, PostedKind.ORIGINAL)
                message = await _guard(self._interaction.followup.send(wait=True, **body))
                return _Posted(message.id, PostedKind.FOLLOWUP)
            except _TokenExpired:
                self._expires_at = self._clock()  # continue in the channel below
        reference, self._reply_to = self._reply_to, None  # only the first page quotes
        if reference is not None:
            body.update(reference=reference, mention_author=False)
        message = await _guard(self._channel.send(**body))
        return _Posted(message.id, PostedKind.CHANNEL, message)

    async def edit(self, handle: object, text: str, *, final: bool) -> None:
        await self._edit(handle, self._body(text, final))

    async def _edit(self, handle: object, body: dict[str, Any]) -> None:
        assert isinstance(handle, _Posted)
        if handle.kind is not PostedKind.CHANNEL and self._token_valid():
            assert self._interaction is not None
            try:
                if handle.kind is PostedKind.ORIGINAL:
                    await _guard(self._interaction.edit_original_response(**body))
                else:
                    await _guard(self._interaction.followup.edit_message(handle.id, **body))
                return
            except _TokenExpired:
                self._expires_at = self._clock()
        # A bot may edit its own messages through the channel, interaction responses included
        # (if it can see the channel); if not, DeliveryError makes the engine send anew.
        target = handle.message or self._partial(handle.id)
        await _guard(target.edit(**body))

    def _partial(self, message_id: int) -> discord.PartialMessage:
        get = getattr(self._channel, "get_partial_message", None)
        if get is None:
            raise DeliveryError("this channel does not allow editing by id")
        message: discord.PartialMessage = get(message_id)
        return message

    async def set_view(self, handle: object, view: discord.ui.View | None) -> None:
        """Swap the buttons under a message, leaving its text alone. Best effort: the answer
        itself has landed already."""
        try:
            await self._edit(handle, {"view": view, "allowed_mentions": NO_MENTIONS})
        except (DeliveryError, RetryLater, discord.HTTPException, aiohttp.ClientError, OSError,
                TimeoutError) as exc:  # the network may drop too (e.g. while shutting down)
            log.info("buttons not updated: %s", type(exc).__name__)

    async def typing(self) -> None:
        if self._interaction is None:  # a deferred interaction already shows "is thinking…"
            await _guard(self._channel.typing())

    def ref(self, handle: object) -> MessageRef | None:
        channel_id = getattr(self._channel, "id", None)
        if not isinstance(handle, _Posted) or channel_id is None:
            return None
        return MessageRef("discord", str(channel_id), str(handle.id))

    def bot_wide(self) -> bool:
        # Interaction webhooks (an /ask's response and follow-ups) are outside Discord's
        # bot-wide limit, so their final pages need not wait for the bot's budget (shutting
        # down with 1,000 asks in line would otherwise take 30 s); channel writes do.
        return not self._token_valid()


class _TokenExpired(Exception):
    pass


async def _guard(call: Awaitable[Any]) -> Any:
    """discord.py errors → the engine's vocabulary (RetryLater, DeliveryError)."""
    try:
        return await call
    except discord.RateLimited as exc:  # a wait above max_ratelimit_timeout
        raise RetryLater(exc.retry_after) from exc
    except discord.HTTPException as exc:
        if exc.status == 429:  # discord.py already retried it several times
            raise RetryLater(1.0) from exc
        if exc.code == INVALID_WEBHOOK_TOKEN:
            raise _TokenExpired from exc
        if isinstance(exc, discord.NotFound | discord.Forbidden):
            raise DeliveryError(f"{exc.status} (code {exc.code})") from exc
        raise


# -- Stop and Retry buttons -----------------------------------------------------------------------


class ControlButton(discord.ui.DynamicItem[discord.ui.Button[Any]],
                    template=r"rtxrelay:(?P<action>stop|retry):(?P<user>[0-9]+)"):
    """Stop/Retry under an answer. The asker's id is in the custom_id, so the buttons keep
    working after a restart and nothing is kept in memory per message."""

    def __init__(self, action: str, asker: int, label: str | None = None) -> None:
        """``label``: in the asker's language (a click rebuilds the item without one: only
        its custom_id matters then)."""
        emoji = "⏹" if action == "stop" else "🔄"
        super().__init__(discord.ui.Button(
            label=label, emoji=emoji, style=discord.ButtonStyle.secondary,
            custom_id=f"rtxrelay:{action}:{asker}",
        ))
        self.action, self.asker = action, asker

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Item[Any],
                             match: re.Match[str], /) -> ControlButton:
        return cls(match["action"], int(match["user"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        bot = getattr(interaction.client, "relay", None)
        if isinstance(bot, DiscordBot):
            await bot.on_control(interaction, self.action, self.asker)


def control_view(action: str, asker: int, texts: Texts = ENGLISH) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    view.add_item(ControlButton(action, asker, texts(BUTTON_LABELS[action])))
    return view


# -- slash commands in the users' languages -------------------------------------------------------


class CatalogueTranslator(app_commands.Translator):
    """Slash-command descriptions, option names and choice names, translated for each of
    Discord's locales that rtxrelay speaks (zh-CN, zh-TW; en-US and en-GB when the default
    language is not English): discord.py sends them as ``name_localizations`` and
    ``description_localizations`` when the commands are synced. Only strings made by
    ``DiscordBot._described`` or ``named`` (they carry their catalogue id) are translated:
    command names and the languages' own names (the /language choices) stay as they are."""

    def __init__(self, languages: Languages) -> None:
        self._languages = languages

    async def translate(self, string: app_commands.locale_str, locale: discord.Locale,
                        context: app_commands.TranslationContextTypes) -> str | None:
        msgid = string.extras.get(MSGID)
        language = negotiate(locale.value)
        if not isinstance(msgid, str) or language is None:
            return None  # Discord shows the default text
        text = self._languages.texts_in(language)(msgid)
        return text if text != string.message else None


def named(msgid: str) -> app_commands.locale_str:
    """An option's name: English by default (what users type and interactions carry),
    translated for the locales rtxrelay speaks."""
    return app_commands.locale_str(msgid, **{MSGID: msgid})


# -- the bot --------------------------------------------------------------------------------------


class _Client(discord.Client):
    def __init__(self, relay: DiscordBot, **options: Any) -> None:
        super().__init__(**options)
        self.relay = relay
        self.tree = app_commands.CommandTree(self)

    async def setup_hook(self) -> None:
        await self.relay.setup()

    async def on_message(self, message: discord.Message) -> None:
        await self.relay.on_message(message)


def rest_connector(ssl: ssl_module.SSLContext | bool = True) -> aiohttp.TCPConnector:
    """The bot's connection pool: at most REST_CONNECTIONS to any one host (discord.com; the
    gateway is another host). Call it inside the running loop, like any aiohttp connector."""
    return aiohttp.TCPConnector(limit=0, limit_per_host=REST_CONNECTIONS, ssl=ssl)


class DiscordBot:
    """Construct inside the running event loop (its connection pool belongs to that loop)."""

    def __init__(
        self,
        service: ConversationService,
        settings: DiscordSettings,
        languages: Languages | None = None,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        client_options: dict[str, Any] | None = None,
    ) -> None:
        self._service = service
        self._settings = settings
        # Each user's language (the application passes its one catalogue and the store);
        # built without it, the bot speaks English.
        self._languages = languages or Languages.english_only()
        self._clock = clock  # interaction-token expiry
        self._replies = Replies(service, bot_wide_writes=BOT_WIDE_WRITES, clock=clock,
                                sleep=sleep)
        # Acknowledgements have Discord's 3 s deadline; answers do not. In a burst, answers
        # wait until no acknowledgement is pending (see _acking / _after_acks).
        self._acks_pending = 0
        self._no_acks_pending = asyncio.Event()
        self._no_acks_pending.set()
        intents = discord.Intents.default()
        intents.message_content = settings.message_content
        intents.typing = False  # we never read typing events; less gateway traffic
        options: dict[str, Any] = {
            "intents": intents,
            "allowed_mentions": NO_MENTIONS,
            "proxy": settings.proxy,
            # Longer 429 waits surface as RateLimited so the engine can skip interim edits.
            "max_ratelimit_timeout": 30.0,
            # discord.py keeps the last 1,000 messages for edit/delete events we never use;
            # replies carry the message they answer in the payload. Fewer objects for the
            # garbage collector to walk while many answers are in flight.
            "max_messages": None,
        }
        options.update(client_options or {})
        # rtxrelay never joins voice: spare the operator discord.py's advice to install PyNaCl.
        discord.VoiceClient.warn_nacl = discord.VoiceClient.warn_dave = False
        if "connector" not in options:
            options["connector"] = rest_connector()
        self.client = _Client(self, **options)
        self._register_commands(self.client.tree)

    # -- running ----------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Connect until ``stop`` is set, then finish in-flight answers as 'Stopped'."""
        client = self.client
        runner = asyncio.create_task(client.start(self._settings.token, reconnect=True))
        waiter = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({runner, waiter}, return_when=asyncio.FIRST_COMPLETED)
            if runner.done():
                _raise_start_error(runner)
        finally:
            waiter.cancel()
            await self.finish_replies()
            await client.close()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(runner, 10)

    @property
    def answers_in_flight(self) -> int:
        return self._replies.in_flight

    async def finish_replies(self, timeout: float = 30.0) -> None:
        """Stop every answer in flight (started or not); each lands its text as 'Stopped'."""
        await self._replies.stop_all(timeout)

    @contextlib.contextmanager
    def _acking(self) -> Iterator[None]:
        self._acks_pending += 1
        self._no_acks_pending.clear()
        try:
            yield
        finally:
            self._acks_pending -= 1
            if not self._acks_pending:
                self._no_acks_pending.set()

    async def _after_acks(self) -> None:
        # Bounded: past Discord's deadline a pending acknowledgement is moot anyway.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(ACK_DEADLINE):
                await self._no_acks_pending.wait()

    async def setup(self) -> None:
        self.client.add_dynamic_items(ControlButton)
        await self._tell_stale()
        tree = self.client.tree
        await tree.set_translator(CatalogueTranslator(self._languages))
        try:
            if self._settings.command_guild is not None:
                guild = discord.Object(self._settings.command_guild)
                tree.copy_global_to(guild=guild)
                await tree.sync(guild=guild)
            else:
                await tree.sync()
        except discord.Forbidden:
            # Mentions and DMs still work; say exactly what to fix for the slash commands.
            log.error("Discord refused to register /ask in server %s: the bot is not in it or "
                      "was invited without the applications.commands scope. Re-invite it, or "
                      "clear DISCORD_COMMAND_GUILD.", self._settings.command_guild)
        log.info("Discord bot is connecting")

    async def _tell_stale(self) -> None:
        """Answers a crash interrupted: their last message says so (see Replies), in the
        default language (their askers are not known any more). A bot may edit its own
        messages through the channel, interaction responses included."""

        async def edit(ref: MessageRef, text: str) -> None:
            channel = self.client.get_partial_messageable(int(ref.chat))
            sink = DiscordSink(channel, interaction=None, original_pending=False,
                               reply_to=None, stop_view=None, clock=self._clock)
            await sink.edit(_Posted(int(ref.message), PostedKind.CHANNEL), text, final=True)

        await self._replies.tell_stale(PLATFORM, PROFILE, edit,
                                       texts=self._languages.default_texts)

    def _described(self, msgid: str) -> app_commands.locale_str:
        """A description or choice name: in DEFAULT_LANGUAGE by default (what Discord shows
        in locales rtxrelay does not speak, as its answers there are), translated for the
        others (CatalogueTranslator)."""
        return app_commands.locale_str(self._languages.default_texts(msgid), **{MSGID: msgid})

    def _register_commands(self, tree: app_commands.CommandTree[Any]) -> None:
        text = self._described

        @tree.command(name="ask", description=text(N_("Ask Chat with RTX a question")))
        @app_commands.describe(question=text(N_("What do you want to know?")))
        @app_commands.rename(question=named(N_("question")))
        async def ask(interaction: discord.Interaction, question: str) -> None:
            await self._on_ask(interaction, question)

        @tree.command(name="reset",
                      description=text(N_("Start a new conversation with Chat with RTX")))
        async def reset(interaction: discord.Interaction) -> None:
            texts = await self._interaction_texts(interaction)
            if not self._allowed(interaction.user, interaction.guild, interaction.channel):
                await _tell(interaction, texts(TEXTS.not_allowed_here))
                return
            await self._service.reset(self._key(interaction.user, interaction.guild,
                                                interaction.channel_id))
            await _tell(interaction, texts(NEW_CONVERSATION))

        @tree.command(name="help", description=text(N_("How to use this bot")))
        async def help_(interaction: discord.Interaction) -> None:
            texts = await self._interaction_texts(interaction)
            await _tell(interaction, texts(HELP))

        choices = [app_commands.Choice(name=AUTONYMS[language], value=language.tag)
                   for language in Language]
        choices.append(app_commands.Choice(
            name=text(N_("Automatic: follow your Discord language")), value="auto"))

        @tree.command(name="language", description=text(N_("Choose the language I answer in")))
        @app_commands.describe(language=text(N_("Leave it out to see your language now")))
        @app_commands.rename(language=named(N_("language")))
        @app_commands.choices(language=choices)
        async def language(interaction: discord.Interaction, language: str | None = None) -> None:
            await self._on_language(interaction, language or "")

    async def _on_language(self, interaction: discord.Interaction, choice: str) -> None:
        """``/language`` shows the user's language; with a choice it keeps it for all their
        servers and DMs with this bot; ``auto`` forgets it."""
        if not self._allowed(interaction.user, interaction.guild, interaction.channel):
            texts = await self._interaction_texts(interaction)
            await _tell(interaction, texts(TEXTS.not_allowed_here))
            return
        reply = await self._languages.command(
            PLATFORM, str(interaction.user.id), interaction.locale.value, choice,
            how_to_change=lambda texts: texts(CHANGE_LANGUAGE))
        await _tell(interaction, reply)

    # -- /ask -------------------------------------------------------------------------------------

    async def _on_ask(self, interaction: discord.Interaction, question: str) -> None:
        # Acknowledge first: everything below waits on Chat with RTX or the database, and the
        # 3-second deadline is Discord's, whatever the backend is doing.
        key = self._key(interaction.user, interaction.guild, interaction.channel_id)
        with self._acking():
            if await self._refused(interaction, key, interaction.user.id):
                return
            deferred = True
            try:
                await interaction.response.defer(thinking=True)
            except discord.NotFound:
                deferred = False  # too late: Discord dropped it; answer in the channel
                log.warning("an /ask arrived too late to acknowledge; answering in the channel")
        channel = interaction.channel
        if channel is None or not isinstance(channel, discord.abc.Messageable):
            return
        texts = await self._interaction_texts(interaction)
        sink = self._sink(channel, interaction if deferred else None, original_pending=deferred,
                          reply_to=None, asker=interaction.user.id, texts=texts)
        await self._stream(sink, key, interaction.user.id, question, texts,
                           placeholder_shown=deferred)

    async def _refused(self, interaction: discord.Interaction, key: ConversationKey,
                       asker: int) -> bool:
        """Admit the question, or say privately why not (this acknowledges the interaction)."""
        refusal = self._replies.admit(key, str(asker), allowed=self._allowed(
            interaction.user, interaction.guild, interaction.channel))
        if refusal is None:
            return False
        texts = await self._interaction_texts(interaction)
        await _tell(interaction, TEXTS.translated(texts).refusal(refusal, private_chat=False))
        return True

    # -- mentions, replies and DMs ----------------------------------------------------------------

    async def on_message(self, message: discord.Message) -> None:
        me = self.client.user
        if me is None or message.author.bot or message.type not in (
            discord.MessageType.default, discord.MessageType.reply
        ):
            return  # our own messages come back over the gateway; never answer bots
        question = self._question(message, me.id)
        if question is None:
            return
        allowed = self._allowed(message.author, message.guild, message.channel)
        if allowed and not question:
            hint = (MENTION_HINT if message.guild is not None
                    and not self._settings.message_content else EMPTY_MENTION)
            await self._say(message, (await self._message_texts(message))(hint))
            return
        key = self._key(message.author, message.guild, message.channel.id)
        refusal = self._replies.admit(key, str(message.author.id), allowed=allowed)
        if refusal is not None:
            # In a server, people the bot is not for are not answered at all.
            if message.guild is None or refusal.reason is not RefusalReason.NOT_ALLOWED:
                texts = await self._message_texts(message)
                await self._say(message, TEXTS.translated(texts).refusal(
                    refusal, private_chat=message.guild is None))
            return
        texts = await self._message_texts(message)
        sink = self._sink(message.channel, None, original_pending=False, reply_to=message,
                          asker=message.author.id, texts=texts)
        await self._stream(sink, key, message.author.id, question, texts)

    def _question(self, message: discord.Message, me: int) -> str | None:
        """The question if this message is for us, else None ("" = for us but unreadable)."""
        text = message.content or ""
        if message.guild is None:
            return text.strip()
        mentioned = any(user.id == me for user in message.mentions)
        ref = message.reference
        replied = ref is not None and isinstance(ref.resolved, discord.Message) and (
            ref.resolved.author.id == me
        )
        if not (mentioned or replied):
            return None
        # Remove only our own mention token; other mentions are part of the question, and so
        # are line breaks and indentation (code).
        return re.sub(rf"<@!?{me}>", " ", text).strip()

    async def _say(self, message: discord.Message, text: str) -> None:
        with contextlib.suppress(discord.HTTPException):
            await message.reply(text, mention_author=False, allowed_mentions=NO_MENTIONS)

    # -- buttons ----------------------------------------------------------------------------------

    async def on_control(self, interaction: discord.Interaction, action: str, asker: int) -> None:
        key = self._key(interaction.user, interaction.guild, interaction.channel_id)
        with self._acking():
            if interaction.user.id != asker:
                texts = await self._interaction_texts(interaction)
                await _tell(interaction, texts(NOT_YOURS[action]))
                return
            if action == "stop":
                await interaction.response.defer()  # the answer's own edit shows "Stopped"
                if not self._service.cancel(key):
                    texts = await self._interaction_texts(interaction)
                    await interaction.followup.send(texts(NOTHING_TO_STOP), ephemeral=True,
                                                    allowed_mentions=NO_MENTIONS)
                return
            if await self._refused(interaction, key, asker):
                return
            # Acknowledge by removing the Retry button (one request); answer in follow-ups.
            await interaction.response.edit_message(view=None, allowed_mentions=NO_MENTIONS)
        channel = interaction.channel
        if channel is None or not isinstance(channel, discord.abc.Messageable):
            return
        texts = await self._interaction_texts(interaction)
        sink = self._sink(channel, interaction, original_pending=False,
                          reply_to=interaction.message, asker=asker, texts=texts)
        await self._stream(sink, key, asker, None, texts)

    # -- streaming --------------------------------------------------------------------------------

    def _sink(self, channel: discord.abc.Messageable, interaction: discord.Interaction | None, *,
              original_pending: bool, reply_to: discord.Message | None,
              asker: int, texts: Texts = ENGLISH) -> DiscordSink:
        return DiscordSink(channel, interaction=interaction, original_pending=original_pending,
                           reply_to=reply_to, stop_view=control_view("stop", asker, texts),
                           clock=self._clock)

    async def _stream(self, sink: DiscordSink, key: ConversationKey, asker: int,
                      question: str | None, texts: Texts, *,
                      placeholder_shown: bool = False) -> None:
        """Answer ``question`` (None: ask the last one again) into ``sink``, in ``texts``'
        language."""
        await self._after_acks()

        async def offer_retry(outcome: ReplyOutcome) -> None:
            if outcome.final_landed and outcome.handles and outcome.status in (
                ReplyStatus.COMPLETE, ReplyStatus.FAILED, ReplyStatus.INTERRUPTED
            ):
                await sink.set_view(outcome.handles[-1], control_view("retry", asker, texts))

        try:
            await self._replies.answer(sink, PROFILE, key, question, texts=texts,
                                       placeholder_shown=placeholder_shown, then=offer_retry)
        except discord.HTTPException as exc:
            log.warning("could not deliver a reply: HTTP %s (code %s)", exc.status, exc.code)

    # -- who, where, which conversation, which language ---------------------------------------

    async def _interaction_texts(self, interaction: discord.Interaction) -> Texts:
        """The catalogue in the user's language: their /language choice, else their Discord
        client's (``locale``, sent with every interaction), else DEFAULT_LANGUAGE."""
        return await self._languages.texts(PLATFORM, str(interaction.user.id),
                                           interaction.locale.value)

    async def _message_texts(self, message: discord.Message) -> Texts:
        """For a message (an @mention, a DM): the author's /language choice, else the
        server's language (messages do not carry the author's own), else
        DEFAULT_LANGUAGE."""
        guild = message.guild
        return await self._languages.texts(
            PLATFORM, str(message.author.id),
            guild.preferred_locale.value if guild is not None else None)

    def _key(self, user: discord.abc.User, guild: discord.Guild | None,
             channel_id: int | None) -> ConversationKey:
        if guild is None:
            return ConversationKey("discord", "dm", str(user.id))
        if self._settings.history_per_channel:
            return ConversationKey("discord", f"channel-{channel_id}", "*")
        return ConversationKey("discord", f"guild-{guild.id}", str(user.id))

    def _allowed(self, user: discord.abc.User, guild: discord.Guild | None,
                 channel: object) -> bool:
        """Who (users or roles) and where (guilds or channels): each list that is set must
        match. In DMs, a "where" list admits only users named in DISCORD_ALLOWED_USERS."""
        s = self._settings
        trusted = user.id in s.allowed_users
        roles = {role.id for role in getattr(user, "roles", ())}
        who = (not s.allowed_users and not s.allowed_roles) or trusted or bool(
            roles & s.allowed_roles)
        if not (s.allowed_guilds or s.allowed_channels):
            return who
        if guild is None:
            return who and trusted
        channel_ids = {getattr(channel, "id", None), getattr(channel, "parent_id", None)}
        where = guild.id in s.allowed_guilds or bool(channel_ids & s.allowed_channels)
        return who and where


async def _tell(interaction: discord.Interaction, text: str) -> None:
    """Answer an interaction with a message only its user sees (this is its acknowledgement)."""
    await interaction.response.send_message(text, ephemeral=True, allowed_mentions=NO_MENTIONS)


def _raise_start_error(runner: asyncio.Task[None]) -> None:
    """Turn discord.py's start-up failures into errors that say what to change."""
    try:
        runner.result()
    except discord.LoginFailure as exc:
        raise ConfigError("Discord rejected DISCORD_TOKEN.",
                          hint="Developer portal → your app → Bot → Reset Token, and paste the "
                          "new token into .env.") from exc
    except (aiohttp.ClientConnectionError, OSError, TimeoutError, discord.GatewayNotFound,
            discord.DiscordServerError) as exc:
        # Login is discord.py's one step without retries (it reconnects on its own after).
        raise PlatformUnreachable(
            f"Cannot reach Discord: {str(exc) or type(exc).__name__}.",
            hint="Check the PC's network connection (and DISCORD_PROXY, if set).") from exc
    except discord.PrivilegedIntentsRequired as exc:
        raise ConfigError(
            "Discord refused the Message Content intent (DISCORD_MESSAGE_CONTENT=1).",
            hint="Developer portal → your app → Bot → Privileged Gateway Intents → turn on "
            "'Message Content Intent' and save, or set DISCORD_MESSAGE_CONTENT=0 (mentions, "
            "DMs and /ask work without it).") from exc


async def run_discord(service: ConversationService, languages: Languages, env: Env,
                      stop: asyncio.Event) -> None:
    bot = DiscordBot(service, DiscordSettings.from_env(env), languages)
    await bot.run(stop)
