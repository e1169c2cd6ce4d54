"""Admission: allowed → rate limit → busy, as a typed refusal with one text per reason."""

from __future__ import annotations

import asyncio
import enum
from collections.abc import AsyncGenerator, Sequence

import pytest

from rtxrelay.core.admission import Admission, Refusal, RefusalReason
from rtxrelay.core.backend import BackendInfo, BackendUpdate, Done, Exchange, Started
from rtxrelay.core.conversation import ConversationLimits, ConversationService
from rtxrelay.core.env import Env
from rtxrelay.core.errors import ConfigError
from rtxrelay.core.ratelimit import Rate
from rtxrelay.core.store import ConversationKey
from rtxrelay.core.streaming import ReplyTexts
from rtxrelay.storage.sqlite_store import SqliteStore
from tests.support.virtual_clock import VirtualClock

ALICE = ConversationKey("test", "chat", "alice")


class HeldBackend:
    """Starts an answer and holds it until released, so the conversation stays busy."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.release = asyncio.Event()

    async def stream_answer(self, question: str, history: Sequence[Exchange], *,
                            session: str, read_window: float = 0.0
                            ) -> AsyncGenerator[BackendUpdate, None]:
        yield Started()
        self.started.set()
        await self.release.wait()
        yield Done("done", raw="done")

    async def probe(self) -> BackendInfo:
        return BackendInfo("held://", "-", "-", "-")


async def test_admission_order_and_what_each_refusal_costs(tmp_path) -> None:
    clock = VirtualClock(0.0)
    backend = HeldBackend()
    async with SqliteStore(tmp_path / "a.db") as store:
        service = ConversationService(backend, store, ConversationLimits(user_rate=Rate(2, 60)))
        admission = Admission(service, clock=clock)
        # Not allowed comes first and costs nothing of the rate.
        assert admission.check(ALICE, "alice", allowed=False) == Refusal(
            RefusalReason.NOT_ALLOWED)
        assert admission.check(ALICE, "alice", allowed=True) is None  # 1 of 2
        answer = service.ask(ALICE, "hold")
        async with asyncio.timeout(10):
            async for update in answer:  # until the backend has started on it
                if isinstance(update, Started):
                    break
        assert admission.check(ALICE, "alice", allowed=True) == Refusal(RefusalReason.BUSY)
        limited = admission.check(ALICE, "alice", allowed=True)
        assert limited is not None and limited.reason is RefusalReason.RATE_LIMITED
        assert limited.retry_after == pytest.approx(60)
        clock.now += 61
        assert admission.check(ALICE, "bob", allowed=True) == Refusal(RefusalReason.BUSY)
        backend.release.set()
        async with asyncio.timeout(10):
            async for _ in answer:
                pass
        assert admission.check(ALICE, "alice", allowed=True) is None


def test_refusal_texts_come_from_one_place() -> None:
    texts = ReplyTexts(busy="busy!")
    assert texts.refusal(Refusal(RefusalReason.BUSY), private_chat=True) == "busy!"
    assert texts.refusal(Refusal(RefusalReason.RATE_LIMITED, 4.2), private_chat=False) == (
        "Slow down a little — try again in 5 s.")
    assert "private" in texts.refusal(Refusal(RefusalReason.NOT_ALLOWED), private_chat=True)
    assert "can't use" in texts.refusal(Refusal(RefusalReason.NOT_ALLOWED), private_chat=False)


class Colour(enum.Enum):
    RED = "red"
    BLUE = "blue"


def test_env_reads_enums_rates_and_ids_and_names_the_setting_when_wrong() -> None:
    env = Env({"C": " Blue ", "R": "3/10", "OFF": "0", "IDS": "1, 2;3", "BAD": "green"})
    assert env.choice("C", Colour, Colour.RED) is Colour.BLUE
    assert env.choice("UNSET", Colour, Colour.RED) is Colour.RED
    assert env.rate("R", Rate(1, 1)) == Rate(3, 10.0)
    assert env.rate("OFF", Rate(1, 1)) == Rate.OFF and env.rate("UNSET", Rate(1, 1)) == Rate(1, 1)
    assert env.ids("IDS") == {1, 2, 3}
    with pytest.raises(ConfigError, match="BAD='green' is not 'red' or 'blue'"):
        env.choice("BAD", Colour, Colour.RED)
    for raw in ("fast", "-1/5", "3/0"):
        with pytest.raises(ConfigError, match="USER_RATE_LIMIT"):
            Env({"USER_RATE_LIMIT": raw}).rate("USER_RATE_LIMIT", Rate(1, 1))
