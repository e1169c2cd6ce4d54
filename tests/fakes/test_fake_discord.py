"""The fake Discord server driven by the real discord.py 2.x client over loopback.

These tests pin the fake's protocol fidelity (what discord.py sends and how it reacts to the
fake's answers), so the bot's own end-to-end tests can trust it. Every wait is bounded and
event-driven; nothing asserts on timings.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import discord
import pytest
from discord import app_commands

from tests.fakes.discord_api import FakeDiscord, ManualClock, point_discord_py_at
from tests.fakes.discord_payloads import FLAG_LOADING, INTENT_MESSAGE_CONTENT

TOKEN = "test-bot-token"
ORIGINAL = "PATCH /webhooks/{webhook_id}/{webhook_token}/messages/@original"
FOLLOWUP = "POST /webhooks/{webhook_id}/{webhook_token}"
CALLBACK = "POST /interactions/{webhook_id}/{webhook_token}/callback"
CHANNEL_POST = "POST /channels/{channel_id}/messages"
CHANNEL_PATCH = "PATCH /channels/{channel_id}/messages/{message_id}"
NO_MENTIONS = {"parse": []}

MakeFake = Callable[..., Awaitable[FakeDiscord]]
MessageHook = Callable[[discord.Message], Awaitable[None]]


class RelayClient(discord.Client):
    """Minimal stand-in for the bot: a command tree synced at start-up and a message hook."""

    def __init__(self, intents: discord.Intents | None = None) -> None:
        super().__init__(
            intents=intents or discord.Intents.default(),
            guild_ready_timeout=0.05,  # default 2 s would be paid by every test
            allowed_mentions=discord.AllowedMentions.none(),
        )
        self.tree = app_commands.CommandTree(self)
        self.message_hook: MessageHook | None = None

    async def setup_hook(self) -> None:
        await self.tree.sync()

    async def before_identify_hook(self, shard_id: int | None, *, initial: bool = False) -> None:
        # discord.py sleeps 5 s before every non-initial IDENTIFY (e.g. after op 9); skip it.
        return None

    async def on_message(self, message: discord.Message) -> None:
        # The fake echoes the bot's own messages like Discord does; a bot must ignore them.
        if self.user is None or message.author.id == self.user.id:
            return
        if self.message_hook is not None:
            await self.message_hook(message)


@pytest.fixture
async def make_fake(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[MakeFake]:
    async with contextlib.AsyncExitStack() as stack:

        async def make(**kwargs: Any) -> FakeDiscord:
            fake = await stack.enter_async_context(FakeDiscord(token=TOKEN, **kwargs))
            point_discord_py_at(fake, monkeypatch)
            return fake

        yield make


@contextlib.asynccontextmanager
async def running(fake: FakeDiscord, client: RelayClient) -> AsyncIterator[RelayClient]:
    task = asyncio.create_task(client.start(TOKEN))
    try:
        await fake.wait_until_ready()
        # READY/GUILD_CREATE are sent; wait until discord.py has parsed them (guild cache).
        await asyncio.wait_for(client.wait_until_ready(), 5)
        yield client
    finally:
        await client.close()
        await asyncio.wait_for(task, 5)


def add_ask(client: RelayClient, handler: Callable[[discord.Interaction], Awaitable[None]]) -> None:
    @client.tree.command(name="ask", description="Ask Chat with RTX")
    @app_commands.describe(question="What to ask")
    async def ask(interaction: discord.Interaction, question: str) -> None:
        await handler(interaction)


def add_streaming_ask(client: RelayClient) -> None:
    async def stream(interaction: discord.Interaction) -> None:
        await interaction.response.defer(thinking=True)
        for text in ("Hel", "Hello wor", "Hello world"):
            await interaction.edit_original_response(content=text)
        await interaction.followup.send("(continued)")

    add_ask(client, stream)


def capture(fut: asyncio.Future[Any]) -> Callable[[Awaitable[Any]], Awaitable[None]]:
    """Run a coroutine and hand its result or exception to `fut` (app-command errors would
    otherwise only be logged by the tree)."""

    async def run(aw: Awaitable[Any]) -> None:
        try:
            fut.set_result(await aw)
        except Exception as exc:
            fut.set_exception(exc)

    return run


async def test_login_ready_guild_and_command_sync(make_fake: MakeFake) -> None:
    fake = await make_fake()
    client = RelayClient()
    add_streaming_ask(client)
    async with running(fake, client):
        await asyncio.wait_for(client.wait_until_ready(), 5)
        assert client.user is not None and str(client.user.id) == fake.bot_id
        assert str(client.application_id) == fake.application_id
        guild = client.get_guild(int(fake.guild_id))
        assert guild is not None
        assert {c.name for c in guild.text_channels} == {"general", "rtx-help", "off-topic"}
        assert guild.me is not None and len(guild.roles) == 4
        assert guild.default_role.id == guild.id
        routes = [r.route for r in fake.requests]
        assert routes[:3] == [
            "GET /users/@me",
            "GET /oauth2/applications/@me",
            "PUT /applications/{application_id}/commands",
        ]
        assert fake.commands[(None, "ask")]["id"]
        # discord.py always asks for zlib-stream transport compression on Python < 3.14.
        assert fake.gateway_connections[0]["compress"] == "zlib-stream"
        with pytest.raises(discord.HTTPException) as bad:
            await client.http.bulk_upsert_global_commands(
                client.application_id or 0, [{"name": "Bad Name", "description": "", "type": 1}]
            )
        assert bad.value.code == 50035 and bad.value.status == 400

    bad_client = RelayClient()
    with pytest.raises(discord.LoginFailure):
        await bad_client.login("wrong-token")
    await bad_client.close()


async def test_slash_ask_defers_edits_and_follows_up(make_fake: MakeFake) -> None:
    fake = await make_fake()
    client = RelayClient()
    add_streaming_ask(client)
    async with running(fake, client):
        rec = await fake.dispatch_slash_command("ask", {"question": "what is RTX?"})
        await fake.wait_for_request(lambda r: r.route == FOLLOWUP)
    assert rec.response_type == 5 and rec.callback_statuses == [200]
    callback = fake.requests_to(CALLBACK)[0]
    assert callback.json == {"type": 5} and callback.query == {"with_response": "1"}
    original = fake.message(rec.original_message_id or "")
    assert original.content == "Hello world" and original.edits == 3
    assert original.revisions[0]["flags"] & FLAG_LOADING
    assert not original.payload["flags"] & FLAG_LOADING  # first edit cleared "thinking…"
    followup = fake.message(rec.followup_ids[0])
    assert followup.content == "(continued)" and followup.channel_id == rec.channel_id
    assert [m.id for m in fake.messages[rec.channel_id]] == [original.id, followup.id]
    writes = fake.requests_to(ORIGINAL) + fake.requests_to(FOLLOWUP)
    assert [r.allowed_mentions for r in writes] == [NO_MENTIONS] * 4


async def test_mention_reply_then_edit_with_typing(make_fake: MakeFake) -> None:
    fake = await make_fake()
    client = RelayClient()

    async def on_message(message: discord.Message) -> None:
        if client.user in message.mentions:
            async with message.channel.typing():
                reply = await message.reply("thinking…", mention_author=False)
            await reply.edit(content="RTX is a GPU brand.")

    client.message_hook = on_message
    async with running(fake, client):
        inbound = await fake.dispatch_mention("what is RTX?", user="bob")
        await fake.wait_for_request(lambda r: r.route == CHANNEL_PATCH)
    typing = fake.requests_to("POST /channels/{channel_id}/typing")
    assert typing and typing[0].status == 204
    post = fake.requests_to(CHANNEL_POST)[0]
    # discord.py sends the referenced id as an int; Discord answers with strings.
    assert int(post.json["message_reference"]["message_id"]) == int(inbound.id)
    assert post.allowed_mentions == {"parse": [], "replied_user": False}
    assert fake.requests_to(CHANNEL_PATCH)[0].allowed_mentions == NO_MENTIONS
    reply = fake.message(post.response["id"])
    assert reply.payload["type"] == 19
    assert reply.payload["referenced_message"]["id"] == inbound.id
    assert reply.content == "RTX is a GPU brand." and reply.revisions[0]["content"] == "thinking…"


async def test_dm_reply_and_message_content_blanking(make_fake: MakeFake) -> None:
    fake = await make_fake()
    client = RelayClient()
    seen: asyncio.Queue[discord.Message] = asyncio.Queue()

    async def on_message(message: discord.Message) -> None:
        await seen.put(message)
        if isinstance(message.channel, discord.DMChannel):
            await message.reply(f"echo: {message.content}")

    client.message_hook = on_message
    async with running(fake, client):
        inbound = await fake.dispatch_dm("hello in private")
        dm = await asyncio.wait_for(seen.get(), 5)
        await fake.wait_for_request(lambda r: r.route == CHANNEL_POST)
        await fake.dispatch_guild_text("secret without a mention")
        guild_msg = await asyncio.wait_for(seen.get(), 5)
    # A guild-less MESSAGE_CREATE resolves to a DMChannel with no recipient cached; no
    # CHANNEL_CREATE or POST /users/@me/channels is needed to reply.
    assert isinstance(dm.channel, discord.DMChannel) and dm.content == "hello in private"
    assert not fake.requests_to("POST /users/@me/channels")
    reply = fake.messages[inbound.channel_id][-1]
    assert reply.content == "echo: hello in private" and "guild_id" not in reply.payload
    assert guild_msg.content == ""  # no MESSAGE_CONTENT intent, no mention -> blanked


class StreamView(discord.ui.View):
    def __init__(self) -> None:
        super().__init__(timeout=None)  # no timeout task left behind at client close

    @discord.ui.button(label="Retry", custom_id="rtx:retry")
    async def retry(self, interaction: discord.Interaction, button: discord.ui.Button[Any]) -> None:
        await interaction.response.defer()  # type 6 on a component
        await interaction.edit_original_response(content="Retrying…")

    @discord.ui.button(label="Stop", custom_id="rtx:stop", style=discord.ButtonStyle.danger)
    async def stop_(self, interaction: discord.Interaction, button: discord.ui.Button[Any]) -> None:
        await interaction.response.edit_message(content="Stopped.", view=None)  # type 7


async def test_button_clicks_ack_and_edit(make_fake: MakeFake) -> None:
    fake = await make_fake()
    client = RelayClient()

    view_attached = asyncio.Event()

    async def with_buttons(interaction: discord.Interaction) -> None:
        await interaction.response.defer()
        await interaction.edit_original_response(content="Streaming…", view=StreamView())
        view_attached.set()

    add_ask(client, with_buttons)
    async with running(fake, client):
        rec = await fake.dispatch_slash_command("ask", {"question": "q"})
        # Not wait_for_request: that resolves when the fake has answered, and discord.py only
        # registers the view for click dispatch once it has read the PATCH response.
        await asyncio.wait_for(view_attached.wait(), 5)
        msg = fake.message(rec.original_message_id or "")
        retry = await fake.dispatch_component_click(msg, "rtx:retry", user="bob")
        await retry.wait_acked()
        await fake.wait_for_request(
            lambda r: r.route == ORIGINAL and r.json["content"] == "Retrying…"
        )
        stop = await fake.dispatch_component_click(msg, "rtx:stop", user="bob")
        await stop.wait_acked()
    assert retry.response_type == 6 and retry.original_message_id == msg.id
    assert stop.response_type == 7
    assert msg.content == "Stopped." and msg.payload["components"] == []
    assert [r["content"] for r in msg.revisions] == ["", "Streaming…", "Retrying…", "Stopped."]
    assert fake.requests_to(CALLBACK)[-1].json["data"]["allowed_mentions"] == NO_MENTIONS


async def test_scripted_429_on_edit_is_waited_out_and_retried(make_fake: MakeFake) -> None:
    fake = await make_fake()
    client = RelayClient()
    add_streaming_ask(client)
    fake.rate_limit_next(ORIGINAL, retry_after=0.05)
    async with running(fake, client):
        await fake.dispatch_slash_command("ask", {"question": "q"})
        await fake.wait_for_request(lambda r: r.route == FOLLOWUP)
    edits = fake.requests_to(ORIGINAL)
    assert [r.status for r in edits] == [429, 200, 200, 200]
    assert edits[0].json == edits[1].json  # the same edit, retried by discord.py
    assert edits[0].response == {
        "message": "You are being rate limited.",
        "retry_after": 0.05,
        "global": False,
    }
    assert edits[0].response_headers["X-RateLimit-Scope"] == "user"
    assert edits[0].response_headers["Retry-After"] == "1"


async def test_bucket_limit_makes_discord_py_wait_without_429(make_fake: MakeFake) -> None:
    fake = await make_fake(bucket_limit=(2, 0.2))
    client = RelayClient()

    async def on_message(message: discord.Message) -> None:
        reply = await message.reply("1", mention_author=False)
        for text in ("12", "123", "1234"):
            reply = await reply.edit(content=text)

    client.message_hook = on_message
    async with running(fake, client):
        await fake.dispatch_mention("stream please")
        await fake.wait_for_request(
            lambda r: r.route == CHANNEL_PATCH and r.json["content"] == "1234"
        )
    assert all(r.status != 429 for r in fake.requests)
    patches = fake.requests_to(CHANNEL_PATCH)
    # The bucket ran dry, so discord.py waited Reset-After before the next edit.
    assert patches[1].response_headers["X-RateLimit-Remaining"] == "0"
    assert len(patches) == 3


async def test_content_over_2000_is_rejected_with_50035(make_fake: MakeFake) -> None:
    fake = await make_fake()
    client = RelayClient()
    results: asyncio.Queue[Any] = asyncio.Queue()

    async def too_long(interaction: discord.Interaction) -> None:
        for text in ("x" * 2001, "x" * 2000):
            try:
                await interaction.response.send_message(text)  # type 4 callback
                await results.put("sent")
            except discord.HTTPException as exc:
                await results.put(exc)
        assert interaction.channel is not None and hasattr(interaction.channel, "send")
        try:
            await interaction.channel.send("y" * 2001)
        except discord.HTTPException as exc:
            await results.put(exc)

    add_ask(client, too_long)
    async with running(fake, client):
        rec = await fake.dispatch_slash_command("ask", {"question": "q"})
        first, second, third = [await asyncio.wait_for(results.get(), 5) for _ in range(3)]
    assert isinstance(first, discord.HTTPException)
    assert first.status == 400 and first.code == 50035
    assert "Must be 2000 or fewer in length." in first.text
    assert second == "sent" and rec.response_type == 4 and rec.callback_statuses == [400, 200]
    assert isinstance(third, discord.HTTPException) and third.code == 50035


async def test_late_ack_is_unknown_interaction(make_fake: MakeFake) -> None:
    clock = ManualClock()
    fake = await make_fake(clock=clock)
    client = RelayClient()
    outcome: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    async def slow(interaction: discord.Interaction) -> None:
        clock.advance(3.5)  # past the 3 s initial-response deadline
        await capture(outcome)(interaction.response.defer())

    add_ask(client, slow)
    async with running(fake, client):
        rec = await fake.dispatch_slash_command("ask", {"question": "q"})
        with pytest.raises(discord.NotFound) as exc:
            await asyncio.wait_for(outcome, 5)
    assert exc.value.code == 10062 and not rec.acked and rec.callback_statuses == [404]


async def test_double_ack_and_expired_token(make_fake: MakeFake) -> None:
    clock = ManualClock()
    fake = await make_fake(clock=clock)
    client = RelayClient()
    outcome: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    async def deferred_then_stale(interaction: discord.Interaction) -> None:
        await interaction.response.defer()
        clock.advance(901)  # past the 15-minute interaction token lifetime
        await capture(outcome)(interaction.edit_original_response(content="too late"))

    add_ask(client, deferred_then_stale)
    async with running(fake, client):
        rec = await fake.dispatch_slash_command("ask", {"question": "q"})
        with pytest.raises(discord.HTTPException) as exc:
            await asyncio.wait_for(outcome, 5)
        async with aiohttp.ClientSession() as session:
            url = f"{fake.base_url}/interactions/{rec.id}/{rec.token}/callback?with_response=1"
            async with session.post(url, json={"type": 5}) as resp:
                body = await resp.json()
    assert exc.value.status == 401 and exc.value.code == 50027
    assert resp.status == 400 and body["code"] == 40060


async def test_op7_reconnect_resumes_and_replays(make_fake: MakeFake) -> None:
    fake = await make_fake()
    client = RelayClient()
    replies: asyncio.Queue[str] = asyncio.Queue()

    async def on_message(message: discord.Message) -> None:
        await replies.put(message.content)

    client.message_hook = on_message
    async with running(fake, client):
        mark = len(fake.gateway_received)
        await fake.request_reconnect()
        resume = await fake.wait_for_gateway(6, after=mark)
        await fake.dispatch_mention("after op 7")
        assert "after op 7" in await asyncio.wait_for(replies.get(), 5)

        mark = len(fake.gateway_received)
        fake.drop_connection()
        await fake.dispatch_mention("sent while disconnected")  # replayed on RESUME
        await fake.wait_for_gateway(6, after=mark)
        assert "sent while disconnected" in await asyncio.wait_for(replies.get(), 5)

        mark = len(fake.gateway_received)
        await fake.invalidate_session()
        await fake.wait_for_gateway(2, after=mark)  # a fresh IDENTIFY
        await fake.wait_until_ready()
    assert resume["d"]["session_id"] and resume["d"]["token"] == TOKEN
    assert any(event == "MESSAGE_CREATE" for _, event in fake.replayed)
    identifies = [d for op, d in fake.gateway_received if op == 2]
    assert len(identifies) == 2
    # Reconnects go to READY's resume_gateway_url, which points back at the fake.
    assert len(fake.gateway_connections) == 4


async def test_privileged_intent_without_portal_switch_is_4014(make_fake: MakeFake) -> None:
    await make_fake()
    intents = discord.Intents.default()
    intents.message_content = True
    client = RelayClient(intents)
    try:
        with pytest.raises(discord.PrivilegedIntentsRequired):
            await asyncio.wait_for(client.start(TOKEN), 5)  # reconnect=True, as in production
    finally:
        await client.close()


async def test_privileged_intent_allowed_delivers_guild_content(make_fake: MakeFake) -> None:
    fake = await make_fake(allow_privileged=INTENT_MESSAGE_CONTENT)
    intents = discord.Intents.default()
    intents.message_content = True
    client = RelayClient(intents)
    seen: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def on_message(message: discord.Message) -> None:
        seen.set_result(message.content)

    client.message_hook = on_message
    async with running(fake, client):
        await fake.dispatch_guild_text("plain guild text")
        assert await asyncio.wait_for(seen, 5) == "plain guild text"


async def test_rest_headers_and_error_shapes(make_fake: MakeFake) -> None:
    fake = await make_fake()
    general = fake.channels["general"]
    auth = {"Authorization": f"Bot {TOKEN}"}
    async with aiohttp.ClientSession(headers=auth) as s:
        async with s.get(f"{fake.base_url}/users/@me") as resp:
            # discord.py's json_or_text() compares Content-Type verbatim.
            assert resp.headers["Content-Type"] == "application/json"
            assert resp.headers["Via"] == "1.1 google"
            for h in ("Limit", "Remaining", "Reset", "Reset-After", "Bucket"):
                assert f"X-RateLimit-{h}" in resp.headers
        checks = [
            ("POST", f"/channels/{general}/messages", {"content": ""}, 400, 50006),
            ("POST", "/channels/1/messages", {"content": "hi"}, 404, 10003),
            ("PATCH", f"/channels/{general}/messages/1", {"content": "hi"}, 404, 10008),
            (
                "POST",
                f"/channels/{general}/messages",
                {"embeds": [{"description": "d" * 4097}]},
                400,
                50035,
            ),
        ]
        for method, path, body, status, code in checks:
            async with s.request(method, fake.base_url + path, json=body) as resp:
                assert (resp.status, (await resp.json())["code"]) == (status, code), path
        async with s.get(f"{fake.base_url}/users/@me", headers={"Authorization": "Bot x"}) as r:
            assert r.status == 401
    client = RelayClient()
    async with running(fake, client):
        theirs = await fake.dispatch_guild_text("not yours")
        channel = client.get_channel(int(general))
        assert isinstance(channel, discord.TextChannel)
        with pytest.raises(discord.Forbidden) as exc:
            await channel.get_partial_message(int(theirs.id)).edit(content="mine now")
    assert exc.value.code == 50005


async def test_global_429_on_channel_post_is_retried(make_fake: MakeFake) -> None:
    fake = await make_fake()
    client = RelayClient()

    async def on_message(message: discord.Message) -> None:
        await message.channel.send("pong")

    client.message_hook = on_message
    fake.rate_limit_next(CHANNEL_POST, retry_after=0.05, is_global=True)
    async with running(fake, client):
        await fake.dispatch_mention("ping")
        await fake.wait_for_request(lambda r: r.route == CHANNEL_POST and r.status == 200)
    posts = fake.requests_to(CHANNEL_POST)
    assert [r.status for r in posts] == [429, 200]
    assert posts[0].response_headers["X-RateLimit-Global"] == "true"
    assert posts[0].response["global"] is True


async def test_slash_command_in_dm(make_fake: MakeFake) -> None:
    fake = await make_fake()
    client = RelayClient()
    add_streaming_ask(client)
    async with running(fake, client):
        rec = await fake.dispatch_slash_command("ask", {"question": "q"}, user="bob", guild=False)
        await fake.wait_for_request(lambda r: r.route == FOLLOWUP)
    assert rec.guild_id is None and rec.channel_id == fake.dm_channels[fake.users["bob"]["id"]]
    assert fake.message(rec.original_message_id or "").content == "Hello world"
    assert "guild_id" not in fake.message(rec.followup_ids[0]).payload


async def test_raw_gateway_zlib_stream_and_close_codes(make_fake: MakeFake) -> None:
    """The handshake without discord.py: zlib-stream frames, heartbeat ACK, 4004 and 4012."""
    fake = await make_fake()
    async with aiohttp.ClientSession() as session:
        url = f"{fake.gateway_url}?v=10&encoding=json&compress=zlib-stream"
        async with session.ws_connect(url) as ws:
            inflate = zlib.decompressobj()

            async def receive() -> dict[str, Any]:
                msg = await ws.receive(timeout=5)
                assert msg.type is aiohttp.WSMsgType.BINARY
                assert msg.data.endswith(b"\x00\x00\xff\xff")  # sync-flush per payload
                return json.loads(inflate.decompress(msg.data))

            assert (await receive())["d"]["heartbeat_interval"] == 41250
            await ws.send_json({"op": 1, "d": None})
            assert (await receive())["op"] == 11
            await ws.send_json({"op": 2, "d": {"token": "wrong", "intents": 513}})
            closing = await ws.receive(timeout=5)
            assert closing.type is aiohttp.WSMsgType.CLOSE and closing.data == 4004
        async with session.ws_connect(f"{fake.gateway_url}?v=6&encoding=json") as ws:
            closing = await ws.receive(timeout=5)
            assert closing.type is aiohttp.WSMsgType.CLOSE and closing.data == 4012


async def test_global_limit_counts_bot_routes_but_not_interactions(make_fake: MakeFake) -> None:
    # Discord: 50 requests/s per bot, interaction endpoints exempt. A small, long window here
    # so that nothing expires mid-test.
    fake = await make_fake(global_limit=(8, 60.0))
    client = RelayClient()
    add_streaming_ask(client)
    async with running(fake, client):
        for i in range(3):  # each: callback, 3 edits of @original, a follow-up: all exempt
            await fake.dispatch_slash_command("ask", {"question": f"q{i}"})
            await fake.wait_for_request(
                lambda r, n=i + 1: r.route == FOLLOWUP and len(fake.requests_to(FOLLOWUP)) == n)
    assert all(r.status != 429 for r in fake.requests)
    bound = [r for r in fake.requests
             if not r.path.startswith(("/interactions/", "/webhooks/"))]
    assert 1 <= len(bound) < 8 < len(fake.requests)  # login and command sync count
    async with aiohttp.ClientSession(headers={"Authorization": f"Bot {TOKEN}"}) as s:
        for _ in range(8 - len(bound)):
            async with s.get(f"{fake.base_url}/users/@me") as resp:
                assert resp.status == 200
        async with s.get(f"{fake.base_url}/users/@me") as resp:
            assert resp.status == 429
            assert resp.headers["X-RateLimit-Global"] == "true"
            assert resp.headers["X-RateLimit-Scope"] == "global"
            assert int(resp.headers["Retry-After"]) >= 1
            body = await resp.json()
    assert body["global"] is True and 0 < body["retry_after"] <= 60
