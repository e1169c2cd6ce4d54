"""Bench worker: stream one answer with rtxrelay's own client (runs in the project venv).

    python bench/_rtxrelay_worker.py LAUNCH_URL QUESTION OUT_JSON

Phases, each measured by the process itself (see _measure.py):
- start-up: interpreter start + importing aiohttp and rtxrelay's client;
- connect: ``probe()`` = GET /config + the UI's session check (one queued job);
- answer: ``stream_answer`` from joining the queue to the final ``Done``; the CPU spent in
  its HTML -> Markdown conversion (``convert_answer``, run on every update) is also
  reported on its own, as gradio_client does no such thing.
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from collections import Counter

import aiohttp
from _measure import Result, checkpoint, startup_wall

from rtxrelay.backends.chatrtx import backend as chatrtx
from rtxrelay.backends.chatrtx.backend import ChatRtxBackend
from rtxrelay.backends.chatrtx.gradio_client import GradioQueueClient
from rtxrelay.backends.chatrtx.launch_url import parse_launch_url
from rtxrelay.core.backend import Done, Failed, TextSoFar


def _count_messages(counts: Counter[str]) -> None:
    """Count every SSE message the client handles (a counter bump per message)."""
    handle = GradioQueueClient._handle

    def counting(self: GradioQueueClient, app: object, message: dict, state: object) -> object:
        counts[str(message.get("msg"))] += 1
        return handle(self, app, message, state)  # type: ignore[arg-type]

    GradioQueueClient._handle = counting  # type: ignore[method-assign,assignment]


def _time_conversion(spent: list[float]) -> None:
    """Add up the CPU time of the chatbot HTML -> Markdown conversion (once per update).

    gradio_client has no such step, so "answer CPU minus this" is the like-for-like
    protocol cost. Two clock reads per call: noise next to the conversion itself.
    """
    convert = chatrtx.convert_answer

    def timed(raw: str, *, streaming: bool = False) -> object:
        started = time.process_time()
        try:
            return convert(raw, streaming=streaming)
        finally:
            spent[0] += time.process_time() - started

    chatrtx.convert_answer = timed  # type: ignore[assignment]


async def run(url: str, question: str, result: Result) -> None:
    counts: Counter[str] = Counter()
    _count_messages(counts)
    converting = [0.0]
    _time_conversion(converting)
    trace = aiohttp.TraceConfig()

    async def on_request_start(
        _session: object, _ctx: object, params: aiohttp.TraceRequestStartParams
    ) -> None:
        result.wire.append(f"{params.method} {params.url.path}")

    trace.on_request_start.append(on_request_start)

    start = checkpoint()
    async with aiohttp.ClientSession(trace_configs=[trace]) as http:
        backend = ChatRtxBackend(http, parse_launch_url(url))
        await backend.probe()
        connected = checkpoint()
        result.connect_wall = connected.wall - start.wall
        result.connect_cpu = connected.cpu - start.cpu
        counts.clear()
        converting[0] = 0.0

        first_text: float | None = None
        async for update in backend.stream_answer(question, [], session=f"bench-{uuid.uuid4()}"):
            if isinstance(update, TextSoFar):
                result.updates += 1
                if first_text is None:
                    first_text = checkpoint().wall
            elif isinstance(update, Done):
                result.final_text = update.raw
            elif isinstance(update, Failed):
                raise RuntimeError(f"{update.error.kind}: {update.error}")
        done = checkpoint()
        result.answer_wall = done.wall - connected.wall
        result.answer_cpu = done.cpu - connected.cpu
        if first_text is not None:
            result.first_text_wall = first_text - connected.wall
    result.messages = dict(counts)
    result.extra["convert_cpu"] = converting[0]
    result.ok = result.final_text is not None
    if not result.ok:
        result.error = "the stream ended without a Done update"


def main() -> int:
    url, question, out = sys.argv[1:4]
    ready = checkpoint()  # every import above is done: interpreter start-up + imports
    result = Result(
        client="rtxrelay",
        startup_wall=startup_wall(),
        startup_cpu=ready.cpu,
        rss_after_import_mib=ready.rss_mib,
        extra={"aiohttp": aiohttp.__version__, "python": sys.version.split()[0]},
    )
    try:
        asyncio.run(run(url, question, result))
    except BaseException as exc:  # report anything, even a KeyboardInterrupt
        result.fail(exc)
    result.write(out)
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
