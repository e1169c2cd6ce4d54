"""What conversations need from storage: domain values and the ``ConversationStore`` seam."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class ConversationKey:
    """Who a conversation belongs to. ``user="*"`` makes one history for a whole chat."""

    platform: str
    chat: str
    user: str

    def __str__(self) -> str:
        return f"{self.platform}:{self.chat}:{self.user}"


class TurnStatus(enum.StrEnum):
    PENDING = "pending"  # question stored, answer not finished (or the process died)
    COMPLETE = "complete"
    INTERRUPTED = "interrupted"  # stopped by the user or by shutdown; partial answer kept
    FAILED = "failed"  # the backend failed; partial answer (if any) kept
    SUPERSEDED = "superseded"  # replaced by a retry; kept, but no longer sent as history


@dataclass(frozen=True)
class Conversation:
    id: int
    key: str
    session: str  # stable Gradio session for this conversation (ChatRTX keys memory on it)


@dataclass(frozen=True)
class Turn:
    id: int
    conversation_id: int
    question: str
    answer: str | None
    backend_answer: str | None
    status: TurnStatus
    created_at: float


class ConversationStore(Protocol):
    async def current(self, key: str) -> Conversation:
        """The open conversation for ``key``, created on first use."""
        ...

    async def reset(self, key: str) -> Conversation:
        """Close the open conversation (its turns are kept) and start a new one."""
        ...

    async def recent_turns(self, conversation_id: int, limit: int) -> list[Turn]:
        """Up to ``limit`` most recent turns, oldest first."""
        ...

    async def add_question(self, conversation_id: int, question: str) -> int:
        """Persist a question before it is sent anywhere; returns the turn id."""
        ...

    async def finish_turn(
        self,
        turn_id: int,
        *,
        status: TurnStatus,
        answer: str,
        backend_answer: str | None = None,
        error: str | None = None,
    ) -> None: ...

    async def set_status(self, turn_id: int, status: TurnStatus) -> None: ...

    async def recover_pending(self, is_alive: Callable[[str], bool]) -> int:
        """Mark as interrupted the turns left pending by processes that are gone (a crash, a
        power loss); returns how many. Every turn records the process that asked it (the
        store's ``owner``); ``is_alive(owner)`` says whether that process still runs, so a
        second process opening the database never touches the answers a running one is
        writing."""
        ...
