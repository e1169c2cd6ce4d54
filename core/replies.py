"""What every bot does with a question, in one place: admit it, then stream the service's
answer into the adapter's sink through ``StreamingReply``.

A bot keeps one ``Replies``: it holds the admission step (with the per-user question limit),
the bot-wide write budget that all of the bot's answers share, and the answers in flight so
that shutting down stops every one of them. Adapters only build the sink and pick the profile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import replace

from .admission import Admission, Refusal
from .conversation import Accepted, ConversationService, ReplyUpdate
from .i18n import ENGLISH, Texts
from .inflight import InFlight
from .paging import split_pages
from .ratelimit import Rate, SlidingWindowLimiter
from .store import ConversationKey, MessageRef
from .streaming import BOT_WIDE, MessageSink, PlatformProfile, ReplyOutcome, StreamingReply

log = logging.getLogger(__name__)


class Replies:
    def __init__(
        self,
        service: ConversationService,
        *,
        bot_wide_writes: Rate,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.service = service
        self._clock = clock
        self._sleep = sleep
        self._admission = Admission(service, clock=clock)
        self.bot_wide_budget = SlidingWindowLimiter(bot_wide_writes, clock=clock)
        self._inflight = InFlight()

    @property
    def in_flight(self) -> int:
        """Answers being streamed now."""
        return len(self._inflight)

    def admit(self, key: ConversationKey, user: str, *, allowed: bool) -> Refusal | None:
        """allowed → rate limit → busy; None when the question may be answered."""
        return self._admission.check(key, user, allowed=allowed)

    async def answer(
        self,
        sink: MessageSink,
        profile: PlatformProfile,
        key: ConversationKey,
        question: str | None,
        *,
        placeholder_shown: bool = False,
        then: Callable[[ReplyOutcome], Awaitable[None]] | None = None,
        texts: Texts = ENGLISH,
    ) -> ReplyOutcome:
        """Answer ``question`` (None: ask the conversation's last question again). Delivery
        errors the engine cannot absorb propagate to the adapter, which knows their types.
        ``then`` is the adapter's finishing touch once the final text is out (Discord's Retry
        button): it still counts as in flight, so ``in_flight`` and shutdown wait for it.
        ``texts``: the catalogue in the asker's language (core/i18n.py)."""
        profile = replace(profile, texts=profile.texts.translated(texts))
        messages = _MessageLog(self.service, sink)
        reply = StreamingReply(sink, profile, clock=self._clock, sleep=self._sleep,
                               placeholder_shown=placeholder_shown,
                               shared_budget=self.bot_wide_budget, on_sent=messages.sent)
        with self._inflight.track() as stop:
            window = profile.read_window
            updates = (self.service.retry(key, stop=stop, read_window=window)
                       if question is None
                       else self.service.ask(key, question, stop=stop, read_window=window))
            outcome = await reply.run(messages.follow(updates))
            if then is not None:
                await then(outcome)
        log.info("%s reply %s: %d edits, %d sends, %d rate-limited", profile.name,
                 outcome.status.value, outcome.edits, outcome.sends, outcome.rate_limited)
        return outcome

    async def tell_stale(self, platform: str, profile: PlatformProfile,
                         edit: Callable[[MessageRef, str], Awaitable[None]],
                         texts: Texts = ENGLISH) -> int:
        """After a crash, make each interrupted answer's last message say so: its text as
        last saved plus ``texts.interrupted``, instead of a frozen cursor. Earlier pages were
        final already. ``edit`` writes one message (final formatting); returns how many were
        told. Edits keep to the bot-wide budget: a crash can leave many."""
        told = 0
        interrupted = texts(profile.texts.interrupted)  # its asker is not known: one language
        for stale in await self.service.stale_answers(platform):
            limit = profile.max_length - profile.reserve
            pages = split_pages(stale.partial_text, limit, profile.unit)
            index = len(stale.messages) - 1
            shown = pages[index] if index < len(pages) else ""
            while (wait := self.bot_wide_budget.check(BOT_WIDE)) > 0:
                await self._sleep(wait)
            try:
                await edit(stale.messages[-1], f"{shown}\n\n{interrupted}".strip())
                told += 1
            except Exception as exc:  # deleted, too old, no access: nothing more to do
                log.info("an interrupted answer's message could not be updated: %s",
                         type(exc).__name__)
            await self.service.mark_told(stale.turn_id)
        if told:
            log.info("%s: told %d interrupted answer(s) that rtxrelay restarted", platform, told)
        return told

    async def stop_all(self, timeout: float = 30.0) -> None:
        """Stop every answer (started or not) and wait, bounded, until each has landed its
        text as 'Stopped'."""
        await self._inflight.stop_all(timeout)


class _MessageLog:
    """Records the messages showing one answer against its turn. The placeholder is sent
    before the question is stored, so messages seen before ``Accepted`` wait for it."""

    def __init__(self, service: ConversationService, sink: MessageSink) -> None:
        self._service = service
        self._sink = sink
        self._turn: int | None = None
        self._early: list[MessageRef] = []

    async def sent(self, handle: object) -> None:
        ref = self._sink.ref(handle)
        if ref is None:
            return
        if self._turn is None:
            self._early.append(ref)
        else:
            await self._service.record_message(self._turn, ref)

    async def follow(self, updates: AsyncGenerator[ReplyUpdate, None]
                     ) -> AsyncGenerator[ReplyUpdate, None]:
        async with contextlib.aclosing(updates):
            async for update in updates:
                if isinstance(update, Accepted):
                    self._turn = update.turn_id
                    for ref in self._early:
                        await self._service.record_message(update.turn_id, ref)
                    self._early.clear()
                yield update
