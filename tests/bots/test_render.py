"""Tests for bots/telegram_render.py and bots/discord_render.py: Telegram HTML must be
well-formed, injection-free, and never
visibly longer than its Markdown source."""

from __future__ import annotations

import html
import re
from html.parser import HTMLParser

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rtxrelay.bots.discord_render import to_discord_markdown
from rtxrelay.bots.telegram_render import to_plain_text, to_telegram_html
from rtxrelay.core.paging import LengthUnit, split_pages, text_length

# --- a strict checker for what we send with parse_mode="HTML" ---------------------------

ALLOWED = {"b", "i", "u", "s", "code", "pre", "a", "blockquote", "tg-spoiler"}
# Every byte of the output must be one of: an allowed tag with quoted attributes, one of the
# four entities we emit, or text with no markup characters at all.
_RAW_TOKEN = re.compile(r'<(/?)([a-z-]+)((?:\s+[a-z-]+="[^"<>]*")*)>|&(?:lt|gt|amp|quot);|[^<>&]+')


class StrictTelegramHTML(HTMLParser):
    """Rejects unknown tags, bad attributes, unbalanced/misnested tags and entity nesting
    that Telegram forbids; collects the visible text (what Telegram counts and shows)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=False)
        self.stack: list[str] = []
        self.visible: list[str] = []
        self.stream: list[str] = []  # visible text plus hrefs and code languages
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        assert tag in ALLOWED, f"tag <{tag}> not allowed"
        assert tag not in self.stack or tag in {"b", "i", "s", "u"}, f"<{tag}> nested"
        assert not {"code", "pre"} & set(self.stack) or (tag == "code" and self.stack[-1] == "pre")
        names = [k for k, _ in attrs]
        if tag == "a":
            assert names == ["href"]
            href = attrs[0][1] or ""
            assert re.match(r"https?://", href, re.IGNORECASE), href
            assert "code" not in self.stack
            self.hrefs.append(href)
        elif tag == "code" and attrs:
            assert self.stack and self.stack[-1] == "pre"
            assert names == ["class"] and (attrs[0][1] or "").startswith("language-")
            self.stream.append((attrs[0][1] or "")[len("language-") :])
        else:
            assert not attrs, f"<{tag}> must not have attributes"
        if tag == "pre":
            assert "blockquote" not in self.stack and "a" not in self.stack
        self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        assert self.stack and self.stack[-1] == tag, f"unbalanced </{tag}> in {self.stack}"
        self.stack.pop()
        if tag == "a":
            self.stream.append(self.hrefs.pop())

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        raise AssertionError(f"self-closing <{tag}/>")

    def handle_data(self, data: str) -> None:
        assert "<" not in data and ">" not in data and "&" not in data
        self.visible.append(data)
        self.stream.append(data)

    def handle_entityref(self, name: str) -> None:
        assert name in {"lt", "gt", "amp", "quot"}, name
        ch = html.unescape(f"&{name};")
        self.visible.append(ch)
        self.stream.append(ch)

    def handle_charref(self, name: str) -> None:
        raise AssertionError("we never emit numeric character references")

    def handle_comment(self, data: str) -> None:
        raise AssertionError("comment in output")

    def handle_decl(self, decl: str) -> None:
        raise AssertionError("declaration in output")

    def handle_pi(self, data: str) -> None:
        raise AssertionError("processing instruction in output")


def check(out: str) -> StrictTelegramHTML:
    pos = 0
    for m in _RAW_TOKEN.finditer(out):
        assert m.start() == pos, f"stray markup at {pos}: {out[pos : pos + 20]!r}"
        pos = m.end()
    assert pos == len(out), f"stray markup at {pos}: {out[pos : pos + 20]!r}"
    p = StrictTelegramHTML()
    p.feed(out)
    p.close()
    assert not p.stack, f"unclosed tags {p.stack}"
    return p


def visible(out: str) -> str:
    return "".join(check(out).visible)


# --- concrete behaviour -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("md", "expected"),
    [
        ("**bold** and __bold__", "<b>bold</b> and <b>bold</b>"),
        ("*it* and _it_", "<i>it</i> and <i>it</i>"),
        ("snake_case_word and __init__.py", "snake_case_word and <b>init</b>.py"),
        ("~~gone~~", "<s>gone</s>"),
        ("`a < b && c`", "<code>a &lt; b &amp;&amp; c</code>"),
        ("# Title", "<b>Title</b>"),
        ("## **Title**", "<b>Title</b>"),
        ("> quoted\n> text", "<blockquote>quoted\ntext</blockquote>"),
        ("- a\n- b\n* c", "• a\n• b\n• c"),
        ("1. a\n2. b", "1. a\n2. b"),
        (
            "[site](https://example.com/a?b=1&c=2)",
            'site (<a href="https://example.com/a?b=1&amp;c=2">'
            "https://example.com/a?b=1&amp;c=2</a>)",
        ),
        ("<https://example.com>", '<a href="https://example.com">https://example.com</a>'),
        ("para one\n\npara two", "para one\n\npara two"),
        ("line one\nline two", "line one\nline two"),
    ],
)
def test_supported_markup(md: str, expected: str) -> None:
    out = to_telegram_html(md)
    check(out)
    assert out == expected


def test_fenced_code_block_with_and_without_language() -> None:
    md = "```python\nif a < b & c:\n    print('<b>')\n```\n\n```\nplain\n```"
    out = to_telegram_html(md)
    check(out)
    assert out == (
        '<pre><code class="language-python">if a &lt; b &amp; c:\n'
        "    print('&lt;b&gt;')</code></pre>\n\n<pre><code>plain</code></pre>"
    )


def test_unterminated_fence_renders_rest_as_code() -> None:
    out = to_telegram_html("Here:\n```js\nlet x = 1 < 2;\n**not bold**")
    check(out)
    assert out == (
        'Here:\n<pre><code class="language-js">let x = 1 &lt; 2;\n**not bold**</code></pre>'
    )


def test_weird_language_gets_no_class() -> None:
    out = to_telegram_html('```"><script>\nx\n```')
    check(out)
    assert out == "<pre><code>x</code></pre>"


@pytest.mark.parametrize(
    "hostile",
    [
        "<b>x</b>",
        "&amp; &lt; &#60; &quot;",
        "<script>alert(1)</script>",
        '<a href="https://evil.example">click</a>',
        '<pre><code class="language-x">',
        "</b></i></code></pre>",
        "<!-- comment --> <?php ?> <!DOCTYPE html>",
        "<tg-spoiler>x</tg-spoiler>",
    ],
)
def test_model_html_arrives_as_literal_text(hostile: str) -> None:
    out = to_telegram_html(hostile)
    assert visible(out) == hostile
    assert "<a " not in out and "<b>" not in out


@pytest.mark.parametrize(
    "md",
    [
        "[x](javascript:alert(1))",
        "[x](mailto:a@b.c)",
        "[x](tg://user?id=1)",
        "[x](data:text/html,<b>)",
        "[x](/relative)",
        "![img](file:///etc/passwd)",
    ],
)
def test_non_http_links_stay_literal(md: str) -> None:
    out = to_telegram_html(md)
    assert "<a" not in out
    assert visible(out) == md


def test_link_attribute_is_escaped() -> None:
    out = to_telegram_html('[x](https://e.com/?q="a"&r=1)')
    check(out)
    assert 'href="https://e.com/?q=&quot;a&quot;&amp;r=1"' in out
    # A URL with < or > is not one we link at all; it stays literal text.
    assert "<a" not in to_telegram_html("[x](https://e.com/<b>)")


@pytest.mark.parametrize(
    "md",
    ["**unclosed", "*a", "_a", "`code", "[text", "[text](", "~~s", "2 * 3 * 4", "a_b_c", "a * b"],
)
def test_unbalanced_markers_stay_literal(md: str) -> None:
    assert visible(to_telegram_html(md)) == md


def test_telegram_nesting_rules_are_respected() -> None:
    # No code inside a link, no nested blockquote, no pre inside a blockquote, no b in b.
    assert to_telegram_html("[`x`](https://e.com)") == (
        'x (<a href="https://e.com">https://e.com</a>)')
    assert to_telegram_html("> a\n> > b") == "<blockquote>a\nb</blockquote>"
    out = to_telegram_html("> ```\n> code\n> ```")
    check(out)
    assert "<blockquote>" not in out and "<pre>" in out
    assert to_telegram_html("# a **b**") == "<b>a b</b>"


def test_table_is_kept_as_plain_lines() -> None:
    md = "| a | b |\n|---|---|\n| 1 | 2 |"
    assert to_telegram_html(md) == md


def test_empty_and_blank() -> None:
    assert to_telegram_html("") == ""
    assert to_telegram_html(" \n\t ") == ""
    assert to_plain_text("") == ""


def test_nothing_visible_falls_back_to_source() -> None:
    # A lone fence would render as an empty code block; Telegram rejects empty messages.
    assert visible(to_telegram_html("```")) == "```"


def test_plain_text() -> None:
    md = (
        "# Title\nSome **bold** <b>x</b> and [a link](https://e.com).\n\n"
        "- one\n- two\n\n```py\nprint(1)\n```"
    )
    assert to_plain_text(md) == (
        "Title\nSome bold <b>x</b> and a link (https://e.com).\n\n"
        "• one\n• two\n\n```py\nprint(1)\n```"
    )


@pytest.mark.parametrize(
    "md",
    # Found by hypothesis: a tab-indented "closer" does not close (4 columns); a fence at the
    # very end of the text is unterminated. Adding a closer would make the text longer.
    ["```py\nx = 1", "```py\n`", "~~~~\n\t~~~~\n"],
)
def test_plain_text_keeps_unterminated_fence_unclosed(md: str) -> None:
    assert to_plain_text(md) == md.strip()


# --- properties ---------------------------------------------------------------------------

_MARKUP = set("*_~`#>[]()!\\-+=|<\"'")
_FENCE_INFO = re.compile(r"^([ \t>*+\-0-9.)]*)(`{3,}|~{3,})([^\n]*)$", re.MULTILINE)
_LINK_TITLE = re.compile(r'(\(https?://[^\s)]*)\s+"[^"]*"')


def _expected_stream(md: str) -> str:
    """Input characters that must survive rendering, in order (markup and whitespace are
    allowed to disappear; so are fence info strings and link titles, by design)."""
    md = md.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "\ufffd")
    md = _FENCE_INFO.sub(r"\1\2", md)
    md = _LINK_TITLE.sub(r"\1", md)
    return "".join(ch for ch in md if ch not in _MARKUP and not ch.isspace())


def _undefused(text: str) -> str:
    """The text with defused mentions ("＠name") read as what the model wrote."""
    return text.replace("\uff20", "@")


def _is_subsequence(needle: str, hay: str) -> bool:
    it = iter(hay)
    return all(ch in it for ch in needle)


# fmt: off
_PIECES = [
    "word", "a", "b", "snake_case", " ", " ", "\n", "\n\n", "\t", "*", "**", "_", "__", "`",
    "```", "```python\n", "~~~\n", "~~", "[", "]", "(", ")", "[link](https://e.com/x)",
    "![i](http://e.com/i.png)", "<https://e.com>", "<b>", "</b>", "<script>", "&amp;", "&",
    "<", ">", "> ", "# ", "- ", "1. ", "    ", "\\", '"', "'", "@everyone", "😀", "👨‍👩‍👧", "中文",
    "e\u0301", "|", "---", "\r\n", "\x00", "=",
]
# fmt: on
markdownish = st.lists(st.one_of(st.sampled_from(_PIECES), st.text(max_size=5)), max_size=60).map(
    "".join
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(markdownish)
def test_html_is_well_formed_and_loses_no_text(md: str) -> None:
    out = to_telegram_html(md)
    p = check(out)
    vis = "".join(p.visible)
    seen = _undefused("".join(p.stream))
    assert _is_subsequence(_undefused(_expected_stream(md)), seen), (md, out)
    for unit in LengthUnit:
        assert text_length(vis, unit) <= text_length(md, unit), (md, out)


@settings(max_examples=200, deadline=None)
@given(markdownish)
def test_plain_text_is_never_longer_and_keeps_text(md: str) -> None:
    out = to_plain_text(md)
    for unit in LengthUnit:
        assert text_length(out, unit) <= text_length(md, unit), (md, out)
    assert _is_subsequence(_undefused(_expected_stream(md)), _undefused(out)), (md, out)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(_PIECES), max_size=400).map("".join), st.integers(16, 200))
def test_rendered_pages_fit_the_limit(md: str, limit: int) -> None:
    for page in split_pages(md, limit, LengthUnit.UTF16):
        out = to_telegram_html(page)
        assert text_length(visible(out), LengthUnit.UTF16) <= limit
        assert text_length(to_plain_text(page), LengthUnit.UTF16) <= limit


# -- Discord --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("source", "want"), [
    ("hi @everyone and @HERE", "hi \uff20everyone and \uff20HERE"),
    ("<@123> <@!123> <@&5> <#7> </ask:1>",
     "\u2039@123> \u2039@!123> \u2039@&5> \u2039#7> \u2039/ask:1>"),
    ("a < b, mail me@example.com, <:emoji:1>", "a < b, mail me@example.com, <:emoji:1>"),
    ("`@everyone` and ``<@1>``", "`@everyone` and ``<@1>``"),
    ("```\n@everyone <@1>\n```\n@here", "```\n@everyone <@1>\n```\n\uff20here"),
])
def test_discord_markdown_defuses_mentions_outside_code(source: str, want: str) -> None:
    assert to_discord_markdown(source) == want


@given(st.text(alphabet=st.sampled_from(list("@<>#/&`\n everyonehr1")), max_size=200))
@settings(max_examples=300, deadline=None)
def test_discord_markdown_keeps_length_and_never_leaves_a_mention(text: str) -> None:
    out = to_discord_markdown(text)
    assert len(out) == len(text)  # paging measured the source; the message is the same size
    if "`" not in text:  # outside code nothing may still look like a mention
        assert "@everyone" not in out.lower() and "@here" not in out.lower()
        assert not re.search(r"<[@#/]", out)


@pytest.mark.parametrize(("md", "shown"), [
    ("ask @durov or @everyone", "ask \uff20durov or \uff20everyone"),
    ("mail me at a@b.com", "mail me at a@b.com"),
    ("**@admin** please", "<b>\uff20admin</b> please"),
    ("`@code` stays", "<code>@code</code> stays"),
])
def test_model_mentions_ping_nobody(md: str, shown: str) -> None:
    assert to_telegram_html(md) == shown
    # Plain text has no code entity to keep a mention inert, so there it is defused too.
    assert to_plain_text(md) == visible(shown).replace("@code", "\uff20code")


@pytest.mark.fault('15', 'model links show their target; mentions ping nobody')
def test_a_link_never_hides_where_it_goes(fault) -> None:
    html = to_telegram_html("see [nvidia.com](http://evil.example/x)")
    assert visible(html) == "see nvidia.com (http://evil.example/x)"
    assert to_plain_text("see [nvidia.com](http://evil.example/x)") == visible(html)
    same = to_telegram_html("<https://nvidia.com>")
    assert same == '<a href="https://nvidia.com">https://nvidia.com</a>'
    fault(kept=1)
