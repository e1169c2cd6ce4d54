"""Conversations: history, one answer in flight per conversation, one line for the backends.

``ConversationService.ask`` is the one entry point every front end uses (CLI, Telegram,
Discord). It persists the question before anything is sent, streams ``ReplyUpdate``s, and
always ends with exactly one of ``Busy``, ``Rejected`` or ``Finished`` — so an adapter can never
be left without a final state to show.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import deque
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from dataclasses import dataclass, field

from .backend import (
    AnswerOptions,
    Backend,
    BackendUpdate,
    Done,
    Exchange,
    Failed,
    Queued,
    Started,
    TextSoFar,
    Throttled,
    Usage,
)
from .cutoff import Cutoff, FinishReason
from .errors import BackendError, BackendErrorKind
from .i18n import ENGLISH, N_, Texts
from .pool import BackendPool, LineClosed, Member
from .ratelimit import Rate
from .store import (
    ConversationKey,
    ConversationStore,
    MessageRef,
    StaleAnswer,
    Turn,
    TurnStatus,
)

log = logging.getLogger(__name__)

DEFAULT_USER_RATE = Rate(10, 60.0)


@dataclass(frozen=True)
class ConversationLimits:
    history_turns: int = 8  # earlier exchanges sent with a question
    history_chars: int = 6000  # ChatRTX's reference models have a ~4k-token context window
    max_question_chars: int = 4000
    max_concurrent_jobs: int = 1  # Chat with RTX answers one question at a time (one backend)
    user_rate: Rate = DEFAULT_USER_RATE  # questions per person that the bots accept
    recovery_probe_interval: float = 15.0  # seconds between probes of a stuck backend
    pool_check_interval: float = 60.0  # seconds between checks of each idle backend (a pool)


# -- what the service streams ------------------------------------------------------------------
# ``Queued`` (the position counts rtxrelay's own line first, then the backend's queue),
# ``Started``, ``Throttled`` and ``TextSoFar`` are the backend's own updates, passed on as they
# are.


@dataclass(frozen=True)
class Accepted:
    """The question is stored as turn ``turn_id`` (the platform messages showing its answer
    are recorded against it, see ``record_message``)."""

    turn_id: int


@dataclass(frozen=True)
class Finished:
    text: str
    status: TurnStatus  # COMPLETE, INTERRUPTED (stopped) or FAILED
    error: BackendError | None = None
    history_trimmed: bool = False  # older turns were left out of the context
    usage: Usage | None = None  # token counts, when the backend reported them
    length_limited: bool = False  # ended at a token limit (max_tokens), not where it would


@dataclass(frozen=True)
class Busy:
    """This conversation already has an answer in flight."""


@dataclass(frozen=True)
class Rejected:
    """The question is refused: ``reason`` is a catalogue id (core/i18n.py), its placeholders
    filled from ``values``."""

    reason: str
    values: Mapping[str, int] = field(default_factory=dict)

    def text_in(self, texts: Texts) -> str:
        return texts(self.reason).format(
            **{name: texts.number(value) for name, value in self.values.items()})

    @property
    def message(self) -> str:
        """In English (the terminal)."""
        return self.text_in(ENGLISH)


ReplyUpdate = Accepted | Queued | Started | Throttled | TextSoFar | Finished | Busy | Rejected
# How often the answer so far is saved while it streams: a crash loses at most this much.
PARTIAL_SAVE_INTERVAL = 5.0
# Conversations whose last backend is remembered (to ask it again while it has a free slot).
AFFINITY_SIZE = 10_000


class ConversationService:
    def __init__(
        self,
        backend: Backend | BackendPool,
        store: ConversationStore,
        limits: ConversationLimits | None = None,
    ) -> None:
        """``backend``: one backend (``limits.max_concurrent_jobs`` answers at once), or a
        pool of them (each with its own slots). The service owns it: ``close`` closes it."""
        self._store = store
        self.limits = limits or ConversationLimits()
        self.pool = backend if isinstance(backend, BackendPool) else BackendPool.single(
            backend, self.limits.max_concurrent_jobs,
            probe_interval=self.limits.recovery_probe_interval)
        self._inflight: dict[str, asyncio.Event] = {}
        # Each conversation's last backend: asked again while it has a free slot, its caches
        # (llama.cpp's prompt cache, Chat with RTX's session) being warm.
        self._affinity: dict[str, str] = {}

    @property
    def line(self) -> tuple[int, int]:
        """Answers being generated, and jobs waiting for a slot (bots and the API alike)."""
        return self.pool.line

    @property
    def backend_stuck(self) -> bool:
        """Every backend stopped responding: questions are refused until a probe succeeds."""
        return self.pool.closed

    async def close(self) -> None:
        """Stop the pool's probes and checks (at shutdown)."""
        await self.pool.close()

    def _remember(self, key: str, member: Member | None) -> None:
        if member is None or len(self.pool.members) == 1:
            return
        self._affinity.pop(key, None)
        self._affinity[key] = member.name  # newest last: the oldest goes first when full
        if len(self._affinity) > AFFINITY_SIZE:
            del self._affinity[next(iter(self._affinity))]

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

    async def retry(
        self, key: ConversationKey, *, stop: asyncio.Event | None = None,
        read_window: float = 0.0,
    ) -> AsyncGenerator[ReplyUpdate, None]:
        """Ask the last question again; the earlier answer is kept but no longer used."""
        if self.is_busy(key):
            yield Busy()
            return
        conversation = await self._store.current(str(key))
        turns = await self._store.recent_turns(conversation.id, 1)
        if not turns:
            yield Rejected(N_("There is nothing to retry yet."))
            return
        await self._store.set_status(turns[-1].id, TurnStatus.SUPERSEDED)
        async with contextlib.aclosing(self.ask(key, turns[-1].question, stop=stop,
                                                read_window=read_window)) as updates:
            async for update in updates:
                yield update

    async def ask(
        self, key: ConversationKey, question: str, *, stop: asyncio.Event | None = None,
        read_window: float = 0.0,
    ) -> AsyncGenerator[ReplyUpdate, None]:
        """Stream the answer. ``stop`` (optional, the caller's) ends it as INTERRUPTED like
        ``cancel`` does, and also works when set before the job started: a bot shutting down
        can stop answers that are still waiting to begin. ``read_window``: how often the
        caller can use new text (``Backend.stream_answer``)."""
        question = valid_text(question).strip()
        if not question:
            yield Rejected(N_("The question is empty."))
            return
        if len(question) > self.limits.max_question_chars:
            yield Rejected(N_("The question is too long ({length} characters; the limit is "
                              "{limit}). Shorten it and ask again."),
                           {"length": len(question), "limit": self.limits.max_question_chars})
            return
        name = str(key)
        if name in self._inflight:
            yield Busy()
            return
        stop = stop or asyncio.Event()
        self._inflight[name] = stop
        try:
            if not await self.pool.claim(name):  # its answer runs in another process
                yield Busy()
                return
            try:
                # aclosing: if our consumer stops early, the inner generator's cleanup (cancel
                # the backend job, store the partial answer) must run now, not at garbage
                # collection.
                async with contextlib.aclosing(
                        self._answer(name, question, stop, read_window)) as updates:
                    async for update in updates:
                        yield update
            finally:
                await asyncio.shield(self.pool.unclaim(name))
        finally:
            self._inflight.pop(name, None)

    async def _answer(
        self, key: str, question: str, stop: asyncio.Event, read_window: float
    ) -> AsyncGenerator[ReplyUpdate, None]:
        """Persistence and mapping: the question is stored first, the backend's updates are
        passed on, and the turn is finished with exactly one status whatever happens."""
        conversation = await self._store.current(key)
        turns = await self._store.recent_turns(conversation.id, self.limits.history_turns + 20)
        history, trimmed = self._window(turns)
        # Persist first: whatever happens next (backend down, crash), the question is kept.
        turn_id = await self._store.add_question(conversation.id, question)
        if stop.is_set():  # stopped before it began (a bot shutting down): don't start a job
            await self._store.finish_turn(turn_id, status=TurnStatus.INTERRUPTED, answer="",
                                          error="stopped")
            yield Accepted(turn_id)
            yield Finished("", TurnStatus.INTERRUPTED, None, trimmed)
            return

        # History comes from the store with every question, so a conversation may move to
        # another backend at any turn (Chat with RTX's own session state stays behind: its
        # chatbot value carries the history anyway).
        job = _Job(self.pool, lambda backend: backend.stream_answer(
            question, history, session=conversation.session, read_window=read_window), stop,
            prefer=self._affinity.get(key), name=f"rtxrelay-answer-{key}")
        text = ""
        final: Finished | None = None
        saved_at = time.monotonic() - PARTIAL_SAVE_INTERVAL  # the first text is saved at once
        try:
            yield Accepted(turn_id)  # inside: a consumer leaving here still ends the turn
            while final is None:
                item = await job.next()
                if item is None:  # stop requested
                    final = Finished(text, TurnStatus.INTERRUPTED, None, trimmed)
                elif isinstance(item, TextSoFar):
                    text = item.text
                    if time.monotonic() - saved_at >= PARTIAL_SAVE_INTERVAL:
                        saved_at = time.monotonic()
                        await self._store.save_partial(turn_id, valid_text(text))
                    yield item
                elif isinstance(item, Queued | Started | Throttled):
                    yield item
                elif isinstance(item, Done):
                    final = Finished(item.text, TurnStatus.COMPLETE, None,
                                     trimmed or item.history_dropped, usage=item.usage)
                    await self._store.finish_turn(turn_id, status=TurnStatus.COMPLETE,
                                                  answer=valid_text(item.text),
                                                  backend_answer=valid_text(item.raw),
                                                  usage=item.usage)
                elif isinstance(item, Failed):
                    final = Finished(item.partial_text or text, TurnStatus.FAILED, item.error,
                                     trimmed)
                    # INFO: the asker is told; `rtxrelay run` logs INFO by default, and the
                    # terminal commands must not print the same failure twice.
                    log.info("answer failed (%s): %s", item.error.kind.value, item.error)
                else:  # _BackendEnded
                    failure = BackendError(
                        BackendErrorKind.STOPPED, "The backend ended without an answer."
                    )
                    final = Finished(text, TurnStatus.FAILED, failure, trimmed)
            if final.status is not TurnStatus.COMPLETE:
                await self._store.finish_turn(
                    turn_id,
                    status=final.status,
                    answer=valid_text(final.text),
                    error=str(final.error) if final.error else "stopped",
                )
            yield final
        finally:
            await job.close()
            self._remember(key, job.member)
            if final is None:
                # The consumer went away (shutdown, or it was cancelled): keep what we have.
                await asyncio.shield(
                    self._store.finish_turn(
                        turn_id, status=TurnStatus.INTERRUPTED, answer=valid_text(text),
                        error="stopped"
                    )
                )

    async def complete(
        self, question: str, history: Sequence[Exchange], options: AnswerOptions, *,
        name: str = "api", read_window: float = 0.0,
    ) -> AsyncGenerator[ReplyUpdate, None]:
        """One answer for a caller that brings its own history (``rtxrelay serve``): nothing
        is stored, the job waits in the same line as the bots' questions, and ``stop`` /
        ``max_tokens`` hold even where the backend cannot honour them. Closing the generator
        cancels the job, wherever it is. Ends with one ``Finished``."""
        job = _Job(self.pool, lambda backend: backend.stream_answer(
            question, history, session=f"rtxrelay-{name}-{uuid.uuid4().hex[:12]}",
            options=options, read_window=read_window), asyncio.Event(),
            accepts=_serves(options.model), name=f"rtxrelay-answer-{name}")
        shown = ""
        cutoff: Cutoff | None = None
        try:
            while True:
                item = await job.next()
                if cutoff is None and isinstance(item, TextSoFar | Done | Failed):
                    cutoff = _cutoff(job.member, options)
                if isinstance(item, TextSoFar):
                    assert cutoff is not None
                    cut = cutoff.apply(item.text, final=False)
                    if cut.text != shown:
                        delta = cut.text[len(shown):] if cut.text.startswith(shown) else ""
                        shown = cut.text
                        yield TextSoFar(shown, delta)
                    if cut.ended is not None:  # the job is closed below: the backend stops
                        yield Finished(shown, TurnStatus.COMPLETE,
                                       length_limited=cut.ended is FinishReason.LENGTH)
                        return
                elif isinstance(item, Queued | Started | Throttled):
                    yield item
                elif isinstance(item, Done):
                    assert cutoff is not None
                    cut = cutoff.apply(item.text, final=True)
                    yield Finished(cut.text, TurnStatus.COMPLETE, usage=item.usage,
                                   history_trimmed=item.history_dropped,
                                   length_limited=item.length_limited
                                   or cut.ended is FinishReason.LENGTH)
                    return
                elif isinstance(item, Failed):
                    assert cutoff is not None
                    partial = cutoff.apply(item.partial_text or shown, final=True).text
                    log.info("answer failed (%s): %s", item.error.kind.value, item.error)
                    yield Finished(partial, TurnStatus.FAILED, item.error)
                    return
                else:  # _BackendEnded (None never comes: nobody sets this job's stop)
                    yield Finished(shown, TurnStatus.FAILED, BackendError(
                        BackendErrorKind.STOPPED, "The backend ended without an answer."))
                    return
        finally:
            await job.close()

    # -- the messages that show answers ----------------------------------------------------

    async def record_message(self, turn_id: int, ref: MessageRef) -> None:
        await self._store.add_message(turn_id, ref)

    async def stale_answers(self, platform: str) -> list[StaleAnswer]:
        return await self._store.stale_answers(platform)

    async def mark_told(self, turn_id: int) -> None:
        await self._store.mark_told(turn_id)

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


def _serves(model: str | None) -> Callable[[Member], bool] | None:
    """A request naming a model goes to a backend that lists it (or has not said yet)."""
    if model is None:
        return None
    return lambda member: member.models is None or model in member.models


def _cutoff(member: Member | None, options: AnswerOptions) -> Cutoff:
    # A backend that honours stop / max_tokens itself counts real tokens: cutting again by an
    # estimate would only cut its answers short.
    if member is not None and getattr(member.backend, "honours_options", False):
        return Cutoff()
    return Cutoff(options.stop, options.max_tokens)


def valid_text(text: str) -> str:
    """``text`` with every lone surrogate (from a non-UTF-8 byte on a console, or a ``\\udXXX``
    escape in JSON) replaced by U+FFFD, so it can be stored and sent anywhere."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        # surrogatepass keeps valid pairs (joined on the way back); lone halves are replaced.
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


# -- job plumbing ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _BackendEnded:
    """The backend's stream ended without ``Done`` or ``Failed`` (should not happen)."""


_JobItem = BackendUpdate | _BackendEnded


_Stream = Callable[[Backend], AsyncGenerator[BackendUpdate, None]]


class _Job:
    """One backend answer, produced in its own task so a stop request reaches it at any stage:
    waiting for a job slot, in the backend's queue, or in a stalled stream."""

    def __init__(self, pool: BackendPool, stream: _Stream, stop: asyncio.Event, *,
                 name: str, prefer: str | None = None,
                 accepts: Callable[[Member], bool] | None = None) -> None:
        self.member: Member | None = None  # the backend answering (the last one tried)
        self._items: deque[_JobItem] = deque()
        self._arrived = asyncio.Event()
        self._stopper = asyncio.create_task(stop.wait())
        # A stop wakes a waiting ``next`` like an item does: one event, no task per item.
        self._stopper.add_done_callback(lambda _: self._arrived.set())
        self._producer = asyncio.create_task(self._produce(pool, stream, prefer, accepts),
                                             name=name)

    async def next(self) -> _JobItem | None:
        """The next item (a backlog of text updates comes as one, the newest text with every
        delta), or None once stop is requested and nothing is waiting."""
        while not self._items:
            if self._stopper.done():
                return None
            self._arrived.clear()
            await self._arrived.wait()
        item = self._items.popleft()
        # Only the newest text matters to a reader; deltas are joined so none is lost.
        while isinstance(item, TextSoFar) and self._items and isinstance(self._items[0],
                                                                         TextSoFar):
            newer = self._items.popleft()
            assert isinstance(newer, TextSoFar)
            item = TextSoFar(newer.text, item.delta + newer.delta)
        return item

    async def close(self) -> None:
        self._stopper.cancel()
        if not self._producer.done():
            self._producer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._producer

    def _put(self, item: _JobItem) -> None:
        self._items.append(item)
        self._arrived.set()

    async def _produce(self, pool: BackendPool, stream: _Stream, prefer: str | None,
                       accepts: Callable[[Member], bool] | None) -> None:
        moved = False
        try:
            while True:
                # A job moved off a failed backend keeps its place: the head of the line.
                async with pool.slot(lambda position: self._put(Queued(position)),
                                     prefer=prefer, accepts=accepts, first=moved) as member:
                    self.member = member
                    moved = await self._answer(pool, member, stream)
                if not moved:
                    return
        except LineClosed as closed:  # every backend is stuck: this job never reaches one
            reason = closed.reason
            self._put(Failed(reason if isinstance(reason, BackendError) else BackendError(
                BackendErrorKind.STUCK, str(reason))))
        finally:
            self._put(_BackendEnded())

    async def _answer(self, pool: BackendPool, member: Member, stream: _Stream) -> bool:
        """Pass ``member``'s updates on; True when it failed before the answer started and
        the job moves to another backend (nothing of it was shown: asking again is safe)."""
        updates = stream(member.backend)
        started = False
        try:
            async for update in updates:
                if isinstance(update, Failed):
                    if not started and not update.partial_text and \
                            pool.move_on(member, update.error):
                        log.warning("backend %s failed before answering (%s): the question "
                                    "moves to another one", member.name, update.error.kind.value)
                        return True
                    if update.error.kind is BackendErrorKind.STUCK:
                        # Before the slot is freed: the next job must not reach it.
                        pool.take_out(member, update.error)
                elif isinstance(update, Started | TextSoFar):
                    started = True
                self._put(update)
                if isinstance(update, Done | Failed):
                    return False
        finally:
            # Closing the stream cancels the job on the backend (Stop, shutdown).
            await updates.aclose()
        return False
