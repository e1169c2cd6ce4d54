"""Both bots speak each user's language (issue 17): the real python-telegram-bot and discord.py
against their fakes and the Chat with RTX replica, with Simplified and Traditional Chinese
users beside an English one in the same group or server.

Every status of a conversation is compared with the catalogue's text in the user's language,
and everything the bot said to a Chinese user that is not the model's answer must hold no
English word (a run of three or more ASCII letters) but the names that stay as they are
(Chat with RTX, rtxrelay, commands, settings): a text that skipped the catalogue fails here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import pytest

from rtxrelay.backends.chatrtx.answer_html import convert_answer
from rtxrelay.backends.chatrtx.backend import ChatRtxBackend
from rtxrelay.backends.chatrtx.launch_url import parse_launch_url
from rtxrelay.bots import discord_bot, languages, telegram_bot
from rtxrelay.core.admission import Refusal, RefusalReason
from rtxrelay.core.backend import AnswerOptions, Backend, BackendUpdate, Exchange, Started
from rtxrelay.core.errors import BackendError, BackendErrorKind
from rtxrelay.core.i18n import Language, Texts
from rtxrelay.core.paging import LengthUnit, text_length
from rtxrelay.core.ratelimit import Rate
from rtxrelay.core.streaming import ReplyTexts
from tests.bots.rigs import CATALOGUE, DiscordRig, TelegramRig, discord_rigs, telegram_rigs
from tests.fakes.discord_api import InteractionRecord, StoredMessage
from tests.fakes.discord_payloads import FLAG_EPHEMERAL
from tests.fakes.telegram_api import FakeTelegram, MessageRecord
from tests.replica import fake_model
from tests.replica.launcher import Replica

EN, CN, TW = (CATALOGUE.texts(language) for language in Language)
CHINESE = (CN, TW)
LIMIT = Rate(3, 1e9)  # three questions per user for the whole test, then "slow down"
# An answer that streams for half a minute (each is stopped long before it ends).
SLOW = "[len=12000] [delay=0.02]"
CURSOR = "▍"


# -- what a user was shown ------------------------------------------------------------------------


def expected(question: str) -> str:
    return convert_answer(fake_model.answer_text(question, [])).text


def squash(text: str) -> str:
    """Text without blanks and cursor; the replica's "[turns=N]" (the earlier turns it was
    given) as if none."""
    return re.sub(r"\[turns=\d+\]", "[turns=0]", "".join(text.replace(CURSOR, "").split()))


# Names that stay as they are in every language: products, the bot's own name, the languages'
# own names (the /language choices), the /language argument "auto". Commands and settings are
# matched by their form (/ask, RTX_URL).
KEPT_NAMES = re.compile(r"Chat with RTX|rtxrelay|RTX|Discord|Telegram|English|\bauto\b")
COMMAND_OR_SETTING = re.compile(r"/[a-z_]+(?:@\w+)?|\b[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+\b")
ENGLISH_WORD = re.compile(r"[A-Za-z]{3,}")


def english_words(texts: Iterable[str], questions: Sequence[str]) -> list[str]:
    """The English words in what the bot said, leaving out the model's answers (paragraphs
    that are a piece of the replica's answer to one of ``questions``) and the kept names."""
    answers = [squash(expected(question)) for question in questions]
    found: list[str] = []
    for text in texts:
        for paragraph in re.split(r"\n\s*\n", text):
            piece = squash(paragraph)
            if not piece or any(piece in answer for answer in answers):
                continue
            rest = KEPT_NAMES.sub(" ", COMMAND_OR_SETTING.sub(" ", paragraph))
            found += [f"{word} (in {paragraph[:80]!r})" for word in ENGLISH_WORD.findall(rest)]
    return found


def has_chinese(text: str) -> bool:
    return re.search(r"[\u3000-\u303f\u4e00-\u9fff\uff00-\uffef]", text) is not None


def pattern(template: str, **values: str) -> re.Pattern[str]:
    """A filled template with any number where ``{seconds}`` or ``{position}`` is."""
    parts = re.split(r"\{(\w+)\}", template)
    regex = "".join(re.escape(part) if i % 2 == 0 else values.get(part, r"\d+")
                    for i, part in enumerate(parts))
    return re.compile(regex)


def failed(reply_texts: ReplyTexts, texts: Texts) -> str:
    """The text of a model that failed mid-answer ([fail]: BackendErrorKind.FAILED)."""
    return reply_texts.translated(texts).error(BackendError(BackendErrorKind.FAILED, "crash"))


def slow_down(reply_texts: ReplyTexts, texts: Texts) -> re.Pattern[str]:
    """The per-user limit's refusal, whatever the seconds to wait."""
    rate_limited = Refusal(RefusalReason.RATE_LIMITED, retry_after=1.0)
    translated = reply_texts.translated(texts)
    assert translated.refusal(rate_limited, private_chat=False) == translated.slow_down.format(
        seconds=2)
    return pattern(translated.slow_down)


def test_the_bypass_check_finds_english_and_lets_names_and_answers_through() -> None:
    said = ["⏳ Still answering", "Chat with RTX 在回答时出错。请检查 RTX_URL。",
            "/language zh-TW — 繁體中文\n/language auto — 跟随", "/ask@rtx_relay_bot 你的问题",
            "[turns=2] You asked: q. ▍\n\n⏹ 已停止。"]
    assert [word.split()[0] for word in english_words(said, ["q"])] == ["Still", "answering"]


# -- a backend that lets "thinking" show ---------------------------------------------------------


class HeldAtStart:
    """The replica's backend, held right after it says an answer started until the bot shows
    that (``shown(question)``), so the "thinking" status is on screen before the first text
    replaces it, however fast the replica streams."""

    def __init__(self, inner: Backend, shown: Callable[[str], bool]) -> None:
        self._inner = inner
        self._shown = shown

    def __getattr__(self, name: str) -> Any:  # models, probe: the replica's own
        return getattr(self._inner, name)

    async def stream_answer(self, question: str, history: Sequence[Exchange], *, session: str,
                            options: AnswerOptions | None = None,
                            read_window: float = 0.0) -> AsyncGenerator[BackendUpdate, None]:
        updates = self._inner.stream_answer(question, history, session=session,
                                            options=options, read_window=read_window)
        async with contextlib.aclosing(updates):
            async for update in updates:
                yield update
                if isinstance(update, Started):
                    # Bounded: if it never shows, the test's own check says so. What the
                    # fake platform shows has no event of its own to await.
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(10):
                            while not self._shown(question):  # noqa: ASYNC110
                                await asyncio.sleep(0.01)


def thinking_in(texts: Iterable[str]) -> bool:
    return any(any(t(ReplyTexts.thinking) in text for t in (EN, CN, TW)) for text in texts)


# -- Telegram -------------------------------------------------------------------------------------


@pytest.fixture
async def telegram_rig(rtx_426: Replica, tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    async with telegram_rigs(rtx_426, tmp_path) as make:
        yield make


def telegram_revisions(message: MessageRecord) -> list[str]:
    return [text for text, _ in message.history] + [message.text]


def telegram_shown(fake: FakeTelegram, chat_id: int, user_id: int) -> list[str]:
    """Every text (each revision) of the bot's messages that answer ``user_id``'s."""
    return [text for message in fake.bot_messages(chat_id)
            if message.reply_to is not None and message.reply_to.sender["id"] == user_id
            for text in telegram_revisions(message)]


def telegram_held(rtx: Replica, fake: Callable[[], FakeTelegram]) -> Callable[..., Backend]:
    def shown(question: str) -> bool:
        return any(thinking_in(telegram_revisions(message))
                   for message in fake().messages.values()
                   if message.from_bot and message.reply_to is not None
                   and message.reply_to.text.endswith(question))

    return lambda http: HeldAtStart(ChatRtxBackend(http, parse_launch_url(rtx.url)), shown)


async def test_telegram_speaks_each_users_language_through_a_whole_conversation(
        telegram_rig: Callable[..., Any], rtx_426: Replica) -> None:
    fakes: list[FakeTelegram] = []
    # No group limit of 20 messages a minute here: the bot's refusals and command replies
    # (reply_text) are not retried after a 429, and this group is busier than that.
    rig: TelegramRig = await telegram_rig(
        user_rate=LIMIT, backend=telegram_held(rtx_426, lambda: fakes[0]),
        fake_options={"group_rate": None, "global_rate": None})
    fake = rig.fake
    fakes.append(fake)
    group = fake.make_group()
    people = {  # Telegram's language_code for English and the Chinese translation packs
        "alice": (fake.make_user("Alice", language_code="en"), EN),
        "chen": (fake.make_user("Chen", language_code="zh-hans"), CN),
        "lin": (fake.make_user("Lin", language_code="zh-hant"), TW),
    }
    texts_ = telegram_bot.TEXTS
    questions: list[str] = []

    def ask(name: str, question: str) -> None:
        questions.append(question)
        fake.inject_group_text(group, people[name][0], question, command="ask")

    def shown(name: str) -> list[str]:
        return telegram_shown(fake, group["id"], people[name][0]["id"])

    async def sees(name: str, want: str | re.Pattern[str], timeout: float = 20) -> None:
        def seen() -> bool:
            return any((want.search(text) if isinstance(want, re.Pattern) else want in text)
                       for text in shown(name))

        try:
            await fake.wait_until(seen, timeout=timeout)
        except TimeoutError:
            pytest.fail(f"{name} was never shown {want!r}; shown: {shown(name)!r}")

    # Alice's answer streams: she sees "asking", then "thinking"; the others wait in line.
    ask("alice", f"alice first {SLOW}")
    await sees("alice", EN(ReplyTexts.thinking))
    await sees("alice", EN(ReplyTexts.starting))
    # One at a time: the bot handles updates concurrently, so two questions sent together may
    # reach the line in either order, and the test stops them in the order it asked them.
    for name in ("chen", "lin"):
        ask(name, f"{name} first {SLOW}")
        texts = people[name][1]
        await sees(name, texts(ReplyTexts.starting))
        await sees(name, pattern(texts(ReplyTexts.waiting)))
    # A second question while the first is on its way: busy, in each one's language.
    for name in ("alice", "chen", "lin"):
        ask(name, f"{name} again")
        await sees(name, texts_.translated(people[name][1]).busy)
    # Each stops their own answer in turn; the next in line then starts ("thinking").
    for name in ("alice", "chen", "lin"):
        user, texts = people[name]
        await sees(name, texts(ReplyTexts.thinking))
        fake.inject_group_text(group, user, "/cancel")
        await sees(name, texts(ReplyTexts.stopped))
    await rig.settled()
    # The model fails mid-answer.
    for name in ("alice", "chen", "lin"):
        ask(name, f"{name} boom [fail]")
    for name in ("alice", "chen", "lin"):
        await sees(name, failed(texts_, people[name][1]))
    await rig.settled()
    # A fourth question is one too many.
    for name in ("alice", "chen", "lin"):
        ask(name, f"{name} once more")
        await sees(name, slow_down(texts_, people[name][1]))
    # The other commands' replies (/help's without quoting the command).
    replies = {"/help": telegram_bot.HELP, "/cancel": telegram_bot.NOTHING_TO_STOP,
               f"/ask@{fake.bot_username}": telegram_bot.USAGE,
               "/reset": telegram_bot.NEW_CONVERSATION}
    for name in ("alice", "chen", "lin"):
        user, texts = people[name]
        for command, reply in replies.items():
            fake.inject_group_text(group, user, command)
            want = texts(reply)
            await fake.wait_until(lambda: any(
                m.text == want for m in fake.bot_messages(group["id"])), timeout=10)  # noqa: B023

    for name in ("chen", "lin"):
        said = shown(name) + [people[name][1](reply) for reply in replies.values()]
        assert english_words(said, questions) == [], name
    assert not [text for text in shown("alice") if has_chinese(text)], "Alice reads English"


async def test_telegram_menus_of_commands_per_language(telegram_rig: Callable[..., Any]) -> None:
    english = await telegram_rig()
    traditional_default = await telegram_rig(default_language=Language.ZH_TW)

    def menu(fake: FakeTelegram, code: str) -> dict[str, str]:
        key = json.dumps([{"type": "default"}, code], sort_keys=True)
        return {c["command"]: c["description"] for c in fake.commands[key]}

    def described(texts: Texts) -> dict[str, str]:
        return {command: texts(description) for command, description in telegram_bot.COMMANDS}

    for rig, default in ((english, EN), (traditional_default, TW)):
        # Telegram keys the lists by two-letter codes: "" for everyone else, "en", "zh".
        calls = rig.fake.calls_to("setMyCommands")
        assert sorted(str(c.params.get("language_code") or "") for c in calls) == ["", "en", "zh"]
        assert menu(rig.fake, "") == described(default)
        assert menu(rig.fake, "en") == described(EN)
        assert menu(rig.fake, "zh") == described(CN)  # "zh" is Simplified (see _set_commands)
        assert "language" in menu(rig.fake, "zh")


async def test_telegram_language_command_is_kept_across_a_restart_and_auto_forgets_it(
        telegram_rig: Callable[..., Any]) -> None:
    rig: TelegramRig = await telegram_rig(allowed_users=frozenset({4242}))
    fake = rig.fake
    mei = fake.make_user("Mei", user_id=4242, language_code="en")

    async def says(text: str, want: str) -> None:
        sent = len(fake.bot_messages(mei["id"]))
        fake.inject_private_text(mei, text)
        await fake.wait_until(lambda: len(fake.bot_messages(mei["id"])) > sent, timeout=10)
        assert fake.bot_messages(mei["id"])[-1].text == want

    name = languages.NAMES
    current = EN(languages._CURRENT[languages.Source.PLATFORM]).format(
        language=EN(name[Language.EN]))
    sent = len(fake.bot_messages(mei["id"]))
    fake.inject_private_text(mei, "/language")
    await fake.wait_until(lambda: len(fake.bot_messages(mei["id"])) > sent, timeout=10)
    shown = fake.bot_messages(mei["id"])[-1].text
    assert shown.startswith(current + "\n\n" + EN(telegram_bot.CHANGE_LANGUAGE))
    assert "/language zh-TW — 繁體中文" in shown and "/language auto" in shown
    await says("/language zh_TW", TW(languages._CHOSEN).format(language=TW(name[Language.ZH_TW])))
    assert await rig.store.language("telegram", "4242") is Language.ZH_TW

    # Someone the bot is not for is told nothing, and nothing is kept for them.
    eve = fake.make_user("Eve", language_code="zh-hans")
    fake.inject_private_text(eve, "/language zh-TW")
    fake.inject_private_text(eve, "let me in")  # handled after the /language above
    await fake.wait_until(lambda: fake.bot_messages(eve["id"]), timeout=10)
    await says("/help", TW(telegram_bot.HELP))  # Mei's choice wins over her app's "en"
    assert [m.text for m in fake.bot_messages(eve["id"])] == [CN(ReplyTexts.not_allowed)]
    assert await rig.store.language("telegram", str(eve["id"])) is None

    # A restart: a new bot, a new store object on the same database file.
    await rig.stopped()
    rig = await telegram_rig(fake=fake, db=rig.store.path, allowed_users=frozenset({4242}))
    await says("/help", TW(telegram_bot.HELP))
    await says("/language", TW(languages._CURRENT[languages.Source.CHOSEN]).format(
        language=TW(name[Language.ZH_TW])) + "\n\n" + telegram_bot._how_to_change(TW))
    await says("/language auto", EN(languages._FOLLOW_APP).format(language=EN(name[Language.EN])))
    assert await rig.store.language("telegram", "4242") is None
    await says("/help", EN(telegram_bot.HELP))
    await says("/language fr", EN(languages._UNKNOWN).format(choice="fr"))


async def test_a_cjk_answer_is_paged_within_telegrams_utf16_budget(
        telegram_rig: Callable[..., Any]) -> None:
    rig: TelegramRig = await telegram_rig(drafts_in_private=False)
    user = rig.fake.make_user("Chen", language_code="zh-hans")
    # Characters outside the BMP (CJK Extension B) count two UTF-16 units: 2,000 of them are
    # 4,000 units, and the answer (the question plus filler) is past 4,096 units while only
    # ~2,300 characters long: a budget in characters would send it as one (refused) message.
    question = "".join(chr(0x20000 + i) for i in range(2000))
    rig.fake.inject_private_text(user, question)
    want = expected(question)
    assert text_length(want, LengthUnit.UTF16) > 4096 > len(want)
    await rig.fake.wait_until(lambda: want.split()[-1] in rig.fake.chat_text(user["id"]),
                              timeout=30)
    await rig.settled()
    pages = rig.fake.bot_messages(user["id"])
    assert len(pages) == 2
    assert all(text_length(page.text, LengthUnit.UTF16) <= 4096 for page in pages)
    assert squash("".join(page.text for page in pages)) == squash(want)
    assert all(c.ok for c in rig.fake.calls_to("sendMessage"))


# -- Discord --------------------------------------------------------------------------------------


@pytest.fixture
async def discord_rig(rtx_426: Replica, tmp_path: Path,
                      monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Callable[..., Any]]:
    async with discord_rigs(rtx_426, tmp_path, monkeypatch) as make:
        yield make


def discord_revisions(message: StoredMessage) -> list[str]:
    """Every text of a message: each revision's content and button labels."""
    texts: list[str] = []
    for revision in [*message.revisions, message.payload]:
        if revision.get("content"):
            texts.append(str(revision["content"]))
        texts += labels_of(revision)
    return texts


def labels_of(payload: dict[str, Any]) -> list[str]:
    return [str(c["label"]) for row in payload.get("components") or []
            for c in row.get("components", []) if c.get("label")]


def discord_shown(rig: DiscordRig, interactions: Iterable[InteractionRecord]) -> list[str]:
    """Everything the bot said in answer to these interactions (responses and follow-ups)."""
    said: list[str] = []
    for interaction in interactions:
        for message_id in [interaction.original_message_id, *interaction.followup_ids]:
            if message_id is not None:
                said += discord_revisions(rig.fake.message(message_id))
    return said


def question_of(interaction: InteractionRecord) -> str:
    options = interaction.payload["data"].get("options") or [{}]
    return str(options[0].get("value", ""))


def discord_held(rtx: Replica, rig: Callable[[], DiscordRig]) -> Callable[..., Backend]:
    def shown(question: str) -> bool:
        asked = [i for i in rig().fake.interactions.values() if question_of(i) == question]
        return thinking_in(discord_shown(rig(), asked))

    return lambda http: HeldAtStart(ChatRtxBackend(http, parse_launch_url(rtx.url)), shown)


async def test_discord_speaks_each_users_language_through_a_whole_conversation(
        discord_rig: Callable[..., Any], rtx_426: Replica) -> None:
    rigs: list[DiscordRig] = []
    rig: DiscordRig = await discord_rig(user_rate=LIMIT,
                                        backend=discord_held(rtx_426, lambda: rigs[0]))
    rigs.append(rig)
    fake = rig.fake
    people = {  # Discord's locales: what each user's client is set to
        "alice": (fake.users["alice"], "en-US", EN),
        "chen": (fake.add_member("chen"), "zh-CN", CN),
        "lin": (fake.add_member("lin"), "zh-TW", TW),
    }
    texts_ = discord_bot.TEXTS
    sent: dict[str, list[InteractionRecord]] = {name: [] for name in people}
    questions: list[str] = []

    async def command(name: str, command_name: str,
                      options: dict[str, Any] | None = None) -> InteractionRecord:
        user, locale, _ = people[name]
        interaction = await fake.dispatch_slash_command(command_name, options, user=user,
                                                        locale=locale)
        sent[name].append(interaction)
        await interaction.wait_acked(timeout=3)
        return interaction

    async def ask(name: str, question: str) -> InteractionRecord:
        questions.append(question)
        return await command(name, "ask", {"question": question})

    async def click(name: str, message: StoredMessage, custom_id: str) -> InteractionRecord:
        user, locale, _ = people[name]
        interaction = await fake.dispatch_component_click(message, custom_id, user, locale=locale)
        sent[name].append(interaction)
        await interaction.wait_acked(timeout=3)
        return interaction

    async def sees(interaction: InteractionRecord, want: str | re.Pattern[str]) -> None:
        def seen() -> bool:
            return any((want.search(text) if isinstance(want, re.Pattern) else want in text)
                       for text in discord_shown(rig, [interaction]))

        try:
            await rig.wait(seen)
        except TimeoutError:
            pytest.fail(f"never shown {want!r}; shown: {discord_shown(rig, [interaction])!r}")

    first = {"alice": await ask("alice", f"alice first {SLOW}")}
    await sees(first["alice"], EN(ReplyTexts.thinking))
    for name in ("chen", "lin"):
        first[name] = await ask(name, f"{name} first {SLOW}")
        await sees(first[name], pattern(people[name][2](ReplyTexts.waiting)))
    for name, interaction in first.items():
        texts = people[name][2]
        await sees(interaction, texts(discord_bot.BUTTON_LABELS["stop"]))  # under the answer
        busy = await ask(name, f"{name} again")
        assert busy.response_type == 4  # told at once, privately
        await sees(busy, texts_.translated(texts).busy)
    # Only the asker may stop an answer: Chen is told so in Chinese.
    alice_id = people["alice"][0]["id"]
    original = fake.message(first["alice"].original_message_id or "")
    denied = await click("chen", original, f"rtxrelay:stop:{alice_id}")
    await sees(denied, CN(discord_bot.NOT_YOURS["stop"]))
    for name, interaction in first.items():
        user, _, texts = people[name]
        await sees(interaction, texts(ReplyTexts.thinking))
        answer = fake.message(interaction.original_message_id or "")
        stop = await click(name, answer, f"rtxrelay:stop:{user['id']}")
        assert stop.response_type == 6
        await sees(interaction, texts(ReplyTexts.stopped))
    await rig.settled()
    for name, interaction in first.items():  # finished: Retry, labelled for the asker
        answer = fake.message(interaction.original_message_id or "")
        assert labels_of(answer.payload) == [people[name][2](discord_bot.BUTTON_LABELS["retry"])]
    # The model fails mid-answer.
    broken = {name: await ask(name, f"{name} boom [fail]") for name in people}
    for name, interaction in broken.items():
        await sees(interaction, failed(texts_, people[name][2]))
    await rig.settled()
    for name in people:
        texts = people[name][2]
        refused = await ask(name, f"{name} once more")
        await sees(refused, slow_down(texts_, texts))
        help_ = await command(name, "help")
        await sees(help_, texts(discord_bot.HELP))
        assert fake.message(help_.original_message_id or "").payload["flags"] & FLAG_EPHEMERAL
        await sees(await command(name, "reset"), texts(discord_bot.NEW_CONVERSATION))

    for name in ("chen", "lin"):
        assert english_words(discord_shown(rig, sent[name]), questions) == [], name
    assert not [t for t in discord_shown(rig, sent["alice"]) if has_chinese(t)], "Alice: English"


async def test_discord_syncs_command_descriptions_and_option_names_per_locale(
        discord_rig: Callable[..., Any]) -> None:
    rig: DiscordRig = await discord_rig()
    commands = {name: command for (guild, name), command in rig.fake.commands.items()}
    assert set(commands) == {"ask", "reset", "help", "language"}
    for name, command in commands.items():
        assert not command.get("name_localizations"), "command names are the same everywhere"
        described = command["description_localizations"]
        assert set(described) == {"zh-CN", "zh-TW"}, name  # English is the default
        assert described["zh-CN"] == CN(command["description"])
        assert described["zh-TW"] == TW(command["description"])
        assert has_chinese(described["zh-CN"]) and has_chinese(described["zh-TW"])
    (question,) = commands["ask"]["options"]
    assert question["name"] == "question"  # what interactions carry, whatever the locale
    assert question["name_localizations"] == {"zh-CN": "问题", "zh-TW": "問題"}
    assert question["description_localizations"]["zh-TW"] == TW("What do you want to know?")
    (language,) = commands["language"]["options"]
    assert language["name_localizations"] == {"zh-CN": "语言", "zh-TW": "語言"}
    choices = {choice["value"]: choice for choice in language["choices"]}
    # Each language under its own name, in every locale; "auto" in the user's language.
    assert {value: choices[value]["name"] for value in ("en", "zh-CN", "zh-TW")} == {
        "en": "English", "zh-CN": "简体中文", "zh-TW": "繁體中文"}
    assert not any(choices[value].get("name_localizations") for value in ("en", "zh-CN", "zh-TW"))
    assert set(choices["auto"]["name_localizations"]) == {"zh-CN", "zh-TW"}


async def test_discord_messages_follow_the_server_language_then_the_default(
        discord_rig: Callable[..., Any]) -> None:
    # A Traditional Chinese server; DEFAULT_LANGUAGE Simplified (for DMs, which carry no
    # language); Bob chose English with /language.
    rig: DiscordRig = await discord_rig(fake_options={"guild_locale": "zh-TW"},
                                        default_language=Language.ZH_CN)
    fake = rig.fake
    questions = ["boom [fail]", "bob boom [fail]", "dm boom [fail]"]
    choice = await fake.dispatch_slash_command("language", {"language": "en"}, user="bob",
                                               locale="zh-TW")
    await choice.wait_acked(timeout=3)
    said = fake.message(choice.original_message_id or "").content
    assert said == EN(languages._CHOSEN).format(language=EN(languages.NAMES[Language.EN]))

    await fake.dispatch_mention(questions[0], channel="general")  # Alice: no choice
    await rig.wait(lambda: failed(discord_bot.TEXTS, TW) in rig.text_in("general"))
    await rig.settled()
    (answer,) = rig.answers_in("general")
    shown = discord_revisions(answer)
    assert TW(ReplyTexts.starting) in shown
    assert TW(discord_bot.BUTTON_LABELS["stop"]) in shown
    assert labels_of(answer.payload) == [TW(discord_bot.BUTTON_LABELS["retry"])]
    await fake.dispatch_mention("", channel="general")  # a mention without a question
    await rig.wait(lambda: TW(discord_bot.MENTION_HINT) in rig.text_in("general"))

    await fake.dispatch_mention(questions[1], user="bob", channel="rtx-help")
    await rig.wait(lambda: failed(discord_bot.TEXTS, EN) in rig.text_in("rtx-help"))
    dm = await fake.dispatch_dm(questions[2], user="alice")
    await rig.wait(lambda: failed(discord_bot.TEXTS, CN) in rig.text_in(dm.channel_id))
    await rig.settled()
    chinese = [t for m in rig.answers_in("general") + rig.answers_in(dm.channel_id)
               for t in discord_revisions(m)]
    assert english_words(chinese, questions) == []
    assert not [t for m in rig.answers_in("rtx-help") for t in discord_revisions(m)
                if has_chinese(t)]
    # Command descriptions: Simplified by default, English and Traditional localised.
    ask = next(c for (_, name), c in fake.commands.items() if name == "ask")
    assert ask["description"] == CN("Ask Chat with RTX a question")
    assert ask["description_localizations"] == {
        "en-US": "Ask Chat with RTX a question", "en-GB": "Ask Chat with RTX a question",
        "zh-TW": TW("Ask Chat with RTX a question")}


async def test_discord_language_command_is_kept_across_a_restart_and_auto_forgets_it(
        discord_rig: Callable[..., Any]) -> None:
    rig: DiscordRig = await discord_rig()

    async def says(rig: DiscordRig, command: str, options: dict[str, Any] | None,
                   want: str) -> None:
        interaction = await rig.fake.dispatch_slash_command(command, options, locale="zh-CN")
        await interaction.wait_acked(timeout=3)
        message = rig.fake.message(interaction.original_message_id or "")
        assert message.payload["flags"] & FLAG_EPHEMERAL
        assert message.content == want

    name = languages.NAMES
    await says(rig, "language", None, CN(languages._CURRENT[languages.Source.PLATFORM]).format(
        language=CN(name[Language.ZH_CN])) + "\n\n" + CN(discord_bot.CHANGE_LANGUAGE))
    await says(rig, "language", {"language": "zh-TW"},
               TW(languages._CHOSEN).format(language=TW(name[Language.ZH_TW])))
    await says(rig, "help", None, TW(discord_bot.HELP))  # the choice wins over the locale
    alice = rig.fake.users["alice"]["id"]
    assert await rig.store.language("discord", alice) is Language.ZH_TW

    # A restart: a new bot (and server), a new store object on the same database file.
    rig.stop.set()
    async with asyncio.timeout(20):
        await rig.task
    again: DiscordRig = await discord_rig(db=rig.store.path)
    assert again.fake.users["alice"]["id"] == alice  # the same world, the same ids
    await says(again, "help", None, TW(discord_bot.HELP))
    await says(again, "language", {"language": "auto"}, CN(languages._FOLLOW_APP).format(
        language=CN(name[Language.ZH_CN])))
    assert await again.store.language("discord", alice) is None
    await says(again, "help", None, CN(discord_bot.HELP))

