"""Which language each chat user reads, and the ``/language`` command both bots offer.

A reply is in the user's own ``/language`` choice (kept in the store, per platform and user),
else in the language their platform reports (Telegram's ``language_code``, Discord's
``locale``, or a server's ``preferred_locale`` for @mentions), else in ``DEFAULT_LANGUAGE``.
The bots get one ``Languages`` (one catalogue per process) from the application.
"""

from __future__ import annotations

import enum
import logging
from collections import OrderedDict
from collections.abc import Callable

from rtxrelay.core.errors import StorageError
from rtxrelay.core.i18n import N_, Catalogue, Language, Texts, negotiate
from rtxrelay.core.store import LanguageChoices

log = logging.getLogger(__name__)

# Each language as its own speakers write it: how a user finds theirs in a list.
AUTONYMS: dict[Language, str] = {
    Language.EN: "English",
    Language.ZH_CN: "简体中文",
    Language.ZH_TW: "繁體中文",
}
# Each language named in the reader's language, inside a sentence.
NAMES: dict[Language, str] = {
    Language.EN: N_("English"),
    Language.ZH_CN: N_("Simplified Chinese"),
    Language.ZH_TW: N_("Traditional Chinese"),
}
# What both bots say to the same commands.
NEW_CONVERSATION = N_("🆕 New conversation started.")
NOTHING_TO_STOP = N_("Nothing to stop.")
AUTOMATIC = frozenset({"auto", "default"})  # /language auto: forget the choice
REMEMBERED = 10_000  # users whose choice (or lack of one) is kept in memory


class Source(enum.Enum):
    """Where a user's language came from."""

    CHOSEN = enum.auto()  # their /language choice
    PLATFORM = enum.auto()  # their app's (or their server's) language
    DEFAULT = enum.auto()  # DEFAULT_LANGUAGE


_CURRENT: dict[Source, str] = {
    Source.CHOSEN: N_("🌐 I answer you in {language}, as you chose."),
    Source.PLATFORM: N_("🌐 I answer you in {language}, as your app's language is set."),
    Source.DEFAULT: N_("🌐 I answer you in {language}, this bot's default."),
}
_CHOSEN = N_("🌐 Done: from now on I answer you in {language}.")
_FOLLOW_APP = N_("🌐 Done: I follow your app's language again ({language}).")
_FOLLOW_DEFAULT = N_("🌐 Done: I answer you in this bot's default language again ({language}).")
_UNKNOWN = N_("🌐 “{choice}” is not a language I speak. Choose en, zh-CN or zh-TW, or auto "
              "to follow your app's language.")


class MemoryChoices:
    """Users' ``/language`` choices kept in memory only (a restart forgets them)."""

    def __init__(self) -> None:
        self.chosen: dict[tuple[str, str], Language] = {}

    async def language(self, platform: str, user: str) -> Language | None:
        return self.chosen.get((platform, user))

    async def set_language(self, platform: str, user: str, language: Language | None) -> None:
        if language is None:
            self.chosen.pop((platform, user), None)
        else:
            self.chosen[(platform, user)] = language


class Languages:
    """The catalogue, the default language and the users' choices, for every bot of a
    process. Choices are read from the store once per user and kept (a bounded number);
    a choice made here is written through, so a restart finds it."""

    def __init__(self, catalogue: Catalogue, choices: LanguageChoices, *,
                 default: Language = Language.EN, remembered: int = REMEMBERED) -> None:
        self.catalogue = catalogue
        self.default = default
        self._choices = choices
        self._remembered = remembered
        self._known: OrderedDict[tuple[str, str], Language | None] = OrderedDict()

    @classmethod
    def english_only(cls) -> Languages:
        """English for everyone, choices in memory: for a bot built without the
        application's catalogue and store (the benchmarks build them so)."""
        return cls(Catalogue({}), MemoryChoices())

    @property
    def default_texts(self) -> Texts:
        """For a reader not known (a crash's stale message) or a platform default."""
        return self.catalogue.texts(self.default)

    def texts_in(self, language: Language) -> Texts:
        return self.catalogue.texts(language)

    async def chosen(self, platform: str, user: str) -> Language | None:
        """The user's own ``/language`` choice, or None."""
        key = (platform, user)
        if key in self._known:
            self._known.move_to_end(key)
            return self._known[key]
        try:
            language = await self._choices.language(platform, user)
        except StorageError as exc:  # the answer itself reports a broken store, if it is one
            log.warning("a user's language choice could not be read: %s", exc.message)
            return None
        self._remember(key, language)
        return language

    async def resolve(self, platform: str, user: str,
                      tag: str | None) -> tuple[Language, Source]:
        """The user's language and where it came from. ``tag``: what the platform says
        (``zh-hans``, ``zh-TW``, ``en-US``; None when it says nothing)."""
        chosen = await self.chosen(platform, user)
        if chosen is not None:
            return chosen, Source.CHOSEN
        reported = negotiate(tag)
        if reported is not None:
            return reported, Source.PLATFORM
        return self.default, Source.DEFAULT

    async def texts(self, platform: str, user: str, tag: str | None) -> Texts:
        """The catalogue in the user's language (see ``resolve``)."""
        language, _ = await self.resolve(platform, user, tag)
        return self.catalogue.texts(language)

    async def choose(self, platform: str, user: str, language: Language | None) -> None:
        """Remember the user's choice for all their chats on ``platform`` (None: forget it)."""
        await self._choices.set_language(platform, user, language)
        self._remember((platform, user), language)

    async def command(self, platform: str, user: str, tag: str | None, argument: str, *,
                      how_to_change: Callable[[Texts], str]) -> str:
        """``/language [argument]``: the reply, in the language that holds after it. Without
        an argument it tells the current language and (``how_to_change``, the platform's
        words in the reader's language) how to change it."""
        argument = argument.strip()
        if not argument:
            language, source = await self.resolve(platform, user, tag)
            texts = self.catalogue.texts(language)
            current = texts(_CURRENT[source]).format(language=texts(NAMES[language]))
            return f"{current}\n\n{how_to_change(texts)}"
        if argument.lower() in AUTOMATIC:
            await self.choose(platform, user, None)
            language, source = await self.resolve(platform, user, tag)
            texts = self.catalogue.texts(language)
            done = _FOLLOW_APP if source is Source.PLATFORM else _FOLLOW_DEFAULT
            return texts(done).format(language=texts(NAMES[language]))
        choice = negotiate(argument)
        if choice is None:
            texts = await self.texts(platform, user, tag)
            return texts(_UNKNOWN).format(choice=argument[:32])
        await self.choose(platform, user, choice)
        texts = self.catalogue.texts(choice)
        return texts(_CHOSEN).format(language=texts(NAMES[choice]))

    def _remember(self, key: tuple[str, str], language: Language | None) -> None:
        self._known[key] = language
        self._known.move_to_end(key)
        while len(self._known) > self._remembered:
            self._known.popitem(last=False)
