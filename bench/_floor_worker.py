"""Bench worker: the floor, the least any client must do to read a captured answer stream.

    python bench/_floor_worker.py BODY OUT_JSON [--delivery D] [--parser json|orjson]
                                  [--read-window S]
    python bench/_floor_worker.py --serve BODY [--delivery D]   (the server the above starts)

BODY is the raw ``/queue/data`` body of one answer as rtxrelay read it (``_rtxrelay_worker.py
--dump``), with BODY.json beside it (each read's arrival time and size). The worker starts a
minimal HTTP server (asyncio streams) in a child process (``--serve``: its CPU is not ours)
that answers ``GET /stream`` with that body framed as Gradio (uvicorn) frames it for the
request: to rtxrelay's HTTP/1.0 request (``Connection: close``) the plain bytes until it
closes the connection; to an HTTP/1.1 one, one HTTP chunk per SSE event (``once-chunked``,
``once-1chunk``: aiohttp's reader does some work per chunk, which asking HTTP/1.0 avoids).
It reads it here with a minimal aiohttp reader: ``readany()`` in a loop, split the buffer at
blank lines,
``json.loads`` (or ``orjson.loads``, what rtxrelay decodes events with) each event's ``data:``,
nothing else: no diffs applied, no text rebuilt, no timeouts; each read takes at most 64 KiB,
as rtxrelay's do (``paced_reads.READ_SIZE``). Only the reading side is
measured (``getrusage(RUSAGE_SELF)`` of this process), from the request to the end of the
body, on a connection a first ``GET /warm`` opened (and warmed aiohttp's code).

Delivery (``--delivery``):
- ``once`` (default): the whole response in one write, so the reader finds it all (or as much
  as one ``recv`` takes) at each read; plain bytes over HTTP/1.0, as rtxrelay asks for it;
- ``once-chunked``: the same in HTTP/1.1, one HTTP chunk per event (what a client that asks
  in HTTP/1.1 gets from Gradio), to show aiohttp's per-chunk share;
- ``once-1chunk``: HTTP/1.1, the body as a single HTTP chunk;
- ``paced``: one SSE event per write (HTTP/1.0, plain, as rtxrelay reads Gradio) on the
  captured stream's own schedule: the events before the first text at once,
  then the ``process_generating`` events evenly spaced at the captured pace (the time from the
  read that brought the first one to the read that brought ``process_completed``, divided by
  their number), then the rest. The reader therefore wakes up as often as the tokens come,
  like any reader that reads as data arrives.

``--read-window S`` (with ``paced``: "paced, same window") makes the reader read on the
consumer's clock as rtxrelay does with the same window: after a read that carried text
(a ``process_generating`` event, no ``process_completed``), it pauses the socket
(``transport.pause_reading()``) and resumes it ``S`` seconds later (``loop.call_later``), so
the events that arrive meanwhile are one read. The condition is rtxrelay's
(``backends/paced_reads.py``), written out here so the floor does not run the code it
bounds: the first read with text always holds; after it, a hold is taken only while the
events read since that first read fit at least ``GATHER`` (1.5) events in a window at their
average pace, and never after a read of 64 KiB or more (a backlog).

Counted as in ``_rtxrelay_worker.py``: reads, events, event-loop wake-ups and socket reads
(``_loop_counts``), voluntary context switches (``_measure``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from _loop_counts import LoopCounts, count_loop, count_socket_reads
from _measure import Result, checkpoint, startup_wall

GENERATING = b'"msg":"process_generating"'
COMPLETED = b'"msg":"process_completed"'
DELIVERIES = ("once", "once-chunked", "once-1chunk", "paced")
# Deliveries the reader asks for in HTTP/1.1 (so the server chunks them); the others in
# HTTP/1.0 with Connection: close, as rtxrelay asks for Gradio's answer stream.
CHUNKED = ("once-chunked", "once-1chunk")
# rtxrelay's hold condition (backends/paced_reads.py), restated: a window must be expected to
# gather this many events, and a read this large (a backlog) is never followed by a hold.
GATHER = 1.5
# The most one read takes, as rtxrelay's reads (paced_reads.READ_SIZE): asyncio's default of
# 256 KiB costs fresh pages at every read, which no client has to pay.
READ_SIZE = 64 * 1024
BACKLOG_READ = READ_SIZE


def split_events(body: bytes) -> list[bytes]:
    """The body's events, each with its terminating blank line."""
    parts = body.split(b"\n\n")
    events = [part + b"\n\n" for part in parts[:-1]]
    if parts[-1]:
        events.append(parts[-1])  # an unfinished tail, as captured
    return events


def captured_schedule(body_path: Path) -> tuple[float, float, int]:
    """(seconds from the stream's first read to the first text, seconds per text event,
    text events) from the capture's read times."""
    body = body_path.read_bytes()
    reads = json.loads(Path(str(body_path) + ".json").read_text(encoding="utf-8"))["reads"]
    ends: list[tuple[int, float]] = []  # (end offset of a read, its arrival time)
    offset = 0
    for at, size in reads:
        offset += size
        ends.append((offset, at))

    def arrival(position: int) -> float:
        return next(at for end, at in ends if end > position)

    first_text = body.find(GENERATING)
    completed = body.find(COMPLETED)
    texts = body.count(GENERATING)
    if first_text < 0 or completed < 0 or texts == 0:
        raise ValueError("the capture has no text or no process_completed")
    start = arrival(first_text)
    return start - reads[0][0], (arrival(completed) - start) / texts, texts


# -- the server (child process) ---------------------------------------------------------------

HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n")
# uvicorn's reply to an HTTP/1.0 request: no chunks, the end of the body is the close.
PLAIN_HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
              b"Cache-Control: no-cache\r\nConnection: close\r\n\r\n")
WARM = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 4\r\n\r\nwarm"
LAST_CHUNK = b"0\r\n\r\n"


def chunk(data: bytes) -> bytes:
    """One HTTP/1.1 chunk."""
    return b"%x\r\n%s\r\n" % (len(data), data)


async def serve(body: bytes, delivery: str, schedule: tuple[float, float, int] | None) -> None:
    """A minimal HTTP server on asyncio streams: it sends the body plain, as Gradio (uvicorn)
    answers an HTTP/1.0 request, in one write ("once") or one event per write on the
    capture's schedule ("paced"); or chunked as it answers HTTP/1.1, one HTTP chunk per SSE
    event ("once-chunked") or one for all ("once-1chunk")."""
    events = split_events(body)
    lead, pace, _ = schedule or (0.0, 0.0, 0)

    async def stream(writer: asyncio.StreamWriter) -> None:
        if delivery == "once":
            writer.write(PLAIN_HEAD + body)
            return
        if delivery == "once-chunked":
            writer.write(HEAD + b"".join(chunk(event) for event in events) + LAST_CHUNK)
            return
        if delivery == "once-1chunk":
            writer.write(HEAD + chunk(body) + LAST_CHUNK)
            return
        loop = asyncio.get_running_loop()
        started = loop.time()
        writer.write(PLAIN_HEAD)
        texts = 0
        for event in events:
            if GENERATING in event[:60]:
                due = started + lead + texts * pace
                texts += 1
            elif texts:
                due = started + lead + texts * pace  # the final message, after the last
            else:
                due = started  # queue messages before the first text
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            writer.write(event)
            await writer.drain()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:  # keep-alive: /warm, then /stream on the same connection
                request = await reader.readuntil(b"\r\n\r\n")
                if request.split(b" ", 2)[1] == b"/warm":
                    writer.write(WARM)
                else:
                    await stream(writer)
                    if delivery not in CHUNKED:
                        break  # a plain body ends with the connection
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the reader closed the connection
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    # Serve until the reader closes our stdin.
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    server.close()


# -- the reader (this process, measured) ------------------------------------------------------


async def read(base: str, loads: Callable[[bytes], Any], window: float, chunked: bool,
               result: Result) -> None:
    loop = asyncio.get_running_loop()
    counts = LoopCounts()
    count_loop(loop, counts)
    count_socket_reads(counts)
    version = aiohttp.HttpVersion11 if chunked else aiohttp.HttpVersion10
    async with aiohttp.ClientSession(version=version) as http:
        async with http.get(base + "/warm") as warm:  # keeps its connection for /stream
            await warm.read()
        counts.reset()
        reads = events = size = holds = 0
        text_since: float | None = None  # when the first read with text came
        text_events = 0  # events read since then (that first read's not counted)
        start = checkpoint()
        headers = {} if chunked else {"Connection": "close"}  # rtxrelay's request
        async with http.get(base + "/stream", headers=headers) as response:
            connection = response.connection
            transport = connection.transport if connection is not None else None
            if transport is not None and getattr(transport, "max_size", 0) > READ_SIZE:
                transport.max_size = READ_SIZE  # type: ignore[attr-defined]
            buffer = b""
            content = response.content
            while True:
                chunk = await content.readany()
                if not chunk:
                    break
                reads += 1
                size += len(chunk)
                buffer += chunk
                *complete, buffer = buffer.split(b"\n\n")
                text = finished = False
                for event in complete:
                    if event.startswith(b"data: "):
                        loads(event[6:])
                        events += 1
                        text |= GENERATING in event[:60]
                        finished |= COMPLETED in event[:60]
                if window > 0 and text and not finished and transport is not None:
                    # The hold: the same condition as rtxrelay's PacedReads.hold.
                    now = loop.time()
                    if text_since is None:
                        text_since = now
                        gathers = True
                    else:
                        text_events += len(complete)
                        gathers = window * text_events >= GATHER * (now - text_since)
                    if gathers and len(chunk) < BACKLOG_READ and not transport.is_closing():
                        transport.pause_reading()
                        loop.call_later(window, transport.resume_reading)
                        holds += 1
        done = checkpoint()
    result.answer_phase(start, done)
    result.stream_reads = reads
    result.messages = {"events": events}
    result.extra.update(counts.as_dict())
    result.extra["stream_bytes"] = size
    result.extra["windows_held"] = holds


def _loads(parser: str) -> Callable[[bytes], Any]:
    if parser == "json":
        return json.loads
    import orjson  # a dependency of rtxrelay: always in the project venv

    loads: Callable[[bytes], Any] = orjson.loads
    return loads


def main() -> int:
    ready = checkpoint()
    parser = argparse.ArgumentParser()
    parser.add_argument("--serve", action="store_true")
    parser.add_argument("body")
    parser.add_argument("out", nargs="?")
    parser.add_argument("--delivery", default="once", choices=DELIVERIES)
    parser.add_argument("--parser", default="json", choices=("json", "orjson"))
    parser.add_argument("--read-window", type=float, default=0.0,
                        help="pause the socket this long after a read with text (s), as "
                        "rtxrelay's PacedReads does; 0: read as data arrives")
    args = parser.parse_args()
    body_path = Path(args.body)
    paced = args.delivery == "paced"
    if args.serve:
        schedule = captured_schedule(body_path) if paced else None
        asyncio.run(serve(body_path.read_bytes(), args.delivery, schedule))
        return 0

    result = Result(client="floor", startup_wall=startup_wall(), startup_cpu=ready.cpu,
                    rss_after_import_mib=ready.rss_mib)
    server: subprocess.Popen[str] | None = None
    try:
        loads = _loads(args.parser)
        body = body_path.read_bytes()
        expected = sum(1 for e in split_events(body) if e.startswith(b"data: "))
        if paced:
            lead, pace, texts = captured_schedule(body_path)
            result.extra.update(lead=lead, pace=pace, texts=texts)
        server = subprocess.Popen(
            [sys.executable, __file__, "--serve", str(body_path), "--delivery", args.delivery],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert server.stdout is not None
        port = int(server.stdout.readline())
        asyncio.run(read(f"http://127.0.0.1:{port}", loads, args.read_window,
                         args.delivery in CHUNKED, result))
        got = result.messages.get("events", 0)
        result.ok = got == expected and result.extra.get("stream_bytes") == len(body)
        if not result.ok:
            result.error = (f"read {got} of {expected} events, {result.extra.get('stream_bytes')}"
                            f" of {len(body)} bytes")
        result.extra.update(parser=args.parser, delivery=args.delivery, body_bytes=len(body),
                            read_window=args.read_window,
                            aiohttp=aiohttp.__version__, python=sys.version.split()[0])
    except BaseException as exc:  # report anything, even a KeyboardInterrupt
        result.fail(exc)
    finally:
        if server is not None:
            assert server.stdin is not None
            server.stdin.close()
            try:
                server.wait(10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
    if args.out:
        result.write(args.out)
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
