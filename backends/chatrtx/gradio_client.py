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
import math
import ssl
from collections.abc import AsyncGenerator, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from rtxrelay.backends import json_events
from rtxrelay.backends.paced_reads import PacedReads
from rtxrelay.backends.sse import SseParser
from rtxrelay.core.errors import BackendError, BackendErrorKind

from .gradio_diff import apply_diff, merge_diffs
from .timeouts import Timeouts

log = logging.getLogger(__name__)

SUPPORTED_PROTOCOLS = ("sse_v1", "sse_v2", "sse_v2.1", "sse_v3")
DIFF_PROTOCOLS = ("sse_v2", "sse_v2.1", "sse_v3")

Json = Any


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
    """The outputs so far. A stream reports at most one per read of the socket: the updates
    that arrived together are applied together."""

    data: list[Json]
    final: bool
    # Per output, the edits that turned the previous JobOutput's data into this one (runs of
    # appends merged), so a reader can take what was added without comparing whole values;
    # None when the value came whole (the first one, sse_v1, or the final message).
    edits: list[list[Json]] | None = None


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
    # This read's diffs, applied once at the end of the read (``_take_output``).
    pending: list[list[Json]] = field(default_factory=list)
    changed: bool = False  # last_output moved since the last JobOutput
    whole: bool = False  # ... and a whole value replaced it (its edits do not say how)


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
        read_window: float = 0.0,
    ) -> AsyncGenerator[JobEvent, None]:
        """Join the queue and yield the job's events until it completes.

        Once text flows, reads are ``read_window`` seconds apart at least (``PacedReads``).
        Errors raise ``BackendError``. If the consumer stops early (cancel, or an exception),
        the job is cancelled on the server so Chat with RTX does not keep generating.
        """
        state = _JobState()
        deadline = asyncio.get_running_loop().time() + self.timeouts.total
        try:
            # Join first, then follow: Gradio buffers a session's messages until its stream
            # connects, exactly as the web UI relies on.
            state.event_id = await self._join(app, fn_index, data, session_hash, trigger_id)
            # Followed here, not in a generator of its own: every read's events would pass
            # through one more generator frame.
            url = app.queue_url + "/data"
            with self._mapped_errors(_Step.STREAM):
                async with self._stream_session() as session, session.get(
                    url,
                    params={"session_hash": session_hash},
                    # Close, said outright: a server that keeps an HTTP/1.0 connection alive
                    # on request could not frame the stream and would never end it.
                    headers={**self._headers, "Accept": "text/event-stream",
                             "Connection": "close"},
                    ssl=self._ssl,
                    timeout=aiohttp.ClientTimeout(total=None, connect=self.timeouts.connect,
                                                  sock_connect=self.timeouts.connect),
                ) as resp:
                    if resp.status != 200:
                        raise BackendError(
                            BackendErrorKind.PROTOCOL,
                            f"Opening the answer stream failed: HTTP {resp.status}.",
                        )
                    parser = SseParser()
                    timer = _Deadline(asyncio.get_running_loop())
                    paced = PacedReads(resp, read_window)
                    queued = False
                    try:
                        while True:
                            chunk = await self._read(resp, timer, state.started, queued,
                                                     deadline)
                            if not chunk:
                                raise self._stream_ended(parser)
                            payloads = parser.feed(chunk)
                            events, failure = self._read_events(app, payloads, state)
                            if failure is None and not state.finished and events and \
                                    isinstance(events[-1], JobOutput):
                                # Text flows: let the next tokens gather.
                                paced.hold(len(chunk), len(payloads))
                            for event in events:
                                queued |= isinstance(event, JobQueued)
                                yield event
                            if failure is not None:
                                raise failure
                            if state.finished:
                                return
                    finally:
                        paced.close()
                        timer.close()
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

    def _read_events(
        self, app: GradioApp, payloads: Iterable[str], state: _JobState
    ) -> tuple[list[JobEvent], BackendError | None]:
        """The events of one read, its streamed updates merged into one ``JobOutput``, and the
        error that ended the read, if one did. The events before a failure still come back
        (first): the text that arrived with the failure is shown, as the partial answer."""
        events: list[JobEvent] = []
        fast_loads = json_events.fast_loads
        try:
            for payload in payloads:
                # Inline, not through ``_decode``: this runs per token, and at Chat with RTX's
                # pace every call of a read runs on cold caches.
                try:
                    message = fast_loads(payload)
                except ValueError:
                    message = None
                if type(message) is not dict:
                    message = _decode(payload)  # what only json takes (NaN), or the error
                event = self._handle(app, message, state)
                if event is None:
                    continue
                # Before any other event, the final one too: readers that pass on deltas
                # (``rtxrelay serve``) have then streamed all the text when the answer ends.
                self._take_output(state, events)
                events.append(event)
                if state.finished:
                    return events, None  # anything after the final message is not ours
        except BackendError as error:
            self._take_output(state, events)
            return events, error
        self._take_output(state, events)
        return events, None

    async def _read(
        self, resp: aiohttp.ClientResponse, timer: _Deadline, started: bool, queued: bool,
        deadline: float,
    ) -> bytes:
        if started:
            which, limit = _Limit.IDLE, self.timeouts.idle
        elif queued:
            # Waiting in line behind other users is legitimate; only the total limit applies.
            which, limit = _Limit.TOTAL, self.timeouts.total
        else:
            which, limit = _Limit.FIRST_EVENT, self.timeouts.first_event
        now = timer.now()
        if now >= deadline:
            raise self._timeout(_Limit.TOTAL, self.timeouts.total)
        due = now + limit
        if due >= deadline:
            which, limit, due = _Limit.TOTAL, self.timeouts.total, deadline
        timer.arm(due)
        try:
            return await resp.content.readany()
        except asyncio.CancelledError:
            if not timer.claim():
                raise  # not ours: the consumer is being cancelled
            raise self._timeout(which, limit) from None
        finally:
            timer.disarm()

    def _handle(self, app: GradioApp, message: Json, state: _JobState) -> JobEvent | None:
        msg = message.get("msg")
        if msg == "process_generating":  # first: all but a few messages are these
            if message.get("event_id") != state.event_id:
                return None  # another job of this session (never ours to report)
            state.started = True
            output = message.get("output") or {}
            if message.get("success") is False or output.get("error"):
                raise self._job_error(output)
            data = output.get("data")
            if not isinstance(data, list):
                raise BackendError(BackendErrorKind.PROTOCOL, "A streaming update had no data.")
            if app.protocol not in DIFF_PROTOCOLS:
                state.last_output, state.changed, state.whole = data, True, True
            elif state.last_output is not None and not state.out_of_sync:
                state.pending.append(data)  # applied at the end of the read (_take_output)
            else:
                self._follow_diffs(state, data)
            return None  # reported once per read, by _take_output
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
    def _follow_diffs(state: _JobState, data: list[Json]) -> None:
        """Take an sse_v2+ update: a whole first value, or diffs kept for the end of the read.

        Gradio keys a job's diff state on ``id(iterator)`` and a generator that raised leaves
        its entry behind: when the next job's iterator reuses that id, its first update is a
        diff against the failed job's last value (docs/gradio-protocol.md). Such an update, or
        any diff that does not apply, is not fatal: the completed message carries the whole
        value, so the answer is only shown later, never lost."""
        if state.out_of_sync:
            return
        if state.last_output is None:
            if _looks_like_diffs(data):
                state.out_of_sync = True
                return
            state.last_output, state.changed, state.whole = data, True, True
            return
        state.pending.append(data)

    @staticmethod
    def _take_output(state: _JobState, events: list[JobEvent]) -> None:
        """Apply the read's diffs at once and add the new value to ``events``, if it moved."""
        edits: list[list[Json]] | None = None
        if state.pending and state.last_output is not None:
            try:
                edits = merge_diffs(state.pending, len(state.last_output))
                state.last_output = [
                    apply_diff(old, diff) for old, diff in zip(state.last_output, edits,
                                                                strict=True)]
                state.changed = True
            except BackendError:
                state.out_of_sync, state.last_output, state.changed = True, None, False
                # Not the edit itself: it is answer text, which is never logged.
                log.info("a streamed update does not apply; waiting for the final answer")
        state.pending.clear()
        if not state.changed or state.last_output is None:
            return
        events.append(JobOutput(state.last_output, final=False,
                                edits=None if state.whole else edits))
        state.changed = state.whole = False

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

    def _stream_session(self) -> aiohttp.ClientSession:
        """A session for one answer stream, on the caller's connector, that asks in HTTP/1.0.

        Over HTTP/1.1 Gradio (uvicorn) frames every SSE message as an HTTP chunk of its own,
        and aiohttp handles each chunk in Python (a buffer entry, its split, a resume call):
        about 2 us a message, a tenth of rtxrelay's CPU on a long answer (bench_client). A
        reply to HTTP/1.0 cannot be chunked, so the stream comes as plain bytes until the
        server closes the connection (the request asks it to). The stream never reuses its
        connection either way: it is left before its end. A server that answers chunked all
        the same is read alike."""
        shared = self._session
        return aiohttp.ClientSession(
            connector=shared.connector, connector_owner=False, version=aiohttp.HttpVersion10,
            cookie_jar=shared.cookie_jar, headers=shared.headers, auth=shared.auth,
            trust_env=shared.trust_env, trace_configs=list(shared.trace_configs))

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


class _Deadline:
    """One timer for every wait of a stream, instead of a timeout context around each read.

    A wait ``arm``s it with its due time and ``disarm``s it when it returns. The timer is
    only rescheduled when it fires while a later due time is armed (reads since pushed the
    limit back) or a sooner one is armed, so a read costs a few attribute writes. It cancels
    the waiting task only during a wait: never while the stream's generator is suspended at
    a ``yield``, where the cancellation would land in the consumer's code instead.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._handle: asyncio.TimerHandle | None = None
        self._scheduled = math.inf  # when the handle fires
        self._due = math.inf  # when the current wait must end
        self._task: asyncio.Task[Any] | None = None  # the waiting task, None between waits
        self._cancelling = 0  # its cancel requests when the wait began
        self._expired = False

    def now(self) -> float:
        return self._loop.time()

    def arm(self, due: float) -> None:
        task = asyncio.current_task()
        assert task is not None, "a stream is read inside a task"
        self._task, self._due, self._cancelling = task, due, task.cancelling()
        self._expired = False
        if self._handle is None or due < self._scheduled:
            self._schedule(due)

    def disarm(self) -> None:
        self._task = None

    def claim(self) -> bool:
        """After a cancellation in the wait: True when it was this timer's alone (it is then
        withdrawn from the task, as ``asyncio.timeout`` does, and becomes a timeout)."""
        if not self._expired or self._task is None:
            return False
        self._expired = False
        return self._task.uncancel() <= self._cancelling

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _schedule(self, when: float) -> None:
        self.close()
        self._handle, self._scheduled = self._loop.call_at(when, self._fire), when

    def _fire(self) -> None:
        fired_for = self._scheduled
        self._handle, self._scheduled = None, math.inf
        if self._task is None:
            return  # between waits: the next wait arms it again
        if self._due > fired_for:
            self._schedule(self._due)  # reads since pushed the limit back
            return
        self._expired = True
        self._task.cancel()


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
        message = json_events.loads(payload)
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
