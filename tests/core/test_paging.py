"""Tests for rtxrelay.core.paging: size limits, fence repair, cut preferences, and the
streaming-stability guarantee the engine relies on."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rtxrelay.core.paging import (
    MIN_LIMIT,
    LengthUnit,
    Pager,
    close_open_fence,
    fenced_lines,
    split_pages,
    text_length,
)

U16, CP = LengthUnit.UTF16, LengthUnit.CODEPOINT
_FENCE = re.compile(r"^[ \t]*(`{3,}|~{3,})(\S*)[ \t]*$")


def fence_states(page: str) -> tuple[list[str], bool]:
    """(languages of the blocks opened on this page, whether a block is left open)."""
    langs: list[str] = []
    open_marker: str | None = None
    for line in page.split("\n"):
        m = _FENCE.match(line)
        if not m:
            continue
        if open_marker is None:
            open_marker = m.group(1)
            langs.append(m.group(2))
        elif m.group(1)[0] == open_marker[0] and not m.group(2):
            open_marker = None
    return langs, open_marker is not None


def without_fence_lines(text: str) -> str:
    kept = [ln for ln in text.split("\n") if not _FENCE.match(ln)]
    return re.sub(r"\s+", "", "".join(kept))


def long_answer() -> str:
    parts = []
    for i in range(12):
        parts.append(
            f"## Step {i}\n\nThis paragraph explains step {i} in some detail, with **bold** text, "
            f"`inline_code()` and a [link](https://example.com/{i}). " * 3
        )
        body = "\n".join(
            f"    {'    ' * (j % 3)}value_{j} = compute({j}, '<&>')  # 😀 comment {j}"
            for j in range(14)
        )
        parts.append(f"```python\ndef step_{i}():\n{body}\n    return None\n```")
    return "\n\n".join(parts)


# --- basics -------------------------------------------------------------------------------


def test_text_length_units() -> None:
    assert text_length("abc", U16) == text_length("abc", CP) == 3
    assert text_length("😀", U16) == 2 and text_length("😀", CP) == 1
    assert text_length("中文é", U16) == 3
    assert text_length("\ud800", U16) == 1  # a lone surrogate never raises


@pytest.mark.parametrize("text", ["", " ", "\n\n \t\n"])
def test_empty_and_whitespace_give_no_pages(text: str) -> None:
    assert split_pages(text, 100, U16) == []


def test_short_text_is_one_trimmed_page() -> None:
    assert split_pages("\n\n  hello\n\n", 100, U16) == ["hello"]


def test_limit_below_minimum_is_rejected() -> None:
    with pytest.raises(ValueError):
        split_pages("x", MIN_LIMIT - 1, U16)
    with pytest.raises(ValueError):
        Pager(MIN_LIMIT - 1, U16)


# --- the 10,000-character answer ----------------------------------------------------------


@pytest.mark.parametrize(("limit", "unit"), [(4096, U16), (2000, CP), (700, U16), (300, CP)])
def test_long_answer_with_python_fences(limit: int, unit: LengthUnit) -> None:
    text = long_answer()
    assert len(text) > 10_000
    pages = split_pages(text, limit, unit)
    assert len(pages) >= (2 if limit >= 2000 else 10)
    carried = False
    for page in pages:
        assert 0 < text_length(page, unit) <= limit
        assert page == page.strip()
        langs, left_open = fence_states(page)
        assert not left_open, page  # every page closes what it opens
        assert all(lang == "python" for lang in langs)
        if carried:  # a page continuing a block reopens it with its language
            assert page.startswith("```python\n")
        carried = page.endswith("\n```") and not page.rstrip("`").endswith("return None\n")
    assert without_fence_lines("\n".join(pages)) == without_fence_lines(text)


def test_code_indentation_is_kept_on_the_continuation_page() -> None:
    code = "\n".join(f"        deep_{i} = {i}" for i in range(30))
    pages = split_pages(f"```py\n{code}\n```", 200, CP)
    assert len(pages) > 2
    for page in pages[1:]:
        assert page.startswith("```py\n        deep_")
    for page in pages[:-1]:
        assert page.endswith("\n```")


def test_closing_fence_right_after_a_cut_is_not_repeated() -> None:
    # The cut lands just before the original closer: the page closes the block itself, and
    # the next page must not start with an empty reopened block.
    code = "x = 1\n" * 10
    text = f"```py\n{code}```\n\nAfter the block."
    limit = len("```py\n") + len(code) - 1 + len("\n```")
    pages = split_pages(text, limit, CP)
    assert pages[0].endswith("x = 1\n```")
    assert pages[1] == "After the block."


def test_tilde_fence_and_longer_marker() -> None:
    text = "~~~~bash\n" + "echo hi\n" * 40 + "~~~~\nend"
    pages = split_pages(text, 100, CP)
    for page in pages[1:-1]:
        assert page.startswith("~~~~bash\n") and page.endswith("\n~~~~")


# --- where cuts go ------------------------------------------------------------------------


def test_prefers_paragraph_break() -> None:
    a = "First paragraph sentence. " * 3
    b = "Second paragraph line one.\nSecond paragraph line two. " * 2
    pages = split_pages(f"{a.strip()}\n\n{b.strip()}", len(a) + 40, CP)
    assert pages[0] == a.strip()


def test_prefers_line_break_over_space() -> None:
    text = "alpha beta gamma\ndelta epsilon zeta eta theta"
    assert split_pages(text, 30, CP)[0] == "alpha beta gamma"


def test_short_paragraph_is_not_taken_when_a_line_break_fills_the_page() -> None:
    text = "Tiny.\n\n" + "\n".join(f"line number {i:02d} here" for i in range(20))
    first = split_pages(text, 200, CP)[0]
    assert first.startswith("Tiny.\n\nline number 00")
    assert len(first) > 100  # MIN_FILL: not just "Tiny."


def test_space_outside_inline_markup_is_preferred() -> None:
    # The closing "**" lies inside the page window (plus one char), so the span is known
    # and the cut goes before it, not at the space inside it.
    text = "aaaa bbbb **cc dd** eeee ffff"
    assert split_pages(text, len("aaaa bbbb **cc dd*"), CP)[0] == "aaaa bbbb"
    text = "aaaa bbbb `cc dd` eeee ffff"
    assert split_pages(text, len("aaaa bbbb `cc dd"), CP)[0] == "aaaa bbbb"


def test_inline_markup_closing_beyond_the_window_is_not_protected() -> None:
    # Deliberate: protecting it would need text past the window, and then a page could
    # change as more text streams in. Splitting inside is safe (the renderer leaves an
    # unbalanced "**" literal); it only loses the bold on that one phrase.
    text = "some words here then **a bold phrase** and more words after it all"
    assert split_pages(text, 36, CP)[0] == "some words here then **a bold"


def test_inline_code_is_not_split_when_avoidable() -> None:
    text = "run the command `pip install --upgrade rtxrelay` then restart it"
    for page in split_pages(text, 50, CP):
        assert page.count("`") % 2 == 0, page


def test_single_long_word_is_hard_cut() -> None:
    word = "x" * 5000
    pages = split_pages(word, 4096, U16)
    assert pages == [word[:4096], word[4096:]]
    pages = split_pages(word, 1000, CP)
    assert len(pages) == 5 and "".join(pages) == word


def test_astral_chars_at_the_limit_in_utf16() -> None:
    text = "😀" * 100
    pages = split_pages(text, 17, U16)
    assert all(text_length(p, U16) <= 17 for p in pages)
    assert all(len(p) == 8 for p in pages[:-1])  # 8 emoji = 16 units; a 9th would be 18
    assert "".join(pages) == text
    assert split_pages(text, 17, CP)[0] == "😀" * 17
    mixed = "a😀" * 50
    pages = split_pages(mixed, 16, U16)
    assert all(text_length(p, U16) <= 16 for p in pages) and "".join(pages) == mixed


def test_zwj_sequences_and_combining_marks_are_not_split() -> None:
    family = "👨\u200d👩\u200d👧"  # one grapheme, 5 code points
    text = family * 20
    for page in split_pages(text, 23, CP):
        assert page.startswith("👨") and page.endswith("👧"), page
    accented = "e\u0301" * 40
    for page in split_pages(accented, 17, CP):
        assert page.startswith("e") and page.endswith("\u0301")


# --- streaming ----------------------------------------------------------------------------


def test_pager_matches_split_pages_and_never_changes_final_pages() -> None:
    text = long_answer()
    pager = Pager(700, U16)
    final: list[str] = []
    for end in range(0, len(text) + 1, 37):
        pages = pager.update(text[:end])
        assert pages == split_pages(text[:end], 700, U16)
        assert pages[: len(final)] == final
        final = pages[: pager.final_count]
        assert pager.final_count == max(len(pages) - 1, 0)
    assert pager.update(text) == split_pages(text, 700, U16)


def test_pager_restarts_when_text_is_rewritten() -> None:
    pager = Pager(50, CP)
    pager.update("word " * 40)
    assert pager.update("other " * 3) == ["other other other"]
    assert pager.final_count == 0


# fmt: off
_PIECES = [
    "word", "another", "a", " ", " ", " ", "\n", "\n", "\n\n", "\t", "    ", "```python\n",
    "```\n", "```", "~~~\n", "`", "**", "**bold words**", "`code span`", "[link](https://e.x)",
    "😀", "👨\u200d👩\u200d👧", "中文字符", "e\u0301", "-", "> ", "# ",
    "averyveryverylongwordwithoutanyspacesatall",
]
# fmt: on
markdownish = st.lists(st.one_of(st.sampled_from(_PIECES), st.text(max_size=4)), max_size=80).map(
    "".join
)
units = st.sampled_from([U16, CP])
limits = st.integers(MIN_LIMIT, 90)


@settings(max_examples=250, deadline=None)
@given(markdownish, limits, units)
def test_pages_fit_are_trimmed_and_keep_the_text(text: str, limit: int, unit: LengthUnit) -> None:
    pages = split_pages(text, limit, unit)
    if not text.strip():
        assert pages == []
    nonblank = re.sub(r"\s+", "", text)
    joined = re.sub(r"\s+", "", "".join(pages))
    it = iter(joined)
    assert all(ch in it for ch in nonblank)  # every character survives, in order
    for page in pages:
        assert page and page == page.strip(), page
        assert text_length(page, unit) <= limit
    # What was added is only fence lines: at most a reopen header and a closer per page.
    assert len(joined) - len(nonblank) <= len(pages) * limit // 2


@settings(max_examples=250, deadline=None)
@given(markdownish, markdownish, limits, units)
def test_all_but_the_last_page_are_stable_under_appending(
    text: str, more: str, limit: int, unit: LengthUnit
) -> None:
    before = split_pages(text, limit, unit)
    after = split_pages(text + more, limit, unit)
    keep = max(len(before) - 1, 0)
    assert after[:keep] == before[:keep]


@settings(max_examples=100, deadline=None)
@given(st.lists(markdownish, min_size=1, max_size=8), limits, units)
def test_pager_equals_split_pages_while_streaming(
    chunks: list[str], limit: int, unit: LengthUnit
) -> None:
    pager = Pager(limit, unit)
    text = ""
    final: list[str] = []
    for chunk in chunks:
        text += chunk
        pages = pager.update(text)
        assert pages == split_pages(text, limit, unit)
        assert pages[: len(final)] == final
        final = pages[: pager.final_count]


def test_close_open_fence_closes_only_an_open_block() -> None:
    assert close_open_fence("text\n```python\nx = 1") == "text\n```python\nx = 1\n```"
    assert close_open_fence("~~~~\ncode") == "~~~~\ncode\n~~~~"
    assert close_open_fence("```\nx\n```\nafter") == "```\nx\n```\nafter"
    assert close_open_fence("no code") == "no code"


def test_fenced_lines_marks_blocks_with_their_markers() -> None:
    lines = fenced_lines("a\n```py\nb\n```\nc")
    assert lines == [("a", False), ("```py", True), ("b", True), ("```", True), ("c", False)]
