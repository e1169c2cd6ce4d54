"""StreamingReply: one engine that turns a conversation's updates into platform messages.

Platforms differ only in data (``PlatformProfile``: length limit and its unit, edit interval,
typing expiry, drafts or edits) and in a tiny ``MessageSink`` each adapter implements. The
engine:

- shows something at once (a status placeholder), keeps the typing indicator alive;
- coalesces interim edits to the profile's budget and never re-sends unchanged text;
- after a 429 (``RetryLater``) suspends interim edits for the penalty, then **always** lands
  the final text — by editing, or by a new message if the edit cannot be made;
- continues long answers in new messages at safe boundaries (``Pager``), fences intact.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, fields, replace

from .admission import Refusal, RefusalReason
from .backend import Queued, Started, TextSoFar, Throttled
from .conversation import Busy, Finished, Rejected, ReplyUpdate
from .errors import BackendError
from .i18n import ENGLISH, N_, Texts
from .paging import LengthUnit, Pager, split_pages
from .ratelimit import SlidingWindowLimiter
from .store import MessageRef, TurnStatus

log = logging.getLogger(__name__)
BOT_WIDE = "bot"  # the one key of a bot-wide budget (SlidingWindowLimiter)
MAX_READ_WINDOW = 0.25  # seconds; see PlatformProfile.read_window


class RetryLater(Exception):
    """The platform rate-limited us; try again after ``seconds``."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"retry after {seconds:g} s")
        self.seconds = max(0.0, seconds)


class DeliveryError(Exception):
    """This message cannot be sent or edited (deleted, too old, forbidden)."""


class DraftsUnavailable(DeliveryError):
    """The platform refused draft streaming (an older or self-hosted server, or a chat where
    drafts are not allowed): the engine switches to sending and editing a message."""


class MessageSink(abc.ABC):
    """What an adapter provides: one conversation's place to write (a chat, a channel, an
    interaction). Text is neutral Markdown; the sink renders it for its platform (interim
    frames may be plain; ``final`` frames get formatting).

    Errors: a platform rate limit must raise ``RetryLater``; a message that cannot be written
    (deleted, too old, forbidden) must raise ``DeliveryError``. Anything else is taken as a
    transient failure and retried for final text.
    """

    @abc.abstractmethod
    async def send(self, text: str, *, final: bool) -> object:
        """Send a new message and return a handle for later edits."""

    @abc.abstractmethod
    async def edit(self, handle: object, text: str, *, final: bool) -> None:
        """Replace a message's text. 'Not modified' must be treated as success."""

    @abc.abstractmethod
    async def typing(self) -> None:
        """Show that an answer is being written (best effort)."""

    async def draft(self, text: str) -> None:
        """Show a streaming preview that is not a message (Telegram DMs). Platforms without
        drafts need not override this: the engine then sends and edits a message."""
        raise DraftsUnavailable("this platform has no drafts")

    def bot_wide(self) -> bool:
        """Whether the next write counts against the platform's bot-wide limit (Discord's
        interaction endpoints are exempt from its 50 requests/s)."""
        return True

    def ref(self, handle: object) -> MessageRef | None:
        """The message ``send`` returned, as the store keeps it (so a crash's stale message
        can be told later); None when the platform cannot edit it again."""
        return None


@dataclass(frozen=True)
class ReplyTexts:
    """Everything a bot says about an answer and about a refused question, in one place.

    The fields are catalogue ids (core/i18n.py): a platform may change one (its own busy
    text), and ``translated`` gives them in a reader's language for one reply."""

    # Neutral about which backend answers: Chat with RTX, Ollama, a llama.cpp server…
    starting: str = N_("⏳ Asking the model…")
    waiting: str = N_("⏳ #{position} in line — the model answers one question at a time…")
    thinking: str = N_("💭 Thinking…")
    throttled: str = N_("⏳ The model is busy — trying again in {seconds} s…")
    busy: str = N_("⏳ Still answering your previous question. Wait for it, or stop it first.")
    empty: str = N_("(The model returned an empty answer.)")
    stopped: str = N_("⏹ Stopped.")
    failed: str = N_("⚠️ {error}")
    went_wrong: str = N_("Something went wrong.")
    trimmed: str = N_("(Older messages were left out to fit the model's context.)")
    interrupted: str = N_("⚠️ Interrupted: rtxrelay was restarted. Ask again.")
    not_allowed: str = N_("Sorry, this bot is private.")  # in a private chat
    not_allowed_here: str = N_("Sorry, you can't use this bot here.")  # seen by the asker alone
    slow_down: str = N_("Slow down a little — try again in {seconds} s.")
    # The catalogue in the reader's language: errors and refusals are translated with it.
    texts: Texts = field(default=ENGLISH, compare=False)

    def translated(self, texts: Texts) -> ReplyTexts:
        """These texts in ``texts``' language."""
        return replace(self, texts=texts, **{
            name: texts(getattr(self, name)) for name in _TEXT_FIELDS})

    def error(self, error: BackendError | None) -> str:
        return self.failed.format(
            error=error.user_message_in(self.texts) if error else self.went_wrong)

    def rejected(self, rejected: Rejected) -> str:
        return rejected.text_in(self.texts)

    def refusal(self, refusal: Refusal, *, private_chat: bool) -> str:
        """What to tell the asker. ``private_chat``: a one-to-one chat with the bot, rather
        than an answer only the asker sees elsewhere (Discord's ephemeral messages)."""
        if refusal.reason is RefusalReason.BUSY:
            return self.busy
        if refusal.reason is RefusalReason.RATE_LIMITED:
            return self.slow_down.format(seconds=int(refusal.retry_after) + 1)
        return self.not_allowed if private_chat else self.not_allowed_here


_TEXT_FIELDS = tuple(f.name for f in fields(ReplyTexts) if f.name != "texts")


@dataclass(frozen=True)
class PlatformProfile:
    name: str
    max_length: int  # per message, measured in ``unit``
    unit: LengthUnit
    edit_interval: float  # seconds between interim edits of one reply
    typing_interval: float  # re-send typing before the platform lets it expire
    use_drafts: bool = False  # stream into drafts, send finished pages as messages
    cursor: str = " ▍"
    reserve: int = 64  # room kept for the cursor and status footers
    final_patience: float = 900.0  # how long to keep retrying the final text after 429s
    texts: ReplyTexts = field(default_factory=ReplyTexts)

    @property
    def read_window(self) -> float:
        """How often the answer stream is read once text flows (``Backend.stream_answer``):
        a fraction of the edit interval, so an edit never shows text older than that, and
        capped so the end of an answer is never late by more than a quarter of a second."""
        return min(self.edit_interval / 4, MAX_READ_WINDOW)


class ReplyStatus(enum.Enum):
    NONE = "none"  # the stream ended without a final state (should not happen)
    COMPLETE = "complete"
    INTERRUPTED = "interrupted"
    FAILED = "failed"
    BUSY = "busy"
    REJECTED = "rejected"


class FrameKind(enum.Enum):
    STATUS = enum.auto()  # "#2 in line", "Thinking…": shown as is, no paging, no cursor
    ANSWER = enum.auto()  # the answer so far


@dataclass(frozen=True)
class _Frame:
    kind: FrameKind
    text: str


@dataclass
class ReplyOutcome:
    """What happened, for callers and the benchmark."""

    status: ReplyStatus = ReplyStatus.NONE
    edits: int = 0
    sends: int = 0
    drafts: int = 0
    rate_limited: int = 0
    drafts_refused: bool = False
    final_landed: bool = False
    pages: int = 0
    handles: list[object] = field(default_factory=list)
    first_visible_at: float | None = None


Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


class StreamingReply:
    def __init__(
        self,
        sink: MessageSink,
        profile: PlatformProfile,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        placeholder_shown: bool = False,
        shared_budget: SlidingWindowLimiter | None = None,
        on_sent: Callable[[object], Awaitable[None]] | None = None,
    ) -> None:
        """``placeholder_shown``: the platform already shows a waiting state (Discord's
        deferred "is thinking…"), so no "starting" status is sent. ``shared_budget``: the
        bot-wide rate of the platform (Discord: 50 requests/s per bot), shared by every reply
        of one bot. Every write takes a slot of it: interim frames wait their turn (newer text
        replaces them meanwhile), typing is skipped when none is free, and the placeholder and
        final pages wait for one when the sink says the platform's bot-wide limit covers them
        (``MessageSink.bot_wide``; otherwise they are counted but not held)."""
        self._sink = sink
        self._placeholder_shown = placeholder_shown
        self._budget = shared_budget
        self._on_sent = on_sent  # told of every new message (its handle), e.g. to record it
        self._profile = profile
        self._clock = clock
        self._sleep = sleep
        self._limit = profile.max_length - profile.reserve
        self._pager = Pager(self._limit, profile.unit)
        self._handles: list[object] = []  # one message per page (edit mode)
        self._shown: list[str] = []  # what each message shows now
        self._final_pages = 0  # pages delivered for good
        self._in_request = False
        self._latest: _Frame | None = None  # newest interim frame not yet shown
        self._dirty = asyncio.Event()
        self._next_edit = 0.0
        self._finished = asyncio.Event()  # the stream ended: only the final text is left
        self._use_drafts = profile.use_drafts  # cleared if the platform refuses drafts
        self._placeholder_tried = False
        self.outcome = ReplyOutcome()

    async def run(self, updates: AsyncIterator[ReplyUpdate]) -> ReplyOutcome:
        flusher = asyncio.create_task(self._flush_loop())
        typing: asyncio.Task[None] | None = None
        final_text: str | None = None
        try:
            if not self._placeholder_shown:
                await self._status(self._profile.texts.starting)
            # After the placeholder, not beside it: one request at a time per reply at first.
            typing = asyncio.create_task(self._keep_typing())
            async for update in updates:
                if isinstance(update, Queued):
                    await self._status(self._profile.texts.waiting.format(position=update.position))
                elif isinstance(update, Started):
                    await self._status(self._profile.texts.thinking)
                elif isinstance(update, Throttled):
                    await self._status(self._profile.texts.throttled.format(
                        seconds=max(1, round(update.retry_after))))
                elif isinstance(update, TextSoFar):
                    self._show_later(_Frame(FrameKind.ANSWER, update.text))
                elif isinstance(update, Finished):
                    final_text = self._final_text(update)
                elif isinstance(update, Busy):
                    final_text, self.outcome.status = self._profile.texts.busy, ReplyStatus.BUSY
                elif isinstance(update, Rejected):
                    final_text = self._profile.texts.rejected(update)
                    self.outcome.status = ReplyStatus.REJECTED
        finally:
            self._finished.set()
            if typing is not None:
                typing.cancel()
            # Let an edit in flight complete (cancelling mid-request leaves its fate unknown),
            # but do not sit out a throttle or penalty wait: the final text supersedes it.
            if not self._in_request:
                flusher.cancel()
            self._dirty.set()
            with contextlib.suppress(asyncio.CancelledError):
                await flusher
        if final_text is None:  # the stream ended without a final state (should not happen)
            final_text = self._profile.texts.stopped
            self.outcome.status = ReplyStatus.INTERRUPTED
        await self._land(final_text)
        return self.outcome

    # -- interim frames -----------------------------------------------------------------------

    async def _status(self, text: str) -> None:
        """The first status shows at once (a placeholder); later ones are throttled frames."""
        if not self._handles and not self._use_drafts and not self._placeholder_tried:
            self._placeholder_tried = True
            await self._slot(hold=True)
            self._next_edit = self._clock() + self._profile.edit_interval
            try:
                await self._deliver_interim(0, text)
            except RetryLater as exc:
                self.outcome.rate_limited += 1
                self._next_edit = self._clock() + exc.seconds
            except Exception:
                # A timeout or refusal here must not lose the answer: later frames retry, and
                # the final text has its own retries.
                log.warning("placeholder not shown", exc_info=True)
        elif not self._pager.pages:
            self._show_later(_Frame(FrameKind.STATUS, text))

    def _show_later(self, frame: _Frame) -> None:
        """Make ``frame`` the next to show; the flush loop writes the newest when allowed."""
        self._latest = frame
        self._dirty.set()

    async def _flush_loop(self) -> None:
        while True:
            await self._dirty.wait()
            if self._finished.is_set():
                return
            wait = self._next_edit - self._clock()
            if wait > 0:
                await self._sleep(wait)
                if self._finished.is_set():
                    return
            self._dirty.clear()
            frame, self._latest = self._latest, None
            if frame is None:
                continue
            wait = self._budget.check(BOT_WIDE) if self._budget is not None else 0.0
            if wait > 0:
                # The bot as a whole is at the platform's rate: this frame waits its turn.
                self._next_edit = self._clock() + wait
                if self._latest is None:
                    self._latest = frame
                self._dirty.set()
                continue
            self._in_request = True
            try:
                await self._show_frame(frame)
            except RetryLater as exc:
                # Interim frames are optional: skip them for the whole penalty.
                self.outcome.rate_limited += 1
                self._next_edit = self._clock() + exc.seconds
                if self._latest is None:
                    self._latest = frame
                self._dirty.set()
                continue
            except DeliveryError as exc:
                log.info("interim update not shown: %s", exc)
            except Exception:  # a network blip must not end the stream; the final text retries
                log.warning("interim update failed", exc_info=True)
            finally:
                self._in_request = False
            self._next_edit = self._clock() + self._profile.edit_interval

    async def _show_frame(self, frame: _Frame) -> None:
        if frame.kind is FrameKind.STATUS:
            await self._deliver_interim(0, frame.text)
            return
        pages = self._pager.update(frame.text)
        final_count = self._pager.final_count
        if self._final_pages < final_count:
            # A page can no longer change: deliver it for good first. One write per interval,
            # so the next page shows at the next turn (the frame is queued again for it).
            await self._deliver_final(self._final_pages, pages[self._final_pages])
            if self._latest is None:
                self._latest = frame
            self._dirty.set()
        elif len(pages) > final_count:
            await self._deliver_interim(final_count, pages[final_count] + self._profile.cursor)

    async def _deliver_interim(self, index: int, text: str) -> None:
        if self._use_drafts:
            try:
                await self._sink.draft(text)
            except DraftsUnavailable as exc:
                log.info("drafts refused (%s); streaming by editing a message instead", exc)
                self._use_drafts = False
                self.outcome.drafts_refused = True
            else:
                self.outcome.drafts += 1
                self._mark_visible()
                return
        if index < len(self._handles):
            if self._shown[index] == text:
                return  # never re-send unchanged text
            await self._sink.edit(self._handles[index], text, final=False)
            self._shown[index] = text
            self.outcome.edits += 1
        else:
            handle = await self._sent(await self._sink.send(text, final=False))
            self._handles.append(handle)
            self._shown.append(text)
            self.outcome.sends += 1
        self._mark_visible()

    async def _deliver_final(self, index: int, text: str) -> None:
        """Deliver page ``index`` for good; RetryLater propagates to the caller."""
        if index < len(self._handles):
            if self._shown[index] != text or index >= self._final_pages:
                try:
                    await self._sink.edit(self._handles[index], text, final=True)
                    self.outcome.edits += 1
                except DeliveryError:
                    # The message is gone or can no longer be edited: say it anew.
                    self._handles[index] = await self._sent(
                        await self._sink.send(text, final=True))
                    self.outcome.sends += 1
                self._shown[index] = text
        else:
            handle = await self._sent(await self._sink.send(text, final=True))
            self._handles.append(handle)
            self._shown.append(text)
            self.outcome.sends += 1
        self._final_pages = max(self._final_pages, index + 1)
        self._mark_visible()

    # -- the final text -----------------------------------------------------------------------

    def _final_text(self, update: Finished) -> str:
        texts = self._profile.texts
        parts = [update.text.strip()] if update.text.strip() else []
        if update.status is TurnStatus.COMPLETE:
            self.outcome.status = ReplyStatus.COMPLETE
            if not parts:
                parts.append(texts.empty)
            if update.history_trimmed:
                parts.append(texts.trimmed)
        elif update.status is TurnStatus.INTERRUPTED:
            self.outcome.status = ReplyStatus.INTERRUPTED
            parts.append(texts.stopped)
        else:
            self.outcome.status = ReplyStatus.FAILED
            parts.append(texts.error(update.error))
        return "\n\n".join(parts)

    async def _land(self, text: str) -> None:
        """Deliver every page of the final text, waiting out rate limits as long as needed."""
        pages = split_pages(text, self._limit, self._profile.unit) or [self._profile.texts.empty]
        deadline = self._clock() + self._profile.final_patience
        if not self._use_drafts and len(self._handles) > len(pages):
            # The answer shrank (rare: e.g. a status placeholder was longer): keep extra pages.
            pages += ["…"] * (len(self._handles) - len(pages))
        for index, page in enumerate(pages):
            failures = 0
            while True:
                if self._needs_request(index, page):
                    if not self._use_drafts:
                        # The final text keeps to the same budget as interim edits: sent the
                        # instant after the last edit, it is exactly the request that draws a 429.
                        await self._sleep(max(0.0, self._next_edit - self._clock()))
                    # Held, not skipped: past the bot-wide rate the platform answers 429 to
                    # every request of the bot, and many answers ending at once would get there.
                    await self._slot(hold=True)
                try:
                    await self._deliver_final(index, page)
                    self._next_edit = self._clock() + self._profile.edit_interval
                    break
                except RetryLater as exc:
                    self.outcome.rate_limited += 1
                    wait = exc.seconds
                except Exception:
                    # Transient network trouble: back off, but do not give up on the answer.
                    failures += 1
                    if failures > 5:
                        raise
                    log.warning("final page not delivered yet; retrying", exc_info=True)
                    wait = min(2.0**failures, 30.0)
                if self._clock() + wait > deadline:
                    log.warning("gave up delivering a final page after rate limits")
                    self.outcome.pages = len(pages)
                    return
                await self._sleep(wait)
        self.outcome.final_landed = True
        self.outcome.pages = len(pages)
        self.outcome.handles = list(self._handles)

    def _needs_request(self, index: int, text: str) -> bool:
        """Whether delivering page ``index`` for good makes a request (see _deliver_final)."""
        return (index >= len(self._handles) or self._shown[index] != text
                or index >= self._final_pages)

    async def _keep_typing(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            while not self._finished.is_set():
                try:
                    if await self._slot(hold=False):  # cosmetic: not worth a wait or a 429
                        await self._sink.typing()
                except Exception as exc:  # cosmetic: a failure must not end the indicator
                    log.debug("typing not shown: %s", type(exc).__name__)
                await self._sleep(self._profile.typing_interval)

    async def _slot(self, *, hold: bool) -> bool:
        """Take a request slot of the bot-wide budget; wait for one if ``hold``, else say
        whether one was free. A write outside the platform's bot-wide limit is counted (so
        interim frames make room for it) but never waits."""
        if self._budget is None:
            return True
        if not self._sink.bot_wide():
            self._budget.check(BOT_WIDE)
            return True
        while (wait := self._budget.check(BOT_WIDE)) > 0:
            if not hold:
                return False
            await self._sleep(wait)
        return True

    async def _sent(self, handle: object) -> object:
        if self._on_sent is not None:
            try:
                await self._on_sent(handle)
            except Exception:  # bookkeeping must never cost the answer
                log.warning("a sent message could not be recorded", exc_info=True)
        return handle

    def _mark_visible(self) -> None:
        if self.outcome.first_visible_at is None:
            self.outcome.first_visible_at = self._clock()
