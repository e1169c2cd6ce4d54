"""The real python-telegram-bot application against the fake Bot API and the ChatRTX replica."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from rtxrelay.backends.chatrtx.answer_html import convert_answer
from rtxrelay.backends.chatrtx.backend import ChatRtxBackend
from rtxrelay.backends.chatrtx.launch_url import parse_launch_url
from rtxrelay.backends.openai.backend import OpenAiBackend
from rtxrelay.backends.openai.settings import OpenAiSettings
from rtxrelay.bots.telegram_bot import TelegramBot, TelegramSettings
from rtxrelay.bots.telegram_polling import PollWatch
from rtxrelay.core.backend import Done
from rtxrelay.core.conversation import ConversationService
from rtxrelay.core.errors import ConfigError
from rtxrelay.core.store import TurnStatus
from rtxrelay.storage.sqlite_store import SqliteStore
from tests.bots.rigs import TelegramRig, languages, telegram_rigs
from tests.fakes.telegram_api import FakeTelegram
from tests.llama.server import LlamaServer
from tests.replica import fake_model
from tests.replica.launcher import Replica, free_port

Rig = TelegramRig


@pytest.fixture
async def make_rig(rtx_426: Replica, tmp_path: Path) -> AsyncIterator[object]:
    async with telegram_rigs(rtx_426, tmp_path) as make:
        yield make


def expected(question: str, history: list[list[str | None]] | None = None) -> str:
    return convert_answer(fake_model.answer_text(question, history or [])).text


async def final_text(fake: FakeTelegram, chat_id: int, want: str, timeout: float = 20) -> str:
    await fake.wait_until(lambda: want in fake.chat_text(chat_id), timeout=timeout)
    return fake.chat_text(chat_id)


async def test_private_chat_streams_through_drafts_then_sends_the_answer(make_rig) -> None:
    rig: Rig = await make_rig()
    user = rig.fake.make_user("Alice")
    rig.fake.inject_private_text(user, "what is RTX? [len=600]")
    want = expected("what is RTX? [len=600]")
    text = await final_text(rig.fake, user["id"], want[-40:])
    assert text == want
    assert rig.fake.drafts, "the answer streams as drafts in private chats"
    assert rig.fake.calls_to("setMyCommands")


async def test_group_mention_reply_and_ask_command_edit_in_place(make_rig) -> None:
    rig: Rig = await make_rig()
    group = rig.fake.make_group()
    alice, bob = rig.fake.make_user("Alice"), rig.fake.make_user("Bob")
    rig.fake.inject_group_text(group, alice, "hello there", mention_bot=True)
    await final_text(rig.fake, group["id"], expected("hello there")[-30:])
    edits = rig.fake.calls_to("editMessageText")
    assert edits, "groups stream by editing the message"
    first = rig.fake.bot_messages(group["id"])[0]
    assert first.reply_to is not None  # answers quote the question in groups

    rig.fake.inject_group_text(group, bob, "some chatter between people")
    rig.fake.inject_group_text(group, bob, "second [recall]", command="ask")
    want = expected("second [recall]")  # Bob's own history is empty: per-user by default
    await final_text(rig.fake, group["id"], want[-30:])
    asked = [c for c in rig.fake.calls_to("sendMessage") if "chatter" in str(c.params)]
    assert not asked, "chatter not addressed to the bot is ignored"

    answer = rig.fake.bot_messages(group["id"])[0]
    rig.fake.inject_group_text(group, alice, "and more? [recall]", reply_to=answer.message_id)
    # The reply continues Alice's conversation; Markdown bullets render as "•".
    await final_text(rig.fake, group["id"], "• hello there")


async def test_429_storm_keeps_the_final_text_intact(make_rig) -> None:
    rig: Rig = await make_rig(per_chat_rate=(1, 10.0))  # stricter than our 3 s group budget
    # Scripted 429s too: whether the flood model alone pushes back depends on how far the
    # shared virtual clock runs ahead while the replica streams (a busy machine: further).
    for _ in range(2):
        rig.fake.flood_next("editMessageText", retry_after=5)
    group = rig.fake.make_group()
    user = rig.fake.make_user("Alice")
    question = "storm [len=1500] [delay=0.004]"
    rig.fake.inject_group_text(group, user, question, command="ask")
    want = expected(question)
    await rig.fake.wait_until(lambda: rig.fake.chat_text(group["id"]) == want, timeout=30)
    assert any(c.status == 429 for c in rig.fake.calls), "the flood model must have pushed back"


async def test_long_answer_is_paged_with_fences_intact(make_rig) -> None:
    rig: Rig = await make_rig(drafts_in_private=False)
    user = rig.fake.make_user("Alice")
    question = "long [len=10000] [code]"
    rig.fake.inject_private_text(user, question)
    want = expected(question)
    await rig.fake.wait_until(lambda: want.split()[-1] in rig.fake.chat_text(user["id"]),
                              timeout=30)
    await rig.settled(timeout=30)
    pages = rig.fake.bot_messages(user["id"])
    assert len(pages) >= 3
    for page in pages:
        assert len(page.text.encode("utf-16-le")) // 2 <= 4096
        pre = [e for e in page.entities if e["type"] == "pre"]
        assert all(e.get("language") == "python" for e in pre)
    joined = "".join("".join(p.text.split()) for p in pages)
    for block in [b for b in want.split("```") if b.startswith("python")]:
        body = "".join(block.removeprefix("python").split())
        assert body in joined


async def test_hostile_model_output_is_delivered_as_plain_text(make_rig) -> None:
    rig: Rig = await make_rig()
    user = rig.fake.make_user("Mallory")
    hostile = "<b>bold?</b> & <a href=\"http://x\">x</a> *unbalanced `tick @everyone"
    rig.fake.inject_private_text(user, f"[echo] {hostile}")
    await final_text(rig.fake, user["id"], "\uff20everyone")
    (message,) = rig.fake.bot_messages(user["id"])
    assert message.text == hostile.replace("@everyone", "\uff20everyone")  # pings nobody
    assert not {"bold", "text_link", "code", "italic", "mention"} & set(message.entity_types())


async def test_busy_cancel_reset_and_retry(make_rig) -> None:
    rig: Rig = await make_rig(drafts_in_private=False)
    user = rig.fake.make_user("Alice")
    chat = user["id"]
    rig.fake.inject_private_text(user, "slow one [len=4000] [delay=0.02]")
    await rig.fake.wait_for_call("editMessageText", timeout=20)
    rig.fake.inject_private_text(user, "second question")
    await final_text(rig.fake, chat, "Still answering")
    rig.fake.inject_private_text(user, "/cancel")
    await final_text(rig.fake, chat, "⏹ Stopped.")
    turns = await rig.store.turns_for_key(f"telegram:{chat}:{chat}")
    assert [t.status for t in turns] == [TurnStatus.INTERRUPTED]

    rig.fake.inject_private_text(user, "/reset")
    await final_text(rig.fake, chat, "New conversation")
    rig.fake.inject_private_text(user, "after reset [recall]")
    await final_text(rig.fake, chat, expected("after reset [recall]")[-20:])
    # The tail can show in an interim frame already; /retry asked before the answer has
    # landed would (rightly) get "still answering".
    await rig.settled()
    rig.fake.inject_private_text(user, "/retry")
    await rig.fake.wait_until(lambda: rig.fake.chat_text(chat).count("after reset") >= 2,
                              timeout=20)


async def test_allowlist_and_backend_down(make_rig) -> None:
    rig: Rig = await make_rig(allowed_users=frozenset({42}))
    stranger = rig.fake.make_user("Eve")
    rig.fake.inject_private_text(stranger, "let me in")
    await final_text(rig.fake, stranger["id"], "private")
    assert "let me in" not in str(rig.fake.calls_to("sendMessage")[-1].params)

    down: Rig = await make_rig(url=f"http://127.0.0.1:{free_port()}?cookie=x")
    user = down.fake.make_user("Alice")
    down.fake.inject_private_text(user, "anyone home?")
    text = await final_text(down.fake, user["id"], "not running")
    assert "Traceback" not in text and "127.0.0.1" not in text
    (turn,) = await down.store.turns_for_key(f"telegram:{user['id']}:{user['id']}")
    assert turn.question == "anyone home?" and turn.status is TurnStatus.FAILED


async def test_refused_drafts_fall_back_to_editing_a_message(make_rig) -> None:
    rig: Rig = await make_rig()
    rig.fake.fail_always("sendMessageDraft", 404, "Not Found")  # a Bot API server before 9.5
    user = rig.fake.make_user("Alice")
    question = "old server [len=1500] [delay=0.004]"
    rig.fake.inject_private_text(user, question)
    await rig.fake.wait_until(lambda: rig.fake.chat_text(user["id"]) == expected(question),
                              timeout=20)
    assert rig.fake.calls_to("editMessageText"), "the answer streamed by edits instead"
    refused = len(rig.fake.calls_to("sendMessageDraft"))
    rig.fake.inject_private_text(user, "again [len=800]")
    await final_text(rig.fake, user["id"], "again")
    await rig.settled()
    assert len(rig.fake.calls_to("sendMessageDraft")) == refused, "no drafts tried again"


async def test_queue_position_is_shown_while_another_answer_runs(make_rig) -> None:
    rig: Rig = await make_rig()
    group = rig.fake.make_group()
    alice, bob = rig.fake.make_user("Alice"), rig.fake.make_user("Bob")
    rig.fake.inject_group_text(group, alice, "long one [len=3000] [delay=0.01]", command="ask")
    await rig.fake.wait_for_call("editMessageText", timeout=20)
    rig.fake.inject_group_text(group, bob, "my turn", command="ask")
    await rig.fake.wait_until(
        lambda: any("#1 in line" in str(c.params.get("text")) for c in rig.fake.calls),
        timeout=20)
    await final_text(rig.fake, group["id"], "You asked: my turn")


@pytest.mark.fault('10/11', 'multi-line questions kept; an edited question not asked again')
async def test_multi_line_questions_keep_their_lines_and_an_edit_is_not_asked_again(fault,
        make_rig) -> None:
    rig: Rig = await make_rig()
    group = rig.fake.make_group()
    ada = rig.fake.make_user("Ada")
    by_command = "why does this fail?\ndef f():\n    return 1"
    rig.fake.inject_group_text(group, ada, by_command, command="ask")
    await final_text(rig.fake, group["id"], expected(by_command)[-30:])
    await rig.settled()  # the same conversation: the next question waits for this one's end
    by_mention = "and this one?\n  x = [1,\n       2]"
    asked = rig.fake.inject_group_text(group, ada, by_mention, mention_bot=True)
    await final_text(rig.fake, group["id"], "and this one?")
    await rig.settled()
    # Editing a question does not ask it again; a new question after the edit is answered.
    rig.fake.inject_update({"edited_message": {**asked, "text": asked["text"] + " (edited)",
                                               "edit_date": asked["date"] + 5}})
    rig.fake.inject_group_text(group, ada, "next", mention_bot=True)
    await final_text(rig.fake, group["id"], expected("next")[-30:])
    await rig.settled()
    turns = await rig.store.turns_for_key(f"telegram:{group['id']}:{ada['id']}")
    assert [t.question for t in turns] == [by_command, by_mention, "next"]
    assert "Still answering" not in rig.fake.chat_text(group["id"])
    fault(kept=3)


@pytest.mark.fault('15', 'a bare /ask from someone not allowed: no reply')
async def test_a_bare_ask_from_someone_not_allowed_gets_no_reply(fault, make_rig) -> None:
    rig: Rig = await make_rig(allowed_users=frozenset({42}))
    group = rig.fake.make_group()
    eve = rig.fake.make_user("Eve")
    rig.fake.inject_group_text(group, eve, "", command="ask")
    # Then Eve writes privately: her refusal there comes after the group /ask was handled
    # (updates are dispatched in order, and a "Usage" reply would be sent at once).
    rig.fake.inject_private_text(eve, "let me in")
    await final_text(rig.fake, eve["id"], "private")
    assert rig.fake.bot_messages(group["id"]) == []
    fault()


async def test_short_replies_pushed_back_by_flood_control_are_sent_after_the_wait(
        make_rig) -> None:
    """Help, usage and refusals are not streamed: a 429 on them is waited out and the reply
    sent again, so whoever asked is still told (the streamed answers have their own path)."""
    rig: Rig = await make_rig(allowed_users=frozenset({42}))
    alice, eve = rig.fake.make_user("Alice", user_id=42), rig.fake.make_user("Eve")
    rig.fake.flood_next("sendMessage", retry_after=3)
    rig.fake.flood_next("sendMessage", retry_after=2)
    rig.fake.inject_private_text(alice, "/help")
    await final_text(rig.fake, alice["id"], "/ask")
    rig.fake.flood_next("sendMessage", retry_after=4)
    rig.fake.inject_private_text(eve, "let me in")  # not allowed: told so, privately
    await final_text(rig.fake, eve["id"], "private")
    sends = rig.fake.calls_to("sendMessage")
    assert [c.status for c in sends] == [429, 429, 200, 429, 200]
    assert len(rig.fake.bot_messages(alice["id"])) == len(rig.fake.bot_messages(eve["id"])) == 1


async def test_a_dropped_connection_is_logged_once_and_its_end_once(
        make_rig, caplog: pytest.LogCaptureFixture) -> None:
    rig: Rig = await make_rig()
    user = rig.fake.make_user("Alice")
    rig.fake.fail_always("getUpdates", 502, "Bad Gateway")
    rig.fake.inject_private_text(user, "/help")  # ends the long poll now; the next one fails
    await rig.fake.wait_until(
        lambda: sum(c.status == 502 for c in rig.fake.calls_to("getUpdates")) >= 3, timeout=30)
    rig.fake.clear_faults("getUpdates")
    # Alice writes as Telegram comes back: the first poll to go through brings her message at
    # once (an empty long poll would take its whole timeout, 10 s, to answer), and it is
    # answered as before.
    rig.fake.inject_private_text(user, "still there?")
    await final_text(rig.fake, user["id"], expected("still there?")[-30:])
    await rig.fake.wait_until(lambda: "Telegram answers again" in caplog.text, timeout=30)
    lines = [r for r in caplog.records if r.name.startswith(("rtxrelay", "telegram"))
             and r.levelno >= logging.WARNING]
    assert [r.getMessage().split(" (")[0] for r in lines] == [
        "Cannot reach Telegram", "Telegram answers again"], caplog.text
    assert "Traceback" not in caplog.text


@pytest.mark.fault('7', 'a second run on the same Telegram token steps back')
async def test_a_second_bot_on_the_same_token_steps_back_and_the_first_goes_on(fault,
        make_rig, rtx_426: Replica, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rig: Rig = await make_rig(poll_watch=PollWatch(start_grace=0))  # long running
    async with aiohttp.ClientSession() as http, SqliteStore(tmp_path / "second.db") as store:
        service = ConversationService(ChatRtxBackend(http, parse_launch_url(rtx_426.url)), store)
        second = TelegramBot(service, TelegramSettings(token=rig.fake.token,
                                                       api_base_url=rig.fake.base_url),
                             languages(store))
        with pytest.raises(ConfigError) as refused:
            async with asyncio.timeout(30):
                await second.run(asyncio.Event())
    assert "Another program is already polling" in refused.value.message
    assert caplog.text.count("Another program is polling Telegram") == 1  # the first said so
    user = rig.fake.make_user("Alice")
    rig.fake.inject_private_text(user, "are you still mine?")
    await final_text(rig.fake, user["id"], expected("are you still mine?")[-30:])
    fault(kept=1)


async def test_a_real_model_answers_in_telegram(make_rig, llama: LlamaServer) -> None:
    """End to end on the real llama.cpp server: the bot streams SmolLM2's answer into a
    private chat and lands exactly what the model says (greedy, so the same words as a
    direct question)."""
    settings = OpenAiSettings(llama.base_url, temperature=0.0)
    rig: Rig = await make_rig(backend=lambda http: OpenAiBackend(http, settings))
    question = "Name three colors."
    async with aiohttp.ClientSession() as http:
        direct = [u async for u in OpenAiBackend(http, settings).stream_answer(
            question, (), session="s")][-1]
    assert isinstance(direct, Done) and direct.text
    user = rig.fake.make_user("Grace")
    rig.fake.inject_private_text(user, question)
    words = re.findall(r"\w+", direct.text)
    await rig.fake.wait_until(
        lambda: re.findall(r"\w+", rig.fake.chat_text(user["id"])) == words, timeout=60)
    await rig.settled(timeout=60)
    assert rig.fake.drafts, "it streamed"
