"""The wire: ``/v1/models`` and streamed ``/v1/chat/completions`` over aiohttp.

Every failure leaves here as a ``BackendError`` (or one of the two the backend acts on:
``ServerBusy``, ``ContextTooLong``), mapped once in ``_mapped_errors`` and ``_status_error``;
callers never see an aiohttp exception. Operator texts name the URL and the setting to fix;
the key never appears in them.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from rtxrelay.backends import json_events
from rtxrelay.backends.paced_reads import PacedReads
from rtxrelay.backends.sse import SseParser
from rtxrelay.core.backend import Usage
from rtxrelay.core.errors import BackendError, BackendErrorKind

from .settings import OpenAiEndpoint, OpenAiTimeouts

Json = Any
DEFAULT_RETRY_AFTER = 5.0  # a 429/503 without Retry-After
# The one-line error of a server that is not one (an HTML page, a proxy) is cut to this.
_MAX_ERROR_CHARS = 300
_MAX_PEEK_BYTES = 256 * 1024


class ServerBusy(BackendError):
    """429, or 503 (llama.cpp while it loads its model): ask again in ``retry_after`` s."""

    def __init__(self, message: str, retry_after: float, *, service: str) -> None:
        super().__init__(BackendErrorKind.BUSY, message, service=service,
                         hint="The server is busy or still loading its model.")
        self.retry_after = retry_after


class ContextTooLong(BackendError):
    """400: the prompt does not fit the model's context window."""

    def __init__(self, message: str, *, service: str) -> None:
        super().__init__(BackendErrorKind.CONTEXT_TOO_LONG, message, service=service)


@dataclass(frozen=True)
class Chunk:
    """What one streamed event added."""

    content: str = ""
    reasoning: str = ""
    finish_reason: str | None = None
    usage: Usage | None = None


class OpenAiClient:
    def __init__(self, http: aiohttp.ClientSession, endpoint: OpenAiEndpoint, *,
                 api_key: str | None, timeouts: OpenAiTimeouts, service: str) -> None:
        self._http = http
        self.endpoint = endpoint
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.timeouts = timeouts
        self.service = service  # what a chat user is told failed ("Ollama", "ChatRTX", …)

    async def models(self) -> list[str]:
        """The ids ``GET /v1/models`` lists, in its order."""
        body = await self.get_json(f"{self.endpoint.base}/models")
        data = body.get("data", ()) if isinstance(body, dict) else None
        if data is None:  # Ollama with nothing pulled yet
            return []
        if not isinstance(data, list | tuple):
            raise self._error(BackendErrorKind.NOT_OPENAI,
                              f"{self.endpoint}/models did not list models.")
        return [str(m["id"]) for m in data if isinstance(m, dict) and m.get("id")]

    async def get_json(self, url: str) -> Json:
        async with self._mapped_errors(), self._http.get(
                url, headers=self._headers, timeout=self._short_timeout()) as response:
            if response.status != 200:
                raise await self._status_error(response)
            try:
                return await response.json(content_type=None)
            except ValueError:
                raise self._error(BackendErrorKind.NOT_OPENAI,
                                  f"{url} did not answer with JSON.") from None

    async def peek_json(self, url: str) -> Json | None:
        """The JSON at ``url`` if it answers 200 with JSON, else None; never raises (for
        telling products apart)."""
        text = await self.peek_text(url)
        if text is None:
            return None
        try:
            found = json.loads(text)
        except ValueError:
            return None
        # LM Studio answers unknown paths with 200 {"error": "Unexpected endpoint …"}.
        return None if isinstance(found, dict) and "error" in found else found

    async def peek_text(self, url: str) -> str | None:
        try:
            async with self._http.get(url, headers=self._headers,
                                      timeout=self._short_timeout()) as response:
                if response.status != 200:
                    return None
                # read(n) returns what has arrived, up to n: read until the end (or the cap).
                data = bytearray()
                while len(data) < _MAX_PEEK_BYTES:
                    part = await response.content.read(_MAX_PEEK_BYTES - len(data))
                    if not part:
                        break
                    data += part
                return data.decode("utf-8", "replace")
        except (aiohttp.ClientError, TimeoutError, OSError):
            return None

    async def complete(self, body: Mapping[str, Json]) -> Json:
        """A plain (not streamed) completion, for ``doctor``'s one-token check."""
        async with self._mapped_errors(), self._http.post(
                f"{self.endpoint.base}/chat/completions", json=dict(body), headers=self._headers,
                timeout=self._stream_timeout()) as response:
            if response.status != 200:
                raise await self._status_error(response)
            return await response.json(content_type=None)

    async def stream_chat(self, body: Mapping[str, Json], *, read_window: float = 0.0
                          ) -> AsyncGenerator[list[Chunk], None]:
        """POST a streamed completion and yield its chunks, those of one read together (a
        reader then updates once per read, not once per token), until ``[DONE]``; once they
        flow, reads are ``read_window`` seconds apart at least (``PacedReads``). Closing the
        generator early closes the connection: the servers stop generating when the client
        hangs up (that is how a question is cancelled)."""
        loop = asyncio.get_running_loop()
        total_by = loop.time() + self.timeouts.total
        parser = SseParser()
        first = True

        def deadline() -> float:
            wait = self.timeouts.first_token if first else self.timeouts.idle
            return min(loop.time() + wait, total_by)

        # The deadlines cover the waits only, never a ``yield``: a timeout firing while the
        # consumer holds the generator suspended would cancel the consumer instead.
        async with self._mapped_errors():
            async with asyncio.timeout_at(deadline()):
                response = await self._http.post(
                    f"{self.endpoint.base}/chat/completions", json=dict(body),
                    headers=self._headers, timeout=self._stream_timeout())
            paced = PacedReads(response, read_window)
            try:
                if response.status != 200:
                    async with asyncio.timeout_at(deadline()):
                        raise await self._status_error(response)
                while True:
                    async with asyncio.timeout_at(deadline()):
                        data = await response.content.readany()
                    if not data:
                        raise self._error(
                            BackendErrorKind.STOPPED,
                            f"{self.service} closed the answer stream before it ended.",
                            hint="The server may have been stopped or restarted.")
                    chunks: list[Chunk] = []
                    try:
                        for event in parser.feed(data):
                            if event.strip() == "[DONE]":
                                return
                            chunk = self._chunk(event)
                            if chunk is not None:
                                chunks.append(chunk)
                    finally:
                        # Whatever ends the read (the end, an error event later in it), the
                        # text before it is passed on first.
                        if chunks:
                            first = False
                            paced.hold(len(data), len(chunks))
                            yield chunks
            finally:
                paced.close()
                # A stream left early must not go back to the pool half read: closing the
                # connection is what tells the server to stop generating.
                response.close()

    def _chunk(self, event: str) -> Chunk | None:
        try:
            payload = json_events.loads(event)
        except ValueError:
            raise self._error(BackendErrorKind.PROTOCOL,
                              f"{self.service} sent an event that is not JSON.") from None
        if not isinstance(payload, dict):
            raise self._error(BackendErrorKind.PROTOCOL,
                              f"{self.service} sent an event that is not a JSON object.")
        if "error" in payload:  # a failure after the stream began (vLLM, llama.cpp)
            raise self._error(BackendErrorKind.FAILED,
                              f"{self.service} failed mid-answer: {_error_text(payload)}")
        usage = _usage(payload.get("usage"))
        choices = payload.get("choices") or []
        choice = choices[0] if isinstance(choices, list) and choices else {}
        delta = choice.get("delta") if isinstance(choice, dict) else None
        if not isinstance(delta, dict):
            delta = {}
        content = delta.get("content")
        # vLLM, DeepSeek and llama.cpp say reasoning_content; some Ollama builds reasoning.
        reasoning = delta.get("reasoning_content") or delta.get("reasoning")
        finish = choice.get("finish_reason") if isinstance(choice, dict) else None
        if not (content or reasoning or finish or usage):
            return None  # the role-only first chunk, keep-alive deltas
        return Chunk(content=content if isinstance(content, str) else "",
                     reasoning=reasoning if isinstance(reasoning, str) else "",
                     finish_reason=finish if isinstance(finish, str) else None, usage=usage)

    @contextlib.asynccontextmanager
    async def _mapped_errors(self) -> AsyncIterator[None]:
        """aiohttp's and asyncio's exceptions, as ours: the one place they are mapped."""
        try:
            yield
        except BackendError:
            raise
        except TimeoutError:
            raise self._error(
                BackendErrorKind.TIMEOUT, f"{self.service} at {self.endpoint} did not answer in "
                "time.", hint="A large model may need longer: raise OPENAI_FIRST_TOKEN_TIMEOUT "
                "or OPENAI_IDLE_TIMEOUT.") from None
        except aiohttp.ClientConnectorError as exc:
            raise self._unreachable(exc) from None
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError) as exc:
            raise self._error(
                BackendErrorKind.STOPPED, f"{self.service} dropped the connection ({exc}).",
                hint="The server may have been stopped or restarted.") from None
        except aiohttp.ClientError as exc:
            raise self._error(BackendErrorKind.UNREACHABLE,
                              f"Talking to {self.endpoint} failed: {exc}.") from None

    def _unreachable(self, exc: Exception) -> BackendError:
        if self.endpoint.is_chatrtx_nim:
            hint = ("ChatRTX serves its model (the NIM) on port 8000 only while the ChatRTX app "
                    "runs with that model selected: start ChatRTX, pick the model, wait until it "
                    "is loaded. rtxrelay never starts or stops it.")
        else:
            hint = (f"Start the server, or fix OPENAI_BASE_URL ({self.endpoint}). "
                    "`rtxrelay discover` lists the servers running on this PC.")
        return self._error(BackendErrorKind.UNREACHABLE,
                           f"Cannot connect to {self.endpoint} ({exc.__class__.__name__}).",
                           hint=hint)

    async def _status_error(self, response: aiohttp.ClientResponse) -> BackendError:
        raw = await response.text(errors="replace")
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        detail = _error_text(body) if isinstance(body, dict) else " ".join(raw.split())
        detail = detail[:_MAX_ERROR_CHARS] or response.reason or ""
        status = response.status
        where = f"{response.method} {response.url.path}"
        if status in (401, 403):
            return self._error(
                BackendErrorKind.AUTH, f"{self.service} refused the request ({status}: {detail}).",
                hint="Set OPENAI_API_KEY to the key the server expects (llama-server --api-key, "
                "vLLM --api-key, LM Studio's token)." if status == 401 else
                "Check OPENAI_API_KEY and that it may use this model.")
        if status in (429, 503):
            return ServerBusy(f"{self.service} is busy ({status}: {detail}).",
                              _retry_after(response.headers.get("Retry-After")),
                              service=self.service)
        if status == 400 and _is_context_error(body, raw):
            return ContextTooLong(f"The prompt does not fit the model's context ({detail}).",
                                  service=self.service)
        if status == 404:
            if "model" in detail.lower():
                return self._error(BackendErrorKind.NO_MODEL,
                                   f"{self.service} does not serve that model ({detail}).")
            return self._error(
                BackendErrorKind.NOT_OPENAI, f"{where} is not found on {self.endpoint.root}.",
                hint="OPENAI_BASE_URL must be the API's base, usually ending in /v1.")
        return self._error(BackendErrorKind.FAILED,
                           f"{self.service} answered {status} to {where}: {detail}")

    def _error(self, kind: BackendErrorKind, message: str, *, hint: str = "") -> BackendError:
        return BackendError(kind, message, hint=hint, service=self.service)

    def _short_timeout(self) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(total=self.timeouts.connect + 20.0,
                                     sock_connect=self.timeouts.connect)

    def _stream_timeout(self) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(total=None, sock_connect=self.timeouts.connect)


def _error_text(body: dict[str, Json]) -> str:
    error = body.get("error", body)
    if isinstance(error, dict):
        return str(error.get("message") or error.get("type") or error)
    return str(error)


def _usage(value: Json) -> Usage | None:
    if not isinstance(value, dict):
        return None
    prompt, completion = value.get("prompt_tokens"), value.get("completion_tokens")
    if isinstance(prompt, int) and isinstance(completion, int):
        return Usage(prompt, completion)
    return None


# How servers word "too long": llama.cpp (exceed_context_size_error, "context size"), vLLM and
# OpenAI ("maximum context length", context_length_exceeded), others ("too many tokens").
_CONTEXT_SIGNS = ("context length", "context size", "context window", "context_length",
                  "exceed_context", "maximum context", "too many tokens", "prompt is too long",
                  "n_ctx")


def _is_context_error(body: Json, raw: str) -> bool:
    text = raw.lower()
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        error = body["error"]
        text += f" {error.get('type', '')} {error.get('code', '')}".lower()
    return any(sign in text for sign in _CONTEXT_SIGNS)


def _retry_after(value: str | None) -> float:
    """Retry-After in seconds or as an HTTP date; a missing or odd one means a few seconds."""
    if not value:
        return DEFAULT_RETRY_AFTER
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return DEFAULT_RETRY_AFTER
    return max(0.0, when.timestamp() - time.time())
