"""The seam between conversations and whatever answers them: typed updates and a Protocol."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import Protocol

from .errors import BackendError


@dataclass(frozen=True)
class Exchange:
    """One earlier question and its answer, as the backend should see them."""

    question: str
    answer: str


@dataclass(frozen=True)
class AnswerOptions:
    """What a caller of the API asks for beyond the question (``rtxrelay serve``). A backend
    honours what it can (an OpenAI-compatible server: all of it; Chat with RTX: none — the
    service then cuts the text at ``stop`` and ``max_tokens`` itself). A backend whose model
    gets them all says so with a class attribute ``honours_options = True``."""

    system: str | None = None  # instead of SYSTEM_PROMPT
    model: str | None = None  # one of the backend's models, instead of the configured one
    max_tokens: int | None = None
    stop: tuple[str, ...] = ()
    temperature: float | None = None


@dataclass(frozen=True)
class Queued:
    position: int  # 1 = next in line
    queue_size: int | None = None
    eta_seconds: float | None = None


@dataclass(frozen=True)
class Started:
    pass


@dataclass(frozen=True)
class TextSoFar:
    text: str  # the whole answer so far, neutral Markdown
    delta: str  # what this update added ("" when earlier text changed instead)


@dataclass(frozen=True)
class Throttled:
    """The backend said "not now" (HTTP 429/503 with Retry-After): the answer is asked again
    in ``retry_after`` seconds; meanwhile the asker is told it is busy."""

    retry_after: float


@dataclass(frozen=True)
class Usage:
    """Token counts of one answer, as the backend reported them."""

    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class Done:
    text: str  # final neutral Markdown (references as file names only)
    raw: str  # the backend's own text, kept to send back as history the way its UI does
    references: tuple[str, ...] = ()
    usage: Usage | None = None  # when the backend counts tokens
    history_dropped: bool = False  # the backend left earlier turns out to fit its context
    length_limited: bool = False  # the answer ended at a token limit, not where the model did


@dataclass(frozen=True)
class Failed:
    error: BackendError
    partial_text: str = ""


BackendUpdate = Queued | Started | Throttled | TextSoFar | Done | Failed


@dataclass(frozen=True)
class BackendInfo:
    """What ``doctor`` reports about a reachable backend."""

    url: str  # safe to print (no cookie, no key)
    product: str  # "Chat with RTX (gradio 4.26)", "Ollama", "llama.cpp", …
    protocol: str  # "sse_v3", "openai", …
    model: str | None = None
    checks: tuple[str, ...] = ()  # what was verified, one line each
    parallel: int | None = None  # answers it generates at once, when it tells


class Backend(Protocol):
    """What answers questions. Implementations map their own errors to ``BackendError`` (with
    a user-safe message) and never raise from ``stream_answer``: failures arrive as
    ``Failed``."""

    def stream_answer(
        self, question: str, history: Sequence[Exchange], *, session: str,
        options: AnswerOptions | None = None, read_window: float = 0.0,
    ) -> AsyncGenerator[BackendUpdate, None]:
        """Yield updates; the last one is ``Done`` or ``Failed``. Closing the generator early
        (``aclose``) must cancel the answer on the backend. ``options``: honoured where the
        backend can (see ``AnswerOptions``). ``read_window``: how often the consumer can use
        new text (seconds); once text flows, the backend may gather what arrives within it
        into one update instead of waking per token (0: as it comes)."""
        ...

    async def models(self) -> list[str]:
        """The model ids it can answer with (the first is the one used by default)."""
        ...

    async def probe(self) -> BackendInfo:
        """Check the backend is reachable and usable; raise ``BackendError`` if not."""
        ...
