"""Chat with RTX on top of the Gradio queue client.

Finds the streaming chat function in ``/config`` by its structure (a generator whose inputs
and outputs are the chatbot and the session state), runs the UI's session check first, sends
the conversation the way the web UI does (``[[q, a], …, [question, None]]``) and turns the
chatbot's growing HTML into neutral Markdown updates.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import AsyncGenerator, Callable, Sequence
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
    Queued,
    Started,
    TextSoFar,
)
from rtxrelay.core.errors import BackendError, BackendErrorKind, RelayError

from .answer_html import StreamingConverter, convert_answer
from .gradio_client import GradioApp, GradioQueueClient, JobOutput, JobQueued, JobStarted
from .gradio_diff import appended_text
from .launch_url import LaunchUrl
from .settings import ChatRtxTarget
from .timeouts import Timeouts

log = logging.getLogger(__name__)

Json = Any
CHATRTX_MODEL_ID = "chatrtx"  # what `rtxrelay serve` lists for Chat with RTX


@dataclass(frozen=True)
class ChatFunction:
    fn_index: int
    api_name: str | None
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    chatbot_id: int
    messages_format: bool  # gradio 5 chatbots may hold {"role", "content"} dicts
    trigger_id: int | None
    validators: tuple[int, ...]  # the chain's session checks, in order
    # Where the chatbot's value is in the outputs (None: not an output), found once here
    # rather than at every update.
    chatbot_output: int | None

    @property
    def label(self) -> str:
        name = f" ({self.api_name})" if self.api_name else ""
        return f"fn_index {self.fn_index}{name}"


def find_chat_function(app: GradioApp, override: str | None = None) -> ChatFunction:
    """Pick the chat function by structure, or by ``override`` (an fn_index or api_name)."""
    deps = app.dependencies
    candidates: list[tuple[int, int]] = []  # (score, index)
    for index, dep in enumerate(deps):
        if override is not None:
            if override.strip() in (str(index), str(dep.get("id")), str(dep.get("api_name"))):
                candidates.append((1_000, index))
            continue
        if not _is_generator(dep):
            continue
        chatbots = [i for i in dep.get("inputs", []) if _type(app, i) == "chatbot"]
        if not chatbots or chatbots[0] not in dep.get("outputs", []):
            continue
        score = 10
        types = [_type(app, i) or "" for i in dep.get("inputs", [])]
        if sorted(types) == ["chatbot", "state"] and dep.get("inputs") == dep.get("outputs"):
            score += 10
        if (app.components[chatbots[0]].get("props") or {}).get("elem_id") == "main-chatbot-window":
            score += 5
        # Retry and sample-question chains stream into the chatbot too; the send chain is the
        # one a textbox submit starts.
        root = deps[_chain(deps, index)[0]]
        if any(isinstance(t, list | tuple) and "submit" in t for t in root.get("targets") or []):
            score += 3
        candidates.append((score, index))
    if not candidates:
        if override is not None:
            raise BackendError(
                BackendErrorKind.NOT_CHATRTX,
                f"RTX_CHAT_FN={override!r} matches no function of this Gradio app.",
                hint="Unset RTX_CHAT_FN to let rtxrelay find the chat function itself.",
            )
        raise BackendError(
            BackendErrorKind.NOT_CHATRTX,
            "This Gradio app has no streaming chat function (a generator over a chatbot): "
            "it does not look like Chat with RTX.",
            hint="Check RTX_URL points at Chat with RTX; for a customised build set RTX_CHAT_FN "
            "to the chat function's fn_index.",
        )
    candidates.sort(key=lambda c: (-c[0], c[1]))
    index = candidates[0][1]
    dep = deps[index]
    inputs = tuple(int(i) for i in dep.get("inputs", []))
    chatbot_id = next(
        (i for i in inputs if _type(app, i) == "chatbot"), inputs[0] if inputs else -1
    )
    props = app.components.get(chatbot_id, {}).get("props") or {}
    chain = _chain(deps, index)
    outputs = tuple(int(i) for i in dep.get("outputs", []))
    return ChatFunction(
        fn_index=int(dep.get("id", index)),
        api_name=dep.get("api_name") if isinstance(dep.get("api_name"), str) else None,
        inputs=inputs,
        outputs=outputs,
        chatbot_id=chatbot_id,
        messages_format=props.get("type") == "messages",
        trigger_id=_trigger_id(deps, chain[0] if chain else index),
        validators=tuple(
            int(deps[i].get("id", i))
            for i in chain
            if i != index
            and not deps[i].get("inputs")
            and not deps[i].get("outputs")
            and deps[i].get("backend_fn", True)
        ),
        chatbot_output=outputs.index(chatbot_id) if chatbot_id in outputs else None,
    )


def _is_generator(dep: dict[str, Json]) -> bool:
    types = dep.get("types") or {}
    return bool(types.get("generator") or dep.get("generator"))


def _type(app: GradioApp, component_id: Json) -> str | None:
    try:
        return app.components.get(int(component_id), {}).get("type")
    except (TypeError, ValueError):
        return None


def _chain(deps: list[dict[str, Json]], index: int) -> list[int]:
    """The dependencies that run before ``index`` in its .then()/.success() chain, root first."""
    chain = [index]
    seen = {index}
    current = deps[index].get("trigger_after")
    while isinstance(current, int) and 0 <= current < len(deps) and current not in seen:
        chain.append(current)
        seen.add(current)
        current = deps[current].get("trigger_after")
    return list(reversed(chain))


def _trigger_id(deps: list[dict[str, Json]], root: int) -> int | None:
    for target in deps[root].get("targets") or []:
        if isinstance(target, list | tuple) and target and isinstance(target[0], int):
            return target[0]
    return None


# Failures a restart of Chat with RTX explains (it moves to a new port and cookie).
_RESTART_SIGNS = frozenset({BackendErrorKind.UNREACHABLE, BackendErrorKind.STOPPED,
                            BackendErrorKind.SESSION_REJECTED, BackendErrorKind.TLS})


class ChatRtxBackend:
    """Answers questions through a running Chat with RTX (0.2/0.3, Gradio 4.14+)."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        launch: LaunchUrl,
        *,
        ssl_context: ssl.SSLContext | bool = True,
        timeouts: Timeouts | None = None,
        chat_fn: str | None = None,
        reload: Callable[[], ChatRtxTarget | None] | None = None,
    ) -> None:
        """``reload`` reads RTX_URL again (from the settings file): Chat with RTX gets a new
        port and cookie at every launch, and pasting its new URL must be enough."""
        self._session = session
        self._launch = launch
        self._reload = reload
        self._client = self._client_for(ChatRtxTarget(launch, ssl_context), timeouts)
        self._chat_fn_override = chat_fn
        self._app: GradioApp | None = None
        self._chat: ChatFunction | None = None
        self._validated = False
        self._stalled = False  # an answer stopped responding: probes check the queue moves
        self._connect_lock = asyncio.Lock()

    def _client_for(self, target: ChatRtxTarget, timeouts: Timeouts | None) -> GradioQueueClient:
        return GradioQueueClient(
            self._session,
            target.launch.base_url,
            headers=target.launch.cookie_header,
            ssl_context=target.ssl_context,
            timeouts=timeouts,
            display_url=target.launch.redacted,
        )

    def _retarget(self, error: BackendError) -> bool:
        """After a failure that a restarted Chat with RTX explains, read RTX_URL again; True
        when it changed (the client then points at the new address)."""
        if self._reload is None or error.kind not in _RESTART_SIGNS:
            return False
        try:
            target = self._reload()
        except RelayError as exc:
            log.warning("RTX_URL in the settings file cannot be used: %s", exc.message)
            return False
        if target is None or target.launch == self._launch:
            return False
        self._launch = target.launch
        self._client = self._client_for(target, self._client.timeouts)
        self._forget()
        log.warning("RTX_URL changed: Chat with RTX is now at %s", target.launch.redacted)
        return True

    async def probe(self) -> BackendInfo:
        try:
            return await self._probe_once()
        except BackendError as error:
            if not self._retarget(error):
                raise
        return await self._probe_once()

    async def _probe_once(self) -> BackendInfo:
        self._forget()
        app, chat = await self._connect()
        await self._validate(app, chat, session="rtxrelay-probe")
        if self._stalled:
            await self._check_questions_move(app, chat)
            self._stalled = False
        return BackendInfo(
            url=self._launch.redacted,
            product=f"Chat with RTX (gradio {app.version})",
            protocol=app.protocol,
            checks=(f"Chat with RTX reachable (gradio {app.version}, protocol {app.protocol})",
                    f"chat function found: {chat.label}", "session cookie accepted"),
        )

    async def models(self) -> list[str]:
        """Chat with RTX answers with the model picked in its window: one name for it."""
        return [CHATRTX_MODEL_ID]

    async def stream_answer(
        self, question: str, history: Sequence[Exchange], *, session: str,
        options: AnswerOptions | None = None, read_window: float = 0.0,
    ) -> AsyncGenerator[BackendUpdate, None]:
        """``options`` are not Chat with RTX's to honour (no system prompt, no sampling
        settings in its UI): the service emulates ``stop`` and ``max_tokens``.

        One generator between the client's and the caller (each update passes through every
        generator frame): a second try, when Chat with RTX moved, is a turn of the loop."""
        may_retarget = True
        while True:
            text = ""
            converter = StreamingConverter()
            try:
                app, chat = await self._connect()
                if not self._validated:
                    await self._validate(app, chat, session)
                data = self._inputs(app, chat, question, history)
                # Closed here when the caller stops: the job's cancel is sent before this
                # generator (and the backend's slot) is done.
                async with contextlib.aclosing(self._client.run(
                    app, chat.fn_index, data, session_hash=session, trigger_id=chat.trigger_id,
                    read_window=read_window,
                )) as events:
                    async for event in events:
                        if isinstance(event, JobQueued):
                            # Gradio's rank counts the jobs waiting ahead (0 = next): every
                            # question gets a rank-0 estimation, so only one with somebody
                            # ahead is news.
                            if event.rank > 0:
                                yield Queued(event.rank + 1, event.queue_size, event.eta)
                        elif isinstance(event, JobStarted):
                            yield Started()
                        elif isinstance(event, JobOutput):
                            raw, appended = self._answer(chat, event)
                            if event.final:
                                converted = convert_answer(raw)
                                yield Done(converted.text, raw, converted.references)
                                return
                            change = converter.feed(raw, appended)
                            if change is not None:
                                text = change.text
                                yield TextSoFar(change.text, change.delta)
                raise BackendError(
                    BackendErrorKind.STOPPED, "The answer stream ended without a final answer."
                )
            except BackendError as error:
                self._forget()
                self._stalled |= error.kind is BackendErrorKind.STUCK
                # Nothing shown yet and Chat with RTX moved (a new RTX_URL): ask it there.
                if may_retarget and not text and self._retarget(error):
                    may_retarget = False
                    continue
                yield Failed(error, partial_text=text)
                return

    async def _check_questions_move(self, app: GradioApp, chat: ChatFunction) -> None:
        """Whether Chat with RTX takes up a question again after a stall. Its page and its
        session checks answer even while the chat function hangs (Gradio runs each function
        in its own line), so only a question tells: one that starts (or ends) within
        RTX_FIRST_EVENT_TIMEOUT means the line moves; it is cancelled at once."""
        events = self._client.run(app, chat.fn_index, self._inputs(app, chat, "ping", []),
                                  session_hash="rtxrelay-probe", trigger_id=chat.trigger_id)
        seconds = self._client.timeouts.first_event
        try:
            async with asyncio.timeout(seconds):
                async for event in events:
                    if not isinstance(event, JobQueued):
                        return
        except TimeoutError:
            raise BackendError(
                BackendErrorKind.STUCK,
                f"Chat with RTX still does not take up a question within {seconds:g} s.",
                hint="Restart Chat with RTX (then update RTX_URL).",
            ) from None
        finally:
            await events.aclose()

    # -- internals ----------------------------------------------------------------------------

    async def _connect(self) -> tuple[GradioApp, ChatFunction]:
        async with self._connect_lock:
            if self._app is None or self._chat is None:
                app = await self._client.fetch_config()
                self._chat = find_chat_function(app, self._chat_fn_override)
                self._app = app
            return self._app, self._chat

    async def _validate(self, app: GradioApp, chat: ChatFunction, session: str) -> None:
        """Run the UI's session checks (they raise 'Invalid session' on a wrong cookie)."""
        for fn_index in chat.validators:
            async for _ in self._client.run(
                app, fn_index, [], session_hash=session, trigger_id=chat.trigger_id
            ):
                pass
        self._validated = True

    def _forget(self) -> None:
        """After any failure, re-read /config next time: the app may have been restarted."""
        self._app = None
        self._chat = None
        self._validated = False

    @staticmethod
    def _inputs(
        app: GradioApp, chat: ChatFunction, question: str, history: Sequence[Exchange]
    ) -> list[Json]:
        values: list[Json] = []
        for component_id in chat.inputs:
            kind = _type(app, component_id)
            if component_id == chat.chatbot_id:
                if chat.messages_format:
                    turns: list[Json] = []
                    for ex in history:
                        turns += [
                            {"role": "user", "content": ex.question},
                            {"role": "assistant", "content": ex.answer},
                        ]
                    turns.append({"role": "user", "content": question})
                    values.append(turns)
                else:
                    pairs: list[Json] = [[ex.question, ex.answer] for ex in history]
                    pairs.append([question, None])
                    values.append(pairs)
            elif kind == "textbox":
                values.append("")  # the UI has already moved the question into the chatbot
            else:
                values.append(None)  # gr.State: the server keeps it per session_hash
        return values

    @staticmethod
    def _answer(chat: ChatFunction, output: JobOutput) -> tuple[str, str | None]:
        """The last turn's answer in the chatbot, and what the update added to it when its
        diffs say so (appends to that answer and nothing else): then the converter need not
        compare whole answers. None when they do not (a value sent whole, an edit elsewhere
        in the chatbot). One function: it runs at every update."""
        index = chat.chatbot_output
        if index is None or index >= len(output.data):
            raise BackendError(
                BackendErrorKind.PROTOCOL, "The chat function's output has no chatbot value.")
        value = output.data[index]
        if not isinstance(value, list) or not value:
            return "", None
        last = value[-1]
        path: list[Json]
        if isinstance(last, dict):  # messages format
            if last.get("role") != "assistant":
                return "", None
            answer = str(last.get("content") or "")
            path = [len(value) - 1, "content"]
        elif isinstance(last, list | tuple) and len(last) >= 2:
            answer = last[1] if isinstance(last[1], str) else ""
            path = [len(value) - 1, 1]
        else:
            return "", None
        if output.edits is None:
            return answer, None
        return answer, appended_text(output.edits[index], path)
