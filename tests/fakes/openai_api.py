"""A protocol-faithful fake of the OpenAI-compatible servers rtxrelay talks to, over loopback.

``FakeOpenAI`` is an aiohttp server on ``127.0.0.1:<ephemeral>`` that answers
``POST /v1/chat/completions`` (streamed and not) and each product's own side endpoints in the
shapes, limits and errors of the real thing, so the official ``openai`` SDK (or our own client)
runs unmodified against it::

    async with FakeOpenAI(persona=Persona.LLAMA_CPP, models=("smol",)) as fake:
        client = AsyncOpenAI(base_url=fake.base_url, api_key="x", max_retries=0)
        fake.script(Reply(["Hel", "lo"], reasoning=["hmm"]), Reply(status=429,
                    headers={"Retry-After": "2"}))
        ...
        await fake.wait_hangups(1, timeout=5)

It exists for what a real tiny CPU model cannot show on demand: a 429, a mid-stream error, a
stall, a context overflow, the exact bytes each product puts on the wire.

Where the shapes come from (read, not copied; "GUESS" marks what no source confirmed):

* llama.cpp ``llama-server`` (ggml-org/llama.cpp, tools/server, 2025-2026): ``server-http.cpp``
  (``Server: llama.cpp`` default header; CORS origin reflected; public paths skip the key check;
  401 ``Invalid API Key``; 503 ``Loading model`` on *every* path while loading; 404
  ``File Not Found``), ``server.cpp`` (routes; ``ex_wrapper``: a JSON parse error is a *500*
  ``server_error``, confirmed by ggml-org/llama.cpp#11738 logs), ``server-common.cpp``
  (``format_error_response``: ``{"code","message","type"}``; ``format_oai_sse``: ``data: …\\n\\n``;
  ``chatcmpl-`` ids), ``server-task.cpp`` (chunks: a first ``{"role":"assistant","content":null}``
  delta, ``content`` / ``reasoning_content`` deltas, a finish chunk with ``"delta":{}``, a usage
  chunk with ``"choices":[]`` only with ``include_usage`` and *no* ``usage`` key elsewhere,
  ``timings`` on the last chunk, ``system_fingerprint`` = build info;
  ``exceed_context_size_error`` carries ``n_prompt_tokens``/``n_ctx``), ``server-context.cpp``
  (streaming: an error before the first result is a plain HTTP error, a later one is
  ``data: {"error":{…}}`` and the stream ends *without* ``[DONE]``; the ``model`` field of a
  request is not checked in single-model mode; the context check is
  ``request (%d tokens) exceeds the available context size (%d tokens), try increasing it``).
* Ollama (ollama/ollama @ 2026-08, ``openai/openai.go``, ``middleware/openai.go``,
  ``server/routes.go``, ``server/prompt.go``): errors ``{"error":{"message","type","param":null,
  "code":null}}`` with type ``invalid_request_error``/``not_found_error``/``api_error``; unknown
  model ``model 'x' not found`` (404; releases <= 0.11 said
  ``model "x" not found, try pulling it first``); no API-key check at all; an over-long chat is
  *silently truncated* (oldest non-system messages dropped, the last one always kept); ids
  ``chatcmpl-<0..998>``; ``system_fingerprint":"fp_ollama"``; the role rides on the first content
  chunk; thinking streams as ``delta.reasoning`` (with ``"content":""``); a dedicated finish
  chunk with ``"delta":{}``; ``usage`` omitted (not null) except on the ``include_usage`` chunk;
  JSON is Go-encoded (``<``, ``>``, ``&`` escaped as ``\\u003c`` …); ``/v1/models`` ``owned_by`` is
  the name's namespace (``library``) and ``data`` is ``null`` when nothing is pulled. A failure
  after the stream started is written as ``{"error":"…"}`` into the OpenAI writer, which turns
  it into one *empty content chunk* and the stream ends without finish_reason or ``[DONE]``.
  ``GET /`` → ``Ollama is running``; ``/api/version``; ``/api/tags``. No ``Server`` header (Go).
* vLLM (vllm-project/vllm): ``entrypoints/openai/server_utils.py`` (``--api-key`` guards paths
  starting with ``/v1`` with ``{"error":"Unauthorized"}``; a malformed body is a 400 whose type is
  the HTTP phrase ``Bad Request``; ``X-Request-Id`` on every answer), ``engine/protocol.py``
  (``ErrorResponse{error:{message,type,param,code}}`` since v0.10.1 — flat
  ``{"object":"error",…}`` before, per vllm-project/vllm#22099 and
  foundation-model-stack/fms-guardrails-orchestrator#511; ``ModelCard`` with ``owned_by":"vllm"``,
  ``root``, ``max_model_len``, ``permission``), ``serving_chat`` (``The model `x` does not
  exist.``; mid-stream error ``data: {"error":…}`` *followed by* ``data: [DONE]``; first delta
  ``{"role":"assistant","content":""}``; ``reasoning`` (``reasoning_content`` before
  vllm-project/vllm#27752/#33402)), context texts from ``serving_engine.py`` and field reports.
  Served by uvicorn (``Server: uvicorn``).
* NIM (ChatRTX 0.5: ``meta/llama-3.1-8b-instruct`` on a NIM 1.x container, vLLM ~0.5 inside):
  the legacy flat vLLM errors and texts (``serving_engine.py`` of that era: "However, you
  requested N tokens in the messages, Please reduce…"; streamed errors default to
  ``BadRequestError``/400), ``reasoning_content``; ``/v1/health/ready`` / ``/v1/health/live``
  ``{"object":"health-response","message":"Service is ready."}`` (NIM docs, api-evangelist
  OpenAPI); ``/v1/version``; ``/v1/metadata`` (GUESS: shape minimal). ``owned_by":"system"`` is
  from NIM documentation examples. No API-key check (GUESS: NIM 1.x has none locally).
* LM Studio (lmstudio-ai/docs ``1_developer/2_rest/endpoints.mdx``; lmstudio-bug-tracker #237,
  #546, #619, #1730, #2322; issue reports quoting bodies): ``/api/v0/models`` as documented;
  ``/v1/models`` entries ``{"id","object":"model","owned_by":"organization_owner"}`` (no
  ``created``); unknown model 404 ``Model "x" not found. Please specify a valid model.`` with
  ``"code":"model_not_found"`` — but with exactly one model loaded the field is ignored (#619);
  context overflow ``{"error":"The number of tokens to keep from the initial prompt is greater
  than the context length (n_keep: N>= n_ctx: M). …"}`` (the ``error`` is a *string*); token auth
  (0.4+) ``invalid_api_key``; unknown routes answer **200** ``{"error":"Unexpected endpoint or
  method. (GET /x)"}``. Chunk shape, stream errors and malformed-JSON answers are GUESSES.
* GENERIC: OpenAI's own API (openai-python ``_streaming.py``/``_exceptions.py`` for how it is
  read; error texts as OpenAI sends them): ``usage: null`` on every chunk when
  ``include_usage`` is asked, ``"refusal": null`` in the first delta.

Token accounting is deliberately simple and documented: a token is ``chars_per_token``
characters (4) of message text, rounded up; the context holds ``context_chars // chars_per_token``
tokens. ``/props`` (llama.cpp), ``/v1/models`` (vLLM ``max_model_len``) and ``/api/v0/models``
(LM Studio ``max_context_length``) report that same number, so a client that sizes its history
from them sees a consistent server.

Scripting: ``fake.script(Reply(...), ...)`` queues what the next chat requests that pass the
server's own checks (key, JSON, model, slot, context) do; unscripted requests answer
``echo: <last user message>`` word by word. In ``error_after`` / ``stall_after`` a *piece* is
one entry of the reply's pieces (reasoning and content deltas, after ``THINK_TAGS`` re-split),
whatever role/finish chunks the persona wraps around them.

Every wait is bounded and event-driven; the fake never asks a test to sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import math
import random
import string
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import KW_ONLY, dataclass, field
from http import HTTPStatus
from typing import Any, ClassVar, Literal, TypeVar

from aiohttp import web

Json = dict[str, Any]
_T = TypeVar("_T")
Handler = Callable[[web.Request, "RecordedRequest"], Awaitable[web.StreamResponse]]

CHAT_PATHS = frozenset({"/v1/chat/completions", "/chat/completions"})
NIM_MODEL = "meta/llama-3.1-8b-instruct"  # what ChatRTX 0.5's NIM serves
DEFAULT_N_CTX = 8192  # reported when no context limit is set
LLAMA_CPP_BUILD = "b6500-fa1ce0de"  # llama_build_info(): "b<number>-<commit>"
OLLAMA_VERSION = "0.12.6"
VLLM_VERSION = "0.10.1.1"
NIM_RELEASE = "1.2.3"

_ALNUM = string.ascii_letters + string.digits
_LOWER_ALNUM = string.ascii_lowercase + string.digits


class Persona(enum.Enum):
    """Which product the fake answers as."""

    LLAMA_CPP = "llama.cpp"
    OLLAMA = "ollama"
    LM_STUDIO = "lm-studio"
    NIM = "nim"  # ChatRTX 0.5's NVIDIA NIM, legacy vLLM underneath
    VLLM = "vllm"
    GENERIC = "generic"  # OpenAI's own API


class ReasoningStyle(enum.Enum):
    """How thinking reaches the client."""

    # delta.reasoning_content (llama.cpp, DeepSeek, vLLM before 0.11, NIM)
    REASONING_CONTENT = "reasoning_content"
    REASONING = "reasoning"  # delta.reasoning (Ollama, vLLM >= 0.11)
    THINK_TAGS = "think_tags"  # <think>…</think> inside content, tags split across chunks


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class Reply:
    """What one chat completion request does.

    ``content`` None means the default answer (``echo: <last user message>``). A ``str`` is one
    piece. ``status`` set: answer that HTTP error instead (``error`` a message for the persona's
    error body, or a whole body as a dict). ``error_after=N``: N pieces, then the persona's
    mid-stream error (``error`` its message or whole event payload; ``error_code`` its code).
    ``stall_after=N``: N pieces, then hang until the client goes away (or the fake closes).
    ``headers`` go on whatever answer is sent (e.g. ``Retry-After``).
    """

    content: str | Sequence[str] | None = None
    _: KW_ONLY
    reasoning: str | Sequence[str] = ()
    reasoning_style: ReasoningStyle | None = None  # None: the persona's own
    think_open_tag: bool = True  # THINK_TAGS: False = only "</think>" (prompt opened it)
    finish_reason: str = "stop"
    usage: Usage | None = None  # None: counted from the text
    error_after: int | None = None
    error: str | Json | None = None
    error_code: int | None = None  # None: the persona's usual code for a failed generation
    status: int | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    stall_after: int | None = None
    chunk_delay: float = 0.0

    def __post_init__(self) -> None:
        for name in ("error_after", "stall_after"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.chunk_delay < 0:
            raise ValueError("chunk_delay must be >= 0")


@dataclass
class RecordedRequest:
    """One request as the fake saw it, and what became of it."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    raw_body: bytes
    body: Any = None  # parsed JSON; None when absent or malformed
    status: int | None = None  # HTTP status of the answer, once sent
    reply: Reply | None = None  # the scripted/default reply used, if generation started
    pieces_sent: int = 0
    events_sent: int = 0  # SSE data events (chunks, errors, [DONE])
    stalled: bool = False
    hung_up: bool = False  # the client went away before the answer was complete
    completed: bool = False
    prompt_tokens: int = 0
    kept_messages: list[Json] | None = None  # what the model saw (Ollama truncates silently)

    @property
    def is_chat(self) -> bool:
        return self.method == "POST" and self.path in CHAT_PATHS

    @property
    def json(self) -> Json:
        return self.body if isinstance(self.body, dict) else {}

    @property
    def model(self) -> str | None:
        model = self.json.get("model")
        return model if isinstance(model, str) else None

    @property
    def stream(self) -> bool:
        return self.json.get("stream") is True

    @property
    def messages(self) -> list[Json]:
        messages = self.json.get("messages")
        return [m for m in messages if isinstance(m, dict)] if isinstance(messages, list) else []


class _HttpError(Exception):
    def __init__(self, status: int, body: Any, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(status)
        self.status = status
        self.body = body
        self.headers = dict(headers or {})


# ------------------------------------------------------------------------------ text and tokens


def message_text(message: Json) -> str:
    """The text of a message: a string, or the text parts of a parts list."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(part.get("text", ""))
            for part in content
            if isinstance(part, dict) and part.get("type") == "text"
        )
    return ""


def default_reply_pieces(messages: Sequence[Json]) -> list[str]:
    """The unscripted answer: ``echo: <last user message>``, one piece per word."""
    last = next((message_text(m) for m in reversed(messages) if m.get("role") == "user"), "")
    words = f"echo: {last}".split(" ")
    return [words[0]] + [" " + w for w in words[1:]]


def _pieces(value: str | Sequence[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def think_tag_pieces(reasoning: Sequence[str], content: Sequence[str], open_tag: bool) -> list[str]:
    """Reasoning wrapped in ``<think>…</think>`` inside content, split where it hurts: the opening
    tag as ``"<thi" | "nk>" + first``, the closing one as ``last + "</th" | "ink>\\n\\n" + first
    content piece`` (what llama.cpp without a reasoning format and old Ollama stream)."""
    thoughts = list(reasoning) or [""]
    pieces = ["<thi", "nk>" + thoughts[0]] if open_tag else [thoughts[0]]
    pieces += thoughts[1:]
    pieces[-1] += "</th"
    rest = list(content)
    pieces.append("ink>\n\n" + (rest[0] if rest else ""))
    pieces += rest[1:]
    return [p for p in pieces if p]


@dataclass(frozen=True)
class _Delta:
    kind: Literal["content", "reasoning"]
    text: str
    field: str  # "content", "reasoning_content" or "reasoning"


@dataclass(frozen=True)
class _Ctx:
    id: str
    created: int
    model: str
    include_usage: bool


def _random(alphabet: str, n: int) -> str:
    return "".join(random.choice(alphabet) for _ in range(n))


# ------------------------------------------------------------------------------------ dialects


class _Dialect:
    """One product's wire behaviour. The base is the plain OpenAI-like behaviour."""

    persona: ClassVar[Persona]
    server_header: ClassVar[str | None] = None
    sse_content_type: ClassVar[str] = "text/event-stream"
    json_content_type: ClassVar[str] = "application/json"
    reasoning_style: ClassVar[ReasoningStyle] = ReasoningStyle.REASONING_CONTENT
    checks_api_key: ClassVar[bool] = True
    done_after_error: ClassVar[bool] = False  # "data: [DONE]" after a mid-stream error
    first_error_is_http: ClassVar[bool] = False  # an error before any piece: HTTP, not SSE
    usage_null_when_included: ClassVar[bool] = False  # "usage": null on ordinary chunks
    stream_error_code: ClassVar[int] = 500

    def __init__(self, fake: FakeOpenAI) -> None:
        self.fake = fake

    # -- serialisation and ids

    def dumps(self, obj: Any) -> str:
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))

    def new_id(self) -> str:
        return "chatcmpl-" + _random(_ALNUM, 29)

    def response_model(self, requested: str | None) -> str:
        return requested or self.fake.models[0]

    # -- errors

    def error_type(self, status: int) -> str:
        types = {400: "invalid_request_error", 401: "invalid_request_error",
                 404: "invalid_request_error", 429: "rate_limit_exceeded"}
        return types.get(status, "server_error")

    def error_body(self, status: int, message: str | None = None) -> Json:
        return {"error": {"message": message or _phrase(status), "type": self.error_type(status),
                          "param": None, "code": None}}

    def auth_applies(self, method: str, path: str) -> bool:
        return path.startswith("/v1")

    def presented_key(self, request: web.Request) -> str | None:
        scheme, _, key = request.headers.get("Authorization", "").partition(" ")
        return key if scheme.lower() == "bearer" and key else None

    def unauthorized(self, presented: str | None) -> _HttpError:
        if presented is None:
            message = (
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), "
                "or as the password field (with blank username) if you're accessing the API "
                "from your browser and are prompted for a username and password. You can "
                "obtain an API key from https://platform.openai.com/account/api-keys."
            )
            return _HttpError(401, {"error": {"message": message, "type": "invalid_request_error",
                                              "param": None, "code": None}})
        masked = presented[:3] + "*" * max(len(presented) - 7, 0) + presented[-4:]
        message = (f"Incorrect API key provided: {masked}. You can find your API key at "
                   "https://platform.openai.com/account/api-keys.")
        return _HttpError(401, {"error": {"message": message, "type": "invalid_request_error",
                                          "param": None, "code": "invalid_api_key"}})

    def check_model(self, model: str | None) -> None:
        if model not in self.fake.models:
            message = f"The model `{model}` does not exist or you do not have access to it."
            raise _HttpError(404, {"error": {"message": message, "type": "invalid_request_error",
                                             "param": None, "code": "model_not_found"}})

    def malformed(self, raw: bytes, exc: ValueError) -> _HttpError:
        message = (
            "We could not parse the JSON body of your request. (HINT: This likely means you "
            "aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, "
            "but what was sent was not valid JSON. If you have trouble figuring out how to fix "
            "this, please contact us through our help center at help.openai.com.)"
        )
        return _HttpError(400, {"error": {"message": message, "type": "invalid_request_error",
                                          "param": None, "code": None}})

    def check_context(self, prompt: int, n_ctx: int, max_tokens: int | None) -> None:
        if prompt + (max_tokens or 0) <= n_ctx:
            return
        if max_tokens:
            message = (f"This model's maximum context length is {n_ctx} tokens. However, you "
                       f"requested {prompt + max_tokens} tokens ({prompt} in the messages, "
                       f"{max_tokens} in the completion). Please reduce the length of the "
                       "messages or completion.")
        else:
            message = (f"This model's maximum context length is {n_ctx} tokens. However, your "
                       f"messages resulted in {prompt} tokens. Please reduce the length of the "
                       "messages.")
        raise _HttpError(400, {"error": {"message": message, "type": "invalid_request_error",
                                         "param": "messages", "code": "context_length_exceeded"}})

    def missing_messages(self) -> _HttpError:
        return _HttpError(400, self.error_body(400, "'messages' is a required property"))

    def unknown_route(self, method: str, path: str) -> web.Response:
        body = self.error_body(404, f"Invalid URL ({method} {path})")
        return self.json_response(body, status=404)

    def json_response(self, body: Any, status: int = 200) -> web.Response:
        return web.Response(text=self.dumps(body), status=status,
                            content_type=self.json_content_type.split(";")[0],
                            charset="utf-8" if "charset" in self.json_content_type else None)

    # -- side endpoints

    def routes(self) -> dict[tuple[str, str], Handler]:
        return {("GET", "/v1/models"): self._models}

    async def _models(self, request: web.Request, rec: RecordedRequest) -> web.StreamResponse:
        return self.json_response(self.models_body())

    def models_body(self) -> Json:
        created = self.fake.created
        return {"object": "list", "data": [
            {"id": m, "object": "model", "created": created, "owned_by": "system"}
            for m in self.fake.models]}

    # -- chat request semantics

    def wants_usage(self, body: Json) -> bool:
        options = body.get("stream_options")
        return isinstance(options, dict) and options.get("include_usage") is True

    # -- streamed chunks

    def chunk(self, ctx: _Ctx, delta: Json | None, finish_reason: str | None = None) -> Json:
        data: Json = {
            "id": ctx.id, "object": "chat.completion.chunk", "created": ctx.created,
            "model": ctx.model, "system_fingerprint": "fp_fake0001",
            "choices": [{"index": 0, "delta": delta or {}, "logprobs": None,
                         "finish_reason": finish_reason}],
        }
        if ctx.include_usage and self.usage_null_when_included:
            data["usage"] = None
        return data

    def opening(self, ctx: _Ctx, empty: bool) -> list[Json]:
        return [self.chunk(ctx, {"role": "assistant", "content": "", "refusal": None})]

    def piece(self, ctx: _Ctx, delta: _Delta, first: bool) -> list[Json]:
        return [self.chunk(ctx, {delta.field: delta.text})]

    def closing(self, ctx: _Ctx, finish_reason: str, usage: Usage) -> list[Json]:
        chunks = [self.chunk(ctx, {}, finish_reason)]
        if ctx.include_usage:
            last = self.chunk(ctx, None)
            last["choices"] = []
            last["usage"] = self.usage_json(usage)
            chunks.append(last)
        return chunks

    def stream_error(self, ctx: _Ctx, message: str, code: int) -> Json | None:
        return {"error": {"message": message, "type": self.error_type(code), "param": None,
                          "code": None}}

    def usage_json(self, usage: Usage) -> Json:
        return {"prompt_tokens": usage.prompt_tokens,
                "completion_tokens": usage.completion_tokens,
                "total_tokens": usage.total_tokens,
                "prompt_tokens_details": {"cached_tokens": usage.cached_tokens, "audio_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                              "accepted_prediction_tokens": 0,
                                              "rejected_prediction_tokens": 0}}

    # -- not streamed

    def message(self, content: str, reasoning: str, field: str) -> Json:
        message: Json = {"role": "assistant", "content": content}
        if reasoning:
            message[field] = reasoning
        return message

    def completion(self, ctx: _Ctx, message: Json, finish_reason: str, usage: Usage) -> Json:
        message.setdefault("refusal", None)
        message.setdefault("annotations", [])
        return {"id": ctx.id, "object": "chat.completion", "created": ctx.created,
                "model": ctx.model,
                "choices": [{"index": 0, "message": message, "logprobs": None,
                             "finish_reason": finish_reason}],
                "usage": self.usage_json(usage), "service_tier": "default",
                "system_fingerprint": "fp_fake0001"}

    # -- hooks

    def extra_headers(self, request: web.Request) -> dict[str, str]:
        return {"x-request-id": "req_" + uuid.uuid4().hex}


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


class _Generic(_Dialect):
    persona = Persona.GENERIC
    usage_null_when_included = True  # "All other chunks will also include a usage field, …null"


class _LlamaCpp(_Dialect):
    """llama-server (tools/server): server-http.cpp, server-common.cpp, server-task.cpp."""

    persona = Persona.LLAMA_CPP
    server_header = "llama.cpp"
    json_content_type = "application/json; charset=utf-8"
    first_error_is_http = True  # "the first error must be treated as non-stream response"
    public_paths: ClassVar[frozenset[str]] = frozenset(
        {"/health", "/v1/health", "/models", "/v1/models", "/"})

    def new_id(self) -> str:
        return "chatcmpl-" + _random(_ALNUM, 32)

    def response_model(self, requested: str | None) -> str:
        return requested or self.fake.models[0]  # GUESS: echoes the request's model field

    def error_type(self, status: int) -> str:  # format_error_response()
        return {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
                403: "permission_error", 503: "unavailable_error",
                501: "not_supported_error"}.get(status, "server_error")

    def error_body(self, status: int, message: str | None = None) -> Json:
        if message is None:
            message = "Loading model" if status == 503 else _phrase(status)
        return {"error": {"code": status, "message": message, "type": self.error_type(status)}}

    def auth_applies(self, method: str, path: str) -> bool:
        return path not in self.public_paths

    def presented_key(self, request: web.Request) -> str | None:
        key = request.headers.get("Authorization") or request.headers.get("X-Api-Key") or ""
        return key.removeprefix("Bearer ") or None

    def unauthorized(self, presented: str | None) -> _HttpError:
        return _HttpError(401, {"error": {"message": "Invalid API Key",
                                          "type": "authentication_error", "code": 401}})

    def check_model(self, model: str | None) -> None:
        return None  # single-model llama-server serves whatever "model" says

    def malformed(self, raw: bytes, exc: ValueError) -> _HttpError:
        # nlohmann::json's parse_error, turned into a 500 by ex_wrapper (not invalid_argument)
        if not raw.strip():
            detail = ("attempting to parse an empty input; check that your input string or "
                      "stream contains the expected JSON")
            where = "line 1, column 1"
        else:
            pos = getattr(exc, "pos", 0)
            where = f"line 1, column {pos + 1}"
            last = raw[: pos + 1].decode("utf-8", "replace")[-10:]
            detail = f"syntax error while parsing value - invalid literal; last read: '{last}'"
        message = f"[json.exception.parse_error.101] parse error at {where}: {detail}"
        return _HttpError(500, self.error_body(500, message))

    def check_context(self, prompt: int, n_ctx: int, max_tokens: int | None) -> None:
        if prompt < n_ctx:  # server-context.cpp: n_tokens >= slot.n_ctx is refused
            return
        body = self.error_body(
            400, f"request ({prompt} tokens) exceeds the available context size ({n_ctx} "
                 "tokens), try increasing it")
        body["error"]["type"] = "exceed_context_size_error"
        body["error"]["n_prompt_tokens"] = prompt
        body["error"]["n_ctx"] = n_ctx
        raise _HttpError(400, body)

    def missing_messages(self) -> _HttpError:
        return _HttpError(400, self.error_body(400, "'messages' is required"))

    def unknown_route(self, method: str, path: str) -> web.Response:
        body = {"error": {"message": "File Not Found", "type": "not_found_error", "code": 404}}
        return self.json_response(body, status=404)

    def routes(self) -> dict[tuple[str, str], Handler]:
        return {("GET", "/v1/models"): self._models, ("GET", "/models"): self._models,
                ("GET", "/health"): self._health, ("GET", "/v1/health"): self._health,
                ("GET", "/props"): self._props, ("GET", "/"): self._index}

    async def _health(self, request: web.Request, rec: RecordedRequest) -> web.StreamResponse:
        return self.json_response({"status": "ok"})

    async def _index(self, request: web.Request, rec: RecordedRequest) -> web.StreamResponse:
        html = "<!doctype html><html><head><title>llama.cpp - chat</title></head></html>"
        return web.Response(text=html, content_type="text/html")

    async def _props(self, request: web.Request, rec: RecordedRequest) -> web.StreamResponse:
        n_ctx = self.fake.n_ctx
        return self.json_response({
            "default_generation_settings": {
                "id": 0, "id_task": -1, "n_ctx": n_ctx, "speculative": False,
                "is_processing": False, "params": {"n_predict": -1, "stream": True},
            },
            "total_slots": self.fake.parallel or 1,
            "model_alias": self.fake.models[0],
            "model_path": f"/models/{self.fake.models[0]}.gguf",
            "modalities": {"vision": False, "audio": False},
            "chat_template": "{{ messages }}",
            "bos_token": "<s>", "eos_token": "</s>",
            "build_info": LLAMA_CPP_BUILD,
        })

    def models_body(self) -> Json:
        name = self.fake.models[0]
        return {
            "models": [{  # the Ollama-style list it also serves
                "name": name, "model": name, "modified_at": "", "size": "", "digest": "",
                "type": "model", "description": "", "tags": [""], "capabilities": ["completion"],
                "parameters": "",
                "details": {"parent_model": "", "format": "gguf", "family": "", "families": [""],
                            "parameter_size": "", "quantization_level": ""},
            }],
            "object": "list",
            "data": [{
                "id": name, "object": "model", "created": self.fake.created,
                "owned_by": "llamacpp",
                "meta": {"vocab_type": 2, "n_vocab": 49152, "n_ctx_train": 8192, "n_embd": 576,
                         "n_params": 134515008, "size": 97833984},
            }],
        }

    def chunk(self, ctx: _Ctx, delta: Json | None, finish_reason: str | None = None) -> Json:
        return {"choices": [{"finish_reason": finish_reason, "index": 0, "delta": delta or {}}],
                "created": ctx.created, "id": ctx.id, "model": ctx.model,
                "system_fingerprint": LLAMA_CPP_BUILD, "object": "chat.completion.chunk"}

    def opening(self, ctx: _Ctx, empty: bool) -> list[Json]:
        return [self.chunk(ctx, {"role": "assistant", "content": None})]

    def closing(self, ctx: _Ctx, finish_reason: str, usage: Usage) -> list[Json]:
        chunks = [self.chunk(ctx, {}, finish_reason)]
        if ctx.include_usage:
            last = self.chunk(ctx, None)
            last["choices"] = []
            last["usage"] = self.usage_json(usage)
            chunks.append(last)
        chunks[-1]["timings"] = self.timings(usage)
        return chunks

    def stream_error(self, ctx: _Ctx, message: str, code: int) -> Json | None:
        return {"error": self.error_body(code, message)["error"]}

    def usage_json(self, usage: Usage) -> Json:
        return {"completion_tokens": usage.completion_tokens,
                "prompt_tokens": usage.prompt_tokens, "total_tokens": usage.total_tokens,
                "prompt_tokens_details": {"cached_tokens": usage.cached_tokens}}

    @staticmethod
    def timings(usage: Usage) -> Json:
        prompt_n = usage.prompt_tokens - usage.cached_tokens
        return {"cache_n": usage.cached_tokens, "prompt_n": prompt_n,
                "prompt_ms": prompt_n * 2.0, "prompt_per_token_ms": 2.0,
                "prompt_per_second": 500.0, "predicted_n": usage.completion_tokens,
                "predicted_ms": usage.completion_tokens * 20.0, "predicted_per_token_ms": 20.0,
                "predicted_per_second": 50.0}

    def completion(self, ctx: _Ctx, message: Json, finish_reason: str, usage: Usage) -> Json:
        return {"choices": [{"finish_reason": finish_reason, "index": 0, "message": message}],
                "created": ctx.created, "model": ctx.model,
                "system_fingerprint": LLAMA_CPP_BUILD, "object": "chat.completion",
                "usage": self.usage_json(usage), "id": ctx.id, "timings": self.timings(usage)}

    def extra_headers(self, request: web.Request) -> dict[str, str]:
        # pre-routing handler: the request's Origin, reflected (empty when there is none)
        return {"Access-Control-Allow-Origin": request.headers.get("Origin", "")}


class _Ollama(_Dialect):
    """Ollama's OpenAI layer: openai/openai.go, middleware/openai.go, server/routes.go."""

    persona = Persona.OLLAMA
    reasoning_style = ReasoningStyle.REASONING
    checks_api_key = False  # Ollama has no key; SDKs send one, it is ignored
    first_error_is_http = True  # streamResponse: c.JSON(status, …) while nothing is written

    def dumps(self, obj: Any) -> str:
        # encoding/json escapes HTML-significant characters and the JS line separators
        text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
        for char, escaped in (("&", "\\u0026"), ("<", "\\u003c"), (">", "\\u003e"),
                              ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
            text = text.replace(char, escaped)
        return text

    def new_id(self) -> str:
        return f"chatcmpl-{random.randrange(999)}"

    def response_model(self, requested: str | None) -> str:
        return requested or ""

    def error_type(self, status: int) -> str:  # openai.NewError
        return {400: "invalid_request_error", 404: "not_found_error"}.get(status, "api_error")

    def error_body(self, status: int, message: str | None = None) -> Json:
        return {"error": {"message": message or _phrase(status), "type": self.error_type(status),
                          "param": None, "code": None}}

    @staticmethod
    def tagged(name: str) -> str:
        return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"

    def check_model(self, model: str | None) -> None:
        if not model:
            raise _HttpError(400, self.error_body(400, "model is required"))
        if self.tagged(model) not in {self.tagged(m) for m in self.fake.models}:
            # routes.go ChatHandler (>= 0.12): model '%s' not found
            raise _HttpError(404, self.error_body(404, f"model '{model}' not found"))

    def malformed(self, raw: bytes, exc: ValueError) -> _HttpError:
        if not raw.strip():
            return _HttpError(400, self.error_body(400, "EOF"))
        pos = getattr(exc, "pos", 0)
        char = raw[pos: pos + 1].decode("utf-8", "replace") or "?"
        return _HttpError(
            400, self.error_body(400, f"invalid character '{char}' looking for beginning of value"))

    def check_context(self, prompt: int, n_ctx: int, max_tokens: int | None) -> None:
        return None  # never refused: chatPrompt() truncated the history before

    def missing_messages(self) -> _HttpError:
        return _HttpError(400, self.error_body(400, "[] is too short - 'messages'"))

    def unknown_route(self, method: str, path: str) -> web.Response:
        return web.Response(text="404 page not found", status=404, content_type="text/plain")

    def routes(self) -> dict[tuple[str, str], Handler]:
        return {("GET", "/v1/models"): self._models, ("GET", "/"): self._root,
                ("GET", "/api/version"): self._version, ("GET", "/api/tags"): self._tags}

    async def _root(self, request: web.Request, rec: RecordedRequest) -> web.StreamResponse:
        return web.Response(text="Ollama is running", content_type="text/plain")

    async def _version(self, request: web.Request, rec: RecordedRequest) -> web.StreamResponse:
        return self.json_response({"version": OLLAMA_VERSION})

    async def _tags(self, request: web.Request, rec: RecordedRequest) -> web.StreamResponse:
        return self.json_response({"models": [{
            "name": self.tagged(m), "model": self.tagged(m),
            "modified_at": "2025-06-01T12:00:00.000000000Z", "size": 97833984,
            "digest": uuid.uuid5(uuid.NAMESPACE_URL, m).hex * 2,
            "details": {"parent_model": "", "format": "gguf", "family": "llama",
                        "families": ["llama"], "parameter_size": "134.52M",
                        "quantization_level": "Q4_1"},
        } for m in self.fake.models]})

    def models_body(self) -> Json:
        data = [{"id": self.tagged(m), "object": "model", "created": self.fake.created,
                 "owned_by": m.split("/", 1)[0] if "/" in m else "library"}
                for m in self.fake.models]
        return {"object": "list", "data": data or None}  # a nil slice marshals as null

    def json_response(self, body: Any, status: int = 200) -> web.Response:
        return web.Response(text=self.dumps(body), status=status, content_type="application/json")

    def chunk(self, ctx: _Ctx, delta: Json | None, finish_reason: str | None = None) -> Json:
        return {"id": ctx.id, "object": "chat.completion.chunk", "created": ctx.created,
                "model": ctx.model, "system_fingerprint": "fp_ollama",
                "choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish_reason}]}

    def opening(self, ctx: _Ctx, empty: bool) -> list[Json]:
        # the role rides on the first piece; an empty completion still opens with it
        return [self.chunk(ctx, {"role": "assistant", "content": ""})] if empty else []

    def piece(self, ctx: _Ctx, delta: _Delta, first: bool) -> list[Json]:
        body: Json = {"role": "assistant"} if first else {}
        body["content"] = delta.text if delta.kind == "content" else ""
        if delta.kind == "reasoning":
            body[delta.field] = delta.text
        return [self.chunk(ctx, body)]

    def stream_error(self, ctx: _Ctx, message: str, code: int) -> Json | None:
        # {"error": "…"} unmarshals into an empty api.ChatResponse: one empty content chunk
        return self.chunk(ctx, {"content": ""})

    def usage_json(self, usage: Usage) -> Json:
        return {"prompt_tokens": usage.prompt_tokens,
                "completion_tokens": usage.completion_tokens, "total_tokens": usage.total_tokens}

    def completion(self, ctx: _Ctx, message: Json, finish_reason: str, usage: Usage) -> Json:
        return {"id": ctx.id, "object": "chat.completion", "created": ctx.created,
                "model": ctx.model, "system_fingerprint": "fp_ollama",
                "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
                "usage": self.usage_json(usage)}

    def extra_headers(self, request: web.Request) -> dict[str, str]:
        return {}


class _Vllm(_Dialect):
    """vLLM >= 0.10.1: nested ErrorResponse, reasoning as delta.reasoning."""

    persona = Persona.VLLM
    server_header = "uvicorn"
    reasoning_style = ReasoningStyle.REASONING
    done_after_error = True  # serving_chat: the error event, then "data: [DONE]"
    sse_content_type = "text/event-stream; charset=utf-8"  # Starlette adds the charset

    def new_id(self) -> str:
        return "chatcmpl-" + uuid.uuid4().hex

    def error_type(self, status: int) -> str:
        return {400: "BadRequestError", 404: "NotFoundError",
                500: "InternalServerError"}.get(status, _phrase(status))

    def error_body(self, status: int, message: str | None = None) -> Json:
        return {"error": {"message": message or _phrase(status), "type": self.error_type(status),
                          "param": None, "code": status}}

    def unauthorized(self, presented: str | None) -> _HttpError:
        return _HttpError(401, {"error": "Unauthorized"})  # AuthenticationMiddleware

    def check_model(self, model: str | None) -> None:
        if model not in self.fake.models:
            raise _HttpError(404, self.error_body(404, f"The model `{model}` does not exist."))

    def malformed(self, raw: bytes, exc: ValueError) -> _HttpError:
        # FastAPI's RequestValidationError, through validation_exception_handler
        detail = getattr(exc, "msg", str(exc))
        errors = [{"type": "json_invalid", "loc": ("body", getattr(exc, "pos", 0)),
                   "msg": "JSON decode error", "input": {}, "ctx": {"error": detail}}]
        body = self.error_body(400, str(errors))
        body["error"]["type"] = "Bad Request"
        return _HttpError(400, body)

    def check_context(self, prompt: int, n_ctx: int, max_tokens: int | None) -> None:
        if prompt >= n_ctx:
            message = (f"This model's maximum context length is {n_ctx} tokens. However, your "
                       f"request has {prompt} input tokens. Please reduce the length of the "
                       "input messages.")
        elif max_tokens and prompt + max_tokens > n_ctx:
            message = (f"'max_tokens' or 'max_completion_tokens' is too large: {max_tokens}. "
                       f"This model's maximum context length is {n_ctx} tokens and your "
                       f"request has {prompt} input tokens ({max_tokens} > {n_ctx} - {prompt}).")
        else:
            return
        raise _HttpError(400, self.error_body(400, message))

    def missing_messages(self) -> _HttpError:
        return _HttpError(400, self.error_body(400, "Field required: messages"))

    def unknown_route(self, method: str, path: str) -> web.Response:
        return self.json_response({"detail": "Not Found"}, status=404)  # FastAPI's default

    def routes(self) -> dict[tuple[str, str], Handler]:
        return {("GET", "/v1/models"): self._models, ("GET", "/health"): self._health,
                ("GET", "/version"): self._version}

    async def _health(self, request: web.Request, rec: RecordedRequest) -> web.StreamResponse:
        return web.Response(status=200)  # empty body

    async def _version(self, request: web.Request, rec: RecordedRequest) -> web.StreamResponse:
        return self.json_response({"version": VLLM_VERSION})

    def models_body(self) -> Json:
        created = self.fake.created
        root = self.fake.models[0]
        return {"object": "list", "data": [{
            "id": m, "object": "model", "created": created, "owned_by": self.owned_by,
            "root": root, "parent": None, "max_model_len": self.fake.n_ctx,
            "permission": [{
                "id": "modelperm-" + uuid.uuid5(uuid.NAMESPACE_URL, m).hex,
                "object": "model_permission", "created": created, "allow_create_engine": False,
                "allow_sampling": True, "allow_logprobs": True, "allow_search_indices": False,
                "allow_view": True, "allow_fine_tuning": False, "organization": "*",
                "group": None, "is_blocking": False}],
        } for m in self.fake.models]}

    owned_by: ClassVar[str] = "vllm"

    def wants_usage(self, body: Json) -> bool:
        options = body.get("stream_options")  # StreamOptions.include_usage defaults to True
        return isinstance(options, dict) and options.get("include_usage", True) is True

    def chunk(self, ctx: _Ctx, delta: Json | None, finish_reason: str | None = None) -> Json:
        data: Json = {"id": ctx.id, "object": "chat.completion.chunk", "created": ctx.created,
                      "model": ctx.model,
                      "choices": [{"index": 0, "delta": delta or {}, "logprobs": None,
                                   "finish_reason": finish_reason}]}
        if finish_reason is not None:
            data["choices"][0]["stop_reason"] = None
        if ctx.include_usage and self.usage_null_when_included:
            data["usage"] = None
        return data

    def opening(self, ctx: _Ctx, empty: bool) -> list[Json]:
        return [self.chunk(ctx, {"role": "assistant", "content": ""})]

    def closing(self, ctx: _Ctx, finish_reason: str, usage: Usage) -> list[Json]:
        chunks = [self.chunk(ctx, {"content": ""}, finish_reason)]
        if ctx.include_usage:
            last = self.chunk(ctx, None)
            last["choices"] = []
            last["usage"] = self.usage_json(usage)
            chunks.append(last)
        return chunks

    def stream_error(self, ctx: _Ctx, message: str, code: int) -> Json | None:
        return {"error": self.error_body(code, message)["error"]}

    def usage_json(self, usage: Usage) -> Json:
        return {"prompt_tokens": usage.prompt_tokens, "total_tokens": usage.total_tokens,
                "completion_tokens": usage.completion_tokens}

    def completion(self, ctx: _Ctx, message: Json, finish_reason: str, usage: Usage) -> Json:
        message.setdefault("refusal", None)
        message.setdefault("tool_calls", [])
        return {"id": ctx.id, "object": "chat.completion", "created": ctx.created,
                "model": ctx.model,
                "choices": [{"index": 0, "message": message, "logprobs": None,
                             "finish_reason": finish_reason, "stop_reason": None}],
                "usage": self.usage_json(usage), "prompt_logprobs": None}

    def extra_headers(self, request: web.Request) -> dict[str, str]:
        return {"X-Request-Id": request.headers.get("X-Request-Id", uuid.uuid4().hex)}


class _Nim(_Vllm):
    """ChatRTX 0.5's NIM: NIM 1.x health/metadata endpoints over a vLLM ~0.5 server."""

    persona = Persona.NIM
    reasoning_style = ReasoningStyle.REASONING_CONTENT
    checks_api_key = False
    usage_null_when_included = True  # vLLM 0.5: chunk.usage = None unless continuous stats
    stream_error_code = 400  # create_streaming_error_response() defaults: BadRequestError, 400
    owned_by = "system"

    def error_body(self, status: int, message: str | None = None) -> Json:
        # vLLM < 0.10.1: the ErrorResponse is the whole body
        return {"object": "error", "message": message or _phrase(status),
                "type": self.error_type(status), "param": None, "code": status}

    def malformed(self, raw: bytes, exc: ValueError) -> _HttpError:
        detail = getattr(exc, "msg", str(exc))
        errors = [{"type": "json_invalid", "loc": ("body", getattr(exc, "pos", 0)),
                   "msg": "JSON decode error", "input": {}, "ctx": {"error": detail}}]
        return _HttpError(400, self.error_body(400, str(errors)))

    def check_context(self, prompt: int, n_ctx: int, max_tokens: int | None) -> None:
        if not max_tokens:
            if prompt >= n_ctx:
                raise _HttpError(400, self.error_body(400, (
                    f"This model's maximum context length is {n_ctx} tokens. However, you "
                    f"requested {prompt} tokens in the messages, Please reduce the length of "
                    "the messages.")))
            return
        if prompt + max_tokens > n_ctx:
            raise _HttpError(400, self.error_body(400, (
                f"This model's maximum context length is {n_ctx} tokens. However, you "
                f"requested {prompt + max_tokens} tokens ({prompt} in the messages, "
                f"{max_tokens} in the completion). Please reduce the length of the messages "
                "or completion.")))

    def routes(self) -> dict[tuple[str, str], Handler]:
        return {("GET", "/v1/models"): self._models,
                ("GET", "/v1/health/ready"): self._ready,
                ("GET", "/v1/health/live"): self._live,
                ("GET", "/v1/metadata"): self._metadata,
                ("GET", "/v1/version"): self._nim_version}

    async def _ready(self, request: web.Request, rec: RecordedRequest) -> web.StreamResponse:
        if self.fake.loading:  # GUESS: the 503 body
            return self.json_response(
                {"object": "health-response", "message": "Service is not ready."}, status=503)
        return self.json_response({"object": "health-response", "message": "Service is ready."})

    async def _live(self, request: web.Request, rec: RecordedRequest) -> web.StreamResponse:
        return self.json_response({"object": "health-response", "message": "Service is live."})

    async def _metadata(self, request: web.Request, rec: RecordedRequest) -> web.StreamResponse:
        return self.json_response({  # GUESS: field names of NIM 1.x metadata
            "version": NIM_RELEASE,
            "modelInfo": [{"shortName": m, "modelUrl": f"ngc://nim/{m}"}
                          for m in self.fake.models],
            "repository_override": "", "assetInfo": [], "licenseInfo": {},
        })

    async def _nim_version(self, request: web.Request, rec: RecordedRequest) -> web.StreamResponse:
        return self.json_response({"release": NIM_RELEASE, "api": "1.0.0"})

    def opening(self, ctx: _Ctx, empty: bool) -> list[Json]:
        return [self.chunk(ctx, {"role": "assistant"})]  # DeltaMessage(role=…), exclude_unset

    def stream_error(self, ctx: _Ctx, message: str, code: int) -> Json | None:
        # json.dumps({"error": create_error_response(…).model_dump()}): the flat body, nested
        return {"error": self.error_body(code, message)}

    def usage_json(self, usage: Usage) -> Json:
        return {"prompt_tokens": usage.prompt_tokens, "total_tokens": usage.total_tokens,
                "completion_tokens": usage.completion_tokens}

    def completion(self, ctx: _Ctx, message: Json, finish_reason: str, usage: Usage) -> Json:
        message.setdefault("tool_calls", [])
        return {"id": ctx.id, "object": "chat.completion", "created": ctx.created,
                "model": ctx.model,
                "choices": [{"index": 0, "message": message, "logprobs": None,
                             "finish_reason": finish_reason, "stop_reason": None}],
                "usage": self.usage_json(usage)}


class _LmStudio(_Dialect):
    """LM Studio 0.3.x/0.4.x server (closed source: docs and issue reports)."""

    persona = Persona.LM_STUDIO

    def new_id(self) -> str:
        return "chatcmpl-" + _random(_LOWER_ALNUM, 21)

    def response_model(self, requested: str | None) -> str:
        if requested in self.fake.models:
            return requested
        return self.fake.models[0]  # the loaded model answers (#619)

    def error_body(self, status: int, message: str | None = None) -> Json:  # GUESS: types
        return {"error": {"message": message or _phrase(status),
                          "type": "invalid_request_error" if status < 500 else "server_error",
                          "param": None, "code": None}}

    def auth_applies(self, method: str, path: str) -> bool:
        return True

    def unauthorized(self, presented: str | None) -> _HttpError:
        if presented is None:
            message = (
                "An LM Studio API token is required to make requests to this server, but none "
                "was provided using the Authorization header using the 'Bearer' scheme (i.e., "
                "'Authorization: Bearer $LM_API_TOKEN'). Learn more at: "
                "https://lmstudio.ai/docs/developer/core/authentication.")
        else:  # GUESS: the wording for a wrong token
            message = ("The provided LM Studio API token is invalid. Learn more at: "
                       "https://lmstudio.ai/docs/developer/core/authentication.")
        return _HttpError(401, {"error": {"type": "invalid_request", "code": "invalid_api_key",
                                          "message": message}})

    def check_model(self, model: str | None) -> None:
        if len(self.fake.models) == 1 or model in self.fake.models:
            return  # one model loaded: the field is ignored (lmstudio-bug-tracker#619)
        listing = "\n".join(self.fake.models)
        raise _HttpError(404, {"error": {
            "message": f'Model "{model}" not found. Please specify a valid model.\n\n'
                       f"Your models:\n\n{listing}",
            "type": "invalid_request_error", "param": "model", "code": "model_not_found"}})

    def malformed(self, raw: bytes, exc: ValueError) -> _HttpError:  # GUESS
        return _HttpError(400, {"error": f"Unexpected token in JSON at position "
                                         f"{getattr(exc, 'pos', 0)}"})

    def check_context(self, prompt: int, n_ctx: int, max_tokens: int | None) -> None:
        if prompt < n_ctx:
            return
        raise _HttpError(400, {"error": (
            "The number of tokens to keep from the initial prompt is greater than the context "
            f"length (n_keep: {prompt}>= n_ctx: {n_ctx}). Try to load the model with a larger "
            "context length, or provide a shorter input.")})

    def unknown_route(self, method: str, path: str) -> web.Response:
        return self.json_response({"error": f"Unexpected endpoint or method. ({method} {path})"})

    def routes(self) -> dict[tuple[str, str], Handler]:
        return {("GET", "/v1/models"): self._models, ("GET", "/api/v0/models"): self._v0_models}

    def models_body(self) -> Json:
        return {"data": [{"id": m, "object": "model", "owned_by": "organization_owner"}
                         for m in self.fake.models], "object": "list"}

    async def _v0_models(self, request: web.Request, rec: RecordedRequest) -> web.StreamResponse:
        return self.json_response({"object": "list", "data": [{
            "id": m, "object": "model", "type": "llm", "publisher": "lmstudio-community",
            "arch": "llama", "compatibility_type": "gguf", "quantization": "Q4_K_M",
            "state": "loaded", "max_context_length": self.fake.n_ctx,
        } for m in self.fake.models]})

    def chunk(self, ctx: _Ctx, delta: Json | None, finish_reason: str | None = None) -> Json:
        return {"id": ctx.id, "object": "chat.completion.chunk", "created": ctx.created,
                "model": ctx.model, "system_fingerprint": ctx.model,
                "choices": [{"index": 0, "delta": delta or {}, "logprobs": None,
                             "finish_reason": finish_reason}]}

    def opening(self, ctx: _Ctx, empty: bool) -> list[Json]:  # GUESS
        return [self.chunk(ctx, {"role": "assistant", "content": ""})] if empty else []

    def piece(self, ctx: _Ctx, delta: _Delta, first: bool) -> list[Json]:  # GUESS
        body: Json = {"role": "assistant"} if first else {}
        body[delta.field] = delta.text
        return [self.chunk(ctx, body)]

    def stream_error(self, ctx: _Ctx, message: str, code: int) -> Json | None:  # GUESS
        return {"error": message}

    def usage_json(self, usage: Usage) -> Json:
        return {"prompt_tokens": usage.prompt_tokens,
                "completion_tokens": usage.completion_tokens, "total_tokens": usage.total_tokens}

    def completion(self, ctx: _Ctx, message: Json, finish_reason: str, usage: Usage) -> Json:
        return {"id": ctx.id, "object": "chat.completion", "created": ctx.created,
                "model": ctx.model,
                "choices": [{"index": 0, "logprobs": None, "finish_reason": finish_reason,
                             "message": message}],
                "usage": self.usage_json(usage), "stats": {}, "system_fingerprint": ctx.model}

    def extra_headers(self, request: web.Request) -> dict[str, str]:
        return {}


_DIALECTS: dict[Persona, type[_Dialect]] = {
    Persona.LLAMA_CPP: _LlamaCpp, Persona.OLLAMA: _Ollama, Persona.LM_STUDIO: _LmStudio,
    Persona.NIM: _Nim, Persona.VLLM: _Vllm, Persona.GENERIC: _Generic,
}


# ---------------------------------------------------------------------------------------- fake


class FakeOpenAI:
    """The fake server. Use as ``async with FakeOpenAI(...) as fake:``."""

    def __init__(
        self,
        *,
        persona: Persona = Persona.GENERIC,
        models: Sequence[str] | None = None,
        api_key: str | None = None,
        context_chars: int | None = None,
        chars_per_token: int = 4,
        parallel: int | None = None,
        loading: bool = False,
        port: int = 0,
    ) -> None:
        if parallel is not None and parallel < 1:
            raise ValueError("parallel must be >= 1")
        self.persona = persona
        self.models: list[str] = list(
            models if models is not None else ((NIM_MODEL,) if persona is Persona.NIM
                                               else ("smol",)))
        if not self.models and persona is not Persona.OLLAMA:
            raise ValueError(f"{persona.value} always serves a model")
        self.api_key = api_key
        self.context_chars = context_chars
        self.chars_per_token = chars_per_token
        self.parallel = parallel
        self.created = int(time.time())

        self.requests: list[RecordedRequest] = []
        self.hangups: list[RecordedRequest] = []
        self.streams_in_progress = 0
        self.active = 0  # chat requests holding a slot (generating)
        self.queued = 0  # chat requests waiting for a slot
        self.max_active = 0

        self._dialect = _DIALECTS[persona](self)
        self._routes = self._dialect.routes()
        self._script: list[Reply] = []
        self._loading = loading
        self._slots = asyncio.Semaphore(parallel) if parallel is not None else None
        self._tick = asyncio.Event()
        self._closing = False
        self._shutdown = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._port = port

    # ------------------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> FakeOpenAI:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.on_response_prepare.append(self._on_prepare)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        # handler_cancellation: a client that goes away cancels its handler, even mid-stall
        self._runner = web.AppRunner(app, shutdown_timeout=0.5, access_log=None,
                                     handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self._port)
        await site.start()
        self._port = int(self._runner.addresses[0][1])
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._closing = True
        self._shutdown.set()  # stalled streams end (without [DONE])
        self._bump()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def root_url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    @property
    def base_url(self) -> str:
        """For ``AsyncOpenAI(base_url=…)``."""
        return f"{self.root_url}/v1"

    @property
    def n_ctx(self) -> int:
        """The context in tokens, as /props, /v1/models and /api/v0/models report it."""
        if self.context_chars is None:
            return DEFAULT_N_CTX
        return self.context_chars // self.chars_per_token

    @property
    def loading(self) -> bool:
        """llama.cpp: 503 ``Loading model`` on every path; NIM: /v1/health/ready 503."""
        return self._loading

    @loading.setter
    def loading(self, value: bool) -> None:
        self._loading = value
        self._bump()

    def tokens(self, chars: int) -> int:
        return math.ceil(chars / self.chars_per_token)

    # ------------------------------------------------------------------------------ scripting

    def script(self, *replies: Reply) -> None:
        """Queue what the next chat completions do, in order."""
        self._script.extend(replies)

    def clear_script(self) -> None:
        self._script.clear()

    @property
    def pending_replies(self) -> int:
        return len(self._script)

    # ------------------------------------------------------------------------------ recording

    @property
    def chat_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.is_chat]

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        """Wait until ``predicate()`` (over the fake's state) holds."""
        await self._wait(lambda: True if predicate() else None, timeout, self._summary)

    async def wait_requests(self, n: int, timeout: float = 5.0, *, chat_only: bool = True) -> None:
        """Wait until ``n`` (chat) requests have arrived."""
        def count() -> int:
            return len(self.chat_requests if chat_only else self.requests)

        await self._wait(lambda: True if count() >= n else None, timeout, self._summary)

    async def wait_hangups(self, n: int, timeout: float = 5.0) -> list[RecordedRequest]:
        """Wait until ``n`` clients have gone away before their answer was complete."""
        return await self._wait(
            lambda: list(self.hangups) if len(self.hangups) >= n else None, timeout,
            self._summary)

    async def wait_stalled(self, n: int = 1, timeout: float = 5.0) -> None:
        """Wait until ``n`` requests are parked at their ``stall_after`` point."""
        await self.wait_until(lambda: sum(r.stalled and not r.hung_up for r in self.requests) >= n,
                              timeout)

    async def _wait(self, find: Callable[[], _T | None], timeout: float,
                    context: Callable[[], str]) -> _T:
        try:
            async with asyncio.timeout(timeout):
                while True:
                    tick = self._tick  # taken before checking, so no change is missed
                    found = find()
                    if found is not None:
                        return found
                    await tick.wait()
        except TimeoutError:
            raise TimeoutError(f"not reached within {timeout}s; {context()}") from None

    def _summary(self) -> str:
        lines = [f"{r.method} {r.path}->{r.status}{' hung-up' if r.hung_up else ''}"
                 for r in self.requests[-20:]]
        return (f"streams={self.streams_in_progress} active={self.active} queued={self.queued} "
                f"hangups={len(self.hangups)} requests: {', '.join(lines)}")

    def _bump(self) -> None:
        self._tick.set()
        self._tick = asyncio.Event()

    def _hung_up(self, rec: RecordedRequest) -> None:
        if self._closing or rec.hung_up or rec.completed:
            return
        rec.hung_up = True
        self.hangups.append(rec)
        self._bump()

    # -------------------------------------------------------------------------------- routing

    async def _on_prepare(self, request: web.Request, response: web.StreamResponse) -> None:
        header = self._dialect.server_header
        if header is None:
            response.headers.popall("Server", None)
        else:
            response.headers["Server"] = header
        for name, value in self._dialect.extra_headers(request).items():
            response.headers.setdefault(name, value)

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        rec = RecordedRequest(method=request.method, path=request.path,
                              query=dict(request.query), headers=dict(request.headers),
                              raw_body=raw)
        with contextlib.suppress(ValueError):
            rec.body = json.loads(raw) if raw else None
        self.requests.append(rec)
        self._bump()
        try:
            response = await self._route(request, rec)
        except _HttpError as err:
            response = self._error_response(err)
        except asyncio.CancelledError:
            self._hung_up(rec)
            raise
        if rec.status is None:
            rec.status = response.status
        self._bump()
        return response

    def _error_response(self, err: _HttpError) -> web.Response:
        response = self._dialect.json_response(err.body, status=err.status)
        response.headers.update(err.headers)
        return response

    async def _route(self, request: web.Request, rec: RecordedRequest) -> web.StreamResponse:
        dialect = self._dialect
        if self.persona is Persona.LLAMA_CPP and self._loading:
            raise _HttpError(503, dialect.error_body(503, "Loading model"))
        if (self.api_key is not None and dialect.checks_api_key and request.method != "OPTIONS"
                and dialect.auth_applies(request.method, request.path)):
            presented = dialect.presented_key(request)
            if presented != self.api_key:
                raise dialect.unauthorized(presented)
        if rec.is_chat:
            return await self._chat(request, rec)
        handler = self._routes.get((request.method, request.path))
        if handler is None:
            return dialect.unknown_route(request.method, request.path)
        return await handler(request, rec)

    # -------------------------------------------------------------------------- chat requests

    async def _chat(self, request: web.Request, rec: RecordedRequest) -> web.StreamResponse:
        dialect = self._dialect
        try:
            body = json.loads(rec.raw_body) if rec.raw_body.strip() else None
        except ValueError as exc:
            raise dialect.malformed(rec.raw_body, exc) from None
        if not isinstance(body, dict):
            raise dialect.malformed(rec.raw_body, ValueError("expected an object"))
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise dialect.missing_messages()
        dialect.check_model(body.get("model"))

        kept = [m for m in messages if isinstance(m, dict)]
        if self.persona is Persona.OLLAMA and self.context_chars is not None:
            kept = self._ollama_truncate(kept)
        rec.kept_messages = kept
        rec.prompt_tokens = self.tokens(sum(len(message_text(m)) for m in kept))
        max_tokens = _max_tokens(body)

        async with self._slot():
            if self.context_chars is not None:
                dialect.check_context(rec.prompt_tokens, self.n_ctx, max_tokens)
            reply = self._script.pop(0) if self._script else Reply()
            rec.reply = reply
            self._bump()
            return await self._answer(request, rec, body, reply, max_tokens)

    def _ollama_truncate(self, messages: list[Json]) -> list[Json]:
        """server/prompt.go chatPrompt(): drop the oldest messages (keeping system ones) until
        the prompt fits; the last message is always kept, fitting or not."""
        for start in range(len(messages)):
            system = [m for m in messages[:start] if m.get("role") == "system"]
            candidate = system + messages[start:]
            if self.tokens(sum(len(message_text(m)) for m in candidate)) <= self.n_ctx:
                return candidate
        return [m for m in messages[:-1] if m.get("role") == "system"] + messages[-1:]

    @contextlib.asynccontextmanager
    async def _slot(self) -> AsyncIterator[None]:
        if self._slots is not None:
            self.queued += 1
            self._bump()
            try:
                await self._slots.acquire()
            finally:
                self.queued -= 1
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        self._bump()
        try:
            yield
        finally:
            self.active -= 1
            if self._slots is not None:
                self._slots.release()
            self._bump()

    async def _answer(self, request: web.Request, rec: RecordedRequest, body: Json,
                      reply: Reply, max_tokens: int | None) -> web.StreamResponse:
        dialect = self._dialect
        if reply.status is not None:
            if isinstance(reply.error, dict):
                error_body: Any = reply.error
            else:
                error_body = dialect.error_body(reply.status, reply.error)
            raise _HttpError(reply.status, error_body, reply.headers)

        style = reply.reasoning_style or dialect.reasoning_style
        reasoning = _pieces(reply.reasoning)
        finish_reason = reply.finish_reason
        if reply.content is None:
            content = default_reply_pieces(rec.kept_messages or [])
            if max_tokens and self.tokens(sum(map(len, content))) > max_tokens:
                content = _cut(content, max_tokens * self.chars_per_token)
                finish_reason = "length"
        else:
            content = _pieces(reply.content)
        deltas = _deltas(reasoning, content, style, reply.think_open_tag)
        usage = reply.usage or Usage(rec.prompt_tokens,
                                     self.tokens(sum(len(d.text) for d in deltas)))
        ctx = _Ctx(id=dialect.new_id(), created=int(time.time()),
                   model=dialect.response_model(body.get("model")),
                   include_usage=rec.stream and dialect.wants_usage(body))
        if rec.stream:
            return await self._stream(request, rec, reply, ctx, deltas, finish_reason, usage)
        return await self._complete(rec, reply, ctx, deltas, finish_reason, usage)

    async def _complete(self, rec: RecordedRequest, reply: Reply, ctx: _Ctx,
                        deltas: list[_Delta], finish_reason: str,
                        usage: Usage) -> web.StreamResponse:
        dialect = self._dialect
        for i in range(len(deltas) + 1):
            if reply.stall_after == i:
                await self._stall(rec)
                raise _HttpError(503, dialect.error_body(503))  # the fake is closing
            if reply.error_after == i:
                raise _HttpError(self._error_code(reply),
                                 reply.error if isinstance(reply.error, dict)
                                 else dialect.error_body(self._error_code(reply),
                                                         self._error_message(reply)),
                                 reply.headers)
            if reply.chunk_delay and i < len(deltas):
                await asyncio.sleep(reply.chunk_delay)
        content = "".join(d.text for d in deltas if d.kind == "content")
        reasoning = "".join(d.text for d in deltas if d.kind == "reasoning")
        field_name = next((d.field for d in deltas if d.kind == "reasoning"),
                          dialect.reasoning_style.value)
        message = dialect.message(content, reasoning, field_name)
        response = dialect.json_response(dialect.completion(ctx, message, finish_reason, usage))
        response.headers.update(reply.headers)
        rec.pieces_sent = len(deltas)
        rec.completed = True
        return response

    def _error_code(self, reply: Reply) -> int:
        return reply.error_code or self._dialect.stream_error_code

    @staticmethod
    def _error_message(reply: Reply) -> str:
        return reply.error if isinstance(reply.error, str) else "fake failure during generation"

    async def _stall(self, rec: RecordedRequest) -> None:
        """Hang until the client goes away (the handler is cancelled) or the fake closes."""
        rec.stalled = True
        self._bump()
        await self._shutdown.wait()

    async def _stream(self, request: web.Request, rec: RecordedRequest, reply: Reply, ctx: _Ctx,
                      deltas: list[_Delta], finish_reason: str,
                      usage: Usage) -> web.StreamResponse:
        dialect = self._dialect
        if reply.error_after == 0 and dialect.first_error_is_http:
            code = self._error_code(reply)
            raise _HttpError(code, reply.error if isinstance(reply.error, dict)
                             else dialect.error_body(code, self._error_message(reply)),
                             reply.headers)
        response = web.StreamResponse(status=200)
        response.headers["Content-Type"] = dialect.sse_content_type
        response.headers["Cache-Control"] = "no-cache"
        response.headers.update(reply.headers)
        await response.prepare(request)
        rec.status = 200
        self.streams_in_progress += 1
        self._bump()
        try:
            for i, delta in enumerate(deltas):
                if reply.stall_after == i:
                    await self._stall(rec)
                    return response  # the fake is closing: cut the stream here
                if reply.error_after == i:
                    await self._send_error(response, rec, reply, ctx)
                    return response
                if reply.chunk_delay:
                    await asyncio.sleep(reply.chunk_delay)
                events = dialect.opening(ctx, empty=False) if i == 0 else []
                events += dialect.piece(ctx, delta, first=i == 0)
                for event in events:
                    await self._send(response, rec, event)
                rec.pieces_sent += 1
                self._bump()
            if reply.stall_after is not None and reply.stall_after >= len(deltas):
                await self._stall(rec)
                return response
            if not deltas:
                for event in dialect.opening(ctx, empty=True):
                    await self._send(response, rec, event)
            if reply.error_after is not None and reply.error_after >= len(deltas):
                await self._send_error(response, rec, reply, ctx)
                return response
            for event in dialect.closing(ctx, finish_reason, usage):
                await self._send(response, rec, event)
            await self._send_raw(response, rec, b"data: [DONE]\n\n")
            rec.completed = True
            await response.write_eof()
        except ConnectionResetError:
            self._hung_up(rec)
        except asyncio.CancelledError:
            self._hung_up(rec)
            raise
        finally:
            self.streams_in_progress -= 1
            self._bump()
        return response

    async def _send(self, response: web.StreamResponse, rec: RecordedRequest, event: Json) -> None:
        line = f"data: {self._dialect.dumps(event)}\n\n"
        await self._send_raw(response, rec, line.encode())

    async def _send_raw(self, response: web.StreamResponse, rec: RecordedRequest,
                        data: bytes) -> None:
        await response.write(data)
        rec.events_sent += 1

    async def _send_error(self, response: web.StreamResponse, rec: RecordedRequest,
                          reply: Reply, ctx: _Ctx) -> None:
        dialect = self._dialect
        if isinstance(reply.error, dict):
            payload: Json | None = reply.error
        else:
            payload = dialect.stream_error(ctx, self._error_message(reply),
                                           self._error_code(reply))
        if payload is not None:
            await self._send(response, rec, payload)
        if dialect.done_after_error:
            await self._send_raw(response, rec, b"data: [DONE]\n\n")
        rec.completed = True  # the server is done; the stream ends here
        await response.write_eof()


def _max_tokens(body: Json) -> int | None:
    for key in ("max_completion_tokens", "max_tokens"):
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None  # absent, or -1 / 0 ("no limit" in Ollama and LM Studio)


def _cut(pieces: Iterable[str], chars: int) -> list[str]:
    out: list[str] = []
    for piece in pieces:
        if chars <= 0:
            break
        out.append(piece[:chars])
        chars -= len(piece)
    return out


def _deltas(reasoning: list[str], content: list[str], style: ReasoningStyle,
            open_tag: bool) -> list[_Delta]:
    if reasoning and style is ReasoningStyle.THINK_TAGS:
        return [_Delta("content", p, "content")
                for p in think_tag_pieces(reasoning, content, open_tag)]
    field_name = style.value if style is not ReasoningStyle.THINK_TAGS else "reasoning_content"
    return ([_Delta("reasoning", p, field_name) for p in reasoning]
            + [_Delta("content", p, "content") for p in content])


__all__ = [
    "NIM_MODEL",
    "FakeOpenAI",
    "Persona",
    "ReasoningStyle",
    "RecordedRequest",
    "Reply",
    "Usage",
    "default_reply_pieces",
    "message_text",
    "think_tag_pieces",
]
