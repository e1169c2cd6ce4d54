"""Render a model's Markdown answer for Telegram: safe HTML, or plain text as a fallback.

Why a real parser. Model output is arbitrary text: half-finished ``**bold`` while streaming,
``snake_case_names``, ``2 * 3 * 4``, code containing ``<`` and ``&``, HTML the model
"helpfully" writes, ``[text](javascript:…)``. Regex converters get nesting and these corner
cases wrong, and every mistake is a 400 "can't parse entities" (or markup injection). So we
parse with markdown-it-py (executablebooks; the CommonMark-compliant parser rich and
MyST use; pure Python, one small dependency, mdurl) and only write the Telegram renderer over
its syntax tree. CommonMark already gives the behaviour we want for free: unbalanced ``*``,
``_``, `` ` ``, ``[`` stay literal, ``snake_case_words`` are not italicised, and an
unterminated fence runs to the end of the text.

Parser configuration (see :func:`_build_parser`):

* ``html`` off: model HTML is text, escaped like everything else.
* ``entity`` off: ``&amp;`` written by the model must show as ``&amp;``, not ``&``.
* ``reference`` off: ``[1]: http://…`` lines would otherwise vanish from the output.
* ``strikethrough`` on (``~~x~~``); tables stay off, so a table arrives as its ``|`` lines.
* Links are only links for ``http(s)://`` URLs (``validateLink``); any other destination
  leaves the whole ``[text](dest)`` literal. URLs are not percent-normalised (we only escape
  them), so what the user sees on hover is what the model wrote.

Telegram specifics the renderer respects:

* Only tags Telegram's HTML mode accepts are emitted: ``b i s code pre a blockquote``. Every
  text character is escaped (``& < >``, plus ``"`` in attributes), so output is always
  well-formed and properly nested.
* Entities that Telegram does not allow to nest are flattened rather than emitted: no
  ``<code>`` inside a link, no blockquote inside a blockquote, no ``<pre>`` inside a
  blockquote (the quote's tags are dropped, its text kept), no ``<b>`` inside ``<b>``.
* Telegram's 4096 limit counts the text *after* entity parsing. The visible text we emit is
  never longer than the Markdown source (markers are dropped, blocks are separated by at most
  as many newlines as the source had, bullets are replaced one-for-one by ``•``), so paging
  the source with :mod:`rtxrelay.core.paging` bounds the rendered message too. The same holds
  for :func:`to_plain_text`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from markdown_it import MarkdownIt
from markdown_it.tree import SyntaxTreeNode

__all__ = ["to_plain_text", "to_telegram_html"]

_HTTP_URL = re.compile(r"https?://[^\s<>\x00-\x1f\x7f]+", re.IGNORECASE)
_LANG = re.compile(r"[A-Za-z0-9_+#.\-]{1,32}")
_INLINE_TAGS = {"em": "i", "strong": "b", "s": "s"}
_BULLET = "•"
_HR = "———"  # three characters: never longer than the source's thematic break (≥ 3 chars)


def _is_http_url(url: str) -> bool:
    return _HTTP_URL.fullmatch(url) is not None


def _keep_url(url: str) -> str:
    return url


def _build_parser() -> MarkdownIt:
    md = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False})
    md.enable("strikethrough")
    md.disable(["entity", "reference", "html_block", "html_inline"])
    # Instance attributes shadow the methods markdown-it calls for every link and autolink
    # (its documented way to customise them); mypy only sees methods being replaced.
    md.validateLink = _is_http_url  # type: ignore[method-assign]  # see above
    md.normalizeLink = _keep_url  # type: ignore[method-assign]  # see above
    md.normalizeLinkText = _keep_url  # type: ignore[method-assign,assignment]  # see above
    return md


_MD = _build_parser()


def _esc(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _esc_attr(text: str) -> str:
    return _esc(text).replace('"', "&quot;")


def _normalize(markdown: str) -> str:
    # What markdown-it's own "normalize" step does; done up front so source line numbers
    # (token maps) index the same lines we look at.
    return markdown.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "\ufffd")


@dataclass(frozen=True, slots=True)
class _Ctx:
    in_quote: bool = False  # inside a blockquote (Telegram can't nest them)
    list_depth: int = 0


class _Renderer:
    """Walks markdown-it's syntax tree. ``html=False`` gives the plain-text rendering."""

    def __init__(self, source: str, html: bool) -> None:
        self.lines = source.split("\n")
        self.html = html

    # -- blocks ---------------------------------------------------------------------------

    def _blank_line(self, i: int) -> bool:
        return 0 <= i < len(self.lines) and not self.lines[i].strip(" \t>")

    def _sep(self, prev: SyntaxTreeNode, node: SyntaxTreeNode) -> str:
        """One newline between blocks, two only if the source had a blank line there, so
        the visible text never gains characters over the source."""
        if prev.map is None or node.map is None:
            return "\n"
        if node.map[0] > prev.map[1] or self._blank_line(prev.map[1] - 1):
            return "\n\n"
        return "\n"

    def blocks(self, nodes: Sequence[SyntaxTreeNode], ctx: _Ctx) -> str:
        out: list[str] = []
        prev: SyntaxTreeNode | None = None
        for node in nodes:
            text = self.block(node, ctx)
            if not text:
                continue
            if prev is not None:
                out.append(self._sep(prev, node))
            out.append(text)
            prev = node
        return "".join(out)

    def block(self, node: SyntaxTreeNode, ctx: _Ctx) -> str:
        t = node.type
        if t == "paragraph":
            return self.inline_children(node, frozenset())
        if t == "heading":
            inner = self.inline_children(node, frozenset({"b"}))
            return f"<b>{inner}</b>" if self.html and inner else inner
        if t in ("fence", "code_block"):
            return self.code_block(node)
        if t == "blockquote":
            inner = self.blocks(node.children, _Ctx(True, ctx.list_depth))
            wrap = self.html and inner and not ctx.in_quote and not _has_code_block(node)
            return f"<blockquote>{inner}</blockquote>" if wrap else inner
        if t in ("bullet_list", "ordered_list"):
            return self.blocks(node.children, _Ctx(ctx.in_quote, ctx.list_depth + 1))
        if t == "list_item":
            return self.list_item(node, ctx)
        if t == "hr":
            return _HR
        if node.children:
            return self.blocks(node.children, ctx)
        return self.text(node.content)

    def list_item(self, node: SyntaxTreeNode, ctx: _Ctx) -> str:
        marker = _BULLET if node.markup in "-*+" else f"{node.info}{node.markup}"
        indent = ""
        parent_item = node.parent.parent if node.parent is not None else None
        nested = ctx.list_depth > 1
        same_line = (
            parent_item is not None
            and parent_item.type == "list_item"
            and parent_item.map is not None
            and node.map is not None
            and parent_item.map[0] == node.map[0]
        )
        if nested and not same_line and node.map is not None:
            # Indent nested bullets for readability, but never by more characters than the
            # source line had in front of its marker (keeps visible length <= source).
            line = self.lines[node.map[0]]
            room = len(line) - len(line.lstrip(" \t>"))
            indent = " " * min(2 * (ctx.list_depth - 1), room)
        body = self.blocks(node.children, ctx)
        return f"{indent}{self.text(marker)} {body}" if body else f"{indent}{self.text(marker)}"

    def code_block(self, node: SyntaxTreeNode) -> str:
        content = node.content[:-1] if node.content.endswith("\n") else node.content
        words = node.info.split() if node.type == "fence" else []
        lang = words[0] if words else ""
        if not self.html:
            if node.type != "fence":
                return content
            # Keep the fence lines so code stays recognisable in plain text; add the closer
            # only if the source had one (an unterminated fence must not grow the text).
            closed = node.map is not None and self._closes(node)
            parts = [node.markup + lang, *([content] if content else [])]
            return "\n".join(parts + ([node.markup] if closed else []))
        if not content:
            return ""  # an empty <pre> is an empty entity; show nothing rather than risk a 400
        if lang and _LANG.fullmatch(lang):
            return f'<pre><code class="language-{_esc_attr(lang)}">{_esc(content)}</code></pre>'
        return f"<pre><code>{_esc(content)}</code></pre>"

    def _closes(self, node: SyntaxTreeNode) -> bool:
        """Whether the source fence had a closing line. Errs towards "no": then plain text
        just omits the closer, which can only make it shorter than the source."""
        assert node.map is not None
        last = node.map[1] - 1
        if node.map[1] - node.map[0] != node.content.count("\n") + 2 or last >= len(self.lines):
            return False
        line = self.lines[last].lstrip(" >")  # a fence in a blockquote keeps its ">" prefix
        return set(line.rstrip()) == {node.markup[0]} and len(line.rstrip()) >= len(node.markup)

    # -- inline ---------------------------------------------------------------------------

    def text(self, s: str) -> str:
        s = _defuse_mentions(s)
        return _esc(s) if self.html else s

    def inline_children(self, node: SyntaxTreeNode, tags: frozenset[str]) -> str:
        parts: list[str] = []
        for child in node.children:
            parts.append(self.inline(child, tags))
        return "".join(parts)

    def inline(self, node: SyntaxTreeNode, tags: frozenset[str]) -> str:
        t = node.type
        if t == "inline":
            return self.inline_children(node, tags)
        if t in ("text", "text_special"):
            return self.text(node.content)
        if t in ("softbreak", "hardbreak"):
            return "\n"
        if t == "code_inline":
            if self.html and "a" not in tags:
                return f"<code>{_esc(node.content)}</code>"
            return self.text(node.content)
        if t in _INLINE_TAGS:
            tag = _INLINE_TAGS[t]
            inner = self.inline_children(node, tags | {tag})
            if self.html and inner and tag not in tags:
                return f"<{tag}>{inner}</{tag}>"
            return inner
        if t in ("link", "image"):
            href = str(node.attrs.get("href" if t == "link" else "src", ""))
            inner = self.inline_children(node, tags | {"a"})
            if not self.html:
                if inner and inner != href:
                    return f"{inner} ({href})"
                return href
            if not inner:
                inner = _esc(href)
            if "a" in tags:  # cannot happen in CommonMark; never nest links regardless
                return inner
            link = f'<a href="{_esc_attr(href)}">{_esc(href)}</a>'
            # Model text must not hide where a link goes ("[nvidia.com](http://evil…)"): the
            # target is shown whenever the text is something else.
            return link if inner == _esc(href) else f"{inner} ({link})"
        if node.children:
            return self.inline_children(node, tags)
        return self.text(node.content)


# "@name" in model output would become a real mention (a notification to that person).
# U+FF20 looks alike, is one UTF-16 unit like "@" (paging is unchanged) and mentions nobody.
# Addresses ("a@b.com") keep their "@": a word character before it.
_MENTION = re.compile(r"(?<![\w@])@(?=\w)")


def _defuse_mentions(text: str) -> str:
    return _MENTION.sub("\uff20", text) if "@" in text else text


def _has_code_block(node: SyntaxTreeNode) -> bool:
    return any(n.type in ("fence", "code_block") for n in node.walk())


def _render(markdown: str, html: bool) -> str:
    source = _normalize(markdown)
    if not source.strip():
        return ""
    tree = SyntaxTreeNode(_MD.parse(source))
    out = _Renderer(source, html).blocks(tree.children, _Ctx())
    if out.strip():
        return out
    # Nothing visible (e.g. just "```"): send the source itself so the message is never
    # empty, which Telegram would reject. It is no longer than the source, by construction.
    return _esc(source.strip()) if html else source.strip()


def to_telegram_html(markdown: str) -> str:
    """Markdown → HTML for Telegram's ``parse_mode="HTML"``.

    Always well-formed, uses only Telegram's tags, escapes all model text; the visible text
    (after Telegram parses entities) is never longer than ``markdown``. Empty or whitespace
    input gives ``""`` (don't send it).
    """
    return _render(markdown, html=True)


def to_plain_text(markdown: str) -> str:
    """Markdown → readable plain text: the fallback when Telegram rejects the HTML, and a
    safe interim frame. Markers are dropped, links become ``text (url)``, code fences are kept
    as lines. Never longer than ``markdown``.
    """
    return _render(markdown, html=False)
