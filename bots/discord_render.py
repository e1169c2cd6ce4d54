"""Render a model's Markdown answer as Discord message content.

Discord renders Markdown itself, so the text goes out as the model wrote it; only the syntax
that would address people or things is defused (see below).
"""

from __future__ import annotations

import re

from rtxrelay.core.paging import fenced_lines

__all__ = ["to_discord_markdown"]

# Discord renders Markdown itself, so model text goes out as written, except for the syntax
# that addresses people or things: @everyone/@here and <@user>, <@&role>, <#channel>,
# </command:id>. allowed_mentions=none already stops every ping; this also stops the text from
# *looking* like a mention. Substitutes are one code point each, so the length (Discord counts
# code points) and therefore the paging are unchanged. Code is left alone: Discord shows
# mention syntax literally there.
_DISCORD_MENTION = re.compile(r"@(?=everyone|here)|<(?=[@#/])", re.IGNORECASE)
_CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1")


def _defuse(text: str) -> str:
    return _DISCORD_MENTION.sub(lambda m: "\uff20" if m.group() == "@" else "\u2039", text)


def to_discord_markdown(markdown: str) -> str:
    """Model Markdown → Discord message content: same text and length, mentions defused
    outside code blocks and code spans."""
    if "@" not in markdown and "<" not in markdown:
        return markdown
    out: list[str] = []
    for line, in_code in fenced_lines(markdown):
        if in_code or ("@" not in line and "<" not in line):
            out.append(line)
            continue
        parts: list[str] = []
        last = 0
        for span in _CODE_SPAN.finditer(line):
            parts.append(_defuse(line[last:span.start()]))
            parts.append(span.group())
            last = span.end()
        parts.append(_defuse(line[last:]))
        out.append("".join(parts))
    return "\n".join(out)
