"""StreamingReply against a recording sink on a virtual clock (no real waiting)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from rtxrelay.core.backend import Queued, Started, TextSoFar, Throttled
from rtxrelay.core.conversation import Busy, Finished, ReplyUpdate
from rtxrelay.core.errors import BackendError, BackendErrorKind
from rtxrelay.core.paging import LengthUnit, text_length
from rtxrelay.core.store import TurnStatus
from rtxrelay.core.streaming import (
    DeliveryError,
    PlatformProfile,
    ReplyStatus,
    RetryLater,
    StreamingReply,
)
from tests.replica import fake_model
from tests.support.virtual_clock import VirtualClock


@dataclass
class RecordingSink:
    clock: VirtualClock
    messages: dict[int, str] = field(default_factory=dict)
    log: list[tuple[float, str, int, str, bool]] = field(default_factory=list)
    drafts: list[str] = field(default_factory=list)
    typing_count: int = 0
    typing_at: list[float] = field(default_factory=list)
    penalty_until: float = 0.0
    flood_every: int = 0  # every Nth write raises RetryLater(3)
    broken: set[int] = field(default_factory=set)  # message ids that can't be edited
    writes: int = 0

    def _write(self) -> None:
        self.writes += 1
        if self.clock() < self.penalty_until:
            raise AssertionError("wrote during a rate-limit penalty")
        if self.flood_every and self.writes % self.flood_every == 0:
            self.penalty_until = self.clock() + 3
            raise RetryLater(3)

    async def send(self, text: str, *, final: bool) -> object:
        self._write()
        message_id = len(self.messages) + 1
        self.messages[message_id] = text
        self.log.append((self.clock(), "send", message_id, text, final))
        return message_id

    async def edit(self, handle: object, text: str, *, final: bool) -> None:
        assert isinstance(handle, int)
        if handle in self.broken:
            raise DeliveryError("message can't be edited")
        self._write()
        assert self.messages[handle] != text, "unchanged text must never be re-sent"
        self.messages[handle] = text
        self.log.append((self.clock(), "edit", handle, text, final))

    async def draft(self, text: str) -> None:
        self.drafts.append(text)

    async def typing(self) -> None:
        self.typing_count += 1
        self.typing_at.append(self.clock())

    def bot_wide(self) -> bool:
        return True


PROFILE = PlatformProfile("test", max_length=500, unit=LengthUnit.UTF16, edit_interval=1.0,
                          typing_interval=4.0)


async def stream(clock: VirtualClock, text: str, *, step: float = 0.05, chunk: int = 5,
                 final: Finished | None = None) -> AsyncIterator[ReplyUpdate]:
    yield Queued(2)
    await clock.sleep(1.0)
    yield Started()
    for end in range(chunk, len(text) + chunk, chunk):
        await clock.sleep(step)
        yield TextSoFar(text[:end], text[end - chunk:end])
    yield final or Finished(text, TurnStatus.COMPLETE)


async def run(sink: RecordingSink, updates: AsyncIterator[ReplyUpdate],
              profile: PlatformProfile = PROFILE):
    reply = StreamingReply(sink, profile, clock=sink.clock, sleep=sink.clock.sleep)
    async with asyncio.timeout(30):
        return await reply.run(updates)


async def test_placeholder_first_then_budgeted_edits_then_final_without_cursor() -> None:
    clock = VirtualClock()
    sink = RecordingSink(clock)
    text = "word " * 60
    outcome = await run(sink, stream(clock, text.strip()))
    first = sink.log[0]
    assert first[1] == "send" and first[0] == 0.0 and "Asking" in first[3]
    interim = [entry for entry in sink.log if entry[1] == "edit" and not entry[4]]
    times = [entry[0] for entry in interim]
    assert all(b - a >= PROFILE.edit_interval - 1e-9 for a, b in itertools.pairwise(times))
    assert any(PROFILE.cursor in entry[3] for entry in interim)
    assert sink.messages[1] == text.strip()
    assert outcome.final_landed and outcome.status is ReplyStatus.COMPLETE
    assert sink.typing_count >= 1


async def test_429_storm_suspends_interim_edits_and_the_final_text_lands() -> None:
    clock = VirtualClock()
    sink = RecordingSink(clock, flood_every=2)
    text = fake_model.answer_text("storm [len=1200]", [])
    outcome = await run(sink, stream(clock, text))
    assert outcome.rate_limited > 0
    assert "".join(sink.messages[i] for i in sorted(sink.messages)).replace("\n", "") \
        .replace(" ", "") == text.replace("\n", "").replace(" ", "")
    assert outcome.final_landed


async def test_long_answer_is_paged_with_fences_intact() -> None:
    clock = VirtualClock()
    sink = RecordingSink(clock)
    text = fake_model.answer_text("long [len=3000] [code]", [])
    outcome = await run(sink, stream(clock, text, chunk=40))
    pages = [sink.messages[i] for i in sorted(sink.messages)]
    assert len(pages) > 3 and outcome.pages == len(pages)
    for page in pages:
        assert text_length(page, LengthUnit.UTF16) <= PROFILE.max_length
        assert page.count("```") % 2 == 0, page
        assert PROFILE.cursor not in page


async def test_failure_and_stop_are_stated_and_keep_the_partial_text() -> None:
    clock = VirtualClock()
    sink = RecordingSink(clock)
    error = BackendError(BackendErrorKind.STOPPED, "died")
    final = Finished("half an answer", TurnStatus.FAILED, error)
    await run(sink, stream(clock, "half an answer", final=final))
    assert sink.messages[1].startswith("half an answer")
    assert error.user_message in sink.messages[1]

    sink = RecordingSink(clock)
    await run(sink, stream(clock, "part", final=Finished("part", TurnStatus.INTERRUPTED)))
    assert sink.messages[1] == "part\n\n⏹ Stopped."


async def test_busy_is_one_clear_message() -> None:
    clock = VirtualClock()
    sink = RecordingSink(clock)

    async def busy() -> AsyncIterator[ReplyUpdate]:
        yield Busy()

    outcome = await run(sink, busy())
    assert outcome.status is ReplyStatus.BUSY
    assert list(sink.messages.values()) == [PROFILE.texts.busy]


async def test_uneditable_message_gets_the_final_text_as_a_new_message() -> None:
    clock = VirtualClock()
    sink = RecordingSink(clock, broken={1})
    await run(sink, stream(clock, "final words"))
    assert sink.messages[2] == "final words"


async def test_draft_mode_streams_previews_then_sends_messages() -> None:
    clock = VirtualClock()
    sink = RecordingSink(clock)
    drafts = PlatformProfile("dm", max_length=500, unit=LengthUnit.UTF16, edit_interval=0.5,
                             typing_interval=4.0, use_drafts=True)
    text = fake_model.answer_text("drafted [len=900]", [])
    outcome = await run(sink, stream(clock, text, chunk=20), drafts)
    assert sink.drafts and sink.drafts[0].startswith("⏳")
    assert all(entry[1] == "send" and entry[4] for entry in sink.log)
    assert outcome.sends == len(sink.messages) >= 2
    assert "".join(sink.messages.values()).replace("\n", "").replace(" ", "") \
        == text.replace("\n", "").replace(" ", "")


async def test_every_write_keeps_the_edit_budget_final_text_included() -> None:
    clock = VirtualClock()
    sink = RecordingSink(clock)
    text = fake_model.answer_text("budget [len=1200]", [])
    outcome = await StreamingReply(sink, PROFILE, clock=clock, sleep=clock.sleep).run(
        stream(clock, text))
    assert outcome.final_landed
    times = [t for t, *_ in sink.log]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # The final page waits out the interval after the last interim edit (that is the write
    # a platform would answer with 429); every other gap keeps to the budget too.
    assert min(gaps) >= PROFILE.edit_interval - 1e-9, gaps


async def test_a_failed_placeholder_never_loses_the_answer() -> None:
    clock = VirtualClock()
    sink = RecordingSink(clock)
    real_send = sink.send
    calls = 0

    async def flaky_send(text: str, *, final: bool) -> object:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise TimeoutError("the platform did not answer")  # e.g. PTB's TimedOut
        return await real_send(text, final=final)

    sink.send = flaky_send  # type: ignore[method-assign]
    text = fake_model.answer_text("placeholder [len=300]", [])
    outcome = await StreamingReply(sink, PROFILE, clock=clock, sleep=clock.sleep).run(
        stream(clock, text))
    assert outcome.final_landed and outcome.status is ReplyStatus.COMPLETE
    assert "".join(sink.messages.values()).split() == text.split()


async def test_a_shared_budget_paces_every_write_of_every_reply() -> None:
    from rtxrelay.core.ratelimit import Rate, SlidingWindowLimiter

    clock = VirtualClock()
    budget = SlidingWindowLimiter(Rate(2, 1.0), clock=clock)  # the bot's global rate: 2 writes/s
    sinks = [RecordingSink(clock) for _ in range(4)]
    text = fake_model.answer_text("shared [len=800]", [])
    outcomes = await asyncio.gather(*(
        StreamingReply(sink, PROFILE, clock=clock, sleep=clock.sleep,
                       shared_budget=budget).run(stream(clock, text))
        for sink in sinks))
    assert all(o.final_landed for o in outcomes)
    for sink in sinks:
        assert " ".join(sink.messages.values()).split() == text.split()
    # Four replies at 1 edit/s each would make 4 writes a second; the budget allows 2, and it
    # holds for placeholders, edits, final pages and typing alike (a platform's bot-wide limit
    # answers 429 to any of them).
    writes = sorted([t for sink in sinks for t, *_ in sink.log]
                    + [t for sink in sinks for t in sink.typing_at])
    for start in writes:
        assert sum(1 for t in writes if start <= t < start + 1.0) <= 2


@dataclass
class ExemptSink(RecordingSink):
    """A sink whose writes the platform's bot-wide limit does not cover (Discord's
    interaction webhooks)."""

    def bot_wide(self) -> bool:
        return False


@pytest.mark.parametrize("exempt", [False, True], ids=["bot-wide", "exempt"])
async def test_final_pages_wait_for_the_bot_wide_budget_only_where_it_applies(
        exempt: bool) -> None:
    from rtxrelay.core.ratelimit import Rate, SlidingWindowLimiter

    clock = VirtualClock()
    budget = SlidingWindowLimiter(Rate(1, 60.0), clock=clock)
    assert budget.check("bot") == 0  # another reply spent the bot's budget for a minute

    async def answered_at_once() -> AsyncIterator[ReplyUpdate]:
        yield Finished("All done.", TurnStatus.COMPLETE)

    sink = (ExemptSink if exempt else RecordingSink)(clock)
    outcome = await StreamingReply(sink, PROFILE, clock=clock, sleep=clock.sleep,
                                   placeholder_shown=True, shared_budget=budget,
                                   ).run(answered_at_once())
    assert outcome.final_landed and list(sink.messages.values()) == ["All done."]
    (landed_at,) = [t for t, *_, final in sink.log if final]
    if exempt:
        assert landed_at == 0  # counted, never held
    else:
        assert landed_at >= 60  # held until the platform's limit has room


async def test_a_busy_backend_shows_when_it_is_asked_again() -> None:
    """An OpenAI-compatible server's 429/503: the asker sees it is busy, then the answer."""
    clock = VirtualClock()
    sink = RecordingSink(clock)

    async def updates() -> AsyncIterator[ReplyUpdate]:
        yield Throttled(2.4)
        await clock.sleep(2.4)
        yield Started()
        await clock.sleep(1.0)
        yield TextSoFar("Fine.", "Fine.")
        await clock.sleep(1.0)
        yield Finished("Fine.", TurnStatus.COMPLETE)

    outcome = await run(sink, updates())
    shown = [entry[3] for entry in sink.log]
    assert "⏳ The model is busy — trying again in 2 s…" in shown
    assert shown.index("⏳ The model is busy — trying again in 2 s…") < shown.index("💭 Thinking…")
    assert sink.messages[1] == "Fine." and outcome.status is ReplyStatus.COMPLETE
