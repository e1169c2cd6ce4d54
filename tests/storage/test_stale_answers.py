"""The store side of telling a crash's stale messages: recorded, found once, then told (on
SQLite and PostgreSQL: ``make_store``)."""

from __future__ import annotations

from rtxrelay.core.store import MessageRef, StaleAnswer, TurnStatus
from tests.storage.conftest import StoreFactory


async def test_an_interrupted_answer_lists_its_messages_until_told(
        make_store: StoreFactory) -> None:
    async with make_store(owner="crashed") as store:
        conversation = await store.current("telegram:1:1")
        turn = await store.add_question(conversation.id, "long one")
        done = await store.add_question(conversation.id, "finished one")
        for page in ("10", "11"):
            await store.add_message(turn, MessageRef("telegram", "1", page))
        await store.add_message(done, MessageRef("telegram", "1", "12"))
        await store.save_partial(turn, "half of it")
        await store.finish_turn(done, status=TurnStatus.COMPLETE, answer="all")
        await store.add_message(turn, MessageRef("discord", "7", "99"))
    async with make_store(owner="next") as store:
        assert await store.stale_answers("telegram") == []  # nothing recovered yet
        assert await store.recover_pending(lambda owner: False) == 1
        assert await store.stale_answers("telegram") == [StaleAnswer(turn, "half of it", (
            MessageRef("telegram", "1", "10"), MessageRef("telegram", "1", "11")))]
        await store.mark_told(turn)
        assert await store.stale_answers("telegram") == []
