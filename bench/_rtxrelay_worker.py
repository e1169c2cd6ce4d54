"""Bench worker: stream one answer with rtxrelay's own client (runs in the project venv).

    python bench/_rtxrelay_worker.py LAUNCH_URL QUESTION OUT_JSON [--read-window S] [--dump FILE]

Phases, each measured by the process itself (see _measure.py):
- start-up: interpreter start + importing aiohttp and rtxrelay's client;
- connect: ``probe()`` = GET /config + the UI's session check (one queued job);
- answer: ``stream_answer(..., read_window=S)`` from joining the queue to the final ``Done``;
  the CPU spent in its final HTML -> Markdown conversion (``convert_answer``) is also
  reported on its own, as gradio_client does no such thing.

``--read-window`` defaults to ``rtxrelay.app.terminal.READ_WINDOW`` (what ``rtxrelay ask``
uses); the bench passes it explicitly, so the worker does not import the app layer.

Counted during the answer phase: reads of the answer's stream (``GradioQueueClient._read``
calls that returned bytes), SSE messages handled (``_handle``), TextSoFar updates, windows
held (``PacedReads.holds``), event-loop wake-ups and socket reads (``_loop_counts``) and
voluntary context switches (``_measure``). The streamed text is checked as it comes
(``_measure.StreamCheck``: each TextSoFar.text starts with the previous one, the deltas join to
the last text, ``Done.text`` starts with it); the check's own CPU is reported as ``check_cpu``.

``--dump FILE`` also writes the raw bytes of the answer's ``/queue/data`` body, exactly as
the reads returned them, to FILE, and each read's arrival time and size to FILE.json: the
floor worker (``_floor_worker.py``) replays it. Only the bench's uncounted capture runs dump.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from collections import Counter
from typing import Any

import aiohttp
from _loop_counts import LoopCounts, count_loop, count_socket_reads
from _measure import Result, StreamCheck, checkpoint, startup_wall

from rtxrelay.backends.chatrtx import backend as chatrtx
from rtxrelay.backends.chatrtx.backend import ChatRtxBackend
from rtxrelay.backends.chatrtx.gradio_client import GradioQueueClient
from rtxrelay.backends.chatrtx.launch_url import parse_launch_url
from rtxrelay.backends.paced_reads import PacedReads
from rtxrelay.core.backend import Done, Failed, TextSoFar


def _count_messages(counts: Counter[str]) -> None:
    """Count every SSE message the client handles (a counter bump per message)."""
    handle = GradioQueueClient._handle

    def counting(self: GradioQueueClient, app: object, message: dict, state: object) -> object:
        counts[str(message.get("msg"))] += 1
        return handle(self, app, message, state)  # type: ignore[arg-type]

    GradioQueueClient._handle = counting  # type: ignore[method-assign,assignment]


class _Reads:
    """The answer stream's reads: ``GradioQueueClient._read`` returns one ``readany()`` of
    the ``/queue/data`` body (whatever the socket brought since the last one)."""

    def __init__(self, dump: bool) -> None:
        self.count = 0
        self.bytes = 0
        self.chunks: list[tuple[float, bytes]] | None = [] if dump else None

    def install(self) -> None:
        read = GradioQueueClient._read
        chunks = self.chunks

        async def counting(self_: GradioQueueClient, *args: object, **kwargs: object) -> bytes:
            chunk = await read(self_, *args, **kwargs)  # type: ignore[arg-type]
            if chunk:
                self.count += 1
                self.bytes += len(chunk)
                if chunks is not None:
                    chunks.append((time.monotonic(), chunk))
            return chunk

        GradioQueueClient._read = counting  # type: ignore[method-assign,assignment]

    def reset(self) -> None:
        self.count = self.bytes = 0
        if self.chunks is not None:
            self.chunks.clear()

    def dump(self, path: str) -> None:
        """The body to ``path``, each read's (seconds since the first, size) to path.json."""
        assert self.chunks is not None
        with open(path, "wb") as out:
            for _, chunk in self.chunks:
                out.write(chunk)
        first = self.chunks[0][0] if self.chunks else 0.0
        with open(path + ".json", "w", encoding="utf-8") as out:
            json.dump({"reads": [[round(at - first, 6), len(chunk)]
                                 for at, chunk in self.chunks]}, out)


def _track_paced_reads(made: list[PacedReads]) -> None:
    """Keep every PacedReads the client makes, to read its ``holds`` (windows held)."""
    init = PacedReads.__init__

    def tracking(self: PacedReads, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        made.append(self)

    PacedReads.__init__ = tracking  # type: ignore[method-assign]


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


async def run(url: str, question: str, result: Result, window: float,
              dump: str | None) -> None:
    counts: Counter[str] = Counter()
    _count_messages(counts)
    converting = [0.0]
    _time_conversion(converting)
    reads = _Reads(dump is not None)
    reads.install()
    paced: list[PacedReads] = []
    _track_paced_reads(paced)
    loop_counts = LoopCounts()
    count_loop(asyncio.get_running_loop(), loop_counts)
    count_socket_reads(loop_counts)
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
        reads.reset()
        paced.clear()
        loop_counts.reset()
        check = StreamCheck()
        checking = 0.0
        final: str | None = None

        answering = checkpoint()  # the counters above are reset: the answer phase starts
        first_text: float | None = None
        async for update in backend.stream_answer(question, [], session=f"bench-{uuid.uuid4()}",
                                                  read_window=window):
            if isinstance(update, TextSoFar):
                result.updates += 1
                if first_text is None:
                    first_text = checkpoint().wall
                started = time.process_time()
                check.text(update.text, update.delta)
                checking += time.process_time() - started
            elif isinstance(update, Done):
                result.final_text = update.raw
                final = update.text
            elif isinstance(update, Failed):
                raise RuntimeError(f"{update.error.kind}: {update.error}")
        done = checkpoint()
        result.answer_phase(answering, done)
        if first_text is not None:
            result.first_text_wall = first_text - answering.wall
        counted = loop_counts.as_dict()
    check.finish(final, result)
    result.messages = dict(counts)
    result.stream_reads = reads.count
    result.extra.update(counted)
    result.extra["convert_cpu"] = converting[0]
    result.extra["check_cpu"] = checking
    result.extra["read_window"] = window
    result.extra["stream_bytes"] = reads.bytes
    result.extra["windows_held"] = sum(p.holds for p in paced)
    if dump is not None:
        reads.dump(dump)
    result.ok = result.final_text is not None
    if not result.ok:
        result.error = "the stream ended without a Done update"


def main() -> int:
    ready = checkpoint()  # every import above is done: interpreter start-up + imports
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("question")
    parser.add_argument("out")
    parser.add_argument("--read-window", type=float, default=None)
    parser.add_argument("--dump", default=None)
    args = parser.parse_args()
    window = args.read_window
    if window is None:
        from rtxrelay.app.terminal import READ_WINDOW  # after start-up is measured

        window = READ_WINDOW
    result = Result(
        client="rtxrelay",
        startup_wall=startup_wall(),
        startup_cpu=ready.cpu,
        rss_after_import_mib=ready.rss_mib,
        extra={"aiohttp": aiohttp.__version__, "python": sys.version.split()[0]},
    )
    try:
        asyncio.run(run(args.url, args.question, result, window, args.dump))
    except BaseException as exc:  # report anything, even a KeyboardInterrupt
        result.fail(exc)
    result.write(args.out)
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
