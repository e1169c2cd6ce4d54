"""Turn Chat with RTX's chatbot HTML into neutral Markdown, without leaking local paths.

Chat with RTX writes HTML into its Gradio chatbot: ``<br>`` line breaks, a RAG tail
``<br>Reference files:<br><a data-link="C:\\…\\notes.txt">notes.txt</a>``, and in photo (CLIP)
mode ``<div class="chat-output-images"><img data-link=… src="file/…"/></div>``. The
``data-link`` values are absolute paths on the user's PC: they must never reach a chat. Only
the tags the app itself emits are converted; any other ``<tag>`` came from the model and stays
literal text, for the platform renderers to escape.
"""

from __future__ import annotations

import html
import ntpath
import posixpath
import re
from dataclasses import dataclass

_BR = re.compile(r"<br\s*/?>", re.IGNORECASE)
_ANCHOR = re.compile(r"<a\b([^>]*)>(.*?)</a>", re.IGNORECASE | re.DOTALL)
_IMG = re.compile(r"<img\b([^>]*)/?>", re.IGNORECASE)
_DIV = re.compile(r"</?div\b[^>]*>", re.IGNORECASE)
_ATTR = re.compile(r"""([\w-]+)\s*=\s*(?:"([^"]*)"|'([^']*)')""")
_TAG = re.compile(r"<[^<>]*>")
# An absolute Windows path (drive or UNC): keep the last component only.
_WINDOWS_PATH = re.compile(
    r"""(?:\b[A-Za-z]:|\\\\[^\\\s"'<>|]+)\\(?:[^\\\r\n"'<>|*?]+\\)*([^\\\r\n"'<>|*?]*)"""
)
_REFERENCES_LABEL = re.compile(r"\n*\s*Reference files:\s*\n?", re.IGNORECASE)
_SEE_ALL = re.compile(r"^\s*See all matches\s*$", re.IGNORECASE | re.MULTILINE)


@dataclass(frozen=True)
class ConvertedAnswer:
    text: str  # Markdown for the chat, reference names included at the end
    references: tuple[str, ...]  # file names only


def file_name(path_or_name: str) -> str:
    """The last component of a Windows or POSIX path (``C:\\a\\b.txt`` → ``b.txt``)."""
    name = ntpath.basename(path_or_name.strip())
    return posixpath.basename(name) or name


def scrub_paths(text: str) -> str:
    """Replace absolute local paths by their file name (defence in depth for model text)."""
    return _WINDOWS_PATH.sub(lambda m: m.group(1), text)


def convert_answer(raw: str, *, streaming: bool = False) -> ConvertedAnswer:
    """Convert the chatbot's HTML answer. With ``streaming``, an unfinished tag is held back."""
    if streaming:
        raw = _hold_back_partial_tag(raw)
    references: list[str] = []
    images: list[str] = []

    def anchor(match: re.Match[str]) -> str:
        attrs = _attrs(match.group(1))
        if "data-link" not in attrs:
            return match.group(0)  # the model's own text, not an app reference: leave it
        label = html.unescape(_TAG.sub("", match.group(2))).strip()
        name = file_name(label) if label else file_name(attrs["data-link"])
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

    text = _BR.sub("\n", raw)
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


class StreamingConverter:
    """``convert_answer(raw, streaming=True)`` for a growing answer, without redoing the
    regex passes over the whole text at every token (that made streaming quadratic).

    While the answer is plain text (no tag, no backslash path, no blank-line run to collapse)
    conversion is the identity up to trimming, which is checked on the new part only.
    """

    _SPECIAL = ("<", "\\", "\n\n\n", "See all matches")

    def __init__(self) -> None:
        self._raw = ""
        self._plain = True

    def feed(self, raw: str) -> str:
        if self._plain and raw.startswith(self._raw):
            # Look a few characters back so a marker split across two updates is seen.
            tail = raw[max(0, len(self._raw) - 16):]
            self._plain = not any(marker in tail for marker in self._SPECIAL)
        else:
            self._plain = self._plain and not any(m in raw for m in self._SPECIAL)
        self._raw = raw
        if self._plain:
            return raw.strip()
        return convert_answer(raw, streaming=True).text
