"""One contract, both stores: every ``ConversationStore`` and ``LanguageChoices`` method (and
the app's ``check_writable`` and ``turns_for_key``), the same assertions on SQLite and on a real
PostgreSQL server (``make_store``, tests/storage/conftest.py)."""

from __future__ import annotations

import asyncio
import time

import pytest

from rtxrelay.core.backend import Usage
from rtxrelay.core.errors import StorageError
from rtxrelay.core.i18n import Language
from rtxrelay.core.store import MessageRef, StaleAnswer, Turn, TurnStatus
from tests.storage.conftest import StoreFactory

KEY = "telegram:1:1"
OTHER = "discord:guild-9:2"


async def test_current_is_made_once_and_reset_starts_another(make_store: StoreFactory) -> None:
    async with make_store() as store:
        first = await store.current(KEY)
        assert first.key == KEY and len(first.session) == 12
        assert await store.current(KEY) == first
        other = await store.current(OTHER)
        assert other.id != first.id and other.session != first.session
        asked = await store.add_question(first.id, "before the reset")
        fresh = await store.reset(KEY)
        assert fresh.key == KEY and fresh.id != first.id and fresh.session != first.session
        assert await store.current(KEY) == fresh
        assert await store.current(OTHER) == other  # a reset closes its own key's only
        assert await store.recent_turns(fresh.id, 10) == []
        assert [t.id for t in await store.turns_for_key(KEY)] == [asked]  # kept
        assert (await store.reset("never used")).key == "never used"
    async with make_store() as store:  # another process on the same database
        assert await store.current(KEY) == fresh


async def test_recent_turns_are_the_newest_oldest_first(make_store: StoreFactory) -> None:
    async with make_store() as store:
        conversation = await store.current(KEY)
        elsewhere = await store.current(OTHER)
        ids = []
        for n in range(5):
            ids.append(await store.add_question(conversation.id, f"q{n}"))
            await store.add_question(elsewhere.id, f"other {n}")
        assert ids == sorted(ids)
        newest = await store.recent_turns(conversation.id, 3)
        assert [t.id for t in newest] == ids[2:]
        assert [t.question for t in newest] == ["q2", "q3", "q4"]
        assert [t.question for t in await store.recent_turns(conversation.id, 50)] == [
            f"q{n}" for n in range(5)]
        assert await store.recent_turns(conversation.id, 0) == []
        assert await store.recent_turns(conversation.id, -1) == []
        assert await store.recent_turns(123_456, 5) == []


async def test_a_question_is_pending_until_it_ends_with_one_status(
        make_store: StoreFactory) -> None:
    async with make_store(owner="me") as store:
        conversation = await store.current(KEY)
        asked = await store.add_question(conversation.id, "q")
        (turn,) = await store.recent_turns(conversation.id, 1)
        assert turn == Turn(asked, conversation.id, "q", None, None, TurnStatus.PENDING,
                            turn.created_at, None)
        assert isinstance(turn.created_at, float)
        assert abs(turn.created_at - time.time()) < 24 * 3600  # epoch seconds, not ms
        ended = {
            TurnStatus.COMPLETE: dict(answer="all of it", backend_answer="<p>all of it</p>",
                                      usage=Usage(12, 34)),
            TurnStatus.INTERRUPTED: dict(answer="half", error=None),
            TurnStatus.FAILED: dict(answer="", error="the backend failed"),
            TurnStatus.SUPERSEDED: dict(answer="old", usage=Usage(0, 0)),
        }
        ids = {}
        for status, fields in ended.items():
            ids[status] = turn_id = await store.add_question(conversation.id, f"q {status}")
            await store.finish_turn(turn_id, status=status, **fields)  # type: ignore[arg-type]
        turns = {t.id: t for t in await store.recent_turns(conversation.id, 10)}
        for status, fields in ended.items():
            turn = turns[ids[status]]
            assert turn.status is status and turn.question == f"q {status}"
            assert turn.answer == fields["answer"]
            assert turn.backend_answer == fields.get("backend_answer")
            assert turn.usage == fields.get("usage")
        assert turns[asked].status is TurnStatus.PENDING
        await store.finish_turn(987_654, status=TurnStatus.COMPLETE, answer="nobody's")  # no-op


async def test_set_status_and_save_partial(make_store: StoreFactory) -> None:
    async with make_store() as store:
        conversation = await store.current(KEY)
        turn_id = await store.add_question(conversation.id, "q")
        await store.save_partial(turn_id, "so far")
        await store.save_partial(turn_id, "so far, and more")  # the newest text wins
        (turn,) = await store.recent_turns(conversation.id, 1)
        assert turn.answer == "so far, and more" and turn.status is TurnStatus.PENDING
        await store.finish_turn(turn_id, status=TurnStatus.COMPLETE, answer="final")
        await store.save_partial(turn_id, "a late partial")  # only a pending turn takes one
        await store.set_status(turn_id, TurnStatus.SUPERSEDED)  # a retry replaced it
        (turn,) = await store.recent_turns(conversation.id, 1)
        assert turn.answer == "final" and turn.status is TurnStatus.SUPERSEDED


async def test_stale_answers_per_platform_in_order_until_told(make_store: StoreFactory) -> None:
    async with make_store(owner="crashed") as store:
        conversation = await store.current(KEY)
        first = await store.add_question(conversation.id, "first")
        second = await store.add_question(conversation.id, "second, never saved")
        finished = await store.add_question(conversation.id, "finished")
        for page in ("10", "11", "12"):
            await store.add_message(first, MessageRef("telegram", "1", page))
        await store.add_message(first, MessageRef("discord", "77", "900"))
        await store.add_message(second, MessageRef("telegram", "1", "13"))
        await store.add_message(finished, MessageRef("telegram", "1", "14"))
        await store.save_partial(first, "half")
        await store.finish_turn(finished, status=TurnStatus.COMPLETE, answer="done")
    async with make_store(owner="next") as store:
        assert await store.stale_answers("telegram") == []  # nothing recovered yet
        assert await store.recover_pending(lambda owner: owner == "next") == 2
        assert await store.stale_answers("telegram") == [
            StaleAnswer(first, "half", tuple(MessageRef("telegram", "1", p)
                                             for p in ("10", "11", "12"))),
            StaleAnswer(second, "", (MessageRef("telegram", "1", "13"),)),
        ]
        assert await store.stale_answers("discord") == [
            StaleAnswer(first, "half", (MessageRef("discord", "77", "900"),))]
        assert await store.stale_answers("slack") == []
        await store.mark_told(first)
        assert await store.stale_answers("telegram") == [
            StaleAnswer(second, "", (MessageRef("telegram", "1", "13"),))]
        assert await store.stale_answers("discord") == []  # told once, for every platform
        turns = {t.id: t for t in await store.turns_for_key(KEY)}
        assert turns[first].status is TurnStatus.INTERRUPTED and turns[first].answer == "half"
        assert turns[finished].status is TurnStatus.COMPLETE


async def test_recovery_leaves_the_answers_of_running_processes_be(
        make_store: StoreFactory) -> None:
    async with make_store(owner="running") as running, make_store(owner="gone") as gone, \
            make_store(owner="") as unowned:  # turns from before owners were recorded
        conversation = await running.current(KEY)
        writing = await running.add_question(conversation.id, "being answered")
        lost = [await gone.add_question(conversation.id, f"lost {n}") for n in range(2)]
        orphan = await unowned.add_question(conversation.id, "no owner")
        done = await gone.add_question(conversation.id, "finished before the crash")
        await gone.finish_turn(done, status=TurnStatus.COMPLETE, answer="yes")
        asked: list[str] = []

        def is_alive(owner: str) -> bool:
            asked.append(owner)
            return owner in {"running", "newcomer"}

        async with make_store(owner="newcomer") as newcomer:
            assert await newcomer.recover_pending(is_alive) == 3
            assert sorted(asked) == ["gone", "running"]  # no owner: nothing to ask
            assert await newcomer.recover_pending(is_alive) == 0
        turns = {t.id: t.status for t in await running.turns_for_key(KEY)}
        assert turns == {writing: TurnStatus.PENDING, lost[0]: TurnStatus.INTERRUPTED,
                         lost[1]: TurnStatus.INTERRUPTED, orphan: TurnStatus.INTERRUPTED,
                         done: TurnStatus.COMPLETE}
        await running.save_partial(writing, "still streaming")  # the running one goes on
        await running.finish_turn(writing, status=TurnStatus.COMPLETE, answer="whole")
        (turn,) = [t for t in await running.turns_for_key(KEY) if t.id == writing]
        assert turn.answer == "whole" and turn.status is TurnStatus.COMPLETE


async def test_language_choices_per_platform_and_user(make_store: StoreFactory) -> None:
    async with make_store() as store:
        assert await store.language("telegram", "7") is None
        await store.set_language("telegram", "7", Language.ZH_CN)
        await store.set_language("discord", "7", Language.ZH_TW)  # the same id elsewhere
        await store.set_language("telegram", "用户-🦊", Language.EN)
        await store.set_language("telegram", "7", None)  # forgotten
        await store.set_language("telegram", "7", None)  # forgetting twice is fine
        assert await store.language("telegram", "7") is None
        assert await store.language("discord", "7") is Language.ZH_TW
        assert await store.language("telegram", "用户-🦊") is Language.EN
        await store.set_language("telegram", "7", Language.ZH_TW)
    async with make_store() as store:
        assert await store.language("telegram", "7") is Language.ZH_TW


async def test_any_text_round_trips(make_store: StoreFactory) -> None:
    texts = [
        "emoji 😀👍🏽👨‍👩‍👧 and flags 🇹🇼",
        "中文：你好，世界。繁體：開發者。日本語のテキスト。한국어",
        "right to left: مرحبا שלום, combining: e\u0301, zero width:\u200b|",
        "quotes ' \" `, backslashes \\ \\\\, percent %s %(x)s, $1 ?, '; DROP TABLE turns; --",
        "lines\r\nand\ttabs\n\n```python\nprint('code')\n```",
        "",
    ]
    async with make_store(owner="进程-1") as store:
        conversation = await store.current("telegram:群组:用户😀")
        ids = []
        for text in texts:
            turn_id = await store.add_question(conversation.id, text)
            await store.finish_turn(turn_id, status=TurnStatus.COMPLETE, answer=text[::-1],
                                    backend_answer=text, error=text)
            await store.add_message(turn_id, MessageRef("telegram", "群组", text or "0"))
            ids.append(turn_id)
        turns = await store.recent_turns(conversation.id, len(texts))
        assert [t.question for t in turns] == texts
        assert [t.answer for t in turns] == [text[::-1] for text in texts]
        assert [t.backend_answer for t in turns] == texts
        assert await store.current("telegram:群组:用户😀") == conversation


async def test_large_answers_are_kept_whole(make_store: StoreFactory) -> None:
    question = "为什么？" * 25_000  # 100,000 characters
    answer = ("A long answer 😀 with CJK 長い回答。\n" * 40_000)  # about 1.2 MB of text
    async with make_store() as store:
        conversation = await store.current(KEY)
        turn_id = await store.add_question(conversation.id, question)
        await store.save_partial(turn_id, answer[: len(answer) // 2])
        await store.finish_turn(turn_id, status=TurnStatus.COMPLETE, answer=answer,
                                backend_answer=answer)
    async with make_store() as store:
        (turn,) = await store.recent_turns(conversation.id, 1)
        assert turn.question == question and turn.answer == answer
        assert turn.backend_answer == answer


async def test_questions_asked_at_once_are_all_kept(make_store: StoreFactory) -> None:
    async with make_store() as store:
        conversation = await store.current(KEY)
        ids = await asyncio.gather(*(store.add_question(conversation.id, f"q{n}")
                                     for n in range(20)))
        assert len(set(ids)) == 20
        turns = await store.recent_turns(conversation.id, 50)
        assert sorted(t.question for t in turns) == sorted(f"q{n}" for n in range(20))
        assert [t.id for t in turns] == sorted(ids)


async def test_a_store_that_is_not_open_says_so(make_store: StoreFactory) -> None:
    store = make_store()
    with pytest.raises(StorageError, match="not open"):
        await store.current(KEY)  # type: ignore[attr-defined]
    async with store as opened:
        await opened.check_writable()
    with pytest.raises(StorageError, match="not open"):
        await opened.recent_turns(1, 1)
