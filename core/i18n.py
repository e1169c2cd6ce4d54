"""The user's language: one catalogue of every text rtxrelay says in a chat.

Texts are gettext message ids, the English text itself, marked where they are written with
``N_`` (so the catalogue test finds them all) and translated when a reply knows its reader:
``catalogue.texts(language)("⏳ #{position} in line…").format(position=2)``. The translations
are ``core/locales/<language>/LC_MESSAGES/rtxrelay.po``, compiled to ``.mo`` when the package is
built (setup.py) and read with the standard library's ``gettext``. English is the source: it
needs no file, and any id a catalogue lacks falls back to it.

Operator-facing texts (logs, ``doctor``, CLI errors) are not in the catalogue: they stay
English.
"""

from __future__ import annotations

import enum
import gettext
import logging
from importlib import resources

log = logging.getLogger(__name__)

DOMAIN = "rtxrelay"


class Language(enum.Enum):
    """The languages rtxrelay speaks: Chat with RTX's own (its UI ships these three)."""

    EN = "en"
    ZH_CN = "zh_CN"  # Simplified Chinese
    ZH_TW = "zh_TW"  # Traditional Chinese

    @property
    def tag(self) -> str:
        """The BCP 47 tag users and platforms write: ``zh-CN``."""
        return self.value.replace("_", "-")


# Chinese written in Traditional characters: Taiwan, Hong Kong, Macau, or said outright.
_TRADITIONAL = frozenset({"tw", "hk", "mo", "hant"})


def negotiate(tag: str | None) -> Language | None:
    """The language a platform's tag asks for (Telegram's ``language_code``: ``zh-hans``,
    ``zh-tw``; Discord's locale: ``zh-CN``, ``en-US``; a user's ``/language zh_TW``), or None
    when it names none rtxrelay speaks. A bare ``zh`` is Simplified, as most of its users
    write it."""
    if not tag:
        return None
    parts = tag.strip().replace("_", "-").lower().split("-")
    if parts[0] == "en":
        return Language.EN
    if parts[0] == "zh":
        return Language.ZH_TW if _TRADITIONAL & set(parts[1:]) else Language.ZH_CN
    return None


def N_(message: str) -> str:  # gettext's name for "mark now, translate later"
    """Mark ``message`` as a catalogue id; it is translated where its reader is known."""
    return message


class Texts:
    """The catalogue in one language: call it with an id, get the text to format."""

    def __init__(self, language: Language, translations: gettext.NullTranslations) -> None:
        self.language = language
        self._translations = translations

    def __call__(self, message: str) -> str:
        return self._translations.gettext(message)

    def number(self, value: int) -> str:
        """A count as the language writes it (all three group thousands with commas)."""
        return f"{value:,}"


class Catalogue:
    """Every language's texts, loaded once."""

    def __init__(self, translations: dict[Language, gettext.NullTranslations]) -> None:
        self._texts = {language: Texts(language, translations.get(
            language, gettext.NullTranslations())) for language in Language}

    @classmethod
    def load(cls) -> Catalogue:
        """The compiled catalogues installed with rtxrelay. A missing one (a source tree
        never built) leaves that language in English, with a warning."""
        folder = resources.files("rtxrelay.core") / "locales"
        translations: dict[Language, gettext.NullTranslations] = {}
        for language in Language:
            if language is Language.EN:
                continue
            try:
                with resources.as_file(folder) as path:
                    translations[language] = gettext.translation(
                        DOMAIN, localedir=str(path), languages=[language.value])
            except OSError:
                log.warning("no compiled %s catalogue (rtxrelay.mo): install rtxrelay again "
                            "(pip install -e .) to build it; %s texts will be English",
                            language.value, language.tag)
        return cls(translations)

    def texts(self, language: Language) -> Texts:
        return self._texts[language]


ENGLISH = Texts(Language.EN, gettext.NullTranslations())  # the source texts, as they are
