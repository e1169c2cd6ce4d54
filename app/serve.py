"""``rtxrelay serve``: the configured backend as an OpenAI-compatible API (aiohttp.web).

Open WebUI, SillyTavern, Continue, LangChain or a script talk to Chat with RTX (or whatever
backend rtxrelay reaches) as they would to OpenAI: ``GET /v1/models``, ``POST
/v1/chat/completions`` streamed or not, ``GET /health``. A request's ``messages`` become the
history and the question (nothing is stored: the client owns its conversation); its job waits
in the same line as the bots' questions; a client that hangs up cancels its job at once.

Errors are OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``, with the
status the official client maps to the right exception; never a traceback, never a hang.
One log line per request: method, path, status, duration, tokens — never the content.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from rtxrelay.core.backend import AnswerOptions, Exchange, Queued, TextSoFar
from rtxrelay.core.conversation import ConversationService, Finished, valid_text
from rtxrelay.core.cutoff import estimate_tokens
from rtxrelay.core.env import Env
from rtxrelay.core.errors import BackendError, BackendErrorKind, ConfigError
from rtxrelay.core.hosts import is_loopback_host
from rtxrelay.core.pool import Member, MemberState

log = logging.getLogger(__name__)

Json = Any
DEFAULT_PORT = 8642  # none of the usual local servers' (8000, 8080, 8081, 11434, 1234, 8765)
KEEPALIVE_SECONDS = 15.0  # an SSE comment while a streamed request waits in line
HEALTH_TTL = 10.0  # /health probes the backends at most this often
MODELS_TTL = 30.0  # the backend's model list is asked again at most this often (or when a
# request names a model not in it), not before every request
# Answer text is read at most this often once it flows (Backend.stream_answer): a client
# sees text ten times a second, and the tokens in between cost no wake-up each (as the
# terminal's; bench/README.md).
READ_WINDOW = 0.1
MAX_BODY_BYTES = 4 * 1024 * 1024
# The tokens of the answer being served, for the request's log line (the handler runs in the
# log middleware's task, so it sees what the handler set).
_TOKENS: contextvars.ContextVar[int | None] = contextvars.ContextVar("tokens", default=None)


@dataclass(frozen=True)
class ApiSettings:
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    api_key: str | None = None  # RTXRELAY_API_KEY: then every request needs it
    cors_origins: tuple[str, ...] = ()  # RTXRELAY_API_CORS_ORIGINS; empty: no CORS at all
    max_waiting: int = 16  # RTXRELAY_API_MAX_WAITING: past that many waiting, 429

    @classmethod
    def from_env(cls, env: Env, *, host: str | None = None,
                 port: int | None = None) -> ApiSettings:
        origins = tuple(o.strip().rstrip("/") for o in
                        (env.str("RTXRELAY_API_CORS_ORIGINS") or "").split(",") if o.strip())
        settings = cls(
            host=host or env.str("RTXRELAY_API_HOST") or "127.0.0.1",
            port=port if port is not None else env.int("RTXRELAY_API_PORT", DEFAULT_PORT,
                                                       minimum=0, maximum=65535),
            api_key=env.str("RTXRELAY_API_KEY"),
            cors_origins=origins,
            max_waiting=env.int("RTXRELAY_API_MAX_WAITING", 16, minimum=0, maximum=10_000),
        )
        settings.check()
        return settings

    def check(self) -> None:
        if not is_loopback_host(self.host) and not self.api_key:
            raise ConfigError(
                f"rtxrelay serve would listen on {self.host} without a key: anyone who can "
                "reach this PC could use the model.", setting="RTXRELAY_API_KEY",
                hint="Set RTXRELAY_API_KEY (clients send it as their API key), or listen on "
                "127.0.0.1.")


class ApiError(Exception):
    """An answer in OpenAI's error shape."""

    def __init__(self, status: int, message: str, *, kind: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind
        self.param, self.code, self.headers = param, code, headers or {}

    def response(self) -> web.Response:
        return web.json_response(
            {"error": {"message": self.message, "type": self.kind, "param": self.param,
                       "code": self.code}}, status=self.status, headers=self.headers)

    def event(self) -> bytes:
        """The same error as a stream event (the official client raises it mid-stream)."""
        body = {"error": {"message": self.message, "type": self.kind, "param": self.param,
                          "code": self.code}}
        return f"data: {json.dumps(body)}\n\n".encode()


def backend_error(error: BackendError) -> ApiError:
    """A backend failure as an HTTP status a client acts on: 503 (with Retry-After) for
    "later", 502 for "the backend is broken", 504 for "it took too long"."""
    kind = error.kind
    if kind is BackendErrorKind.CONTEXT_TOO_LONG:
        return ApiError(400, error.user_message, param="messages",
                        code="context_length_exceeded")
    if kind in (BackendErrorKind.STUCK, BackendErrorKind.BUSY, BackendErrorKind.QUEUE_FULL,
                BackendErrorKind.UNREACHABLE, BackendErrorKind.STOPPED):
        return ApiError(503, error.user_message, kind="service_unavailable",
                        code=kind.value, headers={"Retry-After": "30"})
    if kind is BackendErrorKind.TIMEOUT:
        return ApiError(504, error.user_message, kind="timeout", code=kind.value)
    return ApiError(502, error.user_message, kind="bad_gateway", code=kind.value)


@dataclass(frozen=True)
class Request:
    """A chat completion request, checked."""

    model: str
    question: str
    history: tuple[Exchange, ...]
    options: AnswerOptions
    stream: bool
    include_usage: bool


class OpenAiApi:
    """The routes. The service runs every answer; its pool's backends list the models."""

    def __init__(self, service: ConversationService, settings: ApiSettings) -> None:
        self._service = service
        self._pool = service.pool
        self._settings = settings
        self._health: tuple[float, list[dict[str, Json]]] | None = None
        self._models: list[str] | None = None
        self._models_at = 0.0
        # Requests arriving together ask the backends for their models once, not once each.
        self._models_lock = asyncio.Lock()

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES,
                              middlewares=[self._logged, self._cors, self._errors, self._auth])
        app.router.add_get("/v1/models", self.list_models)
        app.router.add_get("/v1/models/{model:.+}", self.one_model)
        app.router.add_post("/v1/chat/completions", self.chat_completions)
        app.router.add_get("/health", self.health)
        return app

    # -- middlewares -----------------------------------------------------------------------

    @web.middleware
    async def _logged(self, request: web.Request,
                      handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                      ) -> web.StreamResponse:
        started = time.monotonic()
        status = 499  # the client went away (nginx's word for it)
        _TOKENS.set(None)
        try:
            response = await handler(request)
            status = response.status
            return response
        finally:
            tokens = _TOKENS.get()
            log.info("%s %s %d %.2f s%s", request.method, request.path, status,
                     time.monotonic() - started, f" {tokens} tokens" if tokens else "")

    @web.middleware
    async def _errors(self, request: web.Request,
                      handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                      ) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiError as exc:
            return exc.response()
        except web.HTTPException as exc:  # aiohttp's own: 404 route, 405, 413 body too big
            code = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}
            return ApiError(exc.status, exc.reason, code=code.get(exc.status)).response()
        except (asyncio.CancelledError, ConnectionResetError):
            raise
        except Exception:
            log.exception("the API failed on %s %s", request.method, request.path)
            return ApiError(500, "rtxrelay failed on this request; its log says why.",
                            kind="server_error").response()

    @web.middleware
    async def _auth(self, request: web.Request,
                    handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                    ) -> web.StreamResponse:
        key = self._settings.api_key
        if key and request.method != "OPTIONS":
            scheme, _, given = request.headers.get("Authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(),
                                                                     key.encode()):
                raise ApiError(401, "Incorrect or missing API key: send it as "
                               "'Authorization: Bearer <RTXRELAY_API_KEY>'.",
                               code="invalid_api_key")
        return await handler(request)

    @web.middleware
    async def _cors(self, request: web.Request,
                    handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                    ) -> web.StreamResponse:
        """Off unless origins are listed: a web page elsewhere must not reach a local model
        through the visitor's browser."""
        origin = self._allowed_origin(request)
        allowed = origin is not None
        if request.method == "OPTIONS" and allowed:
            response: web.StreamResponse = web.Response(status=204)
        else:
            response = await handler(request)
        if origin is not None and not response.prepared:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Vary"] = "Origin"
            response.headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type"
            response.headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
        return response

    def _allowed_origin(self, request: web.Request) -> str | None:
        origin = request.headers.get("Origin", "").rstrip("/")
        listed = self._settings.cors_origins
        return origin if origin and (origin in listed or "*" in listed) else None

    # -- routes ----------------------------------------------------------------------------

    async def list_models(self, request: web.Request) -> web.Response:
        models = await self._model_ids()
        return web.json_response({"object": "list", "data": [_model_card(m) for m in models]})

    async def one_model(self, request: web.Request) -> web.Response:
        model = request.match_info["model"]
        if model not in await self._model_ids():
            raise _unknown_model(model)
        return web.json_response(_model_card(model))

    async def health(self, request: web.Request) -> web.Response:
        """Every backend: reachable or why not, taken out or not, its answers running and
        slots; and the pool's line. ``backend`` is the first one (what one backend showed)."""
        now = time.monotonic()
        if self._health is None or now - self._health[0] > HEALTH_TTL:
            previous = self._health[1] if self._health else [None] * len(self._pool.members)
            probed = await asyncio.gather(*(_probe(m, before) for m, before in zip(
                self._pool.members, previous, strict=True)))
            self._health = (now, list(probed))
        backends = [_state(member, probed)
                    for member, probed in zip(self._pool.members, self._health[1], strict=True)]
        running, waiting = self._service.line
        ok = any(backend["reachable"] for backend in backends)
        return web.json_response(
            {"status": "ok" if ok else "unavailable", "backend": backends[0],
             "backends": backends, "queue": {"running": running, "waiting": waiting}},
            status=200 if ok else 503)

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        waiting = self._service.line[1]
        if waiting >= self._settings.max_waiting:  # before anything else: a full line is cheap
            raise ApiError(429, f"{waiting} requests are already waiting for the model; try "
                           "again shortly.", kind="rate_limit_exceeded",
                           code="queue_full", headers={"Retry-After": "10"})
        asked = await self._parse(request)
        answer = self._service.complete(asked.question, asked.history, asked.options,
                                        read_window=READ_WINDOW)
        async with contextlib.aclosing(answer):
            if asked.stream:
                return await self._stream(request, asked, answer)
            return await self._whole(request, asked, answer)

    # -- answering -------------------------------------------------------------------------

    async def _whole(self, request: web.Request, asked: Request,
                     answer: AsyncIterator[object]) -> web.Response:
        async for update in answer:
            if isinstance(update, Finished):
                if update.error is not None:
                    raise backend_error(update.error)
                usage = _usage(asked, update)
                _TOKENS.set(usage["completion_tokens"])
                return web.json_response({
                    "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion",
                    "created": int(time.time()), "model": asked.model,
                    "choices": [{"index": 0, "finish_reason": _finish(update), "logprobs": None,
                                 "message": {"role": "assistant", "content": update.text}}],
                    "usage": usage})
        raise ApiError(502, "The backend ended without an answer.", kind="bad_gateway")

    async def _stream(self, request: web.Request, asked: Request,
                      answer: AsyncIterator[object]) -> web.StreamResponse:
        chunk_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

        def chunk(delta: dict[str, str], finish: str | None = None) -> bytes:
            body = {"id": chunk_id, "object": "chat.completion.chunk", "created": created,
                    "model": asked.model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish,
                                 "logprobs": None}]}
            if asked.include_usage:
                body["usage"] = None
            return f"data: {json.dumps(body, ensure_ascii=False)}\n\n".encode()

        response: web.StreamResponse | None = None
        streamed = ""  # the text sent so far: the final text may add to it
        updates = aiter(answer)
        pending: asyncio.Task[object] | None = None
        started = False
        try:
            while True:
                if started:  # text flows: no keep-alive needed, no task per token
                    update = await anext(updates)
                else:
                    pending = asyncio.ensure_future(anext(updates))
                    # While it waits in line, a comment now and then keeps proxies and
                    # clients from giving up on a silent connection.
                    while True:
                        done, _ = await asyncio.wait({pending}, timeout=KEEPALIVE_SECONDS)
                        if done:
                            break
                        response = response or await self._open_stream(request)
                        await response.write(b": waiting for the model\n\n")
                    update = pending.result()
                    pending = None
                if isinstance(update, Finished):
                    if update.error is not None and response is None:
                        raise backend_error(update.error)  # nothing sent: a plain HTTP error
                    response = response or await self._open_stream(request)
                    if update.error is not None:
                        await response.write(backend_error(update.error).event())
                        return response
                    if update.text.startswith(streamed) and len(update.text) > len(streamed):
                        # The final text can hold more than the last update showed.
                        await response.write(chunk({"content": update.text[len(streamed):]}))
                    await response.write(chunk({}, _finish(update)))
                    usage = _usage(asked, update)
                    _TOKENS.set(usage["completion_tokens"])
                    if asked.include_usage:
                        last = {"id": chunk_id, "object": "chat.completion.chunk",
                                "created": created, "model": asked.model, "choices": [],
                                "usage": usage}
                        await response.write(f"data: {json.dumps(last)}\n\n".encode())
                    await response.write(b"data: [DONE]\n\n")
                    await response.write_eof()
                    return response
                if response is None:
                    response = await self._open_stream(request)
                    await response.write(chunk({"role": "assistant", "content": ""}))
                if isinstance(update, TextSoFar) and update.text.startswith(streamed) and \
                        len(update.text) > len(streamed):
                    started = True
                    await response.write(chunk({"content": update.text[len(streamed):]}))
                    streamed = update.text
                elif isinstance(update, Queued):
                    await response.write(f": #{update.position} in line\n\n".encode())
        except StopAsyncIteration:
            raise ApiError(502, "The backend ended without an answer.",
                           kind="bad_gateway") from None
        finally:
            if pending is not None:
                pending.cancel()
                with contextlib.suppress(BaseException):
                    await pending

    async def _open_stream(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                               "Cache-Control": "no-cache",
                                               "X-Accel-Buffering": "no"})
        origin = self._allowed_origin(request)
        if origin:  # a stream's headers leave before the CORS middleware sees the response
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Vary"] = "Origin"
        await response.prepare(request)
        return response

    # -- the request -----------------------------------------------------------------------

    async def _parse(self, request: web.Request) -> Request:
        try:
            body = json.loads(await request.read())
        except (ValueError, UnicodeDecodeError):
            raise ApiError(400, "The body is not valid JSON.") from None
        if not isinstance(body, dict):
            raise ApiError(400, "The body must be a JSON object.")
        models = await self._model_ids()
        model = body.get("model") or models[0]
        if isinstance(model, str) and model not in models:
            models = await self._model_ids(fresh=True)  # loaded on the server since?
        if not isinstance(model, str) or model not in models:
            raise _unknown_model(str(model))
        system, history, question = _conversation(body.get("messages"))
        stop = body.get("stop")
        stops = (stop,) if isinstance(stop, str) else tuple(stop or ())
        if not all(isinstance(s, str) for s in stops) or len(stops) > 4:
            raise ApiError(400, "'stop' must be a string or a list of up to 4 strings.",
                           param="stop")
        limit = body.get("max_completion_tokens", body.get("max_tokens"))
        if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool)
                                  or limit < 1):
            raise ApiError(400, "'max_tokens' must be a whole number of at least 1.",
                           param="max_tokens")
        temperature = body.get("temperature")
        if temperature is not None and not isinstance(temperature, int | float):
            raise ApiError(400, "'temperature' must be a number.", param="temperature")
        if body.get("n", 1) != 1:
            raise ApiError(400, "Only n=1 is supported.", param="n")
        stream = body.get("stream") is True
        options_field = body.get("stream_options")
        include_usage = stream and isinstance(options_field, dict) and \
            options_field.get("include_usage") is True
        # The default model is asked without naming it: a backend with one model, or the
        # configured one, stays as the operator set it. In a pool the name is what sends the
        # request to a backend that serves it.
        chosen = None if model == models[0] and len(self._pool.members) == 1 else model
        return Request(model, question, history, AnswerOptions(
            system=system, model=chosen, max_tokens=limit, stop=stops,
            temperature=float(temperature) if temperature is not None else None),
            stream, include_usage)

    async def _model_ids(self, *, fresh: bool = False) -> list[str]:
        asked_at = time.monotonic()
        async with self._models_lock:
            if self._models is not None and self._models_at >= asked_at - (
                    0.0 if fresh else MODELS_TTL):
                return self._models  # fresh enough, or fetched while this request waited
            return await self._fetch_models()

    async def _fetch_models(self) -> list[str]:
        now = time.monotonic()
        members = [m for m in self._pool.members if m.state is MemberState.UP] or \
            list(self._pool.members)
        errors = await asyncio.gather(*(self._pool.check(m) for m in members))
        # Every backend's models, the first listed backend's default first.
        listed = [model for m in members if m.models for model in m.models]
        if listed:
            self._models = list(dict.fromkeys(listed))
            self._models_at = now
        elif self._models is None:
            error = next((e for e in errors if e is not None), None)
            if error is not None:
                raise backend_error(error) from None
        return self._models or []


def _conversation(messages: Json) -> tuple[str | None, tuple[Exchange, ...], str]:
    """``messages`` as (system prompt, history, question). System messages are joined; user
    and assistant turns pair up in order (several in a row are joined); the last message must
    be the user's question."""
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty list.", param="messages")
    system: list[str] = []
    turns: list[tuple[str, str]] = []  # (role, text), same roles merged
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise ApiError(400, f"messages[{index}] must be an object.", param="messages")
        role, text = message.get("role"), _text(message.get("content"), index)
        if role in ("system", "developer"):
            system.append(text)
        elif role in ("user", "assistant"):
            if turns and turns[-1][0] == role:
                turns[-1] = (role, f"{turns[-1][1]}\n\n{text}")
            else:
                turns.append((role, text))
        else:
            raise ApiError(400, f"messages[{index}].role must be system, user or assistant.",
                           param="messages")
    if not turns or turns[-1][0] != "user" or not turns[-1][1].strip():
        raise ApiError(400, "The last message must be the user's question, and not empty.",
                       param="messages")
    pairs: list[Exchange] = []
    pending_question: str | None = None
    for role, text in turns[:-1]:
        if role == "user":
            pending_question = text
        else:  # an answer; one with no question before it answers an empty one
            pairs.append(Exchange(pending_question or "", text))
            pending_question = None
    question = turns[-1][1] if pending_question is None else \
        f"{pending_question}\n\n{turns[-1][1]}"
    return ("\n\n".join(system) or None), tuple(pairs), question


def _text(content: Json, index: int) -> str:
    """A message's text: a string, or OpenAI's list of parts (only text parts)."""
    if isinstance(content, str):
        return valid_text(content)
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text":
                raise ApiError(400, f"messages[{index}]: only text parts are supported.",
                               param="messages")
            texts.append(str(part.get("text", "")))
        return valid_text("\n".join(texts))
    if content is None:
        return ""
    raise ApiError(400, f"messages[{index}].content must be text.", param="messages")


def _model_card(model: str) -> dict[str, Json]:
    return {"id": model, "object": "model", "created": 0, "owned_by": "rtxrelay"}


def _unknown_model(model: str) -> ApiError:
    return ApiError(404, f"The model '{model}' does not exist; GET /v1/models lists them.",
                    param="model", code="model_not_found")


def _finish(update: Finished) -> str:
    return "length" if update.length_limited else "stop"


async def _probe(member: Member, before: dict[str, Json] | None) -> dict[str, Json]:
    """Whether ``member`` answers. A backend answering right now is not probed: a probe may
    be a one-token completion, which would take its slot from the next question."""
    if member.running and member.state is MemberState.UP:
        return {**(before or {}), "reachable": True}
    try:
        info = await member.backend.probe()
    except BackendError as exc:
        return {"reachable": False, "error": exc.user_message}
    return {"reachable": True, "product": info.product, "model": info.model}


def _state(member: Member, probed: dict[str, Json]) -> dict[str, Json]:
    state: dict[str, Json] = {"name": member.name, **probed}
    if member.state is MemberState.DOWN:  # taken out since the last probe: it is not used
        state.update(reachable=False, error=member.error.user_message if member.error else
                     "taken out")
    state.update(state=member.state.value, running=member.running, slots=member.capacity)
    return state


def _usage(asked: Request, update: Finished) -> dict[str, int]:
    """The backend's counts, else an estimate (Chat with RTX counts nothing)."""
    if update.usage is not None:
        prompt, completion = update.usage.prompt_tokens, update.usage.completion_tokens
    else:
        prompt = estimate_tokens(asked.question) + sum(
            estimate_tokens(e.question) + estimate_tokens(e.answer) for e in asked.history)
        completion = estimate_tokens(update.text)
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}


async def serve(service: ConversationService, settings: ApiSettings,
                stop: asyncio.Event, *, ready: Callable[[str], None] | None = None) -> None:
    """Answer until ``stop`` is set. ``ready`` is told the base URL once it listens."""
    settings.check()
    runner = web.AppRunner(OpenAiApi(service, settings).app(),
                           handler_cancellation=True,  # a client that hangs up cancels
                           access_log=None)  # ours logs one line per request, no content
    await runner.setup()
    try:
        site = web.TCPSite(runner, settings.host, settings.port)
        try:
            await site.start()
        except OSError as exc:
            raise ConfigError(f"Cannot listen on {settings.host}:{settings.port}: "
                              f"{exc.strerror}.", setting="RTXRELAY_API_PORT",
                              hint="Another program uses the port: pick another with --port "
                              "or RTXRELAY_API_PORT.") from None
        port = settings.port
        for found in runner.addresses:  # the port the OS picked when asked for 0
            if isinstance(found, tuple) and len(found) >= 2:
                port = int(found[1])
        if ready is not None:
            ready(f"http://{settings.host}:{port}/v1")
        await stop.wait()
    finally:
        await runner.cleanup()

