"""Telegram's text formatting, re-implemented for tests: HTML, MarkdownV2, legacy Markdown.

The parsers follow the algorithm of TDLib's ``parse_html`` / ``parse_markdown_v2`` (the code the
Bot API server runs), so a bot's renderer can be checked offline against what Telegram would do:
which tags are accepted, which text the user sees, and where the entities land. Error texts are
TDLib's, *without* the ``Bad Request: can't parse entities:`` prefix the Bot API adds
(``FakeTelegram`` adds it). Offsets and lengths are UTF-16 code units, as in the Bot API.

Sources: the HTML error wordings and the entity-decoding rules come from TDLib's
``MessageEntity.cpp`` and its ``test/message_entities.cpp`` expectations; the list of tags from the
Bot API "Formatting options" page. Where this module guesses, the comment says ``GUESS``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "ParseError",
    "detect_entities",
    "entity_key",
    "parse_html",
    "parse_markdown",
    "parse_markdown_v2",
    "sort_entities",
    "trim_text",
    "utf16_len",
    "utf16_slice",
    "words",
]

Entity = dict[str, Any]


class ParseError(ValueError):
    """The text cannot be parsed; ``description`` is Telegram's wording, e.g.
    ``Unsupported start tag "x" at byte offset 3``."""

    def __init__(self, description: str) -> None:
        super().__init__(description)
        self.description = description


def words(text: str) -> frozenset[str]:
    """A set from a space-separated list (keeps long constant tables compact)."""
    return frozenset(text.split())


def utf16_len(text: str) -> int:
    """Length in UTF-16 code units: what Telegram counts (astral characters count twice)."""
    return len(text) + sum(1 for ch in text if ord(ch) > 0xFFFF)


def _units(ch: str) -> int:
    return 2 if ord(ch) > 0xFFFF else 1


def utf16_slice(text: str, offset: int, length: int) -> str:
    """The substring an entity covers, given UTF-16 ``offset``/``length``."""
    out: list[str] = []
    pos = 0
    end = offset + length
    for ch in text:
        if pos >= end:
            break
        if pos >= offset:
            out.append(ch)
        pos += _units(ch)
    return "".join(out)


def _byte_offset(text: str, index: int) -> int:
    # TDLib reports positions in the UTF-8 bytes it received.
    return len(text[:index].encode("utf-8", "surrogatepass"))


# TDLib's MessageEntity::get_type_priority, used to order entities sharing an offset and length.
_PRIORITY = {
    "mention": 50,
    "hashtag": 50,
    "bot_command": 50,
    "url": 50,
    "email": 50,
    "cashtag": 50,
    "phone_number": 50,
    "bold": 90,
    "italic": 91,
    "code": 20,
    "pre": 11,
    "text_link": 49,
    "text_mention": 49,
    "underline": 92,
    "strikethrough": 93,
    "blockquote": 0,
    "expandable_blockquote": 0,
    "spoiler": 94,
    "custom_emoji": 99,
}


def sort_entities(entities: list[Entity]) -> list[Entity]:
    """TDLib's order: by offset, longer first, then by type priority."""
    return sorted(entities, key=lambda e: (e["offset"], -e["length"], _PRIORITY.get(e["type"], 50)))


def entity_key(entity: Entity) -> tuple[Any, ...]:
    """A hashable, order-insensitive view of an entity (for "not modified" comparisons)."""
    return tuple(sorted((k, str(v)) for k, v in entity.items()))


# --------------------------------------------------------------------------------------- HTML

_HTML_TAGS = frozenset(
    {"a", "b", "strong", "i", "em", "s", "strike", "del", "u", "ins"}
    | {"tg-spoiler", "tg-emoji", "span", "pre", "code", "blockquote"}
)
_SIMPLE_TAGS = {
    "b": "bold",
    "strong": "bold",
    "i": "italic",
    "em": "italic",
    "u": "underline",
    "ins": "underline",
    "s": "strikethrough",
    "strike": "strikethrough",
    "del": "strikethrough",
    "tg-spoiler": "spoiler",
}
# TDLib's is_space() also counts NUL, which is how "end of text" stops every scan below.
_SPACES = frozenset(" \t\r\n\v\f\0")


def _decode_html_entity(text: str, pos: int) -> tuple[str | None, int]:
    """TDLib's decode_html_entity: ``&lt; &gt; &amp; &quot;`` and ``&#NN;``/``&#xHH;``; the ``;``
    is optional. Anything else (``&laquo;``, ``&#0;``) is not an entity and stays literal."""
    n = len(text)
    end = pos + 1
    if end < n and text[end] == "#":
        end += 1
        code = 0
        if end < n and text[end] == "x":  # TDLib accepts only a lower-case x
            end += 1
            while end < n and text[end] in "0123456789abcdefABCDEF":
                code = code * 16 + int(text[end], 16)
                end += 1
        else:
            while end < n and text[end].isascii() and text[end].isdigit():
                code = code * 10 + int(text[end])
                end += 1
        if code == 0 or code >= 0x10FFFF or end - pos >= 10:
            return None, pos
        decoded = chr(code)
    else:
        while end < n and text[end].isascii() and text[end].isalpha():
            end += 1
        named = {"lt": "<", "gt": ">", "amp": "&", "quot": '"'}.get(text[pos + 1 : end])
        if named is None:
            return None, pos
        decoded = named
    if end < n and text[end] == ";":
        end += 1
    return decoded, end


def _checked_link(url: str) -> str | None:
    """A rough LinkManager::get_checked_link: add ``http://`` to bare hosts and ``/`` to empty
    paths; refuse things that are not links (e.g. ``asdasd``), which drops the entity."""
    if not url or any(ch.isspace() for ch in url):
        return None
    match = re.match(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://", url)
    if match is None:
        url = "http://" + url
        scheme = "http"
    else:
        scheme = match.group(1).lower()
    if scheme in ("http", "https", "ftp"):
        rest = url.split("://", 1)[1]
        host, sep, tail = rest.partition("/")
        host = re.split(r"[?#]", host, maxsplit=1)[0]
        if "." not in host or not re.fullmatch(r"[\w.\-:@]+", host):
            return None
        if not sep:
            # "http://telegram.org?x" -> "http://telegram.org/?x", like TDLib.
            after = rest[len(host) :]
            return f"{scheme}://{host}/{after}" if scheme != "ftp" else f"ftp://{host}/{after}"
        return f"{scheme}://{host}/{tail}"
    if scheme in ("tg", "ton"):
        return url
    return None


@dataclass
class _Open:
    tag: str
    argument: str
    offset: int  # UTF-16 offset in the output
    out_len: int  # characters of output before the tag, for <a> without href


def parse_html(text: str) -> tuple[str, list[Entity]]:
    """Parse Bot API HTML into ``(visible_text, entities)`` exactly as Telegram's parser does.

    Offsets/lengths are UTF-16 code units. The text is *not* trimmed (the server does that after
    parsing; see :func:`trim_text`). Raises :class:`ParseError` with TDLib's description.
    """
    n = len(text)

    def at(j: int) -> str:
        return text[j] if j < n else "\0"

    out: list[str] = []
    u16 = 0
    entities: list[Entity] = []
    stack: list[_Open] = []
    i = 0
    while i < n:
        c = text[i]
        if c == "&":
            decoded, j = _decode_html_entity(text, i)
            if decoded is not None:
                if 0xD800 <= ord(decoded) <= 0xDFFF:
                    raise ParseError(
                        "Text contains invalid Unicode characters after decoding HTML entities, "
                        "check for unmatched surrogate code units"
                    )
                out.append(decoded)
                u16 += _units(decoded)
                i = j
                continue
        if c != "<":
            out.append(c)
            u16 += _units(c)
            i += 1
            continue

        begin = i
        i += 1
        if at(i) != "/":
            # Start tag: the name runs to a space or '>'.
            while at(i) not in _SPACES and at(i) != ">":
                i += 1
            if i >= n:
                raise ParseError(f"Unclosed start tag at byte offset {_byte_offset(text, begin)}")
            tag = text[begin + 1 : i].lower()
            if tag not in _HTML_TAGS:
                raise ParseError(
                    f'Unsupported start tag "{tag}" at byte offset {_byte_offset(text, begin)}'
                )
            argument = ""
            while at(i) != ">":
                while i < n and at(i) in _SPACES:
                    i += 1
                if at(i) == ">":
                    break
                attr_begin = i
                while at(i) not in _SPACES and at(i) not in "=>":
                    i += 1
                attr_name = text[attr_begin:i]
                if not attr_name:
                    raise ParseError(
                        f'Empty attribute name in the tag "{tag}" at byte offset '
                        f"{_byte_offset(text, begin)}"
                    )
                while i < n and at(i) in _SPACES:
                    i += 1
                if at(i) != "=":
                    # A bare attribute is only meaningful as <blockquote expandable> (Bot API 7.4);
                    # TDLib's older parser refuses any bare attribute with this wording.
                    if tag == "blockquote" and attr_name.lower() == "expandable":
                        argument = "expandable"
                        continue
                    raise ParseError(
                        "Expected equal sign in declaration of an attribute of the tag "
                        f'"{tag}" at byte offset {_byte_offset(text, begin)}'
                    )
                i += 1
                while i < n and at(i) in _SPACES:
                    i += 1
                if i >= n:
                    raise ParseError(
                        f'Unclosed start tag "{tag}" at byte offset {_byte_offset(text, begin)}'
                    )
                if at(i) not in "'\"":
                    # An unquoted "name token": letters, digits, '.', '-'; case-insensitive.
                    token_begin = i
                    while at(i).isascii() and (at(i).isalnum() or at(i) in ".-"):
                        i += 1
                    value = text[token_begin:i].lower()
                    if at(i) not in _SPACES and at(i) != ">":
                        raise ParseError(
                            "Unexpected end of name token at byte offset "
                            f"{_byte_offset(text, token_begin)}"
                        )
                else:
                    quote = at(i)
                    i += 1
                    chars: list[str] = []
                    while i < n and at(i) != quote:
                        if at(i) == "&":
                            decoded, j = _decode_html_entity(text, i)
                            if decoded is not None:
                                chars.append(decoded)
                                i = j
                                continue
                        chars.append(at(i))
                        i += 1
                    if i < n:
                        i += 1
                    value = "".join(chars)
                if i >= n:
                    raise ParseError(
                        f"Unclosed start tag at byte offset {_byte_offset(text, begin)}"
                    )
                if tag == "a" and attr_name == "href":
                    argument = value
                elif tag == "code" and attr_name == "class" and value.startswith("language-"):
                    argument = value[len("language-") :]
                elif tag == "span" and attr_name == "class" and value.startswith("tg-"):
                    argument = value[len("tg-") :]
                elif tag == "tg-emoji" and attr_name == "emoji-id":
                    argument = value
            if tag == "span" and argument != "spoiler":
                raise ParseError(
                    'Tag "span" must have class "tg-spoiler" at byte offset '
                    f"{_byte_offset(text, begin)}"
                )
            stack.append(_Open(tag, argument, u16, len(out)))
            i += 1  # past '>'
            continue

        # End tag.
        if not stack:
            raise ParseError(f"Unexpected end tag at byte offset {_byte_offset(text, begin)}")
        while at(i) not in _SPACES and at(i) != ">":
            i += 1
        end_name = text[begin + 2 : i].lower()
        while i < n and at(i) in _SPACES:
            i += 1
        if at(i) != ">":
            raise ParseError(f"Unclosed end tag at byte offset {_byte_offset(text, begin)}")
        top = stack.pop()
        if end_name and end_name != top.tag:
            raise ParseError(
                f"Unmatched end tag at byte offset {_byte_offset(text, begin)}, "
                f'expected "</{top.tag}>", found "</{end_name}>"'
            )
        i += 1
        if u16 > top.offset:
            _close_html_entity(top, u16 - top.offset, entities, out)

    if stack:
        # Real servers quote the tag name (observed: `...start tag "b"`); 2023 TDLib did not.
        raise ParseError(f'Can\'t find end tag corresponding to start tag "{stack[-1].tag}"')

    # A <code class="language-x"> not wrapped in <pre> keeps no language (TDLib clears it).
    for e in entities:
        if e["type"] == "code":
            e.pop("language", None)
    # Code inside pre over the same range is folded into the pre (Bot API shows one entity).
    pres = {(e["offset"], e["length"]) for e in entities if e["type"] == "pre"}
    result = [
        e for e in entities if not (e["type"] == "code" and (e["offset"], e["length"]) in pres)
    ]
    return "".join(out), sort_entities(result)


def _close_html_entity(top: _Open, length: int, entities: list[Entity], out: list[str]) -> None:
    offset = top.offset
    tag = top.tag
    if tag in _SIMPLE_TAGS:
        entities.append({"type": _SIMPLE_TAGS[tag], "offset": offset, "length": length})
    elif tag == "span":
        entities.append({"type": "spoiler", "offset": offset, "length": length})
    elif tag == "tg-emoji":
        if not top.argument.lstrip("-").isdigit() or int(top.argument) == 0:
            raise ParseError("Invalid custom emoji identifier specified")
        entities.append(
            {
                "type": "custom_emoji",
                "offset": offset,
                "length": length,
                "custom_emoji_id": str(int(top.argument)),
            }
        )
    elif tag == "a":
        url = _checked_link(top.argument or "".join(out[top.out_len :]))
        if url is not None:
            entities.append({"type": "text_link", "offset": offset, "length": length, "url": url})
    elif tag == "pre":
        last = entities[-1] if entities else None
        if (
            last is not None
            and last["type"] == "code"
            and last["offset"] == offset
            and last["length"] == length
            and last.get("language")
        ):
            last["type"] = "pre"
        else:
            entities.append({"type": "pre", "offset": offset, "length": length})
    elif tag == "code":
        last = entities[-1] if entities else None
        if (
            last is not None
            and last["type"] == "pre"
            and last["offset"] == offset
            and last["length"] == length
            and top.argument
        ):
            last["language"] = top.argument
        else:
            entity: Entity = {"type": "code", "offset": offset, "length": length}
            if top.argument:
                # Kept only until an enclosing <pre> closes; a bare <code> loses it (TDLib).
                entity["language"] = top.argument
            entities.append(entity)
    elif tag == "blockquote":
        kind = "expandable_blockquote" if top.argument == "expandable" else "blockquote"
        entities.append({"type": kind, "offset": offset, "length": length})


# ---------------------------------------------------------------------------------- MarkdownV2

_MDV2_RESERVED = frozenset("_*[]()~`>#+-=|{}.!")
_TYPE_NAMES = {
    "italic": "Italic",
    "bold": "Bold",
    "underline": "Underline",
    "strikethrough": "Strikethrough",
    "spoiler": "Spoiler",
    "code": "Code",
    "pre": "Pre",
    "text_link": "TextUrl",
    "custom_emoji": "CustomEmoji",
}


@dataclass
class _MdOpen:
    type: str
    offset: int
    byte_begin: int
    argument: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def parse_markdown_v2(text: str) -> tuple[str, list[Entity]]:
    """MarkdownV2 as TDLib parses it, simplified: escapes, the reserved-character rule, bold,
    italic, underline, strikethrough, spoiler, inline code, pre (with language), inline links and
    ``>`` blockquotes. Ambiguous runs like ``___`` are resolved greedily (GUESS: TDLib has extra
    rules there)."""
    n = len(text)
    out: list[str] = []
    u16 = 0
    entities: list[Entity] = []
    stack: list[_MdOpen] = []
    i = 0
    quote_start: int | None = None  # UTF-16 offset where the current '>' block began

    def push_char(ch: str) -> None:
        nonlocal u16
        out.append(ch)
        u16 += _units(ch)

    def close(top: _MdOpen) -> None:
        if u16 > top.offset:
            entity: Entity = {"type": top.type, "offset": top.offset, "length": u16 - top.offset}
            entity.update(top.extra)
            entities.append(entity)

    while i < n:
        c = text[i]
        line_start = i == 0 or text[i - 1] == "\n"
        if c == "\n" and quote_start is not None and not text.startswith(">", i + 1):
            entities.append(
                {"type": "blockquote", "offset": quote_start, "length": u16 - quote_start}
            )
            quote_start = None
        if c == "\\" and i + 1 < n and 0 < ord(text[i + 1]) <= 126:
            push_char(text[i + 1])
            i += 2
            continue
        in_code = bool(stack) and stack[-1].type in ("code", "pre")
        if in_code:
            top = stack[-1]
            if c != "`":
                push_char(c)
                i += 1
                continue
            if top.type == "code":
                stack.pop()
                close(top)
                i += 1
                continue
            if text.startswith("```", i):
                stack.pop()
                close(top)
                i += 3
                continue
            push_char(c)
            i += 1
            continue
        if c not in _MDV2_RESERVED:
            push_char(c)
            i += 1
            continue
        top_type = stack[-1].type if stack else None
        if c == "_" and top_type == "underline" and text.startswith("__", i):
            close(stack.pop())
            i += 2
            continue
        if (
            (c == "_" and top_type == "italic")
            or (c == "*" and top_type == "bold")
            or (c == "~" and top_type == "strikethrough")
        ):
            close(stack.pop())
            i += 1
            continue
        if c == "|" and top_type == "spoiler" and text.startswith("||", i):
            close(stack.pop())
            i += 2
            continue
        if c == "]" and top_type == "text_link":
            top = stack.pop()
            i += 1
            url = ""
            if i < n and text[i] == "(":
                j = i + 1
                chars: list[str] = []
                while j < n and text[j] != ")":
                    if text[j] == "\\" and j + 1 < n and text[j + 1] in ")\\":
                        j += 1
                    chars.append(text[j])
                    j += 1
                if j >= n:
                    raise ParseError(
                        f"Can't find end of a URL at byte offset {_byte_offset(text, i + 1)}"
                    )
                url = "".join(chars)
                i = j + 1
            else:
                url = "".join(out[top.extra.pop("out_len") :]) if "out_len" in top.extra else ""
            top.extra.pop("out_len", None)
            checked = _checked_link(url)
            if checked is not None:
                top.extra["url"] = checked
                close(top)
            continue
        byte_begin = _byte_offset(text, i)
        if c == "_":
            kind, step = ("underline", 2) if text.startswith("__", i) else ("italic", 1)
            stack.append(_MdOpen(kind, u16, byte_begin))
            i += step
        elif c == "*":
            stack.append(_MdOpen("bold", u16, byte_begin))
            i += 1
        elif c == "~":
            stack.append(_MdOpen("strikethrough", u16, byte_begin))
            i += 1
        elif c == "|" and text.startswith("||", i):
            stack.append(_MdOpen("spoiler", u16, byte_begin))
            i += 2
        elif c == "[":
            stack.append(_MdOpen("text_link", u16, byte_begin, extra={"out_len": len(out)}))
            i += 1
        elif c == "`":
            if text.startswith("```", i):
                j = i + 3
                while j < n and 33 <= ord(text[j]) <= 126:
                    j += 1
                extra: dict[str, Any] = {}
                if j < n and text[j] == "\n" and j > i + 3:
                    extra["language"] = text[i + 3 : j]
                    i = j + 1
                else:
                    i += 3
                    if i < n and text[i] == "\n":
                        i += 1
                stack.append(_MdOpen("pre", u16, byte_begin, extra=extra))
            else:
                stack.append(_MdOpen("code", u16, byte_begin))
                i += 1
        elif c == ">" and line_start:
            if quote_start is None:
                quote_start = u16
            i += 1
        else:
            raise ParseError(
                f"Character '{c}' is reserved and must be escaped with the preceding '\\'"
            )
    if stack:
        top = stack[-1]
        name = _TYPE_NAMES.get(top.type, top.type)
        if top.type == "pre" and top.extra.get("language"):
            name = "PreCode"
        raise ParseError(f"Can't find end of {name} entity at byte offset {top.byte_begin}")
    if quote_start is not None:
        entities.append({"type": "blockquote", "offset": quote_start, "length": u16 - quote_start})
    return "".join(out), sort_entities([e for e in entities if e["length"] > 0])


def parse_markdown(text: str) -> tuple[str, list[Entity]]:
    """Legacy ``Markdown``: ``*bold*``, ``_italic_``, ```code```, ```` ```pre``` ````, ``[t](url)``;
    ``\\`` escapes ``_*`[`` outside entities; entities cannot nest."""
    n = len(text)
    out: list[str] = []
    u16 = 0
    entities: list[Entity] = []
    i = 0
    ends = {"*": "bold", "_": "italic", "`": "code"}
    while i < n:
        c = text[i]
        if c == "\\" and i + 1 < n and text[i + 1] in "_*`[":
            out.append(text[i + 1])
            u16 += 1
            i += 2
            continue
        if c not in "_*`[":
            out.append(c)
            u16 += _units(c)
            i += 1
            continue
        begin = i
        if c == "[":
            close_at = text.find("](", i + 1)
            end = text.find(")", close_at + 2) if close_at != -1 else -1
            if end == -1:
                raise ParseError(
                    "Can't find end of the entity starting at byte offset "
                    f"{_byte_offset(text, begin)}"
                )
            label = text[i + 1 : close_at]
            url = _checked_link(text[close_at + 2 : end])
            if label and url is not None:
                entities.append(
                    {"type": "text_link", "offset": u16, "length": utf16_len(label), "url": url}
                )
            out.append(label)
            u16 += utf16_len(label)
            i = end + 1
            continue
        marker = "```" if text.startswith("```", i) else c
        end = text.find(marker, i + len(marker))
        if end == -1:
            raise ParseError(
                f"Can't find end of the entity starting at byte offset {_byte_offset(text, begin)}"
            )
        inner = text[i + len(marker) : end]
        entity: Entity = {"type": "pre" if marker == "```" else ends[c], "offset": u16}
        if marker == "```":
            first, nl, rest = inner.partition("\n")
            if nl and first and " " not in first:
                entity["language"] = first
                inner = rest
        entity["length"] = utf16_len(inner)
        if inner:
            entities.append(entity)
        out.append(inner)
        u16 += utf16_len(inner)
        i = end + len(marker)
    return "".join(out), sort_entities(entities)


# ------------------------------------------------------------------- server-side post-processing

_TRIM = " \t\r\n\v\f\u00a0\u2000\u2001\u2002\u2003\u2028\u2029\u3000"


def trim_text(text: str, entities: list[Entity]) -> tuple[str, list[Entity]]:
    """Strip leading/trailing whitespace like the server's fix_formatted_text, shifting and
    clipping entities and dropping the ones left empty. (Approximation: TDLib keeps leading
    whitespace covered by some entity types; this always strips.)"""
    stripped_left = text.lstrip(_TRIM)
    lead = utf16_len(text) - utf16_len(stripped_left)
    result = stripped_left.rstrip(_TRIM)
    total = utf16_len(result)
    fixed: list[Entity] = []
    for entity in entities:
        start = max(entity["offset"] - lead, 0)
        end = min(entity["offset"] + entity["length"] - lead, total)
        if end > start:
            fixed.append({**entity, "offset": start, "length": end - start})
    return result, sort_entities(fixed)


_COMMAND_RE = re.compile(r"(?<![\w/<>])/[a-zA-Z0-9_]{1,64}(?:@[a-zA-Z0-9_]{3,32})?(?![\w/<>])")
_MENTION_RE = re.compile(r"(?<!\w)@[a-zA-Z0-9_]{2,32}(?!\w)")
_URL_RE = re.compile(r"(?<![\w@])https?://[^\s<>\"]+[^\s<>\".,;:!?)\]'}]", re.IGNORECASE)
_HASHTAG_RE = re.compile(r"(?<![\w#])#\w*[^\W\d_]\w*(?![\w#])")


def detect_entities(text: str, existing: list[Entity] | None = None) -> list[Entity]:
    """The entities Telegram finds by itself in any message text: bot commands, @mentions, URLs,
    hashtags; never inside code/pre/text links nor overlapping each other. (Subset of TDLib's
    find_entities: no e-mails, cashtags, phone numbers or bare domains.)"""
    blocked: list[tuple[int, int]] = [
        (e["offset"], e["offset"] + e["length"])
        for e in existing or []
        if e["type"] in ("code", "pre", "text_link", "custom_emoji", "text_mention")
    ]
    # Character index -> UTF-16 offset.
    prefix = [0]
    for ch in text:
        prefix.append(prefix[-1] + _units(ch))
    found: list[Entity] = []
    for kind, regex in (
        ("bot_command", _COMMAND_RE),
        ("url", _URL_RE),
        ("mention", _MENTION_RE),
        ("hashtag", _HASHTAG_RE),
    ):
        for match in regex.finditer(text):
            start, end = prefix[match.start()], prefix[match.end()]
            if any(start < b and a < end for a, b in blocked):
                continue
            blocked.append((start, end))
            found.append({"type": kind, "offset": start, "length": end - start})
    return found
