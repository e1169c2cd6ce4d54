"""Split a model's Markdown answer into pages that fit one platform message each.

Telegram allows 4096 characters per message *after* entity parsing and counts entity offsets
in UTF-16 code units; Discord allows 2000 characters of ``content``. The streaming engine
edits one message while text arrives and continues in a new message once a page is full, so
this module answers one question, over and over: "where does each page of this (growing)
text end?".

Design points (see docs/bot-failure-modes.md, failure modes 3 and 7):

* Pages never cut a code fence open: a page that ends inside a fenced block gets a closing
  fence, and the next page reopens the block with the same marker and language. The added
  lines are counted inside the limit.
* Cuts prefer a paragraph break, then a line break, then a space, then a hard cut between
  code points (never inside a surrogate pair, and we back off a few code points so a
  combining mark, variation selector or ZWJ emoji sequence is not split either).
* **Streaming stability.** Where page *k* ends is decided only from the text between the
  page's start and one character past its size window. So once a later page exists, the
  text already extends past that window, and no extension can change page *k*. In short:
  for any text ``t`` and suffix ``s``, every page of ``split_pages(t)`` except the last is
  also a page, at the same index, of ``split_pages(t + s)``. :class:`Pager` builds on this to
  re-split only the tail of the text on each streamed update.

All functions are pure: no I/O, no globals mutated.
"""

from __future__ import annotations

import bisect
import enum
import re
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

__all__ = [
    "MIN_FILL",
    "MIN_LIMIT",
    "LengthUnit",
    "Pager",
    "split_pages",
    "text_length",
]


class LengthUnit(enum.Enum):
    """How a platform counts message length."""

    #: UTF-16 code units: characters outside the Basic Multilingual Plane (most emoji, rare
    #: CJK) count 2. Telegram's entity offsets are in these units, and whether its 4096 limit
    #: is too is disputed, so the Telegram adapter budgets in UTF-16 to be safe either way.
    UTF16 = "utf16"
    #: Unicode code points, i.e. ``len(str)``. Discord counts these.
    CODEPOINT = "codepoint"


#: Smallest supported page size. Below this a reopened fence header plus a closing fence
#: would leave no room for content; no real platform is anywhere near it.
MIN_LIMIT = 16

#: A boundary of a preferred kind (paragraph, line, space) is only taken if the page it
#: produces is at least this fraction of the available room; otherwise the next kind is tried.
#: Without it a paragraph break 5% into the window would make an almost empty page while the
#: line break at 95% was available. 0.5 bounds the number of messages at about twice the
#: minimum while still keeping almost every cut at a paragraph or line break.
MIN_FILL = 0.5

_ASTRAL = re.compile("[\U00010000-\U0010ffff]")
_LEADING_WS = re.compile(r"\s*")
_FENCE_LINE = re.compile(r"[ \t]*(?P<marker>`{3,}|~{3,})(?P<info>[^\n]*)")
# Inline constructs a space cut should avoid splitting: a code span (closing run of the same
# length), **bold**, __bold__, ~~strike~~ and [text](url). Matched per line only; a construct
# whose closer lies beyond the page window is not protected, which is what keeps the decision
# independent of text that has not arrived yet.
_INLINE_SPAN = re.compile(
    r"(`+)[^`].*?(?<!`)\1(?!`)|\*\*[^*\n]+?\*\*|__[^_\n]+?__|~~[^~\n]+?~~|\[[^\]\n]*\]\([^)\n]*\)"
)
_ZWJ = "\u200d"


def _after_blanks(text: str, pos: int) -> int:
    """The index of the first non-blank character at or after ``pos``."""
    match = _LEADING_WS.match(text, pos)
    assert match is not None  # \s* matches everywhere, if only the empty string
    return match.end()


def text_length(text: str, unit: LengthUnit) -> int:
    """Length of ``text`` as the platform counts it (see :class:`LengthUnit`)."""
    if unit is LengthUnit.CODEPOINT:
        return len(text)
    # Encoding is done in C and is far faster than counting astral characters in Python.
    # "surrogatepass" so a lone surrogate (possible in decoded JSON) counts 1 and never raises.
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


@dataclass(frozen=True, slots=True)
class _Fence:
    """An open fenced code block: what is needed to close it and to reopen it on a new page."""

    char: str  # "`" or "~"
    length: int  # length of the opening marker; a closer must be at least as long
    lang: str  # first word of the info string ("" if none)

    def header(self, limit: int) -> str:
        """The line (with newline) that reopens this block at the top of the next page."""
        head = f"{self.char * self.length}{self.lang}\n"
        if len(head) > limit // 4:
            # A huge info string or marker must not eat the page; the bare marker still
            # reopens a code block (only the syntax highlighting hint is lost).
            head = f"{self.char * 3}\n"
        return head

    def closer(self, limit: int) -> str:
        """What to append to a page that ends inside this block."""
        marker = self.char * self.length
        if len(marker) + 1 > limit // 4:
            marker = self.char * 3
        return "\n" + marker


def _fence_after(state: _Fence | None, line: str) -> _Fence | None:
    """Fence state after ``line`` (without its newline), given the state before it.

    Deliberately lenient about indentation (CommonMark allows at most 3 spaces at top level):
    models indent fences inside list items by 3-6 spaces, and closing and reopening those
    across a page cut matters more than the rare fence-like line inside a code block.
    """
    stripped = line.lstrip(" \t")
    if not stripped.startswith(("```", "~~~")):
        return state
    m = _FENCE_LINE.fullmatch(line)
    if m is None:
        return state
    marker, info = m.group("marker"), m.group("info")
    if state is None:
        if marker[0] == "`" and "`" in info:
            return None  # CommonMark: a backtick fence's info string may not contain a backtick
        words = info.split()
        return _Fence(marker[0], len(marker), words[0] if words else "")
    if marker[0] == state.char and len(marker) >= state.length and not info.strip():
        return None
    return state


class _Meter:
    """Measures ``text[a:b]`` in a unit in O(log n) after one O(n) scan done in C."""

    def __init__(self, text: str, unit: LengthUnit, start: int) -> None:
        self._astral: list[int] = (
            [m.start() for m in _ASTRAL.finditer(text, start)] if unit is LengthUnit.UTF16 else []
        )

    def length(self, a: int, b: int) -> int:
        if not self._astral or b <= a:
            return max(b - a, 0)
        return b - a + bisect.bisect_left(self._astral, b) - bisect.bisect_left(self._astral, a)

    def advance(self, a: int, budget: int, hi: int) -> int:
        """Largest ``end`` in ``[a, hi]`` with ``length(a, end) <= budget``."""
        end = min(hi, a + max(budget, 0))
        if not self._astral or self.length(a, end) <= budget:
            return end
        lo, top = a, end
        while lo < top:
            mid = (lo + top + 1) // 2
            if self.length(a, mid) <= budget:
                lo = mid
            else:
                top = mid - 1
        return lo


@dataclass(frozen=True, slots=True)
class _Line:
    start: int
    end: int | None  # index of the terminating "\n", or None if it lies past the window
    before: _Fence | None  # fence state at the start of the line
    after: _Fence | None  # fence state after the line (== before for an unfinished line)
    blank: bool


@dataclass(frozen=True, slots=True)
class _Cut:
    page: str
    next_start: int
    fence: _Fence | None  # open fence at next_start


def _rstrip_end(text: str, lo: int, hi: int) -> int:
    while hi > lo and text[hi - 1].isspace():
        hi -= 1
    return hi


def _is_extender(ch: str) -> bool:
    """True if ``ch`` continues the previous character's grapheme (a cut before it is ugly)."""
    o = ord(ch)
    return (
        ch == _ZWJ
        or 0xFE00 <= o <= 0xFE0F  # variation selectors (emoji presentation)
        or 0x1F3FB <= o <= 0x1F3FF  # skin tone modifiers
        or 0xE0020 <= o <= 0xE007F  # tag characters (subdivision flags)
        or unicodedata.category(ch) in ("Mn", "Me", "Mc")  # combining marks
    )


def _page_start(text: str, pos: int, fence: _Fence | None, room: int) -> tuple[int, _Fence | None]:
    """Where the page after a cut at ``pos`` starts, and the fence state there.

    Whitespace at a cut is dropped (no page starts with blank lines), except the indentation
    of the first line inside a code block, which is content. If the next line inside an open
    fence is that block's closing fence, the page just cut already closed the block, so the
    original closer is skipped instead of producing an empty code block on the next page.
    """
    n = len(text)
    p = _after_blanks(text, pos)
    if p >= n or fence is None:
        return p, fence
    nl = text.rfind("\n", pos, p)
    if nl == -1:
        return p, fence  # cut in the middle of a code line: nothing to preserve
    line_start = nl + 1
    line_end = text.find("\n", p)
    # Only a *complete* closer line counts. If the text ends right after "```", this page is
    # necessarily the last one (its trimmed rest fits), so it is not final yet anyway.
    if line_end != -1 and _fence_after(fence, text[line_start:line_end]) is None:
        return _after_blanks(text, line_end), None
    if p - line_start > room // 2:
        return p, fence  # absurd indentation would eat the page; keep the content instead
    return line_start, fence


class _Window:
    """One page decision: the text from ``s`` that could fit, its lines and candidate cuts.

    Everything here reads only ``text[s : e + 1]`` where ``e`` is the furthest offset whose
    text fits the page. That is the whole streaming-stability argument: a later page exists
    only if the text runs past ``e``, and then appending more cannot change this page.
    """

    def __init__(
        self, text: str, s: int, fence: _Fence | None, limit: int, unit: LengthUnit, meter: _Meter
    ) -> None:
        self.text, self.s, self.limit, self.unit, self.meter = text, s, limit, unit, meter
        self.header = fence.header(limit) if fence else ""
        self.room = limit - text_length(self.header, unit)
        self.fits_all = meter.length(s, _rstrip_end(text, s, len(text))) <= self.room
        self.e = meter.advance(s, self.room, len(text))
        self.lines: list[_Line] = []
        if self.fits_all:
            return
        pos, state = s, fence
        while pos <= self.e:
            nl = text.find("\n", pos, self.e + 1)
            if nl == -1:
                seg = text[pos : self.e + 1]
                self.lines.append(_Line(pos, None, state, state, not seg.strip()))
                break
            seg = text[pos:nl]
            after = _fence_after(state, seg)
            self.lines.append(_Line(pos, nl, state, after, not seg.strip()))
            state = after
            pos = nl + 1
        self._starts = [ln.start for ln in self.lines]

    # -- helpers -------------------------------------------------------------------------

    def _line_at(self, pos: int) -> _Line:
        return self.lines[bisect.bisect_right(self._starts, pos) - 1]

    def _state_at(self, c: int) -> _Fence | None:
        ln = self._line_at(c)
        return ln.after if ln.end == c else ln.before

    def _page(self, c: int, st: _Fence | None) -> tuple[str, int] | None:
        """The page for a cut at ``c`` (fence state ``st`` there) and its fill, if it fits."""
        be = _rstrip_end(self.text, self.s, c)
        if be <= self.s:
            return None
        body = self.meter.length(self.s, be)
        closer = st.closer(self.limit) if st else ""
        if body + text_length(closer, self.unit) > self.room:
            return None
        return self.header + self.text[self.s : be] + closer, body

    def _take(self, c: int, st: _Fence | None, page: str) -> _Cut:
        nxt, nf = _page_start(self.text, c, st, self.room)
        return _Cut(page, nxt, nf)

    def _first_fitting(self, cands: Iterable[tuple[int, _Fence | None]]) -> _Cut | None:
        """The first candidate (they come last-in-text first) that fits, if its page is full
        enough (see :data:`MIN_FILL`). Stopping there is right: every candidate after it is
        earlier in the text, makes a shorter page, and would fail the fill test too.
        """
        for c, st in cands:
            got = self._page(c, st)
            if got is None:
                continue
            if got[1] < self.room * MIN_FILL:
                return None
            return self._take(c, st, got[0])
        return None

    # -- candidate kinds, in order of preference ------------------------------------------

    def _line_ends(self, paragraph: bool) -> list[tuple[int, _Fence | None]]:
        """Line-end cuts, last first (paragraph=True: only those followed by a blank line)."""
        out: list[tuple[int, _Fence | None]] = []
        for i in range(len(self.lines) - 1, -1, -1):
            ln = self.lines[i]
            if ln.end is None or ln.blank:
                continue
            if ln.before is None and ln.after is not None:
                continue  # never end a page right after an opening fence line
            if paragraph:
                nxt = self.lines[i + 1] if i + 1 < len(self.lines) else None
                if nxt is None or nxt.end is None or not nxt.blank:
                    continue
            out.append((ln.end, ln.after))
        return out

    def _spaces(self, outside_only: bool) -> Iterator[tuple[int, _Fence | None]]:
        """Space cuts on the line holding the window's last space, last first.

        ``outside_only`` skips spaces inside ``**bold**``, `` `code` `` or ``[a](b)`` on that
        line; the engine tries those first and then any space, because splitting a long bold
        phrase still beats a hard cut in the middle of a word. Generated lazily: a page that
        is one long line has thousands of spaces and we usually need only the last one.
        """
        text, s, e = self.text, self.s, self.e
        last = max(text.rfind(" ", s + 1, e + 1), text.rfind("\t", s + 1, e + 1))
        if last == -1:
            return
        ln = self._line_at(last)
        lo = max(ln.start, s + 1)
        seg_end = min(ln.end if ln.end is not None else e + 1, e + 1)
        starts: list[int] = []
        ends: list[int] = []
        if outside_only:
            # finditer with pos/endpos reports offsets into the whole text; matches never
            # overlap, so bisecting the starts finds the only span that could contain i.
            for m in _INLINE_SPAN.finditer(text, ln.start, seg_end):
                starts.append(m.start())
                ends.append(m.end())
        pos = seg_end
        while True:
            i = max(text.rfind(" ", lo, pos), text.rfind("\t", lo, pos))
            if i == -1:
                return
            k = bisect.bisect_right(starts, i) - 1
            if not (k >= 0 and starts[k] < i < ends[k]):
                yield i, ln.before
            pos = i

    def _hard(self) -> _Cut:
        """Cut at the furthest code point that fits, nudged back off grapheme extenders."""
        text, s = self.text, self.s
        c = self.e
        for _ in range(4):  # the closer's size depends on the state at c, which depends on c
            st = self._state_at(c)
            need = self.room - (text_length(st.closer(self.limit), self.unit) if st else 0)
            if self.meter.length(s, c) <= need:
                break
            c = self.meter.advance(s, need, c)
        first = _after_blanks(text, s)
        for _ in range(8):
            if c - 1 <= first or not (_is_extender(text[c]) or text[c - 1] == _ZWJ):
                break
            c -= 1
        st = self._state_at(c)
        got = self._page(c, st)
        if got is None:  # unreachable for limit >= MIN_LIMIT; keep progress guaranteed anyway
            got = (self.header + text[s : max(c, first + 1)], 0)
            c = max(c, first + 1)
        nxt, nf = _page_start(text, c, st, self.room)
        return _Cut(got[0], max(nxt, s + 1), nf)

    def cut(self) -> _Cut | None:
        """None if the rest fits on this page; otherwise the chosen cut."""
        if self.fits_all:
            return None
        kinds: tuple[Iterable[tuple[int, _Fence | None]], ...] = (
            self._line_ends(paragraph=True),
            self._line_ends(paragraph=False),
            self._spaces(outside_only=True),
            self._spaces(outside_only=False),
        )
        for cands in kinds:
            got = self._first_fitting(cands)
            if got is not None:
                return got
        return self._hard()


def _check_limit(limit: int) -> None:
    if limit < MIN_LIMIT:
        raise ValueError(f"page limit {limit} is below the minimum of {MIN_LIMIT}")


def _split_from(
    text: str, start: int, fence: _Fence | None, limit: int, unit: LengthUnit
) -> list[tuple[str, int, _Fence | None]]:
    """Pages of ``text`` from offset ``start`` (fence state ``fence`` there).

    Returns ``(page, start, fence)`` per page, i.e. where each page began and the fence state
    there, which is exactly what :class:`Pager` needs to resume at any page.
    """
    meter = _Meter(text, unit, start)
    out: list[tuple[str, int, _Fence | None]] = []
    s = _after_blanks(text, start) if fence is None else start
    n = len(text)
    while s < n:
        w = _Window(text, s, fence, limit, unit, meter)
        cut = w.cut()
        if cut is None:
            body = text[s : _rstrip_end(text, s, n)]
            if body.strip():
                out.append((w.header + body, s, fence))
            break
        out.append((cut.page, s, fence))
        s, fence = cut.next_start, cut.fence
    return out


def split_pages(markdown: str, limit: int, unit: LengthUnit) -> list[str]:
    """Split ``markdown`` into pages of at most ``limit`` (measured in ``unit``).

    * Every page is non-empty and within the limit, counting fence lines added to close a
      code block at the end of a page and to reopen it (same marker and language) at the top
      of the next one. Empty or whitespace-only input gives ``[]``.
    * Cut preference: paragraph break, line break, space (outside ``**bold**``, `` `code` ``,
      ``[links](…)`` when the line allows), hard cut between code points. A preferred kind is
      skipped when its last fitting cut would fill less than :data:`MIN_FILL` of the page.
    * Whitespace at cuts is trimmed; indentation inside code blocks is kept.
    * Stable under streaming: every page but the last is unchanged by appending text.

    Raises ValueError if ``limit < MIN_LIMIT``.
    """
    _check_limit(limit)
    return [p for p, _, _ in _split_from(markdown, 0, None, limit, unit)]


class Pager:
    """Incremental :func:`split_pages` for a growing answer.

    Feed it the *whole* text so far on every streamed update. It re-splits only from the
    start of the previous update's last page, because every earlier page is final (see the
    module docstring). :meth:`update` returns exactly ``split_pages(text, limit, unit)``.

    Guarantee the engine can rely on: after ``pages = pager.update(t)``, ``pages[:-1]`` (also
    ``pages[:pager.final_count]``) will be returned unchanged by every later update whose text
    starts with ``t``. The last page is provisional until the stream ends. If an update's
    text does not extend the previous one (the backend rewrote its answer), the pager starts
    over, and pages already sent may differ from the new split.
    """

    def __init__(self, limit: int, unit: LengthUnit) -> None:
        _check_limit(limit)
        self.limit = limit
        self.unit = unit
        self._text = ""
        self._final: list[str] = []
        self._resume: tuple[int, _Fence | None] = (0, None)
        self._pages: list[str] = []

    @property
    def final_count(self) -> int:
        """How many leading pages of the last update are final (all but the last)."""
        return len(self._final)

    @property
    def pages(self) -> list[str]:
        """The pages returned by the last :meth:`update`."""
        return list(self._pages)

    def update(self, text: str) -> list[str]:
        """Pages of ``text`` (the full answer so far); equal to :func:`split_pages`."""
        if not text.startswith(self._text):
            self._final, self._resume = [], (0, None)
        self._text = text
        start, fence = self._resume
        tail = _split_from(text, start, fence, self.limit, self.unit)
        pages = self._final + [p for p, _, _ in tail]
        if len(tail) >= 2:
            self._final = pages[:-1]
            _, s_last, f_last = tail[-1]
            self._resume = (s_last, f_last)
        self._pages = pages
        return list(pages)


def fenced_lines(text: str) -> list[tuple[str, bool]]:
    """Each line of ``text`` (split on ``\n``) and whether it belongs to a fenced code block,
    its opening and closing markers included."""
    out: list[tuple[str, bool]] = []
    state: _Fence | None = None
    for line in text.split("\n"):
        after = _fence_after(state, line)
        out.append((line, state is not None or after is not None))
        state = after
    return out


def close_open_fence(text: str) -> str:
    """``text`` with a closing marker appended if it ends inside a fenced code block.

    For showing a growing page on platforms that render Markdown themselves (Discord): an
    unterminated fence would otherwise show its marker literally until the answer completes.
    Adds a newline and the opener's marker (a closer must be at least as long), at most 60
    characters: a page reserve of 64 covers it.
    """
    state: _Fence | None = None
    for line in text.split("\n"):
        state = _fence_after(state, line)
    return text if state is None else text + state.closer(4 * 60)
