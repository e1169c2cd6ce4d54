"""Any OpenAI-compatible server as a ``Backend``: ChatRTX 0.5's NIM, Ollama, LM Studio,
llama.cpp, vLLM, the ChatRTX bridge, another PC's ``rtxrelay serve``.

History goes as ``messages`` (the server keeps no session); the answer streams as content
deltas, reasoning is kept out of it (a "thinking" status is all a chat shows of it, and it is
never sent back as history); cancelling closes the stream. What the backend does about the
server's refusals: a prompt too long for the context is asked again once without history; a
busy server (429/503) is asked again after its Retry-After, up to ``busy_wait`` in all.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from rtxrelay.core.backend import (
    AnswerOptions,
    BackendInfo,
    BackendUpdate,
    Done,
    Exchange,
    Failed,
    Started,
    TextSoFar,
    Throttled,
    Usage,
)
from rtxrelay.core.errors import BackendError, BackendErrorKind

from .client import ContextTooLong, OpenAiClient, ServerBusy
from .products import Product, identify, service_name
from .reasoning import Split, ThinkSplitter
from .settings import OpenAiSettings

log = logging.getLogger(__name__)

Json = Any


@dataclass
class _Attempt:
    """One streamed answer's state."""

    text: str = ""
    usage: Usage | None = None
    finish_reason: str | None = None


class OpenAiBackend:
    honours_options = True  # stop, max_tokens, temperature go to the server (AnswerOptions)

    def __init__(self, http: aiohttp.ClientSession, settings: OpenAiSettings) -> None:
        endpoint = settings.endpoint()
        self._settings = settings
        self._client = OpenAiClient(http, endpoint, api_key=settings.api_key,
                                    timeouts=settings.timeouts,
                                    service=service_name(endpoint, None))
        self._model: str | None = settings.model
        self._product: Product | None = None
        self._usage_option = True  # ask for a usage chunk until the server refuses the field
        self._model_lock = asyncio.Lock()

    @property
    def model(self) -> str | None:
        """The model asked for: OPENAI_MODEL, or the first one the server listed."""
        return self._model

    async def identify(self) -> Product:
        """Which product serves the endpoint (best effort: a server that is down is
        ``GENERIC`` for now); error texts name it from then on."""
        self._product = await identify(self._client)
        self._client.service = service_name(self._client.endpoint, self._product)
        return self._product

    async def probe(self) -> BackendInfo:
        """The server answers, the key is accepted, the model is served, and a one-token
        completion works."""
        started = time.monotonic()
        models = await self._client.models()
        checks = [f"{self._client.endpoint} answers ({len(models)} model(s) listed)"]
        self._product = await identify(self._client, models)
        self._client.service = service_name(self._client.endpoint, self._product)
        model = await self._pick_model(models)
        checks.append(f"model {model}" + ("" if self._settings.model
                                          else " (the first the server lists; OPENAI_MODEL "
                                          "picks another)"))
        reply = await self._client.complete({
            "model": model, "max_tokens": 1, "stream": False,
            "messages": [{"role": "user", "content": "Say OK."}]})
        if not isinstance(reply, dict) or not reply.get("choices"):
            raise BackendError(BackendErrorKind.NOT_OPENAI,
                               "The server's completion has no choices.",
                               service=self._client.service)
        checks.append(f"a one-token completion works ({time.monotonic() - started:.1f} s)")
        if self._settings.api_key:
            checks.insert(1, "API key accepted")
        return BackendInfo(url=self._client.endpoint.base, product=self._product.label,
                           protocol="openai", model=model, checks=tuple(checks),
                           parallel=self._product.parallel)

    async def models(self) -> list[str]:
        """The server's models, the one used by default first."""
        listed = await self._client.models()
        model = self._model or self._settings.model
        return [model, *(m for m in listed if m != model)] if model else listed

    async def stream_answer(
        self, question: str, history: Sequence[Exchange], *, session: str,
        options: AnswerOptions | None = None, read_window: float = 0.0,
    ) -> AsyncGenerator[BackendUpdate, None]:
        """``session`` is not used: these servers keep no conversation, history is sent.
        ``options`` go to the server as they are."""
        options = options or AnswerOptions()
        waited = 0.0
        dropped = False
        attempt = _Attempt()
        while True:
            try:
                model = options.model or await self._pick_model()
                async for update in self._stream(model, question, history, attempt, options,
                                                 read_window):
                    yield update
            except ContextTooLong as exc:
                if history and not attempt.text:
                    log.info("the prompt is too long for the model's context; asking again "
                             "without the %d earlier turn(s)", len(history))
                    history, dropped = (), True
                    continue
                yield Failed(exc, attempt.text)
                return
            except ServerBusy as exc:
                if attempt.text or waited + exc.retry_after > self._settings.busy_wait:
                    yield Failed(exc, attempt.text)
                    return
                waited += exc.retry_after
                yield Throttled(exc.retry_after)
                await asyncio.sleep(exc.retry_after)
                continue
            except BackendError as exc:
                if exc.kind is BackendErrorKind.NO_MODEL:
                    if self._settings.model is None:
                        self._model = None  # the server changed models: pick again next time
                    exc = await self._explain_missing_model(exc)
                yield Failed(exc, attempt.text)
                return
            break
        if attempt.finish_reason == "length":
            log.info("the answer reached the server's token limit")
        yield Done(text=attempt.text, raw=attempt.text, usage=attempt.usage,
                   history_dropped=dropped, length_limited=attempt.finish_reason == "length")

    async def _stream(self, model: str, question: str, history: Sequence[Exchange],
                      attempt: _Attempt, options: AnswerOptions, read_window: float
                      ) -> AsyncGenerator[BackendUpdate, None]:
        system = options.system if options.system is not None else self._settings.system_prompt
        body: dict[str, Json] = {"model": model, "stream": True,
                                 "messages": self._messages(system, question, history)}
        if self._usage_option:
            body["stream_options"] = {"include_usage": True}
        temperature = options.temperature if options.temperature is not None \
            else self._settings.temperature
        if temperature is not None:
            body["temperature"] = temperature
        max_tokens = options.max_tokens or self._settings.max_tokens
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        if options.stop:
            body["stop"] = list(options.stop)
        splitter = ThinkSplitter()
        started = False
        try:
            async for chunks in self._client.stream_chat(body, read_window=read_window):
                if not started:
                    started = True
                    yield Started()
                pieces: list[str] = []  # this read's new text: joined once, one update per read
                retracted = False
                for chunk in chunks:
                    if chunk.usage is not None:
                        attempt.usage = chunk.usage
                    if chunk.finish_reason:
                        attempt.finish_reason = chunk.finish_reason
                    if chunk.content:
                        split = splitter.feed(chunk.content)
                        if split.retracted:
                            attempt.text, pieces, retracted = "", [], True
                        self._keep(attempt, split, pieces)
                update = self._grow(attempt, pieces, retracted)
                if update is not None:
                    yield update
            split = splitter.finish()
            pieces = []
            self._keep(attempt, split, pieces)
            update = self._grow(attempt, pieces, False)
            if update is not None:
                yield update
        except BackendError as exc:
            if not started and self._usage_option and exc.kind is BackendErrorKind.FAILED \
                    and "stream_options" in exc.message:
                # An older server that rejects the field: ask again without it, for good.
                log.info("the server does not take stream_options; token counts are not kept")
                self._usage_option = False
                async for retried in self._stream(model, question, history, attempt, options,
                                                  read_window):
                    yield retried
                return
            raise

    @staticmethod
    def _keep(attempt: _Attempt, split: Split, pieces: list[str]) -> None:
        # An answer starts at its first visible character (models open with blank lines).
        piece = split.answer if attempt.text or pieces else split.answer.lstrip()
        if piece:
            pieces.append(piece)

    @staticmethod
    def _grow(attempt: _Attempt, pieces: list[str], retracted: bool) -> TextSoFar | None:
        if not pieces and not retracted:
            return None
        delta = "".join(pieces)
        attempt.text += delta
        # After a retraction earlier text changed: the delta alone would not rebuild it.
        return TextSoFar(attempt.text, "" if retracted else delta)

    @staticmethod
    def _messages(system: str | None, question: str,
                  history: Sequence[Exchange]) -> list[dict[str, str]]:
        messages: list[dict[str, str]] = []
        if system:
            messages.append({"role": "system", "content": system})
        for exchange in history:
            messages.append({"role": "user", "content": exchange.question})
            messages.append({"role": "assistant", "content": exchange.answer})
        messages.append({"role": "user", "content": question})
        return messages

    async def _pick_model(self, models: list[str] | None = None) -> str:
        if self._model is not None:
            return self._model
        async with self._model_lock:
            if self._model is None:
                listed = models if models is not None else await self._client.models()
                if not listed:
                    raise BackendError(
                        BackendErrorKind.NO_MODEL,
                        f"{self._client.endpoint} serves no model yet.",
                        hint="Load one first (Ollama: `ollama pull NAME`; LM Studio: load a "
                        "model), or set OPENAI_MODEL.", service=self._client.service)
                self._model = listed[0]
                log.info("OPENAI_MODEL is not set: using %s, the first of %d model(s) the "
                         "server lists", self._model, len(listed))
        assert self._model is not None
        return self._model

    async def _explain_missing_model(self, error: BackendError) -> BackendError:
        try:
            models = await self._client.models()
        except BackendError:
            return error
        if not models:
            return error  # already says how to load one
        listed = ", ".join(models[:20]) or "none"
        return BackendError(
            BackendErrorKind.NO_MODEL, f"{error.message} The server has: {listed}.",
            hint="Set OPENAI_MODEL to one of them (or unset it to use the first).",
            service=error.service)
