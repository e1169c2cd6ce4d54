"""The real discord.py client running rtxrelay's Discord bot against the fake Discord server
(gateway + REST over loopback) and the Chat with RTX replica.

Every wait is bounded and event-driven; nothing asserts on timings except Discord's own 3 s
acknowledgement deadline, which the fake enforces on its clock (an answer after it is a 404).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest

from rtxrelay.backends.chatrtx.answer_html import convert_answer
from rtxrelay.backends.chatrtx.backend import ChatRtxBackend
from rtxrelay.backends.chatrtx.launch_url import parse_launch_url
from rtxrelay.backends.openai.backend import OpenAiBackend
from rtxrelay.backends.openai.settings import OpenAiSettings
from rtxrelay.bots import discord_bot
from rtxrelay.bots.discord_bot import DiscordBot, DiscordSettings, DiscordSink
from rtxrelay.core.backend import Done
from rtxrelay.core.conversation import ConversationService
from rtxrelay.core.errors import ConfigError
from rtxrelay.core.ratelimit import Rate
from rtxrelay.core.store import MessageRef, TurnStatus
from tests.bots.rigs import DISCORD_TOKEN, DiscordRig, SkewClock, discord_rigs, languages
from tests.fakes.discord_api import FakeDiscord, StoredMessage
from tests.fakes.discord_payloads import FLAG_EPHEMERAL
from tests.llama.server import LlamaServer
from tests.replica import fake_model
from tests.replica.launcher import Replica, free_port

TOKEN = DISCORD_TOKEN
NO_MENTIONS = {"parse": []}
ORIGINAL_PATCH = "PATCH /webhooks/{webhook_id}/{webhook_token}/messages/@original"
CHANNEL_PATCH = "PATCH /channels/{channel_id}/messages/{message_id}"
CURSOR = "▍"


Rig = DiscordRig


@pytest.fixture
async def make_rig(rtx_426: Replica, tmp_path: Path,
                   monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Callable[..., Any]]:
    async with discord_rigs(rtx_426, tmp_path, monkeypatch) as make:
        yield make


def expected(question: str, history: list[list[str | None]] | None = None) -> str:
    return convert_answer(fake_model.answer_text(question, history or [])).text


def squash(text: str) -> str:
    return "".join(text.split())


def button_ids(message: StoredMessage) -> list[str]:
    return [c["custom_id"] for row in message.payload.get("components", [])
            for c in row.get("components", [])]


def assert_no_pings(fake: FakeDiscord) -> None:
    """Every message write the bot made carried allowed_mentions none."""
    writes = [r for r in fake.requests if r.method in ("POST", "PATCH")
              and ("/messages" in r.route or r.route.endswith("{webhook_token}")
                   or r.route.endswith("/callback"))]
    assert writes
    for request in writes:
        body = request.json.get("data", request.json) if isinstance(request.json, dict) else {}
        if request.route.endswith("/callback") and not body.get("content"):
            continue  # a deferral or a bare acknowledgement carries no text
        assert request.allowed_mentions == NO_MENTIONS or request.allowed_mentions == {
            **NO_MENTIONS, "replied_user": False}, (request.route, request.json)


async def test_ask_is_deferred_then_streamed_into_the_original_response(make_rig) -> None:
    rig: Rig = await make_rig()
    question = "what is RTX? [len=1500] [delay=0.01]"
    interaction = await rig.fake.dispatch_slash_command("ask", {"question": question})
    await interaction.wait_acked(timeout=3)
    assert interaction.response_type == 5  # deferred: "rtx_relay is thinking…"
    assert interaction.callback_statuses == [200]
    want = expected(question)
    await rig.wait(lambda: rig.text_in("general") == want)
    await rig.settled()
    original = rig.fake.message(interaction.original_message_id or "")
    assert original.edits >= 3, "the answer streams by editing the original response"
    assert any(CURSOR in r.get("content", "") for r in original.revisions), "cursor while live"
    assert original.content == want
    # Stop while streaming, Retry once finished; only the asker's id in the custom ids.
    alice = rig.fake.users["alice"]["id"]
    assert any(f"rtxrelay:stop:{alice}" in str(r.get("components")) for r in original.revisions)
    assert button_ids(original) == [f"rtxrelay:retry:{alice}"]
    assert_no_pings(rig.fake)


async def test_a_burst_of_asks_shares_a_bounded_pool_of_connections(
        make_rig, monkeypatch: pytest.MonkeyPatch) -> None:
    # discord.py's own pool is unbounded: a burst of N acknowledgements would open N
    # connections to discord.com, each with a TLS handshake. The bot bounds it (4 here).
    monkeypatch.setattr(discord_bot, "REST_CONNECTIONS", 4)
    rig: Rig = await make_rig()
    askers = [rig.fake.add_member(f"asker{i}") for i in range(24)]
    interactions = [
        await rig.fake.dispatch_slash_command("ask", {"question": f"q{i} [len=20]"}, user=u)
        for i, u in enumerate(askers)]
    for interaction in interactions:
        await interaction.wait_acked(timeout=10)
    assert {i.response_type for i in interactions} == {5}
    assert all(i.callback_statuses == [200] for i in interactions)
    # Every REST call so far (login, command sync, the 24 deferrals) came over <= 4 connections.
    peers = {r.peer for r in rig.fake.requests}
    assert "" not in peers
    assert 1 <= len(peers) <= 4, sorted(peers)


async def test_mention_and_dm_reply_and_stream(make_rig) -> None:
    rig: Rig = await make_rig()
    asked = await rig.fake.dispatch_mention("hello there", channel="rtx-help")
    want = expected("hello there")
    await rig.wait(lambda: rig.text_in("rtx-help") == want)
    (answer,) = rig.answers_in("rtx-help")
    assert answer.payload["message_reference"]["message_id"] == asked.id
    assert answer.edits >= 1

    dm = await rig.fake.dispatch_dm("private question", user="bob")
    dm_channel = dm.channel_id
    await rig.wait(lambda: rig.text_in(dm_channel) == expected("private question"))
    # Chatter in a server channel that does not mention the bot is ignored.
    await rig.fake.dispatch_guild_text("just people talking", channel="general")
    await rig.settled()
    assert rig.answers_in("general") == []
    assert_no_pings(rig.fake)


async def test_reply_to_an_answer_continues_the_conversation(make_rig) -> None:
    rig: Rig = await make_rig()
    await rig.fake.dispatch_mention("first question")
    await rig.wait(lambda: rig.text_in("general") == expected("first question"))
    await rig.settled()
    (answer,) = rig.answers_in("general")
    await rig.fake.dispatch_mention("what did I ask? [recall]", reply_to=answer)
    await rig.wait(lambda: "first question" in rig.answers_in("general")[-1].content
                   and len(rig.answers_in("general")) == 2)
    # Bob has his own history in the same server.
    await rig.fake.dispatch_mention("bob here [recall]", user="bob")
    await rig.wait(lambda: len(rig.answers_in("general")) == 3)
    await rig.settled()
    assert "first question" not in rig.answers_in("general")[-1].content


async def test_stop_and_retry_buttons_answer_only_the_asker(make_rig) -> None:
    rig: Rig = await make_rig()
    slow = "slow one [len=6000] [delay=0.02]"
    interaction = await rig.fake.dispatch_slash_command("ask", {"question": slow})
    await interaction.wait_acked(timeout=3)
    alice = rig.fake.users["alice"]["id"]
    await rig.wait(lambda: interaction.original_message_id and f"rtxrelay:stop:{alice}" in
                   button_ids(rig.fake.message(interaction.original_message_id)))
    original = rig.fake.message(interaction.original_message_id or "")

    # A second /ask from the same user is refused, privately.
    busy = await rig.fake.dispatch_slash_command("ask", {"question": "another"})
    await busy.wait_acked(timeout=3)
    assert busy.response_type == 4
    busy_msg = rig.fake.message(busy.original_message_id or "")
    assert busy_msg.payload["flags"] & FLAG_EPHEMERAL and "Still answering" in busy_msg.content

    # Bob may not stop Alice's answer.
    denied = await rig.fake.dispatch_component_click(original, f"rtxrelay:stop:{alice}", "bob")
    await denied.wait_acked(timeout=3)
    refusal = rig.fake.message(denied.original_message_id or "")
    assert refusal.payload["flags"] & FLAG_EPHEMERAL and "Only the person" in refusal.content

    stop = await rig.fake.dispatch_component_click(original, f"rtxrelay:stop:{alice}")
    await stop.wait_acked(timeout=3)
    assert stop.response_type == 6
    await rig.wait(lambda: "Stopped" in rig.text_in("general"))
    await rig.settled()
    last = rig.answers_in("general")[-1]
    assert button_ids(last) == [f"rtxrelay:retry:{alice}"]
    turns = await rig.store.turns_for_key(f"discord:guild-{rig.fake.guild_id}:{alice}")
    assert [t.status for t in turns] == [TurnStatus.INTERRUPTED]

    retry = await rig.fake.dispatch_component_click(last, f"rtxrelay:retry:{alice}")
    await retry.wait_acked(timeout=3)
    assert retry.response_type == 7 and button_ids(last) == []  # the button went away
    # The retried answer is on its way and can be stopped. (Not "shows a cursor": after a
    # Stop, Gradio may send the next job's first update as a diff against the cancelled
    # one's value, and the answer then shows only when it is complete.)
    await rig.wait(lambda: len(rig.answers_in("general")) > 1 and f"rtxrelay:stop:{alice}"
                   in button_ids(rig.answers_in("general")[-1]), timeout=20)
    stop2 = await rig.fake.dispatch_component_click(
        rig.answers_in("general")[-1], f"rtxrelay:stop:{alice}")
    await stop2.wait_acked(timeout=3)
    await rig.wait(lambda: rig.text_in("general").count("Stopped") == 2)
    await rig.settled()
    assert_no_pings(rig.fake)


async def test_429_keeps_the_final_text_intact(make_rig) -> None:
    # Real headers on every answer; two edits per 2 s per bucket, and scripted 429s on top.
    rig: Rig = await make_rig(fake_options={"bucket_limit": (2, 2.0)})
    for _ in range(3):
        rig.fake.rate_limit_next(ORIGINAL_PATCH, retry_after=0.3)
    question = "storm [len=2500] [delay=0.004]"
    interaction = await rig.fake.dispatch_slash_command("ask", {"question": question})
    await interaction.wait_acked(timeout=3)
    want = expected(question)
    await rig.wait(lambda: squash(rig.text_in("general")) == squash(want), timeout=40)
    await rig.settled(timeout=40)
    assert any(r.status == 429 for r in rig.fake.requests)
    assert CURSOR not in rig.text_in("general")


async def test_long_answer_is_paged_with_fences_intact(make_rig) -> None:
    rig: Rig = await make_rig()
    question = "long [len=7000] [code]"
    interaction = await rig.fake.dispatch_slash_command("ask", {"question": question})
    await interaction.wait_acked(timeout=3)
    want = expected(question)
    await rig.wait(lambda: want.split()[-1] in rig.text_in("general"), timeout=30)
    await rig.settled()
    pages = rig.answers_in("general")
    assert len(pages) >= 4
    for page in pages:
        assert len(page.content) <= 2000
        assert page.content.count("```") % 2 == 0, "every page closes its code blocks"
        assert CURSOR not in page.content
    reopened = [p for p in pages[1:] if p.content.startswith("```python")]
    assert reopened, "a code block cut at a page boundary reopens with its language"
    joined = squash("".join(re.sub(r"```(python)?", "", p.content) for p in pages))
    assert joined == squash(re.sub(r"```(python)?", "", want))
    # Follow-ups carry the later pages while the interaction token is valid.
    assert interaction.followup_ids


async def test_everyone_in_model_output_never_pings(make_rig) -> None:
    rig: Rig = await make_rig()
    role = rig.fake.roles[1]["id"]
    hostile = f"@everyone @here <@&{role}> <@{rig.fake.users['bob']['id']}> `@everyone` ok"
    await rig.fake.dispatch_mention(f"[echo] {hostile}")
    await rig.wait(lambda: rig.text_in("general").endswith("ok"))
    await rig.settled()
    (answer,) = rig.answers_in("general")
    assert "@everyone" not in answer.content.replace("`@everyone`", "")
    assert "<@" not in answer.content and "@here" not in answer.content
    assert "`@everyone`" in answer.content  # code is shown as written
    assert_no_pings(rig.fake)
    assert all(a in (NO_MENTIONS, {**NO_MENTIONS, "replied_user": False})
               for a in answer.allowed_mentions)


async def test_allowlists_of_roles_and_channels(make_rig) -> None:
    def only_mods_in_rtx_help(fake: FakeDiscord) -> dict[str, Any]:
        mods = next(r["id"] for r in fake.roles if r["name"] == "Mods")
        return {"allowed_roles": frozenset({int(mods)}),
                "allowed_channels": frozenset({int(fake.channels["rtx-help"])})}

    rig: Rig = await make_rig(configure=only_mods_in_rtx_help)
    # Bob is not a Mod: /ask is refused privately, a mention is ignored, a DM is refused.
    refused = await rig.fake.dispatch_slash_command("ask", {"question": "hi"}, user="bob",
                                                    channel="rtx-help")
    await refused.wait_acked(timeout=3)
    msg = rig.fake.message(refused.original_message_id or "")
    assert msg.payload["flags"] & FLAG_EPHEMERAL and "can't use" in msg.content
    await rig.fake.dispatch_mention("me too", user="bob", channel="rtx-help")
    dm = await rig.fake.dispatch_dm("and in private?", user="bob")
    await rig.wait(lambda: "private" in rig.text_in(dm.channel_id))
    # Alice is a Mod, but only rtx-help is open.
    await rig.fake.dispatch_mention("wrong channel", channel="general")
    await rig.fake.dispatch_mention("right channel", channel="rtx-help")
    await rig.wait(lambda: rig.text_in("rtx-help") == expected("right channel"))
    await rig.settled()
    assert rig.answers_in("general") == []
    assert "me too" not in rig.text_in("rtx-help")
    turns = await rig.store.turns_for_key(
        f"discord:guild-{rig.fake.guild_id}:{rig.fake.users['bob']['id']}")
    assert turns == [], "a refused question is never sent to Chat with RTX"


async def test_backend_down_is_acknowledged_in_time_and_explained(make_rig) -> None:
    rig: Rig = await make_rig(url=f"http://127.0.0.1:{free_port()}?cookie=x")
    interaction = await rig.fake.dispatch_slash_command("ask", {"question": "anyone home?"})
    await interaction.wait_acked(timeout=3)
    assert interaction.callback_statuses == [200], "acknowledged within Discord's 3 s"
    await rig.wait(lambda: "not running" in rig.text_in("general"))
    await rig.settled()
    text = rig.text_in("general")
    assert "Traceback" not in text and "127.0.0.1" not in text
    alice = rig.fake.users["alice"]["id"]
    (turn,) = await rig.store.turns_for_key(f"discord:guild-{rig.fake.guild_id}:{alice}")
    assert turn.question == "anyone home?" and turn.status is TurnStatus.FAILED


async def test_gateway_reconnect_mid_answer(make_rig) -> None:
    rig: Rig = await make_rig()
    question = "during a reconnect [len=3000] [delay=0.01]"
    await rig.fake.dispatch_mention(question)
    await rig.wait(lambda: CURSOR in rig.text_in("general"))
    connects = len(rig.fake.gateway_connections)
    rig.fake.drop_connection()
    await rig.wait(lambda: len(rig.fake.gateway_connections) > connects, timeout=15)
    await rig.fake.request_reconnect()  # and an op 7 on top
    want = expected(question)
    await rig.wait(lambda: squash(rig.text_in("general")) == squash(want), timeout=30)
    # Events keep flowing after the RESUMEs.
    await rig.fake.dispatch_mention("still there?")
    await rig.wait(lambda: "[turns=1] You asked: still there?" in rig.text_in("general"))
    await rig.settled()
    assert CURSOR not in rig.text_in("general")
    assert [op for op, _ in rig.fake.gateway_received].count(6) == 2, "both times it RESUMEd"


async def test_answer_outlives_the_interaction_token(make_rig) -> None:
    rig: Rig = await make_rig()
    question = "a very slow one [len=4500] [delay=0.01]"
    interaction = await rig.fake.dispatch_slash_command("ask", {"question": question})
    await interaction.wait_acked(timeout=3)
    await rig.wait(lambda: CURSOR in rig.text_in("general"))
    rig.clock.jump(15 * 60 + 5)  # the webhook token is now dead (401 50027)
    want = expected(question)
    await rig.wait(lambda: squash(rig.text_in("general")) == squash(want), timeout=30)
    await rig.settled()
    late = [r for r in rig.fake.requests if r.route.startswith(
        ("POST /channels/", "PATCH /channels/"))]
    assert late, "past 15 minutes the answer continues through the channel"
    assert CURSOR not in rig.text_in("general")


async def test_reset_help_and_dm_commands(make_rig) -> None:
    rig: Rig = await make_rig()
    await rig.fake.dispatch_mention("remember me")
    await rig.wait(lambda: rig.text_in("general") == expected("remember me"))
    await rig.settled()
    reset = await rig.fake.dispatch_slash_command("reset")
    await reset.wait_acked(timeout=3)
    assert "New conversation" in rig.fake.message(reset.original_message_id or "").content
    await rig.fake.dispatch_mention("anything before? [recall]")
    await rig.wait(lambda: len(rig.answers_in("general")) == 2)
    await rig.settled()
    assert "remember me" not in rig.answers_in("general")[-1].content
    help_ = await rig.fake.dispatch_slash_command("help")
    await help_.wait_acked(timeout=3)
    shown = rig.fake.message(help_.original_message_id or "")
    assert "/ask" in shown.content and shown.payload["flags"] & FLAG_EPHEMERAL


async def test_privileged_intent_refused_says_which_switch(make_rig) -> None:
    rig: Rig = await make_rig(message_content=True, wait_ready=False)
    with pytest.raises(ConfigError) as caught:
        async with asyncio.timeout(20):
            await rig.task
    assert "Message Content Intent" in str(caught.value)


async def test_bad_token_is_a_clear_error(make_rig) -> None:
    rig: Rig = await make_rig(wait_ready=False, fake_options={"token": "the-real-token"})
    with pytest.raises(ConfigError) as caught:
        async with asyncio.timeout(20):
            await rig.task
    assert "DISCORD_TOKEN" in str(caught.value) and TOKEN not in str(caught.value)


def test_settings_from_env_and_clear_errors() -> None:
    from rtxrelay.app.settings import load_settings

    def read(**env: str) -> DiscordSettings:
        return DiscordSettings.from_env(load_settings(env, env_file=None).env)

    s = read(DISCORD_TOKEN="t", DISCORD_ALLOWED_ROLES="1, 2", DISCORD_HISTORY="channel",
             DISCORD_COMMAND_GUILD="42", DISCORD_MESSAGE_CONTENT="1", USER_RATE_LIMIT="3/10")
    assert s.allowed_roles == {1, 2} and s.history_per_channel and s.command_guild == 42
    assert s.message_content
    for env, needle in [
        ({}, "DISCORD_TOKEN is not set"),
        ({"DISCORD_TOKEN": "t", "DISCORD_HISTORY": "server"}, "DISCORD_HISTORY"),
        ({"DISCORD_TOKEN": "t", "DISCORD_COMMAND_GUILD": "1,2"}, "one server id"),
        ({"DISCORD_TOKEN": "t", "DISCORD_ALLOWED_USERS": "@bob"}, "not a numeric id"),
        ({"DISCORD_TOKEN": "t", "DISCORD_MESSAGE_CONTENT": "maybe"}, "yes/no"),
        ({"DISCORD_TOKEN": "t", "DISCORD_PROXY": "socks5://u:secret@h:1080"}, "not an http"),
    ]:
        with pytest.raises(ConfigError, match=needle):
            read(**env)


async def test_rate_limit_per_user_and_shutdown_finishes_answers(make_rig) -> None:
    rig: Rig = await make_rig(user_rate=Rate(1, 3600.0))
    first = await rig.fake.dispatch_slash_command("ask", {"question": "hi"}, user="bob")
    await first.wait_acked(timeout=3)
    await rig.wait(lambda: rig.text_in("general") == expected("hi"))
    await rig.settled()
    second = await rig.fake.dispatch_slash_command("ask", {"question": "more"}, user="bob")
    await second.wait_acked(timeout=3)
    refusal = rig.fake.message(second.original_message_id or "")
    assert refusal.payload["flags"] & FLAG_EPHEMERAL and "Slow down" in refusal.content

    # Shutting down stops every answer in flight and lands it as "Stopped".
    await rig.fake.dispatch_mention("slow one [len=5000] [delay=0.02]", channel="rtx-help")
    await rig.wait(lambda: CURSOR in rig.text_in("rtx-help"))
    rig.stop.set()
    async with asyncio.timeout(30):
        await rig.task
    assert rig.text_in("rtx-help").endswith("⏹ Stopped.")


def test_only_channel_writes_count_against_the_bot_wide_limit() -> None:
    # Discord's 50 requests/s per bot exempts interaction endpoints: an /ask answer's final
    # pages, written through its interaction webhook, need not wait for the bot's budget;
    # past the token's lifetime it continues in the channel, and then they do.
    clock = SkewClock()
    channel: Any = object()
    asked = DiscordSink(channel, interaction=cast(Any, object()), original_pending=True,
                        reply_to=None, stop_view=None, clock=clock)
    mention = DiscordSink(channel, interaction=None, original_pending=False, reply_to=None,
                          stop_view=None, clock=clock)
    assert not asked.bot_wide() and mention.bot_wide()
    clock.jump(discord_bot.TOKEN_LIFETIME)
    assert asked.bot_wide()


@pytest.mark.fault('10', 'Discord: a multi-line mention keeps its lines')
async def test_a_multi_line_mention_keeps_its_lines(fault, make_rig) -> None:
    rig: Rig = await make_rig()
    question = "why does this fail?\n```py\ndef f():\n    return 1\n```"
    await rig.fake.dispatch_mention(question, channel="rtx-help")
    await rig.wait(lambda: "why does this fail?" in rig.text_in("rtx-help"))
    await rig.settled()
    alice = rig.fake.users["alice"]["id"]
    (turn,) = await rig.store.turns_for_key(f"discord:guild-{rig.fake.guild_id}:{alice}")
    assert turn.question == question
    fault(kept=1)


@pytest.mark.fault('5', "Discord: a crash's frozen answer is told at the next start")
async def test_a_stale_answer_from_a_crash_is_told_at_the_next_start(fault,
        make_rig, rtx_426: Replica) -> None:
    rig: Rig = await make_rig()
    await rig.fake.dispatch_mention("first question")
    await rig.wait(lambda: rig.text_in("general") == expected("first question"))
    await rig.settled()
    (answer,) = rig.answers_in("general")
    rig.stop.set()  # this bot goes away
    async with asyncio.timeout(20):
        await rig.task
    # What a crash mid-answer leaves: a pending turn, its message and its saved text.
    conversation = await rig.store.current("discord:crashed")
    turn = await rig.store.add_question(conversation.id, "lost")
    await rig.store.add_message(turn, MessageRef("discord", str(rig.fake.channels["general"]),
                                                 str(answer.id)))
    await rig.store.save_partial(turn, "half an answer")
    assert await rig.store.recover_pending(lambda owner: False) == 1
    async with aiohttp.ClientSession() as http:
        service = ConversationService(ChatRtxBackend(http, parse_launch_url(rtx_426.url)),
                                      rig.store)
        bot = DiscordBot(service, DiscordSettings(token=TOKEN), languages(rig.store),
                         clock=rig.clock, client_options={"guild_ready_timeout": 0.05})
        stop = asyncio.Event()
        task = asyncio.create_task(bot.run(stop))
        try:
            async with asyncio.timeout(20):
                while "Interrupted" not in rig.fake.message(answer.id).content:
                    if task.done():
                        task.result()
                    await asyncio.sleep(0.02)
        finally:
            stop.set()
            async with asyncio.timeout(20):
                await task
    told = rig.fake.message(answer.id)
    assert told.content == "half an answer\n\n⚠️ Interrupted: rtxrelay was restarted. Ask again."
    assert button_ids(told) == []
    assert await rig.store.stale_answers("discord") == []
    fault(kept=1, stale=0)


async def test_a_real_model_answers_in_discord(make_rig, llama: LlamaServer) -> None:
    """End to end on the real llama.cpp server: /ask streams SmolLM2's answer into the
    interaction's response, the same words as a direct question (greedy decoding)."""
    settings = OpenAiSettings(llama.base_url, temperature=0.0)
    rig: Rig = await make_rig(backend=lambda http: OpenAiBackend(http, settings))
    question = "Name three animals."
    async with aiohttp.ClientSession() as http:
        direct = [u async for u in OpenAiBackend(http, settings).stream_answer(
            question, (), session="s")][-1]
    assert isinstance(direct, Done) and direct.text
    interaction = await rig.fake.dispatch_slash_command("ask", {"question": question})
    await interaction.wait_acked(timeout=10)
    words = re.findall(r"\w+", direct.text)
    await rig.wait(lambda: re.findall(r"\w+", rig.text_in("general")) == words, timeout=60)
    await rig.settled(timeout=60)
    assert_no_pings(rig.fake)
