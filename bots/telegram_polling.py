"""Watching the Telegram long poll: one log line when it starts failing and one when it works
again (python-telegram-bot logs a whole traceback for every retry: 929 lines in 77 s of a
dropped connection), and a second program polling the same token.

Telegram lets one program poll a bot token at a time: a new getUpdates call ends the one in
progress with 409 Conflict, so two pollers take turns failing. The one that started last
(within ``START_GRACE`` seconds) steps back and says why; one that has been running for
longer logs it once and carries on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from telegram.error import Conflict, TelegramError
from telegram.request import HTTPXRequest

log = logging.getLogger(__name__)

START_GRACE = 60.0  # seconds after start in which a conflict means "someone else was first"


class PollWatch:
    def __init__(self, *, clock: Callable[[], float] = time.monotonic,
                 start_grace: float = START_GRACE) -> None:
        self._clock = clock
        self._started = clock()
        self._grace = start_grace
        self._failing_since: float | None = None
        self._conflict_logged = False
        self.conflict: asyncio.Event = asyncio.Event()  # set: this bot must step back
        self.webhook = False  # the conflict is a webhook set on the token, not a poller

    def failed(self, exc: TelegramError) -> None:
        """PTB's polling error callback (called for every failed poll)."""
        if isinstance(exc, Conflict):
            self._conflicted(exc)
            return
        if self._failing_since is None:
            self._failing_since = self._clock()
            log.warning("Cannot reach Telegram (%s); retrying quietly until it answers.",
                        type(exc).__name__)

    def succeeded(self) -> None:
        if self._failing_since is not None:
            log.warning("Telegram answers again (after %.0f s).",
                        self._clock() - self._failing_since)
            self._failing_since = None

    def _conflicted(self, exc: Conflict) -> None:
        self.webhook = "webhook" in exc.message.lower()
        if self.webhook or self._clock() - self._started < self._grace:
            self.conflict.set()
        elif not self._conflict_logged:
            self._conflict_logged = True
            log.error("Another program is polling Telegram with this bot's token: the two take "
                      "turns and miss messages. Stop the other one.")


class PollRequest(HTTPXRequest):
    """The long poll's transport (a pool of one, as PTB's own), telling ``watch`` when a poll
    went through."""

    def __init__(self, watch: PollWatch, **kwargs: Any) -> None:
        kwargs.setdefault("connection_pool_size", 1)
        super().__init__(**kwargs)
        self._watch = watch

    async def do_request(self, *args: Any, **kwargs: Any) -> tuple[int, bytes]:
        status, payload = await super().do_request(*args, **kwargs)
        if status == 200:
            self._watch.succeeded()
        return status, payload
