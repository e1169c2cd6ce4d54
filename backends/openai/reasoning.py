"""Reasoning inside the content: ``<think>…</think>`` split off as it streams.

Servers send a reasoning model's thoughts in ``delta.reasoning_content`` / ``delta.reasoning``
(read by the backend) or, in older Ollama and llama.cpp builds, inside ``content`` between
``<think>`` and ``</think>``. Tags can be cut anywhere between two chunks, so a possible start of
a tag is held back until the next chunk tells.

Only a block that opens the answer is reasoning: a ``<think>`` later in an answer (a model
explaining HTML, say) is text. Some chat templates put the opening tag in the prompt, so the
output starts inside the block and only ``</think>`` shows: when it comes before any opening
tag, the text so far was reasoning after all (``Split.retracted``) — unless the answer so far
mentions ``<think>`` itself.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

OPEN = "<think>"
CLOSE = "</think>"


class _State(enum.Enum):
    START = enum.auto()  # nothing but whitespace yet: a block may still open
    THINKING = enum.auto()
    ANSWER = enum.auto()  # after the block, or no block at all


@dataclass(frozen=True)
class Split:
    reasoning: str = ""
    answer: str = ""
    retracted: bool = False  # the answer so far was reasoning: drop it, keep ``answer``


class ThinkSplitter:
    def __init__(self) -> None:
        self._state = _State.START
        self._held = ""  # text that may be the start of a tag
        # The answer so far, kept in parts (joined only on a retraction: no copy of the whole
        # answer per chunk) until a block can no longer close.
        self._answer_parts: list[str] = []
        self._closed = False  # a block was seen and closed: later tags are text
        self._tail = ""  # the answer's last characters, to see an opening tag across chunks
        self._after_block = False  # whitespace right after a block is not part of the answer

    def feed(self, piece: str) -> Split:
        text = self._held + piece
        self._held = ""
        if self._state is _State.START:
            stripped = text.lstrip()
            if stripped.startswith(OPEN):
                self._state = _State.THINKING
                return self._thinking(stripped[len(OPEN):])
            if OPEN.startswith(stripped):  # "", "<", "<thi"…: cannot tell yet
                self._held = text
                return Split()
            self._state = _State.ANSWER
        if self._state is _State.THINKING:
            return self._thinking(text)
        return self._answer(text)

    def finish(self) -> Split:
        """The stream ended: whatever was held back is what it looked like."""
        held, self._held = self._held, ""
        if self._state is _State.THINKING:
            return Split(reasoning=held)
        if self._state is _State.START:
            return Split(answer=held.lstrip()) if held.strip() else Split()
        return Split(answer=held)

    def _thinking(self, text: str) -> Split:
        end = text.find(CLOSE)
        if end >= 0:
            self._state, self._closed, self._after_block = _State.ANSWER, True, True
            after = self._answer(text[end + len(CLOSE):])
            return Split(reasoning=text[:end], answer=after.answer)
        keep = _partial_suffix(text, CLOSE)
        self._held = text[len(text) - keep:] if keep else ""
        return Split(reasoning=text[:len(text) - keep])

    def _answer(self, text: str) -> Split:
        if self._closed and not self._after_block:
            return Split(answer=text)  # the common case, once a block is behind
        if not self._closed and "<" not in text and "<" not in self._tail:  # no tag here
            if text:
                self._tail = ""
                self._answer_parts.append(text)
            return Split(answer=text)
        if not self._closed and OPEN in self._tail + text[:text.find(CLOSE) % (len(text) + 1)]:
            self._closed = True  # the answer talks about the tags: they are text
            self._answer_parts = []
        if not self._closed:
            end = text.find(CLOSE)
            if end >= 0:
                # Opened in the prompt: all of it so far was reasoning.
                self._closed, self._after_block = True, True
                earlier, self._answer_parts = "".join(self._answer_parts), []
                rest = self._answer(text[end + len(CLOSE):]).answer
                return Split(reasoning=earlier + text[:end], answer=rest,
                             retracted=bool(earlier))
            keep = _partial_suffix(text, CLOSE)
            self._held = text[len(text) - keep:] if keep else ""
            text = text[:len(text) - keep]
        if self._after_block:
            text = text.lstrip()
            self._after_block = not text
        if text:
            if not self._closed:
                self._answer_parts.append(text)
            self._tail = (self._tail + text)[-(len(OPEN) - 1):]
        return Split(answer=text)


def _partial_suffix(text: str, tag: str) -> int:
    """How many characters at the end of ``text`` could begin ``tag``."""
    for size in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-size:]):
            return size
    return 0
