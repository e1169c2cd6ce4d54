"""The fake Telegram Bot API, driven by the real python-telegram-bot over loopback."""

from __future__ import annotations

import asyncio
import datetime as dtm
import os
from collections.abc import AsyncIterator

import aiohttp
import pytest
from telegram import Bot, InlineKeyboardButton, InlineKeyboardMarkup, Update
from telegram.constants import ParseMode
from telegram.error import BadRequest, Conflict, Forbidden, InvalidToken, RetryAfter
from telegram.ext import (
    Application,
    ApplicationBuilder,
    CommandHandler,
    ContextTypes,
    MessageHandler,
    filters,
)

from tests.fakes.telegram_api import NOT_MODIFIED, FakeTelegram
from tests.fakes.telegram_html import ParseError, parse_html, parse_markdown_v2, utf16_len

# Constructing RetryAfter without this emits a PTBDeprecationWarning, which `filterwarnings =
# error` turns into the exception a handler sees instead of RetryAfter. It is read when the error
# is built, so setting it at import is early enough. (Belongs in conftest for the whole suite.)
os.environ["PTB_TIMEDELTA"] = "true"
# httpx honours proxy variables; loopback must never go through one.
for _var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
    os.environ.pop(_var, None)
os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1,localhost"


class VirtualClock:
    """Shared by the fake's flood model and the test: time moves only when told."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
async def fake() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram() as server:
        yield server


def make_bot(fake: FakeTelegram, token: str | None = None) -> Bot:
    return Bot(token or fake.token, base_url=fake.base_url, base_file_url=fake.base_file_url)


def make_app(fake: FakeTelegram) -> Application:  # type: ignore[type-arg]
    return (
        ApplicationBuilder()
        .token(fake.token)
        .base_url(fake.base_url)
        .base_file_url(fake.base_file_url)
        .build()
    )


def same(ptb_message: str, fake_description: str) -> bool:
    # PTB strips "Bad Request: " and str.capitalize()s the rest (lower-casing it).
    return ptb_message.lower() == fake_description.removeprefix("Bad Request: ").lower()


# ----------------------------------------------------------------------------------- wiring


async def test_initialize_calls_get_me_with_privacy_mode_on(fake: FakeTelegram) -> None:
    async with make_bot(fake) as bot:
        assert bot.username == fake.bot_username
        me = await bot.get_me()
    assert me.id == fake.bot_id and me.is_bot
    assert me.can_read_all_group_messages is False
    assert [c.method for c in fake.calls] == ["getMe", "getMe"]


async def test_polling_app_answers_private_text_and_group_command(fake: FakeTelegram) -> None:
    async def echo(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        assert update.message is not None and update.message.text is not None
        await update.message.reply_text(f"echo: {update.message.text}")

    async def ask(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        assert update.message is not None
        await context.bot.send_chat_action(update.message.chat_id, "typing")
        await update.message.reply_text(
            f"<b>answer</b> to {' '.join(context.args or [])}", parse_mode=ParseMode.HTML
        )

    app = make_app(fake)
    app.add_handler(CommandHandler("ask", ask))
    app.add_handler(MessageHandler(filters.TEXT & filters.ChatType.PRIVATE, echo))
    alice, bob = fake.make_user("Alice"), fake.make_user("Bob")
    group = fake.make_group("RTX fans")

    await app.initialize()
    assert app.updater is not None
    await app.updater.start_polling(poll_interval=0.0)
    await app.start()
    try:
        fake.inject_private_text(alice, "hello there")
        dm = await fake.wait_for_call("sendMessage")
        assert dm.ok and dm.params["chat_id"] == alice["id"]
        assert dm.params["text"] == "echo: hello there"
        assert "reply_parameters" not in dm.params  # PTB quotes only outside private chats

        asked = fake.inject_group_text(group, bob, "what is RTX?", command="ask")
        assert asked["text"] == f"/ask@{fake.bot_username} what is RTX?"
        assert asked["entities"] == [
            {"type": "bot_command", "offset": 0, "length": len(f"/ask@{fake.bot_username}")}
        ]
        answer = await fake.wait_for_call(
            lambda c: c.method == "sendMessage" and c.params["chat_id"] == group["id"]
        )
        assert answer.params["reply_parameters"] == {"message_id": asked["message_id"]}
        record = fake.messages[(group["id"], answer.result["message_id"])]
        assert record.text == "answer to what is RTX?"
        assert record.entities == [{"type": "bold", "offset": 0, "length": 6}]
        assert record.reply_to is not None and record.reply_to.message_id == asked["message_id"]
        assert fake.chat_actions == [(group["id"], "typing")]
        assert fake.chat_text(alice["id"]) == "echo: hello there"
    finally:
        # Bounded, not measured: a fake that left the 10 s long poll hanging would trip this.
        async with asyncio.timeout(2.0):
            await app.updater.stop()
            await app.stop()
            await app.shutdown()
    methods = [c.method for c in fake.calls]
    assert methods[:3] == ["getMe", "deleteWebhook", "getUpdates"]
    # The final confirming poll acknowledged both updates.
    assert fake.calls_to("getUpdates")[-1].params["offset"] == 100_002


async def test_privacy_mode_withholds_plain_group_chatter(fake: FakeTelegram) -> None:
    group, bob = fake.make_group(), fake.make_user("Bob")
    fake.inject_group_text(group, bob, "just chatting")
    fake.inject_group_text(group, bob, "/ask@other_bot hi")
    mention = fake.inject_group_text(group, bob, "what is RTX?", mention_bot=True)
    assert [m["text"] for m in fake.undelivered] == ["just chatting", "/ask@other_bot hi"]
    assert mention["entities"] == [
        {"type": "mention", "offset": 0, "length": 1 + len(fake.bot_username)}
    ]
    async with make_bot(fake) as bot:
        updates = await bot.get_updates()
    assert [u.message.text for u in updates if u.message] == [mention["text"]]


# ------------------------------------------------------------------------------ error mapping


async def test_ptb_error_mapping(fake: FakeTelegram) -> None:
    alice = fake.make_user("Alice")
    fake.start_private_chat(alice)
    async with make_bot(fake) as bot:
        sent = await bot.send_message(alice["id"], "Hello")
        with pytest.raises(BadRequest) as not_modified:
            await bot.edit_message_text("Hello ", chat_id=alice["id"], message_id=sent.message_id)
        assert same(not_modified.value.message, NOT_MODIFIED)  # trailing space is trimmed

        with pytest.raises(BadRequest, match=r"(?i)message is too long"):
            await bot.send_message(alice["id"], "x" * 4097)
        with pytest.raises(BadRequest) as bad_html:
            await bot.send_message(alice["id"], "a <x> b", parse_mode=ParseMode.HTML)
        assert same(
            bad_html.value.message,
            'can\'t parse entities: Unsupported start tag "x" at byte offset 2',
        )
        with pytest.raises(BadRequest, match=r"(?i)^chat not found$"):
            await bot.send_message(424242, "hi")
        with pytest.raises(BadRequest, match=r"(?i)^message to edit not found$"):
            await bot.edit_message_text("x", chat_id=alice["id"], message_id=999)
        with pytest.raises(BadRequest, match=r"(?i)^message text is empty$"):
            await bot.send_message(alice["id"], "  \n ")

        fake.flood_next("editMessageText", 7)
        with pytest.raises(RetryAfter) as flood:
            await bot.edit_message_text("Hello!", chat_id=alice["id"], message_id=sent.message_id)
        assert flood.value.retry_after == dtm.timedelta(seconds=7)
        # The scripted fault was one-shot.
        await bot.edit_message_text("Hello!", chat_id=alice["id"], message_id=sent.message_id)

        fake.block_bot(alice)
        with pytest.raises(Forbidden, match=r"(?i)bot was blocked by the user"):
            await bot.send_message(alice["id"], "still there?")

    with pytest.raises(InvalidToken):
        async with make_bot(fake, token="1:wrong"):  # initialize() -> getMe -> 401
            pass
    errors = [(c.method, c.status, c.description) for c in fake.calls if not c.ok]
    assert errors[0] == ("editMessageText", 400, NOT_MODIFIED)
    assert ("editMessageText", 429, "Too Many Requests: retry after 7") in errors
    assert errors[-1] == ("getMe", 401, "Unauthorized")
    record = fake.messages[(alice["id"], sent.message_id)]
    assert record.text == "Hello!" and record.history == [("Hello", [])]
    assert record.edit_date is not None


async def test_wire_shapes_unknown_method_json_body_and_raw_strings(fake: FakeTelegram) -> None:
    alice = fake.make_user("Alice")
    fake.start_private_chat(alice)
    url = f"{fake.base_url}{fake.token}"
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{url}/noSuchMethod") as resp:
            assert resp.status == 404
            assert await resp.json() == {"ok": False, "error_code": 404, "description": "Not Found"}
        async with http.post(f"{url}/SENDMESSAGE", json={"chat_id": alice["id"], "text": "a"}) as r:
            assert r.status == 200 and (await r.json())["result"]["text"] == "a"
        async with http.get(
            f"{url}/sendMessage", params={"chat_id": str(alice["id"]), "text": "123"}
        ) as r:
            assert (await r.json())["result"]["text"] == "123"  # stays a string
    async with make_bot(fake) as bot:
        await bot.send_message(alice["id"], "42")
    assert fake.calls_to("sendMessage")[-1].params == {"chat_id": alice["id"], "text": "42"}


async def test_edit_without_markup_drops_keyboard_and_callbacks_are_answered_once(
    fake: FakeTelegram,
) -> None:
    alice = fake.make_user("Alice")
    fake.start_private_chat(alice)
    keyboard = InlineKeyboardMarkup([[InlineKeyboardButton("Stop", callback_data="stop")]])
    async with make_bot(fake) as bot:
        sent = await bot.send_message(alice["id"], "Thinking", reply_markup=keyboard)
        record = fake.messages[(alice["id"], sent.message_id)]
        assert record.reply_markup == keyboard.to_dict()
        query_id = fake.inject_callback_query(alice, record, "stop")
        assert await bot.answer_callback_query(query_id, text="Stopped")
        with pytest.raises(BadRequest, match=r"(?i)query is too old"):
            await bot.answer_callback_query(query_id)
        await bot.edit_message_text("Done", chat_id=alice["id"], message_id=sent.message_id)
    assert record.reply_markup is None
    assert fake.callback_answers[query_id]["text"] == "Stopped"


async def test_set_my_commands_validation(fake: FakeTelegram) -> None:
    async with make_bot(fake) as bot:
        assert await bot.set_my_commands([("ask", "Ask ChatRTX"), ("/reset", "Forget history")])
        commands = await bot.get_my_commands()
        assert [(c.command, c.description) for c in commands] == [
            ("ask", "Ask ChatRTX"),
            ("reset", "Forget history"),
        ]
        with pytest.raises(BadRequest, match=r"(?i)^bot_command_invalid$"):
            await bot.set_my_commands([("Ask", "capital letters")])
        with pytest.raises(BadRequest, match=r"(?i)command description must be non-empty"):
            await bot.set_my_commands([("ask", "   ")])
        with pytest.raises(BadRequest, match=r"(?i)must not exceed 256"):
            await bot.set_my_commands([("ask", "x" * 257)])
        assert await bot.delete_my_commands()
        assert await bot.get_my_commands() == ()


# ------------------------------------------------------------------------------ text fidelity


def test_parse_html_nested_entities_in_utf16_units() -> None:
    text, entities = parse_html(
        '👋 <b>hi <i>there</i></b> 🎉 <a href="https://example.com">x</a> '
        '<pre><code class="language-python">print(1)</code></pre>'
        '<span class="tg-spoiler">s</span><blockquote expandable>q</blockquote>'
    )
    assert text == "👋 hi there 🎉 x print(1)sq"
    assert entities == [
        {"type": "bold", "offset": 3, "length": 8},
        {"type": "italic", "offset": 6, "length": 5},
        {"type": "text_link", "offset": 15, "length": 1, "url": "https://example.com/"},
        {"type": "pre", "offset": 17, "length": 8, "language": "python"},
        {"type": "spoiler", "offset": 25, "length": 1},
        {"type": "expandable_blockquote", "offset": 26, "length": 1},
    ]
    assert utf16_len(text) == len(text) + 2  # two astral emoji


def test_parse_html_escapes_stay_literal() -> None:
    text, entities = parse_html(
        "&lt;b&gt;not bold&lt;/b&gt; &amp; &quot;q&quot; &#65;&#x42; &copy;"
    )
    assert text == '<b>not bold</b> & "q" AB &copy;'  # unknown named entities stay as typed
    assert entities == []


@pytest.mark.parametrize(
    ("html", "error"),
    [
        ("<x>hi</x>", 'Unsupported start tag "x" at byte offset 0'),
        ("é <p>", 'Unsupported start tag "p" at byte offset 3'),  # bytes, not characters
        ("1 < 2", 'Unsupported start tag "" at byte offset 2'),
        ("tail <b", "Unclosed start tag at byte offset 5"),
        ("<b>bold", 'Can\'t find end tag corresponding to start tag "b"'),
        ("oops</b>", "Unexpected end tag at byte offset 4"),
        ("<b>x</i>", 'Unmatched end tag at byte offset 4, expected "</b>", found "</i>"'),
        ("<b>x</b", "Unclosed end tag at byte offset 4"),
        ("<span>x</span>", 'Tag "span" must have class "tg-spoiler" at byte offset 0'),
        ('<a href="x"', "Unclosed start tag at byte offset 0"),
        ("<a href=x/>y</a>", "Unexpected end of name token at byte offset 8"),
        ('<tg-emoji emoji-id="x">y</tg-emoji>', "Invalid custom emoji identifier specified"),
    ],
)
def test_parse_html_rejects_like_telegram(html: str, error: str) -> None:
    with pytest.raises(ParseError) as exc:
        parse_html(html)
    assert exc.value.description == error


def test_markdown_v2_reserved_characters_and_entities() -> None:
    with pytest.raises(ParseError) as exc:
        parse_markdown_v2("Version 1.5")
    assert exc.value.description == (
        "Character '.' is reserved and must be escaped with the preceding '\\'"
    )
    text, entities = parse_markdown_v2("*bold _both_* `c\\`` ||s|| [x](t.me/y) 1\\.5")
    assert text == "bold both c` s x 1.5"
    assert [(e["type"], e["offset"], e["length"]) for e in entities] == [
        ("bold", 0, 9),
        ("italic", 5, 4),
        ("code", 10, 2),
        ("spoiler", 13, 1),
        ("text_link", 15, 1),
    ]
    with pytest.raises(ParseError, match="Can't find end of Bold entity at byte offset 0"):
        parse_markdown_v2("*open")


async def test_model_markup_reaches_user_as_literal_text(fake: FakeTelegram) -> None:
    alice = fake.make_user("Alice")
    fake.start_private_chat(alice)
    async with make_bot(fake) as bot:
        plain = await bot.send_message(alice["id"], "<b>not bold</b> see https://nvidia.com")
        escaped = await bot.send_message(
            alice["id"], "&lt;b&gt;x&lt;/b&gt; <i>y</i>", parse_mode=ParseMode.HTML
        )
    first = fake.messages[(alice["id"], plain.message_id)]
    assert first.text == "<b>not bold</b> see https://nvidia.com"
    assert first.entity_types() == ["url"]  # Telegram's own detection, no bold
    second = fake.messages[(alice["id"], escaped.message_id)]
    assert second.text == "<b>x</b> y"
    assert second.entities == [{"type": "italic", "offset": 9, "length": 1}]


async def test_length_limit_counts_utf16_units_after_parsing(fake: FakeTelegram) -> None:
    alice = fake.make_user("Alice")
    fake.start_private_chat(alice)
    async with make_bot(fake) as bot:
        with pytest.raises(BadRequest, match=r"(?i)message is too long"):
            await bot.send_message(alice["id"], "😀" * 4096)  # 8192 UTF-16 units
        await bot.send_message(alice["id"], "😀" * 2048)  # exactly 4096 units
        await bot.send_message(alice["id"], "é" * 4096)
        # Markup does not count, only what the user sees.
        await bot.send_message(alice["id"], "<b>" + "a" * 4096 + "</b>", parse_mode="HTML")
        with pytest.raises(BadRequest, match=r"(?i)message is too long"):
            await bot.send_message(alice["id"], "&amp;" * 4097, parse_mode="HTML")
    assert len(fake.bot_messages(alice["id"])) == 3


# -------------------------------------------------------------------------------- flood model


async def test_flood_model_on_virtual_clock() -> None:
    clock = VirtualClock()
    async with FakeTelegram(per_chat_rate=(1, 1.0), group_rate=(20, 60.0), clock=clock) as fake:
        alice = fake.make_user("Alice")
        fake.start_private_chat(alice)
        group = fake.make_group()
        async with make_bot(fake) as bot:
            sent = await bot.send_message(alice["id"], "one")
            with pytest.raises(RetryAfter) as exc:
                await bot.edit_message_text("two", chat_id=alice["id"], message_id=sent.message_id)
            assert exc.value.retry_after == dtm.timedelta(seconds=1)
            # Chat actions and drafts are outside the model; other chats have their own window.
            await bot.send_chat_action(alice["id"], "typing")
            await bot.send_message_draft(alice["id"], 1, "dra")
            await bot.send_message(group["id"], "hi group")
            clock.advance(1.0)
            await bot.edit_message_text("two", chat_id=alice["id"], message_id=sent.message_id)

            for _ in range(19):
                clock.advance(1.0)
                await bot.send_message(group["id"], "spam")
            # Group sends at t+0 and t+2..t+20: 20 in the window; at t+30.5 the oldest still
            # has 29.5 s to go, and retry_after rounds that up.
            clock.advance(10.5)
            with pytest.raises(RetryAfter) as group_exc:
                await bot.send_message(group["id"], "one too many")
            assert group_exc.value.retry_after == dtm.timedelta(seconds=30)
            clock.advance(29.5)
            await bot.send_message(group["id"], "fits again")
    refused = [c for c in fake.calls if c.status == 429]
    assert [c.error["parameters"] for c in refused if c.error] == [
        {"retry_after": 1},
        {"retry_after": 30},
    ]


async def test_global_flood_window_spans_chats() -> None:
    clock = VirtualClock()
    async with FakeTelegram(per_chat_rate=None, group_rate=None, global_rate=(3, 1.0),
                            clock=clock) as fake:
        users = [fake.make_user(f"User{i}") for i in range(4)]
        for user in users:
            fake.start_private_chat(user)
        async with make_bot(fake) as bot:
            for user in users[:3]:  # three chats, one message each: the bot-wide window is full
                await bot.send_message(user["id"], "news")
            await bot.send_chat_action(users[3]["id"], "typing")  # not a message: not counted
            with pytest.raises(RetryAfter) as exc:
                await bot.send_message(users[3]["id"], "one too many")
            assert exc.value.retry_after == dtm.timedelta(seconds=1)
            clock.advance(1.0)
            await bot.send_message(users[3]["id"], "fits again")


# ------------------------------------------------------------------------------------- drafts


async def test_send_message_draft_shape_and_private_only_rule(fake: FakeTelegram) -> None:
    alice, bob = fake.make_user("Alice"), fake.make_user("Bob")
    fake.start_private_chat(alice)
    group = fake.make_group()
    async with make_bot(fake) as bot:
        assert (
            await bot.send_message_draft(alice["id"], 7, "Thinking <b>hard</b>", parse_mode="HTML")
            is True
        )
        assert await bot.send_message_draft(alice["id"], 7) is True  # empty: "Thinking..."
        with pytest.raises(BadRequest, match=r"(?i)textdraft_peer_invalid"):
            await bot.send_message_draft(group["id"], 7, "no drafts in groups")
        with pytest.raises(BadRequest):
            await bot.send_message_draft(alice["id"], 0, "draft_id must be non-zero")
        with pytest.raises(BadRequest, match=r"(?i)chat not found"):
            await bot.send_message_draft(bob["id"], 1, "never started the bot")
        assert fake.active_drafts[alice["id"]].text == ""
        await bot.send_message(alice["id"], "Final answer")
    call = fake.calls_to("sendMessageDraft")[0]
    assert call.params == {
        "chat_id": alice["id"],
        "draft_id": 7,
        "text": "Thinking <b>hard</b>",
        "parse_mode": "HTML",
    }
    first = fake.drafts[0]
    assert (first.text, first.entities) == (
        "Thinking hard",
        [{"type": "bold", "offset": 9, "length": 4}],
    )
    assert alice["id"] not in fake.active_drafts  # the real message replaced the draft
    assert fake.chat_text(alice["id"]) == "Final answer"


# ------------------------------------------------------------------------------ long polling


async def test_newer_get_updates_terminates_the_parked_one_with_409(fake: FakeTelegram) -> None:
    async with make_bot(fake) as first, make_bot(fake) as second:
        parked = asyncio.create_task(first.get_updates(timeout=5))
        await fake.wait_until(lambda: fake.parked_polls == 1)
        assert await second.get_updates(timeout=0) == ()
        with pytest.raises(Conflict, match=r"(?i)terminated by other getupdates request"):
            await parked
    statuses = [c.status for c in fake.calls_to("getUpdates")]
    assert sorted(statuses) == [200, 409]


async def test_updates_are_forgotten_once_confirmed(fake: FakeTelegram) -> None:
    alice = fake.make_user("Alice")
    for text in ("a", "b", "c"):
        fake.inject_private_text(alice, text)
    async with make_bot(fake) as bot:
        updates = await bot.get_updates(limit=2)
        assert [u.update_id for u in updates] == [100_000, 100_001]
        rest = await bot.get_updates(offset=updates[-1].update_id + 1)
        assert [u.message.text for u in rest if u.message] == ["c"]
        assert await bot.get_updates(offset=rest[-1].update_id + 1) == ()
