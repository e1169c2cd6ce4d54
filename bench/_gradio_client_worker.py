"""Bench worker: stream one answer with the official ``gradio_client`` (runs in the replica venv).

    python bench/_gradio_client_worker.py LAUNCH_URL QUESTION OUT_JSON FN_INDEX

Used the way its docs recommend for a generator endpoint: ``Client(src, headers=...)``, then
``job = client.submit(..., fn_index=N)`` and ``for output in job: ...`` (each iteration is one
streamed update), ``job.result()`` for the final value. Defaults otherwise (``verbose=False``
only silences its prints). The ``_s_chat_`` cookie goes in ``headers``: the launch URL's
``?cookie=`` query cannot be part of ``src`` (the client appends paths to it).

Phases, each measured by the process itself (see _measure.py):
- start-up: interpreter start + ``import gradio_client``;
- connect: ``Client(...)`` = GET /config + GET /info, starts its heartbeat thread;
- answer: ``submit`` to the final text.

Also counted during the answer phase: its socket reads (``httpcore``'s ``AnyIOStream.read``,
which its SSE stream and its async requests use: a counter bump per read) and voluntary
context switches (``_measure``). Every streamed output is kept by gradio_client itself
(``job.outputs()``); the worker keeps a reference to each one it iterated (a list append per
update, no copy) and checks them with ``_measure.StreamCheck`` after the answer phase is
measured, so the check costs the measured phase nothing: each streamed answer starts with the
previous one and the final value starts with (or equals) the last streamed one.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections import Counter
from typing import Any
from urllib.parse import parse_qs, urlsplit

import gradio_client
from _measure import Result, StreamCheck, checkpoint, startup_wall
from gradio_client import Client
from gradio_client.utils import Status
from httpcore._backends.anyio import AnyIOStream


class _WireLog(logging.Handler):
    """httpx logs one INFO line per HTTP request; keep "METHOD /path -> status"."""

    def __init__(self, result: Result, base: str) -> None:
        super().__init__(logging.INFO)
        self._result = result
        self._base = base

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage().removeprefix("HTTP Request: ")
        self._result.wire.append(text.replace(self._base, "").replace('"HTTP/1.1 ', '-> "'))


def _count_messages(counts: Counter[str]) -> None:
    """Count the SSE messages of our job the client processes: it maps each one to a status."""
    to_status = Status.msg_to_status

    def counting(msg: str) -> Status:
        counts[str(msg)] += 1
        return to_status(msg)

    Status.msg_to_status = staticmethod(counting)  # type: ignore[assignment]


def _count_reads(reads: list[int]) -> None:
    """Count the socket reads of its async HTTP connections (the SSE stream's among them)."""
    read = AnyIOStream.read

    async def counting(self: AnyIOStream, max_bytes: int, timeout: float | None = None) -> bytes:
        data = await read(self, max_bytes, timeout)
        if data:
            reads[0] += 1
        return data

    AnyIOStream.read = counting  # type: ignore[method-assign]


def _check_stream(seen: list[Any], final: str | None, result: Result) -> None:
    check = StreamCheck()
    try:
        for output in seen:
            check.text(_answer_of(output))
    except Exception as exc:  # an update that is not a chatbot value
        result.streamed_ok = False
        result.stream_problem = f"update {check.updates + 1}: {type(exc).__name__}: {exc}"
        return
    check.finish(final, result)


def _answer_of(value: Any) -> str:
    """The chatbot value is [[question, answer], ...]; the answer of the last pair."""
    if isinstance(value, tuple):  # several visible outputs: the chatbot comes first
        value = value[0]
    if isinstance(value, list) and value and isinstance(value[0], Exception):
        raise value[0]  # how the client reports a failed post-processing of an update
    last = value[-1]
    return last[1]


def _watch(job: Any, result: Result, out: str, finished: threading.Event) -> None:
    """If the job fails before streaming ends, ``for output in job`` polls forever (its status
    never reaches FINISHED): report the job's exception and leave instead of hanging."""
    error = job.future.exception()  # waits until the job's future is done
    if error is None or finished.wait(2.0):
        return
    try:
        raise error
    except BaseException as exc:
        result.fail(exc)
    result.error = f"{result.error} (the job failed; iterating it would never end)"
    result.write(out)
    os._exit(1)


def run(url: str, question: str, fn_index: int, result: Result, out: str) -> None:
    parts = urlsplit(url)
    cookie = parse_qs(parts.query)["cookie"][0]
    base = f"{parts.scheme}://{parts.netloc}"
    logging.getLogger("httpx").setLevel(logging.INFO)
    logging.getLogger("httpx").addHandler(_WireLog(result, base))
    counts: Counter[str] = Counter()
    _count_messages(counts)
    reads = [0]
    _count_reads(reads)

    start = checkpoint()
    client = Client(base, headers={"Cookie": f"_s_chat_={cookie}"}, verbose=False)
    connected = checkpoint()
    result.connect_wall = connected.wall - start.wall
    result.connect_cpu = connected.cpu - start.cpu
    result.extra["protocol"] = client.protocol
    reads[0] = 0
    seen: list[Any] = []

    answering = checkpoint()
    job = client.submit([[question, None]], fn_index=fn_index)
    finished = threading.Event()
    threading.Thread(target=_watch, args=(job, result, out, finished), daemon=True).start()
    first_text: float | None = None
    last: Any = None
    for output in job:  # blocks until the next update; ends when the job has finished
        result.updates += 1
        last = output
        seen.append(output)  # gradio_client keeps it anyway (job.outputs())
        if first_text is None:
            first_text = checkpoint().wall
    finished.set()
    final = job.result()  # raises what the job raised
    result.final_text = _answer_of(final)
    done = checkpoint()
    result.answer_phase(answering, done)
    result.stream_reads = reads[0]
    if first_text is not None:
        result.first_text_wall = first_text - answering.wall
    _check_stream(seen, result.final_text, result)
    result.messages = dict(counts)
    result.extra["outputs_kept"] = len(job.outputs())  # every update stays in memory
    result.extra["last_update_is_final"] = last is not None and _answer_of(last) == (
        result.final_text
    )
    result.ok = True
    client.close()


def main() -> int:
    url, question, out, fn_index = sys.argv[1:5]
    ready = checkpoint()  # every import above is done: interpreter start-up + imports
    result = Result(
        client="gradio_client",
        startup_wall=startup_wall(),
        startup_cpu=ready.cpu,
        rss_after_import_mib=ready.rss_mib,
        extra={"gradio_client": gradio_client.__version__, "python": sys.version.split()[0]},
    )
    try:
        run(url, question, int(fn_index), result, out)
    except BaseException as exc:  # report anything, even a KeyboardInterrupt
        result.fail(exc)
    result.write(out)
    # Its executor and heartbeat threads may still hold connections open: leave at once.
    os._exit(0 if result.ok else 1)


if __name__ == "__main__":
    main()
