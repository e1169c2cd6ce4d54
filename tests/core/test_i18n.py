"""The catalogue of chat texts: complete, without leftovers, compiled, and reached by the tags
the platforms send (docs/translations.md)."""

from __future__ import annotations

import string
from pathlib import Path

import pytest
from babel.messages.catalog import Catalog
from babel.messages.extract import extract_from_dir
from babel.messages.pofile import read_po

from rtxrelay.core.i18n import ENGLISH, Catalogue, Language, negotiate

ROOT = Path(__file__).resolve().parents[2]
LOCALES = ROOT / "core" / "locales"
LAYERS = ("core", "backends", "bots", "app")  # where chat texts are written
TRANSLATED = [language for language in Language if language is not Language.EN]
RECOMPILE = "run `pip install -e .` (it compiles the .po files into the .mo files rtxrelay reads)"


def code_ids() -> set[str]:
    """Every id marked ``N_("…")`` in the package's code."""
    found: set[str] = set()
    for layer in LAYERS:
        for _, _, message, _, _ in extract_from_dir(
                ROOT / layer, method_map=[("**.py", "python")], keywords={"N_": None}):
            assert isinstance(message, str), f"N_ takes one text, not {message!r}"
            found.add(message)
    return found


def read(path: Path) -> Catalog:
    with path.open("rb") as source:
        return read_po(source)


def po(language: Language) -> Catalog:
    return read(LOCALES / language.value / "LC_MESSAGES" / "rtxrelay.po")


def placeholders(text: str) -> list[str]:
    return sorted(name for _, name, _, _ in string.Formatter().parse(text) if name is not None)


@pytest.fixture(scope="module")
def ids() -> set[str]:
    found = code_ids()
    assert len(found) > 50, "the extraction found the catalogue's ids"
    return found


def test_the_template_lists_exactly_the_ids_in_the_code(ids: set[str]) -> None:
    template = {message.id for message in read(LOCALES / "rtxrelay.pot") if message.id}
    assert ids - template == set(), "extract again (docs/translations.md, step 2)"
    assert template - ids == set(), "extract again (docs/translations.md, step 2)"


@pytest.mark.parametrize("language", TRANSLATED, ids=lambda language: language.tag)
def test_every_id_is_translated_once_and_nothing_else_is(ids: set[str],
                                                         language: Language) -> None:
    catalog = po(language)
    entries = {message.id: message for message in catalog if message.id}
    assert ids - set(entries) == set(), f"missing in {language.value}: run pybabel update"
    assert set(entries) - ids == set(), f"unused in {language.value}: no code says these"
    assert not catalog.obsolete, f"obsolete (#~) entries left in {language.value}"
    for msgid, message in entries.items():
        assert isinstance(msgid, str) and isinstance(message.string, str), msgid
        assert message.string.strip(), f"untranslated in {language.value}: {msgid!r}"
        assert not message.fuzzy, f"fuzzy in {language.value}: {msgid!r}"
        assert placeholders(message.string) == placeholders(msgid), (
            f"{language.value} has other placeholders than the id: {msgid!r}")


@pytest.mark.parametrize("language", TRANSLATED, ids=lambda language: language.tag)
def test_the_compiled_catalogue_says_what_the_po_file_says(language: Language) -> None:
    texts = Catalogue.load().texts(language)
    assert texts.language is language
    for message in po(language):
        if message.id and isinstance(message.id, str):
            assert texts(message.id) == message.string, (
                f"the compiled {language.value} catalogue is older than its .po file: "
                f"{RECOMPILE}")


def test_english_is_the_source_itself(ids: set[str]) -> None:
    english = Catalogue.load().texts(Language.EN)
    for msgid in ids:
        assert english(msgid) == ENGLISH(msgid) == msgid


@pytest.mark.parametrize(("tag", "language"), [
    # Telegram's language_code: an IETF tag, lowercase; translation packs say the script.
    ("zh-hans", Language.ZH_CN), ("zh-hant", Language.ZH_TW), ("zh", Language.ZH_CN),
    ("en", Language.EN),
    # Discord's locales.
    ("zh-CN", Language.ZH_CN), ("zh-TW", Language.ZH_TW), ("en-US", Language.EN),
    ("en-GB", Language.EN), ("fr", None),
    # What users write after /language, and DEFAULT_LANGUAGE.
    ("zh_TW", Language.ZH_TW), ("zh-HK", Language.ZH_TW), (" EN ", Language.EN),
    ("", None), (None, None),
])
def test_platform_tags_reach_the_right_language(tag: str | None,
                                                language: Language | None) -> None:
    assert negotiate(tag) is language
