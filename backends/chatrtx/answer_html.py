"""Turn Chat with RTX's chatbot HTML into neutral Markdown, without leaking local paths.

Chat with RTX writes HTML into its Gradio chatbot: ``<br>`` line breaks, a RAG tail
``<br>Reference files:<br><a data-link="C:\\…\\notes.txt">notes.txt</a>`` (0.2 wrote
``<a href="file:////C:\\…\\notes.txt">`` instead), and in photo (CLIP) mode
``<div class="chat-output-images"><img data-link=… src="file/…"/></div>``. These links are
absolute paths on the user's PC: they must never reach a chat. Only the tags the app itself
emits are converted; any other ``<tag>`` came from the model and stays literal text, for the
platform renderers to escape.

The model's own text may quote local paths too (it reads the user's files). ``scrub_paths``
reads them with a small tokenizer (a root, then separator and name, separator and name…)
and replaces each path, and nothing around it, by its last name when that is a file name
(``notes.txt``, ``.bashrc``; never the folder right under ``Users`` or ``home``), else by
``‹path›``. A name ends at a space, except inside quotes and, in prose, between two
backslashes (``C:\\Program Files\\…``). What counts as a local path:

- a drive path ``C:\\a\\b.txt``, ``C:/a/b.txt``, ``C:\\\\a\\\\b.txt`` (escaped, as in code),
  ``\\\\?\\C:\\…``; a UNC path ``\\\\server\\share\\…`` or ``//server/share/…`` (a server name
  without dots: ``//cdn.example.com/x.js`` is a protocol-relative URL);
- ``%USERPROFILE%\\…``, ``$env:APPDATA\\…``, ``$HOME/…``, ``~/…``, ``~\\…``;
- a POSIX path under a per-user or per-machine root (``/home``, ``/Users``, ``/root``, ``/mnt``,
  ``/media``, ``/Volumes``, ``/tmp``, ``/private``, ``/var/{home,folders,tmp}``,
  ``/run/{media,user}``). System paths such as ``/etc/hosts`` or ``/dev/null`` are the same on
  every machine and answers need them; ``/api/v1/users`` is a URL route, ``docs/x.md`` relative;
- a ``file:`` or ``smb:`` URL. ``http(s)://`` URLs are skipped whole, whatever they contain.

A root alone (``C:\\``, ``\\\\nas``, ``~/``) is not a leak and stays, and so does everything
without a root: ``and/or``, ``1/2``, ``12/05/2024``, ``TCP/IP``, ``a\\b``, ``\\\\d+\\\\s``.
Inside Markdown code (fenced blocks and inline spans) regexes and escapes must survive, so
there a path also needs a folder between its root and its last part (``C:\\Users\\x``, not
``C:\\x``, nor ``/home/i`` from a JS regex literal); ``file:`` URLs are scrubbed everywhere.
"""

from __future__ import annotations

import html
import ntpath
import posixpath
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from urllib.parse import unquote

_BR = re.compile(r"<br\s*/?>", re.IGNORECASE)
_ANCHOR = re.compile(r"<a\b([^>]*)>(.*?)</a>", re.IGNORECASE | re.DOTALL)
_IMG = re.compile(r"<img\b([^>]*)/?>", re.IGNORECASE)
_DIV = re.compile(r"</?div\b[^>]*>", re.IGNORECASE)
_ATTR = re.compile(r"""([\w-]+)\s*=\s*(?:"([^"]*)"|'([^']*)')""")
_TAG = re.compile(r"<[^<>]*>")
_REFERENCES_LABEL = re.compile(r"\n*\s*Reference files:\s*\n?", re.IGNORECASE)
_SEE_ALL = re.compile(r"^\s*See all matches\s*$", re.IGNORECASE | re.MULTILINE)
# An href the app wrote for a reference (0.2: file:////C:\…); a model's http link is not one.
_LOCAL_TARGET = re.compile(r"\s*(?:(?i:file|smb):|[A-Za-z]:[\\/]|\\\\)")

PATH_PLACEHOLDER = "‹path›"


@dataclass(frozen=True)
class ConvertedAnswer:
    text: str  # Markdown for the chat, reference names included at the end
    references: tuple[str, ...]  # file names only


def file_name(path_or_name: str) -> str:
    """The last component of a Windows or POSIX path or ``file:`` URL (``C:\\a\\b.txt`` →
    ``b.txt``)."""
    path = path_or_name.strip()
    if path.lower().startswith("file:"):
        path = unquote(path)
    name = ntpath.basename(path)
    return posixpath.basename(name) or name


def scrub_paths(text: str) -> str:
    """Replace each absolute local path by its file name, or ``‹path›`` for a folder; the
    text around it is kept byte for byte (defence in depth for model text)."""
    return "".join(
        _scrub_span(chunk, in_code=in_code) for chunk, in_code in _markdown_chunks(text)
    )


def convert_answer(raw: str, *, streaming: bool = False) -> ConvertedAnswer:
    """Convert the chatbot's HTML answer. With ``streaming``, an unfinished tag is held back."""
    if streaming:
        raw = _hold_back_partial_tag(raw)
    references: list[str] = []
    images: list[str] = []
    text = _BR.sub("\n", raw)
    # Links the app appends come after its label; a model's own file: link before it stays
    # literal (scrubbed below) instead of being moved into the reference list.
    label_at = text.lower().rfind("reference files:")

    def anchor(match: re.Match[str]) -> str:
        attrs = _attrs(match.group(1))
        target = attrs.get("data-link")
        href = attrs.get("href", "")
        if target is None and 0 <= label_at < match.start() and _LOCAL_TARGET.match(href):
            target = href
        if target is None:
            return match.group(0)  # the model's own text, not an app reference: leave it
        label = html.unescape(_TAG.sub("", match.group(2))).strip()
        name = file_name(label) if label else file_name(target)
        if label.lower() != "see all matches":
            references.append(name)
            return "\x00REF\x00"
        return ""

    def image(match: re.Match[str]) -> str:
        attrs = _attrs(match.group(1))
        target = attrs.get("data-link") or attrs.get("src") or ""
        if target:
            images.append(file_name(target.replace("/", "\\")))
        return ""

    text = _ANCHOR.sub(anchor, text)
    text = _IMG.sub(image, text)
    text = _DIV.sub("\n", text)
    text = _SEE_ALL.sub("", text)
    # References were marked in place; the label and markers are rebuilt as one tidy tail.
    text = _REFERENCES_LABEL.sub("\n", text) if references else text
    text = text.replace("\x00REF\x00", "")
    text = scrub_paths(text)
    text = re.sub(r"\n{3,}", "\n\n", text).strip()
    tail: list[str] = []
    if images:
        tail.append("Matching pictures: " + ", ".join(_unique(images)))
    if references:
        tail.append("Reference files: " + ", ".join(_unique(references)))
    if tail:
        text = (text + "\n\n" if text else "") + "\n".join(tail)
    return ConvertedAnswer(text=text, references=tuple(_unique(references)))


def _attrs(raw: str) -> dict[str, str]:
    return {
        m.group(1).lower(): html.unescape(m.group(2) or m.group(3) or "")
        for m in _ATTR.finditer(raw)
    }


def _hold_back_partial_tag(raw: str) -> str:
    """While streaming, ``<br`` or ``<a data-link="C:\\…`` may be cut mid-tag: wait for the rest."""
    last_open = raw.rfind("<")
    if (
        last_open >= 0
        and raw.find(">", last_open) < 0
        and re.match(r"<[/a-zA-Z]", raw[last_open : last_open + 2] or "")
    ):
        raw = raw[:last_open]
    # An anchor whose closing tag has not arrived yet would show its path-free label twice.
    open_anchor = raw.lower().rfind("<a ")
    if open_anchor >= 0 and raw.lower().find("</a>", open_anchor) < 0:
        raw = raw[:open_anchor]
    return raw


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(i for i in items if i))


# -- Markdown code ----------------------------------------------------------------------------

_LINE = re.compile(r"[^\n]*\n|[^\n]+")
_FENCE = re.compile(r" {0,3}(`{3,}|~{3,})([^\n]*)")
_BACKTICKS = re.compile(r"`+")


def _markdown_chunks(text: str) -> Iterator[tuple[str, bool]]:
    """``text`` cut into (chunk, in_code) pieces, in order: fenced blocks (with their fence
    lines) and the insides of inline code spans are code, the rest prose."""
    done = 0
    for start, end, _ in _fenced_blocks(text):
        yield from _inline_chunks(text[done:start])
        yield text[start:end], True
        done = end
    yield from _inline_chunks(text[done:])


def _code_left_open(text: str) -> bool:
    """Whether text that more text will follow leaves Markdown code open: a fenced block not
    closed yet, or in the prose after the last block a backtick run not matched yet (a later
    run could match it and make code of everything between)."""
    done = 0
    for _, end, closed in _fenced_blocks(text):
        if not closed:
            return True
        done = end
    search = done
    while (opening := _BACKTICKS.search(text, search)) is not None:
        closing = _closing_run(text, opening)
        if closing is None:
            return True
        search = closing.end()
    return False


def _fenced_blocks(text: str) -> Iterator[tuple[int, int, bool]]:
    """CommonMark fences: up to three spaces, three or more backticks or tildes; the closing
    fence uses the same character, at least as many, and nothing else. An unclosed block runs
    to the end, as it renders (and as a streamed answer is, mid-block): (start, end, closed)."""
    opening: tuple[int, str] | None = None
    for line in _LINE.finditer(text):
        fence = _FENCE.match(line.group().rstrip("\r\n"))
        if opening is None:
            # A backtick fence's info string cannot contain a backtick (that is inline code).
            if fence and not (fence.group(1)[0] == "`" and "`" in fence.group(2)):
                opening = (line.start(), fence.group(1))
        elif (
            fence
            and fence.group(1)[0] == opening[1][0]
            and len(fence.group(1)) >= len(opening[1])
            and not fence.group(2).strip()
        ):
            yield opening[0], line.end(), True
            opening = None
    if opening is not None:
        yield opening[0], len(text), False


def _inline_chunks(text: str) -> Iterator[tuple[str, bool]]:
    """Code spans: a run of n backticks up to the next run of exactly n. A run without its
    match is literal text, and so is the closing run (it opens nothing: the prose between two
    spans is prose, with prose's stricter path rules)."""
    done = search = 0
    while (opening := _BACKTICKS.search(text, search)) is not None:
        closing = _closing_run(text, opening)
        if closing is None:
            search = opening.end()
            continue
        yield text[done : opening.end()], False
        yield text[opening.end() : closing.start()], True
        done, search = closing.start(), closing.end()
    yield text[done:], False


def _closing_run(text: str, opening: re.Match[str]) -> re.Match[str] | None:
    """The next run of exactly as many backticks as ``opening``, if any."""
    closing = _BACKTICKS.search(text, opening.end())
    while closing is not None and len(closing.group()) != len(opening.group()):
        closing = _BACKTICKS.search(text, closing.end())
    return closing


# -- local paths ------------------------------------------------------------------------------


class _Family(Enum):
    """How a path's names are separated: Windows takes ``\\`` (or ``\\\\`` when escaped) and
    ``/``; POSIX takes ``/`` only, and a backslash there only escapes a space."""

    WINDOWS = "windows"
    POSIX = "posix"


# Where a local path can start. Each root is followed by a separator (checked by lookahead);
# the lookbehinds keep roots from starting inside a word, a URL or another path.
_ROOTS = r"""
    (?P<file_url> (?<![\w.+-]) (?i:file|smb): (?=[/\\]) )
  | (?P<drive> (?:\\\\[?.]\\)? (?<!\w) [A-Za-z]: (?=[/\\]) )
  | (?P<unc> (?<![\w\\/]) (?P<unc_lead>\\\\(?:\\\\)?) (?:[A-Za-z0-9][\w.$-]*[\w$])
        (?=[/\\]) )
  | (?P<slash_unc> (?<![\w:/\\]) //
        (?:[A-Za-z0-9][\w$-]*[\w$] | \d{1,3}(?:\.\d{1,3}){3}) (?=/) )
  | (?P<env> (?: (?<![\w%]) %[A-Za-z_][\w()]{0,31}% | (?<![\w$]) \$env:[A-Za-z_]\w{0,31} )
        (?=[/\\]) )
  | (?P<home_var> (?<![\w$]) \$(?:HOME|\{HOME\}) (?=/) )
  | (?P<tilde> (?<![\w~/\\.]) ~ (?=[/\\]) )
  | (?P<posix> (?<![\w./\\~$%]) /
        (?P<posix_root>home|Users|root|mnt|media|Volumes|tmp|private
                       |var/(?:home|folders|tmp)|run/(?:media|user)) (?=/) )
"""
_PATH_ROOT = re.compile(_ROOTS, re.VERBOSE)
# Web URLs are consumed whole so that nothing inside them is taken for a path.
_SCAN = re.compile(
    r"(?P<web> (?<![\w.+-]) (?i:https?|ftp|wss?):// [^\s<>\"'`]* ) |" + _ROOTS, re.VERBOSE
)
_ROOT_HINT = re.compile(r"[:\\/%$~]")
_HINT_LEAD = len("https")
_WINDOWS_NAME = re.compile(r"""[^\s\\/:*?"<>|`]+""")
_POSIX_NAME = re.compile(r"""(?:[^\s\\/:*?"<>|`]|\\[ ])+""")
_URL_BODY = re.compile(r"""[^\s<>"'`]+""")
_BACKSLASHES = re.compile(r"\\+")
# A quoted path closes within Windows' MAX_PATH (260) on its line: looking no further keeps
# a line of unclosed quotes linear.
_QUOTE_CLOSE = {q: re.compile(rf"[^\n]{{0,260}}?{q}(?!\w)") for q in ('"', "'")}
# Inside quotes a last name may be several words, still without a separator.
_SPACED_NAME = re.compile(r"""[^\\/:*?"<>|`\n]+""")
# A file name has an extension (or is a dotfile); anything else may be a folder, so the
# whole path becomes the placeholder rather than risk showing a folder's name.
_FILE_NAME = re.compile(r"[^.].*\.[A-Za-z0-9]{1,8}|\.[\w.-]+", re.DOTALL)
# The name right under these is a user name (``C:\Users\john.doe``), never a file name.
_USER_FOLDERS = frozenset({"users", "home", "documents and settings"})
# Folder names may hold spaces (``Program Files``): that many words at most, so that a
# sentence after a path is not read as one.
_MAX_WORDS_IN_NAME = 5
_TRAILING_PUNCTUATION = ".,;:!?'"
_CLOSERS = {")": "(", "]": "[", "}": "{"}


@dataclass(frozen=True)
class _LocalPath:
    end: int  # index just after the path in the scanned text
    names: tuple[str, ...]  # the names after the root, in order
    root_name: str  # the folder the first name sits in: "home" for /home/…, else ""
    is_folder: bool  # it ended with a separator
    is_url: bool
    first_after_backslash: bool  # ``C:\n…`` may be an escape in code, ``/mnt/c/…`` is not


def _scrub_span(text: str, *, in_code: bool) -> str:
    out: list[str] = []
    done = search = 0
    while (root := _next_root(text, search)) is not None:
        search = root.end() if root.lastgroup == "web" else root.start() + 1
        path = None if root.lastgroup == "web" else _read_path(text, root, in_code=in_code)
        if path is None or not _is_leak(path, in_code=in_code):
            continue
        out += [text[done : root.start()], _replacement(path)]
        done = search = path.end
    out.append(text[done:])
    return "".join(out)


def _next_root(text: str, pos: int) -> re.Match[str] | None:
    """``_SCAN.search(text, pos)``, fast: trying its nine alternatives at every position cost
    more than the rest of the conversion, yet every root or URL has one of a few rare
    characters within its first ``_HINT_LEAD + 1`` (``C:``, ``https:``, ``\\``, ``/``…)."""
    while (hint := _ROOT_HINT.search(text, pos)) is not None:
        for start in range(max(pos, hint.start() - _HINT_LEAD), hint.start() + 1):
            if (root := _SCAN.match(text, start)) is not None:
                return root
        pos = hint.start() + 1
    return None


def _is_leak(path: _LocalPath, *, in_code: bool) -> bool:
    if path.is_url:
        return True
    if not in_code:
        return len(path.names) >= 1  # a root alone (``C:\``, ``~/``) says nothing
    # Code is full of backslashes and slashes that are not paths; there a path must also name
    # a folder under its root, which regex literals (``/home/i``) never do, and that folder
    # is no one-letter escape (``"x:\n\tvalue"``; ``/mnt/c/…`` is fine).
    if len(path.names) < 2:
        return False
    return not (path.first_after_backslash and len(path.names[0]) == 1)


def _replacement(path: _LocalPath) -> str:
    if path.is_folder or not path.names:
        return PATH_PLACEHOLDER
    name = path.names[-1]
    parent = path.names[-2] if len(path.names) > 1 else path.root_name
    if parent.lower() in _USER_FOLDERS or not _FILE_NAME.fullmatch(name):
        return PATH_PLACEHOLDER
    return name


def _read_path(text: str, root: re.Match[str], *, in_code: bool) -> _LocalPath | None:
    kind = root.lastgroup
    if kind == "file_url":
        return _read_url(text, root)
    posix = kind in ("home_var", "posix") or (kind == "tilde" and text[root.end()] == "/")
    reader = _NameReader(
        text,
        _Family.POSIX if posix else _Family.WINDOWS,
        width=len(root.group("unc_lead")) // 2 if kind == "unc" else None,
        quote_end=_quote_end(text, root),
        in_code=in_code,
    )
    root_name = root.group("posix_root").rsplit("/", 1)[-1] if kind == "posix" else ""
    return reader.read(root.end(), root_name)


@dataclass
class _NameReader:
    """Reads separator, name, separator, name… after a root. Every name but the last is
    followed by a separator, so it is a folder and must go; the last one ends at a space."""

    text: str
    family: _Family
    width: int | None  # backslashes per separator (2 when escaped), fixed by the first one
    quote_end: int | None  # where the quote around the path closes, if it is quoted
    in_code: bool  # unquoted paths in code have no spaces (a shell or compiler would split)

    def read(self, pos: int, root_name: str) -> _LocalPath | None:
        start_pos = pos
        names: list[str] = []
        is_folder = False
        while length := self._separator_length(pos):
            if self.text[pos] == "\\":
                self.width = length
            start = pos + length
            end = self._folder_name_end(start, after_backslash=self.text[pos] == "\\")
            if end is not None:
                names.append(self.text[start:end])
                pos = end
                continue
            end = self._last_name_end(start)
            if end == start:
                is_folder = True  # ``C:\Users\alice\`` or ``…\alice\.``
            else:
                names.append(self.text[start:end])
            pos = end
            break
        if not names and not is_folder:
            return None
        first_after_backslash = self.text.startswith("\\", start_pos)
        return _LocalPath(
            pos, tuple(names), root_name, is_folder, False, first_after_backslash
        )

    def _separator_length(self, pos: int) -> int:
        if self.text.startswith("/", pos):
            return 1
        if self.family is _Family.POSIX:
            return 0
        backslashes = _BACKSLASHES.match(self.text, pos)
        run = len(backslashes.group()) if backslashes else 0
        # ``C:\\Users\\x`` (escaped) is one path; ``\\bword\\b`` after ``C:\x`` is not its folder.
        return run if run <= 2 and self.width in (None, run) else 0

    def _folder_name_end(self, pos: int, *, after_backslash: bool) -> int | None:
        """Where a folder name starting at ``pos`` ends (a separator follows), or None.

        A name may hold spaces (``Program Files``, ``John Smith``) inside quotes, or in prose
        between backslashes (prose rarely has a backslash; it often has ``and/or`` or
        ``src/x.py`` a few words after a path): then up to ``_MAX_WORDS_IN_NAME`` words joined
        by single spaces, none ending a clause, looking like a file name or starting a path.
        """
        text, end = self.text, pos
        quoted = self.quote_end is not None
        spaced = after_backslash and not self.in_code
        words = len(text) if quoted else _MAX_WORDS_IN_NAME if spaced else 1
        for count in range(words):
            word_end = self._word_end(end)
            if word_end == end or (count and _PATH_ROOT.match(text, end)):
                return None
            word, end = text[end:word_end], word_end
            if self.quote_end is not None and end > self.quote_end:
                return None
            if self._separator_length(end) and (count == 0 or quoted or text[end] == "\\"):
                return end
            if not text.startswith(" ", end) or _ends_clause(word) or _FILE_NAME.fullmatch(word):
                return None
            end += 1
        return None

    def _last_name_end(self, pos: int) -> int:
        if self.quote_end is not None:
            # "C:\…\my notes.txt", "C:\…\My App": inside quotes a name may hold spaces, unless
            # a word in it is a file name: "C:\…\a.txt is missing" quotes a sentence.
            quoted = self.text[pos : self.quote_end].rstrip()
            if _SPACED_NAME.fullmatch(quoted) and (
                _FILE_NAME.fullmatch(quoted)
                or not any(_FILE_NAME.fullmatch(word) for word in quoted.split())
            ):
                return pos + len(quoted)
        return pos + len(_trim_trailing(self.text[pos : self._word_end(pos)]))

    def _word_end(self, pos: int) -> int:
        """The end of the run of name characters at ``pos`` (``pos`` when there is none).
        Non-ASCII punctuation ends it: CJK text puts ``。`` right after a name, no space."""
        pattern = _POSIX_NAME if self.family is _Family.POSIX else _WINDOWS_NAME
        match = pattern.match(self.text, pos)
        if match is None:
            return pos
        for offset, char in enumerate(match.group()):
            if not char.isascii() and unicodedata.category(char).startswith("P"):
                return pos + offset
        return match.end()


def _read_url(text: str, root: re.Match[str]) -> _LocalPath | None:
    """``file:///C:/a/b%20c.txt``, ``file:////C:\\a\\b.txt``, ``smb://nas/share/x``."""
    start = root.end()
    close = _quote_end(text, root)
    if close is not None:
        body = text[start:close]  # an href: spaces and all, up to its quote
    else:
        match = _URL_BODY.match(text, start)
        body = _trim_trailing(match.group()) if match else ""
    path = re.split(r"[?#]", body, maxsplit=1)[0]
    names = tuple(unquote(name) for name in re.split(r"[/\\]+", path) if name)
    if not names:
        return None
    is_folder = path.endswith(("/", "\\"))
    return _LocalPath(start + len(body), names, "", is_folder, True, False)


def _quote_end(text: str, root: re.Match[str]) -> int | None:
    """Where the quote just before ``root`` closes, on the same line; None when the path is
    not quoted. An apostrophe inside a word (``don't``) does not close."""
    quote = text[root.start() - 1 : root.start()]
    if quote not in _QUOTE_CLOSE:
        return None
    match = _QUOTE_CLOSE[quote].match(text, root.end())
    return match.end() - 1 if match else None


def _ends_clause(word: str) -> bool:
    last = word[-1]
    return last in _TRAILING_PUNCTUATION or (
        not last.isascii() and unicodedata.category(last).startswith("P")
    )


def _trim_trailing(name: str) -> str:
    """Sentence punctuation (``。`` too) and unbalanced closing brackets after a name are
    prose."""
    while name and (
        _ends_clause(name)
        or (name[-1] in _CLOSERS and name.count(name[-1]) > name.count(_CLOSERS[name[-1]]))
    ):
        name = name[:-1]
    return name


@dataclass(frozen=True)
class TextChange:
    """The converted answer after an update, and what the update added to it."""

    text: str
    delta: str  # ``text`` minus the previous text; "" when earlier text changed instead


# Where a streamed answer may be split for conversion: before a line break.
_BREAK = re.compile(r"\r?\n|<br\s*/?>", re.IGNORECASE)
_BREAKS = re.compile(r"(?:\r?\n|<br\s*/?>)+", re.IGNORECASE)
# What only the whole conversion handles: the app's reference and picture tags (always at the
# end of an answer), "See all matches", and the NUL that marks references while converting.
_WHOLE_ONLY = re.compile(r"<(?:a|img|/?div)\b|see all matches|\x00", re.IGNORECASE)
# What the conversion of text without them may change, besides trimming it: tags (a ``<br>``
# or one to hold back), runs of blank lines, and local paths. ``\\`` and ``//`` begin the
# two roots of unbounded length (``\\\\server``, ``//server``); other roots are short.
_NOT_PLAIN = re.compile(r"<|\\|//|\n\n\n")
_BLANK_RUN = re.compile(r"\n{3,}")
# Every match of _WHOLE_ONLY, _NOT_PLAIN, _ROOT_HINT and _BREAK holds one of these characters,
# or is _WHOLE_ONLY's "see all matches": where there are none, an update of plain prose skips
# the four searches. One character class: the regex engine scans for it in a tight loop (an
# alternative, or IGNORECASE, would make it try every position in turn).
_QUIET = re.compile(r"[<\\/\n%$~:\x00]")
_SEE_ALL_PHRASE = re.compile("see all matches", re.IGNORECASE)


class StreamingConverter:
    """``convert_answer(raw, streaming=True).text`` for a growing answer, at a cost per update
    that follows the update and the current paragraph, not the answer so far.

    The answer so far is a *settled* head, converted once, and a tail that is converted
    again at each update. The head grows up to a line break when nothing before the break
    can change with what follows: no half tag, no Markdown code left open (an unclosed fence
    or an unmatched backtick), visible text right before it. Paths, tags and code spans never
    cross such a break, so converting the two parts apart gives the whole conversion
    (``tests/backends/test_scrub_paths.py`` checks it on random streams). While the tail
    after its line break is *plain* (no tag, backslash, ``//``, local path root or blank-line
    run), its conversion is the identity up to trimming, checked on the new part only. An
    answer holding the app's reference or picture HTML is converted whole at each update:
    that HTML comes last.
    """

    # Far enough back that a marker or path root split across two updates is seen whole
    # (the longest bounded root, ``%`` + 32 + ``%`` and its separator, is well under it).
    _LOOKBACK = 64
    # A plain tail is settled only once this long (settling is a Markdown scan of it): it
    # then stays short, and so does the copy each update makes of it.
    _PLAIN_TAIL = 2048

    def __init__(self) -> None:
        self._raw = ""
        self._text = ""
        self._whole = False  # the answer holds HTML only the whole conversion handles
        self._head = ""  # the converted, trimmed text of the settled part of raw
        self._tail = ""  # raw after the settled part: starts with a line break, or is all raw
        self._lead = 0  # the length of the line breaks it starts with (0 if none settled)
        self._lead_text = ""  # those line breaks converted (``<br>`` becomes a newline)
        self._plain = True
        self._cut = 0  # the last place in the tail where the head may end (0: none yet)
        self._next_try = self._PLAIN_TAIL  # settle once the tail is this long

    @property
    def text(self) -> str:
        return self._text

    def feed(self, raw: str, appended: str | None = None) -> TextChange | None:
        """Take ``raw``, the whole answer so far; None when its text did not change.

        ``appended``: what ``raw`` adds to the previous ``raw``, when the caller knows it
        (Gradio's diffs say so); otherwise the two are compared."""
        if appended is not None and len(raw) != len(self._raw) + len(appended):
            appended = None  # not what the caller thought: compare after all
        if appended is None and raw.startswith(self._raw):
            appended = raw[len(self._raw) :]
        self._raw = raw
        if appended == "":
            return None
        before, fixed = self._text, len(self._head)  # the old head starts the new text too
        if appended is None:
            self._restart(raw)
            fixed, grew = 0, False
        else:
            grew = self._extend(appended)
        if self._whole:
            return self._change(before, convert_answer(raw, streaming=True).text, 0, grew=False)
        tail = self._convert_tail()
        text = self._head + tail if self._head else tail
        # A plain tail that only grew, nothing settled: its text only grew at the end.
        return self._change(before, text, fixed, grew=grew and fixed == len(self._head))

    def _change(self, before: str, text: str, fixed: int, *, grew: bool) -> TextChange | None:
        """``before[:fixed]`` is known to start ``text``; with ``grew``, all of ``before``."""
        self._text = text
        if grew or text.startswith(before[fixed:], fixed):
            return TextChange(text, text[len(before) :]) if len(text) != len(before) else None
        return TextChange(text, "")

    def _extend(self, appended: str) -> bool:
        """Add to the tail; True when its converted text can only have grown at its end."""
        if self._whole:
            return False
        old, was = len(self._tail), (self._plain, self._lead)
        self._tail += appended
        look = max(0, old - self._LOOKBACK)
        # The text after the line breaks was short: they may go on.
        short = bool(self._head) and old < self._lead + len("\r<br/>")
        # "see all matches" wholly in the text before would have made the answer whole when
        # it came: only one that ends in the update's text can be new.
        if not short and _QUIET.search(self._tail, look) is None and _SEE_ALL_PHRASE.search(
                self._tail, max(look, old - len("see all matches") + 1)) is None:
            # Plain prose (most updates): none of the searches below would find anything
            # from ``look`` on; only a settle may be due.
            if self._cut and len(self._tail) >= self._next_try:
                self._settle()
            return was == (True, self._lead) and self._plain
        if _WHOLE_ONLY.search(self._tail, look) is not None:
            self._whole = True
            return False
        if short:
            self._take_lead()
        elif self._plain and self._tail_may_change(look):
            self._plain, self._next_try = False, 0  # now worth settling at every break
        self._find_cut(max(0, old - len("<br/>")))
        if self._cut and len(self._tail) >= self._next_try:
            self._settle()
        return was == (True, self._lead) and self._plain

    def _restart(self, raw: str) -> None:
        """Earlier text changed (not an append): start over from the whole answer."""
        self._whole = _WHOLE_ONLY.search(raw) is not None
        self._head, self._tail, self._lead, self._lead_text = "", raw, 0, ""
        self._plain = not self._tail_may_change(0)
        self._next_try = self._PLAIN_TAIL if self._plain else 0
        self._cut = 0
        if not self._whole:
            self._find_cut(0)
            if self._cut:
                self._settle()

    def _tail_may_change(self, start: int) -> bool:
        """Whether converting the tail after its line breaks may change it from ``start`` on
        (none of them follows them: no blank-line run crosses into the rest)."""
        return _may_change(self._tail, max(start, self._lead))

    def _take_lead(self) -> None:
        """Read the line breaks the tail starts with, and whether the rest is plain."""
        lead = _BREAKS.match(self._tail)
        assert lead is not None, "a settled head is followed by a line break"
        self._lead = lead.end()
        self._lead_text = _BLANK_RUN.sub("\n\n", _BR.sub("\n", lead.group()))
        plain = not self._tail_may_change(0)
        if plain != self._plain:
            self._plain, self._next_try = plain, self._PLAIN_TAIL if plain else 0

    def _find_cut(self, start: int) -> None:
        tail = self._tail
        for match in _BREAK.finditer(tail, start):
            at = match.start()
            # Visible text right before: no blank-line run or trailing space crosses the cut,
            # so trimming and collapsing blank lines work on each part alone.
            if at and not tail[at - 1].isspace() and tail[at - 1] != ">":
                self._cut = at

    def _settle(self) -> None:
        """Move the tail up to the last cut into the head, if nothing before it is open."""
        cut, self._cut = self._cut, 0
        if self._plain:
            body = self._plain_text(cut)
            settles = not _code_left_open(body)
        else:
            part = self._tail[:cut]
            body = _BR.sub("\n", part)
            settles = len(_hold_back_partial_tag(part)) == len(part) and not _code_left_open(body)
            if settles:
                body = _BLANK_RUN.sub("\n\n", scrub_paths(body))
                settles = bool(body) and not body[-1].isspace()
        if not settles:
            # The same cut would be refused again; a plain tail waits to be half as long again.
            self._next_try = len(self._tail) + len(self._tail) // 2 if self._plain else 0
            return
        self._head = self._head + body if self._head else body.lstrip()
        self._tail = self._tail[cut:]
        self._plain, self._next_try = False, 0
        self._take_lead()
        self._find_cut(0)

    def _plain_text(self, end: int) -> str:
        """The converted text of a plain tail up to ``end``: itself, its line breaks
        converted."""
        tail, lead = self._tail, self._lead
        if self._lead_text == tail[:lead]:
            return tail if end == len(tail) else tail[:end]
        return self._lead_text + tail[lead:end]

    def _convert_tail(self) -> str:
        if self._plain:
            body = self._plain_text(len(self._tail))
        else:
            body = _BLANK_RUN.sub(
                "\n\n", scrub_paths(_BR.sub("\n", _hold_back_partial_tag(self._tail))))
        # After a settled head the tail starts with its line break, which stays.
        return body.rstrip() if self._head else body.strip()


def _may_change(text: str, start: int) -> bool:
    """Whether converting ``text`` may change it from ``start`` on (besides trimming)."""
    if _NOT_PLAIN.search(text, start) is not None:
        return True
    hint = _ROOT_HINT.search(text, start)
    return hint is not None and _PATH_ROOT.search(text, start) is not None
