"""The local-path scrubber in backends/chatrtx/answer_html.py: each absolute local path, and
only it, becomes its file name (or ``‹path›``); the words around it come through byte for
byte, and no folder of it survives."""

from __future__ import annotations

import random
from dataclasses import dataclass
from urllib.parse import quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rtxrelay.backends.chatrtx import answer_html
from rtxrelay.backends.chatrtx.answer_html import (
    PATH_PLACEHOLDER,
    StreamingConverter,
    convert_answer,
    scrub_paths,
)
from tests.replica import fake_model

P = PATH_PLACEHOLDER
BOUNDED = settings(max_examples=200, deadline=None)

# -- what was observed (issue 11) ----------------------------------------------------------------


@pytest.mark.fault('1', 'paths in prose become file names, the words between kept')
def test_two_paths_in_one_sentence_keep_the_words_between_them(fault) -> None:
    text = r"Open C:\Temp\a.txt, then compare it with D:\b.txt before Friday."
    out = scrub_paths(text)
    assert out == "Open a.txt, then compare it with b.txt before Friday."
    fault(kept=1, leaked=out.count(":\\"))


def test_a_bare_drive_and_a_lone_backslash_are_prose() -> None:
    text = "Windows uses C:\\ as the system drive; type cd \\ to go to the root."
    assert scrub_paths(text) == text


@pytest.mark.fault('1', 'regex escapes in code survive the path scrubber')
def test_regex_escapes_in_code_survive(fault) -> None:
    block = "```python\npattern = re.compile('\\\\d+\\\\s')\n```"
    assert scrub_paths(block) == block
    span = "Match it with `\\\\d+\\\\s` or `\\d{2}/\\d{2}`."
    assert scrub_paths(span) == span
    fault(kept=1)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("see C:/Users/alice/Documents/plan.docx now", "see plan.docx now"),
        ("open file:///C:/Users/alice/My%20Notes.txt.", "open My Notes.txt."),
        ("logs in /home/alice/app/run.log today", "logs in run.log today"),
        ("on //nas/share/q3.xlsx.", "on q3.xlsx."),
        (r"copy C:\Temp\a.txt to \\nas\share\b.txt today", "copy a.txt to b.txt today"),
        ('<a href="file:///C:/Users/alice/notes.txt">notes</a>', '<a href="notes.txt">notes</a>'),
        (r"%USERPROFILE%\Documents\x.docx", "x.docx"),
        (r"$env:APPDATA\Code\User\settings.json", "settings.json"),
        ("~/notes/todo.md and ~\\AppData\\x.ini", "todo.md and x.ini"),
        ("$HOME/.ssh/config, ${HOME}/bin/tool.sh", f"{P}, tool.sh"),  # config: no extension
        (r"C:\\Users\\alice\\x.txt", "x.txt"),  # escaped, as in a JSON or C string
        ("\\\\\\\\nas\\\\share\\\\x.txt", "x.txt"),
        (r"\\?\C:\Users\a\b.txt", "b.txt"),
        ("smb://nas/share/doc.pdf", "doc.pdf"),
        ("/Users/alice/Library/x.plist; /tmp/out.txt", "x.plist; out.txt"),
        ("PATH=/usr/bin:/home/alice/bin", f"PATH=/usr/bin:{P}"),
        ("mounted at /mnt/c/Users/alice/", f"mounted at {P}"),
    ],
)
def test_every_form_becomes_its_file_name(text: str, expected: str) -> None:
    assert scrub_paths(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"C:\Program Files\NVIDIA Corporation\ChatRTX\app.exe crashed", "app.exe crashed"),
        (r"C:\Users\John Smith\Desktop\a.pdf", "a.pdf"),
        (r'"C:\Users\bob\My Documents\quarterly plan.docx"', '"quarterly plan.docx"'),
        ('"C:/Program Files/My App" is it', f'"{P}" is it'),
        (r'"C:\Temp\a.txt is missing"', '"a.txt is missing"'),  # a quoted sentence
        (r"(see C:\Temp\a.txt)", "(see a.txt)"),
        (r"C:\Program Files (x86)\Steam\steam.exe", "steam.exe"),
        (r"it is C:\Temp\a.txt。Next", "it is a.txt。Next"),
        (r"it's 'C:\Users\O'Brien\x.txt'", "it's 'x.txt'"),
    ],
)
def test_spaces_quotes_and_punctuation(text: str, expected: str) -> None:
    assert scrub_paths(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"C:\Users\alice", P),
        (r"C:\Users\john.doe", P),  # a user name, even with a dot
        ("/home/alice.smith", P),
        ("C:\\Temp\\", P),
        (r"\\nas\team", P),
        (r"C:\Temp\a.txt and \\nas\share", f"a.txt and {P}"),
        ("~/.bashrc", ".bashrc"),
        (r"D:\b", P),
    ],
)
def test_folders_become_the_placeholder(text: str, expected: str) -> None:
    assert scrub_paths(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "and/or 1/2 3/4 km/h TCP/IP A/B 12/05/2024 24/7 50%/h ~5/10 ratio 3:4",
        r"LaTeX: a\b, \frac{1}{2}, x \\ y, \alpha\beta",
        r"regexes: \\bword\\b \\d\\w \\d+\\s \w+",
        "relative docs/x.md, src\\main.py, ./home/x, ../Users/y",
        "http://x.com/home/alice/y.txt https://h/C:/Users/a/b.txt ftp://h//nas/s/x",
        "routes /api/v1/users and /users/42/profile; system /etc/hosts /dev/null /usr/bin/env",
        "protocol-relative //cdn.example.com/lib/x.js; a // b; a//b",
        "roots alone: C:\\ D:/ ~/ \\\\nas //nas %USERPROFILE% $HOME /home /tmp",
        "the file: it, mailto:a@b.c, urn:x:y, 10:30/11:00, x:/ :/",
    ],
)
def test_no_false_positives(text: str) -> None:
    assert scrub_paths(text) == text


def test_in_code_only_paths_with_a_folder_are_scrubbed() -> None:
    code = (
        "```js\n"
        "x.match(/home/i); printf(\"a:\\n\"); cp ~/.bashrc C:\\x.ini %APPDATA%\\x.ini\n"
        "open('/home/alice/x.txt'); r\"C:\\Users\\alice\\y.txt\"; file:///C:/z.txt\n"
        "```\n"
        "and `C:\\Users\\alice\\z.txt` or `C:\\z.txt`"
    )
    assert scrub_paths(code) == (
        "```js\n"
        "x.match(/home/i); printf(\"a:\\n\"); cp ~/.bashrc C:\\x.ini %APPDATA%\\x.ini\n"
        "open('x.txt'); r\"y.txt\"; z.txt\n"
        "```\n"
        "and `z.txt` or `C:\\z.txt`"
    )


def test_prose_between_two_code_spans_has_prose_rules() -> None:
    # The closing backticks of a span open nothing: a folder between two spans is prose.
    assert scrub_paths(r"Run `a` on C:\bob then `b`.") == f"Run `a` on {P} then `b`."
    assert scrub_paths(r"`x` and `C:\y.txt`") == r"`x` and `C:\y.txt`"


def test_an_unclosed_fence_is_code_to_the_end() -> None:
    assert scrub_paths("```\nC:\\x.ini\n") == "```\nC:\\x.ini\n"
    assert scrub_paths("~~~\n~~~\nC:\\x.ini") == "~~~\n~~~\nx.ini"


# -- Chat with RTX's reference HTML ---------------------------------------------------------------


def test_the_0_2_href_references_become_file_names() -> None:
    raw = ('Answer.<br>Reference files:<br><a href="file:////C:\\Users\\me\\My Docs\\plan b.pdf">'
           'plan b.pdf</a><br><a href="file:////C:\\Users\\me\\x%20y.txt"></a>')
    converted = convert_answer(raw)
    assert converted.references == ("plan b.pdf", "x y.txt")
    assert converted.text == "Answer.\n\nReference files: plan b.pdf, x y.txt"


def test_a_model_file_link_stays_literal_without_its_path() -> None:
    raw = ('See <a href="file:///C:/Users/me/x.pdf">x</a> and '
           '<a href="https://example.com/a/b">docs</a>.<br>Reference files:<br>'
           '<a data-link="C:\\Users\\me\\Temp\\y.pdf">y.pdf</a>')
    converted = convert_answer(raw)
    assert converted.text == ('See <a href="x.pdf">x</a> and '
                              '<a href="https://example.com/a/b">docs</a>.\n\n'
                              'Reference files: y.pdf')
    assert converted.references == ("y.pdf",)


def test_streaming_sees_a_forward_slash_path_split_across_updates() -> None:
    text = "Your notes are in /home/alice/notes/todo.md and C:/Users/alice/x.txt, fine."
    converter = StreamingConverter()
    for end in range(1, len(text) + 1):
        converter.feed(text[:end])
        assert converter.text == convert_answer(text[:end], streaming=True).text
    assert converter.text == "Your notes are in todo.md and x.txt, fine."


# -- properties ---------------------------------------------------------------------------------

# Prose the scrubber must leave alone, tricky tokens included. No word here contains a folder
# name used below, so a surviving folder name can only come from a path.
PROSE_WORDS = (
    "the", "report", "is", "ready", "before", "Friday", "then", "compare", "it", "with", "a",
    "and/or", "1/2", "km/h", "TCP/IP", "12/05/2024", "3:4", "50%", "docs/x.md", "src/main.py",
    "A/B", "https://example.com/home/bob/a.txt", "/api/v1/users", "/etc/hosts", "~5/10",
    "C:\\", "\\", "~/", "//", "x:", "naïve", "😀", "—", "$5", "e.g.", "(see", "it)", "«ok»",
)
# Folder names: every word of three or more letters is a secret that must not survive.
PLAIN_FOLDERS = ("alice", "Temp_Docs", "1712345678", "proj-7", "AppData", "Desktop", "café",
                 "Projects.v2", "x86")
SPACED_FOLDERS = ("John Smith", "Program Files", "OneDrive - Contoso", "My Documents",
                  "Proj (x86)")
PLAIN_FILES = ("notes.txt", "report.pdf", "q3.xlsx", ".bashrc", "plan.docx", "archive.tar.gz",
               "résumé.pdf")
SPACED_FILES = ("my notes.txt", "Q3 plan.xlsx")


@dataclass(frozen=True)
class Root:
    text: str
    sep: str
    spaced: bool  # names with spaces are read between backslashes (or inside quotes)
    names: int = 0  # names inside it, after the root proper: ``team`` of ``\\\\nas\\team``


ROOTS = (
    Root("C:", "\\", True), Root("d:", "\\", True), Root("\\\\?\\C:", "\\", True),
    Root("%USERPROFILE%", "\\", True), Root("%ProgramFiles(x86)%", "\\", True),
    Root("$env:APPDATA", "\\", True), Root("\\\\nas\\team", "\\", True, 1),
    Root("\\\\fs01.corp.local\\share$", "\\", True, 1), Root("~", "\\", True),
    Root("C:", "\\\\", True), Root("\\\\\\\\nas\\\\team", "\\\\", True, 1),
    Root("C:", "/", False), Root("//nas/team", "/", False, 1), Root("~", "/", False),
    Root("$HOME", "/", False), Root("${HOME}", "/", False), Root("/home/alice", "/", False, 1),
    Root("/Users/alice", "/", False, 1), Root("/mnt/c/Users/alice", "/", False, 3),
    Root("/tmp", "/", False), Root("/var/folders", "/", False),
    Root("/run/media/alice", "/", False, 1),
)
URL_ROOTS = ("file:///C:/", "file:///home/alice/", "file://nas/team/", "smb://nas/team/",
             "file:///c:/Users/alice/")
SECRETS_IN_ROOTS = ("alice", "nas", "team", "fs01", "corp", "share$", "Users", "USERPROFILE",
                    "APPDATA", "ProgramFiles", "HOME", "folders", "media")


@dataclass(frozen=True)
class Inserted:
    text: str  # the path as the model wrote it
    replacement: str  # what must stand in its place
    folder_part: str  # its root and folders as written
    secrets: tuple[str, ...]  # words of its root and folders
    names: int  # names after its root (code wants two), or -1 for a URL (always scrubbed)


def _secrets(folders: list[str]) -> tuple[str, ...]:
    words = [w for folder in folders for w in folder.split() if len(w.strip("()")) >= 3]
    return (*words, *SECRETS_IN_ROOTS)


def last_folders(*, spaced: bool) -> st.SearchStrategy[str]:
    """Folders that can end a path: a dotted name there reads as a file name."""
    names = PLAIN_FOLDERS + SPACED_FOLDERS if spaced else PLAIN_FOLDERS
    return st.sampled_from([name for name in names if "." not in name])


@st.composite
def local_paths(draw: st.DrawFn, *, quoted: bool) -> Inserted:
    ending = draw(st.sampled_from(["file", "folder", "separator"]))
    if draw(st.booleans()):
        return draw(file_urls(ending, quoted=quoted))
    root = draw(st.sampled_from(ROOTS))
    spaced = root.spaced or quoted
    folder = st.sampled_from(PLAIN_FOLDERS + SPACED_FOLDERS if spaced else PLAIN_FOLDERS)
    folders = draw(st.lists(folder, min_size=1, max_size=3))
    if ending == "folder":
        # Unquoted, a last name ends at a space: a spaced folder there cannot be told from the
        # sentence going on.
        folders[-1] = draw(last_folders(spaced=quoted))
    folder_part = root.text + root.sep + root.sep.join(folders)
    names = root.names + len(folders)
    if ending == "file":
        name = draw(st.sampled_from(PLAIN_FILES + SPACED_FILES if quoted else PLAIN_FILES))
        text = folder_part + root.sep + name
        return Inserted(text, name, folder_part, _secrets(folders), names + 1)
    text = folder_part + (root.sep if ending == "separator" else "")
    return Inserted(text, P, folder_part, _secrets(folders), names)


@st.composite
def file_urls(draw: st.DrawFn, ending: str, *, quoted: bool) -> Inserted:
    folders = draw(st.lists(st.sampled_from(PLAIN_FOLDERS + SPACED_FOLDERS), min_size=1,
                            max_size=3))
    if ending == "folder":
        folders[-1] = draw(last_folders(spaced=True))  # percent-encoded, spaces are fine
    root = draw(st.sampled_from(URL_ROOTS))
    folder_part = root + "/".join(quote(f, safe="()$") for f in folders)
    if ending == "file":
        name = draw(st.sampled_from(PLAIN_FILES + SPACED_FILES))
        text = folder_part + "/" + quote(name)
        return Inserted(text, name, folder_part, _secrets(folders), -1)
    text = folder_part + ("/" if ending == "separator" else "")
    return Inserted(text, P, folder_part, _secrets(folders), -1)


# Around a path: what may come right before it and right after it.
CONTEXTS = (("", ""), ("", ","), ("", "."), ("", ";"), ("", "!"), ("", "?"), ("", ":"),
            ("(", ")"), ("", "\n"), ("\n", ""), ("«", "»"), ("", "。"))
QUOTES = (('"', '"'), ("'", "'"))

prose = st.lists(st.sampled_from(PROSE_WORDS), max_size=6).map(" ".join)


@st.composite
def prose_with_paths(draw: st.DrawFn) -> tuple[str, str, list[Inserted]]:
    """(text, expected output, the inserted paths)."""
    text = expected = draw(prose)
    paths: list[Inserted] = []
    for _ in range(draw(st.integers(1, 4))):
        quoted = draw(st.booleans())
        before, after = draw(st.sampled_from(QUOTES if quoted else CONTEXTS))
        path = draw(local_paths(quoted=quoted))
        tail = draw(prose)
        text += f" {before}{path.text}{after} {tail}"
        expected += f" {before}{path.replacement}{after} {tail}"
        paths.append(path)
    return text, expected, paths


@BOUNDED
@given(prose_with_paths())
def test_prose_survives_byte_for_byte_and_no_folder_does(
    case: tuple[str, str, list[Inserted]],
) -> None:
    text, expected, paths = case
    out = scrub_paths(text)
    assert out == expected
    for path in paths:
        assert path.folder_part not in out
        for secret in path.secrets:
            assert secret not in out, secret


CODE_WORDS = (
    "\\\\d+\\\\s", "\\\\bword\\\\b", 'r"\\d+\\.\\d*"', 'printf("%d\\n", x);', "a\\b",
    "x = a / b", "a // b", "a//b", 're.sub(r"\\s+", " ", s)', "C:\\x.txt", "~/.bashrc",
    "x.match(/home/i)", "%APPDATA%\\x.ini", 's.split("\\\\")', "1/2", "https://h/C:/a/b",
    "$HOME/.profile", "'\\\\'", "x:\\n",
)
code_line = st.lists(st.sampled_from(CODE_WORDS), max_size=5).map(" ".join)


@st.composite
def code_with_paths(draw: st.DrawFn) -> tuple[str, str, list[Inserted]]:
    first = draw(code_line)
    lines, expected_lines = [first], [first]
    paths: list[Inserted] = []
    for _ in range(draw(st.integers(1, 3))):
        # In code a path needs a folder between its root and its last part.
        path = draw(local_paths(quoted=True).filter(lambda p: p.names == -1 or p.names >= 2))
        before, after = draw(st.sampled_from(QUOTES))
        line = draw(code_line)
        lines.append(f"open({before}{path.text}{after}) {line}")
        expected_lines.append(f"open({before}{path.replacement}{after}) {line}")
        paths.append(path)
    fence = draw(st.sampled_from(["```", "~~~", "````"]))
    text = f"{fence}python\n" + "\n".join(lines) + f"\n{fence}\n"
    expected = f"{fence}python\n" + "\n".join(expected_lines) + f"\n{fence}\n"
    return text, expected, paths


@BOUNDED
@given(code_with_paths())
def test_code_keeps_its_escapes_and_loses_its_paths(
    case: tuple[str, str, list[Inserted]],
) -> None:
    text, expected, paths = case
    out = scrub_paths(text)
    assert out == expected
    for path in paths:
        assert path.folder_part not in out


@BOUNDED
@given(prose_with_paths(), st.lists(st.integers(0, 400), max_size=12))
def test_streaming_agrees_with_full_conversion(
    case: tuple[str, str, list[Inserted]], cuts: list[int],
) -> None:
    text = case[0]
    converter = StreamingConverter()
    for end in [*sorted(cuts), len(text)]:
        converter.feed(text[:end])
        assert converter.text == convert_answer(text[:end], streaming=True).text


# -- streaming: the incremental conversion is the whole conversion --------------------------------

# Pieces of Chat with RTX answers where a cut or a streamed update can matter: line breaks of
# both kinds, tags whole and cut, code fences and backtick runs, paths of every form (quoted,
# spaced, split across updates), the app's reference HTML, blank-line runs, trailing spaces.
STREAM_PIECES = (
    "word", "the", " ", " ", "  ", "\t", "\n", "\n", "\r\n", "\n\n\n", "<br>", "<br>", "<BR/>",
    "<br />", "<br", "<b>", "</b>", "<", ">", "`", "``", "```", "```python\n", "~~~\n", "\n```\n",
    "C:\\Users\\bob\\x.txt", "C:\\bob", "C:", "\\", "/", ":", "/home/alice/notes.md",
    "//nas/share/x.txt", "\\\\nas\\team\\q.xlsx", "https://example.com/a", '"C:\\My Docs\\a b.txt"',
    "'C:\\x y\\z'", "%USERPROFILE%\\x", "~/x.txt", "$HOME/a/b.txt", "/tmp/x/y.txt",
    "file:///C:/a.txt", "See all matches", "Reference files:",
    '<a data-link="C:\\a\\b.txt">b.txt</a>', '<img src="file/a.png"/>', "<div>",
    "\x00", "é", "。", "x", ".", ",", "(", ")",
)


@st.composite
def streamed_answers(draw: st.DrawFn) -> tuple[list[str], list[bool], int]:
    """(the cumulative texts of a stream, whether each update says what it appended, the
    converter's plain-tail threshold: small ones settle plain text early)."""
    # A few pieces, many times: constructs meet (and cuts fall between them) far more often.
    palette = draw(st.lists(st.sampled_from(STREAM_PIECES), min_size=1, max_size=8))
    text = "".join(draw(st.lists(st.sampled_from(palette), min_size=40, max_size=120)))
    cuts = draw(st.lists(st.integers(1, len(text)), min_size=10, max_size=60))
    ends = [*sorted(set(cuts)), len(text)]
    raws = [text[:end] for end in ends]
    if draw(st.booleans()):  # an update that rewrites earlier text, as a Gradio replace can
        at = draw(st.integers(0, len(raws) - 1))
        raws.insert(at, raws[at][: draw(st.integers(0, len(raws[at])))] + "C:\\Users\\x")
    hints = draw(st.lists(st.booleans(), min_size=len(raws), max_size=len(raws)))
    return raws, hints, draw(st.sampled_from([0, 4, 64, 2048]))


@settings(max_examples=300, deadline=None)
@given(streamed_answers())
def test_streaming_is_the_whole_conversion_at_every_update(
    case: tuple[list[str], list[bool], int],
) -> None:
    raws, hints, plain_tail = case
    converter = type("Converter", (StreamingConverter,), {"_PLAIN_TAIL": plain_tail})()
    _check_stream(converter, raws, hints)


def _check_stream(converter: StreamingConverter, raws: list[str], hints: list[bool]) -> None:
    previous, shown = "", ""
    for raw, hint in zip(raws, hints, strict=True):
        appended = raw[len(previous):] if hint and raw.startswith(previous) else None
        change = converter.feed(raw, appended)
        expected = convert_answer(raw, streaming=True).text
        assert converter.text == expected, (raws, raw)
        if change is None:
            assert expected == shown
        else:
            assert change.text == expected != shown
            # The delta is exactly what was added; "" only when earlier text changed.
            assert change.delta == (expected[len(shown):] if expected.startswith(shown) else "")
            shown = expected
        previous = raw


@pytest.mark.parametrize(("seed", "plain_tail"), [(1, 0), (2, 4), (3, 2048)])
def test_streaming_agrees_on_dense_random_streams(seed: int, plain_tail: int) -> None:
    """Seeded, so reproducible: a few pieces dominate each stream (skewed weights), which
    puts tags, fences, backtick runs and paths next to each other and next to the cuts far
    more often than uniform draws do."""
    rng = random.Random(seed)
    converter_type = type("Converter", (StreamingConverter,), {"_PLAIN_TAIL": plain_tail})
    for _ in range(300):
        weights = [rng.random() ** 3 for _ in STREAM_PIECES]
        text = "".join(rng.choices(STREAM_PIECES, weights, k=rng.randint(1, 120)))
        ends = sorted(rng.sample(range(1, len(text) + 1), min(len(text), rng.randint(1, 60))))
        raws = [text[:end] for end in ends] + ([text] if ends[-1] != len(text) else [])
        if rng.random() < 0.2:
            at = rng.randrange(len(raws))
            raws.insert(at, raws[at][: rng.randint(0, len(raws[at]))] + rng.choice(STREAM_PIECES))
        _check_stream(converter_type(), raws, [rng.random() < 0.8 for _ in raws])


def test_a_tag_completed_by_a_later_update_is_not_taken_for_growth() -> None:
    # "<" is shown as it is until "br>" makes it a line break: the text changed, not grew.
    converter = StreamingConverter()
    _check_stream(converter, ["a<br>", "a<br><", "a<br><br>b", "a<br><br>b c"], [True] * 4)
    assert converter.text == "a\n\nb c"


def _chatrtx_stream(question: str) -> list[str]:
    """The replica's answer as Chat with RTX itself writes it: ``<br>`` for every newline."""
    return [raw.replace("\n", "<br>") for raw in fake_model.answer_stream(question, [])]


@pytest.mark.parametrize("question", ["a [len=6000]", "b [len=6000] [code]", "c [refs] [len=900]"])
def test_streaming_chatrtx_html_matches_the_whole_conversion(question: str) -> None:
    converter = StreamingConverter()
    for raw in _chatrtx_stream(question):
        converter.feed(raw)
        assert converter.text == convert_answer(raw, streaming=True).text


def test_streaming_never_converts_the_whole_answer_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """Per update, only the paragraph being written is scanned for paths (before, once the
    first ``<br>`` arrived, every token re-converted the whole answer)."""
    scanned: list[int] = []

    def scrub(text: str) -> str:
        scanned.append(len(text))
        return scrub_paths(text)

    def whole(raw: str, *, streaming: bool = False) -> answer_html.ConvertedAnswer:
        raise AssertionError("the whole answer was converted")

    monkeypatch.setattr(answer_html, "scrub_paths", scrub)
    monkeypatch.setattr(answer_html, "convert_answer", whole)
    stream = _chatrtx_stream("x [len=20000] [code] C:\\Users\\bob\\notes.txt")
    converter, previous = StreamingConverter(), ""
    for raw in stream:
        converter.feed(raw, raw[len(previous) :])  # what Gradio's append diffs say
        previous = raw
    monkeypatch.undo()
    assert converter.text == convert_answer(stream[-1], streaming=True).text
    assert len(stream[-1]) > 20_000 and scanned
    assert max(scanned) < 1_000, max(scanned)  # a paragraph or a code block, never the answer
