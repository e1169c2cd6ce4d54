"""What conversations need from storage: domain values and the ``ConversationStore`` seam."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from .backend import Usage
from .i18n import Language


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
class MessageRef:
    """A platform message that shows (part of) an answer; ids as the platform writes them."""

    platform: str
    chat: str
    message: str


@dataclass(frozen=True)
class StaleAnswer:
    """An answer whose process died mid-way (a crash, a power loss): its messages still show
    the text of that moment, cursor and all, until they are told what happened."""

    turn_id: int
    partial_text: str  # the answer as last saved while it streamed
    messages: tuple[MessageRef, ...]  # in the order they were sent: one per page


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
    usage: Usage | None = None  # token counts, when the backend reported them


class LanguageChoices(Protocol):
    """Each chat user's own ``/language`` choice, per platform (the bots read it)."""

    async def language(self, platform: str, user: str) -> Language | None:
        """What ``user`` chose on ``platform`` (ids as the platform writes them), or None
        when they chose nothing (their app's language then decides)."""
        ...

    async def set_language(self, platform: str, user: str, language: Language | None) -> None:
        """Remember ``user``'s choice for all their chats on ``platform``; None forgets it."""
        ...


class ConversationStore(LanguageChoices, Protocol):
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
        usage: Usage | None = None,
    ) -> None:
        """End a turn; ``usage`` keeps the token counts the backend reported."""
        ...

    async def set_status(self, turn_id: int, status: TurnStatus) -> None: ...

    async def save_partial(self, turn_id: int, answer: str) -> None:
        """Keep the answer so far of a pending turn (a crash then loses only the last
        seconds)."""
        ...

    async def add_message(self, turn_id: int, ref: MessageRef) -> None:
        """Remember a platform message that shows this turn's answer."""
        ...

    async def stale_answers(self, platform: str) -> list[StaleAnswer]:
        """Answers that ``recover_pending`` found interrupted and whose messages on
        ``platform`` were not yet told so."""
        ...

    async def mark_told(self, turn_id: int) -> None:
        """Its messages now say what happened: ``stale_answers`` no longer lists it."""
        ...

    async def recover_pending(self, is_alive: Callable[[str], bool]) -> int:
        """Mark as interrupted the turns left pending by processes that are gone (a crash, a
        power loss); returns how many. Every turn records the process that asked it (the
        store's ``owner``); ``is_alive(owner)`` says whether that process still runs, so a
        second process opening the database never touches the answers a running one is
        writing."""
        ...
