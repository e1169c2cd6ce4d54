"""Whether a question gets an answer: one sequence every bot runs before answering.

allowed → rate limit → busy. The allow-lists are the platform's (users, roles, chats), so the
adapter decides ``allowed`` and this step does the rest; the result is a typed ``Refusal`` that
the adapter only shows (``ReplyTexts.refusal``) or, where nothing may be said, drops.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass

from .conversation import ConversationService
from .ratelimit import SlidingWindowLimiter
from .store import ConversationKey


class RefusalReason(enum.Enum):
    NOT_ALLOWED = enum.auto()  # not on the allow-lists
    RATE_LIMITED = enum.auto()  # past USER_RATE_LIMIT
    BUSY = enum.auto()  # this conversation already has an answer in flight


@dataclass(frozen=True)
class Refusal:
    """Why a question is not answered."""

    reason: RefusalReason
    retry_after: float = 0.0  # seconds, for RATE_LIMITED


class Admission:
    def __init__(self, service: ConversationService, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._service = service
        self._per_user = SlidingWindowLimiter(service.limits.user_rate, clock=clock)

    def check(self, key: ConversationKey, user: str, *, allowed: bool) -> Refusal | None:
        """None if the question from ``user`` may be answered in ``key``'s conversation.
        An admitted question counts against the user's rate; a refused one does not, except
        for BUSY (asking again and again while an answer runs is what the limit is for)."""
        if not allowed:
            return Refusal(RefusalReason.NOT_ALLOWED)
        wait = self._per_user.check(user)
        if wait > 0:
            return Refusal(RefusalReason.RATE_LIMITED, wait)
        if self._service.is_busy(key):
            return Refusal(RefusalReason.BUSY)
        return None
