"""``stop`` and ``max_tokens`` for backends that cannot honour them (Chat with RTX): the text
is cut where a stop string begins, or after about ``max_tokens`` tokens, and the answer ends
there. While it streams, a tail that could still become a stop string is held back, so no
part of a stop string is ever shown.

Tokens are estimated (``CHARS_PER_TOKEN`` characters each, one per CJK character): Chat with
RTX gives no counts. A backend that honours both itself never reaches the cut.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

CHARS_PER_TOKEN = 4


class FinishReason(enum.Enum):
    STOP = "stop"  # the model ended, or a stop string came
    LENGTH = "length"  # the token limit was reached


@dataclass(frozen=True)
class Cut:
    text: str  # what may be shown
    ended: FinishReason | None = None  # the answer must end here


class Cutoff:
    """Applied to a growing text, it looks at what is new only: the token count so far and
    how far stop strings were searched are kept (a text that changed earlier is counted
    anew)."""

    def __init__(self, stop: Sequence[str] = (), max_tokens: int | None = None) -> None:
        self._stop = tuple(s for s in stop if s)
        self._max_tokens = max_tokens
        self._longest_stop = max((len(s) for s in self._stop), default=0)
        self._seen = ""  # the text last applied to (for the incremental counts)
        self._wide = 0  # CJK characters in it
        self._searched = 0  # stop strings cannot start before this index
        self._stop_at: int | None = None  # where the first stop string was found

    @property
    def active(self) -> bool:
        return bool(self._stop) or self._max_tokens is not None

    def apply(self, text: str, *, final: bool) -> Cut:
        """``text``: the whole answer so far; ``final``: nothing more will come."""
        if not self.active:
            return Cut(text)
        ended: FinishReason | None = None
        if not text.startswith(self._seen):  # earlier text changed: start over
            self._seen, self._wide, self._searched, self._stop_at = "", 0, 0, None
        self._wide += _wide(text, len(self._seen), len(text))
        self._seen = text
        if self._stop_at is None:
            start = max(0, self._searched - self._longest_stop + 1)
            found = [i for i in (text.find(s, start) for s in self._stop) if i >= 0]
            self._searched = len(text)
            self._stop_at = min(found) if found else None
        if self._stop_at is not None:
            text, ended = text[:self._stop_at], FinishReason.STOP
        if self._max_tokens is not None and (
                ended is not None or _tokens(len(self._seen), self._wide) > self._max_tokens):
            limit = _chars_for_tokens(text, self._max_tokens)
            if limit < len(text):
                text, ended = text[:limit], FinishReason.LENGTH
        if ended is None and not final:
            text = text[:len(text) - self._held_back(text)]
        return Cut(text, ended)

    def _held_back(self, text: str) -> int:
        """The longest end of ``text`` that begins a stop string."""
        longest = 0
        for stop in self._stop:
            for size in range(min(len(stop) - 1, len(text)), longest, -1):
                if stop.startswith(text[-size:]):
                    longest = size
                    break
        return longest


def estimate_tokens(text: str) -> int:
    return _tokens_until(text, len(text))


def _wide(text: str, start: int, end: int) -> int:
    """CJK and beyond, about one token each."""
    return sum(1 for ch in text[start:end] if ord(ch) >= 0x2E80)


def _tokens(length: int, wide: int) -> int:
    return wide + -(-(length - wide) // CHARS_PER_TOKEN)


def _tokens_until(text: str, end: int) -> int:
    return _tokens(end, _wide(text, 0, end))


def _chars_for_tokens(text: str, tokens: int) -> int:
    """How many characters of ``text`` make about ``tokens`` tokens."""
    if _tokens_until(text, len(text)) <= tokens:
        return len(text)
    low, high = 0, len(text)
    while low < high:  # the longest prefix within the budget
        middle = (low + high + 1) // 2
        if _tokens_until(text, middle) <= tokens:
            low = middle
        else:
            high = middle - 1
    return low
