"""A deterministic fake LLM for the Chat with RTX replica (stdlib only).

Runs inside the replica's Gradio venv *and* is imported by the test suite to compute the
answers it expects, so both sides agree byte for byte. No timing lives here: the app
sleeps between yields, like ChatRTX's streaming loop does.

Directives in the query, in square brackets, steer the answer and are stripped from the
echoed question (only the names below count, so user text like ``[b]`` stays intact):

- (none)      ``"[turns=N] You asked: <question>. "`` + ~40 deterministic filler words,
              N = number of earlier turns in the history handed to the model.
- ``[recall]``  the body lists every earlier user question, one ``- <question>`` per line.
- ``[echo]``    the body is exactly the question without directives (no ``[turns=N]``).
- ``[len=N]``   filler of about N characters in paragraphs (a blank line every ~400);
              with ``[code]`` fenced ```python blocks of ~10 lines are interleaved.
- ``[refs]``    the RAG "Reference files" HTML tail is appended in a last yield.
- ``[images]``  the CLIP photo-search HTML answer, in one yield.
- ``[fail]``    after ~5 tokens a plain exception (a model crash).
- ``[error]``   after ~5 tokens ``ModelError`` (the app turns it into ``gr.Error``).
- ``[stall]``   after ~5 tokens ``StallRequested`` (the app then waits until cancelled).
- ``[die]``     after ~5 tokens ``DieRequested`` (the app then exits the process at once).
- ``[delay=S]`` per-token delay override for this answer (read with ``token_delay``).
- ``[stale]``   the answer is normal, but Gradio (sse_v2+) sends its first update as a diff
              against a failed earlier job's value, as it does when a new generator reuses
              the id of one that raised (the app plants that stale entry itself).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

History = Sequence[Sequence[str | None]]

# Tokens streamed before [fail]/[error]/[stall]/[die] strike.
TOKENS_BEFORE_FAULT = 5
DEFAULT_FILLER_WORDS = 40
PARAGRAPH_CHARS = 400
MODEL_FAILED_MESSAGE = "Model failed"

# The real app copies the best source file into Temp\Temp_Docs\<unix time>\ and links it by
# its local Windows path (data-link), which a bridge must never show to chat users.
REFERENCE_FILES: tuple[tuple[str, str], ...] = (
    (r"C:\Users\rtx\AppData\Local\Temp\Temp_Docs\1712345678\notes.txt", "notes.txt"),
    (r"C:\Users\rtx\AppData\Local\Temp\Temp_Docs\1712345678\report.pdf", "report.pdf"),
)
# CLIP mode: at most three <img> served from Temp/Temp_Images/<ts>/ plus a folder link whose
# path is os.path.join(cwd, "Temp/Temp_Images", ts) on Windows, hence the mixed slashes.
IMAGE_FILES: tuple[str, ...] = ("rtx_1.jpg", "rtx_2.png", "rtx_3.bmp")
IMAGE_FOLDER = r"C:\Users\rtx\ChatRTX\Temp/Temp_Images\1712345678"

_WORDS = (
    "tensor", "core", "shader", "frame", "pixel", "latency", "driver", "memory", "token",
    "vector", "index", "render", "stream", "kernel", "cache", "engine", "model", "query",
    "answer", "graphics", "compute", "texture", "bandwidth", "cluster", "signal", "buffer",
    "thread", "matrix", "scene", "light", "ray", "trace", "sample", "noise", "layer",
    "weight", "prompt", "context", "window", "batch",
)
_DIRECTIVE_RE = re.compile(
    r"\[(recall|echo|code|refs|images|fail|error|stall|die|stale|len=\d+|delay=\d+(?:\.\d+)?)\]",
    re.IGNORECASE,
)
# Split keeping every character: leading whitespace, then word+trailing whitespace chunks.
_TOKEN_RE = re.compile(r"\S+\s*|\s+")


class ModelError(Exception):
    """A failure the app reports to the user (ChatRTX raises ``gr.Error`` for these)."""


class ModelCrash(RuntimeError):
    """A plain, unexpected exception, as a crashing model would raise."""


class StallRequested(Exception):
    """The app should stop yielding and wait until the job is cancelled."""


class DieRequested(Exception):
    """The app should end its process at once (os._exit), as if killed mid-answer."""


@dataclass(frozen=True)
class Directives:
    recall: bool = False
    echo: bool = False
    code: bool = False
    refs: bool = False
    images: bool = False
    fail: bool = False
    error: bool = False
    stall: bool = False
    die: bool = False
    stale: bool = False  # the app plants Gradio's stale diff state (see chatrtx_app)
    length: int | None = None
    delay: float | None = None

    @property
    def fault(self) -> bool:
        return self.fail or self.error or self.stall or self.die


def parse_directives(query: str) -> Directives:
    flags: dict[str, bool] = {}
    length: int | None = None
    delay: float | None = None
    for match in _DIRECTIVE_RE.finditer(query):
        name, _, value = match.group(1).lower().partition("=")
        if name == "len":
            length = int(value)
        elif name == "delay":
            delay = float(value)
        else:
            flags[name] = True
    return Directives(length=length, delay=delay, **flags)


def strip_directives(query: str) -> str:
    """The question as the user meant it: directives removed, whitespace tidied at the ends.

    Runs of spaces left where a directive stood collapse to one space; other whitespace
    (newlines in hostile-output tests) is kept.
    """
    text = _DIRECTIVE_RE.sub(" ", query)
    text = re.sub(r"(?<=\S) {2,}(?=\S)", " ", text)
    return text.strip()


def token_delay(query: str, default: float) -> float:
    """The per-token delay for this answer: ``[delay=S]`` or the app's default."""
    delay = parse_directives(query).delay
    return default if delay is None else delay


def _word_stream(seed: str) -> Iterator[str]:
    """An endless deterministic word sequence (sha256 counter mode, stable across Pythons)."""
    counter = 0
    while True:
        digest = hashlib.sha256(f"{seed}\x00{counter}".encode()).digest()
        for i in range(0, len(digest), 2):
            yield _WORDS[int.from_bytes(digest[i : i + 2], "big") % len(_WORDS)]
        counter += 1


def _sentences(words: Iterator[str], count: int) -> str:
    """``count`` words as plain sentences of eight words: no markdown, no HTML."""
    out: list[str] = []
    for i in range(count):
        word = next(words)
        out.append(word.capitalize() if i % 8 == 0 else word)
        if i % 8 == 7 or i == count - 1:
            out[-1] += "."
    return " ".join(out)


def _code_block(words: Iterator[str], number: int) -> str:
    lines = [f"def {next(words)}_{number}(x: int) -> int:"]
    for i in range(8):
        lines.append(f"    {next(words)}_{i} = x * {i + number}  # {next(words)}")
    lines.append(f"    return {next(words)}_0")
    return "```python\n" + "\n".join(lines) + "\n```"


def _long_body(prefix: str, seed: str, length: int, code: bool) -> str:
    """About ``length`` characters of paragraphs, optionally with code blocks between them.

    Plain text is cut at a word boundary, so it is at most ``length`` characters and at
    least ``length - 15``; with code, blocks stay whole, so the text may run a block past.
    """
    words = _word_stream(seed)
    parts: list[str] = []
    paragraph = prefix.rstrip()

    def size() -> int:
        return len("\n\n".join([*parts, paragraph]))

    while size() < length:
        paragraph = f"{paragraph} {_sentences(words, 8)}".lstrip()
        if len(paragraph) >= PARAGRAPH_CHARS:
            parts.append(paragraph)
            paragraph = ""
            if code and size() < length:
                parts.append(_code_block(words, len(parts)))
    text = "\n\n".join([*parts, paragraph] if paragraph else parts)
    if not code and len(text) > length:
        cut = text[: length + 1]
        text = cut[: max(cut.rfind(" "), cut.rfind("\n"))].rstrip()
    return text


def _earlier_questions(history: History) -> list[str]:
    return [strip_directives(turn[0]) for turn in history if turn and turn[0] is not None]


def _body(query: str, history: History, d: Directives) -> str:
    question = strip_directives(query)
    if d.echo:
        return question
    prefix = f"[turns={len(history)}] You asked: {question}. "
    if d.recall:
        earlier = _earlier_questions(history)
        lines = [f"- {q}" for q in earlier] or ["(none)"]
        return prefix + "Earlier questions:\n" + "\n".join(lines)
    if d.length is not None:
        return _long_body(prefix, question, d.length, d.code)
    return prefix + _sentences(_word_stream(question), DEFAULT_FILLER_WORDS)


def references_tail() -> str:
    """The RAG tail ChatRTX appends after the streamed body."""
    links = [f'<a data-link="{path}">{name}</a>' for path, name in REFERENCE_FILES]
    return "<br>Reference files:<br>" + "<br>".join(links)


def images_answer() -> str:
    """The CLIP photo-search answer: prefix, image strip, "See all matches" folder link."""
    stamp = "1712345678"
    imgs = "".join(
        f'<img data-link="Temp/Temp_Images/{stamp}/{name}" '
        f'src="file/Temp/Temp_Images/{stamp}/{name}"/>'
        for name in IMAGE_FILES
    )
    return (
        "Here are the top matching pictures from your dataset<br>"
        f'<div class="chat-output-images">{imgs}</div><br>'
        f'<a data-link="{IMAGE_FOLDER}">See all matches</a>'
    )


def tokens(text: str) -> list[str]:
    """How a body is cut into streamed tokens (every character kept)."""
    return _TOKEN_RE.findall(text)


def answer_text(query: str, history: History) -> str:
    """The final answer the chatbot shows (for [fail]/[error]/... the one never reached)."""
    d = parse_directives(query)
    if d.images:
        return images_answer()
    body = _body(query, history, d)
    return body + references_tail() if d.refs else body


def answer_stream(query: str, history: History) -> Iterator[str]:
    """Cumulative texts as ChatRTX yields them; the last equals ``answer_text``.

    Fault directives raise after ``TOKENS_BEFORE_FAULT`` tokens instead of finishing.
    """
    d = parse_directives(query)
    if d.images:
        # CLIP mode answers in one piece.
        yield images_answer()
        return
    partial = ""
    pieces = tokens(_body(query, history, d))
    for i, piece in enumerate(pieces):
        if d.fault and i == TOKENS_BEFORE_FAULT:
            _raise_fault(d)
        partial += piece
        yield partial
    if d.fault:
        _raise_fault(d)
    if not pieces:
        yield partial  # an empty answer still fills the turn, as "" rather than None
    if d.refs:
        # ChatRTX streams the body, pauses, then yields body + links once more.
        yield partial + references_tail()


def _raise_fault(d: Directives) -> None:
    if d.die:
        raise DieRequested()
    if d.stall:
        raise StallRequested()
    if d.error:
        raise ModelError(MODEL_FAILED_MESSAGE)
    raise ModelCrash("fake model crashed mid-answer")
