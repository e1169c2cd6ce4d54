"""Conversations: history, one answer in flight per conversation, a global job limit.

``ConversationService.ask`` is the one entry point every front end uses (CLI, Telegram,
Discord). It persists the question before anything is sent, streams ``ReplyUpdate``s, and
always ends with exactly one of ``Busy``, ``Rejected`` or ``Finished`` — so an adapter can never
be left without a final state to show.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

from .backend import Backend, Done, Exchange, Failed, Queued, Started, TextSoFar
from .errors import BackendError, BackendErrorKind
from .job_slots import JobSlots
from .store import ConversationKey, ConversationStore, Turn, TurnStatus

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ConversationLimits:
    history_turns: int = 8  # earlier exchanges sent with a question
    history_chars: int = 6000  # ChatRTX's reference models have a ~4k-token context window
    max_question_chars: int = 4000
    max_concurrent_jobs: int = 1  # Chat with RTX answers one question at a time


# -- what the service streams ------------------------------------------------------------------


@dataclass(frozen=True)
class Waiting:
    position: int  # 1 = next; rtxrelay's own line first, then Chat with RTX's queue


@dataclass(frozen=True)
class Thinking:
    pass


@dataclass(frozen=True)
class Partial:
    text: str
    delta: str


@dataclass(frozen=True)
class Finished:
    text: str
    status: TurnStatus  # COMPLETE, INTERRUPTED (stopped) or FAILED
    error: BackendError | None = None
    history_trimmed: bool = False  # older turns were left out of the context


@dataclass(frozen=True)
class Busy:
    """This conversation already has an answer in flight."""


@dataclass(frozen=True)
class Rejected:
    reason: str  # short, user-facing


ReplyUpdate = Waiting | Thinking | Partial | Finished | Busy | Rejected

_END = object()


class ConversationService:
    def __init__(
        self,
        backend: Backend,
        store: ConversationStore,
        limits: ConversationLimits | None = None,
    ) -> None:
        self._backend = backend
        self._store = store
        self.limits = limits or ConversationLimits()
        self._slots = JobSlots(self.limits.max_concurrent_jobs)
        self._inflight: dict[str, asyncio.Event] = {}

    def is_busy(self, key: ConversationKey) -> bool:
        return str(key) in self._inflight

    def cancel(self, key: ConversationKey) -> bool:
        """Stop the answer in flight for ``key``; its ``ask`` finishes as INTERRUPTED."""
        stop = self._inflight.get(str(key))
        if stop is None:
            return False
        stop.set()
        return True

    async def reset(self, key: ConversationKey) -> None:
        """Start a fresh conversation; earlier turns stay in the database."""
        self.cancel(key)
        await self._store.reset(str(key))

    async def last_question(self, key: ConversationKey) -> str | None:
        conversation = await self._store.current(str(key))
        turns = await self._store.recent_turns(conversation.id, 1)
        return turns[-1].question if turns else None

    async def retry(
        self, key: ConversationKey, *, stop: asyncio.Event | None = None
    ) -> AsyncIterator[ReplyUpdate]:
        """Ask the last question again; the earlier answer is kept but no longer used."""
        if self.is_busy(key):
            yield Busy()
            return
        conversation = await self._store.current(str(key))
        turns = await self._store.recent_turns(conversation.id, 1)
        if not turns:
            yield Rejected("There is nothing to retry yet.")
            return
        await self._store.set_status(turns[-1].id, TurnStatus.SUPERSEDED)
        async with contextlib.aclosing(self.ask(key, turns[-1].question, stop=stop)) as updates:
            async for update in updates:
                yield update

    async def ask(
        self, key: ConversationKey, question: str, *, stop: asyncio.Event | None = None
    ) -> AsyncIterator[ReplyUpdate]:
        """Stream the answer. ``stop`` (optional, the caller's) ends it as INTERRUPTED like
        ``cancel`` does, and also works when set before the job started: a bot shutting down
        can stop answers that are still waiting to begin."""
        question = question.strip()
        if not question:
            yield Rejected("The question is empty.")
            return
        if len(question) > self.limits.max_question_chars:
            yield Rejected(
                f"The question is too long ({len(question):,} characters; the limit is "
                f"{self.limits.max_question_chars:,}). Shorten it and ask again."
            )
            return
        name = str(key)
        if name in self._inflight:
            yield Busy()
            return
        stop = stop or asyncio.Event()
        self._inflight[name] = stop
        try:
            # aclosing: if our consumer stops early, the inner generator's cleanup (cancel the
            # backend job, store the partial answer) must run now, not at garbage collection.
            async with contextlib.aclosing(self._answer(name, question, stop)) as updates:
                async for update in updates:
                    yield update
        finally:
            self._inflight.pop(name, None)

    async def _answer(
        self, key: str, question: str, stop: asyncio.Event
    ) -> AsyncIterator[ReplyUpdate]:
        conversation = await self._store.current(key)
        turns = await self._store.recent_turns(conversation.id, self.limits.history_turns + 20)
        history, trimmed = self._window(turns)
        # Persist first: whatever happens next (backend down, crash), the question is kept.
        turn_id = await self._store.add_question(conversation.id, question)
        if stop.is_set():  # stopped before it began (a bot shutting down): don't start a job
            await self._store.finish_turn(turn_id, status=TurnStatus.INTERRUPTED, answer="",
                                          error="stopped")
            yield Finished("", TurnStatus.INTERRUPTED, None, trimmed)
            return

        updates: asyncio.Queue[object] = asyncio.Queue()
        producer = asyncio.create_task(
            self._produce(question, history, conversation.session, updates),
            name=f"rtxrelay-answer-{key}",
        )
        stopper = asyncio.create_task(stop.wait())
        text = ""
        final: Finished | None = None
        try:
            while final is None:
                item = await self._next(updates, stopper)
                if item is None:  # stop requested
                    final = Finished(text, TurnStatus.INTERRUPTED, None, trimmed)
                    break
                # Coalesce a backlog of text updates: only the newest text matters to a reader.
                while isinstance(item, TextSoFar) and not updates.empty():
                    peek = updates.get_nowait()
                    if isinstance(peek, TextSoFar):
                        item = TextSoFar(peek.text, item.delta + peek.delta)
                    else:
                        yield Partial(item.text, item.delta)
                        text = item.text
                        item = peek
                if item is _END:
                    failure = BackendError(
                        BackendErrorKind.STOPPED, "The backend ended without an answer."
                    )
                    final = Finished(text, TurnStatus.FAILED, failure, trimmed)
                elif isinstance(item, Queued):
                    yield Waiting(item.position)
                elif isinstance(item, int):  # rtxrelay's own queue position
                    yield Waiting(item)
                elif isinstance(item, Started):
                    yield Thinking()
                elif isinstance(item, TextSoFar):
                    text = item.text
                    yield Partial(item.text, item.delta)
                elif isinstance(item, Done):
                    final = Finished(item.text, TurnStatus.COMPLETE, None, trimmed)
                    await self._store.finish_turn(
                        turn_id,
                        status=TurnStatus.COMPLETE,
                        answer=item.text,
                        backend_answer=item.raw,
                    )
                elif isinstance(item, Failed):
                    partial = item.partial_text or text
                    final = Finished(partial, TurnStatus.FAILED, item.error, trimmed)
                    log.warning("answer failed (%s): %s", item.error.kind.value, item.error)
            if final.status is not TurnStatus.COMPLETE:
                await self._store.finish_turn(
                    turn_id,
                    status=final.status,
                    answer=final.text,
                    error=str(final.error) if final.error else "stopped",
                )
            yield final
        finally:
            stopper.cancel()
            if not producer.done():
                producer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await producer
            if final is None:
                # The consumer went away (shutdown, or it was cancelled): keep what we have.
                await asyncio.shield(
                    self._store.finish_turn(
                        turn_id, status=TurnStatus.INTERRUPTED, answer=text, error="stopped"
                    )
                )

    async def _produce(
        self, question: str, history: list[Exchange], session: str, out: asyncio.Queue[object]
    ) -> None:
        try:
            async with self._slots.slot(on_position=out.put_nowait):
                stream = self._backend.stream_answer(question, history, session=session)
                try:
                    async for update in stream:
                        out.put_nowait(update)
                        if isinstance(update, Done | Failed):
                            return
                finally:
                    # Closing the stream cancels the job on the backend (Stop, shutdown).
                    await stream.aclose()  # type: ignore[attr-defined]
        finally:
            out.put_nowait(_END)

    @staticmethod
    async def _next(updates: asyncio.Queue[object], stopper: asyncio.Task[bool]) -> object | None:
        if not updates.empty():
            return updates.get_nowait()
        getter = asyncio.ensure_future(updates.get())
        done, _ = await asyncio.wait({getter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if getter in done:
            return getter.result()
        getter.cancel()
        return None

    def _window(self, turns: list[Turn]) -> tuple[list[Exchange], bool]:
        usable = [
            t
            for t in turns
            if t.status in (TurnStatus.COMPLETE, TurnStatus.INTERRUPTED)
            and (t.answer or "").strip()
        ]
        chosen: list[Exchange] = []
        chars = 0
        for turn in reversed(usable):
            answer = turn.backend_answer or turn.answer or ""
            size = len(turn.question) + len(answer)
            if len(chosen) >= self.limits.history_turns or chars + size > self.limits.history_chars:
                break
            chosen.append(Exchange(turn.question, answer))
            chars += size
        chosen.reverse()
        return chosen, len(chosen) < len(usable)
