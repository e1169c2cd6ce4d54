"""What every bot does with a question, in one place: admit it, then stream the service's
answer into the adapter's sink through ``StreamingReply``.

A bot keeps one ``Replies``: it holds the admission step (with the per-user question limit),
the bot-wide write budget that all of the bot's answers share, and the answers in flight so
that shutting down stops every one of them. Adapters only build the sink and pick the profile.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from .admission import Admission, Refusal
from .conversation import ConversationService, ReplyUpdate
from .inflight import InFlight
from .ratelimit import Rate, SlidingWindowLimiter
from .store import ConversationKey
from .streaming import MessageSink, PlatformProfile, ReplyOutcome, StreamingReply

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
    ) -> ReplyOutcome:
        """Answer ``question`` (None: ask the conversation's last question again). Delivery
        errors the engine cannot absorb propagate to the adapter, which knows their types.
        ``then`` is the adapter's finishing touch once the final text is out (Discord's Retry
        button): it still counts as in flight, so ``in_flight`` and shutdown wait for it."""
        reply = StreamingReply(sink, profile, clock=self._clock, sleep=self._sleep,
                               placeholder_shown=placeholder_shown,
                               shared_budget=self.bot_wide_budget)
        with self._inflight.track() as stop:
            updates: AsyncIterator[ReplyUpdate] = (
                self.service.retry(key, stop=stop) if question is None
                else self.service.ask(key, question, stop=stop)
            )
            outcome = await reply.run(updates)
            if then is not None:
                await then(outcome)
        log.info("%s reply %s: %d edits, %d sends, %d rate-limited", profile.name,
                 outcome.status.value, outcome.edits, outcome.sends, outcome.rate_limited)
        return outcome

    async def stop_all(self, timeout: float = 30.0) -> None:
        """Stop every answer (started or not) and wait, bounded, until each has landed its
        text as 'Stopped'."""
        await self._inflight.stop_all(timeout)
