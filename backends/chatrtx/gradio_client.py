"""A small aiohttp client for Gradio's queue protocol (sse_v1, sse_v2, sse_v2.1, sse_v3).

It knows Gradio, not Chat with RTX: read ``/config``, join the queue, follow the session's SSE
stream, rebuild output values from full messages (sse_v1) or diffs (sse_v2+), cancel a job.
``docs/gradio-protocol.md`` describes the message shapes this follows.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import ssl
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from rtxrelay.backends.sse import SseParser
from rtxrelay.core.errors import BackendError, BackendErrorKind

from .gradio_diff import apply_diff

log = logging.getLogger(__name__)

SUPPORTED_PROTOCOLS = ("sse_v1", "sse_v2", "sse_v2.1", "sse_v3")
DIFF_PROTOCOLS = ("sse_v2", "sse_v2.1", "sse_v3")

Json = Any


@dataclass(frozen=True)
class Timeouts:
    """Every wait has a limit; each one's error says which limit was hit."""

    connect: float = 10.0
    first_event: float = 30.0  # join → first message about our job
    idle: float = 120.0  # between messages once the job runs (ChatRTX may retrieve for a while)
    total: float = 900.0  # whole answer, queue wait included


@dataclass(frozen=True)
class GradioApp:
    """What ``/config`` says about a running Gradio app."""

    base_url: str
    api_prefix: str
    protocol: str
    version: str
    components: dict[int, dict[str, Json]]
    dependencies: list[dict[str, Json]]

    @property
    def queue_url(self) -> str:
        return self.base_url + self.api_prefix + "/queue"


# -- job events -------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobQueued:
    rank: int  # 0 = next in line
    queue_size: int | None
    eta: float | None


@dataclass(frozen=True)
class JobStarted:
    pass


@dataclass(frozen=True)
class JobOutput:
    data: list[Json]
    final: bool


JobEvent = JobQueued | JobStarted | JobOutput


class _Step(enum.Enum):
    """A request to the server, and what to say when it takes too long."""

    CONFIG = ("did not answer", "Is Chat with RTX still starting? Raise RTX_CONNECT_TIMEOUT if "
              "it is slow.")
    JOIN = ("did not accept the question", "Is Chat with RTX frozen? Restart it and update "
            "RTX_URL.")
    STREAM = ("did not open the answer stream", "Is Chat with RTX frozen? Restart it and update "
              "RTX_URL.")

    def __init__(self, late: str, hint: str) -> None:
        self.late = late
        self.hint = hint


class _Limit(enum.Enum):
    """The time limits of a job, each with its setting and what exceeding it means."""

    FIRST_EVENT = ("RTX_FIRST_EVENT_TIMEOUT", "did not start on the question")
    IDLE = ("RTX_IDLE_TIMEOUT", "stopped sending text")
    TOTAL = ("RTX_TOTAL_TIMEOUT", "did not finish the answer")

    def __init__(self, setting: str, what: str) -> None:
        self.setting = setting
        self.what = what


@dataclass
class _JobState:
    event_id: str | None = None
    started: bool = False
    finished: bool = False
    last_output: list[Json] | None = field(default=None)
    # The streamed value cannot be rebuilt (a diff against a value we never saw, or one that
    # does not apply): interim updates are skipped until a full value, the final message.
    out_of_sync: bool = False


class GradioQueueClient:
    """One Gradio server. Takes its aiohttp session (and so its connector) from the caller."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        *,
        headers: dict[str, str] | None = None,
        ssl_context: ssl.SSLContext | bool = True,
        timeouts: Timeouts | None = None,
        display_url: str | None = None,
    ) -> None:
        self._session = session
        self._base_url = base_url.rstrip("/")
        self._headers = dict(headers or {})
        self._ssl = ssl_context
        self.timeouts = timeouts or Timeouts()
        # Never put the cookie-bearing URL in messages: it is a credential.
        self._display = display_url or self._base_url

    # -- /config ------------------------------------------------------------------------------

    async def fetch_config(self) -> GradioApp:
        url = self._base_url + "/config"
        with self._mapped_errors(_Step.CONFIG):
            async with self._session.get(
                url, headers=self._headers, ssl=self._ssl, timeout=self._request_timeout()
            ) as resp:
                if resp.status != 200:
                    raise BackendError(
                        BackendErrorKind.NOT_GRADIO,
                        f"{self._display} answered HTTP {resp.status} for /config: "
                        "it is not a Gradio app.",
                        hint="Check RTX_URL: use the URL Chat with RTX prints at start-up "
                        "(`rtxrelay discover` lists candidates).",
                    )
                try:
                    config = await resp.json(content_type=None)
                except (json.JSONDecodeError, UnicodeDecodeError, aiohttp.ContentTypeError) as exc:
                    raise BackendError(
                        BackendErrorKind.NOT_GRADIO,
                        f"{self._display}/config is not JSON: it is not a Gradio app.",
                        hint="Check RTX_URL.",
                    ) from exc
        return self._parse_config(config)

    def _parse_config(self, config: Json) -> GradioApp:
        if (
            not isinstance(config, dict)
            or "components" not in config
            or "dependencies" not in config
        ):
            raise BackendError(
                BackendErrorKind.NOT_GRADIO,
                f"{self._display}/config does not describe a Gradio app.",
                hint="Check RTX_URL.",
            )
        protocol = str(config.get("protocol", "ws"))
        if protocol not in SUPPORTED_PROTOCOLS:
            raise BackendError(
                BackendErrorKind.UNSUPPORTED_PROTOCOL,
                f"{self._display} speaks Gradio protocol {protocol!r} "
                f"(gradio {config.get('version', '?')}); rtxrelay supports "
                f"{', '.join(SUPPORTED_PROTOCOLS)} (gradio 4.14 and later).",
                hint="Chat with RTX 0.2 and 0.3 use a supported version; 0.1 (gradio 3) is not.",
            )
        components = {
            int(c["id"]): c for c in config["components"] if isinstance(c, dict) and "id" in c
        }
        return GradioApp(
            base_url=self._base_url,
            api_prefix=str(config.get("api_prefix") or "").rstrip("/"),
            protocol=protocol,
            version=str(config.get("version", "unknown")),
            components=components,
            dependencies=list(config["dependencies"]),
        )

    # -- a queued job -------------------------------------------------------------------------

    async def run(
        self,
        app: GradioApp,
        fn_index: int,
        data: list[Json],
        *,
        session_hash: str,
        trigger_id: int | None = None,
    ) -> AsyncGenerator[JobEvent, None]:
        """Join the queue and yield the job's events until it completes.

        Errors raise ``BackendError``. If the consumer stops early (cancel, or an exception),
        the job is cancelled on the server so Chat with RTX does not keep generating.
        """
        state = _JobState()
        deadline = time.monotonic() + self.timeouts.total
        try:
            # Join first, then follow: Gradio buffers a session's messages until its stream
            # connects, exactly as the web UI relies on.
            state.event_id = await self._join(app, fn_index, data, session_hash, trigger_id)
            async for event in self._follow(app, session_hash, state, deadline):
                yield event
        finally:
            if state.event_id and not state.finished:
                await asyncio.shield(self._cancel(app, fn_index, session_hash, state.event_id))

    async def _join(
        self,
        app: GradioApp,
        fn_index: int,
        data: list[Json],
        session_hash: str,
        trigger_id: int | None,
    ) -> str:
        body = {
            "data": data,
            "event_data": None,
            "fn_index": fn_index,
            "trigger_id": trigger_id,
            "session_hash": session_hash,
        }
        with self._mapped_errors(_Step.JOIN):
            async with self._session.post(
                app.queue_url + "/join",
                json=body,
                headers=self._headers,
                ssl=self._ssl,
                timeout=self._request_timeout(),
            ) as resp:
                text = await resp.text()
                if resp.status == 503:
                    raise BackendError(
                        BackendErrorKind.QUEUE_FULL,
                        "Chat with RTX's queue is full.",
                        hint="Wait for running answers to finish.",
                    )
                if resp.status != 200:
                    raise BackendError(
                        BackendErrorKind.PROTOCOL,
                        f"Joining the queue failed: HTTP {resp.status} {_short(text)}",
                        hint="Run `rtxrelay doctor`; if the chat function changed, "
                        "set RTX_CHAT_FN.",
                    )
                try:
                    event_id = json.loads(text)["event_id"]
                except (ValueError, KeyError, TypeError) as exc:
                    raise BackendError(
                        BackendErrorKind.PROTOCOL,
                        f"Joining the queue returned no event id: {_short(text)}",
                    ) from exc
        return str(event_id)

    async def _follow(
        self, app: GradioApp, session_hash: str, state: _JobState, deadline: float
    ) -> AsyncIterator[JobEvent]:
        url = app.queue_url + "/data"
        with self._mapped_errors(_Step.STREAM):
            async with self._session.get(
                url,
                params={"session_hash": session_hash},
                headers={**self._headers, "Accept": "text/event-stream"},
                ssl=self._ssl,
                timeout=aiohttp.ClientTimeout(
                    total=None, connect=self.timeouts.connect, sock_connect=self.timeouts.connect
                ),
            ) as resp:
                if resp.status != 200:
                    raise BackendError(
                        BackendErrorKind.PROTOCOL,
                        f"Opening the answer stream failed: HTTP {resp.status}.",
                    )
                parser = SseParser()
                queued = False
                while True:
                    chunk = await self._read(resp, state, queued, deadline)
                    if not chunk:
                        raise self._stream_ended(parser)
                    for payload in parser.feed(chunk):
                        message = _decode(payload)
                        event = self._handle(app, message, state)
                        if isinstance(event, JobQueued):
                            queued = True
                        if event is not None:
                            yield event
                        if state.finished:
                            return

    async def _read(
        self, resp: aiohttp.ClientResponse, state: _JobState, queued: bool, deadline: float
    ) -> bytes:
        now = time.monotonic()
        if state.started:
            which, limit = _Limit.IDLE, self.timeouts.idle
        elif queued:
            # Waiting in line behind other users is legitimate; only the total limit applies.
            which, limit = _Limit.TOTAL, self.timeouts.total
        else:
            which, limit = _Limit.FIRST_EVENT, self.timeouts.first_event
        wait = min(limit, deadline - now)
        if wait <= 0:
            raise self._timeout(_Limit.TOTAL, self.timeouts.total)
        try:
            async with asyncio.timeout(wait):
                return await resp.content.readany()
        except TimeoutError:
            if deadline - time.monotonic() <= 0:
                raise self._timeout(_Limit.TOTAL, self.timeouts.total) from None
            raise self._timeout(which, limit) from None

    def _handle(self, app: GradioApp, message: Json, state: _JobState) -> JobEvent | None:
        msg = message.get("msg")
        if msg == "heartbeat":
            return None
        if msg == "server_stopped":
            raise BackendError(
                BackendErrorKind.STOPPED,
                "Chat with RTX shut down while answering.",
                hint="Start it again and update RTX_URL (the port and cookie change).",
            )
        if msg == "unexpected_error":
            raise BackendError(
                BackendErrorKind.FAILED,
                f"Chat with RTX reported an unexpected error: {_short(message.get('message'))}",
                hint="Check the Chat with RTX window for details.",
            )
        if msg == "close_stream":
            if not state.finished:
                raise BackendError(
                    BackendErrorKind.STOPPED,
                    "Chat with RTX closed the answer stream before the answer was complete.",
                    hint="Ask again.",
                )
            return None
        if message.get("event_id") != state.event_id:
            return None  # another job of this session (never ours to report)
        if msg == "estimation":
            return JobQueued(
                rank=int(message.get("rank") or 0),
                queue_size=_opt_int(message.get("queue_size")),
                eta=_opt_float(message.get("rank_eta")),
            )
        if msg == "process_starts":
            state.started = True
            return JobStarted()
        if msg == "process_generating":
            state.started = True
            output = message.get("output") or {}
            if message.get("success") is False or output.get("error"):
                raise self._job_error(output)
            data = output.get("data")
            if not isinstance(data, list):
                raise BackendError(BackendErrorKind.PROTOCOL, "A streaming update had no data.")
            if app.protocol not in DIFF_PROTOCOLS:
                state.last_output = data
            elif not self._follow_diffs(state, data):
                return None  # wait for the final message, which carries the whole value
            assert state.last_output is not None
            return JobOutput(data=state.last_output, final=False)
        if msg == "process_completed":
            state.finished = True
            output = message.get("output") or {}
            if message.get("success") is False or output.get("error") or "data" not in output:
                raise self._job_error(output)
            data = output.get("data")
            if not isinstance(data, list):
                raise BackendError(BackendErrorKind.PROTOCOL, "The final answer had no data.")
            return JobOutput(data=data, final=True)
        return None  # log, progress and future messages are not needed for chat

    @staticmethod
    def _follow_diffs(state: _JobState, data: list[Json]) -> bool:
        """Rebuild the outputs from an sse_v2+ update; False when they cannot be rebuilt.

        Gradio keys a job's diff state on ``id(iterator)`` and a generator that raised leaves
        its entry behind: when the next job's iterator reuses that id, its first update is a
        diff against the failed job's last value (docs/gradio-protocol.md). Such an update, or
        any diff that does not apply, is not fatal: the completed message carries the whole
        value, so the answer is only shown later, never lost."""
        if state.out_of_sync:
            return False
        if state.last_output is None:
            if _looks_like_diffs(data):
                state.out_of_sync = True
                return False
            state.last_output = data
            return True
        try:
            if len(data) != len(state.last_output):
                raise BackendError(BackendErrorKind.PROTOCOL, "The diff has other outputs.")
            state.last_output = [
                apply_diff(old, diff) if isinstance(diff, list) else old
                for old, diff in zip(state.last_output, data, strict=True)
            ]
        except BackendError:
            state.out_of_sync, state.last_output = True, None
            # Not the edit itself: it is answer text, which is never logged.
            log.info("a streamed update does not apply; waiting for the final answer")
            return False
        return True

    # -- cancel -------------------------------------------------------------------------------

    async def _cancel(
        self, app: GradioApp, fn_index: int, session_hash: str, event_id: str
    ) -> None:
        """Best effort: ask Gradio to stop the job (gradio 5 /cancel, gradio 4 /reset)."""
        body = {"event_id": event_id, "session_hash": session_hash, "fn_index": fn_index}
        prefix = app.base_url + app.api_prefix
        paths = ("/cancel", "/reset") if app.api_prefix else ("/reset",)
        for path in paths:
            try:
                async with self._session.post(
                    prefix + path,
                    json=body,
                    headers=self._headers,
                    ssl=self._ssl,
                    timeout=aiohttp.ClientTimeout(total=min(5.0, self.timeouts.connect)),
                ) as resp:
                    if resp.status < 400:
                        return
            except (aiohttp.ClientError, TimeoutError):
                return  # the server is gone: nothing left to cancel

    # -- helpers ------------------------------------------------------------------------------

    def _request_timeout(self) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(
            total=self.timeouts.connect + self.timeouts.first_event,
            sock_connect=self.timeouts.connect,
        )

    @contextlib.contextmanager
    def _mapped_errors(self, step: _Step) -> Iterator[None]:
        """aiohttp's exceptions become BackendErrors here, once, for every request (as httpx
        maps httpcore's at its transport boundary); BackendErrors pass through."""
        try:
            yield
        except aiohttp.ClientPayloadError as exc:
            if step is not _Step.STREAM:
                raise self._connection_error(exc, step) from exc
            raise BackendError(
                BackendErrorKind.STOPPED,
                "The connection to Chat with RTX broke in the middle of the answer.",
                hint="Chat with RTX may have crashed or been closed; restart it, update RTX_URL.",
            ) from exc
        except aiohttp.ClientError as exc:
            raise self._connection_error(exc, step) from exc
        except TimeoutError as exc:
            raise BackendError(
                BackendErrorKind.UNREACHABLE,
                f"{self._display} {step.late} within {self.timeouts.connect:g} s.",
                hint=step.hint,
            ) from exc

    def _connection_error(self, exc: aiohttp.ClientError, step: _Step) -> BackendError:
        https = self._base_url.startswith("https:")
        if https and any(sign in str(exc).lower() for sign in _PLAIN_HTTP_SIGNS):
            return BackendError(
                BackendErrorKind.TLS,
                f"{self._display} answers in plain http, not https.",
                hint="Write RTX_URL with http:// (Chat with RTX 0.2 serves plain http).",
            )
        if isinstance(exc, aiohttp.ClientConnectorCertificateError | aiohttp.ClientSSLError):
            return BackendError(
                BackendErrorKind.TLS,
                f"TLS to {self._display} failed: {_short(str(exc))}",
                hint="Chat with RTX 0.3 uses its own self-signed certificate: set RTX_CA_FILE to "
                "it, or RTX_INSECURE_LOCALHOST=1 when Chat with RTX runs on this PC.",
            )
        dropped = isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientOSError) \
            and not isinstance(exc, aiohttp.ClientConnectorError)
        if dropped and step is _Step.CONFIG and not https:
            # An https server hangs up on a plain http request before answering it.
            return BackendError(
                BackendErrorKind.TLS,
                f"{self._display} hung up on a plain http request: it may serve https.",
                hint="Chat with RTX 0.3 serves https: write RTX_URL with https:// and set "
                "RTX_INSECURE_LOCALHOST=1 (or RTX_CA_FILE to its certificate).",
            )
        if dropped:
            return BackendError(
                BackendErrorKind.STOPPED,
                f"{self._display} closed the connection.",
                hint="Chat with RTX may have crashed or been restarted; if it was restarted, "
                "copy its new launch URL into RTX_URL.",
            )
        return BackendError(
            BackendErrorKind.UNREACHABLE,
            f"Cannot connect to Chat with RTX at {self._display}",
            hint="Is it running? Its port changes at every launch: copy the new URL from its "
            "window into RTX_URL, or run `rtxrelay discover`.",
        )

    def _stream_ended(self, parser: SseParser) -> BackendError:
        cut = " in the middle of a message" if parser.has_partial_event else ""
        return BackendError(
            BackendErrorKind.STOPPED,
            f"Chat with RTX ended the answer stream{cut} before the answer was complete.",
            hint="Chat with RTX may have crashed or been closed; restart it and update RTX_URL.",
        )

    @staticmethod
    def _timeout(limit: _Limit, seconds: float) -> BackendError:
        # Silence while a job should be moving means Chat with RTX stopped responding, and
        # the line behind it cannot move either; the total limit is just a long answer.
        stuck = limit is not _Limit.TOTAL
        return BackendError(
            BackendErrorKind.STUCK if stuck else BackendErrorKind.TIMEOUT,
            f"Chat with RTX {limit.what} within {seconds:g} s.",
            hint=("Its window shows why; restart it. " if stuck else "")
            + f"Raise {limit.setting} if answers are just slow.",
        )

    @staticmethod
    def _job_error(output: Json) -> BackendError:
        error = output.get("error") if isinstance(output, dict) else None
        text = str(error).strip("'\"") if error not in (None, "None", "null") else ""
        if text == "Invalid session":
            return BackendError(
                BackendErrorKind.SESSION_REJECTED,
                "Chat with RTX rejected the session cookie.",
                hint="Chat with RTX makes a new cookie at every launch: copy the whole URL it "
                "printed (with ?cookie=…) into RTX_URL.",
            )
        return BackendError(
            BackendErrorKind.FAILED,
            "Chat with RTX failed to answer" + (f": {_short(text)}" if text else "."),
            hint="Check the Chat with RTX window for the model's error.",
        )


# What OpenSSL says when the server on the other end speaks plain http.
_PLAIN_HTTP_SIGNS = ("wrong version number", "record layer failure", "packet length too long",
                     "http request")

_DIFF_OPS = frozenset({"replace", "append", "add", "delete"})


def _looks_like_diffs(data: list[Json]) -> bool:
    """Whether every output is a list of ``[op, path, value]`` edits, one of them not empty.
    A full chatbot value cannot look like that (pairs have two items, messages are objects)."""
    return any(data) and all(
        isinstance(value, list) and all(
            isinstance(edit, list) and len(edit) == 3 and edit[0] in _DIFF_OPS
            and isinstance(edit[1], list) for edit in value)
        for value in data)


def _decode(payload: str) -> dict[str, Json]:
    try:
        message = json.loads(payload)
    except ValueError as exc:
        raise BackendError(
            BackendErrorKind.PROTOCOL, f"Chat with RTX sent a malformed event: {_short(payload)}"
        ) from exc
    if not isinstance(message, dict):
        raise BackendError(BackendErrorKind.PROTOCOL, "Chat with RTX sent a non-object event.")
    return message


def _short(value: object, limit: int = 160) -> str:
    text = str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _opt_int(value: object) -> int | None:
    return int(value) if isinstance(value, int | float) else None


def _opt_float(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) else None
